"""Request limits of the server we run (`onco-exercise serve`, service.server + service.ops), over raw sockets:
head size, header count, request-line length, half-open and slowloris connections, slow bodies."""

from __future__ import annotations

import socket
import time
from typing import Iterator

import pytest

from tests.ops.procs import ServeProcess, onco_env

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    tmp = tmp_path_factory.mktemp("limits")
    env = onco_env(tmp, fhir_servers="https://ehr.test/fhir", allow_no_cds_clients="true",
                   header_timeout_seconds=str(HEADER_TIMEOUT), body_timeout_seconds=str(BODY_TIMEOUT),
                   max_header_bytes="8192", max_headers="50", keepalive_seconds="2")
    proc = ServeProcess(env, tmp / "serve.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def _connect(server: ServeProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return s


def _answer(s: socket.socket, limit: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (or `limit` seconds pass)."""
    s.settimeout(limit)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return out


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def _one_response(s: socket.socket) -> bytes:
    """One whole response on a kept-alive connection (head, then Content-Length bytes of body)."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += s.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_normal_request_and_keep_alive_still_work(server: ServeProcess) -> None:
    with _connect(server) as s:
        for _ in range(3):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = _one_response(s)
            assert _status(raw) == 200 and raw.endswith(b'{"status":"ok"}'), raw[:200]


def test_an_oversized_header_is_refused_without_reading_it(server: ServeProcess) -> None:
    with _connect(server) as s:
        started = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000)
        raw = _answer(s)
        assert _status(raw) == 431, raw[:200]
        assert time.monotonic() - started < 3
        assert b"OperationOutcome" in raw


def test_too_many_header_fields(server: ServeProcess) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(60))
    with _connect(server) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        assert _status(_answer(s)) == 431


def test_an_overlong_request_line(server: ServeProcess) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /healthz?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(_answer(s)) == 414


def test_a_half_open_connection_is_closed(server: ServeProcess) -> None:
    with _connect(server) as s:
        started = time.monotonic()
        assert _answer(s, limit=HEADER_TIMEOUT + 5) == b""  # closed without a word: it said nothing either
        assert time.monotonic() - started < HEADER_TIMEOUT + 2


def test_a_slowloris_head_gets_408(server: ServeProcess) -> None:
    with _connect(server) as s:
        started = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        raw = b""
        s.settimeout(0.3)
        for i in range(40):  # one header byte every 0.25 s: never a complete head
            try:
                s.sendall(b"X"[:1])
            except OSError:
                break
            try:
                raw += s.recv(65536)
                if raw:
                    break
            except socket.timeout:
                pass
        raw += _answer(s, 3)
        assert _status(raw) == 408, raw[:200]
        assert time.monotonic() - started < HEADER_TIMEOUT + 3


def test_a_slow_body_gets_408(server: ServeProcess) -> None:
    with _connect(server) as s:
        started = time.monotonic()
        # chunked: the service reads the body itself (to enforce its size) and stops waiting after the pause
        s.sendall(b"POST /cds-services/onco-exercise-encounter-start HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"hook\"\r\n")
        raw = _answer(s, BODY_TIMEOUT + 10)
        assert _status(raw) == 408, raw[:200]
        assert b"OperationOutcome" in raw
        assert time.monotonic() - started < BODY_TIMEOUT + 3


def test_limits_are_counted(server: ServeProcess) -> None:
    import httpx

    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'onco_http_client_disconnects_total{reason="header-too-large"}' in text
    assert 'onco_http_client_disconnects_total{reason="header-timeout"}' in text
    assert "process_resident_memory_bytes" in text and "onco_build_info{" in text
    assert not any(w in server.output() for w in ("Traceback", "unhandled error"))
