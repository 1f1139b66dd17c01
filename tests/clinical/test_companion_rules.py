"""The companion's pure rules: each alert rule (selfreport.ALERT_RULES) and each adaptation rule
(adaptation.ADAPTATION_RULES) fires on the report or logs that match it and stays silent on its neighbours.
Thresholds are the reference's (CR-10 moderate 3-4, symptoms 7/10 as rule PAIN-SEVERE, +10% per week)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from service.clinical.adaptation import ADAPTATION_RULES, assess, proposal_text
from service.clinical.model import Measurement, PatientAlert, PatientSnapshot, PlannedDose
from service.clinical.selfreport import ALERT_RULES, Report, Symptoms, Warnings, effort_word, screen

TODAY = date(2026, 3, 30)
NOW = datetime(2026, 3, 30, 18, 0, tzinfo=timezone.utc)


def _m(measure: str, day: date, value: float, unit: str = "min") -> Measurement:
    return Measurement(measure, value, unit, datetime(day.year, day.month, day.day, 10, tzinfo=timezone.utc),
                       f"Observation/{measure}-{day.isoformat()}-{value}", "x")


def _snap(minutes_per_day: dict[int, float], *, effort: float = 4, fatigue: tuple[float, float] | None = None,
          planned: float | None = 60, alerts: tuple[PatientAlert, ...] = (), pain_last_week: float | None = None,
          ) -> PatientSnapshot:
    """`minutes_per_day`: days ago -> minutes; effort on every session day; fatigue (oldest, newest)."""
    days = {TODAY - timedelta(days=d): v for d, v in minutes_per_day.items()}
    history: dict[str, tuple[Measurement, ...]] = {
        "exercise-minutes": tuple(_m("exercise-minutes", d, v) for d, v in days.items()),
        "rpe": tuple(_m("rpe", d, effort, "{score}") for d in days),
    }
    if fatigue is not None:
        history["fatigue-nrs"] = (_m("fatigue-nrs", TODAY - timedelta(days=25), fatigue[0], "{score}"),
                                  _m("fatigue-nrs", TODAY - timedelta(days=1), fatigue[1], "{score}"))
    if pain_last_week is not None:
        history["pain"] = (_m("pain", TODAY - timedelta(days=2), pain_last_week, "{score}"),)
    plan = (PlannedDose("ServiceRequest/rx", planned, TODAY - timedelta(days=60), TODAY + timedelta(days=30)),) \
        if planned else ()
    return PatientSnapshot(as_of=NOW, patient_ref="Patient/p", birth_date=None, sex=None, history=history,
                           planned=plan, patient_alerts=alerts)


def _weeks_of(minutes: list[float], per_week_days: int = 3) -> dict[int, float]:
    """Minutes per week (newest last) spread over `per_week_days` sessions inside each 7-day window."""
    out: dict[int, float] = {}
    for i, total in enumerate(reversed(minutes)):
        for k in range(per_week_days):
            out[7 * i + 1 + 2 * k] = total / per_week_days
    return out


# ------------------------------------------------------------------------------------------------ alerts


@pytest.mark.parametrize("warning,rule,urgency", [
    ("chest_pain", "PT-CHEST-PAIN", "emergency"), ("fainting", "PT-FAINTING", "today"),
    ("fever", "PT-FEVER", "today"), ("bone_pain", "PT-BONE-PAIN", "today")])
def test_each_warning_answer_raises_its_alert(warning: str, rule: str, urgency: str) -> None:
    [a] = screen(Report(TODAY, warnings=Warnings(**{warning: True})))
    assert (a.rule, a.urgency) == (rule, urgency) and a.patient_text and a.clinician_text


def test_severe_symptoms_fire_at_7_of_10_and_not_at_6() -> None:
    [a] = screen(Report(TODAY, symptoms=Symptoms(TODAY, fatigue=7, pain=3, breathlessness=8)))
    assert a.rule == "PT-SYMPTOM-SEVERE" and "tiredness (7/10)" in a.clinician_text and "breathlessness (8/10)" in \
        a.clinician_text and "pain" not in a.clinician_text
    assert screen(Report(TODAY, symptoms=Symptoms(TODAY, fatigue=6, pain=6, breathlessness=6))) == ()


def test_nothing_to_flag_and_emergency_first() -> None:
    assert screen(Report(TODAY)) == ()
    got = screen(Report(TODAY, warnings=Warnings(fever=True, chest_pain=True)))
    assert [a.rule for a in got] == ["PT-CHEST-PAIN", "PT-FEVER"]
    assert {r.id for r in ALERT_RULES} == {"PT-CHEST-PAIN", "PT-FAINTING", "PT-FEVER", "PT-BONE-PAIN",
                                           "PT-SYMPTOM-SEVERE"}
    assert all(r.citation for r in ALERT_RULES)


# ------------------------------------------------------------------------------------------------ adaptation


def test_progress_when_at_goal_3_of_4_weeks_with_moderate_effort() -> None:
    a = assess(_snap(_weeks_of([45, 60, 60, 66]), fatigue=(5, 3)), TODAY)
    assert a is not None and (a.step, a.rule, a.proposed) == ("progress", "ADAPT-PROGRESS", 65.0)
    assert a.line == "3 of 4 weeks at the planned minutes, effort moderate, fatigue down 2 points"
    assert proposal_text(a) == "progress to 65 min/week (+10%)"


def test_progress_stops_at_the_top_of_the_guideline_range() -> None:
    a = assess(_snap(_weeks_of([300, 300, 300, 300]), planned=300), TODAY)
    assert a is not None and (a.step, a.rule) == ("hold", "ADAPT-HOLD")


def test_step_down_when_it_feels_hard_or_fatigue_rises_or_a_symptom_is_severe() -> None:
    hard = assess(_snap(_weeks_of([60, 60, 60, 60]), effort=6), TODAY)
    tiring = assess(_snap(_weeks_of([60, 60, 60, 60]), fatigue=(3, 5)), TODAY)
    painful = assess(_snap(_weeks_of([60, 60, 60, 60]), pain_last_week=8), TODAY)
    for a in (hard, tiring, painful):
        assert a is not None and (a.step, a.rule, a.proposed) == ("step-down", "ADAPT-STEP-DOWN", 50.0), a
    assert "effort hard" in hard.reason and "fatigue up 2" in tiring.reason and "pain 8/10" in painful.reason
    # neighbours: effort moderate, fatigue +1, pain 6: no step down
    a = assess(_snap(_weeks_of([60, 60, 60, 60]), effort=5, fatigue=(3, 4), pain_last_week=6), TODAY)
    assert a is not None and a.step != "step-down"


def test_low_adherence_holds_and_asks_what_gets_in_the_way() -> None:
    a = assess(_snap(_weeks_of([20, 30, 60, 25])), TODAY)
    assert a is not None and (a.step, a.rule) == ("hold", "ADAPT-LOW-ADHERENCE")
    assert a.line.startswith("1 of 4 weeks")


def test_an_open_patient_alert_or_a_paused_service_holds() -> None:
    alert = PatientAlert("Flag/1", "PT-FEVER", "Patient reports a temperature of 38 °C or more.", NOW)
    a = assess(_snap(_weeks_of([60, 60, 60, 66]), alerts=(alert,)), TODAY)
    assert a is not None and (a.step, a.rule) == ("hold", "ADAPT-ALERT-HOLD") and "38 °C" in a.reason
    b = assess(_snap(_weeks_of([60, 60, 60, 66])), TODAY, service_on_hold=True)
    assert b is not None and (b.step, b.rule) == ("hold", "ADAPT-SERVICE-HOLD")


def test_too_early_and_nothing_logged() -> None:
    a = assess(_snap({1: 30, 3: 30}), TODAY)
    assert a is not None and (a.step, a.rule) == ("none", "ADAPT-TOO-EARLY")
    assert assess(_snap({}), TODAY) is None


def test_a_hand_entry_and_a_watch_for_the_same_walk_count_once() -> None:
    s = _snap(_weeks_of([60, 60]))
    watch = tuple(Measurement("exercise-minutes", m.value, "min", m.effective, "Observation/watch-" + m.ref[-20:],
                              "x") for m in s.history["exercise-minutes"])
    doubled = PatientSnapshot(**{**s.__dict__, "history": {**s.history, "exercise-minutes":
                                                           s.history["exercise-minutes"] + watch},
                                 "device_refs": frozenset(m.ref for m in watch)})
    assert [w.minutes for w in assess(doubled, TODAY).weeks] == [w.minutes for w in assess(s, TODAY).weeks]
    # without the device mark the same entries are the patient's own sessions: they add up
    own = PatientSnapshot(**{**doubled.__dict__, "device_refs": frozenset()})
    assert [w.minutes for w in assess(own, TODAY).weeks] == [2 * w.minutes for w in assess(s, TODAY).weeks]


def test_step_down_never_proposes_more_and_progress_always_a_little_more() -> None:
    small = assess(_snap(_weeks_of([20, 20, 20, 20]), effort=7, planned=20), TODAY)
    assert small is not None and small.step == "step-down" and small.proposed == 15
    tiny = assess(_snap({1: 5, 8: 5}, effort=8, planned=None), TODAY)
    assert tiny is not None and tiny.step == "step-down" and tiny.proposed == 5  # 5 min: never more than now
    low = assess(_snap(_weeks_of([20, 20, 20, 20]), planned=20), TODAY)
    assert low is not None and (low.step, low.proposed) == ("progress", 25)


def test_too_hard_in_the_first_week_steps_down_at_once() -> None:
    a = assess(_snap({1: 30, 3: 30}, effort=8), TODAY)
    assert a is not None and (a.step, a.rule) == ("step-down", "ADAPT-STEP-DOWN")


def test_minutes_without_any_reported_effort_never_progress() -> None:
    s = _snap(_weeks_of([60, 60, 66, 66]))
    watch_only = PatientSnapshot(**{**s.__dict__, "history": {"exercise-minutes": s.history["exercise-minutes"]}})
    a = assess(watch_only, TODAY)
    assert a is not None and (a.step, a.rule) == ("hold", "ADAPT-HOLD") and "No effort reported" in a.reason


def test_every_adaptation_rule_has_a_source_and_words() -> None:
    assert all(r.citation and r.trigger and r.effect_text for r in ADAPTATION_RULES)
    assert effort_word(4) == "moderate" and effort_word(6.5) == "hard"


def test_weeks_before_the_plan_started_are_held_to_its_first_phase() -> None:
    s = _snap(_weeks_of([45, 45]), planned=None)
    phases = (PlannedDose("ServiceRequest/a1", 45, TODAY + timedelta(days=1), TODAY + timedelta(days=14)),
              PlannedDose("ServiceRequest/b1", 30, TODAY + timedelta(days=1), TODAY + timedelta(days=14)),
              PlannedDose("ServiceRequest/a2", 90, TODAY + timedelta(days=15), TODAY + timedelta(days=56)))
    a = assess(PatientSnapshot(**{**s.__dict__, "planned": phases}), TODAY)
    assert a is not None and [w.planned for w in a.weeks] == [75, 75]
