"""Hostile input against the ops layer: odd headers, garbage and pathological bodies never give a 500, a
hang or a stack trace, and invalid request ids are never reflected."""

from __future__ import annotations

import re
from typing import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.ops.test_ops import ops_app, settings_for
from tests.support.live import free_port, serve

HEX32 = re.compile(r"[0-9a-f]{32}")
VALID_RID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    port = free_port()
    with serve(ops_app(settings_for(tmp_path_factory.mktemp("hostile"), max_body_bytes=200_000)), port) as url:
        with httpx.Client(base_url=url, timeout=10) as c:
            yield c


def _no_trace(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    assert "Traceback" not in r.text and 'File "' not in r.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rid=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=300))
def test_request_ids_are_echoed_only_when_sane(client: httpx.Client, rid: str) -> None:
    r = client.get("/rid", headers={"X-Request-ID": rid})
    assert r.status_code == 200
    got = r.headers["x-request-id"]
    if VALID_RID.fullmatch(rid):
        assert got == rid
    else:
        assert HEX32.fullmatch(got) and got != rid


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2000),
       ctype=st.sampled_from(["application/json", "application/fhir+json", "text/plain", "", "application/x-www-form-urlencoded"]))
def test_garbage_bodies_get_a_clean_4xx(client: httpx.Client, body: bytes, ctype: str) -> None:
    r = client.post("/items", content=body, headers={"Content-Type": ctype} if ctype else {})
    _no_trace(r)
    if r.status_code >= 400:
        assert r.json()["resourceType"] == "OperationOutcome"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                          lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                          max_leaves=30))
def test_arbitrary_json_values(client: httpx.Client, value: object) -> None:
    import json

    r = client.post("/items", content=json.dumps({"count": value}), headers={"Content-Type": "application/json"})
    _no_trace(r)


@pytest.mark.parametrize("body", [
    b"[" * 50_000 + b"]" * 50_000,  # deep nesting: the JSON parser's recursion limit
    b'{"count": ' + b"9" * 100_000 + b"}",  # a huge number literal
    b'{"count": 1, ' + b'"k": 1, ' * 20_000 + b'"z": 2}',  # many duplicate keys
    b"\xff\xfe\x00\x00garbage",
])
def test_pathological_bodies(client: httpx.Client, body: bytes) -> None:
    r = client.post("/items", content=body, headers={"Content-Type": "application/json"})
    _no_trace(r)
    assert r.status_code in (200, 400, 413)


def test_declared_huge_length_is_rejected_before_the_body_arrives(client: httpx.Client) -> None:
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(str(client.base_url))
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(b"POST /echo-size HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 999999999\r\n\r\n{")  # the rest never comes
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:100]
    assert b"OperationOutcome" in reply


def test_huge_and_many_headers_do_not_500(client: httpx.Client) -> None:
    r = client.get("/healthz", headers={f"X-Junk-{i}": "v" * 100 for i in range(200)})
    assert r.status_code in (200, 400, 431)
    r = client.get("/healthz", headers={"X-Big": "v" * 60_000})
    assert r.status_code in (200, 400, 431)
    assert client.get("/healthz").status_code == 200  # and the server is still fine
