"""Scenario tests: committed FHIR Bundles (tests/fixtures/bundles) -> snapshot -> prescription.

Each row states what must fire, what must not, the setting and clearance. Together the rows exercise every
rule in RULES (checked below), both firing and not firing.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.clinical.rules import RULES
from tests.clinical.support import fired, run, scenario_names
from tests.clinical.test_edits import RULES_EXERCISED_BY_EDIT_TESTS

S: dict[str, dict[str, Any]] = {
    # eligibility and coding
    "baseline_breast": dict(setting="home-based", clearance=False, fires={"BASE-ACSM-2019", "ACT-LOW", "SETTING-TRIAGE"},
                            absent={"ELIG-CANCER", "DATA-NO-FUNCTIONAL", "DATA-NO-PS", "DATA-NO-EVS", "AGE-65"}),
    "non_oncology": dict(eligible=False, fires={"ELIG-CANCER"}, absent={"BASE-ACSM-2019"}),
    "refuted_cancer": dict(eligible=False, fires={"ELIG-CANCER"}),
    "entered_in_error_cancer": dict(eligible=False, fires={"ELIG-CANCER"}),
    "resolved_cancer": dict(eligible=False, fires={"ELIG-CANCER"}),
    "skin_bcc_not_eligible": dict(eligible=False, fires={"ELIG-CANCER"}),
    "remission_survivor": dict(setting="home-based", fires={"TX-COMPLETED", "ACT-MEETS"}, absent={"CARD-TOXIC"}),
    "snomed_only_lung": dict(setting="home-based", fires={"BASE-ACSM-2019", "AGE-65"}, absent={"ELIG-CANCER"}),
    "icd_only_colon_nodot": dict(setting="home-based", fires={"BASE-ACSM-2019"}, absent={"ELIG-CANCER"}),
    # fever and haematology
    "fever_celsius": dict(setting="defer", clearance=True, fires={"FEVER-38"}, red_flags={"FEVER-38"},
                          precautions={"fever"}),
    "fever_fahrenheit": dict(setting="defer", clearance=True, fires={"FEVER-38"}, red_flags={"FEVER-38"}),
    "fever_stale": dict(setting="home-based", clearance=False, absent={"FEVER-38"}),
    "platelets_15_si": dict(setting="defer", clearance=True, fires={"HEME-PLT-20"}, red_flags={"HEME-PLT-20"},
                            absent={"HEME-PLT-30", "HEME-PLT-50"}, precautions={"thrombocytopenia"}),
    "platelets_25000_per_ul": dict(setting="home-based", fires={"HEME-PLT-30"}, absent={"HEME-PLT-20", "HEME-PLT-50"}),
    "platelets_40": dict(setting="home-based", fires={"HEME-PLT-50"}, absent={"HEME-PLT-20", "HEME-PLT-30"}),
    "platelets_stale_on_chemo": dict(setting="home-based", fires={"TX-CHEMO", "DATA-NO-CBC"},
                                     absent={"HEME-PLT-20", "HEME-HB-8"}),
    "hb_7_g_dl": dict(setting="defer", clearance=True, fires={"HEME-HB-8"}, absent={"HEME-HB-11"}),
    "hb_mmol_per_l": dict(setting="defer", fires={"HEME-HB-8"}),
    "hb_95_g_per_l": dict(setting="home-based", fires={"HEME-HB-11"}, absent={"HEME-HB-8"}, precautions={"anemia"}),
    "anc_1_0": dict(setting="home-based", fires={"HEME-ANC-15", "PREF-SETTING", "PREF-ACTIVITIES"},
                    absent={"HEME-ANC-05"}, precautions={"neutropenia"}),
    "anc_0_3": dict(setting="defer", clearance=True, fires={"HEME-ANC-05"}, absent={"HEME-ANC-15"}),
    # performance status
    "ecog_2": dict(setting="supervised", clearance=False, fires={"PS-ECOG-2"}, absent={"PS-ECOG-3", "PS-ECOG-4"}),
    "ecog_3": dict(setting="supervised", clearance=True, fires={"PS-ECOG-3", "ACT-INACTIVE"}, absent={"PS-ECOG-2"}),
    "ecog_4": dict(setting="defer", clearance=True, fires={"PS-ECOG-4"}, red_flags={"PS-ECOG-4"}),
    "karnofsky_60": dict(setting="supervised", fires={"PS-ECOG-2"}),
    "ecog_coded_answer": dict(setting="home-based", absent={"PS-ECOG-2", "DATA-NO-PS"}),
    "ecog_entered_in_error": dict(setting="home-based", absent={"PS-ECOG-4"}),
    "ecog_stale": dict(setting="home-based", fires={"DATA-NO-PS"}, absent={"PS-ECOG-3"}),
    # treatment phase
    "chemo_paclitaxel_active": dict(fires={"TX-CHEMO"}, absent={"TX-COMPLETED", "CARD-TOXIC", "DATA-NO-CBC"},
                                    precautions={"active-treatment"}),
    "chemo_administration_atc": dict(fires={"TX-CHEMO"}, absent={"TX-COMPLETED"}),
    "chemo_completed_long_ago": dict(fires={"TX-COMPLETED"}, absent={"TX-CHEMO"}),
    "radiotherapy_in_progress": dict(fires={"TX-RADIO", "PREF-ACTIVITIES"}, absent={"TX-COMPLETED"}),
    "immunotherapy_pembrolizumab": dict(fires={"TX-IMMUNO"}, absent={"TX-CHEMO"}),
    "endocrine_letrozole": dict(fires={"TX-ENDOCRINE"}, absent={"TX-CHEMO"}),
    "surgery_recent": dict(fires={"TX-SURGERY-6W"}, absent={"TX-COMPLETED"}, precautions={"recent-surgery"}),
    "surgery_category_only_old": dict(fires={"TX-COMPLETED"}, absent={"TX-SURGERY-6W"}),
    # metastatic disease
    "bone_metastases": dict(setting="supervised", clearance=True, fires={"BONE-METS", "METASTATIC", "PREF-SETTING"},
                            precautions={"bone-metastases"}),
    "liver_metastases_snomed": dict(setting="community", fires={"METASTATIC"}, absent={"BONE-METS"}),
    "bone_metastases_refuted": dict(setting="home-based", absent={"BONE-METS", "METASTATIC"}),
    # comorbidities
    "cardiac_heart_failure": dict(setting="supervised", clearance=True, fires={"CARD-DISEASE"}, precautions={"cardiac"}),
    "cardiac_resolved": dict(setting="home-based", absent={"CARD-DISEASE"}),
    "cardiotoxic_doxorubicin": dict(setting="supervised", clearance=True, fires={"CARD-TOXIC", "TX-CHEMO"}),
    "bp_high_panel": dict(clearance=True, fires={"CARD-BP-HIGH"}, precautions={"high-blood-pressure"}),
    "bp_normal_panel": dict(clearance=False, absent={"CARD-BP-HIGH"}),
    "beta_blocker_metoprolol": dict(fires={"CARD-BETA-BLOCKER"}, precautions={"heart-rate-unreliable"}),
    "hrr_targets": dict(absent={"CARD-BETA-BLOCKER"}),
    "neuropathy": dict(setting="home-based", fires={"NEURO", "PREF-ACTIVITIES"}, precautions={"peripheral-neuropathy"}),
    "lymphedema": dict(setting="community", fires={"LYMPH"}, precautions={"lymphedema"}),
    "falls_history": dict(setting="supervised", fires={"FALL-HISTORY"}, absent={"FALL-TUG-12"}),
    "tug_slow": dict(setting="supervised", fires={"FALL-TUG-12"}, absent={"FALL-HISTORY"}),
    "tug_normal": dict(setting="home-based", absent={"FALL-TUG-12"}),
    "diabetes_osteoporosis": dict(fires={"COMOR-DIABETES", "COMOR-BONE-HEALTH"}, precautions={"diabetes", "bone-health"}),
    "pain_severe": dict(clearance=True, fires={"PAIN-SEVERE"}),
    "new_bone_pain": dict(setting="defer", clearance=True, fires={"SYMPTOM-NEW"}, red_flags={"SYMPTOM-NEW"}),
    "old_bone_pain": dict(setting="home-based", absent={"SYMPTOM-NEW"}),
    # fitness, age, current activity, missing data
    "fitness_low_units": dict(fires={"FIT-6MWT-LOW", "FIT-VO2-LOW", "FIT-STS-LOW", "FIT-GRIP-LOW"}),
    "fitness_good": dict(absent={"FIT-6MWT-LOW", "FIT-VO2-LOW", "FIT-STS-LOW", "FIT-GRIP-LOW", "DATA-NO-FUNCTIONAL"}),
    "functional_test_stale": dict(fires={"DATA-NO-FUNCTIONAL"}, absent={"FIT-6MWT-LOW"}),
    "older_adult_72": dict(fires={"AGE-65"}),
    "fatigue_and_step_test": dict(fires={"FATIGUE-FACIT"}, absent={"DATA-NO-FUNCTIONAL"}),
    "inactive": dict(fires={"ACT-INACTIVE"}, absent={"ACT-LOW", "ACT-MEETS"}),
    "active_evs_days_minutes": dict(fires={"ACT-MEETS"}, absent={"ACT-LOW", "DATA-NO-EVS"}),
    "no_data_at_all": dict(setting="home-based", fires={"DATA-NO-FUNCTIONAL", "DATA-NO-PS", "DATA-NO-EVS"},
                           absent={"DATA-NO-CBC"}),
    # combinations: the most restrictive setting wins
    "multiple_precautions": dict(setting="supervised", clearance=True,
                                 fires={"PS-ECOG-2", "BONE-METS", "LYMPH", "HEME-ANC-15", "HEME-PLT-50", "HEME-HB-11",
                                        "TX-CHEMO", "PREF-SETTING", "PREF-DAYS", "PREF-EQUIPMENT", "PREF-ACTIVITIES"},
                                 precautions={"bone-metastases", "lymphedema", "neutropenia", "thrombocytopenia",
                                              "anemia", "low-performance-status", "active-treatment"}),
    "multiple_with_fever": dict(setting="defer", clearance=True, fires={"FEVER-38", "BONE-METS", "LYMPH"},
                                red_flags={"FEVER-38"}),
    "lymph_and_neutropenia": dict(setting="supervised", fires={"LYMPH", "HEME-ANC-15"}),
    "preferences_shape": dict(setting="community", fires={"PREF-SETTING", "PREF-ACTIVITIES", "PREF-DAYS",
                                                          "PREF-EQUIPMENT"}),
    "existing_referral": dict(setting="home-based"),
    # Junk is skipped, but a platelet count "< 10" and unreadable blood counts are never ignored.
    "junk_resources": dict(setting="defer", clearance=True, fires={"HEME-PLT-20", "DATA-UNREADABLE-RED-FLAG"},
                           absent={"FEVER-38", "HEME-HB-8"}),
    "evs_history": dict(fires={"ACT-LOW"}),
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(S) == scenario_names()
    assert len(S) >= 30


@pytest.mark.parametrize("name", sorted(S))
def test_scenario(name: str) -> None:
    exp = S[name]
    _, p, _ = run(name)
    rules = fired(p)
    assert p.eligible is exp.get("eligible", True)
    if "setting" in exp:
        assert p.setting == exp["setting"], p.rationale
    if "clearance" in exp:
        assert p.clearance_required is exp["clearance"]
    assert exp.get("fires", set()) <= rules, f"missing {exp.get('fires', set()) - rules}"
    assert not (exp.get("absent", set()) & rules), f"unexpected {exp.get('absent', set()) & rules}"
    assert exp.get("precautions", set()) <= {x.code for x in p.precautions}
    if "red_flags" in exp:
        assert {r.rule for r in p.red_flags} == exp["red_flags"]
    if p.setting == "defer":
        assert p.clearance_required and not p.components
    elif p.eligible:
        assert {c.type for c in p.components} >= {"aerobic", "flexibility"}


def test_every_plan_rule_fires_and_does_not_fire_somewhere() -> None:
    """Rules applied by prescribe/edits (no predicate: triage, preferences, clinician edits) are exercised by these
    scenarios and the edit tests; rules with a predicate are checked over these scenarios and the real-world
    cases together (tests/clinical/test_realworld.py)."""
    ids = {r.id for r in RULES if r.predicate is None}
    fires = set().union(*(e.get("fires", set()) for e in S.values())) | RULES_EXERCISED_BY_EDIT_TESTS
    assert ids - fires == set(), "rules never exercised by a scenario"
    observed_absent: dict[str, int] = {rid: 0 for rid in ids}
    for name in S:
        rules = fired(run(name)[1])
        for rid in ids - rules:
            observed_absent[rid] += 1
    assert [rid for rid, n in observed_absent.items() if n == 0] == []


# ----------------------------------------------------------------------------------------- detail checks


def test_defer_for_platelets_allows_walking_only() -> None:
    _, p, _ = run("platelets_15_si")
    assert any("walking and usual daily activities only" in n for n in p.notes)
    assert p.red_flags[0].refs == ("Observation/plt",)


def test_thrombocytopenia_20_30_removes_resistance_and_caps_intensity() -> None:
    _, p, _ = run("platelets_25000_per_ul")
    types = {c.type: c for c in p.components}
    assert "resistance" not in types
    assert types["aerobic"].intensity.label == "light"


def test_platelets_30_50_light_resistance_only() -> None:
    _, p, _ = run("platelets_40")
    resistance = next(c for c in p.components if c.type == "resistance")
    assert resistance.intensity.label == "light" and resistance.sets == 1


def test_neutropenia_sets_aside_community_and_swimming_with_reason() -> None:
    _, p, _ = run("anc_1_0")
    aside = [r for r in p.rationale if r.rule.startswith("PREF-") and "set aside for safety" in r.effect]
    assert any("community" in r.finding for r in aside)
    assert any("swimming (HEME-ANC-15)" in r.finding for r in aside)
    assert "swimming" not in next(c for c in p.components if c.type == "aerobic").activities


def test_bone_metastases_rule_out_jogging_and_home_preference() -> None:
    _, p, _ = run("bone_metastases")
    aerobic = next(c for c in p.components if c.type == "aerobic")
    assert "jogging" not in aerobic.activities and aerobic.activities[0] == "walking"
    pref = next(r for r in p.rationale if r.rule == "PREF-SETTING")
    assert "set aside for safety" in pref.effect and "BONE-METS" in pref.effect
    balance = [c for c in p.components if c.type == "balance"]
    assert not balance or "tai chi" in balance[0].activities


def test_metastatic_gentle_start() -> None:
    _, p, _ = run("liver_metastases_snomed")
    assert next(c for c in p.components if c.type == "aerobic").minutes_per_session == 10


def test_neuropathy_prefers_stationary_cycling_and_adds_balance() -> None:
    _, p, _ = run("neuropathy")
    aerobic = next(c for c in p.components if c.type == "aerobic")
    assert "running" not in aerobic.activities and "cycling" not in aerobic.activities
    assert aerobic.activities[0] == "stationary cycling"
    assert any(c.type == "balance" for c in p.components)


def test_heart_rate_reserve_only_without_beta_blocker() -> None:
    _, p, _ = run("hrr_targets")
    aerobic = next(c for c in p.components if c.type == "aerobic")
    assert (aerobic.intensity.hrr_low_pct, aerobic.intensity.hrr_high_pct) == (40, 59)
    assert any("Target heart rate" in n for n in aerobic.notes)
    _, p2, _ = run("beta_blocker_metoprolol")
    aerobic2 = next(c for c in p2.components if c.type == "aerobic")
    assert aerobic2.intensity.hrr_low_pct is None and aerobic2.intensity.scale == "Borg RPE 6-20"


def test_preferences_days_and_equipment_shape_the_plan() -> None:
    _, p, _ = run("preferences_shape")
    aerobic = next(c for c in p.components if c.type == "aerobic")
    assert aerobic.frequency_per_week == 2 and aerobic.minutes_per_session == 45
    assert aerobic.activities[:2] == ("swimming", "cycling")
    assert "stationary cycling" in aerobic.activities
    assert "dumbbells" in next(c for c in p.components if c.type == "resistance").activities
    assert "climbing" in next(c for c in p.components if c.type == "resistance").activities  # "rock climbing"


def test_unrecognised_activities_are_named_not_used() -> None:
    from service.clinical.model import Preferences

    _, p, _ = run("baseline_breast", Preferences(activities=("underwater hockey", "walking")))
    assert any("not recognised: underwater hockey" in r.finding and r.rule == "PREF-ACTIVITIES" for r in p.rationale)
    assert not any("underwater" in a for c in p.components for a in c.activities)


def test_missing_data_recommendations() -> None:
    _, p, _ = run("no_data_at_all")
    by_measure = {m.measure: m for m in p.missing_data}
    assert "6-minute walk" in by_measure["functional-test"].recommendation
    assert set(by_measure) == {"functional-test", "performance-status", "exercise-vital-sign"}
    _, p2, _ = run("functional_test_stale")
    text = next(m.text for m in p2.missing_data if m.measure == "functional-test")
    assert "stale" in text and "380" in text


def test_stale_labs_on_chemo_recommend_blood_count_and_cap_intensity() -> None:
    _, p, _ = run("platelets_stale_on_chemo")
    assert any(m.measure == "blood-count" for m in p.missing_data)
    assert all(c.intensity.label in ("light", "moderate") for c in p.components)


def test_most_restrictive_setting_wins_over_every_single_rule() -> None:
    _, p, _ = run("multiple_precautions")
    triage = next(r for r in p.rationale if r.rule == "SETTING-TRIAGE")
    assert "PS-ECOG-2" in triage.finding and "BONE-METS" in triage.finding
    _, p2, _ = run("multiple_with_fever")
    assert p2.setting == "defer" and not p2.components


def test_rationale_refs_point_at_the_data() -> None:
    _, p, _ = run("fever_fahrenheit")
    reason = next(r for r in p.rationale if r.rule == "FEVER-38")
    assert reason.refs == ("Observation/temp",) and "38.6 °C" in reason.finding  # human unit, not UCUM "Cel"
    assert p.cancer_refs == ("Condition/cancer",)
    assert "Observation/temp" in p.supporting_refs


def test_deterministic() -> None:
    assert run("multiple_precautions")[1] == run("multiple_precautions")[1]
