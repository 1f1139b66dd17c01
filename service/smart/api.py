"""The app's JSON API (the page is a thin client of it).

- `GET  /smart/api/prescription?s=SID`        the view: patient banner, data used, decision, prescription,
                                               preferences, write-back strategy and why, draft version
- `POST /smart/api/prescription?s=SID`        re-run with preferences and edits (validated server-side)
- `POST /smart/api/prescription/sign?s=SID`   sign & send (CSRF header; idempotent per draft version)
Errors are OperationOutcomes with the HTTP status; edit problems carry their paths in `expression`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.lease import Lease
from service.smart.csrf import csrf_ok
from service.smart.load import Loaded, LoadError, ensure_loaded, fhir_client
from service.smart.pages import no_store, outcome
from service.smart.runtime import SmartRuntime, of
from service.smart.sessions import SessionNotFound, browser_binding, load_session, update_session
from service.state import StoreUnavailable

log = logging.getLogger("service.smart.api")
router = APIRouter()

SIGN_NS = "smart-sign"  # the finished result of a signing, replayed to repeated presses
LEASE_NS = "sign-lease"  # who is signing right now (service.lease; plain: no PHI, owner-checked)
MAX_BODY = 200_000


# ---------------------------------------------------------------------------------------------------------
# The current draft of a session
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Draft:
    version: int
    prescription: Any  # service.clinical.model.Prescription
    preferences: dict[str, Any]
    edits: dict[str, Any]


_drafts: dict[str, Draft] = {}  # in-process cache; the store's session record is the source of truth


def _current_draft(sid: str, sess: dict[str, Any], loaded: Loaded) -> Draft:
    from service.clinical.prescribe import prescribe
    from service.clinical.serialize import preferences_from_json, prescription_from_json

    version = int(sess.get("draft_version") or 0)
    cached = _drafts.get(sid)
    if cached is not None and cached.version == version:
        return cached
    prefs = sess.get("preferences") or {}
    if sess.get("draft"):
        p = prescription_from_json(sess["draft"])
    else:
        p = prescribe(loaded.snapshot, loaded.now, preferences_from_json(prefs) if prefs else None)
    draft = Draft(version, p, prefs, sess.get("edits") or {})
    _drafts[sid] = draft
    if len(_drafts) > 500:
        _drafts.pop(next(iter(_drafts)))
    return draft


# ---------------------------------------------------------------------------------------------------------
# The view
# ---------------------------------------------------------------------------------------------------------


def _iso(x: Any) -> str | None:
    return x.isoformat() if hasattr(x, "isoformat") else (str(x) if x is not None else None)


def _label(measure: str) -> str:
    try:
        from service.terminology import get_terminology

        return get_terminology().measure(measure).display
    except Exception:  # noqa: BLE001 - a label is cosmetic
        return measure.replace("-", " ")


def _override_reasons() -> list[dict[str, str]]:
    """The clinical reasons a clinician may give to sign beyond a safety limit (not the card-dismissal reasons)."""
    from service.terminology import get_terminology

    t = get_terminology()
    return [{"system": s, "code": c, "display": t.display(s, c) or c, "definition": t.definition(s, c) or ""}
            for s, c in t.codes("clinical-override-reason")]


def _measurement(m: Any, stale: bool = False) -> dict[str, Any]:
    from service.clinical.units import human_unit

    return {"measure": m.measure, "label": _label(m.measure), "value": m.value, "unit": m.unit,
            "unitLabel": human_unit(m.unit), "comparator": m.comparator, "flag": m.flag,
            "date": _iso(m.effective), "source": m.ref, "code": m.code, "stale": stale,
            "components": [{"measure": k, "value": v} for k, v in m.components]}


TREND_MEASURES = ("evs-minutes-per-week", "hemoglobin", "platelets", "six-minute-walk")  # read better as a chart
TREND_POINTS = 12


def _trends(snap: Any) -> list[dict[str, Any]]:
    """The last few values of the measures a clinician would rather see as a line (oldest first)."""
    from service.clinical.units import human_unit

    out = []
    for measure in TREND_MEASURES:
        hist = sorted(snap.history.get(measure, ()), key=lambda m: m.effective)[-TREND_POINTS:]
        if len(hist) >= 2:
            out.append({"measure": measure, "label": _label(measure), "unitLabel": human_unit(hist[-1].unit),
                        "points": [{"date": _iso(m.effective), "value": m.value} for m in hist]})
    return out


def _at_home(snap: Any) -> dict[str, Any] | None:
    """The patient companion's side (service.clinical.adaptation): open Flags, the weeks logged against the plan,
    and the proposed next step; None when the patient logs nothing and flagged nothing."""
    from service.clinical.adaptation import assess, proposal_text

    a = assess(snap, service_on_hold=any(r.task_status == "on-hold" for r in snap.referrals))
    alerts = [{"text": x.text, "rule": x.rule, "reported": _iso(x.reported), "source": x.ref}
              for x in snap.patient_alerts]
    if a is None and not alerts:
        return None
    out: dict[str, Any] = {"alerts": alerts}
    if a is not None:
        out.update(line=a.line, step=a.step, rule=a.rule, reason=a.reason, proposal=proposal_text(a),
                   planned=a.planned, proposed=a.proposed,
                   weeks=[{"start": w.start.isoformat(), "minutes": w.minutes, "planned": w.planned,
                           "atGoal": w.at_goal} for w in a.weeks])
    return out


def _flagged(rationale: Any) -> dict[str, str]:
    """Source reference -> the finding of the first rule it triggered (shown beside the value as abnormal)."""
    out: dict[str, str] = {}
    for r in rationale:
        for ref in r.refs:
            out.setdefault(ref, r.finding)
    return out


def _fact(f: Any) -> dict[str, Any]:
    return {"display": f.display, "code": f.code, "system": f.system, "onset": _iso(f.onset), "source": f.ref}


def _banner(patient: dict[str, Any] | None, patient_id: str) -> dict[str, Any]:
    if not patient:
        return {"id": patient_id, "name": None, "birthDate": None, "gender": None, "identifier": None}
    name = None
    for n in patient.get("name") or []:
        if isinstance(n, dict):
            name = n.get("text") or " ".join([*(n.get("given") or []), n.get("family") or ""]).strip()
            if name:
                break
    ident = next((i.get("value") for i in patient.get("identifier") or []
                  if isinstance(i, dict) and i.get("value")), None)
    return {"id": patient_id, "name": name, "birthDate": patient.get("birthDate"),
            "gender": patient.get("gender"), "identifier": ident}


def _programme(snap: Any) -> dict[str, Any] | None:
    """The referral in place and what its exercise service reported: status, attendance, before -> after."""
    from service.cds_hooks.cards import referral_in_place
    from service.clinical.programme import attendance, changes

    ref = referral_in_place(snap)
    if ref is None:
        return None
    att = attendance(snap, ref.authored)
    return {"referral": ref.ref, "status": ref.status, "taskStatus": ref.task_status,
            "businessStatus": ref.task_business, "reason": ref.task_reason, "latestNote": ref.task_note,
            "report": ref.task_report,
            "attendance": None if att is None else {"attended": att.attended, "offered": att.offered,
                                                    "date": _iso(att.when)},
            "changes": [{"measure": c.measure, "label": _label(c.measure), "before": _measurement(c.before),
                         "after": _measurement(c.after)} for c in changes(snap, ref.authored)]}


def build_view(sid: str, sess: dict[str, Any], loaded: Loaded, draft: Draft,
               services: list[Any] | None = None) -> dict[str, Any]:
    from service.clinical.serialize import prescription_to_json
    from service.terminology import setting_name

    snap = loaded.snapshot
    stale_keys = set(snap.stale)
    data_used = [_measurement(m) for _, m in sorted(snap.latest.items()) if m.measure not in stale_keys]
    data_used += [_measurement(m, stale=True) for _, m in sorted(snap.stale.items())]
    flagged = _flagged(draft.prescription.rationale)
    for row in data_used:  # a newer result of the same measure that could not be read is said beside the value
        row["newerUnreadable"] = any(u.measure == row["measure"] and u.effective is not None
                                     and _iso(u.effective) > row["date"] for u in snap.unreadable)
        row["triggered"] = flagged.get(row["source"])
    comorbidities = [dict(_fact(f), group=k) for k, facts in sorted(snap.comorbidities.items()) for f in facts]
    treatments = [{"kind": t.kind, "display": t.display, "start": _iso(t.start), "end": _iso(t.end),
                   "active": t.active, "cardiotoxic": t.cardiotoxic, "staleOrder": t.stale_order, "source": t.ref}
                  for t in snap.treatments]
    unreadable = [{"measure": u.measure, "what": u.what, "source": u.ref, "problem": u.problem,
                   "requires": u.requires, "date": _iso(u.effective)} for u in snap.unreadable]
    rx = prescription_to_json(draft.prescription)
    signed = sess.get("signed")
    can_sign = bool(loaded.strategy and sess.get("requester") and (not signed or signed.get("status") == "partial"))
    return {
        "session": sid,
        "needPatientBanner": bool(sess.get("need_patient_banner", True)),
        "patient": _banner(loaded.patient, sess["patient"]),
        "age": snap.age,
        "encounter": sess.get("encounter"),
        "launch": {"mode": sess.get("mode"), "fromCard": bool(sess.get("app_context")),
                   "appContext": sess.get("app_context")},
        "requester": {"reference": sess.get("requester"),
                      "display": sess.get("requester_display") or loaded.requester_display,
                      "fhirUser": sess.get("fhir_user")},
        "asOf": _iso(loaded.now),
        "data": {
            "measurements": data_used,
            "cancers": [_fact(f) for f in snap.cancers],
            "cancerHistory": [_fact(f) for f in snap.cancer_history],
            "regionalNodes": [_fact(f) for f in snap.regional_nodes],
            "metastases": [_fact(f) for f in snap.metastases],
            "brainMetastases": [_fact(f) for f in snap.brain_metastases],
            "unreadable": unreadable,
            "trends": _trends(snap),
            "boneMetastases": [_fact(f) for f in snap.bone_metastases],
            "comorbidities": comorbidities,
            "treatments": treatments,
            "complete": loaded.complete,
            "failures": loaded.failures,
            "truncated": loaded.truncated,
        },
        "prescription": rx,
        "preferences": draft.preferences or rx.get("preferences") or {},
        "edits": draft.edits,
        "overrideReasons": _override_reasons(),
        "draftVersion": draft.version,
        "writeBack": {
            "strategy": loaded.strategy,
            "why": loaded.strategy_why,
            "target": sess.get("iss"),
            "grantedScopes": (sess.get("scope_granted") or "").split(),
            "missingScopes": sess.get("missing_scopes") or [],
            "scopeFallback": sess.get("scope_fallback"),
            "canSign": can_sign,
        },
        "notes": loaded.notes,
        "signed": signed,
        "settingName": setting_name(draft.prescription.setting),
        "openReferrals": [o.summary() for o in loaded.open_referrals],
        "exerciseProgramme": _programme(snap),
        "atHome": _at_home(snap),
        "exerciseServices": [x.to_json() for x in services or ()],
        "clearance": {"canRecord": rx.get("setting") == "defer" and bool(rx.get("redFlags"))
                      and bool(sess.get("requester")) and not signed,
                      "toResolve": rx.get("toResolve") or [], "recorded": rx.get("clearance")},
    }


def _services(request: Request) -> list[Any]:
    return request.app.state.settings.exercise_service_list()


async def _session(request: Request, s: str | None) -> dict[str, Any]:
    return await load_session(request.app.state.store, s, browser_binding(request))


async def view_or_none(request: Request, sid: str, sess: dict[str, Any], wait: bool = False) -> dict[str, Any] | None:
    """The view for server-rendered pages; None when the patient cannot be loaded."""
    rt = of(request)
    if not wait and sid not in rt.cache:
        return None
    try:
        loaded = await ensure_loaded(rt, request.app.state.store, sid, sess)
        return build_view(sid, sess, loaded, _current_draft(sid, sess, loaded), _services(request))
    except LoadError:
        return None


async def _loaded(request: Request, s: str | None) -> tuple[dict[str, Any], Loaded] | Response:
    try:
        sess = await _session(request, s)
    except SessionNotFound:
        return outcome(401, "This app session has expired or belongs to another browser: launch the app again "
                            "from the EHR.", code="login")
    try:
        loaded = await ensure_loaded(of(request), request.app.state.store, str(s), sess)
    except LoadError as exc:
        return outcome(exc.status, exc.message + (" Launch the app again from the EHR." if exc.relaunch else ""),
                       code="login" if exc.status == 401 else "exception")
    return sess, loaded


# ---------------------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------------------


@router.get("/smart/api/prescription")
async def get_prescription(request: Request, s: str | None = None) -> Response:
    """The current draft and everything the clinician needs to judge it."""
    got = await _loaded(request, s)
    if isinstance(got, Response):
        return got
    sess, loaded = got
    return no_store(JSONResponse(build_view(str(s), sess, loaded, _current_draft(str(s), sess, loaded),
                                            _services(request))))


async def _json_body(request: Request) -> dict[str, Any] | Response:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        return outcome(413, "The request body is too large.", code="too-costly")
    if not raw.strip():
        return {}
    try:
        import json

        body = json.loads(raw)
    except ValueError:
        return outcome(400, "The request body is not valid JSON.", code="structure")
    if not isinstance(body, dict):
        return outcome(400, "The request body must be a JSON object.", code="structure")
    return body


def _problems_outcome(problems: list[Any], status: int = 422) -> Response:
    issues = [{"severity": "error", "code": "invariant", "diagnostics": p.message,
               **({"expression": [p.path]} if getattr(p, "path", None) else {})} for p in problems]
    return outcome(status, "The edits were not accepted.", issues=issues,
                   extra={"problems": [{"path": getattr(p, "path", None), "message": p.message,
                                        "override": bool(getattr(p, "override", False))} for p in problems]})


@router.post("/smart/api/prescription")
async def update_prescription(request: Request, s: str | None = None) -> Response:
    """Re-run the prescription with the patient's preferences, then apply the clinician's edits.

    Body: `{"preferences": {...}, "edits": {...}, "draftVersion": n}`. Unsafe edits (e.g. intensity above
    what a precaution allows) come back as 422 problems unless the edits carry an override reason.
    """
    from service.clinical.edits import apply_edits
    from service.clinical.prescribe import prescribe
    from service.clinical.serialize import clearance_from_json, preferences_from_json, prescription_to_json

    got = await _loaded(request, s)
    if isinstance(got, Response):
        return got
    sess, loaded = got
    settings = request.app.state.settings
    if not csrf_ok(request, sess, settings.public_url):
        return outcome(403, "Missing or wrong CSRF token: reload the page.", code="security")
    if sess.get("signed"):
        return outcome(409, "This prescription has already been signed and sent; it can no longer be edited.",
                       code="conflict")
    body = await _json_body(request)
    if isinstance(body, Response):
        return body
    version = body.get("draftVersion")
    if version is not None and version != sess.get("draft_version", 0):
        return outcome(409, "The prescription was changed in another window: reload the page.", code="conflict")
    prefs_json = body.get("preferences") or {}
    edits = body.get("edits") or {}
    if not isinstance(prefs_json, dict) or not isinstance(edits, dict):
        return outcome(400, "preferences and edits must be JSON objects.", code="structure")
    try:
        prefs = preferences_from_json(prefs_json) if prefs_json else None
    except ValueError as exc:
        return _problems_outcome([_Problem("preferences", str(exc))])
    clearance = sess.get("clearance")
    if body.get("clearance") is not None:
        got_clearance = _clearance(body["clearance"], sess, loaded, prefs)
        if isinstance(got_clearance, Response):
            return got_clearance
        clearance = got_clearance
    prescription = prescribe(loaded.snapshot, loaded.now, prefs,
                             clearance_from_json(clearance) if clearance else None)
    if edits:
        try:
            result = apply_edits(prescription, edits, loaded.now)
        except ValueError as exc:
            return _problems_outcome([_Problem("edits", str(exc))])
        if result.problems:
            return _problems_outcome(list(result.problems))
        prescription = result.prescription
    new_version = int(sess.get("draft_version") or 0) + 1
    sess = await update_session(request.app.state.store, str(s), settings, draft=prescription_to_json(
        prescription), preferences=prefs_json, edits=edits, draft_version=new_version, clearance=clearance)
    _drafts[str(s)] = Draft(new_version, prescription, prefs_json, edits)
    return no_store(JSONResponse(build_view(str(s), sess, loaded, _drafts[str(s)], _services(request))))


def _clearance(raw: Any, sess: dict[str, Any], loaded: Loaded, prefs: Any) -> dict[str, Any] | Response:
    """Record the signed-in clinician's clearance of the deferred plan (JSON for the session), or a 422."""
    from service.clinical.clearance import ClearanceError, record_clearance
    from service.clinical.prescribe import prescribe
    from service.clinical.serialize import clearance_to_json

    if not isinstance(raw, dict):
        return _problems_outcome([_Problem("clearance", "The clearance could not be read.")])
    deferred = prescribe(loaded.snapshot, loaded.now, prefs)
    try:
        c = record_clearance(deferred, by=str(sess.get("requester") or ""), at=datetime.now(timezone.utc),
                             reviewed=raw.get("reviewed"), note=raw.get("note"),
                             by_display=sess.get("requester_display") or loaded.requester_display)
    except ClearanceError as exc:
        return _problems_outcome([_Problem("clearance", str(exc))])
    return clearance_to_json(c)


