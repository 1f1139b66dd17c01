"""The patient's handout, in plain words: the plan as a person with cancer reads it at home.

Built from the same prescription the clinician signs (so the two cannot disagree), without clinical jargon:
effort is explained by the talk test and a 6-20 scale in words, not "RPE"; no test abbreviations, codes or rule
ids; precautions use their patient wording from terminology/ (designation use "patient"); advice lines appear
once; numbers agree in number ("1 set", "2 sets"). A deferred plan says what happens next instead of a
schedule. Pure: the caller passes the contacts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from service import canonical
from service.clinical.model import Component, Prescription
from service.clinical.prescribe import example_week
from service.clinical.rules import RULES

TITLES = {"aerobic": "Moving", "resistance": "Strength exercises", "flexibility": "Stretching",
          "balance": "Balance exercises"}
WHAT = {"aerobic": "activity that makes you breathe a little faster", "resistance": "working your muscles against "
        "a band, a weight or your own body", "flexibility": "gentle stretches", "balance": "exercises to keep you "
        "steady on your feet"}
HOW_HARD = {"light": "easy: you can talk and sing while you do it",
            "moderate": "moderate: you can talk, but not sing",
            "vigorous": "hard: you can only say a few words at a time"}
WHERE = {"home-based": "At home, at your own pace. You can do this on your own.",
         "community": "In a community exercise programme, with a trained instructor.",
         "supervised": "With an exercise physiologist or physiotherapist, who will supervise you.",
         "defer": "Not yet: your cancer team will tell you when you can start."}
DAYS = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "fri": "Friday",
        "sat": "Saturday", "sun": "Sunday"}
STEP_MINUTES = 5
# Clinician-facing lines of the plan's notes (the handout says these its own way, or they are not for patients).
CLINICIAN_ONLY = ("Clinician note:", "Until cleared:", "Structured exercise is deferred", "Not eligible")
RULE_BY_TITLE = {r.title.lower(): r for r in RULES}


@dataclass(frozen=True)
class Activity:
    title: str
    what: str
    how_often: str
    how_hard: str | None
    examples: str | None


@dataclass(frozen=True)
class Handout:
    on_hold: bool  # deferred: pending medical clearance
    clearance_first: bool  # not deferred, but the team checks first
    where: str
    activities: tuple[Activity, ...] = ()
    effort_scale: str | None = None
    week: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (day, activity titles) when the patient gave days
    goals: tuple[str, ...] = ()
    building_up: tuple[str, ...] = ()
    meanwhile: tuple[str, ...] = ()  # on hold: what to do until cleared
    next_steps: tuple[str, ...] = ()
    take_care: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (why, activities to avoid)
    stop: tuple[str, ...] = ()
    contacts: tuple[str, ...] = field(default_factory=tuple)


def plural(n: int, one: str, many: str | None = None) -> str:
    """"1 set", "2 sets"."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def handout_for(p: Prescription, *, service_name: str, service_contact: str = "", care_team_contact: str = "",
                precaution_text: dict[str, str] | None = None) -> Handout:
    """The handout of `p`. `precaution_text`: precaution code -> patient wording (from terminology/)."""
    on_hold = p.setting == "defer"
    words = precaution_text or {}
    contacts = _contacts(service_name, service_contact, care_team_contact)
    if on_hold:
        meanwhile = _unique([n[len("Until cleared:"):].strip() for n in p.notes if n.startswith("Until cleared:")]
                            + _advice(p.notes, avoid_lines=False))
        take_care = tuple((text, ()) for text in _unique([words.get(x.code) or x.text for x in p.precautions]))
        return Handout(on_hold=True, clearance_first=True, where=WHERE["defer"], meanwhile=tuple(meanwhile),
                       next_steps=(
                           "Your exercise plan is on hold until your cancer team has checked a few things first "
                           "(pending medical clearance).",
                           "When they are happy that it is safe, they will send your plan to the exercise service, "
                           "who will then contact you to get you started.",
                           "If you have not heard by your next appointment, ask your cancer team about it."),
                       take_care=tuple(take_care), stop=tuple(p.stop_rules), contacts=contacts)
    take_care = _take_care(p, words)
    activities = tuple(_activity(c) for c in p.components)
    levels = {c.intensity.label for c in p.components}
    scale = None
    if any(c.intensity.low is not None for c in p.components):
        scale = ("How hard you are working can also be scored from 6 to 20, where 6 is sitting still and 20 is the "
                 "hardest you could ever work. " + " ".join(
                     f"{HOW_HARD[lv].split(':')[0].capitalize()} is about {_band(p.components, lv)}." for lv in
                     ("light", "moderate", "vigorous") if lv in levels and _band(p.components, lv)))
    next_steps = [("You can start this week." if p.setting == "home-based" else
                   f"{service_name} will contact you to arrange your first session.")]
    if p.clearance_required:
        next_steps.insert(0, "Please do not start until your cancer team has checked that it is safe for you: "
                             "they will tell you when you can begin.")
    return Handout(on_hold=False, clearance_first=p.clearance_required, where=WHERE.get(p.setting, p.setting),
                   activities=activities, effort_scale=scale,
                   week=_week(p), goals=_goals(p), building_up=_building_up(p), next_steps=tuple(next_steps),
                   take_care=tuple(take_care), stop=tuple(p.stop_rules), contacts=contacts)


def _activity(c: Component) -> Activity:
    often = f"{plural(c.frequency_per_week, 'time')} a week, about {c.minutes_per_session} minutes each time"
    if c.sets:
        often += f": {plural(int(c.sets), 'set')}" + (f" of {c.repetitions} repetitions" if c.repetitions else "")
    hard = HOW_HARD.get(c.intensity.label)
    examples = _unique(list(c.activities))
    return Activity(TITLES.get(c.type, c.type), WHAT.get(c.type, ""), often,
                    f"{hard}." if hard else None, ", ".join(examples) if examples else None)


