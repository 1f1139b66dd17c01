"""Log hygiene: no bearer token, JWT or OAuth secret reaches any log line, whoever logs it."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from typing import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from service import logs
from service.logs import REDACTED, configure_logging, scrub
from tests.ops.test_ops import JWT, ops_app, settings_for
from tests.support.live import free_port

ACCESS = "ya29.a0AfH6SMBx-opaque-access-token_value"
REFRESH = "1//0refresh-token-value-XYZ"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
ASSERTION = JWT.replace("c2lnbmF0dXJl", "YXNzZXJ0aW9u")
SECRETS = (JWT, ACCESS, REFRESH, VERIFIER, ASSERTION, "hunter2", "one-time-code-123")


@pytest.mark.parametrize("text,gone", [
    (f"Authorization: Bearer {ACCESS}", ACCESS),
    (f"authorization: bearer {JWT}", JWT),
    (f"token is {JWT} ok", JWT),
    (json.dumps({"access_token": ACCESS, "token_type": "Bearer"}), ACCESS),
    (json.dumps({"refresh_token": REFRESH}), REFRESH),
    (str({"code_verifier": VERIFIER}), VERIFIER),
    (f"grant_type=authorization_code&code_verifier={VERIFIER}&redirect_uri=x", VERIFIER),
    (f"client_assertion_type=urn&client_assertion={ASSERTION}", ASSERTION),
    ("GET /smart/callback?code=one-time-code-123&state=abc", "one-time-code-123"),
    ('{"fhirAuthorization": {"access_token": "' + ACCESS + '", "scope": "patient/*.read"}}', ACCESS),
    ("Basic dXNlcjpodW50ZXIyaHVudGVyMg==", "dXNlcjpodW50ZXIyaHVudGVyMg=="),
])
def test_scrub(text: str, gone: str) -> None:
    out = scrub(text)
    assert gone not in out and REDACTED in out


def test_scrub_leaves_ordinary_text_alone() -> None:
    for text in ("GET /cds-services 200", "basic checks passed", "Patient/123 has 4 conditions",
                 "token_type missing", "state of the art"):
        assert scrub(text) == text


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Our JSON handler writing to a buffer, at DEBUG for everything (httpx too); restored afterwards."""
    buf = io.StringIO()
    root = logging.getLogger()
    level = root.level
    configure_logging("DEBUG", json_output=True, stream=buf)
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        for h in list(root.handlers):
            if getattr(h, "_onco_exercise_handler", False):
                root.removeHandler(h)
        root.setLevel(level)
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def careless_app(tmp_path, upstream: str) -> FastAPI:
    """Routes written the way nobody should: they log headers, bodies, URLs and exceptions with secrets."""
    app = ops_app(settings_for(tmp_path))
    log = logging.getLogger("onco_exercise.careless")

    @app.post("/careless")
    async def careless(request: Request) -> dict[str, str]:
        body = await request.json()
        log.info("headers %s", dict(request.headers))
        log.info("body %s", body)
        log.warning("token: %s", request.headers.get("authorization"))
        log.info("hook", extra={"fhirAuthorization": body.get("fhirAuthorization")})
        async with httpx.AsyncClient() as client:  # httpx logs the URL at INFO/DEBUG
            await client.get(f"{upstream}/healthz?access_token={ACCESS}",
                             headers={"Authorization": f"Bearer {JWT}"})
        try:
            raise ValueError(f"token exchange failed: refresh_token={REFRESH}")
        except ValueError:
            log.exception("exchange failed")
        return {"ok": "yes"}

    @app.get("/smart/callback")
    async def callback(request: Request, code: str, state: str) -> dict[str, str]:
        raise RuntimeError(f"token request failed for {request.url}")

    return app


def test_no_secret_in_any_log_line(captured: io.StringIO, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    app = careless_app(tmp_path, f"http://127.0.0.1:{port}")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=True,
                            log_level="debug", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    caplog.set_level(logging.DEBUG)
    try:
        payload = {"hook": "encounter-start", "access_token": ACCESS, "code_verifier": VERIFIER,
                   "client_assertion": ASSERTION, "password": "hunter2",
                   "fhirAuthorization": {"access_token": ACCESS, "token_type": "Bearer"}}
        r = httpx.post(f"http://127.0.0.1:{port}/careless", json=payload,
                       headers={"Authorization": f"Bearer {JWT}", "X-Request-ID": "rid-careless"})
        assert r.status_code == 200
        r = httpx.get(f"http://127.0.0.1:{port}/smart/callback?code=one-time-code-123&state=s1")
        assert r.status_code == 500
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    lines = captured.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    loggers = {r["logger"] for r in records}
    assert {"onco_exercise.careless", "onco_exercise.access", "onco_exercise.ops", "uvicorn.access",
            "httpx"} <= loggers, loggers
    everything = captured.getvalue() + "\n".join(caplog.messages) + "\n".join(
        r.exc_text or "" for r in caplog.records)
    for secret in SECRETS:
        assert secret not in everything, secret
    assert REDACTED in everything
    careless = [r for r in records if r["logger"] == "onco_exercise.careless"]
    assert all(r.get("request_id") == "rid-careless" for r in careless)
    assert any("exc" in r and "ValueError" in r["exc"] for r in careless)  # tracebacks kept, scrubbed


def test_configure_logging_is_idempotent(captured: io.StringIO) -> None:
    configure_logging("INFO", json_output=True, stream=captured)
    configure_logging("INFO", json_output=True, stream=captured)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_onco_exercise_handler", False)]
    assert len(ours) == 1
    logs.install_redaction()
    logs.install_redaction()
    logging.getLogger("x").info("one %s", f"Bearer {ACCESS}")
    assert captured.getvalue().count("one Bearer [REDACTED]") == 1


def test_plain_format_is_scrubbed_too(tmp_path) -> None:
    buf = io.StringIO()
    try:
        configure_logging("INFO", json_output=False, stream=buf)
        logging.getLogger("x").info("plain %s", {"access_token": ACCESS})
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_onco_exercise_handler", False):
                logging.getLogger().removeHandler(h)
    assert ACCESS not in buf.getvalue() and "plain" in buf.getvalue()
