"""The exercise-service inbox: pages over HTTP against a real sandbox, Task updates that stay valid PA IG
referral-management Tasks (pa-taskrm-1 checked with FHIRPath and the product's validator), refusals."""

from __future__ import annotations

import itertools
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import httpx
import pytest
from fhirpathpy import evaluate

from service.sandbox.inbox import ACTIONS, TransitionError, allowed_actions, taskrm_1_ok, transition
from tests.conftest import running_sandbox
from tests.support.inbox import form_token, sign_in

PA_TASKRM_1 = "statusReason.exists() = (status = 'rejected' or status = 'on-hold' or status = 'cancelled' " \
              "or status = 'failed')"
STATUSES = ["draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress",
            "on-hold", "failed", "completed", "entered-in-error"]
INBOX = "/sandbox/exercise-service/"


def invariant_holds(task: dict[str, Any]) -> bool:
    return evaluate(task, PA_TASKRM_1) == [True]


def product_errors(resource: dict[str, Any]) -> list[Any]:
    try:
        from service.fhir.validate import validate_resource
    except ImportError:
        return []
    return [i for i in validate_resource(resource) if i.severity in ("error", "fatal")]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    with running_sandbox(tmp_path_factory.mktemp("inbox")) as running:
        yield running


@pytest.fixture(scope="module")
def browser(sandbox: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox[0], timeout=60, follow_redirects=False) as c:
        sign_in(c)
        yield c


@pytest.fixture(scope="module")
def fhir(sandbox: tuple[str, Any]) -> Iterator[httpx.Client]:
    url, app = sandbox
    token = app.state.sandbox.auth.mint_access_token("user/*.cruds", None, "Practitioner/sandbox-clinician", 600)
    with httpx.Client(base_url=f"{url}/sandbox/fhir", headers={"Authorization": f"Bearer {token}"},
                      timeout=30) as c:
        yield c


def act(browser: httpx.Client, tid: str, **form: str) -> httpx.Response:
    data = {"csrf": form_token(browser.get(f"{INBOX}sign-in").text), **form}
    return browser.post(f"{INBOX}tasks/{tid}", data=data)


def follow(browser: httpx.Client, r: httpx.Response) -> str:
    assert r.status_code == 303, r.text[:300]
    return browser.get(r.headers["location"]).text


# -- the rules, exhaustively -------------------------------------------------------------------------------


def base_task(status: str) -> dict[str, Any]:
    t: dict[str, Any] = {
        "resourceType": "Task", "id": "t1", "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z"},
        "status": status, "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": "ServiceRequest/sr1"}, "for": {"reference": "Patient/p1"},
        "authoredOn": "2026-01-01T09:00:00Z", "requester": {"reference": "Practitioner/sandbox-clinician"},
        "owner": {"reference": "Organization/exercise-oncology-service"},
    }
    if status in ("rejected", "on-hold", "cancelled", "failed"):
        t["statusReason"] = {"text": "earlier reason"}
    return t


@pytest.mark.parametrize("status,action", list(itertools.product(STATUSES, list(ACTIONS))))
def test_every_transition_is_valid_or_refused(status: str, action: str) -> None:
    now = datetime(2026, 5, 1, 10, 0, tzinfo=timezone.utc)
    task = base_task(status)
    sources, target, *_ = ACTIONS[action]
    if status not in sources:
        with pytest.raises(TransitionError, match="Cannot"):
            transition(task, action, "some text", now)
        return
    out = transition(task, action, "some text", now)
    assert out["status"] == target and task["status"] == status  # input untouched
    assert invariant_holds(out) and taskrm_1_ok(out)
    assert out["lastModified"] == "2026-05-01T10:00:00Z"
    assert out["businessStatus"]["text"]
    assert "versionId" not in out.get("meta", {})
    if target == "rejected":
        assert out["statusReason"] == {"text": "some text"}
    if target == "completed":
        assert out["output"][-1]["type"]["coding"][0]["code"] == "resulting-activity"
        assert out["output"][-1]["valueCodeableConcept"]["text"] == "some text"
        assert out["executionPeriod"]["end"] == "2026-05-01T10:00:00Z"
    if target == "in-progress":
        assert out["executionPeriod"]["start"] == "2026-05-01T10:00:00Z"


def test_reject_and_complete_need_text() -> None:
    now = datetime.now(timezone.utc)
    with pytest.raises(TransitionError, match="reason"):
        transition(base_task("requested"), "reject", "   ", now)
    with pytest.raises(TransitionError, match="outcome note"):
        transition(base_task("in-progress"), "complete", None, now)
    with pytest.raises(TransitionError, match="Unknown action"):
        transition(base_task("requested"), "cancel", "x", now)
    assert allowed_actions("completed") == [] and allowed_actions("accepted") == ["start", "hold", "reject"]


def test_the_invariant_check_can_fail() -> None:
    bad = base_task("rejected")
    del bad["statusReason"]
    assert not invariant_holds(bad) and not taskrm_1_ok(bad)
    bad = base_task("accepted")
    bad["statusReason"] = {"text": "x"}
    assert not invariant_holds(bad) and not taskrm_1_ok(bad)


