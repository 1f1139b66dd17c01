"""The patient companion's routes: `/patient/launch` (SMART standalone patient launch), `/patient/app` (the
patient's page) and `/patient/api/...` (its JSON API). It shares the SMART app's launch, token keeping and
sessions; a patient session opens only these routes (service.smart.sessions.load_session(patient=True)).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from service.clinical.selfreport import (EFFORT_WORDS, MAX_MINUTES, MAX_STEPS, Recall, Report, Session, Symptoms,
                                         Warnings, effort_score, screen)
from service.patient.plan import plan_view, weekly_minutes
from service.smart.csrf import csrf_ok
from service.smart.pages import error_page, json_for_script, no_store, outcome, render
from service.smart.runtime import of
from service.smart.scopes import Grants
from service.smart.sessions import (SESSION_NS, TOKEN_NS, SessionNotFound, browser_binding, load_session,
                                    new_csrf_token, new_session_id)
from service.smart.tokens import token_record

log = logging.getLogger("service.patient")
router = APIRouter()

MAX_BODY = 8_192
MAX_ACTIVITY = 60
BACKDATE_DAYS = 30  # an entry queued offline may arrive late; older is a typing slip
ENTRY_ID = re.compile(r"^[A-Za-z0-9-]{8,64}$")
WARNINGS = ("chest_pain", "fainting", "fever", "bone_pain")
SYMPTOMS = ("fatigue", "pain", "breathlessness")
PLAN_TYPES = ("CarePlan", "Goal", "ServiceRequest", "Task")


@router.get("/patient/launch", include_in_schema=False)
async def launch(request: Request, iss: str | None = None) -> Response:
    """SMART standalone patient launch (`launch/patient`, patient-level scopes, PKCE S256)."""
    from service.smart.routes import begin_launch

    return await begin_launch(request, iss, None, patient=True)


async def start_patient_session(request: Request, rec: dict[str, Any], token: dict[str, Any], patient: str,
                                granted: str, fhir_user: str | None, binding: str) -> Response:
    """After the callback of a patient launch: the companion's session (tokens kept apart, as the app's)."""
    settings = request.app.state.settings
    store = request.app.state.store
    if fhir_user and not _is_patient(fhir_user, patient):
        log.warning("patient companion: signed in as someone other than the patient; refused")
        return error_page(403, "This page is for the patient",
                          "The exercise companion records what the patient reports, in their name, so it opens only "
                          "with the patient's own sign-in. Clinicians use the exercise plan in the EHR.")
    sid, now = new_session_id(), time.time()
    sess = {"browser": binding, "iss": rec["iss"], "token_endpoint": rec["discovery"]["token_endpoint"],
            "mode": "patient", "patient": patient, "scope_granted": granted, "fhir_user": fhir_user,
            "csrf": new_csrf_token(), "created": now}
    await store.put(TOKEN_NS, sid, token_record(token, now), ttl=settings.session_ttl_seconds)
    await store.put(SESSION_NS, sid, sess, ttl=settings.session_ttl_seconds)
    log.info("patient companion: session started")
    return no_store(RedirectResponse(f"/patient/app?s={sid}", status_code=303))


def _is_patient(fhir_user: str, patient: str) -> bool:
    """fhirUser (relative or absolute) names the launch's patient."""
    parts = fhir_user.rstrip("/").split("/")
    return len(parts) >= 2 and parts[-2] == "Patient" and parts[-1] == patient


async def _session(request: Request, s: str | None) -> dict[str, Any] | None:
    try:
        return await load_session(request.app.state.store, s, browser_binding(request), patient=True)
    except SessionNotFound:
        return None


def _today(request: Request) -> date:
    return datetime.now(timezone.utc).date()


async def _plan(request: Request, s: str, sess: dict[str, Any]) -> dict[str, Any]:
    """The plan read with the patient's own token (FhirError propagates: the caller answers 502)."""
    from service.smart.load import fhir_client

    async with fhir_client(of(request), request.app.state.store, s, sess) as ehr:
        return await read_plan(ehr, request, sess["patient"])


async def read_plan(ehr: Any, request: Request, patient: str) -> dict[str, Any]:
    """The patient's plan view and this week's logged minutes, from the FHIR server `ehr`."""
    from service.fhir.errors import FhirError

    settings = request.app.state.settings
    today = _today(request)
    found = await ehr.search_concurrently({t: (t, [("patient", patient), ("_count", "100")]) for t in PLAN_TYPES})
    failed = [r for r in found.values() if isinstance(r, FhirError)]
    if failed:
        raise failed[0]
    resources = [r for result in found.values() for r in result.resources]  # type: ignore[union-attr]
    view = plan_view(resources, today, care_team_contact=settings.care_team_contact,
                     service_name=settings.exercise_service_name, service_contact=settings.exercise_service_contact)
    view["loggedThisWeek"], view["devices"] = await _minutes_this_week(ehr, patient, today)
    view["plannedThisWeek"] = weekly_minutes(view)
    return view


