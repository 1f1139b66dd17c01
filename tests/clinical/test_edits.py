"""The clinician's edits: accepted within the safety limits, refused beyond them unless a clinical reason is
given; checked against the same limits the plan was built in."""

from __future__ import annotations

from datetime import datetime, timezone

import re

import pytest

from service.clinical.clearance import record_clearance
from service.clinical.edits import apply_edits
from service.clinical.prescribe import prescribe
from service.clinical.rules import RULES
from service.clinical.serialize import component_to_json, prescription_from_json, prescription_to_json
from tests.clinical.support import NOW, run, scenario_names

RULES_EXERCISED_BY_EDIT_TESTS = {"CLINICIAN-OVERRIDE", "CLINICIAN-EDIT"}
EDIT_TIME = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)


def reason(text: str = "", code: str = "specialist-cleared") -> dict[str, str]:
    return {"code": code, "text": text}


def test_plain_edit_within_limits_is_applied() -> None:
    _, p, _ = run("baseline_breast")
    edits = {"components": [{"type": "aerobic", "frequencyPerWeek": 4, "minutesPerSession": 25, "intensity": "moderate"},
                            {"type": "resistance"}],
             "setting": "community", "notes": "Patient keen on a group."}
    result = apply_edits(p, edits, EDIT_TIME)
    assert result.problems == []
    q = result.prescription
    assert q.setting == "community"
    assert [c.type for c in q.components] == ["aerobic", "resistance"]
    assert (q.components[0].frequency_per_week, q.components[0].minutes_per_session) == (4, 25)
    assert q.components[1] == next(c for c in p.components if c.type == "resistance")
    assert q.notes[-1] == "Clinician note: Patient keen on a group."
    assert not any(r.rule == "CLINICIAN-OVERRIDE" for r in q.rationale)


def test_bounds_are_hard_even_with_a_reason() -> None:
    _, p, _ = run("baseline_breast")
    edits = {"components": [{"type": "aerobic", "frequencyPerWeek": 8, "minutesPerSession": 3, "intensity": "light"}],
             "overrideReasons": {"components[0].frequencyPerWeek": reason("why not")}}
    result = apply_edits(p, edits, EDIT_TIME)
    assert {x.path for x in result.problems} == {"components[0].frequencyPerWeek", "components[0].minutesPerSession"}
    assert result.prescription is p


def test_intensity_above_precaution_needs_reason() -> None:
    _, p, _ = run("platelets_25000_per_ul")  # HEME-PLT-30 caps intensity at light
    edits = {"components": [{"type": "aerobic", "intensity": "moderate"}]}
    result = apply_edits(p, edits, EDIT_TIME)
    assert [x.path for x in result.problems] == ["components[0].intensity"]
    assert result.problems[0].override
    assert "Thrombocytopenia 20-30" in result.problems[0].message  # the rule's name, not its id

    edits["overrideReasons"] = {"components[0].intensity": reason("platelets rising, haematologist agrees")}
    result = apply_edits(p, edits, EDIT_TIME)
    assert result.problems == []
    override = [r for r in result.prescription.rationale if r.rule == "CLINICIAN-OVERRIDE"]
    assert len(override) == 1 and "haematologist agrees" in override[0].effect
    assert "Cleared by the treating specialist" in override[0].effect
    assert result.prescription.components[0].intensity.label == "moderate"


def test_resistance_where_ruled_out_needs_reason() -> None:
    _, p, _ = run("platelets_25000_per_ul")
    edits = {"components": [{"type": "aerobic"},
                            {"type": "resistance", "frequencyPerWeek": 2, "minutesPerSession": 15, "intensity": "light"}]}
    result = apply_edits(p, edits, EDIT_TIME)
    assert [x.path for x in result.problems] == ["components[1]"]


def test_less_restrictive_setting_needs_reason() -> None:
    _, p, _ = run("bone_metastases")
    result = apply_edits(p, {"setting": "home-based"}, EDIT_TIME)
    assert [x.path for x in result.problems] == ["setting"]
    result = apply_edits(p, {"setting": "home-based", "overrideReasons": {
        "setting": reason("seen by physio, stable", "supervised-by-professional")}}, EDIT_TIME)
    assert result.problems == [] and result.prescription.setting == "home-based"
    assert any(r.rule == "CLINICIAN-OVERRIDE" and r.finding.startswith("self-managed at home setting instead of")
               for r in result.prescription.rationale)


