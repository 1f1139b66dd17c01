"""Configuration that cannot work does not start, and check-config catches all of it first: Secure-only cookies
on an http public URL, a missing private JWKS file, a lease the waiters cannot outlast, an evicting Redis; it
warns about plain-http endpoints and prints what the EHR's administrator must register."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.ops.procs import ONCO, ServeProcess, cds_clients_json, onco_env
from tests.storage.redis_server import redis_server


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ONCO, *args], env=env, capture_output=True, text=True, timeout=60)


def _env(tmp: Path, fhir_base: str, **values: str) -> dict[str, str]:
    return onco_env(tmp, fhir_servers=fhir_base, cds_clients=cds_clients_json(), **values)


def test_secure_cookies_on_an_http_public_url_refuse_to_start(fhir_base: str, tmp_path: Path) -> None:
    env = _env(tmp_path, fhir_base, public_url="http://onco.hospital.example", cookie_secure="true")
    out = run(["serve", "--port", "1"], env)
    assert out.returncode == 2 and "cookies are Secure-only" in out.stderr
    checked = run(["check-config"], env)
    assert checked.returncode == 1 and "problem  ONCO_EXERCISE_PUBLIC_URL is plain http" in checked.stdout


def test_a_missing_private_jwks_file_is_a_message_not_a_traceback(fhir_base: str, tmp_path: Path) -> None:
    env = _env(tmp_path, fhir_base, smart_client_auth="private_key_jwt",
               smart_private_jwks_file=str(tmp_path / "absent.json"))
    out = run(["serve", "--port", "1"], env)
    assert out.returncode == 2, out.stderr
    assert "ONCO_EXERCISE_SMART_PRIVATE_JWKS_FILE" in out.stderr and "Traceback" not in out.stderr
    checked = run(["check-config"], env)
    assert checked.returncode == 1 and "ONCO_EXERCISE_SMART_PRIVATE_JWKS_FILE" in checked.stdout


def test_a_sign_wait_shorter_than_the_lease_is_refused(tmp_path: Path) -> None:
    out = run(["serve", "--port", "1"], onco_env(tmp_path, sign_lease_seconds="30", sign_wait_seconds="20"))
    assert out.returncode == 2 and "ONCO_EXERCISE_SIGN_WAIT_SECONDS must exceed" in out.stderr


def test_check_config_warns_on_http_and_prints_the_registration(fhir_base: str, tmp_path: Path) -> None:
    clients = [{"iss": "https://ehr.test", "jwks_url": fhir_base.rsplit("/fhir", 1)[0] + "/jwks.json"}]
    env = onco_env(tmp_path, fhir_servers=fhir_base, cds_clients=json.dumps(clients),
                   public_url="https://onco.hospital.example", smart_client_id="abc-123",
                   smart_client_auth="private_key_jwt")
    out = run(["check-config"], env)
    assert f"FHIR server {fhir_base} is plain http" in out.stdout
    assert "jwks_url" in out.stdout and "is plain http: anyone on the path could substitute keys" in out.stdout
    for line in ("register SMART client id: abc-123 (private_key_jwt)",
                 "register SMART redirect URI: https://onco.hospital.example/smart/callback",
                 "register SMART launch URL: https://onco.hospital.example/smart/launch",
                 "patient-level scopes: openid fhirUser launch/patient offline_access patient/Patient.rs",
                 "): https://onco.hospital.example/patient/launch",
                 "register SMART JWKS URL (private_key_jwt): https://onco.hospital.example/.well-known/jwks.json",
                 "register CDS Hooks discovery URL: https://onco.hospital.example/cds-services"):
        assert line in out.stdout, out.stdout


@pytest.mark.redis
def test_check_config_refuses_an_evicting_redis(fhir_base: str, tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        async def evicting() -> None:
            r = aioredis.from_url(url)
            await r.config_set("maxmemory-policy", "allkeys-lru")
            await r.aclose()

        asyncio.run(evicting())
        out = run(["check-config"], _env(tmp_path, fhir_base, storage_url=url, state_keys="k1:" + "A" * 43))
    assert out.returncode == 1
    assert "maxmemory-policy is allkeys-lru" in out.stdout


def test_serve_says_when_it_listens_on_every_interface(fhir_base: str, tmp_path: Path) -> None:
    proc = ServeProcess(_env(tmp_path, fhir_base), tmp_path / "serve.log",
                        argv=["onco-exercise", "serve", "--host", "0.0.0.0", "--port", "0"])
    proc.port = 0
    try:
        import time

        deadline = time.monotonic() + 30
        while "all network interfaces" not in proc.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "all network interfaces" in proc.output()
    finally:
        proc.stop()
