"""The 12-week plan as phases an exercise service can schedule: start, build up, keep.

Why structured: one Timing for 12 weeks would fix the starting dose while the advice says to progress. Each
component gets its own phases (weeks, sessions per week, minutes per session, with the upper bounds a
build-up phase moves towards). They are derived on the FHIR side from what the Prescription holds, with the
same numbers as the clinical core's progression advice (prescribe.progression_for): the starting dose
(`components`), the weekly target (`targets`) and the build-up speed (`progression_step_weeks`). Aerobic starts
for 2 weeks at the prescribed dose, then adds 5 minutes per session (and days, up to 5) every `step_weeks`
towards the weekly target, then keeps it. Other components keep their dose for the whole plan (they progress
by load and sets, which the notes describe). Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.clinical.model import Component, Prescription, Target

PLAN_WEEKS = 12  # ACSM 2019: benefits shown for programmes of at least 8-12 weeks; the plan is reviewed after
START_WEEKS = 2
STEP_MINUTES = 5
MAX_SESSION_MINUTES = 60
MAX_AEROBIC_DAYS = 5


@dataclass(frozen=True)
class Phase:
    """One component's dose during weeks first_week..last_week (1-based, inclusive).

    In a build-up phase `frequency_max`/`minutes_max` are where the dose ends (it starts at frequency/minutes).
    """

    component: Component
    number: int
    of: int
    first_week: int
    last_week: int
    frequency: int
    minutes: int
    frequency_max: int | None = None
    minutes_max: int | None = None
    kind: str = "keep"  # "start" | "build" | "keep"

    @property
    def weeks(self) -> str:
        return f"weeks {self.first_week}-{self.last_week}"


def phases_for(c: Component, targets: tuple[Target, ...], step_weeks: int, weeks: int = PLAN_WEEKS,
               max_days: int = MAX_AEROBIC_DAYS) -> tuple[Phase, ...]:
    """The phases of one component over the plan; `max_days`: the days a week the patient can exercise (the
    build-up adds minutes rather than days beyond them)."""
    goal = next((t.value for t in targets if t.measure == "aerobic-minutes-per-week"), None)
    f, m = c.frequency_per_week, c.minutes_per_session
    if c.type != "aerobic" or goal is None or f * m >= goal or weeks <= START_WEEKS:
        return (Phase(c, 1, 1, 1, weeks, f, m),)
    days = max(f, min(MAX_AEROBIC_DAYS, max_days, math.ceil(goal / max(m, 1))))
    minutes = max(m, min(MAX_SESSION_MINUTES, STEP_MINUTES * math.ceil(goal / days / STEP_MINUTES)))
    if (days, minutes) == (f, m):  # no room to build up within the days and the session length: one phase
        return (Phase(c, 1, 1, 1, weeks, f, m),)
    steps = max(1, (minutes - m) // STEP_MINUTES + (days - f))
    build_end = min(weeks, START_WEEKS + steps * max(1, step_weeks))
    build = dict(frequency=f if days == f else f + 1, minutes=min(minutes, m + STEP_MINUTES),
                 frequency_max=days if days > f else None, minutes_max=minutes if minutes > m else None)
    n = 3 if build_end < weeks else 2
    out = [Phase(c, 1, n, 1, START_WEEKS, f, m, kind="start"),
           Phase(c, 2, n, START_WEEKS + 1, build_end, kind="build", **build)]  # type: ignore[arg-type]
    if build_end < weeks:
        out.append(Phase(c, 3, n, build_end + 1, weeks, days, minutes, kind="keep"))
    return tuple(out)


def plan_phases(p: Prescription) -> tuple[tuple[Phase, ...], ...]:
    """Phases for every component of the prescription (same order as `components`), within the days the
    patient said they can exercise."""
    days = p.preferences.days_available if p.preferences is not None else ()
    max_days = len(days) if days else MAX_AEROBIC_DAYS
    return tuple(phases_for(c, p.targets, p.progression_step_weeks, max_days=max_days) for c in p.components)


def phase_text(ph: Phase) -> str:
    """E.g. "Phase 2 of 3 (weeks 3-8): build up from 4 to 5 days/week, 25 to 30 min per session"."""
    head = f"Phase {ph.number} of {ph.of} ({ph.weeks})" if ph.of > 1 else f"Weeks {ph.first_week}-{ph.last_week}"
    days = f"{ph.frequency}" + (f" to {ph.frequency_max}" if ph.frequency_max else "")
    mins = f"{ph.minutes}" + (f" to {ph.minutes_max}" if ph.minutes_max else "")
    verb = {"start": "start with", "build": "build up:", "keep": "keep"}[ph.kind] if ph.of > 1 else "keep"
    return f"{head}: {verb} {days} days/week, {mins} min per session"
