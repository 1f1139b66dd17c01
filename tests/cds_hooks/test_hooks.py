"""Hook calls over real HTTP: discovery, validation (400/404/412), cards for realistic patients, suppression."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import httpx
import orjson
import pytest

from service.cds_hooks import followup
from service.cds_hooks.discovery import ENCOUNTER_START_ID, PATIENT_VIEW_ID
from tests.cds_hooks import patients
from tests.cds_hooks.conftest import Clock, Service, assert_clean, find_empty, hook_body

ES = f"/cds-services/{ENCOUNTER_START_ID}"
PV = f"/cds-services/{PATIENT_VIEW_ID}"


def _pid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def call(service: Service, path: str, body: Any, **kw: Any) -> Any:
    resp = service.ehr.post(path, body, **kw)
    assert_clean(resp)
    return resp


def cards_for(service: Service, builder: patients.PatientBuilder, path: str = ES) -> list[dict[str, Any]]:
    sid = path.rsplit("/", 1)[1]
    resp = call(service, path, hook_body(sid, builder.prefetch(), builder.pid))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    return resp.json()["cards"]


def _outcome(resp: Any, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0].get("diagnostics", "")


# -- discovery ----------------------------------------------------------------------------------------------


def test_discovery_document(service: Service) -> None:
    from service.fhir.queries import prefetch_templates

    resp = service.ehr.get("/cds-services")
    data = assert_clean(resp)
    assert resp.status_code == 200
    by_id = {s["id"]: s for s in data["services"]}
    assert set(by_id) == {ENCOUNTER_START_ID, PATIENT_VIEW_ID}
    assert by_id[ENCOUNTER_START_ID]["hook"] == "encounter-start"
    assert by_id[PATIENT_VIEW_ID]["hook"] == "patient-view"
    for s in by_id.values():
        assert s["title"] and s["description"]
        assert s["prefetch"] == prefetch_templates()
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        for template in s["prefetch"].values():
            assert "{{context.patientId}}" in template
            # within the spec's recommended query subset: read or type search, simple parameters, one token
            assert re.findall(r"\{\{[^}]*\}\}", template) == ["{{context.patientId}}"]
            path, _, query = template.partition("?")
            assert re.fullmatch(r"[A-Z][A-Za-z]+(/\{\{context\.patientId\}\})?", path)
            for name, _, _ in (p.partition("=") for p in query.split("&") if p):
                # _include: the Medication a medication resource references (issue 11: drugs coded only
                # as Medication resources must be recognised)
                assert name in {"patient", "code", "status", "_count", "_sort", "date", "category",
                                "clinical-status", "_include"}, name
        assert "patient/Observation.rs" in s["usageRequirements"]
        assert "patient/Condition.rs" in s["usageRequirements"]


# -- validation ---------------------------------------------------------------------------------------------


def test_unknown_service_is_404(service: Service) -> None:
    msg = _outcome(call(service, "/cds-services/nope", hook_body(ENCOUNTER_START_ID, {}, "p1")), 404)
    assert "nope" in msg
    assert service.ehr.post("/cds-services/nope/feedback", {"feedback": []}).status_code == 404


@pytest.mark.parametrize("mutate, expect", [
    (lambda b: "not json", "not valid JSON"),
    (lambda b: "[1, 2]", "JSON object"),
    (lambda b: {k: v for k, v in b.items() if k != "hook"}, "'hook' is required"),
    (lambda b: {**b, "hook": "patient-view"}, "encounter-start"),
    (lambda b: {**b, "hook": "order-sign"}, "encounter-start"),
    (lambda b: {k: v for k, v in b.items() if k != "hookInstance"}, "'hookInstance' is required"),
    (lambda b: {**b, "hookInstance": "abc"}, "UUID"),
    (lambda b: {k: v for k, v in b.items() if k != "context"}, "'context' is required"),
    (lambda b: {**b, "context": "x"}, "'context' must be"),
    (lambda b: {**b, "context": {**b["context"], "patientId": 42}}, "context.patientId"),
    (lambda b: {**b, "context": {**b["context"], "patientId": "../../Patient?name=x"}}, "context.patientId"),
    (lambda b: {**b, "context": {**b["context"], "userId": "onc-1"}}, "context.userId"),
    (lambda b: {**b, "context": {**b["context"], "userId": "Patient/p1"}}, "context.userId"),
    (lambda b: {**b, "context": {k: v for k, v in b["context"].items() if k != "encounterId"}},
     "context.encounterId"),
    (lambda b: {**b, "prefetch": []}, "'prefetch' must be"),
    (lambda b: {**b, "prefetch": {"patient": "x"}}, "prefetch.patient"),
    (lambda b: {**b, "fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                           "scope": "patient/*.rs", "subject": "onco"}}, "fhirServer"),
    (lambda b: {**b, "fhirServer": "http://127.0.0.1:9/fhir",
                "fhirAuthorization": {"access_token": "t", "token_type": "MAC", "expires_in": 300,
                                      "scope": "patient/*.rs", "subject": "onco"}}, "token_type"),
    (lambda b: {**b, "fhirServer": "ftp://x/fhir"}, "fhirServer"),
])
def test_invalid_requests_are_400_with_operation_outcome(service: Service, mutate: Any, expect: str) -> None:
    body = mutate(hook_body(ENCOUNTER_START_ID, {"patient": None}, "p1"))
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    msg = _outcome(call(service, ES, None, raw=raw), 400)
    assert expect in msg


def test_patient_view_context(service: Service) -> None:
    p = patients.non_oncology(_pid("pv"))
    body = hook_body(PATIENT_VIEW_ID, p.prefetch(), p.pid)
    assert "encounterId" not in body["context"]  # optional for patient-view
    assert call(service, PV, body).json() == {"cards": []}
    with_encounter = {**body, "context": {**body["context"], "encounterId": "enc-9"}}
    assert call(service, PV, with_encounter).json() == {"cards": []}
    _outcome(call(service, PV, {**body, "hook": "encounter-start"}), 400)


# -- data (412) ---------------------------------------------------------------------------------------------


def test_no_prefetch_and_no_fhir_server_is_412(service: Service) -> None:
    msg = _outcome(call(service, ES, hook_body(ENCOUNTER_START_ID, None, "p1")), 412)
    assert "fhirServer" in msg
    b = patients.bone_metastases(_pid("partial"))
    partial = b.prefetch()
    del partial["observations"]
    _outcome(call(service, ES, hook_body(ENCOUNTER_START_ID, partial, b.pid)), 412)


def test_null_prefetch_keys_mean_no_data(service: Service) -> None:
    p = patients.bone_metastases(_pid("nulls"))
    prefetch = {k: None for k in patients.KEYS}
    prefetch["patient"] = p.patient
    prefetch["conditions"] = p.prefetch()["conditions"]
    cards = call(service, ES, hook_body(ENCOUNTER_START_ID, prefetch, p.pid)).json()["cards"]
    assert len(cards) == 1 and cards[0]["indicator"] == "info"
    assert "**Missing data**" in cards[0]["detail"]  # no labs, no functional tests: said so
    # everything null: no data about this patient at all -> no card, not an error
    assert call(service, ES, hook_body(ENCOUNTER_START_ID, {k: None for k in patients.KEYS}, p.pid)).json() == \
        {"cards": []}


# -- cards for realistic patients ---------------------------------------------------------------------------


def test_non_oncology_patient_gets_no_card(service: Service) -> None:
    assert cards_for(service, patients.non_oncology(_pid("nonc"))) == []


def test_bone_metastases_referral_card(service: Service) -> None:
    from service.fhir.validate import errors, validate_resource

    [card] = cards_for(service, patients.bone_metastases(_pid("bone")))
    assert card["indicator"] == "info"
    assert card["summary"].startswith("Exercise referral")
    assert len(card["summary"]) < 140 and "precaution" in card["summary"]
    assert "Bone" in card["detail"] or "bone" in card["detail"]
    uuid.UUID(card["uuid"])
    [link] = card["links"]
    assert link["type"] == "smart" and link["url"] == f"{service.url}/smart/launch"
    assert json.loads(link["appContext"])["cardUuid"] == card["uuid"]
    assert {c["code"] for c in card["overrideReasons"]} >= {"patient-declined", "discuss-next-visit"}
    if card.get("suggestions"):
        [s] = card["suggestions"]
        uuid.UUID(s["uuid"])
        sr = s["actions"][0]["resource"]
        assert sr["status"] == "draft"
        assert errors(validate_resource(sr)) == []


def test_neutropenic_fever_warning_card(service: Service) -> None:
    [card] = cards_for(service, patients.neutropenic_fever(_pid("fever")))
    assert card["indicator"] == "warning"
    assert "suggestions" not in card
    assert card["summary"].startswith("Hold exercise today")


def test_survivorship_home_based(service: Service) -> None:
    [card] = cards_for(service, patients.survivorship(_pid("surv")))
    assert card["indicator"] == "info"
    assert "self-managed at home" in card["summary"]
    assert card["suggestions"][0]["actions"][0]["type"] == "create"
    assert json.loads(card["links"][0]["appContext"])["setting"] == "home-based"


def test_existing_referral_follow_up(service: Service) -> None:
    [card] = cards_for(service, patients.existing_referral(_pid("ref")))
    assert card["indicator"] == "info"
    assert card["summary"] == "Exercise referral: Task in-progress; 95 min/week (up from 60)"
    assert "suggestions" not in card


def test_at_most_one_card_and_repeat_suppressed(service: Service, clock: Clock) -> None:
    p = patients.bone_metastases(_pid("repeat"))
    assert len(cards_for(service, p)) == 1
    assert cards_for(service, p) == []  # encounter-start fired again: quiet
    assert cards_for(service, p, PV) == []  # patient-view right after: quiet too
    # something changed (a new precaution-worthy lab): the card comes back
    p.obs("777-3", "Platelets", 35, "10*3/uL", 0.05)
    again = cards_for(service, p)
    assert len(again) == 1
    clock.advance(followup.REPEAT_WINDOW - 60)
    assert cards_for(service, p) == []  # still the same visit: encounter-start stays quiet ...
    [quiet] = cards_for(service, p, PV)  # ... and patient-view keeps the app one click away
    assert quiet["summary"].startswith("Exercise plan available (suggested ")
    assert "suggestions" not in quiet and quiet["links"][0]["type"] == "smart"
    clock.advance(120)
    [card] = cards_for(service, p, PV)  # the next visit: a brief, repeated conversation
    assert card["summary"].startswith("Exercise referral suggested")


def test_warning_once_per_opening_but_for_every_clinician(service: Service, clock: Clock) -> None:
    p = patients.neutropenic_fever(_pid("fever-repeat"))
    [warning] = cards_for(service, p)
    assert warning["indicator"] == "warning"
    assert cards_for(service, p, PV) == []  # the chart opening's second hook: one warning is enough
    other = hook_body(PATIENT_VIEW_ID, p.prefetch(), p.pid)
    other["context"]["userId"] = "Practitioner/nurse-2"
    assert len(call(service, PV, other).json()["cards"]) == 1  # another clinician always sees it
    clock.advance(followup.WARNING_REPEAT_WINDOW + 1)
    assert len(cards_for(service, p)) == 1  # the next opening, a minute later: shown again


def _concurrent(service: Service, calls: list[tuple[str, dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Send every call at once over real HTTP (one connection each); the cards of each answer, in order."""

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(calls))
        async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=30) as http:
            bodies = [(path, orjson.dumps(body), service.ehr.token(path)) for path, body in calls]
            return await asyncio.gather(*(
                http.post(path, content=raw, headers={"Authorization": f"Bearer {tok}",
                                                      "Content-Type": "application/json"})
                for path, raw, tok in bodies))

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * len(calls), [r.text[:200] for r in responses]
    return [assert_clean(r)["cards"] for r in responses]