async def _minutes_this_week(ehr: Any, patient: str, today: date) -> tuple[int, list[str]]:
    """Exercise minutes logged since Monday (the patient's own entries and those another app or a wearable posted,
    under any of the exercise-minutes codes), read and counted as the clinical core reads and counts them
    (snapshot units, adaptation.day_minutes), and the devices they came from."""
    from service.clinical.adaptation import day_minutes
    from service.clinical.snapshot import build_snapshot
    from service.terminology import get_terminology

    monday = today - timedelta(days=today.weekday())
    codes = ",".join(f"{sys}|{code}" for sys, code in get_terminology().observation_codes("exercise-minutes"))
    found = await ehr.search("Observation", [("patient", patient), ("code", codes),
                                             ("date", f"ge{monday.isoformat()}"), ("_count", "100")])
    snap = build_snapshot({"resourceType": "Bundle", "type": "collection",
                           "entry": [{"resource": r} for r in found.resources]}, datetime.now(timezone.utc))
    minutes = day_minutes(snap.history.get("exercise-minutes", ()), snap.device_refs, monday, today)
    devices: list[str] = []
    for r in found.resources:
        device = (r.get("device") or {}).get("display") if isinstance(r.get("device"), dict) else None
        if isinstance(device, str) and device[:60] not in devices:
            devices.append(device[:60])
    return round(sum(minutes.values())), devices


@router.get("/patient/app", include_in_schema=False)
async def app_page(request: Request, s: str | None = None) -> Response:
    sess = await _session(request, s)
    if sess is None or s is None:
        return error_page(401, "Please sign in again", "This page has expired or was opened in another browser. "
                          "Open the exercise companion again from your patient portal.")
    from service.fhir.errors import FhirError

    try:
        view = await _plan(request, s, sess)
    except FhirError as exc:
        log.warning("patient companion: plan not readable (%s)", exc.status)
        return error_page(502, "Your plan cannot be shown just now",
                          "The hospital's system did not answer. Please try again in a few minutes.")
    advice = {w: [a.patient_text for a in screen(Report(_today(request), warnings=Warnings(**{w: True})))][0]
              for w in WARNINGS}
    grants = Grants.parse(sess.get("scope_granted"))
    can_alert = grants.can_create("Flag") or grants.can_create("Communication")
    return render("companion.html", sid=s, csrf=sess["csrf"], view=view, today=_today(request).isoformat(),
                  efforts=EFFORT_WORDS, can_alert=can_alert,
                  data=json_for_script({"advice": advice, "sid": s, "queue": queue_key(sess)}))


@router.get("/patient/api/plan")
async def api_plan(request: Request, s: str | None = None) -> Response:
    sess = await _session(request, s)
    if sess is None or s is None:
        return outcome(401, "The companion session has expired: sign in again.", code="login")
    from service.fhir.errors import FhirError

    try:
        return no_store(JSONResponse(await _plan(request, s, sess)))
    except FhirError as exc:
        log.warning("patient companion: plan not readable (%s)", exc.status)
        return outcome(502, "The hospital's system did not answer: try again in a few minutes.", code="transient")


@router.post("/patient/api/entries")
async def api_entry(request: Request, s: str | None = None) -> Response:
    """One report (a session, steps, the weekly check-in and the warning questions): written to the FHIR server
    as PA IG observations; every alert also as a Flag and a Communication. Answers what to do now.

    A warning answer is never lost to another problem: when the rest of the entry is invalid, or the FHIR
    server refuses it, the alerts are still written on their own and the answer carries them with the problem."""
    sess = await _session(request, s)
    if sess is None or s is None:
        return outcome(401, "The companion session has expired: sign in again.", code="login")
    if not csrf_ok(request, sess, request.app.state.settings.public_url):
        return outcome(403, "Missing or wrong CSRF token: reload the page.", code="security")
    body = await request.body()
    if len(body) > MAX_BODY:
        return outcome(413, "The entry is too large.", code="too-costly")
    try:
        import orjson

        data = orjson.loads(body)
    except (ValueError, RecursionError):
        return outcome(422, "The entry is not valid JSON.", code="invalid")
    if isinstance(data, dict) and data.get("queue") not in (None, queue_key(sess)):
        return outcome(409, "This entry was kept on this device for another person's sign-in, so it was not "
                            "recorded here.", code="conflict")
    today = _today(request)
    problem: str | None = None
    try:
        entry_id, report = parse_entry(data, today)
    except EntryInvalid as exc:
        warnings = warnings_only(data)
        if warnings is None:
            return outcome(422, str(exc), code="invalid")
        problem = str(exc)  # the warnings still go to the care team, dated today
        entry_id = data["entryId"] if isinstance(data.get("entryId"), str) and ENTRY_ID.match(data["entryId"]) \
            else str(uuid.uuid4())
        report = Report(today, warnings=warnings)
    alerts = screen(report)
    result = await _write(request, s, sess, report, alerts, entry_id)
    if isinstance(result, Response):
        return result
    body_out = {**result, "alerts": [_alert_json(a) for a in alerts]}
    if problem is not None:
        return outcome(422, problem + " The rest of the entry was not recorded; your warning answers were.",
                       code="invalid", extra=body_out)
    if result.get("refused"):
        return outcome(502, "The hospital's system did not accept this entry, so it was not recorded. Write it on "
                            "your paper log or tell your care team.", code="processing",
                       extra={**body_out, "retry": False})
    log.info("patient companion: entry written (%d resources, %d alerts)", result["written"], len(alerts))
    return no_store(JSONResponse(body_out, status_code=201))


