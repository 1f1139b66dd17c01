"""PatientSnapshot + now (+ preferences) -> Prescription: combine the fired rules into one explained plan.

Combination is deliberately simple so a clinician can follow it: the most restrictive setting wins, the
lowest intensity/resistance cap wins, the smallest starting-volume factor wins, activities ruled out by any
precaution are removed, and every decision is a Reason in the rationale naming the data point and the rule.
Preferences then shape the plan within those limits; when one is set aside, the rationale says so and why.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Iterable

from service.canonical import CS_PRECAUTION
from service.clinical.model import (
    SETTING_ORDER,
    Clearance,
    Component,
    Intensity,
    MissingData,
    PatientSnapshot,
    Precaution,
    Preferences,
    Prescription,
    Reason,
    Setting,
    Target,
)
from service.clinical.limits import Limits
from service.clinical.rules import (
    EVS_TARGET,
    LEVELS,
    RULES_BY_ID,
    RULESET_VERSION,
    Facts,
    Hit,
    Level,
    fire,
)
from service.clinical.snapshot import as_utc
from service.terminology import get_terminology

# ------------------------------------------------------------------------------------------------ scales
RPE_SCALE = "Borg RPE 6-20"
RPE_BANDS: dict[Level, tuple[float, float]] = {"light": (9, 11), "moderate": (12, 13), "vigorous": (14, 16)}
HRR_BANDS: dict[Level, tuple[int, int]] = {"light": (30, 39), "moderate": (40, 59), "vigorous": (60, 89)}

# Activity catalogue: component type and the safety tags precautions can rule out.
ACTIVITIES: dict[str, tuple[str, frozenset[str]]] = {
    "walking": ("aerobic", frozenset()),
    "nordic walking": ("aerobic", frozenset()),
    "stationary cycling": ("aerobic", frozenset()),
    "recumbent cycling": ("aerobic", frozenset()),
    "cycling": ("aerobic", frozenset({"balance-demanding", "seizure-risk"})),
    "swimming": ("aerobic", frozenset({"water", "public-facility", "seizure-risk"})),
    "aqua aerobics": ("aerobic", frozenset({"water", "public-facility", "seizure-risk"})),
    "elliptical": ("aerobic", frozenset()),
    "dancing": ("aerobic", frozenset({"balance-demanding"})),
    "jogging": ("aerobic", frozenset({"high-impact", "running"})),
    "running": ("aerobic", frozenset({"high-impact", "running"})),
    "team sports": ("aerobic", frozenset({"high-impact", "contact", "public-facility"})),
    "football": ("aerobic", frozenset({"high-impact", "contact"})),
    "rugby": ("aerobic", frozenset({"high-impact", "contact"})),
    "basketball": ("aerobic", frozenset({"high-impact", "contact"})),
    "martial arts": ("aerobic", frozenset({"high-impact", "contact"})),
    "boxing": ("aerobic", frozenset({"high-impact", "contact"})),
    "tennis": ("aerobic", frozenset({"high-impact"})),
    "climbing": ("resistance", frozenset({"seizure-risk", "heavy-lifting", "balance-demanding"})),
    "hiking": ("aerobic", frozenset({"balance-demanding"})),
    "golf": ("aerobic", frozenset()),
    "rowing machine": ("aerobic", frozenset({"spinal-loading"})),
    "gym classes": ("aerobic", frozenset({"public-facility"})),
    "resistance bands": ("resistance", frozenset()),
    "bodyweight exercises": ("resistance", frozenset()),
    "chair-based strength exercises": ("resistance", frozenset()),
    "dumbbells": ("resistance", frozenset()),
    "weight machines": ("resistance", frozenset({"public-facility", "heavy-lifting"})),
    "free weights": ("resistance", frozenset({"heavy-lifting"})),
    "yoga": ("flexibility", frozenset({"spinal-loading"})),
    "chair yoga": ("flexibility", frozenset()),
    "gentle stretching": ("flexibility", frozenset()),
    "pilates": ("flexibility", frozenset({"spinal-loading"})),
    "tai chi": ("balance", frozenset()),
    "supported standing balance exercises": ("balance", frozenset()),
}
ALIASES = {"walk": "walking", "bike": "cycling", "biking": "cycling", "bicycle": "cycling",
           "exercise bike": "stationary cycling", "stationary bike": "stationary cycling", "swim": "swimming",
           "tai-chi": "tai chi", "taichi": "tai chi", "weights": "free weights", "bands": "resistance bands",
           "stretching": "gentle stretching", "dance": "dancing", "jog": "jogging", "run": "running",
           "gym": "weight machines", "soccer": "football", "karate": "martial arts", "judo": "martial arts",
           "rock climbing": "climbing", "bouldering": "climbing", "rowing": "rowing machine"}
EQUIPMENT_ACTIVITY = {"resistance bands": "resistance bands", "bands": "resistance bands",
                      "dumbbells": "dumbbells", "weights": "dumbbells", "free weights": "dumbbells",
                      "stationary bike": "stationary cycling", "exercise bike": "stationary cycling",
                      "bicycle": "cycling", "bike": "cycling", "treadmill": "walking", "elliptical": "elliptical"}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Long-term aerobic goal: the guideline's 150 min/week, or what the patient already does (up to 300).
AEROBIC_TARGET_MIN, AEROBIC_TARGET_MAX = int(EVS_TARGET), 300
STRENGTH_TARGET_DAYS = 2
# Children and adolescents (WHO 2020): an average of 60 min/day, muscle and bone strengthening 3 days/week.
PAEDIATRIC_AEROBIC_TARGET, PAEDIATRIC_STRENGTH_DAYS = 420, 3
MAX_SESSION_MINUTES = 60

# What the patient is told when a precaution rules out a kind of activity (activity tag -> handout text).
AVOID_TEXT = {
    "water": "No swimming or water exercise for now",
    "public-facility": "Avoid public gyms, swimming pools and group classes for now (infection risk)",
    "high-impact": "Avoid jumping, running and other high-impact activities",
    "running": "No running or jogging",
    "contact": "Avoid contact sports",
    "balance-demanding": "Avoid activities where you could lose your balance (outdoor cycling, dancing)",
    "spinal-loading": "Avoid loaded bending or twisting of the spine (sit-ups, heavy yoga or pilates poses)",
    "heavy-lifting": "No heavy lifting",
    "seizure-risk": "No swimming alone, cycling on roads or climbing to heights (seizure risk)",
}

# The latest results sent with every referral (ServiceRequest.supportingInfo): fitness, heart, function, blood
# counts and current activity, so the exercise service sees the data behind the plan with dates and values.
DATA_BEHIND = ("ecog", "karnofsky", "six-minute-walk", "sit-to-stand", "tug", "grip-right", "grip-left", "resting-hr",
               "bp-systolic", "hemoglobin", "platelets", "anc", "evs-minutes-per-week")

UNREADABLE_ADVICE = {
    "defer": "Check the result in the record (or repeat the test): exercise is deferred until a clinician clears it.",
    "clearance": "Check the result in the record: clearance is required before exercise starts.",
}

STOP_RULES_BASE = (
    "Stop and rest if you feel dizzy, faint or light-headed.",
    "Stop and call for help for chest pain, pressure or tightness, or a racing or irregular heartbeat.",
    "Stop if you are much more short of breath than expected or cannot speak in short sentences.",
    "Stop and contact your care team for new or worsening bone, back or joint pain.",
    "Do not exercise with a temperature of 38 °C or more, or if you feel unwell with an infection.",
)
STOP_RULES_BY_PRECAUTION = {
    "thrombocytopenia": "Stop and contact your care team for unusual bruising, bleeding or nosebleeds.",
    "lymphedema": "Stop and contact your care team for sudden swelling, heaviness or redness of a limb.",
    "neutropenia": "Contact your care team straight away for a temperature of 38 °C or more or chills.",
    "diabetes": "Stop and take fast-acting sugar if you feel shaky, sweaty or confused (low blood sugar).",
    "anemia": "Stop if you become unusually breathless, pale or your heart pounds.",
    "peripheral-neuropathy": "Stop if you lose your footing or feel new numbness; check your feet after exercise.",
    "recent-surgery": "Stop if the wound becomes painful, red, swollen or starts to leak.",
    "vte": "Stop and get help at once for sudden breathlessness, chest pain or a painful, swollen leg.",
    "anticoagulation": "Contact your care team for unusual bleeding or bruising, or after a fall or a blow to the head.",
    "central-line": "Stop if the skin around your line becomes painful, red or swollen, or the dressing gets wet.",
    "seizure-risk": "Exercise with someone nearby; stop and sit down if you feel a warning sign of a seizure.",
    "low-oxygen": "Stop if your lips turn blue or you cannot get your breath back within a few minutes of rest.",
    "spinal-cord-compression": "Call at once for new back pain with leg weakness, numbness, or bladder or bowel changes.",
    "pathological-fracture": "Stop and contact your care team for new or worse bone pain.",
    "pregnancy": "Stop and contact your midwife or doctor for bleeding, fluid loss, contractions or dizziness.",
    "hypercalcaemia": "Stop and contact your care team if you feel very thirsty, confused, sick or unusually tired.",
    "ostomy": "Stop if the area around your stoma bulges, hurts or changes colour.",
    "stem-cell-transplant": "Contact the transplant team at once for a temperature of 38 °C or more, a new rash or diarrhoea.",
}


def _round5(x: float) -> int:
    return max(5, int(5 * round(x / 5)))


def _intensity(level: Level, plan: Limits, snapshot: PatientSnapshot, hrr: bool) -> Intensity:
    low, high = RPE_BANDS[level]
    if hrr and not plan.rpe_only:
        hl, hh = HRR_BANDS[level]
        return Intensity(level, RPE_SCALE, low, high, hl, hh)
    return Intensity(level, RPE_SCALE, low, high)


def _hr_targets(level: Level, snapshot: PatientSnapshot) -> str | None:
    lo_pct, hi_pct = HRR_BANDS[level]
    bpm = _karvonen(snapshot, lo_pct, hi_pct)
    if bpm is None:
        return None
    return (f"Target heart rate {bpm[0]}-{bpm[1]} beats/min ({lo_pct}-{hi_pct}% of heart-rate reserve; RPE takes "
            "precedence).")


def target_heart_rate(intensity: Intensity, snapshot: PatientSnapshot) -> tuple[int, int] | None:
    """The intensity's heart-rate-reserve band in beats/min for this patient (Karvonen), for structured targets;
    None when the intensity has no HRR band or the resting heart rate or age is unknown."""
    if intensity.hrr_low_pct is None or intensity.hrr_high_pct is None:
        return None
    return _karvonen(snapshot, intensity.hrr_low_pct, intensity.hrr_high_pct)


def _karvonen(snapshot: PatientSnapshot, lo_pct: float, hi_pct: float) -> tuple[int, int] | None:
    rest = snapshot.latest.get("resting-hr")
    age = snapshot.age
    if rest is None or age is None:
        return None
    reserve = 220 - age - rest.value
    return round(rest.value + reserve * lo_pct / 100), round(rest.value + reserve * hi_pct / 100)


def _allowed(activity: str, plan: Limits) -> str | None:
    """None when allowed, else the rule id that rules it out."""
    return plan.blocker(ACTIVITIES[activity][1])


def normalise_activity(name: str) -> str | None:
    key = " ".join(name.strip().lower().replace("_", " ").split())
    key = ALIASES.get(key, key)
    return key if key in ACTIVITIES else None


def _reason(rule_id: str, finding: str, effect: str, refs: Iterable[str] = ()) -> Reason:
    rule = RULES_BY_ID[rule_id]
    return Reason(rule_id, finding, effect, rule.citation, tuple(refs))


def _not_eligible(snapshot: PatientSnapshot, now: datetime, hit: Hit, prefs: Preferences | None) -> Prescription:
    rule = RULES_BY_ID["ELIG-CANCER"]
    reason = Reason(rule.id, hit.finding, rule.effect_text, rule.citation, hit.refs)
    return Prescription(
        eligible=False, setting="home-based", clearance_required=False, components=(), precautions=(),
        missing_data=(), rationale=(reason,), progression=(),
        stop_rules=(), red_flags=(), ruleset_version=RULESET_VERSION, generated_at=now,
        patient_ref=snapshot.patient_ref, preferences=prefs,
        notes=("Not eligible for an oncology exercise prescription: general physical activity advice applies "
               "(150 minutes a week, strength twice a week).",),
    )


def prescribe(snapshot: PatientSnapshot, now: datetime, preferences: Preferences | None = None,
              clearance: Clearance | None = None) -> Prescription:
    """The exercise prescription for `snapshot` at `now`; pure and deterministic. Under a `clearance` the red
    flags it names start the plan supervised instead of deferring it (see `service.clinical.clearance`)."""
    now = as_utc(now)
    fired = fire(snapshot, now)
    ineligible = next((h for r, h in fired if r.effect.ineligible), None)
    if ineligible is not None:
        return _not_eligible(snapshot, now, ineligible, preferences)

    term = get_terminology()
    plan = Limits()
    rationale: list[Reason] = []
    red_flags: list[Reason] = []
    precautions: dict[str, Precaution] = {}
    missing: list[MissingData] = []
    supporting: list[str] = []
    cleared = set(clearance.rules) if clearance is not None else set()
    for rule, hit in fired:
        e = rule.effect
        is_cleared = e.red_flag and rule.id in cleared
        plan.add(rule, cleared=is_cleared)
        effect = cleared_text(clearance) if is_cleared and clearance is not None else rule.effect_text
        reason = Reason(rule.id, hit.finding, effect, rule.citation, hit.refs)
        rationale.append(reason)
        if e.red_flag and not is_cleared:
            red_flags.append(reason)
        if e.precaution and e.precaution not in precautions:
            text = term.definition(CS_PRECAUTION, e.precaution) or e.precaution
            precautions[e.precaution] = Precaution(e.precaution, text, rule.id, rule.citation)
        if e.missing and not any(m.measure == e.missing[0] and m.recommendation == e.missing[1] for m in missing):
            missing.append(MissingData(e.missing[0], hit.finding, e.missing[1]))
        for ref in hit.refs:
            if ref not in supporting:
                supporting.append(ref)

    for measure in DATA_BEHIND:  # the results an exercise professional checks first, whether or not a rule fired
        m = snapshot.latest.get(measure)
        if m is not None and m.ref not in supporting:
            supporting.append(m.ref)
    # Present-but-unreadable results come first: each is named with its resource so a clinician can find it.
    missing = [MissingData(u.measure, f"{u.what} result present but unreadable ({u.ref}): {u.problem}",
                           UNREADABLE_ADVICE[u.requires], u.ref) for u in snapshot.unreadable] + missing
    prefs = preferences or Preferences()
    setting = _triage(plan, prefs, rationale)
    needs_clearance = plan.clearance or setting == "defer"
    components: tuple[Component, ...] = ()
    if setting != "defer":
        components = _components(plan, snapshot, now, prefs, rationale)
    notes = list(plan.notes) + _avoid_notes(plan)
    if setting == "defer":
        notes = ["Structured exercise is deferred until a clinician has reviewed the red flags."] + [
            f"Until cleared: {t}" for t in plan.until_cleared] + ["Avoid long periods of sitting or lying down."]

    stop_rules = list(STOP_RULES_BASE)
    for code in precautions:
        if code in STOP_RULES_BY_PRECAUTION:
            stop_rules.append(STOP_RULES_BY_PRECAUTION[code])

    cancer_refs = tuple(dict.fromkeys(f.ref for f in (*snapshot.cancers, *snapshot.metastases,
                                                      *snapshot.regional_nodes, *snapshot.cancer_history)))
    current = Facts(snapshot, now).evs_minutes()
    if any(r.id == "PAEDIATRIC" for r, _ in fired):
        targets = targets_for(components, PAEDIATRIC_AEROBIC_TARGET, PAEDIATRIC_STRENGTH_DAYS)
    else:
        targets = targets_for(components, aerobic_floor(current[0] if current else None))
    return Prescription(
        eligible=True,
        setting=setting,
        clearance_required=needs_clearance,
        components=components,
        precautions=tuple(precautions.values()),
        missing_data=tuple(missing),
        rationale=tuple(rationale),
        progression_step_weeks=2 if plan.slow else 1,
        progression=progression_for(setting, components, targets, slow=plan.slow, days=len(prefs.days_available),
                                    resistance_cap=plan.resistance, max_intensity=plan.max_intensity),
        stop_rules=tuple(stop_rules),
        red_flags=tuple(red_flags),
        ruleset_version=RULESET_VERSION,
        generated_at=now,
        patient_ref=snapshot.patient_ref,
        cancer_refs=cancer_refs,
        supporting_refs=tuple(r for r in supporting if r not in cancer_refs),
        preferences=preferences,
        notes=tuple(notes),
        targets=targets,
        to_resolve=tuple(dict.fromkeys(r.effect.resolve for r, _ in fired
                                       if r.effect.red_flag and r.effect.resolve and r.id not in cleared))
        if setting == "defer" else (),
        clearance=clearance if cleared & {r.id for r, _ in fired} else None,
    )


def cleared_text(clearance: Clearance) -> str:
    """What a cleared red flag now does, in the rationale: who cleared it and when."""
    who = clearance.by_display or clearance.by
    return f"cleared by {who} on {clearance.at.date().isoformat()}: start supervised ({clearance.note})"


def _avoid_notes(plan: Limits) -> list[str]:
    """One plain-language line per kind of activity a precaution rules out, naming why (for the handout)."""
    blocked = dict(plan.avoid)
    if plan.no_public:
        blocked.setdefault("public-facility", plan.no_public)
    out: list[str] = []
    for tag, rule_id in sorted(blocked.items()):
        text = AVOID_TEXT.get(tag)
        if text:
            line = f"{text} ({RULES_BY_ID[rule_id].title.lower()})."
            if line not in out:
                out.append(line)
    return out


def aerobic_floor(current_minutes: float | None) -> int:
    """The aerobic goal in min/week: 150, or the patient's current activity when higher (at most 300)."""
    if current_minutes is None:
        return AEROBIC_TARGET_MIN
    return int(min(AEROBIC_TARGET_MAX, max(AEROBIC_TARGET_MIN, _round5(current_minutes))))