@pytest.mark.parametrize("builder", [patients.bone_metastases, patients.existing_referral,
                                     patients.neutropenic_fever])
def test_concurrent_hooks_for_one_patient_show_one_card(service: Service, builder: Any) -> None:
    """The EHR fires encounter-start and patient-view together when an encounter is opened: one card."""
    ps = [builder(_pid("twin")) for _ in range(6)]
    calls = [(path, hook_body(path.rsplit("/", 1)[1], p.prefetch(), p.pid)) for p in ps for path in (ES, PV)]
    answers = _concurrent(service, calls)
    for i, p in enumerate(ps):
        es, pv = answers[2 * i], answers[2 * i + 1]
        assert len(es) + len(pv) == 1, (p.pid, es, pv)
        # the winner's card is on record: feedback is taken from the service that showed it, not the other
        shown_by, other = (ES, PV) if es else (PV, ES)
        item = {"card": (es or pv)[0]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
        assert service.ehr.post(f"{other}/feedback", {"feedback": [item]}).status_code == 400
        assert service.ehr.post(f"{shown_by}/feedback", {"feedback": [item]}).status_code == 200


def test_concurrent_repeats_of_one_hook_show_one_card(service: Service) -> None:
    p = patients.survivorship(_pid("burst"))
    answers = _concurrent(service, [(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)) for _ in range(5)])
    assert sorted(len(a) for a in answers) == [0, 0, 0, 0, 1]