async def _write(request: Request, s: str, sess: dict[str, Any], report: Report, alerts: tuple[Any, ...],
                 entry_id: str) -> dict[str, Any] | Response:
    """Write the report; on a refusal by the FHIR server, the alerts alone. {"written", "flagged",
    "toldCareTeam", "refused"} or a Response (nothing to record; the server unreachable: sent again later)."""
    from service.fhir.errors import FhirError
    from service.fhir.selfreport import report_bundle
    from service.smart.load import fhir_client
    from service.smart.scopes import Grants

    grants = Grants.parse(sess.get("scope_granted"))
    may = {t: grants.can_create(t) for t in ("Flag", "Communication")}
    now = datetime.now(timezone.utc)
    patient_ref = f"Patient/{sess['patient']}"
    try:
        async with fhir_client(of(request), request.app.state.store, s, sess) as ehr:
            care_team = await _care_team(ehr, sess["patient"]) if alerts else None
            bundle = report_bundle(report, alerts, entry_id=entry_id, patient_ref=patient_ref, now=now,
                                   care_team=care_team, flags=may["Flag"], communications=may["Communication"])
            if not bundle["entry"]:
                return outcome(422, "Nothing to record: fill in at least one part of the form.", code="required")
            try:
                answer = await ehr.transaction(bundle)
                refused = False
            except FhirError as exc:
                if exc.status == 401 or exc.status >= 500 or not alerts:
                    raise
                log.warning("patient companion: entry refused (%s); writing the alerts alone", exc.status)
                only = report_bundle(Report(report.day), alerts, entry_id=entry_id, patient_ref=patient_ref,
                                     now=now, care_team=care_team, flags=may["Flag"],
                                     communications=may["Communication"])
                answer = await ehr.transaction(only) if only["entry"] else {}
                refused = True
    except FhirError as exc:
        log.warning("patient companion: entry not written (%s)", exc.status)
        if exc.status == 401:
            return outcome(401, "The sign-in has expired: sign in again. Your entry is kept on this phone.",
                           code="login", extra={"alerts": [_alert_json(a) for a in alerts]})
        if 400 <= exc.status < 500:
            return outcome(502, "The hospital's system did not accept this entry, so it was not recorded. Write it "
                                "on your paper log or tell your care team.", code="processing",
                           extra={"alerts": [_alert_json(a) for a in alerts], "retry": False, "flagged": False})
        return outcome(503, "The hospital's system did not answer. Your entry is kept on this phone and will be "
                            "sent again.", code="transient", extra={"alerts": [_alert_json(a) for a in alerts],
                                                                    "retry": True})
    flagged = bool(alerts) and may["Flag"]
    told = bool(alerts) and may["Communication"] and care_team is not None
    return {"written": len(answer.get("entry") or ()), "flagged": flagged or told, "toldCareTeam": told,
            "refused": refused}


def queue_key(sess: dict[str, Any]) -> str:
    """Names this sign-in's offline queue on the device (a hash: never the patient id in the browser's storage)."""
    return hashlib.sha256(f"{sess['iss']}|{sess['patient']}".encode()).hexdigest()[:24]


async def _care_team(ehr: Any, patient: str) -> str | None:
    """Whom the Communications go to: the requester of the patient's newest open referral of ours, when readable
    (one search: the referral is all it needs)."""
    from service.fhir.errors import FhirError
    from service.fhir.open_referrals import open_referrals

    try:
        found = await ehr.search("ServiceRequest", [("patient", patient), ("_count", "100")])
    except FhirError:  # without a recipient the Flag still shows on the clinician's next card
        return None
    ours = [o for o in open_referrals(found.resources) if o.ours]
    req = (ours[-1].referral.get("requester") or {}).get("reference") if ours else None
    return req if isinstance(req, str) and req.startswith(("Practitioner/", "PractitionerRole/")) else None


