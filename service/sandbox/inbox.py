"""The exercise-service inbox at /sandbox/exercise-service/: what an exercise physiologist without their own FHIR
server sees — the fulfil Tasks owned by their organisation, the full referral, and accept / reject / start /
complete, written back to the Task as the HL7 Physical Activity IG describes (pa-task-for-referral-management).

Task rules kept here (the filler's side of the IG workflow):
- requested|received -> accepted | rejected; accepted -> in-progress | rejected; in-progress -> completed;
  accepted|in-progress -> on-hold (with a reason) -> in-progress (resume); anything else is refused with a
  message, nothing written.
- reporting back (service.sandbox.inbox_report): measures and attendance as Observations while the programme
  runs; completing it also writes the programme report (DiagnosticReport) and links it from Task.output.
- pa-taskrm-1: `statusReason` present iff status is rejected/on-hold/cancelled/failed (set on reject, removed
  otherwise); `businessStatus.text` always says where the referral stands; `lastModified` is now;
  `executionPeriod` starts on start and ends on completion/rejection; completion adds an `output` typed
  SDOHCC `resulting-activity` whose valueCodeableConcept.text is the outcome note (and a Task.note).
- Updates are conditional on the version read (`If-Match`), so two people acting at once cannot overwrite each
  other silently.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from service.cds_hooks.models import FHIR_ID_PATTERN as FHIR_ID
from service.fhir.resources import CLINICIAN_NOTE_PREFIX
from service.sandbox.ehr import PageError, _codeable_text, _day, _value, check_csrf, fhir_client, html_errors, page
from service.sandbox.staff import SIGN_IN, STAFF, require_staff, safe_next, sign_in_response, signed_in

router = APIRouter(prefix="/sandbox/exercise-service", include_in_schema=False)

OWNER = "Organization/exercise-oncology-service"
ACTOR = "Practitioner/exercise-physiologist"
ACTOR_NAME = "Jordan Blake"
SDOHCC_TEMP = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
REASON_REQUIRED = {"rejected", "on-hold", "cancelled", "failed"}
MAX_TEXT = 1000

# action -> (allowed from, to, business status, label)
ACTIONS: dict[str, tuple[frozenset[str], str, str, str]] = {
    "accept": (frozenset({"requested", "received"}), "accepted", "Accepted, booking an assessment", "Accept"),
    "reject": (frozenset({"requested", "received", "accepted"}), "rejected", "Referral declined", "Reject"),
    "start": (frozenset({"accepted"}), "in-progress", "Programme under way", "Start programme"),
    "complete": (frozenset({"in-progress"}), "completed", "Programme completed", "Complete"),
    "hold": (frozenset({"accepted", "in-progress"}), "on-hold", "On hold", "Put on hold"),
    "resume": (frozenset({"on-hold"}), "in-progress", "Programme under way again", "Resume"),
}


class TransitionError(ValueError):
    pass


def allowed_actions(status: str) -> list[str]:
    """Actions possible from `status`, the forward step first and reject last."""
    order = ("accept", "start", "resume", "complete", "hold", "reject")
    return [a for a in order if status in ACTIONS[a][0]]


def _now_iso(now: datetime) -> str:
    return now.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def transition(task: dict[str, Any], action: str, text: str | None, now: datetime,
               actor: str = ACTOR) -> dict[str, Any]:
    """The Task after `action` (a new dict); TransitionError (readable) when not allowed or incomplete."""
    if action not in ACTIONS:
        raise TransitionError(f"Unknown action {action!r}.")
    sources, target, business, label = ACTIONS[action]
    status = task.get("status", "")
    if status not in sources:
        can = ", ".join(ACTIONS[a][3].lower() for a in allowed_actions(status)) or "nothing (it is closed)"
        raise TransitionError(f"Cannot {label.lower()} a referral whose task is {status!r}: you can {can}.")
    text = (text or "").strip()[:MAX_TEXT]
    if action == "reject" and not text:
        raise TransitionError("Give a reason for rejecting the referral: the referring clinician sees it.")
    if action == "hold" and not text:
        raise TransitionError("Give a reason for putting the referral on hold: the referring clinician sees it.")
    if action == "complete" and not text:
        raise TransitionError("Add a short outcome note (what the patient did, what changed).")
    when = _now_iso(now)
    out = copy.deepcopy(task)
    meta = out.get("meta")
    if isinstance(meta, dict):  # server-managed elements are not sent back
        meta.pop("versionId", None)
        meta.pop("lastUpdated", None)
        if not meta:
            out.pop("meta")
    out["status"] = target
    out["businessStatus"] = {"text": business}
    out["lastModified"] = when
    if target in REASON_REQUIRED:
        out["statusReason"] = {"text": text}
    else:
        out.pop("statusReason", None)
    period = out.setdefault("executionPeriod", {})
    if action == "start":
        period["start"] = when
    elif action == "resume":
        period.setdefault("start", when)
    elif action in ("complete", "reject"):
        period.setdefault("start", when)
        period["end"] = when
    if not period:
        out.pop("executionPeriod")
    if action == "complete":
        out.setdefault("output", []).append({
            "type": {"coding": [{"system": SDOHCC_TEMP, "code": "resulting-activity",
                                 "display": "Resulting Activity"}]},
            "valueCodeableConcept": {"text": text},
        })
    if action in ("complete", "reject", "hold") or text:
        out.setdefault("note", []).append({"authorReference": {"reference": actor, "display": ACTOR_NAME},
                                           "time": when, "text": f"{label}: {text}" if text else label})
    return out


def taskrm_1_ok(task: dict[str, Any]) -> bool:
    """pa-taskrm-1: statusReason.exists() = (status in rejected | on-hold | cancelled | failed)."""
    return ("statusReason" in task) == (task.get("status") in REASON_REQUIRED)


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


def _rel(ref: str | None, base: str) -> str | None:
    if not ref:
        return None
    if ref.startswith(base + "/"):
        ref = ref[len(base) + 1:]
    parts = ref.split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 and not ref.startswith(("urn:", "#")) else None


async def _read(fhir: httpx.AsyncClient, ref: str | None) -> dict[str, Any] | None:
    if not ref:
        return None
    try:
        r = await fhir.get(ref)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def list_tasks(fhir: httpx.AsyncClient) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Tasks owned by the service (`Task?owner=..&code=fulfill` with `_include`), and the included resources
    by reference; anything the server did not include is read separately."""
    params = [("owner", OWNER), ("code", "fulfill"), ("_include", "Task:focus"), ("_include", "Task:patient"),
              ("_sort", "-authored-on"), ("_count", "100")]
    r = await fhir.get("Task", params=params)
    if r.status_code != 200:
        raise PageError(502, "FHIR server problem", f"The Task search failed (HTTP {r.status_code}).")
    tasks: list[dict[str, Any]] = []
    included: dict[str, dict[str, Any]] = {}
    for e in r.json().get("entry", []):
        res = e.get("resource", {})
        if res.get("resourceType") == "Task" and e.get("search", {}).get("mode", "match") == "match":
            tasks.append(res)
        else:
            included[f"{res.get('resourceType')}/{res.get('id')}"] = res
    base = str(fhir.base_url).rstrip("/")
    missing = {ref for t in tasks for ref in (_rel(t.get("focus", {}).get("reference"), base),
                                              _rel(t.get("for", {}).get("reference"), base))
               if ref and ref not in included}
    for ref, res in zip(missing, await asyncio.gather(*(_read(fhir, m) for m in missing))):
        if res:
            included[ref] = res
    return tasks, included


