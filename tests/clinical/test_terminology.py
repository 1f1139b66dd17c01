"""terminology/ loads as FHIR JSON and answers membership questions (incl. ICD-10-CM ranges)."""

from __future__ import annotations

import json

import pytest

from service.canonical import CS_LOCAL_OBSERVATION, CS_OVERRIDE_REASON, CS_PRECAUTION, CS_SETTING, ICD10CM, LOINC, SNOMED
from service.paths import TERMINOLOGY_DIR
from service.terminology import TerminologyError, get_terminology, load_terminology

REQUIRED_VALUESETS = [
    "cancer-primary", "cancer-secondary", "bone-metastasis", "comorbidity-cardiac", "comorbidity-neuropathy",
    "comorbidity-lymphedema", "comorbidity-diabetes", "comorbidity-arthritis-osteoporosis", "comorbidity-falls",
    "treatment-chemotherapy", "treatment-immunotherapy", "treatment-endocrine", "treatment-targeted",
    "treatment-radiotherapy", "treatment-surgery", "cardiotoxic-therapy", "observation-codes", "precaution", "setting",
    "exercise-servicerequest-code", "override-reason",
]


def test_required_value_sets_exist_by_id_and_url() -> None:
    t = get_terminology()
    for vs in REQUIRED_VALUESETS:
        assert vs in t.valueset_ids()
        t.in_valueset(f"https://fhir.onco-exercise.org/ValueSet/{vs}", SNOMED, "1")  # resolves by URL too


def test_files_are_fhir_json_with_canonical_urls() -> None:
    for path in TERMINOLOGY_DIR.glob("*.json"):
        res = json.loads(path.read_text())
        assert path.name == f"{res['resourceType']}-{res['id']}.json" and res["status"] == "active"
        if res["resourceType"] == "NamingSystem":  # R4 NamingSystem has no url: it names someone else's system
            assert any(u.get("preferred") for u in res["uniqueId"])
        else:
            assert res["url"].startswith("https://fhir.onco-exercise.org/")


@pytest.mark.parametrize("code,expected", [
    ("C50.911", True), ("C50911", True), ("c18.9", True), ("C7A.010", True), ("C96.9", True), ("D05.11", True),
    ("C44.91", False), ("C44.92", False), ("C44.99", True), ("C44.111", False), ("C79.51", False), ("C97", False),
    ("D10.0", False), ("I10", False),
])
def test_icd10cm_primary_cancer_ranges(code: str, expected: bool) -> None:
    assert get_terminology().in_valueset("cancer-primary", ICD10CM, code) is expected


def test_secondary_and_bone() -> None:
    t = get_terminology()
    assert t.in_valueset("cancer-secondary", ICD10CM, "C78.7")
    assert t.in_valueset("bone-metastasis", ICD10CM, "C7B.03") and t.in_valueset("bone-metastasis", SNOMED, "94222008")
    assert not t.in_valueset("bone-metastasis", ICD10CM, "C79.31")


def test_match_returns_first_matching_coding_of_any_system() -> None:
    t = get_terminology()
    cc = {"coding": [{"system": "urn:local", "code": "x"}, {"system": SNOMED, "code": "254637007"},
                     {"system": ICD10CM, "code": "C34.90"}]}
    assert t.match("cancer-primary", cc) == {"system": SNOMED, "code": "254637007"}
    assert t.match("cancer-primary", {"coding": "junk"}) is None
    assert t.match("cancer-primary", None) is None


def test_our_code_systems() -> None:
    t = get_terminology()
    precautions = {c for _, c in t.codes("precaution")}
    assert {"bone-metastases", "thrombocytopenia", "anemia", "neutropenia", "fever", "peripheral-neuropathy",
            "lymphedema", "cardiac", "recent-surgery", "active-treatment", "fall-risk",
            "low-performance-status"} <= precautions
    assert t.codes("setting") == [(CS_SETTING, c) for c in ("home-based", "community", "supervised", "defer")]
    assert {c for _, c in t.codes("override-reason")} == {"patient-declined", "already-exercising",
                                                          "not-appropriate-now", "discuss-next-visit"}
    assert t.definition(CS_PRECAUTION, "fever")
    assert t.display(CS_OVERRIDE_REASON, "patient-declined") == "Patient declined"
    assert ("http://snomed.info/sct", "390893007") in t.codes("exercise-servicerequest-code")
    with pytest.raises(ValueError):
        t.codes("cancer-primary")  # regex filters cannot be enumerated


