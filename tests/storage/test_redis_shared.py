"""Several replicas share state through Redis: proven with separate OS processes, not one event loop.

(SMART sessions across replicas: tests/storage/test_replica_sessions.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from service.config import Settings
from service.ops import Readiness
from service.redis_store import RedisStore
from tests.ops.procs import cds_client_jwt, cds_clients_json, cds_key, onco_env
from tests.storage.redis_server import redis_server

CDS_CLIENTS = cds_clients_json()


def worker(url: str, *args: str) -> object:
    """Run one Store operation in a fresh Python process; returns its JSON result."""
    out = subprocess.run([sys.executable, "-m", "tests.storage.store_worker", url, *args],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_replay_cache_entry_written_by_one_process_is_seen_by_another(redis_url: str) -> None:
    jti = uuid.uuid4().hex
    assert worker(redis_url, "add", "jti", jti, '{"iss": "https://ehr.test"}') is True
    assert worker(redis_url, "add", "jti", jti, '{"iss": "replayed"}') is False  # process 2: replay refused
    assert worker(redis_url, "get", "jti", jti) == {"iss": "https://ehr.test"}


def test_single_use_state_across_processes(redis_url: str) -> None:
    key = uuid.uuid4().hex
    assert worker(redis_url, "put", "smart-state", key, '{"verifier": "x"}') is True
    assert worker(redis_url, "pop", "smart-state", key) == {"verifier": "x"}
    assert worker(redis_url, "pop", "smart-state", key) is None


def test_concurrent_adds_from_two_processes_exactly_one_wins(redis_url: str) -> None:
    key = uuid.uuid4().hex
    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(lambda _: worker(redis_url, "add-many", "jti", key, "25"), range(2)))
    assert sum(counts) == 1  # type: ignore[arg-type]


def test_two_serve_processes_share_replay_protection(redis_url: str, fhir_base: str, start_serve,
                                                     tmp_path: Path) -> None:
    """Two `onco-exercise serve` replicas on one Redis: a CDS client JWT accepted by one is a replay for the
    other (the jti cache is shared), while a fresh JWT is accepted by either."""
    key = cds_key()
    public = "https://onco.example.org"
    env = onco_env(tmp_path, storage_url=redis_url, fhir_servers=fhir_base, cds_clients=cds_clients_json(key),
                   public_url=public)
    a, b = start_serve(env), start_serve(env)
    for replica in (a, b):
        r = httpx.get(f"{replica.url}/readyz", timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["checks"][0] == {**r.json()["checks"][0], "name": "store", "ok": True}

    token = cds_client_jwt(key, f"{public}/cds-services")
    auth = {"Authorization": f"Bearer {token}"}
    first = httpx.get(f"{a.url}/cds-services", headers=auth, timeout=10)
    assert first.status_code == 200, first.text
    assert "services" in first.json()
    replay = httpx.get(f"{b.url}/cds-services", headers=auth, timeout=10)
    assert replay.status_code == 401  # replica B saw replica A's jti
    fresh = cds_client_jwt(key, f"{public}/cds-services")
    assert httpx.get(f"{b.url}/cds-services", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


async def test_readiness_and_ping_report_a_redis_outage(tmp_path: Path, fhir_base: str) -> None:
    settings = Settings(mode="serve", data_dir=tmp_path, fhir_servers=[fhir_base])
    readiness = Readiness(settings, cache_seconds=0)
    try:
        with redis_server(tmp_path / "r") as url:
            store = RedisStore(url, socket_timeout=1)
            assert await store.ping() is True
            ok, _ = await readiness.check(store)
            assert ok
        assert await store.ping() is False  # the server is gone
        ok, body = await readiness.check(store)
        assert not ok and body["status"] == "not-ready"
        assert body["checks"][0]["name"] == "store" and body["checks"][0]["ok"] is False
        assert body["checks"][1]["ok"] is True  # the FHIR server is still fine, and says so
        await store.close()
    finally:
        await readiness.aclose()