@dataclass
class _Problem:
    path: str
    message: str


def signing_key(sid: str, version: int, sess: dict[str, Any] | None = None) -> str:
    """What makes two signatures "the same draft", so that it is written once.

    Launched from a CDS card (appContext.cardUuid), the draft is the card's referral for that patient: every
    clinician who opened the same card signs the same draft, the first signature is written and the others
    get its result. Otherwise the draft is one version of one session's prescription (a double click or a
    retry writes one set)."""
    card = ((sess or {}).get("app_context") or {}).get("cardUuid")
    if isinstance(card, str) and card and (sess or {}).get("patient"):
        seed = f"card:{card}:{sess['patient']}"  # type: ignore[index]
    else:
        seed = f"{sid}:{version}"
    return hashlib.sha256(f"onco-exercise:smart-sign:{seed}".encode()).hexdigest()[:40]


@router.post("/smart/api/prescription/sign")
async def sign(request: Request, s: str | None = None) -> Response:
    """Sign & send: write back with the chosen strategy; the same draft signed twice returns the first result."""
    got = await _loaded(request, s)
    if isinstance(got, Response):
        return got
    sess, loaded = got
    settings = request.app.state.settings
    store = request.app.state.store
    if not csrf_ok(request, sess, settings.public_url):
        return outcome(403, "Missing or wrong CSRF token: reload the page.", code="security")
    body = await _json_body(request)
    if isinstance(body, Response):
        return body
    version = int(sess.get("draft_version") or 0)
    if body.get("draftVersion") is not None and body.get("draftVersion") != version:
        return outcome(409, "The prescription changed since it was shown: review it again before signing.",
                       code="conflict")
    service = _chosen_service(settings, body.get("exerciseService"))
    if service is None:
        return outcome(422, "That exercise service is not one this onco-exercise is configured to refer to.",
                       code="value")
    key = signing_key(str(s), version, sess)
    if sess.get("signed") and sess["signed"].get("key") != key:
        return outcome(409, "This session's prescription has already been signed.", code="conflict")
    if not sess.get("requester"):
        return outcome(403, "The EHR did not identify the signed-in clinician (no fhirUser), so the referral "
                            "cannot be signed.", code="forbidden")
    if not loaded.strategy:
        return outcome(403, " ".join(loaded.strategy_why[:1]) or "Nothing can be written to this EHR.",
                       code="forbidden")

    previous = sess.get("signed") or {}
    if previous.get("key") == key and previous.get("status") == "partial":
        await store.delete(SIGN_NS, key)  # a retry completes the set (write-back is idempotent on the key)
    done = await store.get(SIGN_NS, key)
    if done is not None:
        return _replay(done)
    lease = Lease(store, LEASE_NS, key, settings.sign_lease_seconds)
    if not await lease.acquire():
        waited = await _wait_for_first(store, lease, settings.sign_wait_seconds)
        if waited is not None:
            return waited
    async with lease.held():
        done = await store.get(SIGN_NS, key)  # finished between our first look and the lease
        if done is not None:
            return _replay(done)
        answer, status = await _sign_and_send(request, of(request), str(s), sess, loaded, key, service)
        if status < 400 or answer.get("written"):
            try:
                await store.put(SIGN_NS, key, {"status": "done", "answer": answer, "httpStatus": status},
                                ttl=settings.session_ttl_seconds)
                await update_session(store, str(s), settings, signed=answer)
            except StoreUnavailable:
                return _sent_but_unrecorded(answer)
        # else nothing was written: the lease's release lets the clinician (or a waiting twin) try again
    return no_store(JSONResponse(answer, status_code=status,
                                 media_type="application/fhir+json" if status >= 400 else None))


