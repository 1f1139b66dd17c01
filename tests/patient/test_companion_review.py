"""The review's findings (issue 15), each pinned: a warning answer is never lost with a bad entry or a refused
one; half answers are not stored as zeros; odd JSON is a 422, not a 500; one sign-in's offline queue never
lands in another's record; only the patient opens the companion; reports close by themselves and lead every
kind of card, most urgent first."""

from __future__ import annotations

import re
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from service.cds_hooks.cards import CardPlan, with_patient_reports
from service.clinical.model import PatientAlert, PatientSnapshot
from service.clinical.snapshot import build_snapshot
from service.fhir.errors import FhirError
from tests.notify.conftest import sign
from tests.patient.conftest import patient_launch, post_entry
from tests.smart.conftest import Sandbox, fhir_reader

NOW = datetime.now(timezone.utc)


def _flags(sandbox: Sandbox, patient: str) -> list[str]:
    with fhir_reader(sandbox) as fhir:
        found = fhir.get("/Flag", params={"patient": patient, "_count": "100"}).json().get("entry", [])
    return [e["resource"]["code"]["coding"][0]["code"] for e in found]


@pytest.fixture(scope="module")
def companion(sandbox: Sandbox) -> Any:
    patient = "onc-15"
    with sandbox.browser() as clin:
        assert sign(clin, patient, service=None)["status"] == "sent"
    b = sandbox.browser()
    yield patient, b, patient_launch(b, sandbox.iss, patient)
    b.close()


def test_a_warning_with_a_bad_session_is_still_recorded(sandbox: Sandbox, companion: Any) -> None:
    patient, b, c = companion
    r = post_entry(b, c, {"entryId": str(uuid.uuid4()), "warnings": {"chest_pain": True},
                          "session": {"activity": "Walking", "minutes": 0, "effort": "moderate"}})
    assert r.status_code == 422 and "minutes" in r.json()["issue"][0]["diagnostics"]
    body = r.json()
    assert [a["rule"] for a in body["alerts"]] == ["PT-CHEST-PAIN"] and body["toldCareTeam"] is True
    assert "PT-CHEST-PAIN" in _flags(sandbox, patient)


@pytest.mark.parametrize("bad,where", [
    ({"session": {"activity": "Walking", "minutes": 20, "effort": ["moderate"]}}, "effort"),
    ({"session": {"activity": "Walking", "minutes": 20, "effort": {"a": 1}}}, "effort"),
    ({"recall": {"days": 3}}, "recall"),
    ({"recall": {"days": 3, "minutesPerDay": ""}}, "recall"),
    ({"steps": [1]}, "steps"),
    ({"symptoms": "7"}, "symptoms")])
def test_odd_values_are_readable_refusals(companion: Any, bad: dict, where: str) -> None:
    _, b, c = companion
    r = post_entry(b, c, {"entryId": str(uuid.uuid4()), **bad})
    assert r.status_code == 422 and where in r.json()["issue"][0]["diagnostics"], r.text


def test_the_patients_tomorrow_is_accepted_for_zones_ahead(companion: Any) -> None:
    _, b, c = companion
    tomorrow = (NOW + timedelta(days=1)).date().isoformat()
    assert post_entry(b, c, {"entryId": str(uuid.uuid4()), "day": tomorrow, "steps": 100}).status_code == 201
    later = (NOW + timedelta(days=3)).date().isoformat()
    assert post_entry(b, c, {"entryId": str(uuid.uuid4()), "day": later, "steps": 100}).status_code == 422


def test_another_sign_ins_queue_is_refused(companion: Any) -> None:
    _, b, c = companion
    queue = re.search(r'"queue":"([0-9a-f]+)"', c.page.text).group(1)
    assert post_entry(b, c, {"entryId": str(uuid.uuid4()), "queue": queue, "steps": 10}).status_code == 201
    r = post_entry(b, c, {"entryId": str(uuid.uuid4()), "queue": "0" * 24, "steps": 10})
    assert r.status_code == 409 and r.json()["resourceType"] == "OperationOutcome"