def test_a_deferred_plan_is_not_lifted_by_an_edit_even_with_a_reason() -> None:
    """Red flags are cleared through a recorded clearance (service.clinical.clearance), not a setting override."""
    _, p, _ = run("fever_celsius")
    assert p.setting == "defer"
    afebrile = reason("afebrile today", "result-superseded")
    edits = {"setting": "home-based", "overrideReasons": {"setting": afebrile},
             "components": [{"type": "aerobic", "frequencyPerWeek": 3, "minutesPerSession": 15, "intensity": "light",
                             "activities": ["walking"]}]}
    result = apply_edits(p, edits, EDIT_TIME)
    assert [(x.path, x.override) for x in result.problems] == [("setting", False)]
    assert "Record the clearance" in result.problems[0].message and "Fever" in result.problems[0].message


def test_a_cleared_plan_is_edited_under_the_same_limits() -> None:
    """After clearance the plan starts supervised; going home-based is an override like any other floor."""
    snap, p, _ = run("fever_celsius")
    c = record_clearance(p, by="Practitioner/1", at=EDIT_TIME, reviewed=list(p.to_resolve), note="afebrile today")
    cleared = prescribe(snap, NOW, clearance=c)
    assert cleared.setting == "supervised" and cleared.components
    result = apply_edits(cleared, {"setting": "home-based"}, EDIT_TIME)
    assert [(x.path, x.override) for x in result.problems] == [("setting", True)]
    result = apply_edits(cleared, {"setting": "home-based", "overrideReasons": {
        "setting": reason("afebrile, reviewed in clinic", "specialist-cleared")}}, EDIT_TIME)
    assert result.problems == [] and result.prescription.setting == "home-based"
    assert result.prescription.clearance == c


def test_removing_a_precaution_needs_reason() -> None:
    _, p, _ = run("falls_history")
    result = apply_edits(p, {"removePrecautions": ["fall-risk"]}, EDIT_TIME)
    assert [x.path for x in result.problems] == ["precautions.fall-risk"]
    result = apply_edits(p, {"removePrecautions": ["fall-risk"],
                             "overrideReasons": {"precautions.fall-risk": reason("one-off trip", "other")}},
                         EDIT_TIME)
    assert result.problems == []
    assert "fall-risk" not in {x.code for x in result.prescription.precautions}
    result = apply_edits(p, {"removePrecautions": ["cardiac"]}, EDIT_TIME)
    assert [x.path for x in result.problems] == ["removePrecautions[0]"]


def test_activity_ruled_out_by_precaution_needs_reason() -> None:
    _, p, _ = run("anc_1_0")
    result = apply_edits(p, {"components": [{"type": "aerobic", "activities": ["swimming"]}]}, EDIT_TIME)
    assert [x.path for x in result.problems] == ["components[0].activities"]


def test_community_with_neutropenia_needs_reason() -> None:
    _, p, _ = run("anc_1_0")
    result = apply_edits(p, {"setting": "community"}, EDIT_TIME)
    assert [x.path for x in result.problems] == ["setting"]


def test_malformed_edits_are_problems_not_exceptions() -> None:
    _, p, _ = run("baseline_breast")
    for edits, path in (([], ""), ({"bogus": 1}, ""), ({"components": "x"}, "components"),
                        ({"components": [{"type": "yoga"}]}, "components[0].type"),
                        ({"components": [{"type": "aerobic", "intensity": "extreme"}]}, "components[0].intensity"),
                        ({"setting": "gym"}, "setting"), ({"notes": 5}, "notes"),
                        ({"overrideReasons": {"setting": ""}}, "overrideReasons.setting"),
                        ({"overrideReasons": {"setting": "free text"}}, "overrideReasons.setting")):
        result = apply_edits(p, edits, EDIT_TIME)  # type: ignore[arg-type]
        assert path in [x.path for x in result.problems], edits
        assert result.prescription is p


