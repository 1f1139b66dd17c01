"""Every route of the running service (sandbox mode: the service and the sandbox EHR on one origin), walked
with hostile path, query, header and body values over real HTTP: no 5xx, no stack trace, and nothing the
server logs as an unhandled error. Routes come from the app itself, so a new route is walked too."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Iterator

import httpx
import pytest
from starlette.routing import Mount, Route

from tests.conftest import running_sandbox

PATH_VALUES = ["%00", "%0a", "%0d%0aSet-Cookie:%20x=1", "a" * 5000, "..%2f..%2fetc%2fpasswd", "%ff%fe", "%F0%9F%98%80",
               "'%20OR%201=1--", "%3Cscript%3E", "-1", "1e309", "%25", "onc-01%20"]
QUERY_VALUES = ["\x00", "\n", "a" * 5000, "%ff", "😀", "http://127.0.0.1:1/fhir ", " http://evil.example/fhir",
                "[]", "{}", "-1", "9" * 400]
HEADER_SETS: list[dict[str, str]] = [
    {"Origin": "http://127.0.0.1:99999"},
    {"Origin": "http://[::1"},
    {"Origin": "null"},
    {"Cookie": "oe_smart=" + "x" * 4000},
    {"Cookie": "oe_smart=abc; oe_smart=def; =; ;;"},
    {"Authorization": "Bearer a.b.c"},
    {"Authorization": "Bearer " + "eyJ" + "A" * 3000 + ".e30.x"},
    {"X-CSRF-Token": "x" * 3000},
    {"Content-Type": "application/json; charset=utf-999"},
    {"Accept": "text/html;q=abc, */*;q=-1"},
    {"X-Forwarded-For": "not-an-ip, ::::"},
    {"X-Request-ID": "../../etc"},
    {"Range": "bytes=99999999-1"},
]
BODIES: list[tuple[bytes, str]] = [
    (b"\x00\xff\xfe", "application/json"),
    (b"{", "application/json"),
    (b"[" * 5000 + b"]" * 5000, "application/json"),
    (b'{"draftVersion": "\\u0000", "edits": {"a": [null, 1e999]}, "preferences": []}', "application/json"),
    (b"a=%00&b=" + b"x" * 10000 + b"&action=%ff&txn=&csrf=1&csrf=2", "application/x-www-form-urlencoded"),
    (b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\x00\r\n--x--", "multipart/form-data; boundary=x"),
    (b"", "text/plain"),
]
SAMPLE_VALUES = {"service_id": "onco-exercise-encounter-start", "pid": "onc-01", "tid": "x", "name": "app.js"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    with running_sandbox(tmp_path_factory.mktemp("walk")) as (url, app):
        yield url, app


def _routes(app: Any) -> list[tuple[str, set[str]]]:
    out: list[tuple[str, set[str]]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for r in routes:
            if hasattr(r, "original_router"):  # FastAPI's included router
                walk(list(r.original_router.routes), prefix + (getattr(r.include_context, "prefix", "") or ""))
            elif isinstance(r, Mount):
                out.append((prefix + r.path + "/{rest}", {"GET", "POST"}))
                walk(list(getattr(r, "routes", []) or []), prefix + r.path)
            elif isinstance(r, Route) or hasattr(r, "methods"):
                out.append((prefix + r.path, set(getattr(r, "methods", None) or {"GET"}) - {"HEAD"}))

    walk(list(app.routes), "")
    # the sandbox's FHIR server sits in front of the routes (an ASGI middleware), not among them
    out += [("/sandbox/fhir/{rest}", {"GET", "POST"}), ("/sandbox/fhir/Patient/{pid}", {"GET", "PUT"}),
            ("/sandbox/fhir", {"POST"})]
    return sorted(set((p, frozenset(m)) for p, m in out), key=lambda x: x[0])  # type: ignore[return-value]


def _fill(template: str, value: str | None = None) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: value if value is not None else SAMPLE_VALUES.get(m.group(1), "x"),
                  template)


class _Unhandled(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("onco_exercise.ops", "uvicorn.error")) or "Task exception" in record.getMessage():
            self.records.append(f"{record.name}: {record.getMessage()}")


def test_every_route_with_hostile_values_never_5xx(site: tuple[str, Any]) -> None:
    url, app = site
    routes = _routes(app)
    assert len(routes) > 35, routes  # the service's and the sandbox's routes are all here
    handler = _Unhandled()
    logging.getLogger().addHandler(handler)
    failures: list[str] = []
    sent = 0
    started = time.monotonic()

    def check(method: str, path: str, **kw: Any) -> None:
        nonlocal sent
        sent += 1
        try:
            r = client.request(method, path, **kw)
        except httpx.TimeoutException:
            failures.append(f"{method} {path[:80]}: timeout")
            return
        except httpx.HTTPError as exc:  # e.g. the server closed a request it refused at the protocol level
            failures.append(f"{method} {path[:80]}: {type(exc).__name__}")
            return
        if r.status_code >= 500 or "Traceback" in r.text:
            failures.append(f"{method} {path[:80]} {kw.get('headers') or ''}: {r.status_code} {r.text[:120]}")

    try:
        with httpx.Client(base_url=url, timeout=20) as client:
            for template, methods in routes:
                for method in sorted(methods):
                    if "{" in template:
                        for v in PATH_VALUES:
                            check(method, _fill(template, v))
                    base = _fill(template)
                    for v in QUERY_VALUES:
                        check(method, base, params={"s": v, "iss": v, "launch": v, "q": v, "encounter": v,
                                                    "code": v, "state": v, "error": v, "notice": v})
                    for h in HEADER_SETS:
                        check(method, base, headers=h)
                    if method in ("POST", "PUT", "PATCH"):
                        for body, ctype in BODIES:
                            check(method, base, content=body, headers={"Content-Type": ctype})
    finally:
        logging.getLogger().removeHandler(handler)
    print(f"{sent} hostile requests to {len(routes)} routes in {time.monotonic() - started:.1f} s")
    assert not failures, "\n".join(failures[:40])
    assert not handler.records, "\n".join(handler.records[:20])