def targets_for(components: tuple[Component, ...], aerobic_goal: int,
                strength_goal: int = STRENGTH_TARGET_DAYS) -> tuple[Target, ...]:
    """Long-term goals for the components prescribed; never below the starting dose itself."""
    out: list[Target] = []
    aerobic = sum(c.frequency_per_week * c.minutes_per_session for c in components if c.type == "aerobic")
    if any(c.type == "aerobic" for c in components):
        value = max(aerobic_goal, aerobic)
        verb = "Keep up at least" if aerobic >= value else "Build up to"
        out.append(Target("aerobic-minutes-per-week", value,
                          f"{verb} {value} minutes of aerobic activity per week"))
    strength = max((c.frequency_per_week for c in components if c.type == "resistance"), default=0)
    if strength:
        value = max(strength_goal, strength)
        out.append(Target("strength-days-per-week", value, f"Muscle-strengthening exercise on {value} days per week"))
    return tuple(out)


def _triage(plan: Limits, prefs: Preferences, rationale: list[Reason]) -> Setting:
    setting: Setting = plan.safe_setting()
    why = ", ".join(plan.floor_rules) if plan.floor_rules else "no rule requires more"
    if setting != plan.floor:
        # A professional is needed but public facilities are not safe: a clinical (supervised) setting.
        why += f"; community programme not safe ({plan.no_public}): clinically supervised instead"
    rationale.append(_reason("SETTING-TRIAGE", f"safety floor: {plan.floor} ({why})", f"setting {setting}"))
    wanted = prefs.preferred_setting
    if wanted is None or wanted == setting:
        if wanted is not None:
            rationale.append(_reason("PREF-SETTING", f"patient prefers {wanted}", "preference used"))
        return setting
    if setting == "defer":
        rationale.append(_reason("PREF-SETTING", f"patient prefers {wanted}",
                                 "set aside for safety: exercise deferred pending clearance"))
        return setting
    if wanted == "community" and plan.no_public:
        rationale.append(_reason("PREF-SETTING", f"patient prefers {wanted}",
                                 f"set aside for safety: no public facilities ({plan.no_public})"))
        return setting
    if SETTING_ORDER.index(wanted) < SETTING_ORDER.index(setting):
        rationale.append(_reason("PREF-SETTING", f"patient prefers {wanted}",
                                 f"set aside for safety: {setting} required by {why}"))
        return setting
    if wanted == "defer":
        rationale.append(_reason("PREF-SETTING", f"patient prefers {wanted}",
                                 "not applicable: no red flag; discuss readiness with the patient"))
        return setting
    rationale.append(_reason("PREF-SETTING", f"patient prefers {wanted}", f"preference used ({wanted})"))
    return wanted


