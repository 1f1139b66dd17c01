"""Prescription <-> the JSON contract (camelCase, as printed by `onco-exercise prescribe`), and a text form.

The JSON form is what the CLI prints, the SMART app's API returns and stores between view and sign, so
`prescription_from_json(prescription_to_json(p)) == p` must hold.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, TypeVar

from service.clinical.model import (
    SETTING_ORDER,
    Clearance,
    Component,
    Intensity,
    MissingData,
    Precaution,
    Preferences,
    Prescription,
    Reason,
    Target,
)
from service.terminology import setting_name

COMPONENT_TYPES = ("aerobic", "resistance", "flexibility", "balance")
DAY_NAMES = {"mon": "mon", "monday": "mon", "tue": "tue", "tues": "tue", "tuesday": "tue", "wed": "wed",
             "wednesday": "wed", "thu": "thu", "thur": "thu", "thurs": "thu", "thursday": "thu", "fri": "fri",
             "friday": "fri", "sat": "sat", "saturday": "sat", "sun": "sun", "sunday": "sun"}


# ------------------------------------------------------------------------------------------------ to JSON


def intensity_to_json(i: Intensity) -> dict[str, Any]:
    d: dict[str, Any] = {"label": i.label, "scale": i.scale, "low": i.low, "high": i.high}
    if i.hrr_low_pct is not None or i.hrr_high_pct is not None:
        d["hrrLowPct"] = i.hrr_low_pct
        d["hrrHighPct"] = i.hrr_high_pct
    return d


def component_to_json(c: Component) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": c.type,
        "frequencyPerWeek": c.frequency_per_week,
        "minutesPerSession": c.minutes_per_session,
        "intensity": intensity_to_json(c.intensity),
        "activities": list(c.activities),
    }
    if c.sets is not None:
        d["sets"] = c.sets
    if c.repetitions is not None:
        d["repetitions"] = c.repetitions
    d["notes"] = list(c.notes)
    return d


def reason_to_json(r: Reason) -> dict[str, Any]:
    return {"rule": r.rule, "finding": r.finding, "effect": r.effect, "source": r.source, "refs": list(r.refs)}


def preferences_to_json(p: Preferences) -> dict[str, Any]:
    return {"preferredSetting": p.preferred_setting, "activities": list(p.activities),
            "daysAvailable": list(p.days_available), "equipment": list(p.equipment)}


def prescription_to_json(p: Prescription, resources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The CLI contract: eligible, setting, clearanceRequired, components, precautions, missingData, rationale..."""
    return {
        "eligible": p.eligible,
        "setting": p.setting,
        "clearanceRequired": p.clearance_required,
        "components": [component_to_json(c) for c in p.components],
        "precautions": [{"code": x.code, "text": x.text, "rule": x.rule, "source": x.source} for x in p.precautions],
        "missingData": [{"measure": m.measure, "text": m.text, "recommendation": m.recommendation,
                         **({"unreadable": True, "source": m.source} if m.source else {})} for m in p.missing_data],
        "rationale": [reason_to_json(r) for r in p.rationale],
        "progression": list(p.progression),
        "progressionStepWeeks": p.progression_step_weeks,
        "stopRules": list(p.stop_rules),
        "redFlags": [reason_to_json(r) for r in p.red_flags],
        "notes": list(p.notes),
        "rulesetVersion": p.ruleset_version,
        "generatedAt": p.generated_at.isoformat(),
        "patientRef": p.patient_ref,
        "cancerRefs": list(p.cancer_refs),
        "supportingRefs": list(p.supporting_refs),
        "preferences": preferences_to_json(p.preferences) if p.preferences is not None else None,
        "targets": [{"measure": t.measure, "value": t.value, "text": t.text} for t in p.targets],
        "toResolve": list(p.to_resolve),
        "clearance": clearance_to_json(p.clearance) if p.clearance is not None else None,
        "resources": list(resources or []),
    }


def clearance_to_json(c: Clearance) -> dict[str, Any]:
    return {"by": c.by, "byDisplay": c.by_display, "at": c.at.isoformat(), "rules": list(c.rules),
            "reviewed": list(c.reviewed), "note": c.note}


# ------------------------------------------------------------------------------------------------ from JSON