def _chosen_service(settings: Any, reference: Any) -> Any:
    """The configured exercise service the clinician picked (the default when none); None if not configured."""
    from service.exercise_services import service_for

    if reference is not None and (not isinstance(reference, str) or len(reference) > 200):
        return None
    return service_for(settings.exercise_service_list(), reference)


def _replay(rec: dict[str, Any]) -> Response:
    return no_store(JSONResponse(dict(rec["answer"], replayed=True), status_code=rec.get("httpStatus", 200)))


def _sent_but_unrecorded(answer: dict[str, Any]) -> Response:
    """The EHR took the referral but the state store went away before we could record it: say exactly that
    (with what was written), so the clinician does not think nothing happened; the next attempt, or the
    reconciler, completes the record without writing anything twice."""
    body = dict(answer, resourceType="OperationOutcome", issue=[{
        "severity": "error", "code": "transient",
        "diagnostics": "The referral was sent to the EHR (see 'written'), but the service could not record it "
                       "because its state store is unavailable. Press Sign & send again in a minute: nothing "
                       "will be written twice."}])
    return no_store(JSONResponse(body, status_code=503, headers={"Retry-After": "30"},
                                 media_type="application/fhir+json"))


async def _wait_for_first(store: Any, lease: Lease, wait_seconds: float) -> Response | None:
    """Wait for the signer holding the lease: its result (replayed), or None once the lease is ours (the holder
    finished without writing anything, or died and stopped renewing: then we resume its work)."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        rec = await store.get(SIGN_NS, lease.key)
        if rec is not None and rec.get("status") == "done":
            return _replay(rec)
        if await lease.acquire():
            return None
        await asyncio.sleep(0.1)
    return outcome(409, "Signing is still in progress; check the result in a moment.", code="conflict",
                   headers={"Retry-After": "5"})


def _written_item(w: dict[str, Any], default_server: str) -> dict[str, Any]:
    return {"resourceType": w.get("resourceType"), "id": w.get("id"), "reference": w.get("reference"),
            "url": w.get("url"), "server": w.get("server") or default_server, "status": w.get("status")}


def _within_grants(entries: list[dict[str, Any]], granted_scope: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Drop the optional resources (Provenance, the document beside the ServiceRequests) the token may not
    create, with a note: scopes are asked per strategy, so a fallback strategy may lack them. Nothing refers to
    them, so no reference dangles."""
    from service.fhir.writeback import OPTIONAL_TYPES
    from service.smart.scopes import Grants

    grants = Grants.parse(granted_scope)
    kept, notes = [], []
    for e in entries:
        rtype = e["resource"]["resourceType"]
        if rtype in OPTIONAL_TYPES and not grants.can_create(rtype):
            notes.append(f"{rtype} not written: the EHR did not grant permission to create it "
                         f"(scope patient/{rtype}.c).")
            continue
        kept.append(e)
    return kept, notes