def _name(res: dict[str, Any] | None) -> str:
    if not res:
        return ""
    if isinstance(res.get("name"), str):
        return res["name"]
    n = (res.get("name") or [{}])[0]
    return " ".join([*n.get("prefix", []), *n.get("given", []), n.get("family", "")]).strip()


def _fitt(sr: dict[str, Any]) -> str:
    """The Timing in words: "3-5× per week, 30-40 min, 29 Jan 2025 – 26 Feb 2025" (ranges of a build-up phase)."""
    rep = (sr.get("occurrenceTiming") or {}).get("repeat") or {}
    bits = []
    if rep.get("frequency"):
        unit = {"d": "day", "wk": "week", "mo": "month"}.get(rep.get("periodUnit", "wk"), rep.get("periodUnit"))
        per = rep.get("period", 1)
        times = _range(rep["frequency"], rep.get("frequencyMax"))
        bits.append(f"{times}× per {unit}" if per == 1 else f"{times}× per {per} {unit}s")
    if rep.get("duration"):
        bits.append(f"{_range(rep['duration'], rep.get('durationMax'))} {rep.get('durationUnit', 'min')}")
    bounds = rep.get("boundsPeriod") or {}
    if bounds.get("start") or bounds.get("end"):
        bits.append(f"{_day(bounds.get('start')) or '…'} – {_day(bounds.get('end')) or '…'}")
    return ", ".join(bits)


