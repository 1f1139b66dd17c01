"""Server-side validation and application of the clinician's edits from the SMART app.

The clinician has the last word, but not silently. Every limit a rule sets on the plan - intensity above a
cap, more aerobic minutes than a lowered starting volume allows, resistance where a rule forbids or limits it,
an activity a precaution rules out, a setting below the safety floor, a removed precaution - is checked against
the same limits the plan was built in (`limits.py`, recomputed from the rules in the rationale), so the plan and
the check cannot drift. Crossing one is refused with an EditProblem (in a clinician's words: the rule's name,
never its id or a JSON path) unless the edit carries a *clinical* override reason for that limit (a code from
the clinical-override-reason value set, with text; "other" needs text); accepted overrides are recorded in
the rationale under CLINICIAN-OVERRIDE. Every accepted change is also recorded under CLINICIAN-EDIT, and the
progression and the long-term goals are regenerated from the edited components, so the rationale and the
handout never describe the pre-edit dose. Hard bounds (1-7 sessions/week, 5-120 min/session) cannot be
overridden. When there is any problem nothing is applied: the original prescription comes back with the
problems. Pure, deterministic.

Edits JSON:
  {"components": [{"type": "aerobic", "frequencyPerWeek": 3, "minutesPerSession": 20, "intensity": "moderate",
                   "activities": [...]}, ...],   # the full new list; omitted fields keep the current value
   "setting": "community", "notes": "...", "removePrecautions": ["fall-risk"],
   "overrideReasons": {"components[0].intensity": {"code": "specialist-cleared", "text": "haematologist agrees"},
                       "setting": {"code": "supervised-by-professional"}}}
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
from service.canonical import CS_CLINICAL_OVERRIDE_REASON, CS_PRECAUTION
from service.clinical.limits import limits_of, rule_title
from service.clinical.rules import LEVELS, RULES_BY_ID
from service.terminology import get_terminology, setting_name
from service.clinical.serialize import COMPONENT_TYPES

MIN_FREQ, MAX_FREQ = 1, 7
MIN_MINUTES, MAX_MINUTES = 5, 120
EDIT_KEYS = {"components", "setting", "notes", "removePrecautions", "overrideReasons"}
MAX_REASON_TEXT = 500
COMPONENT_KEYS = {"type", "frequencyPerWeek", "minutesPerSession", "intensity", "activities", "sets", "repetitions",
                  "notes"}


@dataclass(frozen=True)
class EditProblem:
    """What is wrong with an edit: `path` locates the field for the UI, `message` says it in clinical words;
    `override`: a clinical override reason for this path would let it through."""

    path: str
    message: str
    override: bool = False


@dataclass(frozen=True)
class EditResult:
    prescription: Prescription
    problems: list[EditProblem]

    @property
    def ok(self) -> bool:
        return not self.problems


def _clinical_reasons() -> dict[str, str]:
    """code -> display of the clinical override reasons (terminology/CodeSystem-clinical-override-reason)."""
    t = get_terminology()
    return {c: t.display(CS_CLINICAL_OVERRIDE_REASON, c) or c for c in t.code_system_codes(CS_CLINICAL_OVERRIDE_REASON)}


def _precaution_name(code: str) -> str:
    return get_terminology().display(CS_PRECAUTION, code) or code


@dataclass(frozen=True)
class OverrideReason:
    code: str
    display: str
    text: str

    def __str__(self) -> str:
        return f"{self.display}: {self.text}" if self.text else self.display


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
        self.reasons: dict[str, OverrideReason] = {}
        reasons = edits.get("overrideReasons") or {}
        if not isinstance(reasons, dict):
            self.problem("overrideReasons", "Override reasons must name the limit they override.")
        else:
            for k, v in reasons.items():
                reason = self.override_reason(k, v)
                if reason is not None:
                    self.reasons[k] = reason
        self.limits = limits_of((r.rule for r in p.rationale), p.clearance.rules if p.clearance else ())

    def override_reason(self, path: str, raw: Any) -> OverrideReason | None:
        """A clinical override reason: {"code": <clinical-override-reason>, "text": ...}; "other" needs text."""
        codes = _clinical_reasons()
        code = raw.get("code") if isinstance(raw, dict) else None
        text = raw.get("text") if isinstance(raw, dict) else None
        text = text.strip() if isinstance(text, str) else ""
        if code not in codes:
            self.problem(f"overrideReasons.{path}", "Choose a clinical reason for the override ("
                         + ", ".join(d.lower() for d in codes.values()) + ").")
            return None
        if code == "other" and not text:
            self.problem(f"overrideReasons.{path}", "Explain the clinical reason for the override.")
            return None
        return OverrideReason(code, codes[code], text[:MAX_REASON_TEXT])

    def problem(self, path: str, message: str, override: bool = False) -> None:
        self.problems.append(EditProblem(path, message, override))

    def guarded(self, path: str, message: str, what: str, *aliases: str) -> None:
        """A safety limit crossed: accepted with a clinical override reason for the path, else a problem."""
        reason = next((self.reasons[k] for k in (path, *aliases) if k in self.reasons), None)
        if reason is None:
            self.problem(path, f"{message} To go ahead, give a clinical reason for overriding it.", override=True)
            return
        rule = RULES_BY_ID["CLINICIAN-OVERRIDE"]
        self.overrides_used.append(Reason(rule.id, what, f"accepted on {self.now.date().isoformat()}; "
                                          f"reason: {reason}", rule.citation))

    # ------------------------------------------------------------ components
    def intensity(self, raw: Any, current: Intensity | None, path: str) -> Intensity | None:
        if isinstance(raw, str):
            if raw not in RPE_BANDS:
                self.problem(path, "Intensity must be light, moderate or vigorous.")
                return None
            lo, hi = RPE_BANDS[raw]  # type: ignore[index]
            hrr = HRR_BANDS[raw] if current is not None and current.hrr_low_pct is not None else (None, None)  # type: ignore[index]
            return Intensity(raw, RPE_SCALE, lo, hi, hrr[0], hrr[1])
        if isinstance(raw, dict):
            label = raw.get("label")
            if label not in RPE_BANDS:
                self.problem(path, "Intensity must be light, moderate or vigorous.")
                return None
            lo, hi = raw.get("low"), raw.get("high")
            for v, name in ((lo, "low"), (hi, "high")):
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    self.problem(f"{path}.{name}", "The intensity range must be given in numbers.")
                    return None
            return Intensity(label, str(raw.get("scale") or RPE_SCALE), lo, hi,
                             raw.get("hrrLowPct"), raw.get("hrrHighPct"))
        self.problem(path, "Intensity must be light, moderate or vigorous.")
        return None

    def component(self, i: int, raw: Any) -> Component | None:
        path = f"components[{i}]"
        if not isinstance(raw, dict):
            self.problem(path, "A component could not be read.")
            return None
        unknown = sorted(set(raw) - COMPONENT_KEYS)
        if unknown:
            self.problem(path, f"A component has fields this service does not know: {', '.join(unknown)}.")
        ctype = raw.get("type")
        if ctype not in COMPONENT_TYPES:
            self.problem(f"{path}.type", "A component must be aerobic, resistance, flexibility or balance.")
            return None
        current = next((c for c in self.p.components if c.type == ctype), None)
        freq = raw.get("frequencyPerWeek", current.frequency_per_week if current else None)
        minutes = raw.get("minutesPerSession", current.minutes_per_session if current else None)
        ok = True
        for value, name, lo, hi, label in ((freq, "frequencyPerWeek", MIN_FREQ, MAX_FREQ, "sessions per week"),
                                           (minutes, "minutesPerSession", MIN_MINUTES, MAX_MINUTES,
                                            "minutes per session")):
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                self.problem(f"{path}.{name}", f"{ctype.capitalize()}: {label} must be a whole number from {lo} to "
                             f"{hi}.")
                ok = False
        if "intensity" in raw:
            intensity = self.intensity(raw["intensity"], current.intensity if current else None, f"{path}.intensity")
        elif current is not None:
            intensity = current.intensity
        else:
            self.problem(f"{path}.intensity", f"Choose an intensity for the new {ctype} component.")
            intensity = None
        activities: tuple[str, ...] = current.activities if current else ()
        if "activities" in raw:
            acts = raw["activities"]
            if not isinstance(acts, list) or not all(isinstance(a, str) and a.strip() for a in acts):
                self.problem(f"{path}.activities", f"{ctype.capitalize()}: list the activities by name.")
                ok = False
            else:
                activities = tuple(a.strip() for a in acts)
                self.check_activities(activities, f"{path}.activities")
        if intensity is None or not ok:
            return None
        self.check_caps(ctype, intensity, current, f"{path}.intensity", path)
        notes = raw.get("notes", list(current.notes) if current else [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            self.problem(f"{path}.notes", f"{ctype.capitalize()}: notes must be text.")
            return None
        return Component(ctype, freq, minutes, intensity, activities,  # type: ignore[arg-type]
                         raw.get("sets", current.sets if current else None),
                         raw.get("repetitions", current.repetitions if current else None), tuple(notes))

    def check_caps(self, ctype: str, intensity: Intensity, current: Component | None, ipath: str, cpath: str) -> None:
        lim = self.limits
        if LEVELS.index(intensity.label) > LEVELS.index(lim.max_intensity):  # type: ignore[arg-type]
            why = rule_title(lim.max_intensity_rule)
            self.guarded(ipath, f"{intensity.label.capitalize()} {ctype} intensity is above the {lim.max_intensity} "
                         f"limit ({why}).", f"{ctype} at {intensity.label} intensity, above the {lim.max_intensity} "
                         f"limit ({why})")
        if ctype == "resistance":
            why = rule_title(lim.resistance_rule)
            if lim.resistance == "none":
                self.guarded(cpath, f"Resistance training is ruled out ({why}).",
                             f"resistance training although ruled out ({why})")
            elif lim.resistance == "light" and intensity.label != "light":
                self.guarded(ipath, f"Resistance training is limited to light ({why}).",
                             f"resistance at {intensity.label} intensity, above light ({why})")

    def check_volume(self, components: tuple[Component, ...]) -> None:
        """Aerobic minutes a week above what a rule lowering the starting volume allows (metastatic disease,
        performance status, active treatment, low fitness ...)."""
        planned = sum(c.frequency_per_week * c.minutes_per_session for c in self.p.components if c.type == "aerobic")
        cap = self.limits.weekly_aerobic_cap(planned)
        edited = sum(c.frequency_per_week * c.minutes_per_session for c in components if c.type == "aerobic")
        if cap is not None and edited > cap:
            i = next((n for n, c in enumerate(components) if c.type == "aerobic"), 0)
            why = rule_title(self.limits.volume_rule)
            self.guarded(f"components[{i}].minutesPerSession",
                         f"Aerobic exercise of {edited} minutes a week is more than the {cap} minutes the starting "
                         f"volume allows ({why}).", f"aerobic {edited} min/week, above the {cap} min/week starting "
                         f"limit ({why})")

    def check_activities(self, activities: tuple[str, ...], path: str) -> None:
        for act in activities:
            key = normalise_activity(act)
            if key is None:
                continue  # free text the clinician wrote: their responsibility, nothing to check it against
            blocker = self.limits.blocker(ACTIVITIES[key][1])
            if blocker:
                why = rule_title(blocker)
                self.guarded(path, f"{act.capitalize()} is ruled out ({why}).", f"{act} although ruled out ({why})")

    # ------------------------------------------------------------ apply
    def apply(self, edits: dict[str, Any]) -> Prescription:
        p = self.p
        unknown = sorted(set(edits) - EDIT_KEYS)
        if unknown:
            self.problem("", f"The edit has fields this service does not know: {', '.join(unknown)}.")
        setting = p.setting
        if "setting" in edits:
            new = edits["setting"]
            if new not in SETTING_ORDER:
                self.problem("setting", "Choose home-based, community, supervised or defer.")
            else:
                floor = self.limits.safe_setting()
                if floor == "defer" and new != "defer":
                    why = "; ".join(rule_title(r) for r in self.limits.floor_rules) or "the safety rules"
                    self.problem("setting", f"Exercise is deferred by red flags ({why}). Record the clearance "
                                 "(what you reviewed and found) first: the plan then starts supervised and can be "
                                 "adjusted.")
                elif SETTING_ORDER.index(new) < SETTING_ORDER.index(floor):
                    why = "; ".join(rule_title(r) for r in self.limits.floor_rules) or "the safety rules"
                    self.guarded("setting", f"The setting “{setting_name(new)}” is less than the “{setting_name(floor)}” "
                                 f"setting the rules require ({why}).", f"{setting_name(new).lower()} setting instead "
                                 f"of {setting_name(floor).lower()} ({why})")
                elif new == "community" and self.limits.no_public:
                    why = rule_title(self.limits.no_public)
                    self.guarded("setting", f"Community facilities (gyms, pools, classes) are ruled out ({why}).",
                                 f"community setting although public facilities are ruled out ({why})")
                setting = new
        components = p.components
        if "components" in edits:
            raw = edits["components"]
            if not isinstance(raw, list):
                self.problem("components", "The components could not be read.")
            else:
                seen: set[str] = set()
                out = []
                for i, c in enumerate(raw):
                    comp = self.component(i, c)
                    if comp is not None:
                        if comp.type in seen:
                            self.problem(f"components[{i}].type", f"The plan has two {comp.type} components.")
                        seen.add(comp.type)
                        out.append(comp)
                components = tuple(out)
                self.check_volume(components)
        if setting != "defer" and not components and not self.problems:
            self.problem("components", "A plan that is not deferred needs at least one component.")
        if setting == "defer":
            components = ()
        precautions = p.precautions
        remove = edits.get("removePrecautions") or []
        if not isinstance(remove, list) or not all(isinstance(c, str) for c in remove):
            self.problem("removePrecautions", "The precautions to remove could not be read.")
        else:
            present = {x.code for x in p.precautions}
            for i, code in enumerate(remove):
                if code not in present:
                    self.problem(f"removePrecautions[{i}]", f"{code!r} is not a precaution of this plan.")
                    continue
                pc = next(x for x in p.precautions if x.code == code)
                name = _precaution_name(code)
                self.guarded(f"precautions.{code}", f"Removing the {name.lower()} precaution ({rule_title(pc.rule)}) "
                             f"needs a reason.", f"{name.lower()} precaution removed ({rule_title(pc.rule)})",
                             f"removePrecautions[{i}]")
            precautions = tuple(x for x in p.precautions if x.code not in set(remove))
        notes = p.notes
        if "notes" in edits:
            text = edits["notes"]
            if not isinstance(text, str):
                self.problem("notes", "The note must be text.")
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
            progression_step_weeks=2 if lim.slow else 1,
            progression=progression_for(setting, components, targets, slow=lim.slow,
                                        days=len(p.preferences.days_available) if p.preferences else None,
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
