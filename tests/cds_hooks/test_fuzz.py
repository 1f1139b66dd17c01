"""Hostile input against the hook and feedback endpoints: never a 500, never a traceback, always JSON."""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.cds_hooks.discovery import ENCOUNTER_START_ID
from tests.cds_hooks.conftest import Service, find_empty

ES = f"/cds-services/{ENCOUNTER_START_ID}"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)


def _body_like() -> Any:
    """Mostly well-formed hook calls with one part replaced by junk: reaches the deeper checks."""
    good = {"hook": "encounter-start", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/a", "patientId": "p1", "encounterId": "e1"}, "prefetch": {}}
    return st.sampled_from(["hook", "hookInstance", "context", "prefetch", "fhirServer", "fhirAuthorization"]).flatmap(
        lambda k: json_values.map(lambda v: {**good, k: v}))


def _check(resp: Any) -> None:
    assert resp.status_code in (200, 400, 412), resp.text
    assert "Traceback" not in resp.text
    data = resp.json()
    assert find_empty(data) == []
    if resp.status_code != 200:
        assert data["resourceType"] == "OperationOutcome"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values | _body_like())
def test_hook_endpoint_never_fails_on_junk(service: Service, body: Any) -> None:
    _check(service.ehr.post(ES, None, raw=json.dumps(body).encode()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=json_values)
def test_feedback_endpoint_never_fails_on_junk(service: Service, items: Any) -> None:
    resp = service.ehr.post(f"{ES}/feedback", {"feedback": items})
    assert resp.status_code in (200, 400), resp.text
    if resp.content:
        assert resp.json()["resourceType"] == "OperationOutcome"


def test_pathological_bodies(service: Service) -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe\x00", b"", b"null", b'"x"', b"1e999999"):
        resp = service.ehr.post(ES, None, raw=raw)
        assert resp.status_code == 400, (raw[:10], resp.text)
        assert resp.json()["resourceType"] == "OperationOutcome"
