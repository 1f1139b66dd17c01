"""The clinician's edits: accepted within the safety limits, refused beyond them unless a reason is given."""

from __future__ import annotations

from datetime import datetime, timezone

from service.clinical.edits import apply_edits
from service.clinical.serialize import prescription_from_json, prescription_to_json
from tests.clinical.support import run

RULES_EXERCISED_BY_EDIT_TESTS = {"CLINICIAN-OVERRIDE", "CLINICIAN-EDIT"}
EDIT_TIME = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)


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
             "overrideReasons": {"components[0].frequencyPerWeek": "why not"}}
    result = apply_edits(p, edits, EDIT_TIME)
    assert {x.path for x in result.problems} == {"components[0].frequencyPerWeek", "components[0].minutesPerSession"}
    assert result.prescription is p


def test_intensity_above_precaution_needs_reason() -> None:
    _, p, _ = run("platelets_25000_per_ul")  # HEME-PLT-30 caps intensity at light
    edits = {"components": [{"type": "aerobic", "intensity": "moderate"}]}
    result = apply_edits(p, edits, EDIT_TIME)
    assert [x.path for x in result.problems] == ["components[0].intensity"]
    assert "HEME-PLT-30" in result.problems[0].message

    edits["overrideReasons"] = {"components[0].intensity": "platelets rising, haematologist agrees"}
    result = apply_edits(p, edits, EDIT_TIME)
    assert result.problems == []
    override = [r for r in result.prescription.rationale if r.rule == "CLINICIAN-OVERRIDE"]
    assert len(override) == 1 and "haematologist agrees" in override[0].effect
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
    result = apply_edits(p, {"setting": "home-based", "overrideReasons": {"setting": "seen by physio, stable"}},
                         EDIT_TIME)
    assert result.problems == [] and result.prescription.setting == "home-based"
    assert any(r.rule == "CLINICIAN-OVERRIDE" and r.finding.startswith("setting:") for r in result.prescription.rationale)


def test_clearing_a_deferred_plan_needs_reason_and_components() -> None:
    _, p, _ = run("fever_celsius")
    assert p.setting == "defer"
    result = apply_edits(p, {"setting": "home-based", "overrideReasons": {"setting": "afebrile today"}}, EDIT_TIME)
    assert [x.path for x in result.problems] == ["components"]
    edits = {"setting": "home-based", "overrideReasons": {"setting": "afebrile today"},
             "components": [{"type": "aerobic", "frequencyPerWeek": 3, "minutesPerSession": 15, "intensity": "light",
                             "activities": ["walking"]}]}
    result = apply_edits(p, edits, EDIT_TIME)
    assert result.problems == [] and result.prescription.components[0].activities == ("walking",)


def test_removing_a_precaution_needs_reason() -> None:
    _, p, _ = run("falls_history")
    result = apply_edits(p, {"removePrecautions": ["fall-risk"]}, EDIT_TIME)
    assert [x.path for x in result.problems] == ["precautions.fall-risk"]
    result = apply_edits(p, {"removePrecautions": ["fall-risk"],
                             "overrideReasons": {"precautions.fall-risk": "fall was a one-off trip"}}, EDIT_TIME)
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
                        ({"overrideReasons": {"setting": ""}}, "overrideReasons.setting")):
        result = apply_edits(p, edits, EDIT_TIME)  # type: ignore[arg-type]
        assert path in [x.path for x in result.problems], edits
        assert result.prescription is p


def test_not_eligible_cannot_be_edited() -> None:
    _, p, _ = run("non_oncology")
    assert apply_edits(p, {"notes": "x"}, EDIT_TIME).problems


def test_edited_prescription_round_trips() -> None:
    _, p, _ = run("platelets_25000_per_ul")
    edits = {"components": [{"type": "aerobic", "intensity": "moderate"}],
             "overrideReasons": {"components[0].intensity": "ok"}}
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
             "overrideReasons": {"components[0].intensity": "haematologist agrees"}}
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
