"""/healthz, /readyz, /metrics and the ops middleware, over real HTTP on a loopback port."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service import ops
from service.app import LifespanPart, parts_lifespan
from service.config import Settings
from tests.ops.procs import dead_url
from tests.support.live import free_port, serve

JWT = "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2VociIsInN1YiI6ImNsaW5pY2lhbiJ9.c2lnbmF0dXJl"


class Item(BaseModel):
    count: int


def ops_app(settings: Settings) -> FastAPI:
    """The ops layer exactly as create_app installs it, plus a few routes to exercise it."""
    parts: list[LifespanPart] = []
    app = FastAPI(lifespan=parts_lifespan(settings, parts))
    app.state.settings = settings
    app.state.lifespan_parts = parts
    ops.install(app, settings)

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.post("/items")
    async def post_item(item: Item) -> dict[str, int]:
        return {"count": item.count}

    @app.post("/echo-size")
    async def echo_size(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"database password=hunter2 token {JWT}")

    @app.get("/outcome")
    async def outcome() -> None:
        raise HTTPException(409, detail=ops.operation_outcome("already signed", status=409))

    @app.get("/cached")
    async def cached() -> JSONResponse:
        return JSONResponse({"ok": True}, headers={"Cache-Control": "public, max-age=60"})

    @app.get("/rid")
    async def rid(request: Request) -> dict[str, str]:
        return {"rid": request.state.request_id}

    return app


def settings_for(tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(mode="serve", data_dir=tmp, fhir_servers=[], max_body_bytes=10_000)
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, fhir_base: str) -> Iterator[str]:
    port = free_port()
    s = settings_for(tmp_path_factory.mktemp("ops"), fhir_servers=[fhir_base],
                     cors_origins=["https://ehr.example.org"])
    with serve(ops_app(s), port) as url:
        yield url


# -- request id ---------------------------------------------------------------------------------------------

def test_request_id_is_propagated_or_generated(base: str) -> None:
    r = httpx.get(f"{base}/rid", headers={"X-Request-ID": "abc-123.x"})
    assert r.headers["x-request-id"] == "abc-123.x" and r.json() == {"rid": "abc-123.x"}
    r1, r2 = httpx.get(f"{base}/rid"), httpx.get(f"{base}/rid")
    assert len(r1.headers["x-request-id"]) == 32 and r1.headers["x-request-id"] != r2.headers["x-request-id"]
    assert r1.json()["rid"] == r1.headers["x-request-id"]
    for bad in ("has space", "x" * 200, "semi;colon", "<script>"):
        r = httpx.get(f"{base}/rid", headers={"X-Request-ID": bad})
        assert r.headers["x-request-id"] != bad and len(r.headers["x-request-id"]) == 32


# -- health, readiness, metrics ---------------------------------------------------------------------------------

def test_healthz(base: str) -> None:
    r = httpx.get(f"{base}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_ready_when_store_and_fhir_server_answer(base: str, fhir_base: str) -> None:
    r = httpx.get(f"{base}/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert [c["name"] for c in body["checks"]] == ["store", "fhir"]
    assert body["checks"][1]["url"] == fhir_base and body["checks"][1]["status"] == 200


def test_readyz_503_with_details_when_a_fhir_server_is_down(tmp_path: Path, fhir_base: str) -> None:
    down = dead_url()
    port = free_port()
    with serve(ops_app(settings_for(tmp_path, fhir_servers=[fhir_base, down])), port) as url:
        r = httpx.get(f"{url}/readyz")
        assert r.status_code == 503
        checks = {c.get("url", c["name"]): c for c in r.json()["checks"]}
        assert checks["store"]["ok"] is True
        assert checks[fhir_base]["ok"] is True
        assert checks[down]["ok"] is False and checks[down]["error"] == "ConnectError"
        assert r.json()["status"] == "not-ready"


async def test_readiness_is_cached_and_probes_once_under_load(tmp_path: Path, fhir_base: str) -> None:
    import asyncio

    calls = 0

    class CountingStore:
        async def ping(self) -> bool:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            return True

    readiness = ops.Readiness(settings_for(tmp_path, fhir_servers=[fhir_base]), cache_seconds=0.5)
    try:
        results = await asyncio.gather(*(readiness.check(CountingStore()) for _ in range(20)))
        assert calls == 1 and all(ok for ok, _ in results)
        await readiness.check(CountingStore())
        assert calls == 1
        await asyncio.sleep(0.6)
        await readiness.check(CountingStore())
        assert calls == 2
        ok, body = await readiness.check(None)  # cached: still the last answer
        assert ok
    finally:
        await readiness.aclose()


def test_metrics_use_route_templates(base: str) -> None:
    for i in (101, 102, 103):
        httpx.get(f"{base}/items/{i}")
    httpx.get(f"{base}/no/such/path/4711")
    r = httpx.get(f"{base}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'onco_http_requests_total{method="GET",route="/items/{item_id}",status="200"}' in text
    assert 'route="<unmatched>",status="404"' in text
    # no raw path (ids are often patient data) in any label; sample values may contain the digits by chance
    labels = " ".join(re.findall(r'\{[^}]*\}', text))
    assert "/items/101" not in labels and "/no/such" not in labels and "4711" not in labels
    assert 'onco_http_request_seconds_bucket{le="0.002",method="GET",route="/items/{item_id}"}' in text
    for family in ("onco_cds_cards_total", "onco_cds_feedback_total", "onco_writeback_total",
                   "onco_fhir_call_seconds", "onco_fhir_errors_total"):
        assert f"# HELP {family}" in text


# -- body size limit ------------------------------------------------------------------------------------------

def test_body_over_the_limit_is_413_operation_outcome(base: str) -> None:
    r = httpx.post(f"{base}/echo-size", content=b"x" * 10_001)
    assert r.status_code == 413
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["code"] == "too-costly"
    assert httpx.post(f"{base}/echo-size", content=b"x" * 10_000).json() == {"size": 10_000}


def test_chunked_body_over_the_limit_is_413(base: str) -> None:
    def chunks(n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"y" * 1000

    r = httpx.post(f"{base}/echo-size", content=chunks(11))
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"
    r = httpx.post(f"{base}/echo-size", content=chunks(9))  # under the limit: the app sees every byte
    assert r.status_code == 200 and r.json() == {"size": 9000}


# -- headers --------------------------------------------------------------------------------------------------

def test_security_headers(base: str) -> None:
    r = httpx.get(f"{base}/healthz")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in r.headers  # http public URL
    assert "x-frame-options" not in r.headers  # SMART apps are embedded in EHR frames
    assert httpx.get(f"{base}/cached").headers["cache-control"] == "public, max-age=60"


def test_hsts_when_public_url_is_https(tmp_path: Path) -> None:
    port = free_port()
    with serve(ops_app(settings_for(tmp_path, public_url="https://onco.example.org")), port) as url:
        assert httpx.get(f"{url}/healthz").headers["strict-transport-security"].startswith("max-age=")


def test_cors_allows_authorization_and_content_type_for_configured_origins(base: str) -> None:
    pre = {"Origin": "https://ehr.example.org", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(f"{base}/items", headers=pre)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://ehr.example.org"
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "x-request-id" in r.headers
    r = httpx.options(f"{base}/items", headers={**pre, "Origin": "https://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{base}/healthz", headers={"Origin": "https://ehr.example.org"})
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


# -- errors as OperationOutcome -----------------------------------------------------------------------------------

def _outcome(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"], body
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body


def test_not_found_and_method_not_allowed(base: str) -> None:
    assert _outcome(httpx.get(f"{base}/nope"), 404)["issue"][0]["code"] == "not-found"
    assert _outcome(httpx.delete(f"{base}/items/1"), 405)["issue"][0]["code"] == "not-supported"


def test_validation_errors_are_400_and_never_echo_input(base: str) -> None:
    secret = "Bearer-looking-SECRET-value"
    body = _outcome(httpx.post(f"{base}/items", json={"count": secret}), 400)
    assert secret not in json_text(body)
    assert body["issue"][0]["expression"] == ["body.count"]
    body = _outcome(httpx.post(f"{base}/items", content=b'{"count": ', headers={"Content-Type": "application/json"}),
                    400)
    assert "JSON" in body["issue"][0]["diagnostics"]
    _outcome(httpx.get(f"{base}/items/not-a-number"), 400)


def test_unhandled_exception_is_500_without_details(base: str) -> None:
    r = httpx.get(f"{base}/boom", headers={"X-Request-ID": "req-boom-1"})
    body = _outcome(r, 500)
    assert "hunter2" not in r.text and JWT not in r.text and "RuntimeError" not in r.text
    assert "req-boom-1" in body["issue"][0]["diagnostics"]
    assert r.headers["x-request-id"] == "req-boom-1"
    metrics = httpx.get(f"{base}/metrics").text
    assert 'onco_http_requests_total{method="GET",route="/boom",status="500"}' in metrics


def test_http_exception_with_an_operation_outcome_passes_through(base: str) -> None:
    body = _outcome(httpx.get(f"{base}/outcome"), 409)
    assert body["issue"][0]["diagnostics"] == "already signed"


def json_text(body: object) -> str:
    import json

    return json.dumps(body)