def _range(low: Any, high: Any) -> str:
    return f"{low}-{high}" if high not in (None, low) else f"{low}"


COMPARATORS = {">=": "at least", ">": "above", "<=": "at most", "<": "below"}


def goal_targets(goal: dict[str, Any]) -> list[str]:
    """A Goal's targets in words, one per measure, a pair of >=/<= targets read as a range: "Heart rate
    108-123 /min", "Frequency of ... 150 min/week"; with the due date."""
    by_measure: dict[str, list[dict[str, Any]]] = {}
    for t in goal.get("target") or []:
        if isinstance(t, dict) and isinstance(t.get("detailQuantity"), dict):
            by_measure.setdefault(_codeable_text(t.get("measure")) or "Target", []).append(t)
    out = []
    for measure, targets in by_measure.items():
        qs = [t["detailQuantity"] for t in targets]
        unit = qs[0].get("unit") or qs[0].get("code") or ""
        low = next((q.get("value") for q in qs if q.get("comparator") in (">=", ">")), None)
        high = next((q.get("value") for q in qs if q.get("comparator") in ("<=", "<")), None)
        if low is not None and high is not None:
            value = f"{low}-{high}"
        else:
            value = "; ".join(f"{COMPARATORS.get(q.get('comparator'), '')} {q.get('value')}".strip() for q in qs)
        due = next((t.get("dueDate") for t in targets if t.get("dueDate")), None)
        out.append(f"{measure}: {value} {unit}".rstrip() + (f" (by {_day(due)})" if due else ""))
    return out


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request) -> HTMLResponse:
    return page(request, "inbox/sign_in.html", {"staff": STAFF, "next": safe_next(request.query_params.get("next"))})


@router.post("/sign-in")
@html_errors
async def sign_in(request: Request) -> Response:
    form = await check_csrf(request)
    user = form.get("user", "")
    if user not in STAFF:
        raise PageError(400, "Sign-in failed", "Choose one of the listed staff members.", SIGN_IN)
    return sign_in_response(request, user, safe_next(form.get("next")))


def _staff_context(request: Request) -> dict[str, str]:
    name, role = STAFF[signed_in(request) or ""]
    return {"staff_name": name, "staff_role": role}


@router.get("/", response_class=HTMLResponse)
@html_errors
async def inbox(request: Request) -> Response:
    if (login := require_staff(request)) is not None:
        return login
    async with fhir_client(request) as fhir:
        tasks, included = await list_tasks(fhir)
        base = str(fhir.base_url).rstrip("/")
        org = await _read(fhir, OWNER)
    rows = []
    for t in tasks:
        focus = included.get(_rel(t.get("focus", {}).get("reference"), base) or "")
        patient = included.get(_rel(t.get("for", {}).get("reference"), base) or "")
        rows.append({"task": t, "focus": focus, "patient": patient, "patient_name": _name(patient) or
                     t.get("for", {}).get("display", ""), "actions": allowed_actions(t.get("status", ""))})
    open_ = [r for r in rows if r["task"].get("status") in ("requested", "received", "accepted", "in-progress")]
    pending = [r for r in rows if r["task"].get("status") == "draft"]  # signed while deferred: nothing to start
    closed = [r for r in rows if r not in open_ and r not in pending]
    return page(request, "inbox/list.html", {**_staff_context(request), "open": open_, "pending": pending,
                                              "closed": closed, "org": org,
                                              "org_name": _name(org) or "Exercise oncology service",
                                              "notice": request.query_params.get("notice")})


