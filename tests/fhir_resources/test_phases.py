"""The plan's phases (start, build up, keep) follow the weekly target and the progression speed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.clinical.model import Component, Intensity, Target
from service.clinical.serialize import prescription_from_json, prescription_to_json
from service.fhir.phases import phase_text, phases_for, plan_phases
from tests.fhir_resources import factories as F

AEROBIC = Component("aerobic", 3, 20, Intensity("moderate", "Borg RPE 6-20", 12, 13))
GOAL = (Target("aerobic-minutes-per-week", 150, "150 min/week"),)


@pytest.mark.parametrize("step,build_weeks", [(1, (3, 6)), (2, (3, 10))])  # 4 steps: +2 days, +10 min
def test_aerobic_builds_up_to_the_target_then_keeps_it(step, build_weeks):
    start, build, keep = phases_for(AEROBIC, GOAL, step)
    assert (start.first_week, start.last_week, start.frequency, start.minutes) == (1, 2, 3, 20)
    assert (build.first_week, build.last_week) == build_weeks
    assert (build.frequency, build.frequency_max, build.minutes, build.minutes_max) == (4, 5, 25, 30)
    assert (keep.first_week, keep.last_week, keep.frequency * keep.minutes) == (build_weeks[1] + 1, 12, 150)
    assert phase_text(build).startswith("Phase 2 of 3 (weeks 3-")


def test_one_phase_when_already_at_target_or_not_aerobic():
    assert len(phases_for(replace(AEROBIC, frequency_per_week=5, minutes_per_session=30), GOAL, 1)) == 1
    assert len(phases_for(replace(AEROBIC, type="resistance"), GOAL, 1)) == 1
    assert len(phases_for(AEROBIC, (), 1)) == 1  # no weekly target known
    # below the target but already at the most days and minutes allowed: nothing to build up
    assert len(phases_for(replace(AEROBIC, frequency_per_week=2, minutes_per_session=60), GOAL, 1, max_days=2)) == 1


def test_progression_step_round_trips_in_json():
    p = F.prescription(progression_step_weeks=2)
    assert prescription_from_json(prescription_to_json(p)).progression_step_weeks == 2
    legacy = prescription_to_json(F.prescription())
    del legacy["progressionStepWeeks"]
    assert prescription_from_json(legacy).progression_step_weeks == 1


def test_the_build_up_speed_is_the_one_the_progression_advice_states():
    """For every cohort patient the step the phases use is the step the clinical core's advice names."""
    import json

    from service.clinical.prescribe import prescribe
    from service.clinical.snapshot import build_snapshot
    from service.sandbox import cohort

    steps = set()
    for pid in (x["id"] for x in cohort.load_index()):
        p = prescribe(build_snapshot(json.loads((cohort.COHORT_DIR / f"{pid}.json").read_text()), cohort.ANCHOR),
                      cohort.ANCHOR)
        advice = " ".join(p.progression)
        if "add 5 minutes per session" in advice:
            said = 2 if "every 2 weeks" in advice else 1
            assert p.progression_step_weeks == said, pid
            steps.add(said)
            aerobic = plan_phases(p)[[c.type for c in p.components].index("aerobic")]
            assert aerobic[0].first_week == 1 and aerobic[-1].last_week == 12, pid
    assert steps == {1, 2}  # the cohort has both speeds


def test_the_build_up_stays_within_the_patient_s_days():
    """Available on two days: the build-up adds minutes (up to 60 per session), never a third day."""
    from service.clinical.model import Preferences
    from tests.fhir_resources import factories as F

    aerobic = Component("aerobic", 2, 35, Intensity("moderate", "Borg RPE 6-20", 12, 13))
    p = F.prescription(components=(aerobic,), targets=GOAL, progression_step_weeks=1,
                       preferences=Preferences(days_available=("tue", "sat")))
    start, build, keep = plan_phases(p)[0]
    assert (build.frequency, build.frequency_max, build.minutes, build.minutes_max) == (2, None, 40, 60)
    assert (keep.frequency, keep.minutes, keep.first_week) == (2, 60, 8)
    assert all(ph.frequency <= 2 and (ph.frequency_max or 0) <= 2 for ph in (start, build, keep))