def _from_current_activity(plan: Limits, snapshot: PatientSnapshot, now: datetime, frequency: int, minutes: int,
                           rationale: list[Reason]) -> tuple[int, int]:
    """An active patient keeps (and builds on) what they already do instead of restarting as a beginner.

    The starting weekly aerobic volume is the exercise vital sign (at most 300 min/week) scaled by the same
    safety volume factor as the beginner dose (e.g. x0.75 on chemotherapy), when that is more than the
    beginner dose; sessions are spread over 3 days (up to 120 min/week) or 5 days, at most 60 min each.
    """
    current = Facts(snapshot, now).evs_minutes()
    base = frequency * minutes
    if current is None or current[0] <= base:
        return frequency, minutes
    weekly = max(base, min(current[0], AEROBIC_TARGET_MAX) * plan.volume)
    if weekly <= base:
        return frequency, minutes
    new_frequency = 3 if weekly <= 120 else 5
    new_minutes = min(MAX_SESSION_MINUTES, max(10, 5 * math.ceil(weekly / new_frequency / 5)))
    rule = "ACT-MEETS" if current[0] >= EVS_TARGET else "ACT-LOW"
    scaled = f" x{plan.volume:g} for safety" if plan.volume < 1 else ""
    rationale.append(_reason(rule, f"already active: {current[0]:g} min/week ({current[2]})",
                             f"starting dose builds on current activity{scaled}: aerobic {new_frequency}x/week x "
                             f"{new_minutes} min instead of {frequency}x{minutes}", current[1]))
    return new_frequency, new_minutes


