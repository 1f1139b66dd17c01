"""A "full" exercise service's receiving endpoint, for the sandbox: `/sandbox/exercise-receiver/`.

What a real service with its own system would do on `POST …/notify`:
1. a notification from onco-exercise carries `Authorization: Bearer <JWT>`: verify it with onco-exercise's
   JWKS (fetched from its public URL), audience = this endpoint, and the body digest; refuse with 401 otherwise;
   one without a JWT can only be the FHIR server's own Subscription notification (handshake, heartbeat or
   id-only event): a hint, trusted only through what is then read from the server;
2. dedupe on the notification id (Bundle.id): a retry of one already handled is answered 200 and ignored;
3. read each `focus` Task and its referral from the sandbox FHIR server with its own access token (only URLs
   on that server are followed), and log what it found.
The log (no tokens, no patient names) is the page at `/sandbox/exercise-receiver/`; a switch there makes the
next deliveries fail (503) to show retries. The receiver's token comes straight from the sandbox authorization
server (a real service would use SMART Backend Services, client_credentials with a private_key_jwt).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from service.notify.bundle import focus_references
from service.notify.jwt import NotificationRejected, verify
from service.outcome import operation_outcome
from service.sandbox.ehr import check_csrf, html_errors, page

router = APIRouter(prefix="/sandbox/exercise-receiver", include_in_schema=False)

SERVICE_REF = "Organization/community-exercise-programme"
SERVICE_NAME = "Moving Forward Community Exercise Programme"
CLIENT_ID = "sandbox-exercise-receiver"
SCOPE = ("system/Task.rus system/ServiceRequest.rs system/Observation.crs system/DiagnosticReport.crs "
         "system/Organization.r")
NS_LOG = "sandbox-receiver-log"
NS_SEEN = "sandbox-receiver-seen"
NS_CONTROL = "sandbox-receiver-control"
MAX_BODY = 1_000_000
MAX_FOCUS = 20
KEEP = 7 * 86400.0
JWKS_SECONDS = 300.0

_jwks_cache: dict[str, tuple[float, dict[str, Any]]] = {}


def endpoint(public_url: str) -> str:
    return f"{public_url}/sandbox/exercise-receiver/notify"


def service_entry(public_url: str) -> dict[str, str]:
    """The receiver as an entry of ONCO_EXERCISE_EXERCISE_SERVICES (the sandbox adds it)."""
    return {"reference": SERVICE_REF, "name": SERVICE_NAME, "endpoint": endpoint(public_url)}


def receiver_token(request: Request) -> str:
    """The receiver's own access token on the sandbox FHIR server (system scopes, its own client id)."""
    from service.sandbox.auth_server import mint_access_token

    return mint_access_token(SCOPE, client_id=CLIENT_ID, app=request)


async def _jwks(public_url: str, refresh: bool = False) -> dict[str, Any]:
    url = f"{public_url}/.well-known/jwks.json"
    cached = _jwks_cache.get(url)
    if cached and not refresh and cached[0] > time.monotonic():
        return cached[1]
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(url)
        r.raise_for_status()
        doc = r.json()
    _jwks_cache[url] = (time.monotonic() + JWKS_SECONDS, doc)
    return doc


async def _log(request: Request, entry: dict[str, Any]) -> None:
    key = f"{time.time():017.6f}-{uuid.uuid4().hex[:8]}"
    at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    await request.app.state.store.put(NS_LOG, key, {"at": at, **entry}, ttl=KEEP)


def _ok(message: str) -> JSONResponse:
    return JSONResponse({"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": message}]},
        media_type="application/fhir+json")


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse(operation_outcome(message, status=status, code="security" if status == 401 else
                                          "processing"), status_code=status, media_type="application/fhir+json")


async def _verified(request: Request, body: bytes, token: str) -> dict[str, Any]:
    settings = request.app.state.settings
    aud = endpoint(settings.public_url)
    try:
        return verify(token, body, await _jwks(settings.public_url), issuer=settings.public_url, audience=aud)
    except NotificationRejected:  # perhaps a rotated key: fetch the JWKS once more
        return verify(token, body, await _jwks(settings.public_url, refresh=True), issuer=settings.public_url,
                      audience=aud)


