"""What the companion writes, every kind at once (a session, steps, the check-in with its exercise vital sign,
every alert's Flag and Communication), passes our validator (PA IG profiles) and the independent one (Medplum's
validateResource, tests/oracle)."""

from __future__ import annotations

from datetime import date, datetime, timezone

from service.clinical.selfreport import Recall, Report, Session, Symptoms, Warnings, screen
from service.fhir.selfreport import report_bundle
from service.fhir.validate import validate_resource
from tests.oracle import medplum

DAY = date(2026, 3, 30)


def _resources() -> list[dict]:
    report = Report(DAY, Session(DAY, "Walking", 30, 4), 6400, Symptoms(DAY, fatigue=8, pain=7, breathlessness=2),
                    Warnings(chest_pain=True, fainting=True, fever=True, bone_pain=True), Recall(3, 30))
    alerts = screen(report)
    assert len(alerts) == 5
    bundle = report_bundle(report, alerts, entry_id="oracle-0001", patient_ref="Patient/onc-01",
                           now=datetime(2026, 3, 30, 18, tzinfo=timezone.utc), care_team="Practitioner/p1")
    assert [e["request"]["ifNoneExist"].startswith("identifier=") for e in bundle["entry"]] == \
        [True] * len(bundle["entry"])
    return [e["resource"] for e in bundle["entry"]]


def test_ours_finds_no_error() -> None:
    resources = _resources()
    assert {r["resourceType"] for r in resources} == {"Observation", "Flag", "Communication"}
    found = [(r["resourceType"], str(i)) for r in resources for i in validate_resource(r) if i.severity == "error"]
    assert found == []


def test_medplum_finds_no_error() -> None:
    resources = _resources()
    results = medplum.validate(resources)
    found = [(r["resourceType"], str(i)) for r, issues in zip(resources, results) for i in issues
             if i.severity in ("error", "fatal")]
    assert found == [], found


def test_the_pa_observation_rules_are_enforced() -> None:
    """The check above could not pass vacuously: the PA IG's category slice, effective[x] and hasMember bite."""
    by_code = {r["code"]["coding"][0]["code"]: r for r in _resources() if r["resourceType"] == "Observation"}
    duration = {k: v for k, v in by_code["55411-3"].items() if k != "effectiveDateTime"}
    duration["category"] = by_code["55411-3"]["category"][:1]
    errors = [str(i) for i in validate_resource(duration) if i.severity == "error"]
    assert any("PhysicalActivity" in e for e in errors) and any("effective[x]" in e for e in errors)
    group = {k: v for k, v in by_code["PAPanel"].items() if k != "hasMember"}
    assert any("hasMember" in str(i) for i in validate_resource(group) if i.severity == "error")


def test_the_plan_speaks_to_the_patient_without_clinical_scales() -> None:
    """The prescription's lines keep their words and lose the bracketed scales (the page explains effort once)."""
    from service.patient.plan import _plain

    assert _plain("During aerobic sessions: moderate (Borg RPE 12-13; 40-59% heart-rate reserve; target HR 101-114 "
                  "beats/min (RPE takes precedence))") == "During aerobic sessions: moderate"
    assert _plain("Aerobic: Phase 1 of 2 (weeks 1-2): start with 3 days/week") == \
        "Aerobic: Phase 1 of 2 (weeks 1-2): start with 3 days/week"
