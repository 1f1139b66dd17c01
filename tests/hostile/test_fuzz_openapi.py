"""Schemathesis against our own OpenAPI document (`app.openapi()` of the running rig), over real HTTP.

The document is used as the app publishes it, with three test-side refinements so the generated requests
reach past the first check: the CDS service ids are the real ones, the SMART `s` parameter names a live
session (the call carries its cookie and CSRF token), and the SMART POST bodies have the documented shape
(`preferences`, `edits`, `draftVersion`) — the routes read raw JSON and so declare no body.
Properties: no 5xx, no hang (10 s per request), no stack trace or Python exception name in any response,
every error an OperationOutcome. Deterministic (derandomize) and small, to stay fast on 2 cores.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.hostile.conftest import ES, PV, Rig, assert_no_trace
from tests.smart.conftest import Launched, ehr_launch

REQUEST_TIMEOUT = 10
SEEN: dict[str, set[int]] = {}  # operation -> statuses answered (checked by the last test)

_STR = {"type": "string", "maxLength": 40}
_PREFERENCES = {"type": "object", "properties": {
    "preferredSetting": {"type": "string", "enum": ["home-based", "community", "supervised", "defer", "moon"]},
    "activities": {"type": "array", "items": _STR, "maxItems": 4},
    "daysAvailable": {"type": "array", "items": {"type": "string", "enum": ["mon", "tue", "sun", "xyz"]}},
    "equipment": {"type": "array", "items": _STR, "maxItems": 3}}}
_COMPONENT = {"type": "object", "properties": {
    "type": {"type": "string", "enum": ["aerobic", "resistance", "flexibility", "balance", "juggling"]},
    "frequencyPerWeek": {"type": "integer"}, "minutesPerSession": {"type": "integer"},
    "intensity": {"type": "string", "enum": ["light", "moderate", "vigorous", "extreme"]},
    "activities": {"type": "array", "items": _STR, "maxItems": 3}}}
_EDITS = {"type": "object", "properties": {
    "components": {"type": "array", "items": _COMPONENT, "maxItems": 4},
    "setting": {"type": "string"}, "notes": {"type": "string", "maxLength": 200},
    "removePrecautions": {"type": "array", "items": _STR, "maxItems": 3},
    "overrideReasons": {"type": "object", "additionalProperties": {"type": "object", "properties": {
        "code": {"type": "string", "enum": ["specialist-cleared", "other", "patient-declined"]}, "text": _STR}}}}}
_ENTRY_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {
    "entryId": {"type": "string", "maxLength": 70}, "day": _STR, "steps": {"type": ["integer", "string", "null"]},
    "session": {"type": "object", "properties": {"activity": _STR, "minutes": {"type": ["integer", "string"]},
                                                 "effort": {"type": "string", "enum": ["easy", "moderate", "x"]}}},
    "symptoms": {"type": "object", "additionalProperties": {"type": ["integer", "string", "null"]}},
    "warnings": {"type": "object", "additionalProperties": {"type": ["boolean", "string"]}}}}}}}
_SMART_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {
    "preferences": _PREFERENCES, "edits": _EDITS, "draftVersion": {"type": "integer"}}}}}}


def refined(schema: dict[str, Any], sid: str) -> dict[str, Any]:
    s = copy.deepcopy(schema)
    for path, item in s["paths"].items():
        for op in item.values():
            for p in op.get("parameters", []):
                if p["name"] == "service_id":
                    p["schema"] = {"type": "string", "enum": [ES, PV]}
                if p["name"] == "s":
                    p["required"] = True
                    p["schema"] = {"type": "string", "enum": [PATIENT_SESSION if path.startswith("/patient/")
                                                              else sid]}
            if path.startswith("/smart/api/") and "requestBody" not in op and op is item.get("post"):
                op["requestBody"] = _SMART_BODY
            if path.startswith("/patient/api/") and "requestBody" not in op and op is item.get("post"):
                op["requestBody"] = _ENTRY_BODY
    return s


@pytest.fixture(scope="module")
def session(rig: Rig) -> tuple[Launched, str]:
    with rig.browser() as b:
        got = ehr_launch(b, patient="onc-30")
        assert b.get("/smart/api/prescription", params={"s": got.sid}).status_code == 200
        return got, b.cookies["oe_smart"]


@pytest.fixture(scope="module")
def patient_session(rig: Rig) -> tuple[Any, str]:
    """The patient companion's session (its own sign-in: the patient's own record)."""
    from tests.notify.conftest import sign
    from tests.patient.conftest import patient_launch

    with rig.browser() as b:
        sign(b, "onc-29", service=None)
        got = patient_launch(b, rig.fhir_base, "onc-29")
        return got, b.cookies["oe_smart"]


def _published_schema() -> dict[str, Any]:
    """The OpenAPI document exactly as create_app publishes it (no lifespan needed to build it)."""
    import tempfile

    from service.app import create_app
    from service.config import Settings

    return create_app(Settings(mode="serve", data_dir=tempfile.gettempdir(), log_json=False)).openapi()


PUBLISHED = _published_schema()
SESSION = "live-session"  # replaced by the live session id in each call
PATIENT_SESSION = "live-patient-session"
schema = schemathesis.openapi.from_dict(refined(PUBLISHED, SESSION))


def test_the_fuzzed_operations_are_the_rigs(rig: Rig) -> None:
    assert {"/cds-services", "/cds-services/{service_id}", "/cds-services/{service_id}/feedback",
            "/smart/api/prescription", "/smart/api/prescription/sign", "/patient/api/plan",
            "/patient/api/entries"} <= set(PUBLISHED["paths"])
    assert rig.app.openapi()["paths"].keys() == PUBLISHED["paths"].keys()


@schema.parametrize()
@settings(max_examples=15, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_openapi_operations_never_fail(case: Any, rig: Rig, session: tuple[Launched, str],
                                      patient_session: tuple[Any, str]) -> None:
    got, cookie = patient_session if case.operation.path.startswith("/patient/") else session
    path = case.formatted_path
    headers: dict[str, str] = {}
    cookies: dict[str, str] = {}
    if path.startswith("/cds-services"):
        headers["Authorization"] = f"Bearer {rig.cds_jwt(path)}"
    else:
        headers["X-CSRF-Token"] = got.csrf
        cookies["oe_smart"] = cookie
    if case.query and case.query.get("s") in (SESSION, PATIENT_SESSION):
        case.query["s"] = got.sid
    resp = case.call(base_url=rig.direct, headers=headers, cookies=cookies, timeout=REQUEST_TIMEOUT)
    SEEN.setdefault(f"{case.method} {case.operation.path}", set()).add(resp.status_code)
    assert resp.status_code < 500, f"{case.method} {path}: {resp.status_code} {resp.text[:300]}"
    assert_no_trace(resp.text)
    if resp.status_code >= 400:
        body = resp.json()
        assert body.get("resourceType") == "OperationOutcome" and body.get("issue"), resp.text[:300]


def test_the_fuzz_got_past_the_front_door() -> None:
    """Runs after the fuzz (file order): the generated calls were authenticated and reached the handlers."""
    if not SEEN:
        pytest.skip("the fuzz test did not run")
    for op, statuses in SEEN.items():
        assert statuses - {401, 403}, f"{op}: only {statuses}: the fuzz never passed authentication"
    assert 200 in SEEN["POST /cds-services/{service_id}/feedback"] | SEEN["GET /cds-services"]
    assert {200, 422} & SEEN["POST /smart/api/prescription"], SEEN["POST /smart/api/prescription"]
    assert {201, 422} & SEEN["POST /patient/api/entries"], SEEN["POST /patient/api/entries"]