def test_observation_table() -> None:
    t = get_terminology()
    keys = {"platelets", "hemoglobin", "anc", "wbc", "temperature", "ecog", "karnofsky", "six-minute-walk",
            "grip-right", "grip-left", "vo2peak", "sit-to-stand", "tug", "resting-hr", "bp-systolic", "bp-diastolic",
            "bmi", "weight", "pain", "rpe", "evs-days-per-week", "evs-minutes-per-day", "evs-minutes-per-week",
            "evs-strength-days", "two-minute-step", "facit-fatigue"}
    assert keys <= set(t.measures())
    assert t.measure("platelets").unit == "10*3/uL" and t.measure("temperature").max_age_days == 2
    assert t.measure_for(LOINC, "26515-7") == "platelets"
    assert t.measure_for(CS_LOCAL_OBSERVATION, "facit-fatigue") == "facit-fatigue"
    assert (LOINC, "82290-8") in t.observation_codes()
    assert t.observation_codes("hemoglobin")[0] == (LOINC, "718-7")
    assert t.in_valueset("observation-codes", LOINC, "89247-1")
    assert t.answer_score(LOINC, "LA9625-0", "ecog") == 3.0
    assert t.answer_score(LOINC, "LA15173-0", "pregnancy-status") == 1.0


def test_broken_terminology_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "ValueSet-x.json").write_text("{not json")
    with pytest.raises(TerminologyError, match="ValueSet-x.json"):
        load_terminology(tmp_path)
    with pytest.raises(TerminologyError, match="not found"):
        load_terminology(tmp_path / "missing")


def test_observation_codes_value_set_lists_every_measure_code() -> None:
    t = get_terminology()
    listed = {sc for m in t.measures().values() for sc in m.codes}
    assert listed == set(t.codes("observation-codes"))


@pytest.mark.parametrize("code,expected", [
    ("C44.1121", False),  # basal cell carcinoma of skin of right upper eyelid (FY2024 sub-code): not in scope
    ("C44.1221", False),  # squamous cell carcinoma of skin of right upper eyelid
    ("C44.1321", True),  # sebaceous cell carcinoma of skin of eyelid: in scope
    ("D47.2", False),  # monoclonal gammopathy: not cancer
])
def test_skin_and_borderline_codes(code: str, expected: bool) -> None:
    assert get_terminology().in_valueset("cancer-primary", ICD10CM, code) is expected


def test_who_icd10_codes_are_normalised_like_icd10cm() -> None:
    t = get_terminology()
    who = "http://hl7.org/fhir/sid/icd-10"
    assert t.in_valueset("cancer-primary", who, "C50.9") and t.in_valueset("cancer-primary", who, "c509")
    assert t.in_valueset("bone-metastasis", who, "C795")


def test_family_history_is_not_personal_history() -> None:
    # SNOMED 429740004 is "Family history of malignant neoplasm of breast": a relative's cancer, not the patient's
    t = get_terminology()
    assert not any(t.in_valueset(vs, SNOMED, "429740004") for vs in
                   ("cancer-history", "cancer-primary", "cancer-secondary", "cancer-regional-nodes"))
    assert t.in_valueset("cancer-history", SNOMED, "429087003")  # history of malignant neoplasm of breast


@pytest.mark.parametrize("system,code,vs", [
    ("urn:oid:2.16.840.1.113883.6.90", "C50.911", "cancer-primary"),  # ICD-10-CM by OID (CDA-converted data)
    ("urn:oid:2.16.840.1.113883.6.96", "94222008", "bone-metastasis"),  # SNOMED CT by OID
    ("https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "J9000", "treatment-chemotherapy"),
    ("urn:oid:2.16.840.1.113883.6.285", "J9000", "cardiotoxic-therapy"),
])
def test_code_systems_named_by_oid_or_uri_variant(system: str, code: str, vs: str) -> None:
    t = get_terminology()
    assert t.match(vs, {"coding": [{"system": system, "code": code}]}) is not None
    assert t.in_valueset(vs, system, code)


def test_observation_codes_by_oid() -> None:
    assert get_terminology().measure_for("urn:oid:2.16.840.1.113883.6.1", "777-3") == "platelets"