def test_a_refused_entry_still_sends_its_warnings(sandbox: Sandbox, companion: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The FHIR server refuses the whole transaction (e.g. it validates and rejects a local code): the alerts
    are written on their own, and the answer says the entry was not recorded (a failure path: a stand-in for the
    refusing server wraps the real client)."""
    import service.smart.load as load

    patient, b, c = companion
    real = load.fhir_client

    @asynccontextmanager
    async def refusing(*args: Any, **kwargs: Any) -> Any:
        async with real(*args, **kwargs) as ehr:
            send = ehr.transaction

            async def transaction(bundle: dict, **kw: Any) -> dict:
                if any(e["resource"]["resourceType"] == "Observation" for e in bundle["entry"]):
                    raise FhirError(422, "the server rejected the Observation")
                return await send(bundle, **kw)
            ehr.transaction = transaction
            yield ehr

    monkeypatch.setattr(load, "fhir_client", refusing)
    r = post_entry(b, c, {"entryId": str(uuid.uuid4()), "steps": 100, "warnings": {"fainting": True}})
    assert r.status_code == 502 and r.json()["retry"] is False and r.json()["flagged"] is True, r.text
    assert "PT-FAINTING" in _flags(sandbox, patient)


def test_only_the_patient_opens_the_companion(sandbox: Sandbox) -> None:
    with sandbox.browser() as b:
        r = b.get("/patient/launch", params={"iss": sandbox.iss}, follow_redirects=True)
        txn = re.search(r'name="txn" value="([^"]+)"', r.text).group(1)
        r = b.post("/sandbox/auth/authorize/decision", follow_redirects=True, data={
            "txn": txn, "practitioner": "sandbox-clinician", "patient": "onc-16", "action": "approve"})
        assert r.status_code == 403 and "This page is for the patient" in r.text


def _flag(code: str, start: datetime, end: datetime | None) -> dict:
    return {"resourceType": "Flag", "id": f"f-{code}-{start.day}", "status": "active",
            "code": {"coding": [{"system": "https://fhir.onco-exercise.org/CodeSystem/companion-alert", "code": code}],
                     "text": f"Patient reports {code}."},
            "subject": {"reference": "Patient/p"},
            "period": {"start": start.isoformat(), **({"end": end.isoformat()} if end else {})}}


def test_reports_close_by_themselves_and_the_most_urgent_leads() -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in (
        {"resourceType": "Patient", "id": "p"},
        _flag("PT-SYMPTOM-SEVERE", NOW - timedelta(days=1), NOW + timedelta(days=13)),
        _flag("PT-CHEST-PAIN", NOW - timedelta(days=5), NOW + timedelta(days=9)),
        _flag("PT-FEVER", NOW - timedelta(days=20), NOW - timedelta(days=6)))]}
    s = build_snapshot(bundle, NOW)
    assert [a.rule for a in s.patient_alerts] == ["PT-CHEST-PAIN", "PT-SYMPTOM-SEVERE"]  # the fever has closed


def test_every_kind_of_card_leads_with_the_reports() -> None:
    alerts = tuple(PatientAlert(f"Flag/{i}", "PT-SYMPTOM-SEVERE", f"Patient reports severe tiredness ({i}).", NOW)
                   for i in range(5))
    s = PatientSnapshot(as_of=NOW, patient_ref="Patient/p", birth_date=None, sex=None, patient_alerts=alerts)
    for kind in ("pending", "referral", "warning", "incomplete"):
        plan = CardPlan(kind, {"summary": "Exercise referral suggested", "indicator": "info", "detail": "x"}, "fp")
        out = with_patient_reports(plan, s)
        assert out.card["summary"].startswith("Patient reported severe tiredness (0); exercise referral")
        assert out.card["indicator"] == "warning" and "and 2 more report(s)" in out.card["detail"]
        assert out.fingerprint != plan.fingerprint
    assert with_patient_reports(CardPlan("none", None), s).card is None