def _components(plan: Limits, snapshot: PatientSnapshot, now: datetime, prefs: Preferences,
                rationale: list[Reason]) -> tuple[Component, ...]:
    aerobic_level: Level = "moderate" if LEVELS.index(plan.max_intensity) >= 1 else "light"
    hrr_ok = (snapshot.latest.get("resting-hr") is not None and snapshot.age is not None and not plan.rpe_only
              and aerobic_level != "light")
    minutes = _round5(30 * plan.volume) if plan.volume < 1 else 30
    minutes = max(minutes, 10)
    frequency = 3
    frequency, minutes = _from_current_activity(plan, snapshot, now, frequency, minutes, rationale)

    # Activities per component: defaults, then preferences (kept when allowed, set aside with the rule otherwise).
    defaults: dict[str, list[str]] = {
        "aerobic": ["walking", "stationary cycling"],
        "resistance": ["resistance bands", "bodyweight exercises"],
        "flexibility": ["gentle stretching"],
        "balance": ["supported standing balance exercises", "tai chi"],
    }
    if "balance-demanding" in plan.avoid or "running" in plan.avoid:
        defaults["aerobic"] = ["stationary cycling", "recumbent cycling", "walking"]
    if plan.resistance == "light":
        defaults["resistance"] = ["resistance bands", "chair-based strength exercises"]
    chosen: dict[str, list[str]] = {k: [] for k in defaults}
    if prefs.activities:
        used, aside, unknown = [], [], []
        for raw in prefs.activities:
            act = normalise_activity(raw)
            if act is None:
                unknown.append(raw)
                continue
            blocker = _allowed(act, plan)
            if blocker:
                aside.append(f"{act} ({blocker})")
            else:
                chosen[ACTIVITIES[act][0]].append(act)
                used.append(act)
        if used:
            rationale.append(_reason("PREF-ACTIVITIES", "patient enjoys " + ", ".join(used), "preference used"))
        if aside:
            rationale.append(_reason("PREF-ACTIVITIES", "patient enjoys " + ", ".join(aside),
                                     "set aside for safety: ruled out by the precaution rule named"))
        if unknown:
            rationale.append(_reason("PREF-ACTIVITIES", "not recognised: " + ", ".join(unknown),
                                     "not used: discuss with the patient"))
    if prefs.equipment:
        eq_used = []
        for item in prefs.equipment:
            act = EQUIPMENT_ACTIVITY.get(item.strip().lower())
            if act and not _allowed(act, plan) and act not in chosen[ACTIVITIES[act][0]]:
                chosen[ACTIVITIES[act][0]].append(act)
                eq_used.append(f"{item} -> {act}")
        rationale.append(_reason("PREF-EQUIPMENT", "equipment at home: " + ", ".join(prefs.equipment),
                                 ("activities matched: " + "; ".join(eq_used)) if eq_used else "no change"))
    for kind, acts in defaults.items():
        for act in acts:
            if act not in chosen[kind] and not _allowed(act, plan):
                chosen[kind].append(act)
    if plan.resistance == "light":
        chosen["resistance"] = [a for a in chosen["resistance"] if a not in ("free weights", "weight machines")]

    # Days available limit the frequency; session length rises to keep the weekly volume (max 60 min).
    days = [d for d in DAYS if d in {x.strip().lower()[:3] for x in prefs.days_available}]
    day_note: tuple[str, ...] = ()
    if prefs.days_available:
        n = max(1, len(days))
        if n < frequency:
            weekly = frequency * minutes
            new_minutes = min(60, _round5(weekly / n))
            rationale.append(_reason("PREF-DAYS", f"available {n} day(s): {', '.join(days) or 'none recognised'}",
                                     f"aerobic {n}x/week x {new_minutes} min instead of {frequency}x{minutes}"))
            frequency, minutes = n, new_minutes
        else:
            rationale.append(_reason("PREF-DAYS", f"available on {', '.join(days)}", "sessions planned on those days"))
        day_note = (f"Planned days: {', '.join(days)}.",) if days else ()

    aerobic_notes = list(day_note)
    if hrr_ok and (t := _hr_targets(aerobic_level, snapshot)):
        aerobic_notes.append(t)
    comps = [Component("aerobic", frequency, minutes, _intensity(aerobic_level, plan, snapshot, hrr_ok),
                       tuple(chosen["aerobic"]), notes=tuple(aerobic_notes))]
    if plan.resistance != "none":
        r_level: Level = "moderate" if plan.resistance == "moderate" and aerobic_level != "light" else "light"
        r_freq = 3 if plan.resistance_emphasis else 2
        r_freq = min(r_freq, frequency) if prefs.days_available else r_freq
        reps = "8-15" if r_level == "moderate" else "10-15"
        r_notes = ["Major muscle groups; slow, controlled movements; breathe out on effort."]
        if plan.resistance_emphasis:
            r_notes.append("Priority component: build leg and grip strength.")
        comps.append(Component("resistance", r_freq, 20, _intensity(r_level, plan, snapshot, False),
                               tuple(chosen["resistance"]), sets=2 if r_level == "moderate" else 1,
                               repetitions=reps, notes=tuple(r_notes)))
    comps.append(Component("flexibility", 3 if not prefs.days_available else min(3, frequency), 10,
                           Intensity("light", RPE_SCALE, 9, 11), tuple(chosen["flexibility"]),
                           notes=("Stretch to mild tension, hold 10-30 s.",)))
    if plan.add_balance:
        comps.append(Component("balance", 3 if not prefs.days_available else min(3, frequency), 10,
                               Intensity("light", RPE_SCALE, 9, 11), tuple(chosen["balance"]),
                               notes=("Next to a stable support (kitchen counter or chair).",)))
    return tuple(comps)


