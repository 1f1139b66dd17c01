"""A referral signed to a "full" exercise service: the sandbox receiver gets one signed notification, verifies
it against our JWKS, reads the Task with its own token; a failed first delivery is retried, never duplicated."""

from __future__ import annotations

import json
import time

from tests.notify.conftest import FULL, LIGHT, receiver_log, sign, stored, wait_for
from tests.smart.conftest import Sandbox, api, ehr_launch
from tests.support.inbox import sign_in


def _received(sandbox: Sandbox) -> list[dict]:
    return [e for e in receiver_log(sandbox) if e["result"] == "received"]


def test_signed_referral_reaches_the_full_service_once(sandbox: Sandbox) -> None:
    with sandbox.browser() as b:
        answer = sign(b, "onc-01")
    [note] = answer["notifications"]
    assert note["service"] == FULL and note["channel"] == "direct" and note["events"] == ["requested"]
    [got] = wait_for(lambda: _received(sandbox))
    assert got["source"].startswith("onco-exercise (JWT verified)")
    assert got["notificationId"] == note["notificationId"]
    [ev] = got["events"]
    assert "error" not in ev, ev
    task = next(w for w in answer["written"] if w["resourceType"] == "Task")
    assert ev["task"] == task["reference"] and ev["status"] == "requested" and ev["owner"] == FULL
    assert ev["referral"].startswith("ServiceRequest/") and ev["referralStatus"] == "active"
    with sandbox.browser() as b:  # the receiver's log, as the sandbox UI shows it
        page = b.get("/sandbox/exercise-receiver/")
    assert page.status_code == 200 and note["notificationId"] in page.text and "JWT verified" in page.text


def _outbox(sandbox: Sandbox, nid: str) -> dict:
    from service.notify.outbox import NS

    return stored(sandbox, lambda st: st.get(NS, nid))


def test_a_failed_first_delivery_is_retried_and_handled_once(sandbox: Sandbox) -> None:
    from service.sandbox.receiver import NS_CONTROL

    stored(sandbox, lambda st: st.put(NS_CONTROL, "fail", {"next": 1}))
    with sandbox.browser() as b:
        answer = sign(b, "onc-02")
    nid = answer["notifications"][0]["notificationId"]
    wait_for(lambda: (_outbox(sandbox, nid) or {}).get("status") == "delivered")
    rec = _outbox(sandbox, nid)
    assert rec["attempts"] == 2 and rec["lastError"] is None
    time.sleep(1.0)  # several retry ticks later: still handled once, nothing left to send
    log = receiver_log(sandbox)
    assert [e for e in log if e["result"].startswith("simulated outage")]
    assert len([e for e in log if e.get("notificationId") == nid]) == 1
    # recorded: the audit trail names the service, the Tasks and the attempts (never a token)
    from service.audit import AUDIT_NS

    audits = [r for _, r in stored(sandbox, lambda st: st.scan(AUDIT_NS)) if r.get("notificationId") == nid]
    assert [(a["channel"], a["outcome"], a["attempts"]) for a in audits] == [("direct", "delivered", 2)]
    assert "eyJ" not in json.dumps(audits)


def test_the_light_service_works_from_the_inbox(sandbox: Sandbox) -> None:
    with sandbox.browser() as b:
        answer = sign(b, "onc-03", service=None)  # the default service: no endpoint
    assert [(n["service"], n["channel"], n["status"]) for n in answer["notifications"]] == [
        (LIGHT, "inbox", "listed")]
    task = next(w for w in answer["written"] if w["resourceType"] == "Task")
    with sandbox.browser() as b:
        sign_in(b)
        assert f'/sandbox/exercise-service/tasks/{task["id"]}' in b.get("/sandbox/exercise-service/").text


def test_an_unknown_service_is_refused(sandbox: Sandbox) -> None:
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-04")
        v = api(b, got.sid).json()
        r = b.post("/smart/api/prescription/sign", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf},
                   json={"draftVersion": v["draftVersion"], "exerciseService": "Organization/evil"})
    assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome"


def test_pending_clearance_is_not_news_its_release_is(sandbox: Sandbox) -> None:
    patient = "onc-33"  # deferred: signed pending clearance, the service's Task a draft
    with sandbox.browser() as b:
        answer = sign(b, patient)
    assert answer["notifications"] == []  # nothing to start: nobody told to start
    with sandbox.browser() as b:
        got = ehr_launch(b, patient=patient)
        v = api(b, got.sid).json()
        r = b.post("/smart/api/prescription", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf},
                   json={"draftVersion": 0, "clearance": {"reviewed": v["clearance"]["toResolve"],
                                                          "note": "Repeat platelets 64 x10^9/L."}})
        assert r.status_code == 200, r.text
        r = b.post("/smart/api/prescription/sign", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf},
                   json={"draftVersion": r.json()["draftVersion"], "exerciseService": FULL})
        assert r.status_code == 200, r.text
        released = r.json()
    [note] = released["notifications"]
    assert note["events"] == ["requested"]  # the release; the draft's cancellation is not news to the service
    [got_it] = wait_for(lambda: [e for e in receiver_log(sandbox) if e.get("notificationId") == note["notificationId"]])
    assert [ev["status"] for ev in got_it["events"]] == ["requested"]


def test_a_revision_is_one_notification_with_both_tasks(sandbox: Sandbox) -> None:
    with sandbox.browser() as b:
        first = sign(b, "onc-06")
    with sandbox.browser() as b:
        second = sign(b, "onc-06")
    [note] = second["notifications"]
    assert note["events"] == ["cancelled", "requested"] and note["notificationId"] != first["notifications"][0][
        "notificationId"]
    [got] = wait_for(lambda: [e for e in receiver_log(sandbox) if e.get("notificationId") == note["notificationId"]])
    assert sorted(ev["status"] for ev in got["events"]) == ["cancelled", "requested"]
