"""Review findings on the plan itself: goals are long-term targets, active patients are not reset to a
beginner dose, and activities (and the advice that goes with them) respect the precautions."""

from __future__ import annotations

from service.clinical.prescribe import ACTIVITIES
from tests.clinical.support import run


def _aerobic(p):  # type: ignore[no-untyped-def]
    return next(c for c in p.components if c.type == "aerobic")


def _goal(p, measure: str = "aerobic-minutes-per-week") -> int:  # type: ignore[no-untyped-def]
    return next(t.value for t in p.targets if t.measure == measure)


def test_active_patient_keeps_current_volume_instead_of_a_beginner_dose() -> None:
    _, p, _ = run("active_evs_days_minutes")  # 5 days x 40 min = 200 min/week
    a = _aerobic(p)
    assert a.frequency_per_week * a.minutes_per_session >= 200
    assert a.minutes_per_session <= 60
    assert any(r.rule == "ACT-MEETS" and "starting dose builds on current activity" in r.effect for r in p.rationale)


def test_below_guideline_patient_starts_from_what_they_do() -> None:
    _, p, _ = run("evs_history")  # 100 min/week
    a = _aerobic(p)
    assert a.frequency_per_week * a.minutes_per_session >= 100


def test_inactive_patient_still_starts_low() -> None:
    _, p, _ = run("ecog_3")
    a = _aerobic(p)
    assert a.frequency_per_week * a.minutes_per_session <= 30
    assert not any("starting dose builds on current activity" in r.effect for r in p.rationale)


def test_goal_is_the_long_term_target_not_the_starting_dose() -> None:
    _, p, _ = run("baseline_breast")
    a = _aerobic(p)
    assert a.frequency_per_week * a.minutes_per_session < 150
    assert _goal(p) == 150
    assert _goal(p, "strength-days-per-week") == 2
    assert "150 min/week" in " ".join(p.progression)


def test_goal_never_below_current_activity() -> None:
    _, p, _ = run("active_evs_days_minutes")
    assert _goal(p) >= 200


def test_deferred_plan_has_no_exercise_goal() -> None:
    _, p, _ = run("fever_celsius")
    assert p.targets == ()


def test_radiotherapy_rules_out_swimming_and_says_so() -> None:
    _, p, _ = run("radiotherapy_in_progress")  # the patient asked for swimming and walking
    offered = {a for c in p.components for a in c.activities}
    assert not {a for a in offered if a in ACTIVITIES and "water" in ACTIVITIES[a][1]}
    assert "walking" in offered
    assert any("No swimming" in n and "radiotherapy" in n for n in p.notes)


def test_neutropenia_rules_out_pools_and_public_gyms_and_says_so() -> None:
    _, p, _ = run("anc_1_0")
    offered = {a for c in p.components for a in c.activities}
    assert not {a for a in offered if a in ACTIVITIES and ACTIVITIES[a][1] & {"water", "public-facility"}}
    assert any("public gyms, swimming pools" in n for n in p.notes)


def test_units_are_shown_as_people_read_them() -> None:
    from service.clinical.units import human_unit

    assert [human_unit(u) for u in ("Cel", "{score}", "10*3/uL", "10*9/L", "mm[Hg]", "g/dL", "min/wk")] == \
        ["°C", "", "×10³/µL", "×10⁹/L", "mm Hg", "g/dL", "min/week"]
    _, p, _ = run("platelets_40")
    finding = next(r.finding for r in p.rationale if r.rule == "HEME-PLT-50")
    assert "10*3/uL" not in finding and "×10³/µL" in finding
