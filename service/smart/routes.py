"""SMART routes: launch, callback, the app page, the patient handout, static files and the app's JWKS.

The JSON API the page uses lives in `api.py`; it is included here so `service.app` wires one router.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from service.smart import api
from service.smart.idtoken import IdTokenError, requester_ref, validate_id_token
from service.smart.launch import (STATE_NS, STATE_TTL, Discovery, LaunchError, authorize_url, build_scopes,
                                  discover, fetch_capability, new_pkce_verifier, new_state, planned_writes)
from service.smart.load import start_loading
from service.smart.pages import error_page, json_for_script, no_store, render, static_file
from service.smart.runtime import lifespan, of
from service.smart.scopes import CONFIGURED, missing, next_tier
from service.smart.sessions import (SESSION_NS, TOKEN_NS, SessionNotFound, browser_binding,
                                    ensure_browser_cookie, load_session, new_csrf_token, new_session_id)
from service.smart.tokens import TokenError, exchange_code, token_record

log = logging.getLogger("service.smart")

router = APIRouter(lifespan=lifespan)
router.include_router(api.router)

MAX_ISS = 2048  # a URL
# `launch` and `code` are opaque and some servers make them self-contained JWTs (the reference launcher's codes
# run from about 1,000 to over 2,000 characters, the longer with the client's JWKS inline): a bound real ones
# never reach, below what the HTTP layer accepts for a whole request line (h11: 16 KiB), so that a longer value
# gets a readable page.
MAX_OPAQUE = 10_000
APP_CONTEXT_KEYS = ("cardUuid", "serviceId", "kind", "hookInstance", "encounterId")


def redirect_uri(request: Request) -> str:
    return f"{request.app.state.settings.public_url}/smart/callback"


@router.get("/.well-known/jwks.json", include_in_schema=False)
async def jwks(request: Request) -> JSONResponse:
    """The app's public keys (for EHRs that registered it as a private_key_jwt client)."""
    return JSONResponse(of(request).keys.public_jwks(), headers={"Cache-Control": "public, max-age=300"})


