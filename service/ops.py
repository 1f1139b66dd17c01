"""Operations: /healthz, /readyz, /metrics, and the one middleware every request passes through.

`OpsMiddleware` is plain ASGI (no BaseHTTPMiddleware: no extra task, no body copies) because it sits on the
hot path of every CDS Hooks call. In one pass it assigns the request id, enforces the body size limit (also
for chunked bodies), the header count and the pause allowed between body pieces, adds security headers,
answers a state-store outage with 503 (an OperationOutcome, or a readable page for the app's pages), turns
unhandled exceptions into an OperationOutcome without a stack trace, and records metrics per route
*template* (never raw paths: they can hold ids). A client that goes away mid-request is counted, not logged
as an error.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.asgi import read_limited, replay
from service.config import Settings
from service.logs import install_redaction, request_id_var
from service.metrics import HTTP_CLIENT_GONE, HTTP_LATENCY, HTTP_REQUESTS, REGISTRY
from service.outcome import operation_outcome
from service.state import StoreUnavailable

log = logging.getLogger("onco_exercise.ops")
access_log = logging.getLogger("onco_exercise.access")

REQUEST_ID_HEADER = "X-Request-ID"
READY_CACHE_SECONDS = 5.0
GC_GEN0_THRESHOLD = 10_000
_RID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


# -- OperationOutcome errors ----------------------------------------------------------------------------------

def outcome_response(status: int, message: str, *, code: str | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(operation_outcome(message, status=status, code=code), status_code=status, headers=headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    detail = exc.detail
    if isinstance(detail, dict) and detail.get("resourceType") == "OperationOutcome":
        return JSONResponse(detail, status_code=exc.status_code, headers=exc.headers)
    return outcome_response(exc.status_code, str(detail), headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """400 with one issue per problem; the offending input is never echoed (it may hold PHI or tokens)."""
    assert isinstance(exc, RequestValidationError)
    issues = []
    for err in exc.errors()[:50]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        ctx_error = (err.get("ctx") or {}).get("error")
        if err.get("type") == "json_invalid" and ctx_error:
            msg = f"{msg}: {ctx_error}"
        issues.append({"severity": "error", "code": "invalid", "diagnostics": f"{loc}: {msg}" if loc else msg,
                       **({"expression": [loc]} if loc else {})})
    if not issues:
        issues = [{"severity": "error", "code": "invalid", "diagnostics": "invalid request"}]
    return JSONResponse({"resourceType": "OperationOutcome", "issue": issues}, status_code=400)


# -- the middleware --------------------------------------------------------------------------------------------

class BodyTimeout(Exception):
    """The client paused longer than the body timeout between two pieces of its request body."""


def _timed(receive: Receive, timeout: float) -> Receive:
    """`receive` with a limit on each wait while the body is still coming (afterwards, e.g. while a streaming
    response listens for a disconnect, waits are unlimited)."""
    done = False

    async def timed() -> Message:
        nonlocal done
        if done:
            return await receive()
        try:
            async with asyncio.timeout(timeout):  # a timer on this task, no extra task (unlike wait_for)
                message = await receive()
        except TimeoutError:
            raise BodyTimeout() from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            done = True
        return message

    return timed


_UNAVAILABLE_PAGE = (b"<!doctype html><html lang=en><meta charset=utf-8><title>Temporarily unavailable</title>"
                     b"<body style='font-family:system-ui,sans-serif;max-width:40em;margin:3em auto'>"
                     b"<h1>onco-exercise is temporarily unavailable</h1><p>The service cannot reach its session "
                     b"store right now. Nothing you entered has been sent. Please try again in a minute; if it "
                     b"persists, tell your IT service desk (the error is on the server side).</p></body></html>")


def _wants_page(scope: Scope) -> bool:
    path = scope.get("path", "")
    if path.startswith(("/smart/api/", "/cds-services", "/patient/api/")):
        return False
    for name, value in scope["headers"]:
        if name == b"accept":
            return b"text/html" in value
    return path.startswith(("/smart/", "/patient/", "/sandbox/")) and "/fhir" not in path


class OpsMiddleware:
    """Request id, limits, security headers, outage and exception safety nets, metrics and access log."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, hsts: bool, max_headers: int = 100,
                 body_timeout: float = 15.0) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_headers = max_headers
        self.body_timeout = body_timeout
        self.headers: list[tuple[bytes, bytes]] = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),  # launch and callback URLs carry one-time codes
            (b"cache-control", b"no-store"),  # responses hold PHI; routes that may be cached set their own
        ]
        if hsts:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid: str | None = None
        content_length: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value
            elif name == b"transfer-encoding":
                chunked = True
        if rid is None or not _RID_OK.fullmatch(rid):
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        root_path = scope.get("root_path", "")
        status = 500
        started = False
        extra = self.headers

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers") or ())
                present = {bytes(k).lower() for k, _ in headers}
                headers.append(rid_header)
                headers.extend(h for h in extra if h[0] not in present)
                message["headers"] = headers
            await send(message)

        try:
            if len(scope["headers"]) > self.max_headers:
                await _send_outcome(send_with_headers, 431, f"more than {self.max_headers} request header fields")
                return
            receive = _timed(receive, self.body_timeout)
            too_large = False
            if content_length is not None:
                try:
                    too_large = int(content_length) > self.max_body
                except ValueError:
                    too_large = False  # the server's HTTP parser rejects a malformed length itself
            elif chunked:
                body, too_large = await read_limited(receive, self.max_body)
                if not too_large:
                    receive = replay(body, receive)
            if too_large:
                await _send_outcome(send_with_headers, 413, f"request body is larger than {self.max_body} bytes")
            else:
                await self.app(scope, receive, send_with_headers)
        except StoreUnavailable:  # logged once per outage by service.state, not once per request
            status = 503
            if not started:
                await _send_unavailable(send_with_headers, scope)
        except BodyTimeout:
            status = 408
            HTTP_CLIENT_GONE.labels("body-timeout").inc()
            if not started:
                await _send_outcome(send_with_headers, 408, f"the request body paused for more than "
                                                            f"{self.body_timeout:g} s", close=True)
        except ClientDisconnect:
            status = 499  # nginx's convention: the client closed the connection before the answer
            HTTP_CLIENT_GONE.labels("disconnect").inc()
            log.debug("client went away mid-request")
        except Exception:  # noqa: BLE001 - the safety net: log (scrubbed) and answer without a stack trace
            log.exception("unhandled error")
            status = 500
            if not started:
                await _send_outcome(send_with_headers, 500, f"internal error (request id {rid})")
        finally:
            route = _route_label(scope, root_path)
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            elapsed = time.perf_counter() - start
            _count(method, route, status).inc()
            _latency(method, route).observe(elapsed)
            level = logging.DEBUG if route in _QUIET_ROUTES else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(level, "%s %s %d", method, route, status,
                               extra={"method": method, "route": route, "status": status,
                                      "duration_ms": round(elapsed * 1000, 2)})
            request_id_var.reset(token)


