"""Security properties of the CDS Hooks and SMART endpoints against a real sandbox.

- tokens and JWTs never reach the logs: a whole flow (hook calls with fhirAuthorization, refused and replayed
  JWTs, a SMART EHR launch, a token refresh, edits, sign & send) runs in `onco-exercise sandbox` as a
  subprocess at DEBUG level; every secret string it handled is then looked for in its complete output;
- the session cookie's flags; CSRF refusals; sessions bound to their browser;
- the redirect_uri is ours alone; `iss` and `fhirServer` allowlists (a stranger server never sees a request);
- request size limits on the CDS endpoints (declared and chunked) and on the SMART API.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.hostile.conftest import ES, PV, Rig, assert_outcome, hook_body
from tests.hostile.faultproxy import Fault, FaultProxy
from tests.ops.procs import ServeProcess, onco_env
from tests.smart.conftest import ehr_launch
from tests.support.live import free_port, serve


# ---------------------------------------------------------------------------------------------------------
# Tokens never in logs
# ---------------------------------------------------------------------------------------------------------


def _secrets_of_jwt(token: str) -> list[str]:
    """The whole JWT and its signature alone (a log line with a truncated JWT still leaks it)."""
    return [token, token.rsplit(".", 1)[-1]]


def test_no_token_or_jwt_in_the_logs_of_a_full_flow(tmp_path: Path) -> None:
    from service.sandbox.auth_tokens import issue_access_token
    from service.sandbox.cds_client import CdsClient
    from service.sandbox.keys import load_keys
    from service.smart.sessions import TOKEN_NS
    from service.config import Settings
    from service.state import open_state_store

    port = free_port()
    proc = ServeProcess(onco_env(tmp_path, log_level="DEBUG", log_json="true"), tmp_path / "out.log",
                        argv=["onco-exercise", "sandbox", "--port", str(port), "--data-dir", str(tmp_path)],
                        port=port)
    secrets: list[str] = []
    try:
        proc.wait_ready(60)
        url = proc.url
        keys = load_keys(tmp_path / "sandbox")
        rt = SimpleNamespace(settings=SimpleNamespace(sandbox_access_token_seconds=300), keys=keys,
                             issuer=f"{url}/sandbox/auth", fhir_base=f"{url}/sandbox/fhir")
        cds = CdsClient(public_url=url, fhir_base=f"{url}/sandbox/fhir", signing_key=keys.cds,
                        fhir=httpx.AsyncClient())
        http = httpx.Client(base_url=url, timeout=60)

        def hook(service_id: str, body: dict[str, Any], jwt: str | None = None) -> httpx.Response:
            path = f"/cds-services/{service_id}"
            jwt = jwt or cds.sign_jwt(f"{url}{path}")
            secrets.extend(_secrets_of_jwt(jwt))
            return http.post(path, json=body, headers={"Authorization": f"Bearer {jwt}"})

        fhir_token, _ = issue_access_token(rt, scope="patient/*.rs", client_id="onco-exercise", patient="onc-01")
        secrets.extend(_secrets_of_jwt(fhir_token))
        jwt = cds.sign_jwt(f"{url}/cds-services")
        secrets.extend(_secrets_of_jwt(jwt))
        assert http.get("/cds-services", headers={"Authorization": f"Bearer {jwt}"}).status_code == 200
        base = f"{url}/sandbox/fhir"
        first = cds.sign_jwt(f"{url}/cds-services/{ES}")
        assert hook(ES, hook_body("onc-01", token=fhir_token, fhir_server=base), first).status_code == 200
        assert hook(ES, hook_body("onc-01", token=fhir_token, fhir_server=base), first).status_code == 401  # replay
        forged = first[:-8] + ("A" * 8 if not first.endswith("A" * 8) else "B" * 8)
        assert hook(ES, hook_body("onc-01"), forged).status_code == 401
        bogus, _ = issue_access_token(SimpleNamespace(**{**rt.__dict__, "keys": SimpleNamespace(
            auth=load_keys(tmp_path / "other").auth)}), scope="patient/*.rs", client_id="x", patient="onc-03")
        secrets.extend(_secrets_of_jwt(bogus))  # the FHIR server refuses it: the failure path logs too
        assert hook(PV, hook_body("onc-03", service_id=PV, token=bogus, fhir_server=base)).status_code == 412
        stranger = f"http://127.0.0.1:{free_port()}/fhir"
        assert hook(ES, hook_body("onc-04", token=fhir_token, fhir_server=stranger)).status_code == 412

        got = ehr_launch(http, patient="onc-02")
        for u in got.urls:
            q = parse_qs(urlsplit(u).query)
            secrets += [v for k in ("code", "state", "launch") for v in q.get(k, [])]
        secrets += [got.csrf, http.cookies["oe_smart"]]
        assert http.get("/smart/api/prescription", params={"s": got.sid}).status_code == 200
        store = open_state_store(Settings(data_dir=tmp_path))

        async def expire() -> dict[str, Any]:
            rec = await store.get(TOKEN_NS, got.sid)
            old = dict(rec)
            rec["expires_at"] = 0  # the next FHIR call refreshes: the refresh token crosses the wire
            await store.put(TOKEN_NS, got.sid, rec, ttl=600)
            return old

        old = asyncio.run(expire())
        secrets += [old["access_token"], old["access_token"].rsplit(".", 1)[-1], old["refresh_token"]]
        r = http.post("/smart/api/prescription/sign", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf},
                      json={"draftVersion": 0})
        assert r.status_code == 200, r.text[:300]
        new = asyncio.run(store.get(TOKEN_NS, got.sid))
        asyncio.run(store.close())
        assert new["access_token"] != old["access_token"], "the refresh did not happen"
        secrets += _secrets_of_jwt(new["access_token"])
        http.close()
    finally:
        proc.stop()
    out = proc.output()
    assert "smart sign" in out and "cds client refused" in out and "writeback" in out, out[-2000:]
    assert len(out.splitlines()) > 30  # DEBUG output of the whole flow was captured
    secrets = [s for s in set(secrets) if s and len(s) >= 16]
    assert len(secrets) >= 15
    leaked = [s[:12] + "..." for s in secrets if s in out]
    assert not leaked, f"secrets found in the logs: {leaked}"
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}", out), "something JWT-shaped was logged"


# ---------------------------------------------------------------------------------------------------------
# Cookies, CSRF, session binding
# ---------------------------------------------------------------------------------------------------------


def _launch_cookie(rig: Rig) -> str:
    with rig.browser() as b:
        r = b.get("/smart/launch", params={"iss": rig.fhir_base})
        assert r.status_code == 302, r.text[:300]
        cookies = [v for k, v in r.headers.multi_items() if k.lower() == "set-cookie" and v.startswith("oe_smart=")]
        assert len(cookies) == 1
        return cookies[0]


def test_session_cookie_flags(rig: Rig) -> None:
    cookie = _launch_cookie(rig).lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and ("path=/;" in cookie or cookie.endswith("path=/"))
    assert "secure" not in cookie.replace("samesite", "")  # cookie_secure=false on this plain-http rig
    rig.settings.cookie_secure = True
    try:
        cookie = _launch_cookie(rig).lower()
    finally:
        rig.settings.cookie_secure = False
    # https: usable inside an EHR's cross-site iframe (SameSite=None) and kept when third-party cookies are
    # blocked (Partitioned); the CSRF header, Origin check and state binding still guard it (docs/smart-app.md)
    assert "; secure" in cookie and "httponly" in cookie and "samesite=none" in cookie and "partitioned" in cookie
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert len(value) >= 40  # 256 random bits, base64url


def test_csrf_refusals_change_nothing(rig: Rig) -> None:
    with rig.browser() as b, rig.browser() as other:
        got = ehr_launch(b, patient="onc-25")
        theirs = ehr_launch(other, patient="onc-25")
        assert b.get("/smart/api/prescription", params={"s": got.sid}).status_code == 200
        port = urlsplit(rig.url).port
        attempts = [
            {},
            {"X-CSRF-Token": "wrong"},
            {"X-CSRF-Token": theirs.csrf},  # another session's token
            {"X-CSRF-Token": got.csrf, "Origin": "https://evil.example"},
            {"X-CSRF-Token": got.csrf, "Origin": f"http://127.0.0.1.evil.example:{port}"},
            {"X-CSRF-Token": got.csrf, "Origin": f"https://127.0.0.1:{port}"},  # other scheme
            {"X-CSRF-Token": got.csrf.upper()},
        ]
        for headers in attempts:
            for path in ("/smart/api/prescription", "/smart/api/prescription/sign"):
                r = b.post(path, params={"s": got.sid}, headers=headers, json={"draftVersion": 0})
                assert r.status_code == 403, (headers, path, r.text[:200])
                assert_outcome(r)
        view = b.get("/smart/api/prescription", params={"s": got.sid}).json()
        assert view["signed"] is None and view["draftVersion"] == 0
        # another browser holding the session id and even the CSRF token gets nothing without the cookie
        r = other.post("/smart/api/prescription/sign", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf},
                       json={})
        assert r.status_code == 401
        assert other.get("/smart/api/prescription", params={"s": got.sid}).status_code == 401
        assert other.get("/smart/app", params={"s": got.sid}).status_code == 401


# ---------------------------------------------------------------------------------------------------------
# redirect_uri and the iss / fhirServer allowlists
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stranger() -> Iterator[FaultProxy]:
    """A server that is not allowlisted: records every request it gets (it must get none)."""
    proxy = FaultProxy(upstream="http://127.0.0.1:9")  # forwards nowhere: it answers 404 to everything
    proxy.inject(Fault("*", ".*", "status", status=404))
    port = free_port()
    with serve(proxy, port) as url:
        proxy.upstream = url  # its own address, for the tests to name; never forwarded to
        yield proxy


def _stranger_url(stranger: FaultProxy) -> str:
    return stranger.upstream


def test_redirect_uri_is_always_ours(rig: Rig) -> None:
    with rig.browser() as b:
        r = b.get("/smart/launch", params={"iss": rig.fhir_base, "redirect_uri": "https://evil.example/cb"})
        assert r.status_code == 302
        q = parse_qs(urlsplit(r.headers["location"]).query)
        assert q["redirect_uri"] == [f"{rig.url}/smart/callback"]
        assert urlsplit(r.headers["location"]).netloc == urlsplit(rig.url).netloc  # the EHR's own auth server
        # the authorization server refuses any other redirect_uri, and never redirects there
        evil = r.headers["location"].replace(q["redirect_uri"][0].replace(":", "%3A").replace("/", "%2F"),
                                             "https%3A%2F%2Fevil.example%2Fcb")
        assert "evil.example" in evil
        r = b.get(evil)
        assert r.status_code in (400, 401, 403), r.status_code
        assert "evil.example" not in r.headers.get("location", "")


def test_iss_allowlist(rig: Rig, stranger: FaultProxy) -> None:
    port = urlsplit(rig.url).port
    s = _stranger_url(stranger)
    hostile = [f"{s}/fhir", f"{rig.fhir_base}.evil.example", f"{rig.fhir_base}/../../evil",
               f"http://evil.example@127.0.0.1:{port}/sandbox/fhir", f"{rig.fhir_base}@{urlsplit(s).netloc}",
               f"{rig.fhir_base}?x=1", f"{rig.fhir_base}#x", f"HTTP://127.0.0.1:{port}/SANDBOX/fhir",
               f"http://localhost:{port}/sandbox/fhir", "javascript:alert(1)", "file:///etc/passwd",
               f"{rig.fhir_base}\r\nX-Injected: 1", "x" * 5000]
    before = len(stranger.seen)
    with rig.browser() as b:
        for iss in hostile:
            for params in ({"iss": iss}, {"iss": iss, "launch": "abc"}):
                r = b.get("/smart/launch", params=params)
                assert r.status_code == 400, (iss[:80], r.status_code)
                assert "location" not in r.headers
                assert "Traceback" not in r.text
    assert len(stranger.seen) == before, "a refused iss was contacted"


def test_fhir_server_allowlist_for_hooks(rig: Rig, stranger: FaultProxy) -> None:
    s = _stranger_url(stranger)
    token = rig.mint("patient/*.rs", "onc-26")
    before = len(stranger.seen)
    for server in (f"{s}/fhir", f"{s}/sandbox/fhir", f"{rig.fhir_base}@{urlsplit(s).netloc}",
                   f"{rig.fhir_base}/../../x", f"{rig.fhir_base}?a=b", "file:///etc/passwd"):
        r = rig.hook(ES, hook_body("onc-26", token=token, fhir_server=server))
        assert r.status_code in (400, 412), (server, r.text[:200])
        assert_outcome(r)
    assert len(stranger.seen) == before, "the hook's token was sent to a server that is not allowlisted"


# ---------------------------------------------------------------------------------------------------------
# Request size limits
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"/cds-services/{ES}", f"/cds-services/{PV}", f"/cds-services/{ES}/feedback",
                                  "/cds-services/no-such-service"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_cds_request_size_limit(rig: Rig, path: str, chunked: bool) -> None:
    limit = rig.settings.max_body_bytes
    body = hook_body("onc-27")
    body["prefetch"] = {"patient": {"resourceType": "Patient", "id": "onc-27", "text": {"status": "generated",
                                                                                          "div": "x" * (limit + 10)}}}
    raw = json.dumps(body).encode()
    assert len(raw) > limit
    content: Any = raw
    if chunked:
        def gen() -> Iterator[bytes]:
            for i in range(0, len(raw), 65536):
                yield raw[i:i + 65536]
        content = gen()
    headers = {"Authorization": f"Bearer {rig.cds_jwt(path)}", "Content-Type": "application/json"}
    start = time.monotonic()
    r = httpx.post(f"{rig.direct}{path}", content=content, headers=headers, timeout=30)
    assert r.status_code == 413, r.text[:300]
    assert_outcome(r)
    assert time.monotonic() - start < 10


def test_smart_api_size_limit(rig: Rig) -> None:
    with rig.browser() as b:
        got = ehr_launch(b, patient="onc-28")
        big = {"edits": {"notes": "x" * 300_000}, "draftVersion": 0}
        for path in ("/smart/api/prescription", "/smart/api/prescription/sign"):
            r = b.post(path, params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf}, json=big)
            assert r.status_code == 413, r.text[:200]
            assert_outcome(r)
        assert b.get("/smart/api/prescription", params={"s": got.sid}).json()["signed"] is None


def test_unique_hook_instance_does_not_bypass_replay(rig: Rig) -> None:
    """The replay cache keys on the JWT, not on the body: a new body with a used JWT is still refused."""
    jwt = rig.cds_jwt(f"/cds-services/{PV}")
    body = hook_body("onc-29", service_id=PV, prefetch={"patient": None})
    first = rig.hook(PV, body, token=jwt)
    assert first.status_code in (200, 412)
    body["hookInstance"] = str(uuid.uuid4())
    again = rig.hook(PV, body, token=jwt)
    assert again.status_code == 401
    assert_outcome(again)