REVISING_STRATEGIES = ("full", "service-request-only")  # the ones that write a referral into the EHR


async def _revising(ehr: Any, entries: list[dict[str, Any]], existing: list[Any], signing: Any,
                    granted_scope: str | None, notes: list[str]) -> list[dict[str, Any]]:
    """The new set plus the updates that retire the open referral (service.fhir.revision), or WritebackError
    when the token may not update it or it cannot be read again (nothing written: never a second referral)."""
    from service.fhir.errors import FhirError
    from service.fhir.resources import instant
    from service.fhir.revision import read_current, revise
    from service.fhir.writeback import WritebackError
    from service.smart.scopes import Grants

    grants = Grants.parse(granted_scope) if granted_scope else None
    if grants is not None and not grants.allows("ServiceRequest", "u"):
        raise WritebackError("The EHR did not grant permission to update ServiceRequest (scope "
                             "patient/ServiceRequest.u), so the open exercise referral cannot be replaced; nothing "
                             "was written. Cancel it in the EHR, or ask for the permission, then sign again.",
                             status=403)
    try:
        current = await read_current(ehr, existing)
    except FhirError as exc:
        raise WritebackError(f"The open exercise referral could not be read again before replacing it, so nothing "
                             f"was written: {exc.message}", status=exc.status) from exc
    author = {"reference": signing.practitioner_ref, **({"display": signing.practitioner_display}
                                                         if signing.practitioner_display else {})}
    out = revise(entries, existing, current, signed_at=instant(signing.signed_at), author=author)
    # Retiring the old referral is what must happen; its Task, CarePlan and Goals are updated when the token
    # allows (with a note when not: the service then sees its referral revoked).
    kept = []
    for e in out:
        rtype = e["resource"]["resourceType"]
        if e.get("method") == "PUT" and grants is not None and not grants.allows(rtype, "u"):
            notes.append(f"{e['url']} was not updated (no permission to update {rtype}): its referral is revoked.")
            continue
        kept.append(e)
    return kept


