"""The sandbox FHIR server (sekmet in-process): gaps closed, public base URLs, persistence, reset, CLI wiring."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from service.app import create_app
from service.cli import main as cli_main
from service.config import Settings
from service.sandbox import setup as sandbox_setup
from service.sandbox.auth_tokens import issue_access_token
from service.sandbox.fhir_server import PARAMS_VERSION, open_fhir, sandbox_fhir_client
from tests.conftest import sandbox_settings
from tests.support.live import free_port, serve

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def sandbox(data_dir: Path, **overrides: Any) -> Iterator[tuple[Any, str, httpx.Client]]:
    """A sandbox without the cohort (these tests write what they need); yields (app, url, admin client)."""
    with pytest.MonkeyPatch.context() as mp:
        async def no_cohort(*_: Any) -> None:
            return None

        mp.setattr(sandbox_setup, "_load_cohort", no_cohort)
        port = free_port()
        app = create_app(sandbox_settings(port, data_dir, **overrides))
        with serve(app, port) as url:
            token, _ = issue_access_token(app.state.sandbox, scope="user/*.cruds", client_id="test-admin")
            with httpx.Client(base_url=f"{url}/sandbox/fhir/", timeout=20,
                              headers={"Authorization": f"Bearer {token}"}) as c:
                yield app, url, c


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, httpx.Client]]:
    with sandbox(tmp_path_factory.mktemp("sandbox-fhir")) as s:
        yield s


def goal_entry(ident: str, patient: str) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {
        "resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "150 min/week"},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/goal-category",
                                  "code": "behavioral"}]}],
        "subject": {"reference": f"Patient/{patient}"}, "identifier": [{"system": "urn:test", "value": ident}],
        "target": [{"dueDate": "2027-03-01"}]},
        "request": {"method": "POST", "url": "Goal", "ifNoneExist": f"identifier=urn:test|{ident}"}}


def test_goal_conditional_create_is_idempotent_and_searchable(live: tuple[Any, str, httpx.Client]) -> None:
    _, _, c = live
    ident, patient = str(uuid.uuid4()), f"p-{uuid.uuid4().hex[:8]}"
    assert c.put(f"Patient/{patient}", json={"resourceType": "Patient", "id": patient}).status_code == 201
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [goal_entry(ident, patient)]}
    first = c.post("", json=bundle)
    second = c.post("", json=bundle)
    assert first.status_code == second.status_code == 200, first.text
    loc1 = first.json()["entry"][0]["response"]["location"]
    loc2 = second.json()["entry"][0]["response"]["location"]
    assert second.json()["entry"][0]["response"]["status"].startswith("200")
    assert loc1.split("/_history")[0] == loc2.split("/_history")[0]
    goal_id = loc1.split("/Goal/")[1].split("/")[0]

    def total(**params: str) -> int:
        r = c.get("Goal", params=params)
        assert r.status_code == 200, r.text
        return r.json()["total"]

    assert total(identifier=f"urn:test|{ident}") == 1
    assert total(identifier="urn:test|no-such-goal") == 0  # sekmet alone would return every Goal
    assert total(patient=patient) == 1
    assert total(subject=f"Patient/{patient}", **{"lifecycle-status": "active"}) == 1
    assert total(patient=patient, **{"lifecycle-status": "cancelled"}) == 0
    assert total(patient=patient, category="behavioral") == 1
    assert total(patient=patient, **{"target-date": "ge2027-01-01"}) == 1
    assert total(patient=patient, **{"target-date": "lt2027-01-01"}) == 0

    sr = c.post("ServiceRequest", json={"resourceType": "ServiceRequest", "status": "draft", "intent": "order",
                                        "code": {"text": "exercise"}, "subject": {"reference": f"Patient/{patient}"}})
    assert sr.status_code == 201
    sr_id = sr.json()["id"]
    cp = c.post("CarePlan", json={"resourceType": "CarePlan", "status": "draft", "intent": "plan",
                                  "subject": {"reference": f"Patient/{patient}"},
                                  "goal": [{"reference": f"Goal/{goal_id}"}],
                                  "activity": [{"reference": {"reference": f"ServiceRequest/{sr_id}"}}]})
    assert cp.status_code == 201
    assert c.get("CarePlan", params={"goal": f"Goal/{goal_id}"}).json()["total"] == 1
    assert c.get("CarePlan", params={"activity-reference": f"ServiceRequest/{sr_id}"}).json()["total"] == 1
    assert c.get("CarePlan", params={"goal": "Goal/nothing"}).json()["total"] == 0


def test_absolute_urls_use_the_public_fhir_base(live: tuple[Any, str, httpx.Client]) -> None:
    _, url, c = live
    base = f"{url}/sandbox/fhir"
    r = c.post("Patient", json={"resourceType": "Patient", "name": [{"family": "Paging"}]})
    assert r.headers["location"].startswith(f"{base}/Patient/")
    for _ in range(3):
        c.post("Patient", json={"resourceType": "Patient", "name": [{"family": "Paging"}]})
    page = c.get("Patient", params={"family": "Paging", "_count": "2"}).json()
    nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
    assert nxt and nxt[0].startswith(f"{base}/Patient?")
    assert c.get(nxt[0]).status_code == 200  # the absolute link works as given
    assert all(e["fullUrl"].startswith(f"{base}/Patient/") for e in page["entry"])


def test_in_process_client_and_sekmet_settings(live: tuple[Any, str, httpx.Client]) -> None:
    app, url, _ = live
    fhir = app.state.sandbox.fhir
    assert fhir.ctx.settings.simulator.enabled is False  # no auto-fulfilled orders
    assert fhir.ctx.settings.log_inbound is False
    assert fhir.base_url == f"{url}/sandbox/fhir"
    assert fhir.db_path == Path(app.state.settings.data_dir) / "sandbox" / "fhir.db"

    import asyncio

    async def read() -> int:
        async with sandbox_fhir_client(app) as client:  # trusted: no token needed
            assert str(client.base_url).rstrip("/") == f"{url}/sandbox/fhir"
            return (await client.get("metadata")).status_code

    assert asyncio.run(read()) == 200


def test_opening_sekmet_leaves_our_logging_alone(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    fhir = open_fhir("http://127.0.0.1:9", tmp_path)
    try:
        assert (list(root.handlers), root.level) == before
    finally:
        fhir.close()


def test_existing_database_is_reindexed_once(tmp_path: Path) -> None:
    fhir = open_fhir("http://127.0.0.1:9", tmp_path)
    store = fhir.ctx.store
    store.create({"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "x"},
                  "subject": {"reference": "Patient/old"}, "identifier": [{"system": "urn:old", "value": "1"}]})
    with store.lock:  # make it look like a database written by plain sekmet (no Goal index rows)
        store.conn.execute("DELETE FROM idx WHERE type='Goal'")
    store.kv_set("onco_params_version", "plain-sekmet")
    fhir.close()

    fhir = open_fhir("http://127.0.0.1:9", tmp_path)
    try:
        result = fhir.ctx.service.search("Goal", [("identifier", "urn:old|1")])
        assert result.body["total"] == 1
        assert fhir.ctx.store.kv_get("onco_params_version") == PARAMS_VERSION
    finally:
        fhir.close()


def test_restart_keeps_data_and_reset_starts_clean(tmp_path: Path) -> None:
    with sandbox(tmp_path) as (_, _, c):
        assert c.put("Patient/keep-me", json={"resourceType": "Patient", "id": "keep-me"}).status_code == 201
        keys = (tmp_path / "sandbox" / "keys.json").read_text()
    with sandbox(tmp_path) as (app, _, c):
        assert c.get("Patient/keep-me").status_code == 200
        assert (tmp_path / "sandbox" / "keys.json").read_text() == keys  # same signing keys after restart
    with sandbox(tmp_path, sandbox_reset=True) as (_, _, c):
        assert c.get("Patient/keep-me").status_code == 404


def test_prepare_settings_is_idempotent_and_serve_has_no_sandbox(tmp_path: Path) -> None:
    s = Settings(mode="sandbox", public_url="http://127.0.0.1:8123", data_dir=tmp_path)
    sandbox_setup.prepare_settings(s)
    sandbox_setup.prepare_settings(s)
    assert s.fhir_servers == ["http://127.0.0.1:8123/sandbox/fhir"]
    assert s.cds_clients == [{"iss": "http://127.0.0.1:8123/sandbox",
                              "jwks_url": "http://127.0.0.1:8123/sandbox/.well-known/jwks.json"}]

    serve_settings = Settings(mode="serve", public_url="http://127.0.0.1:8124", data_dir=tmp_path)
    app = create_app(serve_settings)
    assert not hasattr(app.state, "sandbox")
    assert not any(getattr(r, "path", "").startswith("/sandbox") for r in app.routes)


# -- the command --------------------------------------------------------------------------------------------


def test_cli_refuses_non_loopback_host(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONCO_EXERCISE_SANDBOX_ALLOW_REMOTE", raising=False)
    assert cli_main(["sandbox", "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    assert "loopback" in capsys.readouterr().err


def test_cli_says_when_the_port_is_busy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_main(["sandbox", "--port", str(port), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"port {port}" in err and "already in use" in err and "Traceback" not in err


def test_cli_sandbox_starts_prints_urls_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCO_EXERCISE_")}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "sandbox", "--port", str(port), "--data-dir",
                             str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Data directory" in line:
                break
        out = "".join(lines)
        base = f"http://127.0.0.1:{port}"
        for url in (f"{base}/sandbox/", f"{base}/sandbox/fhir", f"{base}/sandbox/fhir/.well-known/smart-configuration",
                    f"{base}/cds-services", f"{base}/sandbox/exercise-service/"):
            assert url in out, out
        conf = httpx.get(f"{base}/sandbox/fhir/.well-known/smart-configuration", timeout=10).json()
        assert conf["token_endpoint"] == f"{base}/sandbox/auth/token"
        assert httpx.get(f"{base}/sandbox/fhir/Patient", timeout=10).status_code == 401
        assert (tmp_path / "sandbox" / "fhir.db").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, "".join(lines) + (rest or "")
    assert "Traceback" not in "".join(lines) + (rest or "")