def test_not_eligible_cannot_be_edited() -> None:
    _, p, _ = run("non_oncology")
    assert apply_edits(p, {"notes": "x"}, EDIT_TIME).problems


def test_edited_prescription_round_trips() -> None:
    _, p, _ = run("platelets_25000_per_ul")
    edits = {"components": [{"type": "aerobic", "intensity": "moderate"}],
             "overrideReasons": {"components[0].intensity": reason("ok")}}
    q = apply_edits(p, edits, EDIT_TIME).prescription
    assert prescription_from_json(prescription_to_json(q)) == q


def test_every_accepted_edit_is_recorded_and_progression_follows_it() -> None:
    # Review finding: after an edit, "Why" and "Building up" still described the pre-edit dose.
    _, p, _ = run("baseline_breast")
    before = next(c for c in p.components if c.type == "aerobic")
    edits = {"components": [{"type": "aerobic", "frequencyPerWeek": 2, "minutesPerSession": 25,
                             "activities": ["walking"]}, {"type": "resistance"}]}
    q = apply_edits(p, edits, EDIT_TIME).prescription
    recorded = [r for r in q.rationale if r.rule == "CLINICIAN-EDIT"]
    findings = " | ".join(r.finding for r in recorded)
    assert f"aerobic {before.frequency_per_week}x/week x {before.minutes_per_session} min" in findings
    assert "-> 2x/week x 25 min" in findings
    assert "aerobic activities: walking" in findings
    assert "flexibility removed" in findings
    assert all(r.source == "clinician judgement" for r in recorded)
    assert q.progression[0].startswith("Weeks 1-2: aerobic 2x/week, 25 min")
    assert not any(f"{before.minutes_per_session} min at" in line for line in q.progression)
    assert prescription_from_json(prescription_to_json(q)) == q


def test_overridden_edit_is_recorded_as_a_change_too() -> None:
    _, p, _ = run("platelets_25000_per_ul")
    edits = {"components": [{"type": "aerobic", "intensity": "moderate"}],
             "overrideReasons": {"components[0].intensity": reason("haematologist agrees")}}
    q = apply_edits(p, edits, EDIT_TIME).prescription
    assert {r.rule for r in q.rationale} >= {"CLINICIAN-EDIT", "CLINICIAN-OVERRIDE"}
    assert any("light -> " in r.finding and "moderate" in r.finding for r in q.rationale if r.rule == "CLINICIAN-EDIT")


def test_edit_keeps_the_long_term_goal_and_never_lowers_it() -> None:
    # The goal is the long-term target, not the (edited) starting dose; a bigger start raises it.
    _, p, _ = run("baseline_breast")
    lower = apply_edits(p, {"components": [{"type": "aerobic", "frequencyPerWeek": 2, "minutesPerSession": 25}]},
                        EDIT_TIME).prescription
    [aerobic_goal] = [t for t in lower.targets if t.measure == "aerobic-minutes-per-week"]
    assert aerobic_goal.value == 150
    higher = apply_edits(p, {"components": [{"type": "aerobic", "frequencyPerWeek": 5, "minutesPerSession": 40}]},
                         EDIT_TIME).prescription
    assert next(t.value for t in higher.targets if t.measure == "aerobic-minutes-per-week") == 200


def test_an_edit_that_changes_nothing_records_nothing() -> None:
    _, p, _ = run("baseline_breast")
    q = apply_edits(p, {"components": [{"type": c.type} for c in p.components]}, EDIT_TIME).prescription
    assert not any(r.rule == "CLINICIAN-EDIT" for r in q.rationale)
    assert q.progression == p.progression


def test_override_reasons_are_clinical_codes_not_card_dismissals() -> None:
    _, p, _ = run("platelets_25000_per_ul")
    edits = {"components": [{"type": "aerobic", "intensity": "moderate"}]}
    for bad in ({"code": "patient-declined"}, {"code": "discuss-next-visit", "text": "x"},  # card-dismissal reasons
                {"code": "other"}, {"code": "other", "text": "   "}, {"text": "no code"}):
        result = apply_edits(p, {**edits, "overrideReasons": {"components[0].intensity": bad}}, EDIT_TIME)
        assert "overrideReasons.components[0].intensity" in [x.path for x in result.problems], bad
    ok = apply_edits(p, {**edits, "overrideReasons": {"components[0].intensity": reason("counts rising", "other")}},
                     EDIT_TIME)
    assert ok.problems == []