@router.get("/smart/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    return static_file(name)


# ---------------------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------------------


@router.get("/smart/launch", include_in_schema=False)
async def launch(request: Request, iss: str | None = None, launch: str | None = None) -> Response:
    return await begin_launch(request, iss, launch)


async def begin_launch(request: Request, iss: str | None, launch: str | None, *, patient: bool = False) -> Response:
    """Check `iss` against the allowlist, discover its authorization server, and send the browser there (an EHR
    launch with `launch`, a standalone one without; `patient`: the patient companion's standalone launch)."""
    settings = request.app.state.settings
    rt = of(request)
    if launch is not None and not iss:
        return error_page(400, "Launch refused", "The EHR launch did not name its FHIR server (iss).",
                          relaunch=True)
    if not iss:
        if len(settings.fhir_servers) == 1:
            iss = settings.fhir_servers[0]
        else:
            return render("choose.html", servers=settings.fhir_servers,
                          action="/patient/launch" if patient else "/smart/launch")
    if len(iss) > MAX_ISS or (launch is not None and (len(launch) > MAX_OPAQUE or not launch.strip())):
        return error_page(400, "Launch refused", "The launch parameters are malformed.", relaunch=True)
    if not settings.fhir_allowed(iss):
        log.warning("smart launch refused: iss not on the allowlist")
        return error_page(400, "Launch refused",
                          "This app is not configured to work with the FHIR server that launched it. "
                          "Ask your EHR administrator to add that server to ONCO_EXERCISE_FHIR_SERVERS.",
                          details=[f"FHIR server (iss): {iss}"])
    iss = iss.strip().rstrip("/")
    try:
        capability, disc = await asyncio.gather(fetch_capability(rt.http, iss), discover(rt.http, iss))
    except LaunchError as exc:
        return error_page(exc.status, "Cannot reach the EHR's sign-in service", exc.message, relaunch=True)
    writes = [] if patient else planned_writes(capability, settings.writeback_strategy,
                                               bool(settings.care_coordination_fhir_url))
    mode = "patient" if patient else "ehr" if launch else "standalone"
    response = RedirectResponse("/", status_code=302)  # the location is set once the state is stored
    binding = ensure_browser_cookie(request, response, settings)
    tier = CONFIGURED if settings.smart_scopes.strip() else "full"
    response.headers["location"] = await start_authorization(request, {
        "browser": binding, "iss": iss, "launch": launch, "writes": writes, "discovery": disc.to_json(),
        "mode": mode}, tier)
    log.info("smart launch (%s) redirecting to the authorization endpoint", mode)
    return no_store(response)


async def start_authorization(request: Request, launch_rec: dict[str, Any], tier: str) -> str:
    """Store a new single-use state (with its PKCE verifier and this launch's facts) and return the authorize
    URL asking for the scopes of `tier`."""
    settings = request.app.state.settings
    disc = Discovery(**launch_rec["discovery"])
    if launch_rec["mode"] == "patient":
        from service.patient.scopes import patient_scopes

        scopes = patient_scopes(v1=disc.v1_only, refresh=disc.refresh_scope)
    else:
        scopes = build_scopes(disc, launch_rec["writes"], ehr_launch=launch_rec["launch"] is not None, tier=tier,
                              configured=settings.smart_scopes)
    state, verifier = new_state(), new_pkce_verifier()
    url = authorize_url(disc, client_id=settings.smart_client_id, redirect_uri=redirect_uri(request),
                        scopes=scopes, state=state, verifier=verifier, aud=launch_rec["iss"],
                        launch=launch_rec["launch"])
    await request.app.state.store.put(STATE_NS, state, {
        **launch_rec, "verifier": verifier, "scopes": scopes, "tier": tier, "created": time.time()}, ttl=STATE_TTL)
    return url


async def _ask_again_with_fewer_scopes(request: Request, rec: dict[str, Any], reason: str) -> Response:
    """The authorization server refused the scopes (`invalid_scope`) instead of trimming them: ask for the next
    smaller tier, remembering what was dropped so the app can say what is missing; after `minimum`, explain."""
    tier = rec.get("tier", "full")
    smaller = next_tier(tier)
    if smaller is None:
        return error_page(403, "The EHR refused the app's permissions",
                          "The EHR refused even the minimum permissions this app needs to show a prescription. "
                          "Ask your EHR administrator to register the app with at least the scopes below.",
                          details=[f"minimum scopes: {' '.join(rec['scopes'])}", f"the EHR said: {reason}"],
                          relaunch=True)
    previous = rec.get("fallback") or {}
    fewer = build_scopes(Discovery(**rec["discovery"]), rec["writes"], ehr_launch=rec["launch"] is not None,
                         tier=smaller)
    fallback = {"tier": smaller, "first": previous.get("first") or tier, "reason": reason,
                "dropped": sorted(set(previous.get("dropped") or []) | (set(rec["scopes"]) - set(fewer)))}
    launch_rec = {k: rec[k] for k in ("browser", "iss", "launch", "writes", "discovery", "mode")}
    url = await start_authorization(request, {**launch_rec, "fallback": fallback}, smaller)
    log.info("smart callback: the EHR refused the %s scopes; asking for the %s set", tier, smaller)
    return no_store(RedirectResponse(url, status_code=302))


# ---------------------------------------------------------------------------------------------------------
# Callback
# ---------------------------------------------------------------------------------------------------------


def _app_context(raw: Any) -> dict[str, Any] | None:
    """The CDS card's appContext (a JSON string per CDS Hooks 2.0), reduced to the keys we understand."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, dict):
        return None
    return {k: raw[k] for k in APP_CONTEXT_KEYS if isinstance(raw.get(k), (str, int, bool))}


@router.get("/smart/callback", include_in_schema=False)
async def callback(request: Request, state: str | None = None, code: str | None = None,
                   error: str | None = None, error_description: str | None = None) -> Response:
    settings = request.app.state.settings
    store = request.app.state.store
    rt = of(request)
    if not state or len(state) > 200:
        return error_page(400, "Sign-in refused", "The EHR's answer carries no valid state.", relaunch=True)
    rec = await store.pop(STATE_NS, state)  # single use: a replayed callback finds nothing
    if rec is None:
        log.warning("smart callback: unknown, reused or expired state")
        return error_page(400, "Sign-in refused",
                          "This sign-in answer is unknown, was already used, or has expired.", relaunch=True)
    binding = browser_binding(request)
    if binding is None or binding != rec.get("browser"):
        log.warning("smart callback: state bound to another browser")
        return error_page(400, "Sign-in refused",
                          "This sign-in was started in another browser (or its cookie was lost).", relaunch=True)
    if error:
        text = (error_description or error)[:300]
        if error == "invalid_scope" and rec["mode"] != "patient":
            return await _ask_again_with_fewer_scopes(request, rec, text)
        return error_page(403 if error == "access_denied" else 400, "The EHR did not authorize the app", text,
                          relaunch=True)
    if not code:
        return error_page(400, "Sign-in refused", "The EHR's answer carries no authorization code.", relaunch=True)
    if len(code) > MAX_OPAQUE:
        return error_page(400, "Sign-in refused", f"The EHR's authorization code is longer than this app accepts "
                          f"({len(code):,} characters; the limit is {MAX_OPAQUE:,}).", relaunch=True)

    disc = Discovery(**rec["discovery"])
    cfg = rt.client_config()
    try:
        token = await exchange_code(cfg, disc.token_endpoint, code, redirect_uri(request), rec["verifier"],
                                    transport=rt.transport)
    except TokenError as exc:
        log.warning("smart callback: token exchange refused (%s)", exc.error)
        return error_page(502 if exc.error in ("temporarily_unavailable", "invalid_response") else 400,
                          "The EHR refused the sign-in", str(exc), relaunch=True,
                          details=[f"error: {exc.error}"] if exc.error else None)

    patient = token.get("patient")
    if not isinstance(patient, str) or not patient.strip():
        return error_page(400, "No patient selected",
                          "The EHR did not say which patient this app is for (no patient context). Open the app "
                          "from a patient's chart, or pick a patient when asked.", relaunch=True)
    requested = rec["scopes"]
    granted = token.get("scope") if isinstance(token.get("scope"), str) else " ".join(requested)

    fhir_user: str | None = None
    display: str | None = None
    id_token = token.get("id_token")
    if isinstance(id_token, str):
        try:
            claims = await validate_id_token(rt.http, id_token, client_id=cfg.client_id, issuer=disc.issuer,
                                             jwks_uri=disc.jwks_uri)
        except IdTokenError as exc:
            log.warning("smart callback: id_token rejected (%s)", exc)
            return error_page(400, "Sign-in refused", f"The EHR's identity token is not valid: {exc}.",
                              relaunch=True)
        fhir_user = claims.get("fhirUser") or claims.get("profile")
        display = claims.get("name") if isinstance(claims.get("name"), str) else None

    if rec["mode"] == "patient":
        from service.patient.routes import start_patient_session

        return await start_patient_session(request, rec, token, patient.strip(), granted, fhir_user, binding)
    app_context = _app_context(token.get("appContext"))
    encounter = token.get("encounter") or (app_context or {}).get("encounterId")
    need_banner = token.get("need_patient_banner")
    sid = new_session_id()
    now = time.time()
    sess: dict[str, Any] = {
        "browser": binding, "iss": rec["iss"], "token_endpoint": disc.token_endpoint, "mode": rec["mode"],
        "patient": patient.strip(), "encounter": encounter if isinstance(encounter, str) else None,
        "need_patient_banner": True if need_banner is None else bool(need_banner),
        "intent": token.get("intent"), "app_context": app_context,
        "scope_requested": " ".join(requested), "scope_granted": granted,
        "missing_scopes": missing(requested, granted), "scope_fallback": rec.get("fallback"),
        "fhir_user": fhir_user if isinstance(fhir_user, str) else None,
        "requester": requester_ref(fhir_user if isinstance(fhir_user, str) else None, rec["iss"]),
        "requester_display": display, "csrf": new_csrf_token(), "created": now, "draft_version": 0,
    }
    ttl = settings.session_ttl_seconds
    await store.put(TOKEN_NS, sid, token_record(token, now), ttl=ttl)
    await store.put(SESSION_NS, sid, sess, ttl=ttl)
    start_loading(rt, store, sid, sess)
    log.info("smart callback: session started (%s launch, %d scopes missing)", rec["mode"],
             len(sess["missing_scopes"]))
    return no_store(RedirectResponse(f"/smart/app?s={sid}", status_code=303))


# ---------------------------------------------------------------------------------------------------------
# The app and the handout
# ---------------------------------------------------------------------------------------------------------


async def _page_session(request: Request, s: str | None) -> tuple[dict[str, Any] | None, Response | None]:
    try:
        return await load_session(request.app.state.store, s, browser_binding(request)), None
    except SessionNotFound:
        return None, error_page(401, "Session expired",
                                "This app session has expired or belongs to another browser.", relaunch=True)


@router.get("/smart/app", include_in_schema=False)
async def app_page(request: Request, s: str | None = None) -> Response:
    sess, err = await _page_session(request, s)
    if err is not None:
        return err
    assert sess is not None and s is not None
    initial = None
    rt = of(request)
    if s in rt.cache:  # ready: embed the view so the page needs no second round trip
        initial = await api.view_or_none(request, s, sess)
    from service.clinical.model import SETTING_ORDER
    from service.terminology import setting_name

    return render("app.html", sid=s, csrf=sess["csrf"], setting_names=[(c, setting_name(c)) for c in SETTING_ORDER],
                  initial=json_for_script(initial) if initial is not None else None)


@router.get("/smart/handout", include_in_schema=False)
async def handout(request: Request, s: str | None = None) -> Response:
    sess, err = await _page_session(request, s)
    if err is not None:
        return err
    assert sess is not None and s is not None
    view = await api.view_or_none(request, s, sess, wait=True)
    if view is None:
        return error_page(502, "The prescription is not available",
                          "The patient's data could not be loaded from the EHR.", relaunch=True)
    settings = request.app.state.settings
    return render("handout.html", view=view, sid=s, h=_handout(view["prescription"], settings),
                  companion_url=f"{settings.public_url}/patient/launch")


def _handout(rx_json: dict[str, Any], settings: Any) -> Any:
    from service.clinical.handout import handout_for, patient_wording
    from service.clinical.serialize import prescription_from_json

    p = prescription_from_json(rx_json)
    return handout_for(p, service_name=settings.exercise_service_name,
                       service_contact=settings.exercise_service_contact,
                       care_team_contact=settings.care_team_contact,
                       precaution_text=patient_wording([x.code for x in p.precautions]))