@router.get("/tasks/{tid}", response_class=HTMLResponse)
@html_errors
async def task_detail(request: Request, tid: str = PathParam(pattern=FHIR_ID)) -> Response:
    if (login := require_staff(request)) is not None:
        return login
    async with fhir_client(request) as fhir:
        ctx = await referral_context(fhir, tid)
    from service.sandbox.inbox_report import REPORTING, measure_choices, programme_observations, reported_rows

    async with fhir_client(request) as fhir:
        observations = await programme_observations(fhir, ctx["task"].get("focus", {}).get("reference", ""))
    ctx.update(reported=reported_rows(observations), measures=measure_choices(),
               can_report=ctx["task"].get("status") in REPORTING, today=datetime.now(timezone.utc).date())
    return page(request, "inbox/task.html", {**ctx, **_staff_context(request), "notice": request.query_params.get("notice"),
                                              "error": request.query_params.get("error"),
                                              "actions": allowed_actions(ctx["task"].get("status", "")),
                                              "labels": {a: v[3] for a, v in ACTIONS.items()}})


STOP_HEADINGS = ("Stop and seek advice:", "Stop and seek advice if:")


def stop_rule_list(text: str | None) -> list[str]:
    """The referral's stop rules as a list: one per line (our format), or the older "...if: a; b; c" form."""
    if not text:
        return []
    body = text.strip()
    for heading in STOP_HEADINGS:
        if body.startswith(heading):
            body = body[len(heading):].strip()
            break
    lines = [x.strip().removeprefix("- ").strip() for x in body.splitlines() if x.strip()]
    if len(lines) == 1 and "; " in lines[0]:
        lines = [x.strip() for x in lines[0].split("; ") if x.strip()]
    return lines


def own_instructions(component_text: str | None, referral_text: str | None) -> str:
    """A component's instructions without the stop rules the referral already carries (shown once)."""
    shared = set(stop_rule_list(referral_text))
    keep = []
    for line in (component_text or "").splitlines():
        if line.strip().startswith(STOP_HEADINGS) or line.strip().removeprefix("- ").strip() in shared:
            continue
        keep.append(line)
    return "\n".join(keep).strip()


