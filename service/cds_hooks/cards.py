"""Cards, decided by the clinical core: the referral suggestion, the safety warning, the follow-up, or nothing.

One card at most per call. The card kinds, in priority order:
- `warning`: red flags make exercise unsafe today (fever, severe cytopenias ...): says so and why; no suggestion.
- `incomplete`: fallback reads of safety-relevant data (Observations: labs, temperature) failed or ran out of
  time; a one-click referral would not be safe, so an info card says which data was missing and links to the
  app; no suggestion. (Other gaps are listed on the referral card but do not block it.)
- `follow-up`: an exercise referral is already in place: its status, the Task status and the last exercise
  vital sign (minutes/week) with its trend; a brief, repeated conversation, not a nag.
- `referral`: an oncology patient without a referral: the personalised suggestion with a draft referral
  ServiceRequest to create, a SMART link to review and sign, and override reasons from terminology/.
Patients without an active cancer get no card.

Every card and suggestion carries a fresh uuid; the whole card is pruned of empty values before it leaves.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from service.canonical import SNOMED
from service.clinical.adaptation import Assessment, assess, proposal_text
from service.clinical.facts import fmt_value
from service.clinical.model import Measurement, PatientSnapshot, Prescription, Referral
from service.clinical.programme import FUNCTIONAL as FUNCTIONAL_FOR_FOLLOW_UP  # the tests quoted, first found wins
from service.clinical.programme import changes
from service.fhir.resources import build_draft_referral
from service.terminology import get_terminology, setting_name

from .mdtext import md

SUMMARY_MAX = 139  # the spec: "under 140 characters"
EVS_MEASURE = "evs-minutes-per-week"
GUIDELINE_MINUTES = 150

# The source every card names: the ACSM 2019 roundtable the prescription follows (Campbell et al.).
SOURCE_LABEL = "onco-exercise (ACSM 2019 exercise guidelines for cancer survivors)"
SOURCE_URL = "https://doi.org/10.1249/MSS.0000000000002116"
TOPIC_CODE = "390893007"  # SNOMED CT, member of the exercise-servicerequest-code value set
TOPIC_DISPLAY_FALLBACK = "Referral to physical activity program"


# Referral / Task statuses meaning "a referral is in place" (anything else: suggest a new one).
REFERRAL_IN_PLACE = frozenset({"draft", "active", "on-hold", "completed"})
TASK_ENDED = frozenset({"rejected", "cancelled", "failed", "entered-in-error"})


@dataclass
class CardPlan:
    """The card to show (or None), its kind, and the fingerprint used to suppress repeats."""

    kind: str
    card: dict[str, Any] | None
    fingerprint: str = ""
    suggestion_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class CardContext:
    """What the card builder needs besides the clinical result."""

    service_id: str
    public_url: str
    exercise_service_ref: str
    user_ref: str | None
    hook_instance: str
    encounter_id: str | None = None


# -- helpers ------------------------------------------------------------------------------------------------


def prune(value: Any) -> Any:
    """Drop None, empty strings, empty lists and empty objects, recursively (the spec forbids them).

    One function, the common leaves (strings, numbers) settled inline: the card and its draft resource are
    pruned on every hook call."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if type(v) is str:
                if v:
                    out[k] = v
            elif v is not None and (v := _pruned(v)) is not _EMPTY:
                out[k] = v
        return out
    if isinstance(value, list):
        kept = []
        for v in value:
            if type(v) is str:
                if v:
                    kept.append(v)
            elif v is not None and (v := _pruned(v)) is not _EMPTY:
                kept.append(v)
        return kept
    return value


_EMPTY = object()


def _pruned(v: Any) -> Any:
    """prune(v) for a value that is not a plain string or None, or _EMPTY when what is left is empty."""
    if isinstance(v, (dict, list)):
        v = prune(v)
        return v if v else _EMPTY
    if type(v) in (int, float, bool):
        return v
    return _EMPTY if v == "" or v == [] or v == {} else v


