"""CDS Hooks 2.0 HTTP surface: discovery, the two hook services, feedback.

Thin by design: validate (models), authenticate (auth), get the data (prefetch), ask the clinical core,
pick at most one card (cards), stay quiet when it was just shown (followup). Bodies are read and written as
raw JSON bytes: the hot path does no model validation of the ~100 KB prefetch and no per-call key loading.
Every non-2xx answer carries an OperationOutcome (401s a generic one).
"""

from __future__ import annotations

import asyncio
import time
import functools
import logging
import traceback
from datetime import datetime, timezone
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response

from service import metrics
from service.outcome import operation_outcome

from . import followup
from .auth import ClientVerifier, Unauthorized
from .cards import CardContext, CardPlan, decide, quiet_card
from .discovery import PATIENT_VIEW_ID, SERVICES, discovery_bytes
from .feedback import store_feedback
from .models import HookRequest, RequestInvalid, parse_feedback, parse_hook_request
from .prefetch import DataUnavailable, HookData, gather, prefetch_complete, screen

log = logging.getLogger("service.cds_hooks")

router = APIRouter(tags=["CDS Hooks"])

JSON = "application/json"
EMPTY_CARDS = b'{"cards":[]}'

_HOOK_BODY = {
    "requestBody": {"required": True, "content": {JSON: {"schema": {
        "type": "object", "required": ["hook", "hookInstance", "context"],
        "properties": {"hook": {"type": "string"}, "hookInstance": {"type": "string", "format": "uuid"},
                       "context": {"type": "object"}, "prefetch": {"type": "object"},
                       "fhirServer": {"type": "string"}, "fhirAuthorization": {"type": "object"}}}}}},
    "responses": {"200": {"description": "cards"}, "400": {"description": "invalid request"},
                  "401": {"description": "client JWT refused"}, "404": {"description": "unknown service"},
                  "412": {"description": "the data needed could not be obtained"}},
}
_FEEDBACK_BODY = {
    "requestBody": {"required": True, "content": {JSON: {"schema": {
        "type": "object", "required": ["feedback"],
        "properties": {"feedback": {"type": "array", "items": {"type": "object"}}}}}}},
    "responses": {"200": {"description": "stored"}, "400": {"description": "invalid feedback"},
                  "401": {"description": "client JWT refused"}, "404": {"description": "unknown service"}},
}


