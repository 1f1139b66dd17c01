"""The signed plan in the patient's words, read back from the FHIR server (what the clinician signed is what the
patient sees: the referral's stop rules, this week's phase of each exercise prescription, the Goals).

Pure over the resources read with the patient's token; `plan_view` returns JSON for the page and the API.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from service.clinical.selfreport import EFFORT_WORDS
from service.clinical.snapshot import concept_text
from service.fhir.open_referrals import OpenReferral, open_referrals, our_identifiers

STATE_WORDS = {
    "pending-clearance": "On hold: your doctor needs to check a few things before you start. They will contact you.",
    "draft": "Not sent yet: your care team is still preparing it.",
    "on-hold": "Paused for now. Keep to gentle daily activity, and ask your care team when to start again.",
    "in-progress": "Under way with the exercise service.",
    "sent": "Sent to the exercise service. They will contact you to start.",
}
MODERATE = ("Moderate means you breathe faster and feel warmer, and you can still talk but not sing (about 3-4 "
            "on a 0-10 scale of effort).")


def plan_view(resources: list[dict[str, Any]], today: date, *, care_team_contact: str = "",
              service_name: str = "", service_contact: str = "") -> dict[str, Any]:
    """{"state", "stateText", "thisWeek": [...], "stopRules": [...], "goals": [...], "contacts": [...], ...}; a
    patient without an open referral of ours gets `state: "none"` and what to do instead."""
    ours = [o for o in open_referrals(resources) if o.ours]
    contacts = [c for c in (f"Your care team: {care_team_contact}" if care_team_contact else "",
                            f"{service_name}: {service_contact}" if service_name and service_contact else "") if c]
    base = {"moderate": MODERATE, "efforts": [{"value": k, "label": v[1]} for k, v in EFFORT_WORDS.items()],
            "contacts": contacts}
    if not ours:
        return {**base, "state": "none", "stateText": "There is no exercise plan on your record yet. Ask your care "
                "team about one at your next visit. Until then, gentle daily walking is good for most people.",
                "thisWeek": [], "stopRules": [], "goals": [], "referral": None, "requester": None}
    o = ours[-1]  # the newest
    return {**base, "state": o.state(), "stateText": STATE_WORDS.get(o.state(), ""),
            "referral": o.ref, "requester": (o.referral.get("requester") or {}).get("reference"),
            "thisWeek": [_this_week(sr, today) for sr in _by_code(o) if _covers(sr, today)] or
            [_this_week(sr, today) for sr in _by_code(o)[:1]],
            "stopRules": [ln for ln in _lines(o.referral.get("patientInstruction")) if not ln.endswith(":")],
            "goals": [_plain(g["description"]["text"]) for g in resources if g.get("resourceType") == "Goal"
                      and g.get("lifecycleStatus") in ("active", "on-hold") and our_identifiers(g)
                      and isinstance((g.get("description") or {}).get("text"), str)]}


def weekly_minutes(view: dict[str, Any]) -> int:
    """The minutes this week's sessions add up to (what the companion's progress bar counts towards)."""
    return sum(int(w.get("sessions") or 0) * int(w.get("minutes") or 0) for w in view.get("thisWeek") or ())


def _by_code(o: OpenReferral) -> list[dict[str, Any]]:
    return sorted(o.prescriptions, key=lambda sr: (_text(sr.get("code")), _bounds(sr)[0] or ""))


def _this_week(sr: dict[str, Any], today: date) -> dict[str, Any]:
    rep = ((sr.get("occurrenceTiming") or {}).get("repeat") or {}) if isinstance(sr.get("occurrenceTiming"), dict) \
        else {}
    start, end = _bounds(sr)
    return {"activity": _text(sr.get("code")).split(", phase ")[0], "sessions": rep.get("frequency"),
            "minutes": rep.get("duration") if rep.get("durationUnit") == "min" else None,
            "from": start, "to": end, "how": [_plain(ln) for ln in _lines(sr.get("patientInstruction"))]}


def _covers(sr: dict[str, Any], today: date) -> bool:
    start, end = _bounds(sr)
    day = today.isoformat()
    return (start is None or start[:10] <= day) and (end is None or day <= end[:10])


def _bounds(sr: dict[str, Any]) -> tuple[str | None, str | None]:
    timing = sr.get("occurrenceTiming") if isinstance(sr.get("occurrenceTiming"), dict) else {}
    b = (timing.get("repeat") or {}).get("boundsPeriod") or {}
    return (b.get("start") if isinstance(b.get("start"), str) else None,
            b.get("end") if isinstance(b.get("end"), str) else None)


def _text(cc: Any) -> str:
    return concept_text(cc) or ""


def _plain(line: str) -> str:
    """A prescription line without its clinical scales in brackets ("(Borg RPE 6-20: 12-13; 40-59% heart-rate
    reserve)"): the page explains effort in words once, under "How hard?"."""
    while True:  # innermost brackets first: "(... (RPE takes precedence))"
        plain = re.sub(r"\s*\((?:[^()]*(?:RPE|heart-rate|HRR|1RM|%)[^()]*)\)", "", line)
        if plain == line:
            return plain
        line = plain


def _lines(text: Any) -> list[str]:
    return [ln.strip(" -•") for ln in text.splitlines() if ln.strip(" -•")] if isinstance(text, str) else []