def _band(components: tuple[Component, ...], level: str) -> str | None:
    for c in components:
        if c.intensity.label == level and c.intensity.low is not None and c.intensity.high is not None:
            return f"{c.intensity.low:g} to {c.intensity.high:g}"
    return None


def _week(p: Prescription) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The sessions spread over the days the patient said they have (none when they gave no days)."""
    days = list(p.preferences.days_available) if p.preferences is not None else []
    if not days or not p.components:
        return ()
    plan: dict[str, list[str]] = {d: [] for d in days}
    for c in p.components:
        n = min(c.frequency_per_week, len(days))
        for i in range(n):
            plan[days[(i * len(days)) // n]].append(TITLES.get(c.type, c.type).lower())
    return tuple((DAYS.get(d, d), tuple(_unique(v))) for d, v in plan.items() if v)


def _goals(p: Prescription) -> tuple[str, ...]:
    out = []
    for t in p.targets:
        if t.measure == "aerobic-minutes-per-week":
            out.append(f"Build up to {t.value} minutes a week of moving (activity that makes you breathe a little "
                       f"faster).")
        elif t.measure == "strength-days-per-week":
            out.append(f"Strength exercises on {plural(t.value, 'day')} a week.")
    return tuple(out)


def _building_up(p: Prescription) -> tuple[str, ...]:
    """How the plan grows, from the same components, goal and pace as the clinician's progression."""
    aerobic = next((c for c in p.components if c.type == "aerobic"), None)
    goal = next((t.value for t in p.targets if t.measure == "aerobic-minutes-per-week"), 150)
    slow = any("every 2 weeks" in line for line in p.progression)
    days = len(p.preferences.days_available) if p.preferences is not None else None
    lines = []
    if aerobic is not None:
        weekly = aerobic.frequency_per_week * aerobic.minutes_per_session
        if weekly >= goal:
            lines.append(f"Keep doing at least {goal} minutes a week of moving, and vary what you do.")
        else:
            lines.append(f"Weeks 1 and 2: {plural(aerobic.frequency_per_week, 'time')} a week, "
                         f"{aerobic.minutes_per_session} minutes each time.")
            lines.append(f"Then, if you feel well, add {STEP_MINUTES} minutes to each session "
                         f"{'every 2 weeks' if slow else 'every week'}, until you reach about {goal} minutes a week "
                         f"(for example {example_week(goal, days)}).")
    if any(c.type == "resistance" for c in p.components):
        light = any("light-resistance" in line for line in p.progression)
        lines.append("Strength: when 15 repetitions feel easy, add a set or use a slightly stronger band or weight"
                     + (", but keep it light." if light else "."))
    if lines:
        lines.append("Your team will check how you are getting on after 8 to 12 weeks.")
    return tuple(lines)


def _take_care(p: Prescription, words: dict[str, str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """One item per precaution (its patient wording) with the activities its rules rule out, each activity once;
    an activity ruled out by a rule with no precaution on the plan stands alone."""
    avoid: dict[str, list[str]] = {}
    loose: list[str] = []
    for n in _advice(p.notes):
        m = re.match(r"^(.*) \(([^()]*)\)\.$", n)
        rule = RULE_BY_TITLE.get(m.group(2).lower()) if m else None
        if rule is None or m is None:
            continue
        line = m.group(1).rstrip(".") + "."
        codes = {x.code for x in p.precautions}
        (avoid.setdefault(rule.effect.precaution, []) if rule.effect.precaution in codes else loose).append(line)
    seen: set[str] = set()
    items = []
    for x in p.precautions:
        lines = [a for a in _unique(avoid.get(x.code, [])) if a not in seen]
        seen.update(lines)
        items.append((words.get(x.code) or x.text, tuple(lines)))
    items += [(line, ()) for line in _unique(loose) if line not in seen]
    items += [(line, ()) for line in _unique(_advice(p.notes, avoid_lines=False))]
    return tuple(items)


def _advice(notes: tuple[str, ...], avoid_lines: bool = True) -> list[str]:
    """The plan's lines for the patient (clinician-only lines dropped): the activities ruled out, each naming
    its rule in brackets (`avoid_lines`), or the other advice."""
    out = []
    for n in notes:
        if n.startswith(CLINICIAN_ONLY):
            continue
        m = re.match(r"^(.*) \(([^()]*)\)\.$", n)
        is_avoid = bool(m and m.group(2).lower() in RULE_BY_TITLE)
        if is_avoid == avoid_lines:
            out.append(n)
    return out


def _contacts(name: str, service_contact: str, care_team_contact: str) -> tuple[str, ...]:
    team = (f"Your cancer team: {care_team_contact}." if care_team_contact else
            "Your cancer team: call the number on your appointment letter, or ask at your next visit.")
    service = f"{name}: {service_contact}." if service_contact else f"{name} will contact you."
    return (team, service)


def _unique(lines: list[str | None]) -> list[str]:
    """Each line once (ignoring case and spacing), in order."""
    seen: set[str] = set()
    out = []
    for line in lines:
        if not line:
            continue
        key = " ".join(line.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(line)
    return out


def patient_wording(codes: list[str]) -> dict[str, str]:
    """Precaution code -> its patient wording in terminology/ (designation use "patient")."""
    from service.terminology import get_terminology

    term = get_terminology()
    out = {}
    for code in codes:
        text = term.designation(canonical.CS_PRECAUTION, code, "patient")
        if text:
            out[code] = text
    return out
