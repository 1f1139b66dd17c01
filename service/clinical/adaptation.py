"""How the plan is going at home, and the next step to propose: progress, hold or step down.

Pure and deterministic given `as_of`: reads the snapshot the rules already read (the patient's own logged
sessions and a wearable's exercise minutes, effort as CR-10, the weekly symptom scores, the signed plan's weekly
minutes per phase, the exercise service's Task, the companion's open Flags) and returns one line for the
follow-up card and a proposal with its rule and reason. A brief, repeated conversation: the card that shows it
repeats only when this assessment changes (its fingerprint), not at every encounter.

Minutes per day: the patient's own sessions add up; a device's total stands alone; the day counts the larger of
the two, so a walk logged by hand and by a watch counts once. Weeks are 7-day windows ending at `as_of`, at most `WINDOW_WEEKS`, from the first logged day.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from service.clinical.model import Measurement, PatientSnapshot
from service.clinical.rules import CAMPBELL_2019, PAG_2018, PRACTICE, SCHMITZ_2019, Rule
from service.clinical.selfreport import SYMPTOM_SEVERE, effort_word

Step = Literal["progress", "hold", "step-down", "none"]

WINDOW_WEEKS = 4
MIN_WEEKS = 2  # fewer logged weeks: too early to propose a change
PROGRESS_PCT = 10  # per step, within what the patient reported they managed
STEP_DOWN_PCT = 20
EFFORT_EASY_ENOUGH = 4.0  # CR-10 "moderate" or easier (reference: CR-10 moderate 3-4)
EFFORT_TOO_HARD = 6.0  # CR-10 "hard" or more, as the typical session
FATIGUE_RISE = 2.0  # points on 0-10: a clinically noticeable change
UPPER_MINUTES = 300  # PAG 2018: 150-300 min/week moderate; beyond, hold
MIN_MINUTES = 30
LOGGED_MEASURES = ("exercise-minutes",)
SYMPTOM_MEASURES = {"fatigue-nrs": "fatigue", "pain": "pain", "breathlessness-nrs": "breathlessness"}

ADAPTATION_RULES: tuple[Rule, ...] = (
    Rule("ADAPT-ALERT-HOLD", "Reported red flag open", "the patient reported a red flag or stop rule (open Flag)",
         "hold: review the report before any change", f"{PRACTICE}; stop rules of the plan", None),
    Rule("ADAPT-SERVICE-HOLD", "Exercise service paused", "the exercise service put its Task on hold",
         "hold at the current dose, with the service's reason", PRACTICE, None),
    Rule("ADAPT-TOO-EARLY", "Too little logged", f"fewer than {MIN_WEEKS} weeks with entries (and nothing above)",
         "no proposal yet; the card says what is logged so far", PRACTICE, None),
    Rule("ADAPT-STEP-DOWN", "Not tolerated", f"typical effort CR-10 >= {EFFORT_TOO_HARD:g} (hard) over the last 2 "
         f"weeks, fatigue up {FATIGUE_RISE:g}+ points, or a symptom >= {SYMPTOM_SEVERE}/10 in the last week",
         f"step down about {STEP_DOWN_PCT}% (at least 5 minutes less, never more than now); keep the number of days",
         f"{CAMPBELL_2019}; {PRACTICE} (lower the volume, keep consistency during treatment)", None),
    Rule("ADAPT-LOW-ADHERENCE", "Below the plan most weeks", "at the planned minutes in fewer than half the weeks",
         "hold, and ask what gets in the way", f"{SCHMITZ_2019}; brief, repeated conversations (seed 000)", None),
    Rule("ADAPT-PROGRESS", "Managing well", f"at the planned minutes in 3 of the last 4 weeks (or every week "
         f"logged), typical effort reported and CR-10 <= {EFFORT_EASY_ENOUGH:g}, fatigue not up",
         f"progress +{PROGRESS_PCT}% per week, up to {UPPER_MINUTES} min/week",
         f"{PAG_2018}; {PRACTICE} (about 10% per week)", None),
    Rule("ADAPT-HOLD", "Keep going", "none of the above (including: no effort reported, minutes only)",
         "hold at the current dose", PRACTICE, None),
)


@dataclass(frozen=True)
class Week:
    """One 7-day window: `start` to `start + 6`."""

    start: date
    minutes: float
    days: int
    planned: float | None

    @property
    def at_goal(self) -> bool:
        return self.planned is not None and self.planned > 0 and self.minutes >= self.planned


@dataclass(frozen=True)
class Assessment:
    """The card's line, the proposal and why; `weeks` oldest first (for the app's chart)."""

    step: Step
    rule: str
    line: str
    reason: str
    weeks: tuple[Week, ...]
    planned: float | None
    proposed: float | None
    effort: float | None
    fatigue_change: float | None

    def fingerprint(self) -> tuple[object, ...]:
        """What makes the card worth showing again: the proposal and the counts, not the exact minutes."""
        return (self.step, self.rule, sum(w.at_goal for w in self.weeks), len(self.weeks), self.proposed)


def assess(s: PatientSnapshot, as_of: date | None = None, service_on_hold: bool = False) -> Assessment | None:
    """The assessment of the last weeks, or None when nothing was logged at all (no companion, no wearable)."""
    today = as_of or s.as_of.date()
    minutes = day_minutes(s.history.get("exercise-minutes", ()), s.device_refs,
                          today - timedelta(days=7 * WINDOW_WEEKS - 1), today)
    if not minutes:
        return None
    first = min(minutes)
    n = min(WINDOW_WEEKS, max(1, ((today - first).days // 7) + 1))
    weeks = tuple(_week(s, minutes, today - timedelta(days=7 * (i + 1) - 1)) for i in reversed(range(n)))
    planned = _planned(s, today)
    effort = _typical(s.history.get("rpe", ()), today - timedelta(days=13), today)
    fatigue = _change(s.history.get("fatigue-nrs", ()), today - timedelta(days=7 * n - 1), today)
    severe = _severe_last_week(s, today)
    at_goal = sum(w.at_goal for w in weeks)
    line = _line(weeks, at_goal, effort, fatigue)

    def out(step: Step, rule: str, reason: str, proposed: float | None) -> Assessment:
        return Assessment(step, rule, line, reason, weeks, planned, proposed, effort, fatigue)

    if s.patient_alerts:
        what = s.patient_alerts[0].text.strip().rstrip(".")
        return out("hold", "ADAPT-ALERT-HOLD", f"Open report from the patient ({what}): review it before "
                   "changing the plan.", planned)
    if service_on_hold:
        return out("hold", "ADAPT-SERVICE-HOLD", "The exercise service has paused the programme.", planned)
    too_hard = effort is not None and effort >= EFFORT_TOO_HARD
    tiring = fatigue is not None and fatigue >= FATIGUE_RISE
    if too_hard or tiring or severe:  # before "too early": a plan that is too hard is not left for two weeks
        why = "; ".join(x for x in (
            f"typical effort {effort_word(effort)}" if too_hard and effort is not None else "",
            f"fatigue up {fatigue:g} points" if tiring and fatigue is not None else "",
            f"{severe} in the last week" if severe else "") if x)
        base = planned if planned else weeks[-1].minutes
        return out("step-down", "ADAPT-STEP-DOWN", f"Not tolerated at this dose ({why}).", _lower(base))
    if len(weeks) < MIN_WEEKS:
        return out("none", "ADAPT-TOO-EARLY", "Less than two weeks logged: too early to change the plan.", None)
    if planned and at_goal * 2 < len(weeks):
        return out("hold", "ADAPT-LOW-ADHERENCE", "Below the planned minutes in most weeks: ask what gets in the "
                   "way before changing the dose.", planned)
    if effort is None:
        return out("hold", "ADAPT-HOLD", "No effort reported in the last two weeks (minutes alone, e.g. from a "
                   "watch, cannot say how hard it was): ask before progressing.", planned)
    managing = at_goal >= min(3, len(weeks)) and effort <= EFFORT_EASY_ENOUGH and not (
        fatigue is not None and fatigue > 0)
    if planned and managing:
        if planned >= UPPER_MINUTES:
            return out("hold", "ADAPT-HOLD", f"At {planned:g} min/week, the top of the guideline range: keep it "
                       "up.", planned)
        return out("progress", "ADAPT-PROGRESS", f"At the planned minutes in {at_goal} of {len(weeks)} weeks with "
                   "moderate effort or less: ready for a little more.", _higher(planned))
    return out("hold", "ADAPT-HOLD", "Keep going at the current dose.", planned)


def proposal_text(a: Assessment) -> str:
    """The proposal in one phrase, e.g. "progress to 100 min/week (+10%)"."""
    if a.step == "none":
        return "no change proposed yet"
    if a.step == "hold":
        return f"hold at {a.proposed:g} min/week" if a.proposed else "hold"
    if a.proposed is None:
        return a.step.replace("-", " ")
    verb = "progress to" if a.step == "progress" else "step down to"
    delta = f" ({'+' if a.step == 'progress' else '-'}{PROGRESS_PCT if a.step == 'progress' else STEP_DOWN_PCT}%)"
    return f"{verb} {a.proposed:g} min/week{delta}"


# ------------------------------------------------------------------------------------------------ helpers


def day_minutes(values: tuple[Measurement, ...], device_refs: frozenset[str], first: date,
                last: date) -> dict[date, float]:
    """Minutes per day from `first` to `last`: the patient's own sessions add up (aerobic and strength on one
    day), a device's total stands alone (its largest), and the day counts the larger of the two, so one walk
    logged by hand and by a watch counts once. The one rule for the card, the app and the companion."""
    own: dict[date, float] = {}
    device: dict[date, float] = {}
    for m in values:
        d = m.effective.date()
        if first <= d <= last:
            if m.ref in device_refs:
                device[d] = max(device.get(d, 0.0), m.value)
            else:
                own[d] = own.get(d, 0.0) + m.value
    return {d: max(own.get(d, 0.0), device.get(d, 0.0)) for d in own.keys() | device.keys()}


def _week(s: PatientSnapshot, minutes: dict[date, float], start: date) -> Week:
    days = [start + timedelta(days=i) for i in range(7)]
    logged = [minutes[d] for d in days if d in minutes]
    return Week(start, sum(logged), len(logged), _planned(s, start + timedelta(days=3)))


def _planned(s: PatientSnapshot, day: date) -> float | None:
    doses = [d.minutes_per_week for d in s.planned if d.covers(day)]
    if not doses and s.planned:  # before the first phase or after the last: the plan as it starts or ends
        starts = [d.start for d in s.planned if d.start is not None]
        ends = [d.end for d in s.planned if d.end is not None]
        probe = min(starts) if starts and day < min(starts) else max(ends) if ends else day
        doses = [d.minutes_per_week for d in s.planned if d.covers(probe)]
    return sum(doses) if doses else None


def _in(values: tuple[Measurement, ...], start: date, end: date) -> list[Measurement]:
    return [m for m in values if start <= m.effective.date() <= end]


def _typical(values: tuple[Measurement, ...], start: date, end: date) -> float | None:
    got = [m.value for m in _in(values, start, end)]
    return float(statistics.median(got)) if got else None


def _change(values: tuple[Measurement, ...], start: date, end: date) -> float | None:
    got = sorted(_in(values, start, end), key=lambda m: m.effective)
    return got[-1].value - got[0].value if len(got) >= 2 else None


def _severe_last_week(s: PatientSnapshot, today: date) -> str:
    for measure, name in SYMPTOM_MEASURES.items():
        worst = max((m.value for m in _in(s.history.get(measure, ()), today - timedelta(days=6), today)), default=None)
        if worst is not None and worst >= SYMPTOM_SEVERE:
            return f"{name} {worst:g}/10"
    return ""


def _line(weeks: tuple[Week, ...], at_goal: int, effort: float | None, fatigue: float | None) -> str:
    parts = [f"{at_goal} of {len(weeks)} week{'s' if len(weeks) != 1 else ''} at the planned minutes"
             if any(w.planned for w in weeks) else
             f"{round(weeks[-1].minutes)} min in the last week"]
    if effort is not None:
        parts.append(f"effort {effort_word(effort)}")
    if fatigue is not None:
        points = f"{abs(fatigue):g} point{'s' if abs(fatigue) != 1 else ''}"
        parts.append("fatigue steady" if fatigue == 0 else f"fatigue {'down' if fatigue < 0 else 'up'} {points}")
    return ", ".join(parts)


def _round5(x: float) -> float:
    return float(5 * round(x / 5))


def _lower(base: float) -> float | None:
    """About 20% less, never more than now: rounded to 5 minutes, at least 5 below, not under MIN_MINUTES
    unless the dose already is (then 5 minutes less, down to 5)."""
    if not base:
        return None
    target = min(_round5(base * (100 - STEP_DOWN_PCT) / 100), base - 5)
    return max(target, min(float(MIN_MINUTES), base - 5), 5.0)


def _higher(planned: float) -> float:
    """About 10% more, at least 5 minutes more, up to UPPER_MINUTES."""
    return min(float(UPPER_MINUTES), max(_round5(planned * (100 + PROGRESS_PCT) / 100), planned + 5))
