"""Server-side validation and application of the clinician's edits from the SMART app.

The clinician has the last word, but not silently: an edit that crosses a safety limit (intensity above a
precaution's cap, resistance where a rule forbids it, an activity a precaution rules out, a setting less
restrictive than computed, removing a precaution) is refused with an EditProblem unless the edit carries an
override reason for that exact path; accepted overrides are recorded in the rationale under
CLINICIAN-OVERRIDE. Every accepted change (overridden or not) is also recorded under CLINICIAN-EDIT, and the
progression text and the long-term goals are regenerated from the edited components, so the rationale and the
handout never describe the pre-edit dose. Hard bounds (1-7 sessions/week, 5-120 min/session) cannot be overridden. When there is
any problem nothing is applied: the original prescription comes back with the problems. Pure, deterministic.

Edits JSON:
  {"components": [{"type": "aerobic", "frequencyPerWeek": 3, "minutesPerSession": 20, "intensity": "moderate",
                   "activities": [...]}, ...],   # the full new list; omitted fields keep the current value
   "setting": "community", "notes": "...", "removePrecautions": ["fall-risk"],
   "overrideReasons": {"components[0].intensity": "why", "setting": "why", "precautions.fall-risk": "why"}}
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from service.clinical.model import SETTING_ORDER, Component, Intensity, Prescription, Reason
from service.clinical.prescribe import (
    ACTIVITIES,
    AEROBIC_TARGET_MIN,
    HRR_BANDS,
    RPE_BANDS,
    PAEDIATRIC_STRENGTH_DAYS,
    RPE_SCALE,
    STRENGTH_TARGET_DAYS,
    normalise_activity,
    progression_for,
    targets_for,
)
from service.clinical.rules import LEVELS, RULES_BY_ID
from service.clinical.serialize import COMPONENT_TYPES

MIN_FREQ, MAX_FREQ = 1, 7
MIN_MINUTES, MAX_MINUTES = 5, 120
EDIT_KEYS = {"components", "setting", "notes", "removePrecautions", "overrideReasons"}
COMPONENT_KEYS = {"type", "frequencyPerWeek", "minutesPerSession", "intensity", "activities", "sets", "repetitions",
                  "notes"}


@dataclass(frozen=True)
class EditProblem:
    path: str
    message: str


@dataclass(frozen=True)
class EditResult:
    prescription: Prescription
    problems: list[EditProblem]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Limits:
    """The safety limits implied by the rules that fired (read back from the prescription's rationale)."""

    max_intensity: str = "vigorous"
    max_intensity_rule: str | None = None
    resistance: str = "moderate"
    resistance_rule: str | None = None
    avoid: dict[str, str] | None = None
    no_public: str | None = None
    slow: bool = False


def _limits(p: Prescription) -> _Limits:
    lim = _Limits(avoid={})
    order = ("none", "light", "moderate")
    for reason in p.rationale:
        rule = RULES_BY_ID.get(reason.rule)
        if rule is None:
            continue
        e = rule.effect
        if e.max_intensity and LEVELS.index(e.max_intensity) < LEVELS.index(lim.max_intensity):  # type: ignore[arg-type]
            lim.max_intensity, lim.max_intensity_rule = e.max_intensity, rule.id
        if e.resistance and order.index(e.resistance) < order.index(lim.resistance):
            lim.resistance, lim.resistance_rule = e.resistance, rule.id
        for tag in e.avoid:
            lim.avoid.setdefault(tag, rule.id)  # type: ignore[union-attr]
        if e.no_public and lim.no_public is None:
            lim.no_public = rule.id
        lim.slow = lim.slow or e.slow_progression
    return lim


def _dose(c: Component) -> str:
    return f"{c.frequency_per_week}x/week x {c.minutes_per_session} min, {c.intensity.label}"


def _changes(before: Prescription, after: Prescription) -> list[str]:
    """What the clinician changed, one readable line each (for the CLINICIAN-EDIT rationale)."""
    out: list[str] = []
    if before.setting != after.setting:
        out.append(f"setting {before.setting} -> {after.setting}")
    old = {c.type: c for c in before.components}
    new = {c.type: c for c in after.components}
    for ctype, c in new.items():
        o = old.get(ctype)
        if o is None:
            out.append(f"{ctype} added: {_dose(c)}")
            continue
        if (o.frequency_per_week, o.minutes_per_session, o.intensity.label) != \
                (c.frequency_per_week, c.minutes_per_session, c.intensity.label):
            out.append(f"{ctype} {_dose(o)} -> {_dose(c)}")
        if o.activities != c.activities:
            out.append(f"{ctype} activities: {', '.join(c.activities) or 'none'}")
        if (o.sets, o.repetitions) != (c.sets, c.repetitions):
            out.append(f"{ctype} sets/repetitions: {c.sets or '-'} x {c.repetitions or '-'}")
    for ctype in old:
        if ctype not in new:
            out.append(f"{ctype} removed")
    removed = [x.code for x in before.precautions if x.code not in {y.code for y in after.precautions}]
    if removed:
        out.append("precaution(s) removed: " + ", ".join(removed))
    return out


class _Editor:
    def __init__(self, p: Prescription, edits: dict[str, Any], now: datetime) -> None:
        self.p = p
        self.now = now
        self.problems: list[EditProblem] = []
        self.overrides_used: list[Reason] = []
        reasons = edits.get("overrideReasons") or {}
        self.reasons: dict[str, str] = {}
        if not isinstance(reasons, dict):
            self.problem("overrideReasons", "must be an object mapping a path to a reason")
        else:
            for k, v in reasons.items():
                if isinstance(v, str) and v.strip():
                    self.reasons[k] = v.strip()
                else:
                    self.problem(f"overrideReasons.{k}", "an override reason must be a non-empty text")
        self.limits = _limits(p)

    def problem(self, path: str, message: str) -> None:
        self.problems.append(EditProblem(path, message))

    def guarded(self, path: str, message: str, what: str, *aliases: str) -> None:
        """A safety limit crossed: accepted with an override reason for the path, else a problem."""
        reason = next((self.reasons[k] for k in (path, *aliases) if k in self.reasons), None)
        if reason is None:
            self.problem(path, f"{message} (give an override reason for '{path}' to proceed)")
            return
        rule = RULES_BY_ID["CLINICIAN-OVERRIDE"]
        self.overrides_used.append(Reason(rule.id, f"{path}: {what}", f"accepted on {self.now.date().isoformat()}; "
                                          f"reason: {reason}", rule.citation))

    # ------------------------------------------------------------ components
    def intensity(self, raw: Any, current: Intensity | None, path: str) -> Intensity | None:
        if isinstance(raw, str):
            if raw not in RPE_BANDS:
                self.problem(path, f"intensity must be one of {', '.join(LEVELS)}")
                return None
            lo, hi = RPE_BANDS[raw]  # type: ignore[index]
            hrr = HRR_BANDS[raw] if current is not None and current.hrr_low_pct is not None else (None, None)  # type: ignore[index]
            return Intensity(raw, RPE_SCALE, lo, hi, hrr[0], hrr[1])
        if isinstance(raw, dict):
            label = raw.get("label")
            if label not in RPE_BANDS:
                self.problem(path, f"intensity.label must be one of {', '.join(LEVELS)}")
                return None
            lo, hi = raw.get("low"), raw.get("high")
            for v, name in ((lo, "low"), (hi, "high")):
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    self.problem(f"{path}.{name}", "must be a number")
                    return None
            return Intensity(label, str(raw.get("scale") or RPE_SCALE), lo, hi,
                             raw.get("hrrLowPct"), raw.get("hrrHighPct"))
        self.problem(path, "intensity must be a label (light/moderate/vigorous) or an object")
        return None

    def component(self, i: int, raw: Any) -> Component | None:
        path = f"components[{i}]"
        if not isinstance(raw, dict):
            self.problem(path, "must be an object")
            return None
        unknown = sorted(set(raw) - COMPONENT_KEYS)
        if unknown:
            self.problem(path, f"unknown field(s): {', '.join(unknown)}")
        ctype = raw.get("type")
        if ctype not in COMPONENT_TYPES:
            self.problem(f"{path}.type", f"must be one of {', '.join(COMPONENT_TYPES)}")
            return None
        current = next((c for c in self.p.components if c.type == ctype), None)
        freq = raw.get("frequencyPerWeek", current.frequency_per_week if current else None)
        minutes = raw.get("minutesPerSession", current.minutes_per_session if current else None)
        ok = True
        for value, name, lo, hi, unit in ((freq, "frequencyPerWeek", MIN_FREQ, MAX_FREQ, "days/week"),
                                          (minutes, "minutesPerSession", MIN_MINUTES, MAX_MINUTES, "minutes")):
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                self.problem(f"{path}.{name}", f"must be a whole number from {lo} to {hi} {unit}")
                ok = False
        if "intensity" in raw:
            intensity = self.intensity(raw["intensity"], current.intensity if current else None, f"{path}.intensity")
        elif current is not None:
            intensity = current.intensity
        else:
            self.problem(f"{path}.intensity", "is required for a new component")
            intensity = None
        activities: tuple[str, ...] = current.activities if current else ()
        if "activities" in raw:
            acts = raw["activities"]
            if not isinstance(acts, list) or not all(isinstance(a, str) and a.strip() for a in acts):
                self.problem(f"{path}.activities", "must be a list of activity names")
                ok = False
            else:
                activities = tuple(a.strip() for a in acts)
                self.check_activities(activities, f"{path}.activities")
        if intensity is None or not ok:
            return None
        self.check_caps(ctype, intensity, current, f"{path}.intensity", path)
        notes = raw.get("notes", list(current.notes) if current else [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            self.problem(f"{path}.notes", "must be a list of texts")
            return None
        return Component(ctype, freq, minutes, intensity, activities,  # type: ignore[arg-type]
                         raw.get("sets", current.sets if current else None),
                         raw.get("repetitions", current.repetitions if current else None), tuple(notes))

    def check_caps(self, ctype: str, intensity: Intensity, current: Component | None, ipath: str, cpath: str) -> None:
        lim = self.limits
        if LEVELS.index(intensity.label) > LEVELS.index(lim.max_intensity):  # type: ignore[arg-type]
            self.guarded(ipath, f"{intensity.label} intensity is above the {lim.max_intensity} limit set by "
                         f"{lim.max_intensity_rule}", f"{ctype} intensity {intensity.label} above "
                         f"{lim.max_intensity} ({lim.max_intensity_rule})")
        if ctype == "resistance":
            if lim.resistance == "none":
                self.guarded(cpath, f"resistance training is ruled out by {lim.resistance_rule}",
                             f"resistance training despite {lim.resistance_rule}")
            elif lim.resistance == "light" and intensity.label != "light":
                self.guarded(ipath, f"resistance is limited to light by {lim.resistance_rule}",
                             f"resistance intensity {intensity.label} above light ({lim.resistance_rule})")

    def check_activities(self, activities: tuple[str, ...], path: str) -> None:
        lim = self.limits
        for act in activities:
            key = normalise_activity(act)
            if key is None:
                continue  # free text the clinician wrote: their responsibility, nothing to check it against
            for tag in sorted(ACTIVITIES[key][1]):
                blocker = (lim.avoid or {}).get(tag) or (lim.no_public if tag == "public-facility" else None)
                if blocker:
                    self.guarded(path, f"{act} is ruled out by {blocker}", f"{act} despite {blocker}")
                    break

    # ------------------------------------------------------------ apply
    def apply(self, edits: dict[str, Any]) -> Prescription:
        p = self.p
        unknown = sorted(set(edits) - EDIT_KEYS)
        if unknown:
            self.problem("", f"unknown edit field(s): {', '.join(unknown)}")
        setting = p.setting
        if "setting" in edits:
            new = edits["setting"]
            if new not in SETTING_ORDER:
                self.problem("setting", f"must be one of {', '.join(SETTING_ORDER)}")
            else:
                if SETTING_ORDER.index(new) < SETTING_ORDER.index(p.setting):
                    self.guarded("setting", f"{new} is less restrictive than the computed setting {p.setting}",
                                 f"setting {new} instead of {p.setting}")
                elif new == "community" and self.limits.no_public:
                    self.guarded("setting", f"community facilities are ruled out by {self.limits.no_public}",
                                 f"community setting despite {self.limits.no_public}")
                setting = new
        components = p.components
        if "components" in edits:
            raw = edits["components"]
            if not isinstance(raw, list):
                self.problem("components", "must be a list")
            else:
                seen: set[str] = set()
                out = []
                for i, c in enumerate(raw):
                    comp = self.component(i, c)
                    if comp is not None:
                        if comp.type in seen:
                            self.problem(f"components[{i}].type", f"{comp.type} appears twice")
                        seen.add(comp.type)
                        out.append(comp)
                components = tuple(out)
        if setting != "defer" and not components and not self.problems:
            self.problem("components", "a plan that is not deferred needs at least one component")
        if setting == "defer":
            components = ()
        precautions = p.precautions
        remove = edits.get("removePrecautions") or []
        if not isinstance(remove, list) or not all(isinstance(c, str) for c in remove):
            self.problem("removePrecautions", "must be a list of precaution codes")
        else:
            present = {x.code for x in p.precautions}
            for i, code in enumerate(remove):
                if code not in present:
                    self.problem(f"removePrecautions[{i}]", f"{code!r} is not a precaution of this prescription")
                    continue
                rule = next(x.rule for x in p.precautions if x.code == code)
                self.guarded(f"precautions.{code}", f"removing the {code} precaution (from {rule}) needs a reason",
                             f"precaution {code} removed ({rule})", f"removePrecautions[{i}]")
            precautions = tuple(x for x in p.precautions if x.code not in set(remove))
        notes = p.notes
        if "notes" in edits:
            text = edits["notes"]
            if not isinstance(text, str):
                self.problem("notes", "must be a text")
            elif text.strip():
                notes = (*p.notes, f"Clinician note: {text.strip()}")
        edited = replace(p, setting=setting, clearance_required=p.clearance_required or setting == "defer",
                         components=components, precautions=precautions, notes=notes)
        changes = _changes(p, edited)
        if not changes:
            return replace(edited, rationale=(*p.rationale, *self.overrides_used))
        rule = RULES_BY_ID["CLINICIAN-EDIT"]
        recorded = [Reason(rule.id, f"clinician changed: {change}", f"applied on {self.now.date().isoformat()}",
                           rule.citation) for change in changes]
        goal = next((t.value for t in p.targets if t.measure == "aerobic-minutes-per-week"), AEROBIC_TARGET_MIN)
        paediatric = any(r.rule == "PAEDIATRIC" for r in p.rationale)
        targets = targets_for(components, goal, PAEDIATRIC_STRENGTH_DAYS if paediatric else STRENGTH_TARGET_DAYS)
        lim = self.limits
        return replace(
            edited,
            rationale=(*p.rationale, *recorded, *self.overrides_used),
            targets=targets,
            progression=progression_for(setting, components, targets, slow=lim.slow,
                                        resistance_cap=lim.resistance, max_intensity=lim.max_intensity),
        )


def apply_edits(prescription: Prescription, edits: dict[str, Any], now: datetime) -> EditResult:
    """Validate and apply the clinician's edits; with any problem, the prescription is returned unchanged."""
    if not isinstance(edits, dict):
        return EditResult(prescription, [EditProblem("", "edits must be a JSON object")])
    if not prescription.eligible:
        return EditResult(prescription, [EditProblem("", "the patient is not eligible: nothing to edit")])
    editor = _Editor(prescription, edits, now)
    edited = editor.apply(edits)
    if editor.problems:
        return EditResult(prescription, editor.problems)
    return EditResult(edited, [])