async def _fetch(request: Request, refs: list[str]) -> list[dict[str, Any]]:
    """Each focus Task and its referral, read with the receiver's own token (sandbox FHIR URLs only)."""
    base = request.app.state.settings.sandbox_fhir_base
    found = []
    headers = {"Authorization": f"Bearer {receiver_token(request)}", "Accept": "application/fhir+json"}
    async with httpx.AsyncClient(timeout=15, headers=headers) as client:
        for ref in refs[:MAX_FOCUS]:
            url = ref if ref.startswith(f"{base}/") else f"{base}/{ref}" if ref.startswith("Task/") else None
            if url is None:
                found.append({"task": ref, "error": "not on the EHR's FHIR server: not followed"})
                continue
            r = await client.get(url)
            if r.status_code != 200:
                found.append({"task": ref, "error": f"HTTP {r.status_code}"})
                continue
            task = r.json()
            item = {"task": f"Task/{task.get('id')}", "status": task.get("status"),
                    "owner": (task.get("owner") or {}).get("reference")}
            focus = (task.get("focus") or {}).get("reference")
            if isinstance(focus, str) and focus.startswith("ServiceRequest/"):
                sr = await client.get(f"{base}/{focus}")
                if sr.status_code == 200:
                    body = sr.json()
                    item.update(referral=focus, referralStatus=body.get("status"),
                                referralCode=((body.get("code") or {}).get("text")))
            found.append(item)
    return found


@router.post("/notify")
async def notify(request: Request) -> Response:
    body = await request.body()
    if len(body) > MAX_BODY:
        return _problem(413, "notification too large")
    store = request.app.state.store
    control = await store.get(NS_CONTROL, "fail") or {}
    if int(control.get("next", 0)) > 0:
        await store.put(NS_CONTROL, "fail", {"next": int(control["next"]) - 1})
        await _log(request, {"result": "simulated outage: answered 503"})
        return _problem(503, "simulated outage")
    try:
        bundle = orjson.loads(body)  # orjson refuses nesting deeper than 1024 (json.loads recursed out)
    except (ValueError, RecursionError):
        return _problem(400, "the body is not JSON")
    if not isinstance(bundle, dict):
        return _problem(400, "the body is not a FHIR Bundle")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        try:
            claims = await _verified(request, body, auth[7:].strip())
        except (NotificationRejected, httpx.HTTPError) as exc:
            reason = exc.message if isinstance(exc, NotificationRejected) else "our JWKS could not be fetched"
            await _log(request, {"result": f"rejected: {reason}"})
            return _problem(401, f"notification rejected: {reason}")
        source, nid = "onco-exercise (JWT verified)", str(claims["notification_id"])
        if nid != bundle.get("id"):
            await _log(request, {"result": "rejected: notification id differs from the Bundle id"})
            return _problem(401, "notification id differs from the Bundle id")
    else:
        source, nid = "FHIR server Subscription (unsigned: a hint, confirmed by reading)", None
    refs = focus_references(bundle)
    if nid is not None and not await store.add(NS_SEEN, nid, {"at": time.time()}, ttl=KEEP):
        await _log(request, {"result": "duplicate ignored", "notificationId": nid, "source": source})
        return _ok("already received")
    fetched = await _fetch(request, refs) if refs else []
    await _log(request, {"result": "received" if refs else "received (no event: handshake or heartbeat)",
                         "notificationId": nid, "source": source, "events": fetched})
    return _ok("received")


async def received(store: Any) -> list[dict[str, Any]]:
    """The log, oldest first."""
    return [v for _, v in await store.scan(NS_LOG)]


@router.get("/", response_class=HTMLResponse)
@html_errors
async def log_page(request: Request) -> HTMLResponse:
    store = request.app.state.store
    entries = list(reversed(await received(store)))
    control = await store.get(NS_CONTROL, "fail") or {}
    return page(request, "receiver/log.html", {"entries": entries, "fail_next": int(control.get("next", 0)),
                                                "endpoint": endpoint(request.app.state.settings.public_url),
                                                "name": SERVICE_NAME, "ref": SERVICE_REF})


@router.post("/control")
@html_errors
async def control(request: Request) -> Response:
    form = await check_csrf(request)
    try:
        n = max(0, min(int(form.get("fail_next", "0")), 10))
    except ValueError:
        n = 0
    await request.app.state.store.put(NS_CONTROL, "fail", {"next": n})
    return RedirectResponse("/sandbox/exercise-receiver/", 303)
