"""`onco-exercise serve` and `check-config` as real subprocesses: the container's entrypoint, outside one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.ops.procs import ONCO, cds_clients_json, dead_url, onco_env
from tests.ops.test_logs import ACCESS, JWT

CDS_CLIENTS = cds_clients_json()


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ONCO, *args], env=env, capture_output=True, text=True, timeout=60)


def test_serve_answers_health_readiness_and_metrics(fhir_base: str, start_serve, tmp_path: Path) -> None:
    env = onco_env(tmp_path, fhir_servers=fhir_base, cds_clients=CDS_CLIENTS,
                   public_url="https://onco.example.org", log_level="debug")
    p = start_serve(env)
    assert httpx.get(f"{p.url}/healthz").json() == {"status": "ok"}
    r = httpx.get(f"{p.url}/readyz", headers={"X-Request-ID": "probe-1"})
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    assert r.headers["x-request-id"] == "probe-1"
    assert r.headers["strict-transport-security"].startswith("max-age")
    r = httpx.post(f"{p.url}/cds-services/nope", headers={"Authorization": f"Bearer {JWT}"},
                   json={"fhirAuthorization": {"access_token": ACCESS}})
    assert r.status_code in (401, 403, 404) and r.json()["resourceType"] == "OperationOutcome"
    metrics = httpx.get(f"{p.url}/metrics").text
    assert 'onco_http_requests_total{method="GET",route="/readyz",status="200"} 1.0' in metrics
    assert p.stop() in (0, -15)  # uvicorn re-raises SIGTERM after a graceful shutdown
    out = p.output()
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(r["msg"] == "Application shutdown complete." for r in records)
    assert any(r.get("request_id") == "probe-1" and r["logger"] == "onco_exercise.access" for r in records)
    assert JWT not in out and ACCESS not in out and "Traceback" not in out


@pytest.mark.parametrize("values,expected", [
    ({"cds_clients": "[{not json"}, "ONCO_EXERCISE_CDS_CLIENTS: ONCO_EXERCISE_CDS_CLIENTS is not valid JSON"),
    ({"cds_clients": '[{"iss": "x"}]'}, "give exactly one of 'jwks_url' or 'jwks'"),
    ({"cds_clients": '[{"iss": "x", "jwks": {"keys": []}}]'}, "'jwks' needs at least one key"),
    ({"fhir_servers": "ehr.example.org/fhir"}, "ONCO_EXERCISE_FHIR_SERVERS: not an http(s) URL"),
    ({"public_url": "ftp://x"}, "ONCO_EXERCISE_PUBLIC_URL"),
    ({"max_body_bytes": "-5"}, "ONCO_EXERCISE_MAX_BODY_BYTES: must be a positive number"),
    ({"log_level": "LOUD"}, "ONCO_EXERCISE_LOG_LEVEL"),
    ({"storage_url": "postgres://db/x"}, "ONCO_EXERCISE_STORAGE_URL"),
    ({"writeback_strategy": "care-coordination"}, "needs ONCO_EXERCISE_CARE_COORDINATION_FHIR_URL"),
])
def test_serve_rejects_bad_settings_with_a_clear_message(values: dict[str, str], expected: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """In-process through the CLI's own main() (fast); the subprocess test below covers the real entrypoint."""
    from service.cli import main

    base = {"fhir_servers": "https://ehr.example.org/fhir", "cds_clients": CDS_CLIENTS}
    env = onco_env(tmp_path, **{**base, **values})
    for k in list(os.environ):
        if k.startswith("ONCO_EXERCISE_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        if k.startswith("ONCO_EXERCISE_"):
            monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--port", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_serve_entrypoint_rejects_bad_json_without_traceback(tmp_path: Path) -> None:
    out = run(["serve", "--port", "1"], onco_env(tmp_path, fhir_servers="https://ehr.example.org/fhir",
                                                 cds_clients="[{oops"))
    assert out.returncode == 2
    assert out.stderr.startswith("onco-exercise: invalid configuration:")
    assert "ONCO_EXERCISE_CDS_CLIENTS" in out.stderr and "Traceback" not in out.stderr + out.stdout


def test_serve_refuses_to_start_without_cds_clients_or_fhir_servers(tmp_path: Path) -> None:
    out = run(["serve", "--port", "1"], onco_env(tmp_path, fhir_servers="https://ehr.example.org/fhir"))
    assert out.returncode == 2
    assert "ONCO_EXERCISE_CDS_CLIENTS is empty" in out.stderr
    assert "ONCO_EXERCISE_ALLOW_NO_CDS_CLIENTS" in out.stderr
    out = run(["serve", "--port", "1"], onco_env(tmp_path, cds_clients=CDS_CLIENTS))
    assert out.returncode == 2 and "ONCO_EXERCISE_FHIR_SERVERS is empty" in out.stderr


def test_serve_without_cds_clients_when_explicitly_allowed(fhir_base: str, start_serve, tmp_path: Path) -> None:
    p = start_serve(onco_env(tmp_path, fhir_servers=fhir_base, allow_no_cds_clients="true"))
    assert httpx.get(f"{p.url}/healthz").status_code == 200
    p.stop()
    assert "ONCO_EXERCISE_CDS_CLIENTS is empty" in p.output()  # loudly warned


def test_serve_without_cds_clients_refuses_unauthenticated_hooks(fhir_base: str, start_serve,
                                                                 tmp_path: Path) -> None:
    p = start_serve(onco_env(tmp_path, fhir_servers=fhir_base, allow_no_cds_clients="true"))
    assert httpx.get(f"{p.url}/cds-services").status_code == 401


def test_check_config_reports_server_facts_and_succeeds(fhir_base: str, tmp_path: Path) -> None:
    root = fhir_base.rsplit("/fhir", 1)[0]
    clients = [{"iss": "https://ehr.test", "jwks_url": f"{root}/jwks.json"}]
    out = run(["check-config"], onco_env(tmp_path, fhir_servers=fhir_base, cds_clients=json.dumps(clients),
                                         public_url="https://onco.example.org"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ok       FHIR {fhir_base}: FHIR 4.0.1" in out.stdout
    assert f"ok       FHIR {fhir_base}: SMART authorize {root}/auth/authorize" in out.stdout
    assert f"FHIR {fhir_base}: write-back strategy" in out.stdout
    assert "CDS client https://ehr.test: JWKS" in out.stdout and "1 key(s)" in out.stdout
    assert out.stdout.rstrip().endswith("no problems found.")


def test_check_config_lists_every_problem_and_fails(fhir_base: str, tmp_path: Path) -> None:
    down = dead_url()
    clients = [{"iss": "https://ehr.test", "jwks_url": dead_url() + "/jwks.json"}]
    env = onco_env(tmp_path, fhir_servers=f"{fhir_base},{down}", cds_clients=json.dumps(clients),
                   storage_url="redis://127.0.0.1:1/0", fhir_timeout_seconds="2")
    out = run(["check-config"], env)
    assert out.returncode == 1
    problems = [line for line in out.stdout.splitlines() if line.startswith("problem")]
    assert any("storage redis://127.0.0.1:1/0" in p for p in problems)
    assert any(f"FHIR {down}: cannot read its CapabilityStatement" in p for p in problems)
    assert any("CDS client https://ehr.test: JWKS" in p for p in problems)
    assert f"ok       FHIR {fhir_base}: FHIR 4.0.1" in out.stdout  # the good server is still reported
    assert f"{len(problems)} problems found." in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_check_config_with_invalid_settings(tmp_path: Path) -> None:
    out = run(["check-config"], onco_env(tmp_path, fhir_servers="not a url"))
    assert out.returncode == 2 and "ONCO_EXERCISE_FHIR_SERVERS" in out.stdout and "Traceback" not in out.stderr
