"""The patient companion against a real sandbox: its authorization server with the patient's own login, its
FHIR server over HTTP."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import httpx
import pytest

from tests.smart.conftest import Sandbox, _sandbox


@dataclass
class Companion:
    sid: str
    csrf: str
    page: httpx.Response


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from _sandbox(tmp_path_factory.mktemp("companion"))


def patient_launch(client: httpx.Client, iss: str, patient: str) -> Companion:
    """/patient/launch -> the sandbox sign-in (as the patient) -> /patient/app."""
    r = client.get("/patient/launch", params={"iss": iss}, follow_redirects=True)
    assert r.status_code == 200 and r.url.path == "/sandbox/auth/authorize", r.text[:300]
    assert 'value="patient:self" selected' in r.text, "a patient-facing app signs in as the patient by default"
    txn = re.search(r'name="txn" value="([^"]+)"', r.text).group(1)
    r = client.post("/sandbox/auth/authorize/decision", follow_redirects=True, data={
        "txn": txn, "practitioner": "patient:self", "patient": patient, "action": "approve"})
    assert r.status_code == 200 and r.url.path == "/patient/app", (r.status_code, r.url, r.text[:300])
    csrf = re.search(r'id="csrf" value="([^"]+)"', r.text).group(1)
    return Companion(r.url.params["s"], csrf, r)


def post_entry(client: httpx.Client, c: Companion, body: dict) -> httpx.Response:
    return client.post("/patient/api/entries", params={"s": c.sid}, json=body, headers={"X-CSRF-Token": c.csrf})