def test_unicode_and_no_empty_values_everywhere(service: Service) -> None:
    for builder in (patients.bone_metastases, patients.neutropenic_fever, patients.survivorship,
                    patients.existing_referral, patients.non_oncology):
        b = builder(_pid("clean"))
        resp = call(service, ES, hook_body(ENCOUNTER_START_ID, b.prefetch(), b.pid))
        assert resp.status_code == 200
        assert find_empty(resp.json()) == []


def test_cors_preflight_for_browser_clients(service: Service) -> None:
    resp = service.ehr.http.options(f"{service.url}{ES}", headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert resp.status_code == 200, resp.text
    allowed = resp.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "POST" in resp.headers["access-control-allow-methods"]
    # and the real call carries the CORS header too
    p = patients.non_oncology(_pid("cors"))
    real = service.ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid),
                            headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert real.status_code == 200 and real.headers.get("access-control-allow-origin")


def test_card_history_failure_does_not_cost_the_card(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("store down")

    monkeypatch.setattr(followup, "claim", broken)
    monkeypatch.setattr(followup, "remember", broken)
    assert len(cards_for(service, patients.bone_metastases(_pid("nostore")))) == 1


@pytest.mark.parametrize("code,display", [
    ("Z85.3", "Personal history of malignant neoplasm of breast"),  # a survivor coded as history
    ("C77.3", "Secondary and unspecified malignant neoplasm of axilla and upper limb lymph nodes"),  # nodes only
])
def test_a_survivor_or_nodes_only_patient_gets_a_card(service: Service, code: str, display: str) -> None:
    # Issue 11: eligibility is any cancer on record, not only a primary cancer Condition.
    p = patients.PatientBuilder(_pid("hist"))
    p.condition(patients.ICD10, code, display, onset_days=1500)
    p.labs(platelets=250, hb=13.5, anc=4.0, temp=36.6, days_ago=10)
    cards = call(service, ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).json()["cards"]
    assert len(cards) == 1 and cards[0]["summary"].startswith("Exercise referral suggested: self-managed at home")


def test_the_repeat_window_is_a_setting(tmp_path: Any, keys: dict[str, Any], clock: Clock) -> None:
    from service.app import create_app
    from tests.cds_hooks.conftest import Ehr, make_settings
    from tests.support.live import free_port, serve

    port = free_port()
    app = create_app(make_settings(port, tmp_path, keys, None, card_repeat_hours=1))
    with serve(app, port) as url:
        ehr = Ehr(url, keys["es"])
        p = patients.bone_metastases(_pid("window"))
        assert len(ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).json()["cards"]) == 1
        clock.advance(50 * 60)
        assert ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).json() == {"cards": []}
        clock.advance(11 * 60)  # an hour after: shown again (the default would wait 12 hours)
        assert len(ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).json()["cards"]) == 1


