"""Faults during Sign & send and during hooks, with real processes: kill -9 and SIGTERM of a replica, Redis
stopped and started, the EHR stopped and hanging. Each scenario ends with exactly one referral on the EHR,
one audit record for the signing, and the patient signable again well within a minute."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.chaos.conftest import LEASE, SIGNABLE_WITHIN, Chaos, elapsed_since
from tests.chaos.procs import wait_until
from tests.cds_hooks.patients import survivorship
from tests.hostile.conftest import ES, hook_body
from tests.ops.procs import cds_client_jwt

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _kill9(proc) -> None:  # type: ignore[no-untyped-def]
    proc.proc.kill()
    proc.proc.wait(timeout=10)


def test_kill_9_during_sign_then_retry_on_another_replica(rig: Chaos) -> None:
    a, b = rig.replica("a", public=True), rig.replica("b")
    with httpx.Client(timeout=60) as browser, ThreadPoolExecutor(1) as pool:
        # the paused EHR holds the transaction in its socket; after the kill it commits it, answering a dead socket
        got, pending, _ = rig.sign_under_fault(browser, pool, a, "onc-09", lambda: _kill9(a), settle=1.0)
        assert isinstance(pending.result(timeout=30), httpx.HTTPError)
        t0 = time.monotonic()
        r = rig.sign(browser.cookies, b.url, got)
        assert r.status_code == 200, r.text[:500]
        assert elapsed_since(t0) < SIGNABLE_WITHIN
    answer = r.json()
    assert any("interrupted" in n for n in answer["notes"]), answer["notes"]
    record = rig.assert_exactly_one("onc-09", answer)
    assert record["how"] == "resumed"
    # the resumed attempt read the EHR: what the dead worker committed is reported as already there
    assert {w["status"] for w in answer["written"]} == {"existing"}, [(w["reference"], w["status"]) for w in answer["written"]]


def test_sigterm_during_sign_finishes_the_write(rig: Chaos) -> None:
    a, b = rig.replica("a", public=True), rig.replica("b")
    with httpx.Client(timeout=60) as browser, ThreadPoolExecutor(1) as pool:
        def sigterm() -> None:  # graceful: in-flight requests finish first
            a.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)

        got, pending, _ = rig.sign_under_fault(browser, pool, a, "onc-04", sigterm)
        first = pending.result(timeout=30)
        assert isinstance(first, httpx.Response) and first.status_code == 200, first
        assert a.proc.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
        again = rig.sign(browser.cookies, b.url, got)
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["key"] == first.json()["key"]
    rig.assert_exactly_one("onc-04", first.json())


def test_redis_stops_during_sign_then_comes_back(rig: Chaos) -> None:
    a, b = rig.replica("a", public=True), rig.replica("b")
    with httpx.Client(timeout=60) as browser, ThreadPoolExecutor(1) as pool:
        got, pending, _ = rig.sign_under_fault(browser, pool, a, "onc-10", rig.redis.stop)
        first = pending.result(timeout=30)
        # the EHR took the referral, the store did not: the clinician is told exactly that, with what was written
        assert first.status_code == 503, first.text[:500]
        assert first.json()["resourceType"] == "OperationOutcome" and first.json()["written"]
        rig.redis.start()
        t0 = time.monotonic()
        r = rig.sign(browser.cookies, b.url, got)
        assert r.status_code == 200, r.text[:500]
        assert elapsed_since(t0) < SIGNABLE_WITHIN
    assert sorted(w["id"] for w in r.json()["written"]) == sorted(w["id"] for w in first.json()["written"])
    record = rig.assert_exactly_one("onc-10", r.json())
    assert [x["how"] for x in record["attempts"]][-1] == "resumed"
    log = a.output()
    assert log.count("state store unavailable") == 1, log[-3000:]  # one line per outage, not per request
    assert "Traceback" not in log


def test_redis_stops_during_hooks(rig: Chaos) -> None:
    a = rig.replica("a")
    patient = survivorship("chaos-hooks")

    def hook() -> httpx.Response:
        path = f"/cds-services/{ES}"
        jwt = cds_client_jwt(rig.key, f"{rig.public_url}{path}")
        return httpx.post(f"{a.url}{path}", json=hook_body(patient.pid, prefetch=patient.prefetch()),
                          headers={"Authorization": f"Bearer {jwt}"}, timeout=30)

    assert hook().status_code == 200
    rig.redis.stop()
    try:
        answers = [hook() for _ in range(5)]
        assert [r.status_code for r in answers] == [503] * 5
        assert all(r.json()["resourceType"] == "OperationOutcome" for r in answers)
        assert answers[0].headers.get("retry-after")
        page = httpx.get(f"{a.url}/smart/app", params={"s": "x" * 24}, headers={"Accept": "text/html"},
                         cookies={"oe_smart": "c" * 32}, timeout=10)
        assert page.status_code == 503 and "temporarily unavailable" in page.text  # a page, not raw JSON
        metrics = httpx.get(f"{a.url}/metrics", timeout=10).text
        assert "onco_store_up 0.0" in metrics and "onco_store_errors_total{" in metrics
    finally:
        rig.redis.start()
    wait_until(lambda: hook().status_code == 200, 15, "hooks to work again without a restart", step=0.3)
    log = a.output()
    assert log.count("state store unavailable") == 1, log[-3000:]
    assert "state store available again" in log
    assert "Traceback" not in log and "unhandled error" not in log


def test_ehr_hangs_during_sign(rig: Chaos) -> None:
    a = rig.replica("a", public=True)
    with httpx.Client(timeout=60) as browser:
        got = rig.launch(browser, a, "onc-06")
        rig.ehr.pause()
        try:
            first = rig.sign(browser.cookies, a.url, got)  # the EHR does not answer within the FHIR timeout
        finally:
            rig.ehr.resume()
        assert first.status_code in (502, 504), first.text[:300]
        assert "may or may not" in first.text
        key = first.json()["key"]
        assert rig.pending(key), "an uncertain outcome keeps the intent for the next attempt"
        t0 = time.monotonic()
        r = rig.sign(browser.cookies, a.url, got)
        assert r.status_code == 200, r.text[:500]
        assert elapsed_since(t0) < SIGNABLE_WITHIN
    record = rig.assert_exactly_one("onc-06", r.json())
    assert [x["outcome"] for x in record["attempts"]] == ["failed", "success"]


def test_ehr_stops_during_sign_then_restarts(rig: Chaos) -> None:
    a = rig.replica("a", public=True)
    with httpx.Client(timeout=60) as browser, ThreadPoolExecutor(1) as pool:
        got, pending, _ = rig.sign_under_fault(browser, pool, a, "onc-07", rig.ehr.kill)  # dies, transaction unread
        first = pending.result(timeout=30)
        assert isinstance(first, httpx.Response) and 500 <= first.status_code < 600, first
        rig.ehr.start()
        t0 = time.monotonic()
        r = rig.sign(browser.cookies, a.url, got)
        assert r.status_code == 200, r.text[:500]
        assert elapsed_since(t0) < SIGNABLE_WITHIN
    assert {w["status"] for w in r.json()["written"]} == {"created"}  # nothing had landed: written now
    rig.assert_exactly_one("onc-07", r.json())


def test_an_abandoned_interrupted_signing_is_reconciled_by_another_replica(rig: Chaos) -> None:
    a = rig.replica("a", public=True)
    with httpx.Client(timeout=60) as browser, ThreadPoolExecutor(1) as pool:
        got, pending, key = rig.sign_under_fault(browser, pool, a, "onc-08", lambda: _kill9(a), settle=1.0)
        pending.result(timeout=30)
        c = rig.replica("c")  # nobody presses Sign & send again: the reconciler records what was written
        records = wait_until(lambda: rig.audit_records(key), 8 * LEASE + 10, "the reconciled audit record",
                             step=0.5)
        assert records[0]["how"] == "reconciled" and records[0]["outcome"] == "success", \
            (records[0]["written"], records[0]["failed"])
        assert rig.pending(key) == []
        assert "reconciled 1 interrupted signing" in c.output()
        # and the patient is signable: pressing again completes (nothing to add) and updates the same record
        r = rig.sign(browser.cookies, c.url, got)
        assert r.status_code == 200, r.text[:300]
    record = rig.assert_exactly_one("onc-08", r.json())
    assert [x["how"] for x in record["attempts"]] == ["reconciled", "signed"]
    assert json.dumps(record).count("onc-08") >= 1
