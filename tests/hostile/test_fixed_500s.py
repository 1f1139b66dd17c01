"""The reproduced 500s, each at its cause: an Origin with a bad port on sign, a fhirServer with trailing
whitespace (checked one way, used another; its fallback reads left task exceptions unretrieved), and a client
that disconnects mid-request (logged as an unhandled error)."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.hostile.conftest import ES, Rig, assert_outcome, hook_body
from tests.smart.conftest import ehr_launch


def test_a_bad_port_in_origin_on_sign_is_a_403(rig: Rig) -> None:
    with rig.browser() as b:
        got = ehr_launch(b, patient="onc-02")
        for origin in ("http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://[::1"):
            r = b.post("/smart/api/prescription/sign", params={"s": got.sid}, json={"draftVersion": 0},
                       headers={"X-CSRF-Token": got.csrf, "Origin": origin})
            assert r.status_code == 403, (origin, r.text[:200])
            assert_outcome(r)


def test_fhir_server_with_whitespace_is_refused_cleanly(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = rig.mint("patient/*.rs", patient="onc-01")
    for server in (rig.fhir_base + " ", rig.fhir_base + "\t", " " + rig.fhir_base, rig.fhir_base + "\n"):
        r = rig.hook(ES, hook_body("onc-01", token=token, fhir_server=server))
        assert r.status_code == 412, r.text[:300]  # not allowlisted as given: nothing is contacted
        assert_outcome(r)
    gc.collect()  # unretrieved task exceptions are reported when the task is collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not [r for r in caplog.records if r.name == "onco_exercise.ops" and r.levelno >= logging.ERROR]


async def test_a_patient_query_that_cannot_be_sent_is_a_failure_not_a_crash() -> None:
    """fetch_patient_data retrieves every task's exception: an HTTP client that refuses the URL is one failure
    per query, and no task is left with an exception nobody looked at."""
    from datetime import datetime, timezone

    from service.fhir.client import FhirClient
    from service.fhir.patient_data import fetch_patient_data

    seen: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    async with FhirClient("http://127.0.0.1:1/fhir\n", retries=0) as client:
        data = await fetch_patient_data(client, "p1", datetime.now(timezone.utc), budget_seconds=2)
    assert not data.complete and data.failures and all("request failed" in f or ":" in f for f in data.failures)
    gc.collect()
    await asyncio.sleep(0)
    assert not seen


def test_a_client_that_disconnects_mid_body_is_not_an_error(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    host, port = urlsplit(rig.direct).hostname, urlsplit(rig.direct).port
    path = f"/cds-services/{ES}"
    for _ in range(3):
        jwt = rig.cds_jwt(path)  # a trusted caller: the route gets as far as reading the body
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"hook\"".encode())
            time.sleep(0.2)
    time.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