def _req(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ValueError(f"{where}: '{key}' is missing")
    v = d[key]
    if not isinstance(v, typ) or (typ in (int, float, (int, float)) and isinstance(v, bool)):
        raise ValueError(f"{where}: '{key}' has the wrong type")
    return v


def _strs(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{where} must be a list of strings")
    return tuple(v)


def _num(v: Any, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where} must be a number")
    return v


T = TypeVar("T")


def intensity_from_json(d: Any, where: str = "intensity") -> Intensity:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object")
    hl, hh = d.get("hrrLowPct"), d.get("hrrHighPct")
    return Intensity(_req(d, "label", str, where), _req(d, "scale", str, where), _num(d.get("low"), f"{where}.low"),
                     _num(d.get("high"), f"{where}.high"), int(hl) if hl is not None else None,
                     int(hh) if hh is not None else None)


def component_from_json(d: Any, where: str = "component") -> Component:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object")
    ctype = _req(d, "type", str, where)
    if ctype not in COMPONENT_TYPES:
        raise ValueError(f"{where}.type must be one of {', '.join(COMPONENT_TYPES)}")
    return Component(
        ctype,  # type: ignore[arg-type]
        _req(d, "frequencyPerWeek", int, where),
        _req(d, "minutesPerSession", int, where),
        intensity_from_json(d.get("intensity"), f"{where}.intensity"),
        _strs(d.get("activities"), f"{where}.activities"),
        d.get("sets"),
        d.get("repetitions"),
        _strs(d.get("notes"), f"{where}.notes"),
    )


def _reason_from_json(d: Any, where: str) -> Reason:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object")
    return Reason(_req(d, "rule", str, where), _req(d, "finding", str, where), _req(d, "effect", str, where),
                  _req(d, "source", str, where), _strs(d.get("refs"), f"{where}.refs"))


def preferences_from_json(d: Any) -> Preferences:
    """Patient preferences ({preferredSetting, activities, daysAvailable, equipment}); ValueError says what is wrong."""
    if not isinstance(d, dict):
        raise ValueError("preferences must be a JSON object")
    known = {"preferredSetting", "activities", "daysAvailable", "equipment"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown preference field(s): {', '.join(unknown)} (expected: {', '.join(sorted(known))})")
    setting = d.get("preferredSetting")
    if setting is not None and setting not in SETTING_ORDER:
        raise ValueError(f"preferredSetting must be one of {', '.join(SETTING_ORDER)}")
    days_raw = _strs(d.get("daysAvailable"), "daysAvailable")
    days = []
    for day in days_raw:
        norm = DAY_NAMES.get(day.strip().lower())
        if norm is None:
            raise ValueError(f"daysAvailable: {day!r} is not a day of the week (mon..sun)")
        if norm not in days:
            days.append(norm)
    return Preferences(setting, _strs(d.get("activities"), "activities"), tuple(days),
                       _strs(d.get("equipment"), "equipment"))


def clearance_from_json(d: Any, where: str = "clearance") -> Clearance:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object")
    try:
        at = datetime.fromisoformat(_req(d, "at", str, where))
    except ValueError:
        raise ValueError(f"{where}.at is not an ISO date-time") from None
    display = d.get("byDisplay")
    return Clearance(by=_req(d, "by", str, where), at=at, rules=_strs(d.get("rules"), f"{where}.rules"),
                     reviewed=_strs(d.get("reviewed"), f"{where}.reviewed"), note=_req(d, "note", str, where),
                     by_display=display if isinstance(display, str) else None)


def prescription_from_json(d: Any) -> Prescription:
    """Inverse of prescription_to_json; ValueError names the first problem."""
    if not isinstance(d, dict):
        raise ValueError("prescription must be a JSON object")
    setting = _req(d, "setting", str, "prescription")
    if setting not in SETTING_ORDER:
        raise ValueError(f"setting must be one of {', '.join(SETTING_ORDER)}")
    try:
        generated = datetime.fromisoformat(_req(d, "generatedAt", str, "prescription"))
    except ValueError:
        raise ValueError("generatedAt is not an ISO date-time") from None

    def objects(key: str, build: Callable[[dict[str, Any], str], T]) -> tuple[T, ...]:
        """Each element of the list `key` (which must be an object) through `build`, told where it stands."""
        values = d.get(key) or []
        if not isinstance(values, list):
            raise ValueError(f"{key} must be a list")
        out = []
        for i, x in enumerate(values):
            where = f"{key}[{i}]"
            if not isinstance(x, dict):
                raise ValueError(f"{where} must be an object")
            out.append(build(x, where))
        return tuple(out)

    prefs = d.get("preferences")
    return Prescription(
        eligible=_req(d, "eligible", bool, "prescription"),
        setting=setting,
        clearance_required=_req(d, "clearanceRequired", bool, "prescription"),
        components=objects("components", component_from_json),
        precautions=objects("precautions", lambda x, w: Precaution(
            _req(x, "code", str, w), _req(x, "text", str, w), _req(x, "rule", str, w), _req(x, "source", str, w))),
        missing_data=objects("missingData", lambda x, w: MissingData(
            _req(x, "measure", str, w), _req(x, "text", str, w), _req(x, "recommendation", str, w),
            _req(x, "source", str, w) if x.get("unreadable") else None)),
        rationale=objects("rationale", _reason_from_json),
        progression=_strs(d.get("progression"), "progression"),
        progression_step_weeks=_step_weeks(d.get("progressionStepWeeks")),
        stop_rules=_strs(d.get("stopRules"), "stopRules"),
        red_flags=objects("redFlags", _reason_from_json),
        ruleset_version=_req(d, "rulesetVersion", str, "prescription"),
        generated_at=generated,
        patient_ref=d.get("patientRef"),
        cancer_refs=_strs(d.get("cancerRefs"), "cancerRefs"),
        to_resolve=_strs(d.get("toResolve"), "toResolve"),
        clearance=clearance_from_json(d["clearance"]) if d.get("clearance") is not None else None,
        supporting_refs=_strs(d.get("supportingRefs"), "supportingRefs"),
        preferences=preferences_from_json(prefs) if prefs is not None else None,
        notes=_strs(d.get("notes"), "notes"),
        targets=objects("targets", lambda x, w: Target(
            _req(x, "measure", str, w), _req(x, "value", int, w), _req(x, "text", str, w))),
    )


# ------------------------------------------------------------------------------------------------ text



def _intensity_text(i: Intensity) -> str:
    text = f"{i.label}"
    if i.low is not None and i.high is not None:
        text += f" ({i.scale} {i.low:g}-{i.high:g}"
        if i.hrr_low_pct is not None:
            text += f"; {i.hrr_low_pct}-{i.hrr_high_pct}% heart-rate reserve"
        text += ")"
    return text


def prescription_to_text(p: Prescription) -> str:
    """A plain-text summary for people (the CLI's --format text)."""
    out: list[str] = []
    if not p.eligible:
        out.append("NOT ELIGIBLE for an oncology exercise prescription.")
        out += [f"  - {r.finding} [{r.rule}]" for r in p.rationale]
        out += [f"  {n}" for n in p.notes]
        return "\n".join(out) + "\n"
    out.append(f"Setting: {setting_name(p.setting)}")
    out.append(f"Medical clearance required: {'yes' if p.clearance_required else 'no'}")
    if p.red_flags:
        out.append("")
        out.append("RED FLAGS:")
        out += [f"  ! {r.finding} [{r.rule}]" for r in p.red_flags]
    if p.components:
        out.append("")
        out.append("Exercise plan:")
        for c in p.components:
            line = (f"  - {c.type}: {c.frequency_per_week}x/week, {c.minutes_per_session} min, "
                    f"intensity {_intensity_text(c.intensity)}")
            if c.sets:
                line += f", {c.sets} set(s) of {c.repetitions} repetitions"
            out.append(line)
            if c.activities:
                out.append(f"      activities: {', '.join(c.activities)}")
            out += [f"      {n}" for n in c.notes]
    if p.notes:
        out.append("")
        out += [f"Note: {n}" for n in p.notes]
    sections = (
        ("Precautions", [f"{x.code}: {x.text} [{x.rule}]" for x in p.precautions]),
        ("Goals", [t.text for t in p.targets]),
        ("Progression", list(p.progression)),
        ("Stop rules", list(p.stop_rules)),
        ("Missing data", [f"{m.text}: {m.recommendation}" for m in p.missing_data]),
    )
    for title, lines in sections:
        if lines:
            out += ["", f"{title}:", *(f"  - {line}" for line in lines)]
    out += ["", "Why:", *(f"  - [{r.rule}] {r.finding} -> {r.effect} ({r.source})" for r in p.rationale)]
    out.append("")
    out.append(f"Ruleset {p.ruleset_version}, generated {p.generated_at.isoformat()}")
    return "\n".join(out) + "\n"


def _step_weeks(value: Any) -> int:
    """progressionStepWeeks: 1 or 2 (absent in prescriptions stored before it existed: 1)."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value not in (1, 2):
        raise ValueError(f"prescription.progressionStepWeeks must be 1 or 2, not {value!r}")
    return value
