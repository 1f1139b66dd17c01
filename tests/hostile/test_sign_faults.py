"""Sign & send against an EHR that fails mid-write, through the real fault proxy in front of the real sandbox.

For each fault: the sign answer is a clean error (OperationOutcome, 502/504/401, never a traceback), the
server holds either nothing or one complete set (never a half-set), and a retry after the fault clears
writes exactly one set — no duplicates, even when the first transaction was committed and only its
answer was lost.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.hostile.conftest import FHIR_TIMEOUT, Rig, assert_outcome
from tests.hostile.faultproxy import Fault, is_transaction
from tests.hostile.sets import prescription_sets, written_set
from tests.smart.conftest import Launched, ehr_launch

TXN = r"^/sandbox/fhir/?$"


def launched(rig: Rig, b: httpx.Client, patient: str) -> Launched:
    got = ehr_launch(b, patient=patient)
    view = b.get("/smart/api/prescription", params={"s": got.sid})
    assert view.status_code == 200, view.text[:300]
    assert view.json()["writeBack"]["canSign"], view.json()["writeBack"]
    return got


def sign(b: httpx.Client, got: Launched, **kw: Any) -> httpx.Response:
    return b.post("/smart/api/prescription/sign", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf},
                  json={"draftVersion": 0}, timeout=kw.get("timeout", 60))


def check_one_complete_set(rig: Rig, patient: str, answer: dict[str, Any]) -> None:
    with rig.fhir() as fhir:
        sets = prescription_sets(fhir, patient)
    assert list(sets) == [answer["key"]], f"expected one set, found {len(sets)}: {sorted(sets)}"
    assert sets[answer["key"]] == written_set(answer)
    assert REQUIRED[answer["strategy"]] <= set(sets[answer["key"]]), (answer["strategy"], sets)


REQUIRED = {"full": {"CarePlan", "Goal", "ServiceRequest", "Task", "Provenance"},
            "service-request-only": {"ServiceRequest", "DocumentReference"}}


@pytest.mark.parametrize("patient,fault,expected", [
    ("onc-14", Fault("POST", TXN, "status", status=500, when=is_transaction), 502),
    ("onc-15", Fault("POST", TXN, "status", status=503, when=is_transaction), 502),
    ("onc-16", Fault("POST", TXN, "after", status=502, when=is_transaction), 502),
    ("onc-18", Fault("POST", TXN, "hang", when=is_transaction), 504),
    ("onc-19", Fault("POST", TXN, "hang-after", when=is_transaction), 504),
    ("onc-20", Fault("POST", TXN, "status", status=401, when=is_transaction), 401),
    ("onc-21", Fault("POST", TXN, "body", body=b'{"resourceType": "Bundle", "type": "transaction-resp',
                     when=is_transaction), 502),
], ids=["500", "503", "committed-then-502", "hang", "committed-then-hang", "401", "malformed-answer"])
def test_failed_transaction_is_clean_and_a_retry_writes_one_set(rig: Rig, patient: str, fault: Fault,
                                                                 expected: int) -> None:
    with rig.browser() as b:
        got = launched(rig, b, patient)
        rig.proxy.inject(fault)
        r = sign(b, got)
        assert r.status_code == expected, r.text[:500]
        body = assert_outcome(r)
        assert body["status"] == "failed" and body["written"] == []
        if expected >= 500:  # no usable answer: the service cannot know, and must not claim, that nothing was written
            assert "nothing was written" not in r.text and "may or may not" in r.text
        assert rig.proxy.hits(fault.action, TXN), "the fault was never met"
        if fault.action in ("hang", "hang-after"):
            assert r.elapsed.total_seconds() < FHIR_TIMEOUT + 5

        with rig.fhir() as fhir:
            before = prescription_sets(fhir, patient)
        committed = fault.action in ("after", "hang-after")
        assert len(before) == (1 if committed else 0), before  # the transaction is all or nothing
        assert b.get("/smart/api/prescription", params={"s": got.sid}).json()["signed"] is None

        rig.proxy.clear()
        r = sign(b, got)
        assert r.status_code == 200, r.text[:500]
        answer = r.json()
        assert answer["status"] == "sent" and not answer.get("replayed") and not answer["failed"]
        check_one_complete_set(rig, patient, answer)
        if committed:  # the lost first write is found again, not repeated
            assert before == {answer["key"]: written_set(answer)}
            assert all(w["status"] == "existing" for w in answer["written"]), answer["written"]
        again = sign(b, got)  # and a third press changes nothing
        assert again.status_code == 200 and again.json()["replayed"]
        check_one_complete_set(rig, patient, answer)


def test_a_single_401_is_refreshed_and_written_once(rig: Rig) -> None:
    with rig.browser() as b:
        got = launched(rig, b, "onc-22")
        rig.proxy.inject(Fault("POST", TXN, "status", status=401, when=is_transaction, times=1))
        r = sign(b, got)
        assert r.status_code == 200, r.text[:500]
        assert len(rig.proxy.hits(None, TXN)) == 2  # refused once, refreshed, sent again
        assert rig.proxy.hits("forward", r"^/sandbox/auth/token")  # the refresh really happened
        check_one_complete_set(rig, "onc-22", r.json())


def test_one_by_one_writes_failing_midway_complete_on_retry(rig: Rig) -> None:
    """An EHR without transactions: creates go one by one; the third create fails. The answer names what was
    written (207, partial), and a retry completes the set without writing anything twice."""
    with rig.fhir() as fhir:
        cap = fhir.get("/metadata").json()
    cap["rest"][0]["interaction"] = [i for i in cap["rest"][0].get("interaction", [])
                                     if i.get("code") not in ("transaction", "batch")]
    rig.proxy.inject(Fault("GET", r"^/sandbox/fhir/metadata", "body", body=json.dumps(cap).encode()))
    with rig.browser() as b:
        got = launched(rig, b, "onc-23")
        creates = r"^/sandbox/fhir/(CarePlan|Goal|ServiceRequest|Task|Provenance|DocumentReference)$"
        rig.proxy.inject(_nth_create_fails(creates, 3))
        r = sign(b, got)
        assert r.status_code == 207, r.text[:500]
        partial = r.json()
        assert partial["status"] == "partial" and partial["written"] and partial["failed"]
        assert_outcome(r)
        with rig.fhir() as fhir:
            mid = prescription_sets(fhir, "onc-23")
        assert list(mid) == [partial["key"]]
        written_ids = {w["id"] for w in partial["written"]}
        assert set().union(*mid[partial["key"]].values()) == written_ids  # the answer tells the truth

        rig.proxy.faults[:] = [f for f in rig.proxy.faults if "metadata" in f.path]  # the EHR recovers
        r = sign(b, got)
        assert r.status_code == 200, r.text[:500]
        done = r.json()
        assert done["strategy"] == "service-request-only"  # no transactions: the plan cannot be one unit
        assert done["status"] == "sent" and not done["failed"]
        check_one_complete_set(rig, "onc-23", done)
        by_id = {w["id"]: w["status"] for w in done["written"]}
        assert all(by_id[i] == "existing" for i in written_ids)  # nothing written twice


def _nth_create_fails(path: str, n: int) -> Fault:
    """Forward the first n-1 creates, then answer 500 (without forwarding) for the rest."""
    count = {"n": 0}

    def when(_: bytes) -> bool:
        count["n"] += 1
        return count["n"] >= n

    return Fault("POST", path, "status", status=500, when=when)