# -- pages and updates over HTTP ---------------------------------------------------------------------------


def test_inbox_lists_the_services_tasks(browser: httpx.Client) -> None:
    r = browser.get(INBOX)
    assert r.status_code == 200
    for text in ("Elena Petrova", "Grace Mensah", "George Papadopoulos", "Referral to exercise oncology service",
                 "Riverside Exercise Oncology Service", "Programme under way", "Accepted, booking"):
        assert text in r.text
    assert len(re.findall(r'href="/sandbox/exercise-service/tasks/[^"]+"', r.text)) == 3


def test_referral_detail_shows_fitt_precautions_data_and_contact(browser: httpx.Client) -> None:
    r = browser.get(f"{INBOX}tasks/onc-03-referral-task")
    assert r.status_code == 200
    html = r.text
    for text in ("Elena Petrova", "Clinically supervised", "Cardiotoxic therapy (trastuzumab)",
                 "Aerobic exercise", "3× per week", "30 min", "a.morgan@riverside.example", "+1-555-0100",
                 "Six minute walk test distance", "565 m", "ECOG Performance Status", "Malignant neoplasm",
                 "Medical clearance is required", "Accept", "Reject"):
        assert text in html, text
    assert "Start programme" not in html  # not allowed from requested


def test_accept_start_complete_produce_valid_tasks(browser: httpx.Client, fhir: httpx.Client) -> None:
    tid = "onc-03-referral-task"
    page = follow(browser, act(browser, tid, action="accept"))
    assert "Referral accepted" in page and "Start programme" in page
    task = fhir.get(f"Task/{tid}").json()
    assert task["status"] == "accepted" and "statusReason" not in task
    assert task["businessStatus"]["text"] == "Accepted, booking an assessment"
    modified = datetime.fromisoformat(task["lastModified"].replace("Z", "+00:00"))
    assert abs(datetime.now(timezone.utc) - modified) < timedelta(minutes=2)
    assert invariant_holds(task) and product_errors(task) == []

    # an invalid transition is refused with a message and writes nothing
    version = task["meta"]["versionId"]
    page = follow(browser, act(browser, tid, action="complete", note="done"))
    assert "Cannot complete a referral whose task is &#39;accepted&#39;" in page
    assert fhir.get(f"Task/{tid}").json()["meta"]["versionId"] == version

    follow(browser, act(browser, tid, action="start", version=version))
    task = fhir.get(f"Task/{tid}").json()
    assert task["status"] == "in-progress" and task["executionPeriod"]["start"]
    assert invariant_holds(task) and product_errors(task) == []

    page = follow(browser, act(browser, tid, action="complete", note=" "))
    assert "outcome note" in page
    page = follow(browser, act(browser, tid, action="complete",
                               note="12 supervised sessions; 6MWT 565 -> 610 m; continuing at home"))
    assert "Referral completed" in page and "no further actions" in page
    task = fhir.get(f"Task/{tid}").json()
    assert task["status"] == "completed" and "statusReason" not in task
    out = task["output"][0]
    assert out["type"]["coding"][0] == {"system": "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/"
                                        "SDOHCC-CodeSystemTemporaryCodes", "code": "resulting-activity",
                                        "display": "Resulting Activity"}
    assert out["valueCodeableConcept"]["text"].startswith("12 supervised sessions")
    assert task["note"][-1]["authorReference"]["reference"] == "Practitioner/exercise-physiologist"
    assert task["executionPeriod"]["end"] >= task["executionPeriod"]["start"]
    assert invariant_holds(task) and product_errors(task) == []
    assert task["focus"] == {"reference": "ServiceRequest/onc-03-referral"}  # nothing else touched
    assert task["owner"]["reference"] == "Organization/exercise-oncology-service"

    page = follow(browser, act(browser, tid, action="accept"))
    assert "Cannot accept" in page and "closed" in page


def test_reject_needs_a_reason_and_sets_status_reason(browser: httpx.Client, fhir: httpx.Client) -> None:
    tid = "onc-05-referral-task"  # accepted
    page = follow(browser, act(browser, tid, action="reject", reason=""))
    assert "Give a reason" in page
    assert fhir.get(f"Task/{tid}").json()["status"] == "accepted"
    page = follow(browser, act(browser, tid, action="reject", reason="Needs orthopaedic review of the spine first"))
    assert "Referral rejected" in page
    task = fhir.get(f"Task/{tid}").json()
    assert task["status"] == "rejected"
    assert task["statusReason"] == {"text": "Needs orthopaedic review of the spine first"}
    assert invariant_holds(task) and product_errors(task) == []
    listing = browser.get(INBOX).text
    closed = listing[listing.index('id="closed-h"'):]
    assert "Grace Mensah" in closed