async def referral_context(fhir: httpx.AsyncClient, tid: str) -> dict[str, Any]:
    """The Task and everything a physiologist needs to act on it, resolved from the FHIR server."""
    task = await _read(fhir, f"Task/{tid}")
    if not task or task.get("resourceType") != "Task":
        raise PageError(404, "Referral not found", f"There is no Task {tid!r}.", "/sandbox/exercise-service/")
    if task.get("owner", {}).get("reference") != OWNER:
        raise PageError(404, "Referral not found", "That Task is not addressed to this service.",
                        "/sandbox/exercise-service/")
    base = str(fhir.base_url).rstrip("/")
    focus_ref = _rel(task.get("focus", {}).get("reference"), base)
    focus, patient, requester = await asyncio.gather(
        _read(fhir, focus_ref), _read(fhir, _rel(task.get("for", {}).get("reference"), base)),
        _read(fhir, _rel(task.get("requester", {}).get("reference"), base)))
    focus = focus or {}
    supporting_refs = [_rel(s.get("reference"), base) for s in focus.get("supportingInfo", [])]
    reason_refs = [_rel(s.get("reference"), base) for s in focus.get("reasonReference", [])]
    plan_refs = [_rel(s.get("reference"), base) for s in focus.get("basedOn", [])]
    supporting = await asyncio.gather(*(_read(fhir, r) for r in supporting_refs))
    reasons = await asyncio.gather(*(_read(fhir, r) for r in reason_refs))
    plans = [p for p in await asyncio.gather(*(_read(fhir, r) for r in plan_refs)) if p]
    goal_refs = [_rel(g.get("reference"), base) for p in plans for g in p.get("goal", [])]
    goal_refs += [_rel(x.get("valueReference", {}).get("reference"), base) for x in focus.get("extension", [])
                  if x.get("url", "").endswith("resource-pertainsToGoal")]
    goals = [g for g in await asyncio.gather(*(_read(fhir, r) for r in dict.fromkeys(goal_refs))) if g]
    components = [s for s in supporting if s and s.get("resourceType") == "ServiceRequest"]
    data = [s for s in supporting if s and s.get("resourceType") not in ("ServiceRequest",)]
    return {
        "task": task, "tid": tid, "sr": focus, "patient": patient or {}, "patient_name": _name(patient),
        "requester": requester or {}, "requester_name": _name(requester) or task.get("requester", {}).get(
            "display", ""),
        "components": [{"sr": c, "fitt": _fitt(c), "instructions": own_instructions(
            c.get("patientInstruction"), focus.get("patientInstruction")),
            "notes": [n.get("text") for n in c.get("note") or [] if n.get("text")]} for c in components],
        "stop_rules": stop_rule_list(focus.get("patientInstruction")),
        "clinician_notes": [{**n, "text": n["text"][len(CLINICIAN_NOTE_PREFIX):]} for n in focus.get("note", [])
                            if n.get("text", "").startswith(CLINICIAN_NOTE_PREFIX)],
        "referral_notes": [n for n in focus.get("note", []) if not n.get("text", "").startswith(CLINICIAN_NOTE_PREFIX)],
        "data": [{"res": d, "value": _value(d) if d.get("resourceType") == "Observation" else ""} for d in data],
        "reasons": [r for r in reasons if r], "plans": plans,
        "goals": [{"text": _codeable_text(g.get("description")), "targets": goal_targets(g)} for g in goals],
        "version": (task.get("meta") or {}).get("versionId"),
    }


# ---------------------------------------------------------------------------------------------------------
# Acting
# ---------------------------------------------------------------------------------------------------------


@router.post("/tasks/{tid}")
@html_errors
async def act(request: Request, tid: str = PathParam(pattern=FHIR_ID)) -> Response:
    if (login := require_staff(request)) is not None:
        return login
    form = await check_csrf(request)
    action = form.get("action", "")
    back = f"/sandbox/exercise-service/tasks/{tid}"
    async with fhir_client(request) as fhir:
        task = await _read(fhir, f"Task/{tid}")
        if not task or task.get("owner", {}).get("reference") != OWNER:
            raise PageError(404, "Referral not found", f"There is no Task {tid!r} for this service.",
                            "/sandbox/exercise-service/")
        version = (task.get("meta") or {}).get("versionId")
        if form.get("version") and version and form["version"] != version:
            return RedirectResponse(back + "?" + urlencode({"error": "Someone else updated this referral "
                                                            "meanwhile; review it and try again."}), 303)
        try:
            updated = transition(task, action, form.get("reason") or form.get("note"), datetime.now(timezone.utc))
        except TransitionError as exc:
            return RedirectResponse(back + "?" + urlencode({"error": str(exc)}), 303)
        assert taskrm_1_ok(updated)
        if action == "complete":  # with the programme report, linked from Task.output, in one transaction
            from service.sandbox.inbox_report import complete_with_report

            r = await complete_with_report(fhir, {**updated, "id": tid}, version, datetime.now(timezone.utc))
        else:
            headers = {"Content-Type": "application/fhir+json"}
            if version:
                headers["If-Match"] = f'W/"{version}"'
            r = await fhir.put(f"Task/{tid}", json=updated, headers=headers)
    if r.status_code == 412:
        return RedirectResponse(back + "?" + urlencode({"error": "Someone else updated this referral meanwhile; "
                                                        "review it and try again."}), 303)
    if r.status_code >= 300:
        raise PageError(502, "Update refused", f"The FHIR server refused the update (HTTP {r.status_code}).", back)
    return RedirectResponse(back + "?" + urlencode({"notice": f"Referral {updated['status']}: "
                                                    f"{updated['businessStatus']['text']}."}), 303)