def shorten(text: str, limit: int = SUMMARY_MAX) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip(" ,;:") + "…"


def _fp(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:32]


def _num(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:g}"


def _plural(n: int, word: str) -> str:
    if n == 0:
        return f"no {word}s"
    return f"{n} {word}" + ("" if n == 1 else "s")


@lru_cache(maxsize=1)
def override_reasons() -> tuple[dict[str, str], ...]:
    """The override-reason Codings (with display), from terminology/ (the override-reason value set)."""
    term = get_terminology()
    return tuple({"system": s, "code": c, "display": term.display(s, c) or c}
                 for s, c in term.codes("override-reason"))


@lru_cache(maxsize=1)
def topic() -> dict[str, str]:
    display = get_terminology().display(SNOMED, TOPIC_CODE) or TOPIC_DISPLAY_FALLBACK
    return {"system": SNOMED, "code": TOPIC_CODE, "display": display}


def _source() -> dict[str, Any]:
    return {"label": SOURCE_LABEL, "url": SOURCE_URL, "topic": topic()}


def _smart_link(ctx: CardContext, card_uuid: str, kind: str, label: str, extra: dict[str, Any]) -> dict[str, Any]:
    app_context = {"cardUuid": card_uuid, "serviceId": ctx.service_id, "kind": kind,
                   "hookInstance": ctx.hook_instance, "encounterId": ctx.encounter_id, **extra}
    app_context = {k: v for k, v in app_context.items() if v not in (None, "")}
    return {"label": label, "url": f"{ctx.public_url}/smart/launch", "type": "smart",
            "appContext": json.dumps(app_context, separators=(",", ":"))}


def _practitioner(user_ref: str | None) -> str | None:
    if user_ref and user_ref.split("/", 1)[0] in ("Practitioner", "PractitionerRole"):
        return user_ref
    return None


# -- referral state -----------------------------------------------------------------------------------------


def referral_in_place(snapshot: PatientSnapshot) -> Referral | None:
    """The most recent referral that is still running (or recently completed), or None."""
    live = [r for r in snapshot.referrals
            if r.status in REFERRAL_IN_PLACE and (r.task_status or "") not in TASK_ENDED]
    if not live:
        return None
    # The referral (with its fulfil Task) beats the patient's own prescription requests; then the newest.
    return max(live, key=lambda r: (r.task_status is not None, r.authored is not None,
                                    r.authored.timestamp() if r.authored else 0.0))


def evs_trend(snapshot: PatientSnapshot) -> tuple[Measurement | None, str | None]:
    """The last exercise vital sign (minutes/week) and its trend against the previous value."""
    last = snapshot.latest.get(EVS_MEASURE)
    hist = sorted(snapshot.history.get(EVS_MEASURE, ()), key=lambda m: m.effective)
    if last is None and hist:
        last = hist[-1]
    if last is None:
        return None, None
    earlier = [m for m in hist if m.effective < last.effective]
    if not earlier:
        return last, None
    prev = earlier[-1]
    if last.value > prev.value:
        return last, f"up from {_num(prev.value)}"
    if last.value < prev.value:
        return last, f"down from {_num(prev.value)}"
    return last, "unchanged"


# -- the cards ----------------------------------------------------------------------------------------------


def md_line(markup: str, text: str) -> str:
    """Our markdown `markup` followed by `text` made inert."""
    return markup + md(text)


def _component_line(c: Any) -> str:
    i = c.intensity
    scale = ""
    if i.low is not None and i.high is not None:
        scale = f" ({i.scale}: {_num(i.low)}-{_num(i.high)})"
    elif i.scale:
        scale = f" ({i.scale})"
    sets = f", {_plural(c.sets, 'set')}" if c.sets else ""
    reps = f" of {c.repetitions}" if c.repetitions and c.sets else ""
    return md_line(f"- **{c.type.capitalize()}**: ", f"{c.frequency_per_week}×/week, {c.minutes_per_session} min, "
                   f"{i.label}{scale}{sets}{reps}")