def test_refusals(browser: httpx.Client, fhir: httpx.Client) -> None:
    tid = "onc-14-referral-task"
    r = browser.post(f"{INBOX}tasks/{tid}", data={"action": "complete", "note": "x"})
    assert r.status_code == 403 and "security token" in r.text
    version = fhir.get(f"Task/{tid}").json()["meta"]["versionId"]
    page = follow(browser, act(browser, tid, action="complete", note="x", version="999"))
    assert "Someone else updated this referral" in page
    assert fhir.get(f"Task/{tid}").json()["meta"]["versionId"] == version
    page = follow(browser, act(browser, tid, action="explode"))
    assert "Unknown action" in page
    r = browser.get(f"{INBOX}tasks/no-such-task")
    assert r.status_code == 404 and "Referral not found" in r.text
    r = act(browser, "no-such-task", action="accept")
    assert r.status_code == 404


def test_tasks_of_other_owners_are_not_shown(browser: httpx.Client, fhir: httpx.Client) -> None:
    other = {"resourceType": "Task", "status": "requested", "intent": "order",
             "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
             "focus": {"reference": "ServiceRequest/onc-03-referral"}, "for": {"reference": "Patient/onc-03"},
             "authoredOn": "2026-01-01T09:00:00Z", "requester": {"reference": "Practitioner/sandbox-clinician"},
             "owner": {"reference": "Organization/community-exercise-programme"}}
    r = fhir.post("Task", json=other)
    assert r.status_code == 201
    tid = r.json()["id"]
    assert tid not in browser.get(INBOX).text
    assert browser.get(f"{INBOX}tasks/{tid}").status_code == 404
    assert act(browser, tid, action="accept").status_code == 404


def test_stop_rules_are_listed_once_not_in_every_fitt_row(browser: httpx.Client) -> None:
    html = browser.get(f"{INBOX}tasks/onc-03-referral-task").text
    assert html.count("chest pain or pressure") == 1, "stop rules repeated"
    stop = html[html.index('id="stop-rules"'):]
    stop = stop[:stop.index("</ul>")]
    assert stop.count("<li>") == 4 and ".;" not in stop


def test_clinician_note_is_under_notes_from_the_clinician(browser: httpx.Client) -> None:
    html = browser.get(f"{INBOX}tasks/onc-03-referral-task").text
    notes = html[html.index('id="clinician-notes"'):]
    notes = notes[:notes.index("</ul>")]
    assert "Patient prefers early-morning sessions." in notes and "Dr Alex Morgan" in notes
    assert "Requested setting" not in notes  # the service's own notes are listed apart


def test_stop_rule_parsing_accepts_both_formats() -> None:
    from service.sandbox.inbox import own_instructions, stop_rule_list

    assert stop_rule_list("Stop and seek advice:\n- A.\n- B.") == ["A.", "B."]
    assert stop_rule_list("Stop and seek advice if: dizziness; chest pain") == ["dizziness", "chest pain"]
    old = "Aerobic: 3x/week\nStop and seek advice if: dizziness; chest pain"
    assert own_instructions(old, "Stop and seek advice if: dizziness; chest pain") == "Aerobic: 3x/week"


def test_units_are_shown_as_people_read_them() -> None:
    from service.sandbox.ehr import _value

    def obs(code: str, value: float = 1) -> dict[str, Any]:
        return {"valueQuantity": {"value": value, "unit": code, "system": "http://unitsofmeasure.org", "code": code}}

    assert _value(obs("Cel", 38.2)) == "38.2 °C"
    assert _value(obs("10*3/uL", 142)) == "142 ×10³/µL"
    assert _value(obs("{score}", 2)) == "2"
    bp = {"component": [{"valueQuantity": {"value": 127, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                                           "code": "mm[Hg]"}}, {"valueQuantity": {"value": 75}}]}
    assert _value(bp) == "127/75 mm Hg"


def test_the_inbox_needs_a_sign_in_and_a_signed_form_token(sandbox: tuple[str, Any], fhir: httpx.Client) -> None:
    url, _ = sandbox
    with httpx.Client(base_url=url, timeout=60, follow_redirects=False) as stranger:
        r = stranger.get(INBOX)
        assert r.status_code == 303 and "/sign-in" in r.headers["location"]
        assert stranger.post(f"{INBOX}tasks/x", data={"action": "accept"}).status_code == 303  # to the sign-in
        # a forged staff cookie is not a sign-in
        stranger.cookies.set("sandbox_staff", f"jordan-blake.{10 ** 12}.{'0' * 64}", path="/sandbox/exercise-service")
        assert stranger.get(INBOX).status_code == 303
        # an equal cookie/form pair chosen by an attacker (cookies are shared by every port of 127.0.0.1)
        stranger.cookies.set("sandbox_csrf", "a" * 32, path="/sandbox")
        r = stranger.post(f"{INBOX}sign-in", data={"csrf": "a" * 32, "user": "jordan-blake", "next": INBOX})
        assert r.status_code == 403
        r = sign_in(stranger)
        assert r.status_code == 303 and r.headers["location"] == INBOX
        assert stranger.get(INBOX).status_code == 200
        # the sign-in page never sends anyone outside the inbox
        page = stranger.get(f"{INBOX}sign-in", params={"next": "https://evil.example/"})
        assert 'name="next" value="/sandbox/exercise-service/"' in page.text