def outcome(status: int, code: str, message: str | None = None, path: str | None = None,
            headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(operation_outcome(message, status=status, code=code, location=path))
    return Response(body, status_code=status, media_type="application/fhir+json", headers=headers)


def _verifier(app: FastAPI) -> ClientVerifier:
    v = getattr(app.state, "cds_verifier", None)
    if v is None:
        v = app.state.cds_verifier = ClientVerifier(app.state.settings, app.state.store)
    v.signatures = getattr(app.state, "signature_process", None)  # this lifespan's (None outside one)
    return v


async def _refused(request: Request, path: str) -> Response | None:
    """None when the caller is a trusted CDS client, else the 401 (with no client list: always the 401)."""
    settings = request.app.state.settings
    try:
        await _verifier(request.app).verify(request.headers.get("authorization"), f"{settings.public_url}{path}")
    except Unauthorized as exc:
        log.info("cds client refused: %s", exc)  # the reason only; never the token
        _refusal(exc)
        return outcome(401, "login", "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return None


async def _body(request: Request) -> bytes | Response:
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return outcome(413, "too-costly", "request body too large")
    body = await request.body()
    if len(body) > limit:
        return outcome(413, "too-costly", "request body too large")
    return body


@router.get("/cds-services", summary="CDS Hooks discovery")
async def discovery(request: Request) -> Response:
    refused = await _refused(request, "/cds-services")
    if refused is not None:
        return refused
    return Response(discovery_bytes(), media_type=JSON)


def _decide(req: HookRequest, data: HookData, service_id: str, request: Request, now: datetime) -> CardPlan:
    from service.clinical.lookback import hook_lookback
    from service.clinical.snapshot import build_snapshot

    settings = request.app.state.settings
    snapshot = build_snapshot(data.items, now, lookback=hook_lookback())
    prescription = None
    if snapshot.has_cancer:
        from service.clinical.prescribe import prescribe

        prescription = prescribe(snapshot, now)
    return decide(prescription, snapshot, _context(req, service_id, settings), complete=data.complete,
                  missing=data.missing, budget=settings.hook_budget_seconds)


def _context(req: HookRequest, service_id: str, settings: Any) -> CardContext:
    return CardContext(service_id=service_id, public_url=settings.public_url,
                       exercise_service_ref=settings.exercise_service_ref, user_ref=req.user_id,
                       hook_instance=req.hook_instance, encounter_id=req.encounter_id)


async def _start_auth(request: Request, path: str) -> Response | asyncio.Task[bool]:
    """Verify the JWT now (before the body is read); its replay-cache write starts in the background (it
    overlaps with parsing and the rules, and is always awaited before anything is answered or fetched)."""
    settings = request.app.state.settings
    verifier = _verifier(request.app)
    try:
        iss, claims = await verifier.verify_token(request.headers.get("authorization"),
                                                  f"{settings.public_url}{path}")
    except Unauthorized as exc:
        log.info("cds client refused: %s", exc)
        _refusal(exc)
        return _unauthorized()
    task = asyncio.create_task(_fresh_jti(verifier, iss, claims))
    await asyncio.sleep(0)  # let the store write begin: it overlaps with the parsing and the rules below
    return task


async def _fresh_jti(verifier: ClientVerifier, iss: str, claims: dict[str, Any]) -> bool:
    if not await verifier.consume_jti(iss, claims):
        log.info("cds client refused: replayed jti")
        metrics.JWT_REFUSALS.labels("replayed jti").inc()
        return False
    return True


def _refusal(exc: Unauthorized) -> None:
    """Count a refused client JWT by its reason (a fixed set of short phrases, never token content)."""
    metrics.JWT_REFUSALS.labels(str(exc)[:40]).inc()


def _unauthorized() -> Response:
    return outcome(401, "login", "Unauthorized", headers={"WWW-Authenticate": "Bearer"})


@router.post("/cds-services/{service_id}", summary="CDS Hooks service call", openapi_extra=_HOOK_BODY)
async def call_service(service_id: str, request: Request) -> Response:
    began = time.perf_counter()
    response: Response | None = None
    try:
        response = await _call_service(service_id, request)
        return response
    finally:
        label = service_id if service_id in SERVICES else "<unknown>"
        _hook_metrics(label, response.status_code if response is not None else 503)[0].inc()
        _hook_metrics(label, 0)[1].observe(time.perf_counter() - began)


async def _call_service(service_id: str, request: Request) -> Response:
    started = await _start_auth(request, f"/cds-services/{service_id}")
    if isinstance(started, Response):
        return started
    try:
        response, shown = await _answer(service_id, request, started)
    finally:
        trusted = await started  # never answer before the replay check
    if not trusted:
        return _unauthorized()
    if shown is not None:
        store, pkey, plan, req = shown
        user_id = req.user_id
        # The atomic claim decides whether this call shows the card (of two concurrent hooks for the same
        # patient, one wins); a store failure must not cost the card, so a failed claim shows it anyway.
        window = request.app.state.settings.card_repeat_hours * 3600
        if await _best_effort(followup.claim(store, pkey, plan, service_id, user_id, repeat_window=window)) is False:
            return await _quiet(request, service_id, store, pkey, plan, req)
        # The card record (for feedback to find the card) is written after answering: feedback arrives
        # seconds later at the earliest, and on this process it queues behind this write on the store's lock.
        _in_background(followup.remember(store, pkey, plan, service_id))
        _cards_metric(service_id, plan.kind).inc()
    return response


async def _quiet(request: Request, service_id: str, store: Any, pkey: str, plan: CardPlan,
                 req: HookRequest) -> Response:
    """A card kept quiet: nothing on encounter-start (or when its twin was just shown); on patient-view, a short
    card that keeps the app one click away and says when the suggestion was shown or dismissed."""
    if service_id != PATIENT_VIEW_ID or plan.kind in followup.PER_USER or plan.card is None:
        return Response(EMPTY_CARDS, media_type=JSON)
    record = await _best_effort(followup.why_quiet(store, pkey, plan, req.user_id))
    if followup.is_twin(record):
        return Response(EMPTY_CARDS, media_type=JSON)
    _cards_metric(service_id, "reminder").inc()
    card = quiet_card(_context(req, service_id, request.app.state.settings), record)
    return Response(orjson.dumps({"cards": [card]}), media_type=JSON)


_BACKGROUND: set[asyncio.Task[Any]] = set()


def _in_background(awaitable: Any) -> None:
    task = asyncio.ensure_future(_best_effort(awaitable))
    _BACKGROUND.add(task)  # a strong reference until done (the loop keeps only weak ones)
    task.add_done_callback(_BACKGROUND.discard)


@functools.lru_cache(maxsize=256)
def _hook_metrics(service_id: str, status: int) -> tuple[Any, Any]:
    """(calls counter for this status, latency histogram) children, built once per label set."""
    return metrics.HOOK_CALLS.labels(service_id, str(status)), metrics.HOOK_LATENCY.labels(service_id)


@functools.lru_cache(maxsize=64)
def _cards_metric(service_id: str, kind: str) -> Any:
    return metrics.CARDS.labels(service=service_id, kind=kind)  # labels() locks and builds keys: once per pair


async def _best_effort(awaitable: Any) -> Any:
    """Card history is a courtesy (suppression, feedback linking): a store failure must not cost the card."""
    try:
        return await awaitable
    except Exception as exc:  # noqa: BLE001
        log.warning("cds card history unavailable: %s", type(exc).__name__)
        return None


async def _answer(service_id: str, request: Request,
                  jti: asyncio.Task[bool]) -> tuple[Response, tuple[Any, ...] | None]:
    service = SERVICES.get(service_id)
    if service is None:
        return outcome(404, "not-found", f"no CDS service with id '{service_id}'"), None
    body = await _body(request)
    if isinstance(body, Response):
        return body, None
    try:
        req = parse_hook_request(body, service.hook)
    except RequestInvalid as exc:
        return outcome(400, "invalid", exc.message, exc.path), None

    now = datetime.now(timezone.utc)
    screened = screen(req)  # once, for both questions below (~0.03 ms a pass over a 200-resource prefetch)
    if not prefetch_complete(req, screened) and not await jti:
        return _unauthorized(), None  # a replayed call never makes us read from a FHIR server
    try:
        data = await gather(req, request.app.state.settings, now, screened)
    except DataUnavailable as exc:
        return outcome(412, "incomplete", str(exc)), None
    if data.eligibility_unknown:
        # The Patient or Conditions did not arrive within the budget: we cannot tell whether this is an
        # oncology patient, and a card built on a guess would be worse than none.
        log.info("hook %s: eligibility unknown within the budget; no card", req.hook_instance)
        return Response(EMPTY_CARDS, media_type=JSON), None
    try:
        plan = _decide(req, data, service_id, request, now)
    except ValueError as exc:  # the clinical core could not read the data it was given
        log.info("hook %s: unreadable patient data (%s)", req.hook_instance, type(exc).__name__)
        return outcome(400, "invalid", "the prefetch data could not be read as FHIR R4 patient data"), None
    except Exception as exc:  # noqa: BLE001 - an OperationOutcome, never a traceback or silently no card
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        log.error("hook %s failed: %s at %s:%s", req.hook_instance, type(exc).__name__, frame.filename,
                  frame.lineno)
        return outcome(500, "exception", "the CDS service failed to evaluate this patient"), None
    if plan.card is None:
        return Response(EMPTY_CARDS, media_type=JSON), None
    pkey = followup.patient_key(req.fhir_server, req.patient_id)
    return Response(orjson.dumps({"cards": [plan.card]}), media_type=JSON), (request.app.state.store, pkey, plan,
                                                                             req)


@router.post("/cds-services/{service_id}/feedback", summary="CDS Hooks feedback", openapi_extra=_FEEDBACK_BODY)
async def feedback(service_id: str, request: Request) -> Response:
    refused = await _refused(request, f"/cds-services/{service_id}/feedback")
    if refused is not None:
        return refused
    if service_id not in SERVICES:
        return outcome(404, "not-found", f"no CDS service with id '{service_id}'")
    body = await _body(request)
    if isinstance(body, Response):
        return body
    try:
        items = parse_feedback(body)
        await store_feedback(request.app.state.store, service_id, items)
    except RequestInvalid as exc:
        return outcome(400, "invalid", exc.message, exc.path)
    return Response(status_code=200)