def _card(ctx: CardContext, kind: str, indicator: str, summary: str, lines: list[str], link_label: str,
          link_extra: dict[str, Any] | None = None, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every card carries: a fresh uuid, the summary cut to 140 characters, the markdown detail, its source
    and the SMART link that opens this card in the app."""
    card_uuid = str(uuid.uuid4())
    return {"uuid": card_uuid, "summary": shorten(summary), "indicator": indicator, "detail": "\n".join(lines),
            "source": source or _source(),
            "links": [_smart_link(ctx, card_uuid, kind, link_label, link_extra or {})]}


def _referral_card(p: Prescription, s: PatientSnapshot, ctx: CardContext, not_read: list[str]) -> CardPlan:
    setting = setting_name(p.setting).lower()
    n = len(p.precautions)
    if p.setting == "defer":
        summary = f"Exercise referral: medical clearance needed first, {_plural(n, 'precaution')}"
    else:
        summary = f"Exercise referral suggested: {setting}, {_plural(n, 'precaution')}"
        if p.clearance_required:
            summary += ", clearance first"
    lines = [f"**Setting:** {md(setting)}" + (" — medical clearance required before starting" if p.clearance_required
                                              else "")]
    if p.components:
        lines += ["", "**Starting plan**"] + [_component_line(c) for c in p.components]
    if p.precautions:
        lines += ["", "**Precautions**"] + [f"- {md(pc.text)}" for pc in p.precautions[:6]]
    reasons = [r for r in p.rationale if r.finding][:4]
    if reasons:
        lines += ["", "**Why**"] + [f"- {md(r.finding)}: {md(r.effect)}" for r in reasons]
    if p.missing_data:
        lines += ["", "**Missing data**"] + [f"- {md(m.text)} — {md(m.recommendation)}" for m in p.missing_data[:5]]
    if not_read:
        lines += ["", "**Not read from the EHR**"] + [f"- {md(m)}" for m in not_read[:8]]
    lines += ["", f"_Review, edit and sign in onco-exercise. Rules {md(p.ruleset_version)}._"]

    card = _card(ctx, "referral", "info", summary, lines, "Review and sign the exercise prescription",
                 {"setting": p.setting, "rulesetVersion": p.ruleset_version})
    card["overrideReasons"] = list(override_reasons())
    sugg_uuid = str(uuid.uuid4())
    requester = _practitioner(ctx.user_ref)
    if p.setting != "defer" and requester:  # a draft order needs a clinician as its requester (PA IG)
        sr = build_draft_referral(p, s, ctx.exercise_service_ref, requester)
        card["suggestions"] = [{
            "label": shorten(f"Create draft exercise referral ({setting})", 80),
            "uuid": sugg_uuid,
            "isRecommended": True,
            "actions": [{
                "type": "create",
                "description": "Draft exercise referral (ServiceRequest, status draft) to the exercise oncology "
                               "service, for review and signing in onco-exercise",
                "resource": sr,
            }],
        }]
        card["selectionBehavior"] = "at-most-one"
    fp = _fp("referral", p.setting, p.clearance_required, sorted(pc.code for pc in p.precautions),
             sorted(m.measure for m in p.missing_data), p.ruleset_version)
    return CardPlan("referral", prune(card), fp, (sugg_uuid,) if "suggestions" in card else ())


PENDING_CLEARANCE = "pending medical clearance"  # the one phrase card, app, handout and inbox use


def _warning_card(p: Prescription, ctx: CardContext, held: Referral | None = None) -> CardPlan:
    first = p.red_flags[0]
    summary = f"Hold exercise today: {first.finding}"
    if len(p.red_flags) > 1:
        summary += f" (+{len(p.red_flags) - 1} more)"
    lines = ["Exercise is not safe today:", ""]
    lines += [f"- **{md(r.finding)}**: {md(r.effect)} _({md(r.source)})_" for r in p.red_flags]
    unreadable = [m for m in p.missing_data if m.source]
    if unreadable:
        lines += ["", "**Results present but unreadable**"] + [f"- {md(m.text)} {md(m.recommendation)}"
                                                              for m in unreadable[:5]]
    if p.to_resolve:
        lines += ["", "**To clear it**"] + [f"- {md(x)}" for x in p.to_resolve]
    if held is not None and held.pending_clearance:
        lines += ["", f"An exercise referral{_sent(held)} is on hold, {PENDING_CLEARANCE}: the exercise service has "
                      "nothing to start until a clinician records the clearance in onco-exercise."]
    else:
        lines += ["", "No exercise referral is suggested while this lasts. Signing the plan in onco-exercise records "
                      f"it {PENDING_CLEARANCE} (nothing for the exercise service yet)."]
    card = _card(ctx, "warning", "warning", summary, lines, "Review in onco-exercise",
                 source={**_source(), "label": "onco-exercise safety rules"})
    fp = _fp("warning", sorted(r.rule for r in p.red_flags), held.ref if held is not None else None)
    return CardPlan("warning", prune(card), fp)


def _sent(ref: Referral) -> str:
    return f" signed {ref.authored.date().isoformat()}" if ref.authored else ""


def _pending_card(ref: Referral, ctx: CardContext) -> CardPlan:
    """The red flags that deferred the referral are gone from the record: ask for the clearance that releases it."""
    summary = f"Exercise referral {PENDING_CLEARANCE}: record the clearance to release it"
    lines = [f"The exercise referral{_sent(ref)} is on hold, {PENDING_CLEARANCE}. The red flags that deferred it are "
             "no longer in the newest results.", "", "**To resolve before clearing**"]
    lines += [f"- {md(x)}" for x in ref.to_resolve]
    lines += ["", "Recording the clearance in onco-exercise (what you reviewed) releases the referral to the exercise "
                  "service."]
    card = _card(ctx, "pending", "info", summary, lines, "Record the clearance in onco-exercise", {"referral": ref.ref})
    return CardPlan("pending", prune(card), _fp("pending", ref.ref, ref.to_resolve))


def functional_change(snapshot: PatientSnapshot, since: datetime | None) -> tuple[Measurement, Measurement | None] | None:
    """The newest functional result (6-minute walk first, then sit-to-stand, TUG, grip) and, when the referral
    date is known, the last one before it: what the programme changed."""
    for key in FUNCTIONAL_FOR_FOLLOW_UP:
        hist = sorted(snapshot.history.get(key, ()), key=lambda m: m.effective)
        if not hist:
            continue
        before = [m for m in hist if since is not None and m.effective < since]
        return hist[-1], (before[-1] if before and before[-1] is not hist[-1] else None)
    return None


def _follow_up_card(ref: Referral, s: PatientSnapshot, ctx: CardContext) -> CardPlan:
    evs, trend = evs_trend(s)
    state = f"Task {ref.task_status}" if ref.task_status else f"referral {ref.status}"
    if ref.status == "draft":
        state = "draft awaiting signature"
    summary = f"Exercise referral: {state}"
    if evs is not None:
        summary += f"; {_num(evs.value)} min/week" + (f" ({trend})" if trend else "")
    else:
        summary += "; no exercise vital sign yet"
    lines = ["An exercise referral is in place. A brief word about how exercise is going helps people keep going.",
             ""]
    home = assess(s, service_on_hold=ref.task_status == "on-hold")
    if home is not None:
        lines += _home_lines(home)
    authored = f", sent {ref.authored.date().isoformat()}" if ref.authored else ""
    lines.append(f"- **Referral**: {md(ref.status)}{authored}")
    if ref.task_status:
        service = f"- **Exercise service**: Task {md(ref.task_status)}"
        if ref.task_business:
            service += f" — {md(_clip(ref.task_business))}"
        if ref.task_updated:
            service += f" (updated {ref.task_updated.date().isoformat()})"
        lines.append(service)
    if ref.task_reason:
        lines.append(f"- **Reason given**: {md(_clip(ref.task_reason))}")
    if ref.task_note:
        lines.append(f"- **Latest report from the service**: {md(_clip(ref.task_note))}")
    # the programme's before -> after lines (below) already say it; otherwise the newest test on its own
    change = None if changes(s, ref.authored) else functional_change(s, ref.authored)
    if change is not None:
        last, before = change
        text = f"{md(_label(last.measure))} {md(fmt_value(last))} on {last.effective.date().isoformat()}"
        if before is not None:
            text += f" (before the referral: {md(fmt_value(before))} on {before.effective.date().isoformat()})"
        lines.append(f"- **Latest functional test**: {text}")
    lines += programme_lines(ref, s)
    if evs is not None:
        gap = "meets" if evs.value >= GUIDELINE_MINUTES else "below"
        lines.append(f"- **Exercise vital sign**: {_num(evs.value)} min/week on {evs.effective.date().isoformat()}"
                     + (f", {trend}" if trend else "") + f" ({gap} the {GUIDELINE_MINUTES} min/week guideline)")
    else:
        lines.append("- **Exercise vital sign**: not recorded — ask about minutes of moderate activity per week")
    card = _card(ctx, "follow-up", "info", summary, lines, "Open the exercise plan in onco-exercise",
                 {"referral": ref.ref})
    fp = _fp("follow-up", ref.ref, ref.status, ref.task_status, ref.task_business, ref.task_note,
             (evs.value, evs.effective.isoformat()) if evs else None,
             (change[0].ref, change[0].value) if change else None, programme_lines(ref, s),
             home.fingerprint() if home else None)
    return CardPlan("follow-up", prune(card), fp)


def _what(text: str) -> str:
    """"Patient reports chest pain or pressure." -> "chest pain or pressure" (the card names the patient once)."""
    t = text.strip().rstrip(".")
    return t[len("Patient reports "):] if t.startswith("Patient reports ") else t


def _home_lines(a: Assessment) -> list[str]:
    """How it is going at home (the companion's logs and a wearable's minutes) and the proposed next step."""
    out = [f"- **At home**: {md(a.line)}"]
    if a.step != "none":
        out.append(f"- **Proposed next step**: {md(proposal_text(a))}. {md(a.reason)} `{a.rule}` — sign it as a "
                   "revision in onco-exercise")
    else:
        out.append(f"- **Next step**: {md(a.reason)} `{a.rule}`")
    return out


def programme_lines(ref: Referral, s: PatientSnapshot) -> list[str]:
    """What the exercise service reported back: attendance, each measure before -> after, its report."""
    from service.clinical.programme import attendance

    lines = []
    att = attendance(s, ref.authored)
    if att is not None:
        of = f" of {_num(att.offered)}" if att.offered is not None else ""
        lines.append(f"- **Attendance**: {_num(att.attended)}{of} sessions (reported "
                     f"{att.when.date().isoformat()})")
    for c in changes(s, ref.authored):
        lines.append(f"- **{md(_label(c.measure))}**: {md(fmt_value(c.before))} → {md(fmt_value(c.after))} "
                     f"({c.before.effective.date().isoformat()} → {c.after.effective.date().isoformat()})")
    if ref.task_report:
        lines.append(f"- **Programme report**: {md(ref.task_report.split('/_history')[0])}")
    return lines


def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(measure: str) -> str:
    try:
        return get_terminology().measure(measure).display
    except KeyError:
        return measure


def _incomplete_card(ctx: CardContext, missing: list[str], budget: float) -> CardPlan:
    summary = "Exercise referral: data incomplete, review in onco-exercise"
    lines = [f"Some patient data could not be read from the EHR (within {budget:g} s, or the server refused it), "
             "so no one-click referral is offered: a missing lab could hide a reason not to exercise today.", "",
             "**Not read**"]
    lines += [f"- {md(m)}" for m in missing[:8]]
    card = _card(ctx, "incomplete", "info", summary, lines, "Review in onco-exercise")
    return CardPlan("incomplete", prune(card), _fp("incomplete", sorted(missing)))


def quiet_card(ctx: CardContext, shown: dict[str, Any] | None) -> dict[str, Any]:
    """When the suggestion was already shown (or dismissed), patient-view still offers the app: one short info
    card with the SMART link, no suggestion, saying when and what happened - a door, not a nag."""
    when = _day(shown.get("outcomeAt") or shown.get("shownAt")) if shown else None
    outcome, reason = (shown or {}).get("outcome"), (shown or {}).get("reason")
    if outcome == "overridden":
        label = next((c["display"] for c in override_reasons() if c["code"] == reason), None)
        summary = "Exercise referral dismissed" + (f" on {when}" if when else "") + (f" ({label})" if label else "")
        line = "The exercise referral suggestion was dismissed; if things have changed, the plan is one click away."
    elif outcome == "accepted":
        summary = "Exercise referral accepted" + (f" on {when}" if when else "") + ": open the plan"
        line = "The draft referral was accepted from the card; review and sign it in onco-exercise."
    else:
        summary = "Exercise plan available" + (f" (suggested {when})" if when else "")
        line = "An exercise referral was suggested for this patient recently; the plan is one click away."
    return prune(_card(ctx, "reminder", "info", summary, [md(line)], "Open the exercise plan in onco-exercise"))


def _day(ts: Any) -> str | None:
    if not isinstance(ts, (int, float)):
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%d %b %Y")


def decide(prescription: Prescription | None, snapshot: PatientSnapshot, ctx: CardContext, *,
           complete: bool = True, missing: list[str] | None = None, budget: float = 0.0) -> CardPlan:
    """At most one card for this patient now (see the module docstring for the order); whatever it is, it leads
    with what the patient reported through the companion (open Flags)."""
    if prescription is None or not prescription.eligible:
        return CardPlan("none", None)
    return with_patient_reports(_decide(prescription, snapshot, ctx, complete, missing, budget), snapshot)


def _decide(prescription: Prescription, snapshot: PatientSnapshot, ctx: CardContext, complete: bool,
            missing: list[str] | None, budget: float) -> CardPlan:
    ref = referral_in_place(snapshot)
    if prescription.red_flags:
        return _warning_card(prescription, ctx, ref)
    if not complete:
        return _incomplete_card(ctx, missing or [], budget)
    if ref is not None:
        return _pending_card(ref, ctx) if ref.pending_clearance else _follow_up_card(ref, snapshot, ctx)
    return _referral_card(prescription, snapshot, ctx, missing or [])


REPORTS_SHOWN = 3


def with_patient_reports(plan: CardPlan, s: PatientSnapshot) -> CardPlan:
    """The card led by the patient's open reports (most urgent first; the rest counted), as a warning; its
    fingerprint names them, so a new report shows the card again."""
    alerts = s.patient_alerts
    if not alerts or plan.card is None:
        return plan
    card = dict(plan.card)
    lines = [f"- **Reported by the patient**: {md(_clip(_what(a.text)))}"
             + (f" ({a.reported.date().isoformat()})" if a.reported else "") + f" `{a.rule}`"
             for a in alerts[:REPORTS_SHOWN]]
    if len(alerts) > REPORTS_SHOWN:
        lines.append(f"- and {len(alerts) - REPORTS_SHOWN} more report(s) from the patient: open the plan")
    card["detail"] = "\n".join(lines + ["", card.get("detail") or ""])
    summary = f"Patient reported {_what(alerts[0].text)}; " + card["summary"][:1].lower() + card["summary"][1:]
    card["summary"] = shorten(summary)
    if card.get("indicator") == "info":
        card["indicator"] = "warning"
    return replace(plan, card=card, fingerprint=_fp(plan.fingerprint, [a.ref for a in alerts]))
