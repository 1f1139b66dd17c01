"""Sandbox hardening: no DNS rebinding (Host check), no CORS on the authorization endpoints and pages (but on
the FHIR API and the token endpoint, which browser apps need), a Content-Security-Policy on every page, and a
registration endpoint that never hands an existing client id to someone else."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import running_sandbox


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    with running_sandbox(tmp_path_factory.mktemp("perimeter")) as (url, app):
        yield url, app


def test_a_foreign_host_header_is_refused(site: tuple[str, Any]) -> None:
    url, _ = site
    port = url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io"):
        r = httpx.get(f"{url}/sandbox/", headers={"Host": host}, timeout=10)
        assert r.status_code == 421, host
        assert httpx.get(f"{url}/cds-services", headers={"Host": host}, timeout=10).status_code == 421
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert httpx.get(f"{url}/sandbox/", headers={"Host": host}, timeout=10).status_code == 200


def test_no_cors_on_authorization_endpoints_and_pages(site: tuple[str, Any]) -> None:
    url, _ = site
    origin = {"Origin": "https://elsewhere.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    for path in ("/sandbox/auth/authorize", "/sandbox/auth/launch", "/sandbox/auth/register", "/sandbox/",
                 "/sandbox/exercise-service/"):
        r = httpx.options(f"{url}{path}", headers=preflight, timeout=10)
        assert "access-control-allow-origin" not in r.headers, path
        r = httpx.get(f"{url}{path}", headers=origin, timeout=10)
        assert "access-control-allow-origin" not in r.headers, path
    for path in ("/sandbox/auth/token", "/sandbox/fhir/metadata"):
        r = httpx.options(f"{url}{path}", headers=preflight, timeout=10)
        assert r.headers.get("access-control-allow-origin"), path


def test_pages_carry_a_content_security_policy(site: tuple[str, Any]) -> None:
    url, _ = site
    for path in ("/sandbox/", "/sandbox/patients/onc-01", "/sandbox/exercise-service/sign-in"):
        r = httpx.get(f"{url}{path}", timeout=30)
        csp = r.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "object-src 'none'" in csp and "frame-ancestors 'self'" in csp, path


def test_registration_never_overwrites_a_client(site: tuple[str, Any]) -> None:
    url, _ = site
    body = {"client_id": "perimeter-app", "redirect_uris": ["http://127.0.0.1:9/callback"]}
    assert httpx.post(f"{url}/sandbox/auth/register", json=body, timeout=10).status_code == 201
    assert httpx.post(f"{url}/sandbox/auth/register", json=body, timeout=10).status_code == 200  # the same again
    taken = {**body, "redirect_uris": ["http://127.0.0.1:9999/steal"]}
    r = httpx.post(f"{url}/sandbox/auth/register", json=taken, timeout=10)
    assert r.status_code == 409
    for builtin in ("onco-exercise",):
        r = httpx.post(f"{url}/sandbox/auth/register", json={**taken, "client_id": builtin}, timeout=10)
        assert r.status_code in (400, 409)
