"""FHIR JSON -> PatientSnapshot: units, status handling, latest/stale/history, referrals, robustness."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.clinical.snapshot import build_snapshot, build_snapshot_report, parse_datetime, value_reader
from service.terminology import get_terminology
from tests.clinical.support import NOW, bundle, run


def _read(measure: str, value: float, unit: str | None) -> object:
    q: dict[str, object] = {"value": value}
    if unit is not None:
        q["unit"] = unit
    term = get_terminology()
    return value_reader(term).read(term.measure(measure), {"valueQuantity": q})


@pytest.mark.parametrize("measure,value,unit,expected", [
    ("platelets", 150, "10*3/uL", 150), ("platelets", 150, "10*9/L", 150),
    ("platelets", 150000, "/uL", 150), ("platelets", 150, "K/uL", 150),
    ("hemoglobin", 12, "g/dL", 12), ("hemoglobin", 120, "g/L", 12),
    ("hemoglobin", 7.45, "mmol/L", 12.0), ("temperature", 98.6, "[degF]", 37.0),
    ("temperature", 37.5, "Cel", 37.5), ("grip-right", 50, "[lb_av]", 22.68),
    ("six-minute-walk", 1000, "[ft_i]", 304.8), ("ecog", 2, None, 2),
])
def test_unit_normalisation(measure: str, value: float, unit: str | None, expected: float) -> None:
    read = _read(measure, value, unit)
    assert isinstance(read, tuple) and read[0] == pytest.approx(expected, abs=0.01)


def test_unknown_or_wrong_unit_is_a_problem_not_a_value() -> None:
    assert isinstance(_read("platelets", 150, "furlongs"), str)
    assert isinstance(_read("temperature", 7.45, "mmol/L"), str)  # mmol/L only means something for Hb
    assert isinstance(_read("hemoglobin", 7.5, None), str)  # g/dL or mmol/L: not guessed
    assert _read("temperature", 38.6, None) == (38.6, None)  # only degrees Celsius makes 38.6 plausible


def test_fhir_dates() -> None:
    assert parse_datetime("2024") == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert parse_datetime("2024-05") == datetime(2024, 5, 1, tzinfo=timezone.utc)
    assert parse_datetime("2024-05-01T10:00:00+02:00") == datetime(2024, 5, 1, 8, tzinfo=timezone.utc)
    assert parse_datetime("yesterday") is None and parse_datetime(5) is None


def test_snapshot_core_fields() -> None:
    s, _, issues = run("fitness_low_units")
    assert s.patient_ref == "Patient/p1" and s.sex == "female" and s.birth_date == date(1961, 9, 30)
    assert s.age == 65
    assert s.latest["six-minute-walk"].value == pytest.approx(365.76)
    assert s.latest["grip-right"].unit == "kg" and s.latest["grip-right"].value == pytest.approx(13.61, abs=0.01)
    assert [c.ref for c in s.cancers] == ["Condition/cancer"]
    assert issues == ()


def test_blood_pressure_components() -> None:
    s, _, _ = run("bp_high_panel")
    sbp, dbp = s.latest["bp-systolic"], s.latest["bp-diastolic"]
    assert (sbp.value, dbp.value) == (172, 96)
    assert sbp.components == (("bp-diastolic", 96.0),) and sbp.ref == dbp.ref == "Observation/bp"
    assert "blood-pressure" not in s.latest


def test_stale_values_are_kept_apart() -> None:
    s, _, _ = run("platelets_stale_on_chemo")
    assert "platelets" not in s.latest and s.stale["platelets"].value == 15
    s2, _, _ = run("fever_stale")
    assert s2.latest["temperature"].value == 36.8 and len(s2.history["temperature"]) == 2


def test_exercise_vital_sign_history_in_time_order() -> None:
    s, _, _ = run("evs_history")
    assert [m.value for m in s.history["evs-minutes-per-week"]] == [20, 60, 100]
    assert s.latest["evs-minutes-per-week"].ref == "Observation/evs-3"


def test_entered_in_error_and_refuted_are_ignored() -> None:
    s, _, _ = run("ecog_entered_in_error")
    assert s.latest["ecog"].value == 1
    assert not run("refuted_cancer")[0].cancers
    assert not run("bone_metastases_refuted")[0].bone_metastases


def test_coded_ecog_answer() -> None:
    assert run("ecog_coded_answer")[0].latest["ecog"].value == 1


def test_treatments() -> None:
    s, _, _ = run("cardiotoxic_doxorubicin")
    (t,) = s.treatments
    assert (t.kind, t.active, t.cardiotoxic, t.display) == ("chemotherapy", True, True, "doxorubicin")
    (rt,) = run("radiotherapy_in_progress")[0].treatments
    assert (rt.kind, rt.active) == ("radiotherapy", True)
    (old,) = run("chemo_completed_long_ago")[0].treatments
    assert not old.active
    kinds = {t.kind for name in ("immunotherapy_pembrolizumab", "endocrine_letrozole", "surgery_recent")
             for t in run(name)[0].treatments}
    assert kinds == {"immunotherapy", "endocrine", "surgery"}
    assert run("beta_blocker_metoprolol")[0].comorbidities["beta-blocker"][0].ref == "MedicationRequest/meto"


def test_referrals_and_tasks() -> None:
    s, _, _ = run("existing_referral")
    (r,) = s.referrals
    assert (r.ref, r.status, r.task_ref, r.task_status, r.identifier) == (
        "ServiceRequest/ref1", "active", "Task/task1", "accepted", "rx-123")


def test_junk_is_skipped_and_noted_never_raised() -> None:
    s, p, issues = run("junk_resources")
    text = "\n".join(issues)
    for rid in ("nocode", "other-patient"):
        assert f"Observation/{rid}" in text
    assert "temperature" not in s.latest  # other patient's fever and a future value are not used
    # Present but unreadable safety data is kept, not skipped: a platelet count in "furlongs", a haemoglobin
    # without a date. Both are blood counts, so the plan is deferred until a clinician has checked them.
    assert {(u.ref, u.requires) for u in s.unreadable} == {("Observation/badunit", "defer"),
                                                           ("Observation/notime", "defer")}
    assert p.setting == "defer" and p.clearance_required
    assert [m.measure for m in p.missing_data[:2]] == ["hemoglobin", "platelets"]
    assert "Observation/badunit" in p.missing_data[1].text and "furlongs" in p.missing_data[1].text
    # "< 10" platelets is a bound read toward danger (it could be 3): the severe-thrombocytopenia rule fires.
    assert s.latest["platelets"].comparator == "<" and s.latest["platelets"].value == 10
    assert "HEME-PLT-20" in {r.rule for r in p.red_flags}


def test_accepts_several_bundles_and_bare_resources() -> None:
    b = bundle("multiple_precautions")
    half = len(b["entry"]) // 2
    first = {**b, "entry": b["entry"][:half]}
    resources = [e["resource"] for e in b["entry"][half:]]
    assert build_snapshot([first, *resources], NOW) == build_snapshot(b, NOW)
    assert build_snapshot([b, b], NOW) == build_snapshot(b, NOW)  # duplicates across prefetch Bundles
    assert build_snapshot(iter([b]), NOW) == build_snapshot(b, NOW)


def _platelets(value: float, when: str, **extra: object) -> dict:
    res = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]},
           "valueQuantity": {"value": value, "unit": "10*3/uL", "system": "http://unitsofmeasure.org",
                             "code": "10*3/uL"}, "effectiveDateTime": when}
    res.update(extra)
    return res


def test_resources_without_an_id_are_each_read() -> None:
    """Two platelet counts with neither an id nor a fullUrl are two results, not one resource sent twice: the
    low newer one was dropped before (both were "Observation/(no id)")."""
    b = bundle("baseline_breast")
    b = {**b, "entry": [*b["entry"], {"resource": _platelets(150, "2026-11-01T09:00:00Z")},
                        {"resource": _platelets(12, "2026-11-19T09:00:00Z")}]}
    s = build_snapshot(b, NOW)
    assert s.latest["platelets"].value == 12
    assert len({m.ref for m in s.history["platelets"]}) == len(s.history["platelets"])


def test_a_date_before_year_one_in_utc_is_unreadable_not_a_crash() -> None:
    b = bundle("baseline_breast")
    b = {**b, "entry": [*b["entry"], {"resource": _platelets(12, "0001-01-01T00:00:00+01:00", id="ancient")}]}
    s = build_snapshot(b, NOW)
    assert ("Observation/ancient", "defer") in {(u.ref, u.requires) for u in s.unreadable}
    assert parse_datetime("0001-01-01T00:00:00+01:00") is None


def test_naive_now_is_utc() -> None:
    b = bundle("fever_celsius")
    assert build_snapshot(b, NOW.replace(tzinfo=None)) == build_snapshot(b, NOW)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
resource_keys = st.sampled_from(["resourceType", "id", "status", "code", "subject", "valueQuantity", "component",
                                 "effectiveDateTime", "clinicalStatus", "verificationStatus", "onsetDateTime",
                                 "medicationCodeableConcept", "performedPeriod", "focus", "birthDate"])
resource_types = st.sampled_from(["Patient", "Condition", "Observation", "MedicationRequest", "Procedure",
                                  "MedicationAdministration", "MedicationStatement", "ServiceRequest", "Task"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(resource_types, st.dictionaries(resource_keys, json_values, max_size=6)), max_size=6))
def test_arbitrary_junk_never_crashes(items: list[tuple[str, dict]]) -> None:
    resources = [{**body, "resourceType": rtype} for rtype, body in items]
    snapshot, issues = build_snapshot_report({"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]},
                                             NOW)
    assert snapshot.as_of == NOW
    assert isinstance(issues, tuple)