@functools.lru_cache(maxsize=4096)
def _count(method: str, route: str, status: int) -> Any:
    """Metric children cached per label set: `labels()` takes a lock and builds keys on every call."""
    return HTTP_REQUESTS.labels(method, route, str(status))


@functools.lru_cache(maxsize=2048)
def _latency(method: str, route: str) -> Any:
    return HTTP_LATENCY.labels(method, route)


def _route_label(scope: Scope, root_path: str) -> str:
    """The matched route's template (mount prefix included); never the raw path."""
    prefix = scope.get("root_path", "")[len(root_path):]
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path:
        return prefix + path
    if prefix:
        return prefix + "/{path}"
    return "<other>" if "endpoint" in scope else "<unmatched>"


async def _send_outcome(send: Send, status: int, message: str, *, close: bool = False) -> None:
    response = outcome_response(status, message, headers={"connection": "close"} if close else None)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


async def _send_unavailable(send: Send, scope: Scope) -> None:
    """503 with Retry-After: a readable page for a browser on the app's pages, else an OperationOutcome."""
    if _wants_page(scope):
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"retry-after", b"30"),
                   (b"content-length", str(len(_UNAVAILABLE_PAGE)).encode())]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": _UNAVAILABLE_PAGE})
        return
    response = outcome_response(503, "the service's state store is unavailable; try again in a minute",
                                code="transient", headers={"retry-after": "30"})
    await send({"type": "http.response.start", "status": 503, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class SelectiveCORS:
    """Starlette's CORS, except on paths `exempt(path)` names (e.g. the sandbox's pages and authorization
    endpoints): those answer no CORS headers at all, so other origins cannot read them."""

    def __init__(self, app: ASGIApp, exempt: Any = None, **options: Any) -> None:
        self.app = app
        self.exempt = exempt
        self.cors = CORSMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.exempt is not None and self.exempt(scope.get("path", "")):
            await self.app(scope, receive, send)
        else:
            await self.cors(scope, receive, send)


# -- readiness ---------------------------------------------------------------------------------------------

class Readiness:
    """Store ping and each FHIR server's /metadata, checked concurrently and cached for a few seconds."""

    def __init__(self, settings: Settings, cache_seconds: float = READY_CACHE_SECONDS) -> None:
        self.settings = settings
        self.cache_seconds = cache_seconds
        self._lock = asyncio.Lock()
        self._result: tuple[bool, dict[str, Any]] | None = None
        self._at = 0.0
        self.client: httpx.AsyncClient | None = None

    def servers(self) -> list[str]:
        urls = list(self.settings.fhir_servers)
        cc = self.settings.care_coordination_fhir_url
        if cc and cc not in urls:
            urls.append(cc)
        return urls

    async def check(self, store: Any) -> tuple[bool, dict[str, Any]]:
        if self._result is not None and time.monotonic() - self._at < self.cache_seconds:
            return self._result
        async with self._lock:  # one probe at a time; callers that waited get the fresh result
            if self._result is not None and time.monotonic() - self._at < self.cache_seconds:
                return self._result
            checks = await asyncio.gather(self._store(store), *(self._fhir(u) for u in self.servers()))
            ok = all(c["ok"] for c in checks)
            self._result = (ok, {"status": "ready" if ok else "not-ready", "checks": list(checks)})
            self._at = time.monotonic()
            return self._result

    async def _store(self, store: Any) -> dict[str, Any]:
        t = time.perf_counter()
        if store is None:
            return {"name": "store", "ok": False, "error": "store not open"}
        try:
            ok = bool(await asyncio.wait_for(store.ping(), timeout=2.0))
            err = None if ok else "ping failed"
        except Exception as exc:  # noqa: BLE001
            ok, err = False, type(exc).__name__
        out: dict[str, Any] = {"name": "store", "ok": ok, "ms": round((time.perf_counter() - t) * 1000, 1)}
        if err:
            out["error"] = err
        return out

    async def _fhir(self, base: str) -> dict[str, Any]:
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=min(3.0, self.settings.fhir_timeout_seconds))
        t = time.perf_counter()
        out: dict[str, Any] = {"name": "fhir", "url": base}
        try:
            r = await self.client.get(f"{base}/metadata", headers={"Accept": "application/fhir+json"})
            out["ok"] = r.status_code == 200
            out["status"] = r.status_code
        except httpx.HTTPError as exc:
            out["ok"] = False
            out["error"] = type(exc).__name__
        out["ms"] = round((time.perf_counter() - t) * 1000, 1)
        return out

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


# -- wiring ------------------------------------------------------------------------------------------------

def freeze_heap() -> None:
    """Move everything alive after start-up (modules, terminology, schemas, compiled validators) out of the
    cyclic garbage collector's reach (`gc.freeze`). Each hook call parses a ~120 KB prefetch into thousands of
    containers; enough of them outlive young collections that a full collection runs every ~75 calls, and a
    full collection walks the whole start-up heap: ~50-150 ms here, a latency spike and ~1 ms per call on
    average. Frozen objects are never collected; they live as long as the process anyway. The gen-0 threshold
    goes up too (fewer young collections walking the live parse tree).

    Runs as the last start-up step (ops installs last), after the other parts' warm-up; once per process (a
    second app in the same process, as in tests, adds little to freeze and would pay the full collection)."""
    if gc.get_freeze_count():
        return
    gc.collect()
    gc.freeze()
    # Young collections: ~4 per hook call at the default threshold (700), each walking the parse tree that is
    # alive at that moment; 10 000 allocations between them is still a small bound on uncollected cycles.
    gc.set_threshold(max(gc.get_threshold()[0], GC_GEN0_THRESHOLD), *gc.get_threshold()[1:])


def install(app: FastAPI, settings: Settings) -> None:
    """Endpoints, exception handlers and middleware; call once from create_app, before other routers."""
    install_redaction()
    readiness = Readiness(settings)
    app.state.readiness = readiness

    @asynccontextmanager
    async def close_readiness(_: FastAPI) -> AsyncIterator[None]:
        freeze_heap()
        try:
            yield
        finally:
            await readiness.aclose()

    parts = getattr(app.state, "lifespan_parts", None)
    if parts is not None:
        parts.append(close_readiness)

    @app.api_route("/healthz", methods=["GET", "HEAD"], include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Process is up and serving; says nothing about neighbours."""
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"], include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        ok, body = await readiness.check(getattr(request.app.state, "store", None))
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)

    # Added first = innermost: CORS answers preflights inside OpsMiddleware, so they get ids and metrics too.
    app.add_middleware(
        SelectiveCORS,
        exempt=getattr(app.state, "cors_exempt", None),
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
        expose_headers=[REQUEST_ID_HEADER],
        max_age=600,
    )
    app.add_middleware(OpsMiddleware, max_body_bytes=settings.max_body_bytes,
                       hsts=settings.public_url.startswith("https://"), max_headers=settings.max_headers,
                       body_timeout=settings.body_timeout_seconds)