@pytest.mark.parametrize("name,edits", [
    ("platelets_25000_per_ul", {"components": [{"type": "aerobic", "intensity": "moderate"}]}),
    ("bone_metastases", {"setting": "home-based"}),
    ("anc_1_0", {"components": [{"type": "aerobic", "activities": ["swimming"]}]}),
    ("falls_history", {"removePrecautions": ["fall-risk"]}),
    ("liver_metastases_snomed", {"components": [{"type": "aerobic", "frequencyPerWeek": 5, "minutesPerSession": 45}]}),
])
def test_refusals_speak_clinical_language(name: str, edits: dict) -> None:
    _, p, _ = run(name)
    problems = apply_edits(p, edits, EDIT_TIME).problems
    assert problems and all(x.override for x in problems)
    for x in problems:
        assert not re.search(r"\b[A-Z]{2,}(-[A-Z0-9]+)+\b", x.message), x.message  # no rule ids
        assert "components[" not in x.message and "overrideReasons" not in x.message, x.message  # no JSON paths
        assert x.message[0].isupper() and x.message.endswith("."), x.message


def test_volume_beyond_what_the_rules_allow_to_start_with_needs_a_reason() -> None:
    # Metastatic disease: a gentle start (x0.34 of the beginner volume): 45 min x 5 is far beyond it.
    _, p, _ = run("liver_metastases_snomed")
    big = {"components": [{"type": "aerobic", "frequencyPerWeek": 5, "minutesPerSession": 45}]}
    result = apply_edits(p, big, EDIT_TIME)
    assert [x.path for x in result.problems] == ["components[0].minutesPerSession"]
    assert "Metastatic disease" in result.problems[0].message
    small = {"components": [{"type": "aerobic", "frequencyPerWeek": 3, "minutesPerSession": 15}]}
    assert apply_edits(p, small, EDIT_TIME).problems == []  # 45 min/week: within 150 x 0.34
    _, q, _ = run("baseline_breast")  # no rule lowers the volume: any dose within the hard bounds
    assert apply_edits(q, big, EDIT_TIME).problems == []


def test_a_setting_above_the_floor_needs_no_reason_even_if_the_plan_said_more() -> None:
    # The patient preferred a supervised programme (the plan says supervised); the floor is home-based.
    _, p, _ = run("preferences_shape")
    assert p.setting == "community"
    assert apply_edits(p, {"setting": "home-based"}, EDIT_TIME).problems == []


@pytest.mark.parametrize("name", scenario_names())
def test_the_generated_plan_passes_its_own_edit_checks(name: str) -> None:
    """One definition of the limits: a plan the rules generate is never refused by the edit check."""
    _, p, _ = run(name)
    if not p.eligible or p.setting == "defer":
        return
    edits = {"setting": p.setting, "components": [component_to_json(c) for c in p.components]}
    assert apply_edits(p, edits, EDIT_TIME).problems == []


def test_every_limit_a_rule_sets_is_checked_on_edits() -> None:
    """Each kind of limit in a rule's Effect has an edit check: caps, volume, resistance, activities, setting."""
    from service.clinical.edits import _Editor  # noqa: PLC0415 - the checks' names are the contract here

    kinds = set()
    for rule in RULES:
        e = rule.effect
        kinds |= {k for k, v in (("max_intensity", e.max_intensity), ("resistance", e.resistance),
                                 ("avoid", e.avoid), ("volume", e.volume), ("min_setting", e.min_setting),
                                 ("no_public", e.no_public)) if v}
    checks = {"max_intensity": "check_caps", "resistance": "check_caps", "avoid": "check_activities",
              "volume": "check_volume", "min_setting": "apply", "no_public": "check_activities"}
    assert kinds <= set(checks)
    assert all(hasattr(_Editor, checks[k]) for k in kinds)
