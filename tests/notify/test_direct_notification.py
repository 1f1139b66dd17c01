"""A referral signed to a "full" exercise service: the sandbox receiver gets one signed notification, verifies
it against our JWKS, reads the Task with its own token; a failed first delivery is retried, never duplicated."""

from __future__ import annotations

from tests.notify.conftest import FULL, receiver_log, sign, wait_for
from tests.smart.conftest import Sandbox


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