MAX_SESSION_MINUTES = 60  # the longest single session an example week suggests


def example_week(goal: int, days: int | None) -> str:
    """The weekly goal spread over the patient's days (5 when they gave none): "30 minutes on 5 days"; a session
    longer than an hour becomes an hour plus short walks on other days."""
    n = min(max(days or 5, 1), 7)
    minutes = _round5(goal / n)
    if minutes > MAX_SESSION_MINUTES:
        return f"{MAX_SESSION_MINUTES} minutes on {n} day{'s' if n != 1 else ''}, plus short walks on other days"
    return f"{minutes} minutes on {n} day{'s' if n != 1 else ''}"


def progression_for(setting: Setting, components: tuple[Component, ...], targets: tuple[Target, ...], *,
                    slow: bool, resistance_cap: str, max_intensity: str, days: int | None = None) -> tuple[str, ...]:
    """How the plan builds up, from the components actually prescribed (re-run after a clinician's edit)."""
    if setting == "defer":
        return ("Re-assess after clinical review; restart at the lowest level (5-10 minutes of walking).",)
    lines: list[str] = []
    aerobic = next((c for c in components if c.type == "aerobic"), None)
    goal = next((t.value for t in targets if t.measure == "aerobic-minutes-per-week"), AEROBIC_TARGET_MIN)
    if aerobic is not None:
        step = "every 2 weeks" if slow else "every week"
        weekly = aerobic.frequency_per_week * aerobic.minutes_per_session
        intensity = aerobic.intensity
        rpe = (f" (RPE {intensity.low:g}-{intensity.high:g})" if intensity.low is not None
               and intensity.high is not None else "")
        lines.append(f"Weeks 1-2: aerobic {aerobic.frequency_per_week}x/week, {aerobic.minutes_per_session} min at "
                     f"{intensity.label} intensity{rpe}.")
        if weekly >= goal:
            lines.append(f"Then keep at least {goal} min/week; vary the activities and keep the intensity as "
                         "tolerated.")
        else:
            lines.append(f"Then add 5 minutes per session {step} as tolerated, towards {goal} min/week "
                         f"(e.g. {example_week(goal, days)}).")
    if any(c.type == "resistance" for c in components):
        lines.append("Resistance: when 15 repetitions feel easy, add a set or a slightly stronger band/weight"
                     + (" (only within the light-resistance limit)." if resistance_cap == "light" else "."))
    if max_intensity != "vigorous":
        lines.append(f"Keep intensity at {max_intensity} or below while the precautions apply.")
    lines.append("Re-assess function (6-minute walk) and adjust after 8-12 weeks.")
    return tuple(lines)