def _alert_json(a: Any) -> dict[str, str]:
    return {"rule": a.rule, "urgency": a.urgency, "text": a.patient_text}


class EntryInvalid(ValueError):
    """A field of the entry is missing or out of range; the message says which, for the patient."""


def parse_entry(data: Any, today: date) -> tuple[str, Report]:
    """(entry id, Report) from the page's JSON, or EntryInvalid."""
    if not isinstance(data, dict):
        raise EntryInvalid("The entry must be a JSON object.")
    entry_id = data.get("entryId")
    if not isinstance(entry_id, str) or not ENTRY_ID.match(entry_id):
        raise EntryInvalid("entryId: a unique id of 8-64 letters, digits or dashes is required.")
    try:
        day = date.fromisoformat(str(data.get("day") or today.isoformat()))
    except ValueError:
        raise EntryInvalid("day: use a date such as 2026-12-04.") from None
    if day > today + timedelta(days=1) or day < today - timedelta(days=BACKDATE_DAYS):  # +1: the patient's
        raise EntryInvalid(f"day: the date must be today or within the last {BACKDATE_DAYS} days.")  # zone
    session = _session_of(data.get("session"), day)
    steps = _int(data.get("steps"), "steps", 0, MAX_STEPS)
    symptoms = _symptoms_of(data.get("symptoms"), day)
    warnings = _warnings_of(data.get("warnings"))
    return entry_id, Report(day, session, steps, symptoms, warnings, _recall_of(data.get("recall")))


def _warnings_of(d: Any) -> Warnings:
    d = d or {}
    if not isinstance(d, dict) or any(k not in WARNINGS or not isinstance(v, bool) for k, v in d.items()):
        raise EntryInvalid(f"warnings: yes/no answers to {', '.join(WARNINGS)} only.")
    return Warnings(**d)


def warnings_only(data: Any) -> Warnings | None:
    """The entry's warning answers when at least one is yes and they are well formed (else None)."""
    if not isinstance(data, dict):
        return None
    try:
        w = _warnings_of(data.get("warnings"))
    except EntryInvalid:
        return None
    return w if any((w.chest_pain, w.fainting, w.fever, w.bone_pain)) else None


def _recall_of(d: Any) -> Recall | None:
    if d is None:
        return None
    if not isinstance(d, dict) or set(d) - {"days", "minutesPerDay"}:
        raise EntryInvalid("recall: days (0-7) and minutesPerDay (0-300) are expected.")
    days = _int(d.get("days"), "recall.days", 0, 7)
    minutes = _int(d.get("minutesPerDay"), "recall.minutesPerDay", 0, 300)
    if days is None and minutes is None:
        return None
    if days is None or (minutes is None and days > 0):  # never store a half answer as zero
        raise EntryInvalid("recall: answer both questions (days, and minutes on those days), or neither.")
    return Recall(days, minutes or 0)


def _int(value: Any, name: str, low: int, high: int) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise EntryInvalid(f"{name}: a whole number is expected.")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise EntryInvalid(f"{name}: a whole number is expected.") from None
    if not low <= n <= high:
        raise EntryInvalid(f"{name}: between {low} and {high:,}.")
    return n


def _session_of(d: Any, day: date) -> Session | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise EntryInvalid("session: activity, minutes and effort are expected.")
    activity = d.get("activity")
    if not isinstance(activity, str) or not activity.strip() or len(activity) > MAX_ACTIVITY \
            or any(ord(ch) < 32 for ch in activity):
        raise EntryInvalid(f"session.activity: say what you did (up to {MAX_ACTIVITY} characters).")
    minutes = _int(d.get("minutes"), "session.minutes", 1, MAX_MINUTES)
    if minutes is None:
        raise EntryInvalid("session.minutes: how many minutes?")
    effort = d.get("effort")
    if not isinstance(effort, str) or effort not in EFFORT_WORDS:
        raise EntryInvalid(f"session.effort: one of {', '.join(EFFORT_WORDS)}.")
    return Session(day, activity.strip(), minutes, effort_score(effort))


def _symptoms_of(d: Any, day: date) -> Symptoms | None:
    if d is None:
        return None
    if not isinstance(d, dict) or any(k not in SYMPTOMS for k in d):
        raise EntryInvalid(f"symptoms: {', '.join(SYMPTOMS)}, each 0-10.")
    values = {k: _int(d.get(k), f"symptoms.{k}", 0, 10) for k in SYMPTOMS}
    return None if all(v is None for v in values.values()) else Symptoms(day, **values)
