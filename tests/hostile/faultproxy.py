"""A real HTTP fault-injecting reverse proxy (a small ASGI app) for the hostile-input tests.

It sits in front of a real server (the sandbox: service + sekmet FHIR + SMART auth) and forwards every
request unchanged — until a test injects a fault for requests matching a method, a path regex and
optionally a body predicate. The service under test then meets the fault through its real client stack
(httpx, FhirClient, retries, timeouts), over real loopback sockets.

Faults (`Fault.action`):
- `status`: answer `status` (with an OperationOutcome body) without forwarding — the upstream never sees it;
- `after`: forward first (the upstream commits), then answer `status` anyway — a lost response;
- `hang`: never answer (until the client gives up), without forwarding; `hang-after`: forward, then hang;
- `slow`: wait `delay` seconds, then forward;
- `body`: answer 200 with `body` (malformed Bundles, huge pages ...) without forwarding.
`times` limits how often a fault fires (None = until cleared).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from http.cookiejar import CookieJar, DefaultCookiePolicy
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

HOP_BY_HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
              "upgrade", "proxy-authorization", "proxy-connection", "accept-encoding"}
HANG_LIMIT = 60.0  # a hung request is released after this long at the latest (bounded, never forever)


@dataclass
class Fault:
    method: str  # "GET", "POST" or "*"
    path: str  # regex searched in the request path
    action: str
    status: int = 500
    delay: float = 0.0
    body: bytes | Callable[[str], bytes] | None = None  # a callable gets the request path + query
    when: Callable[[bytes], bool] | None = None  # body predicate, e.g. "is a transaction Bundle"
    times: int | None = None
    fired: int = 0

    def matches(self, method: str, path: str, body: bytes) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.method != "*" and self.method != method:
            return False
        if not re.search(self.path, path):
            return False
        return self.when is None or self.when(body)


@dataclass
class Seen:
    method: str
    path: str
    action: str  # "forward" or the fault's action
    authorization: str | None


@dataclass
class FaultProxy:
    upstream: str = ""
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: httpx.AsyncClient | None = None

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.seen.clear()

    def hits(self, action: str | None = None, path: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (action is None or s.action == action) and re.search(path, s.path)]

    def _pick(self, method: str, path: str, body: bytes) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(method, path, body):
                    f.fired += 1
                    return f
        return None

    # -- ASGI ---------------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    if self._client is not None:
                        await self._client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        auth = next((v for k, v in headers if k.lower() == "authorization"), None)
        fault = self._pick(method, path, body)
        with self._lock:
            self.seen.append(Seen(method, path, fault.action if fault else "forward", auth))

        if fault is None or fault.action == "slow":
            if fault is not None and await _wait_or_disconnect(receive, fault.delay):
                return
            status, out_headers, content = await self._forward(method, path, query, headers, body)
            await _respond(send, status, out_headers, content)
            return
        if fault.action in ("after", "hang-after"):
            await self._forward(method, path, query, headers, body)  # the upstream commits; the answer is lost
        if fault.action in ("hang", "hang-after"):
            await _wait_or_disconnect(receive, HANG_LIMIT)
            return
        if fault.action in ("status", "after"):
            oo = {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "transient", "diagnostics": f"injected fault {fault.status}"}]}
            await _respond(send, fault.status, [("content-type", "application/fhir+json")], json.dumps(oo).encode())
            return
        if fault.action == "body":
            raw = fault.body(f"{path}?{query}") if callable(fault.body) else (fault.body or b"")
            await _respond(send, 200, [("content-type", "application/fhir+json")], raw)
            return
        raise ValueError(f"unknown fault action {fault.action!r}")

    async def _forward(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                       body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        if self._client is None:
            # A proxy must not keep cookies: one jar would merge every browser behind it into one.
            jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
            self._client = httpx.AsyncClient(timeout=120, follow_redirects=False, cookies=jar)
        url = f"{self.upstream}{path}" + (f"?{query}" if query else "")
        fwd = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        resp = await self._client.request(method, url, headers=fwd, content=body)
        out = [(k, v) for k, v in resp.headers.multi_items()
               if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"]
        return resp.status_code, out, resp.content


async def _respond(send: Any, status: int, headers: list[tuple[str, str]], content: bytes) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(content)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})


async def _wait_or_disconnect(receive: Any, seconds: float) -> bool:
    """Sleep up to `seconds`; True when the client went away first."""
    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait_for(asyncio.shield(watcher), timeout=seconds)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        watcher.cancel()


def is_transaction(body: bytes) -> bool:
    """Body predicate: a FHIR transaction Bundle."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("resourceType") == "Bundle" and data.get("type") == "transaction"
