"""Hand-built clinical values (the clinical core is written in parallel; these follow model.py exactly)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timezone

from service.clinical.model import (CodedFact, Component, Intensity, Measurement, MissingData, PatientSnapshot,
                                    Precaution, Prescription, Reason)
from service.fhir.signing import Signing

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)


def snapshot() -> PatientSnapshot:
    cancer = CodedFact(ref="Condition/breast-1", system="http://snomed.info/sct", code="254837009",
                       display="Malignant neoplasm of breast", onset=date(2025, 10, 1))
    plt = Measurement(measure="platelets", value=42.0, unit="10*3/uL", effective=NOW, ref="Observation/plt-1",
                      code="777-3")
    return PatientSnapshot(as_of=NOW, patient_ref="Patient/p1", birth_date=date(1970, 5, 17), sex="female",
                           cancers=(cancer,), latest={"platelets": plt})


def prescription(**changes) -> Prescription:
    p = Prescription(
        eligible=True,
        setting="home-based",
        clearance_required=False,
        components=(
            Component(type="aerobic", frequency_per_week=3, minutes_per_session=30,
                      intensity=Intensity(label="moderate", scale="RPE 6-20", low=12, high=13,
                                          hrr_low_pct=40, hrr_high_pct=59),
                      activities=("brisk walking", "stationary cycling")),
            Component(type="resistance", frequency_per_week=2, minutes_per_session=20,
                      intensity=Intensity(label="moderate", scale="RPE 6-20", low=12, high=13),
                      activities=("resistance bands",), sets=2, repetitions="8-15"),
        ),
        precautions=(Precaution(code="thrombocytopenia", text="Platelets 30-50: no heavy resistance <&> training",
                                rule="heme.platelets.30-50", source="Maltser 2017"),),
        missing_data=(MissingData(measure="six-minute-walk", text="No 6-minute walk test in 6 months.",
                                  recommendation="Recommend a baseline assessment."),),
        rationale=(Reason(rule="heme.platelets.30-50", finding="Platelets 42 x10^9/L",
                          effect="moderate exercise, no heavy resistance", source="Maltser 2017",
                          refs=("Observation/plt-1",)),),
        progression=("Add 5 minutes per session every 2 weeks as tolerated.",),
        stop_rules=("dizziness or fainting", "chest pain or pressure"),
        red_flags=(),
        ruleset_version="2026.03.0",
        generated_at=NOW,
        patient_ref="Patient/p1",
        cancer_refs=("Condition/breast-1",),
        supporting_refs=("Observation/plt-1",),
    )
    return replace(p, **changes) if changes else p


def signing(**changes) -> Signing:
    s = Signing(key="sig-4f2a9c", practitioner_ref="Practitioner/sandbox-clinician", signed_at=NOW,
                practitioner_display="Dr Ada Example", encounter_ref="Encounter/e1")
    return replace(s, **changes) if changes else s