def _unauthored(signing: Any) -> list[str]:
    """Says so when the written resources carry no notes because no author the PA IG allows is known."""
    from service.fhir.resources import note_author

    if note_author(signing) is not None:
        return []
    return ["The referral was written without its notes (your note, the requested setting, missing data): the "
            "HL7 Physical Activity IG needs a Practitioner or an Organization as their author, and the EHR's "
            "record of your role could not be read. The plan's own text (CarePlan narrative or the attached "
            "prescription) has them all."]


async def _sign_and_send(request: Request, rt: SmartRuntime, sid: str, sess: dict[str, Any], loaded: Loaded,
                         key: str, service: Any) -> tuple[dict[str, Any], int]:
    from service.audit import record_intent, record_writeback
    from service.clinical.rules import RULESET_VERSION
    from service.fhir.client import FhirClient
    from service.fhir.errors import FhirError
    from service.fhir.resources import (build_document_reference, build_prescription_resources,
                                        build_service_request_only)
    from service.fhir.signing import Signing
    from service.fhir.writeback import WritebackError, write_back
    from service.notify.dispatch import notify_after_write

    settings = rt.settings
    store = request.app.state.store
    draft = _current_draft(sid, sess, loaded)
    p, snap = draft.prescription, loaded.snapshot
    now = datetime.now(timezone.utc)
    strategy = loaded.strategy or "document"
    signing = Signing(key=key, practitioner_ref=sess["requester"], signed_at=now,
                      practitioner_display=sess.get("requester_display") or loaded.requester_display,
                      exercise_service_ref=service.reference, exercise_service_name=service.name,
                      encounter_ref=f"Encounter/{sess['encounter']}" if sess.get("encounter") else None,
                      ruleset_version=RULESET_VERSION, note_author_ref=loaded.note_author)
    entries: list[dict[str, Any]] = []
    document: Any = None
    if strategy in ("full", "care-coordination"):
        entries = build_prescription_resources(p, snap, signing)
        if strategy == "care-coordination":
            document = lambda refs: build_document_reference(p, snap, signing, refs)  # noqa: E731
    elif strategy == "service-request-only":
        entries = build_service_request_only(p, snap, signing)
    else:
        document = lambda refs: build_document_reference(p, snap, signing, refs)  # noqa: E731

    entries, ungranted = _within_grants(entries, sess.get("scope_granted"))
    existing = [o for o in loaded.open_referrals if o.ours and not o.written_by(entries)] \
        if strategy in REVISING_STRATEGIES else []
    request_id = getattr(request.state, "request_id", None) or request.headers.get("x-request-id")
    answer: dict[str, Any] = {"key": key, "strategy": strategy, "target": sess["iss"],
                              "signedAt": now.isoformat(), "requester": sess["requester"],
                              "draftVersion": draft.version, "written": [], "failed": [], "notes": []}
    status = 200
    # the intent is on record before anything is sent (a store that cannot take it stops the signing here)
    intent = await record_intent(store, signing_key=key, practitioner=sess["requester"],
                                 patient_ref=f"Patient/{sess['patient']}", strategy=strategy, target=sess["iss"],
                                 identifiers=intent_searches(entries, key, with_document=document is not None),
                                 session=sid, request_id=request_id, retention_days=settings.audit_retention_days)
    resume = bool(intent["interrupted"])
    cc = FhirClient(settings.care_coordination_fhir_url, timeout=settings.fhir_timeout_seconds) \
        if strategy == "care-coordination" and settings.care_coordination_fhir_url else None
    try:
        async with fhir_client(rt, store, sid, sess) as ehr:
            if existing:
                entries = await _revising(ehr, entries, existing, signing, sess.get("scope_granted"), ungranted)
            result = await write_back(ehr, entries, document, strategy=strategy, store=store, signing_key=key,
                                      care_coordination=cc, capability=loaded.capability, resume=resume,
                                      lock_ttl=settings.sign_lease_seconds,
                                      wait_seconds=settings.sign_wait_seconds)
            if not result.failed:
                answer["notifications"] = await notify_after_write(
                    settings=settings, store=store, keys=rt.keys, entries=entries, written=result.written,
                    previous_status={f"Task/{t.get('id')}": str(t.get("status")) for o in existing for t in o.tasks},
                    ehr=ehr, capability=loaded.capability)
        answer["written"] = [_written_item(w, sess["iss"]) for w in result.written]
        answer["failed"] = list(result.failed)
        answer["notes"] = ungranted + list(result.notes) + _unauthored(signing)
        if resume:
            found = sum(1 for w in result.written if w.get("status") == "existing")
            answer["notes"].insert(0, f"An earlier attempt at this signing was interrupted: the EHR was read by the "
                                      f"referral's identifiers; {found} resource(s) were already there and "
                                      f"{len(result.written) - found} were written now.")
        answer["status"] = "partial" if result.failed else "sent"
    except WritebackError as exc:
        status = exc.status if 400 <= exc.status < 600 else 502
        if status >= 500 and status != 504 and isinstance(exc.__cause__, FhirError):
            status = 502  # the EHR failed, not us: a 500 of theirs is our 502 (docs/smart-app.md "API errors")
        if status == 401:
            exc.message = "The EHR session has expired: launch the app again from the EHR. (" + exc.message + ")"
        if exc.result is not None:
            answer["written"] = [_written_item(w, sess["iss"]) for w in exc.result.written]
            answer["failed"] = list(exc.result.failed) or [exc.message]
        else:
            answer["failed"] = [exc.message]
        answer["status"] = "partial" if answer["written"] else "failed"
        answer.update(resourceType="OperationOutcome", issue=[
            {"severity": "error", "code": "processing", "diagnostics": exc.message}] + [
            {"severity": "error", "code": "invariant", "diagnostics": getattr(i, "message", str(i)),
             **({"expression": [i.path]} if getattr(i, "path", None) else {})} for i in exc.issues])
        if answer["written"]:
            status = 207
    finally:
        if cc is not None:
            await cc.aclose()
    audit = await record_writeback(store, practitioner=sess["requester"], patient_ref=f"Patient/{sess['patient']}",
                                   strategy=strategy, written=answer["written"], failed=answer["failed"],
                                   request_id=request_id, retention_days=settings.audit_retention_days,
                                   signing_key=key, intent=intent, how="resumed" if resume else "signed",
                                   settled=not (status >= 500 and not answer["written"]))
    answer["outcome"] = audit.get("outcome")
    log.info("smart sign: %s, %d written, %d failed", strategy, len(answer["written"]), len(answer["failed"]))
    return answer, status


def intent_searches(entries: list[dict[str, Any]], key: str, *, with_document: bool) -> list[str]:
    """`Type?search` for every resource the signing will write: how the EHR is read back after a crash."""
    from service import canonical
    from service.fhir.resources import identifier_value

    out = []
    for e in entries:
        rtype = e["resource"]["resourceType"]
        ine = e.get("ifNoneExist")
        if ine:
            out.append(f"{rtype}?{ine}")
    if with_document:
        out.append(f"DocumentReference?identifier={canonical.ID_PRESCRIPTION}|{identifier_value(key, 'document')}")
    return out