@pytest.mark.parametrize("hours", [0, -1, 24 * 91])
def test_a_repeat_window_that_cannot_work_is_refused(hours: float) -> None:
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match="CARD_REPEAT_HOURS"):
        Settings(mode="sandbox", card_repeat_hours=hours)


def test_the_follow_up_card_says_what_happened(service: Service) -> None:
    # Issue 12: what the exercise service reported (PA IG Task businessStatus and note), the change in function
    # since the referral, and the exercise vital sign trend - not a generic line.
    p = patients.existing_referral(_pid("happened"))
    p.obs("64098-7", "Six minute walk test distance", 410, "m", 60, category="exam")
    p.obs("64098-7", "Six minute walk test distance", 468, "m", 3, category="exam")
    task = p.by_key["referralTasks"][-1]
    task["businessStatus"] = {"text": "Attending twice weekly"}
    task["note"] = [{"text": "Week 2: tolerating 25 min walks", "time": patients._ts(20)},
                    {"text": "Week 6: 8 of 10 sessions attended; RPE 12-13", "time": patients._ts(4)}]
    [card] = cards_for(service, p)
    detail = card["detail"]
    assert "Task in-progress — Attending twice weekly" in detail
    assert "Week 6: 8 of 10 sessions attended; RPE 12-13" in detail  # the newest report
    assert "Week 2" not in detail
    assert "6-minute walk distance**: 410 m → 468 m" in detail  # before the referral → now, said once
    assert "95 min/week" in detail and "up from 60" in detail


def test_a_rejected_referral_says_why(service: Service) -> None:
    p = patients.existing_referral(_pid("rejected"))
    task = p.by_key["referralTasks"][-1]
    task["status"], task["statusReason"] = "on-hold", {"text": "Waiting for cardiology clearance"}
    [card] = cards_for(service, p)
    assert "**Reason given**: Waiting for cardiology clearance" in card["detail"]
