"""The chaos rig: real redis-server (durable), the real sandbox as the EHR in its own process, and real
`onco-exercise serve` replicas sharing Redis; short leases and timeouts keep the suite fast."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from tests.chaos.procs import Ehr, Redis, wait_until
from tests.hostile.sets import prescription_sets, written_set
from tests.ops.procs import ServeProcess, cds_clients_json, cds_key, onco_env, shared_state_keys
from tests.smart.conftest import Launched, finish
from tests.support.live import free_port

CLIENT_ID = "onco-chaos"
LEASE = 2.0  # ONCO_EXERCISE_SIGN_LEASE_SECONDS of the replicas
WAIT = 8.0  # ONCO_EXERCISE_SIGN_WAIT_SECONDS
FHIR_TIMEOUT = 3.0
SIGNABLE_WITHIN = 60.0  # the bound: a patient is signable again within a minute


@dataclass
class Chaos:
    tmp: Path
    redis: Redis
    ehr: Ehr
    public_port: int
    key: Any
    replicas: list[ServeProcess] = field(default_factory=list)

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def replica(self, name: str, *, public: bool = False) -> ServeProcess:
        """A `serve` replica; `public=True` runs it on the public URL's port (where the EHR redirects)."""
        folder = self.tmp / f"{name}-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        env = onco_env(folder, storage_url=self.redis.url, fhir_servers=self.ehr.iss, public_url=self.public_url,
                       smart_client_id=CLIENT_ID, cds_clients=cds_clients_json(self.key),
                       state_keys=shared_state_keys(), sign_lease_seconds=str(LEASE), sign_wait_seconds=str(WAIT),
                       fhir_timeout_seconds=str(FHIR_TIMEOUT), log_json="true")
        proc = ServeProcess(env, folder / "serve.log", port=self.public_port if public else None)
        self.replicas.append(proc)
        proc.wait_ready()
        return proc

    def launch(self, browser: httpx.Client, replica: ServeProcess, patient: str) -> Launched:
        r = browser.post(f"{self.ehr.url}/sandbox/auth/launch",
                         json={"patient": patient, "practitioner": "sandbox-clinician"})
        assert r.status_code == 201, r.text
        got = finish(browser.get(f"{replica.url}/smart/launch", params={"iss": self.ehr.iss,
                                                                        "launch": r.json()["launch"]},
                                 follow_redirects=True))
        assert browser.get(f"{replica.url}/smart/api/prescription", params={"s": got.sid}).status_code == 200
        return got

    @staticmethod
    def sign(cookies: httpx.Cookies, url: str, got: Launched, timeout: float = 60) -> httpx.Response:
        with httpx.Client(cookies=cookies, timeout=timeout) as c:
            return c.post(f"{url}/smart/api/prescription/sign", params={"s": got.sid},
                          headers={"X-CSRF-Token": got.csrf}, json={"draftVersion": 0})

    def sign_in_background(self, pool: ThreadPoolExecutor, cookies: httpx.Cookies, url: str,
                           got: Launched) -> Any:
        def run() -> httpx.Response | Exception:
            try:
                return self.sign(cookies, url, got)
            except httpx.HTTPError as exc:  # the replica was killed under the request
                return exc

        return pool.submit(run)

    def sign_under_fault(self, browser: httpx.Client, pool: ThreadPoolExecutor, replica: ServeProcess,
                         patient: str, fault: Callable[[], None], settle: float = 0.5) -> tuple[Launched, Any, str]:
        """Launch on `replica`, then press Sign & send while the EHR is paused (the transaction waits in its
        socket); once the audit intent is recorded and `settle` seconds have passed, run `fault()`, then let
        the EHR go on (unless the fault removed it). Returns (launch, the pending answer, signing key)."""
        got = self.launch(browser, replica, patient)
        self.ehr.pause()
        try:
            pending = self.sign_in_background(pool, browser.cookies, replica.url, got)
            key = self.wait_for_intent(got.sid)
            time.sleep(settle)
            fault()
        finally:
            if self.ehr.proc is not None:
                self.ehr.resume()
        return got, pending, key

    # -- the shared store ------------------------------------------------------------------------------

    def _scan(self, ns: str) -> list[dict[str, Any]]:
        from service.config import Settings
        from service.state import open_state_store

        async def scan() -> list[dict[str, Any]]:
            store = open_state_store(Settings(storage_url=self.redis.url, state_keys=shared_state_keys(),
                                              data_dir=self.tmp))
            try:
                return [v for _, v in await store.scan(ns)]
            finally:
                await store.close()

        return asyncio.run(scan())

    def intent_of(self, sid: str) -> str | None:
        """The signing key of the audit intent recorded by this session's signing, once it is there."""
        return next((i["signingKey"] for i in self._scan("audit-intent") if i.get("session") == sid), None)

    def wait_for_intent(self, sid: str) -> str:
        return wait_until(lambda: self.intent_of(sid), 15, "the audit intent (recorded before writing)")

    def audit_records(self, key: str) -> list[dict[str, Any]]:
        return [r for r in self._scan("audit") if r.get("signingKey") == key]

    def pending(self, key: str) -> list[dict[str, Any]]:
        return [i for i in self._scan("audit-intent") if i.get("signingKey") == key]

    # -- the verdict -------------------------------------------------------------------------------------

    def assert_exactly_one(self, patient: str, answer: dict[str, Any]) -> dict[str, Any]:
        """One referral set on the EHR (exactly what the answer lists) and one settled audit record."""
        key = answer["key"]
        with self.ehr.fhir() as fhir:
            sets = prescription_sets(fhir, patient)
        assert key in sets, sorted(sets)
        assert sets[key] == written_set(answer), (sets[key], written_set(answer))
        assert len(sets[key]["Task"]) == 1 and len(sets[key]["CarePlan"]) == 1
        records = self.audit_records(key)
        assert len(records) == 1, records
        assert records[0]["outcome"] == "success"
        assert sorted(records[0]["written"]) == sorted(w["reference"] for w in answer["written"])
        assert self.pending(key) == []
        return records[0]


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    tmp = tmp_path_factory.mktemp("chaos")
    (tmp / "redis").mkdir()
    (tmp / "ehr").mkdir()
    redis, ehr = Redis(tmp / "redis"), Ehr(tmp / "ehr")
    redis.start()
    ehr.start()
    rig = Chaos(tmp, redis, ehr, free_port(), cds_key())
    try:
        r = httpx.post(f"{ehr.url}/sandbox/auth/register", timeout=30, json={
            "client_id": CLIENT_ID, "redirect_uris": [f"{rig.public_url}/smart/callback"],
            "client_name": "chaos replicas"})
        assert r.status_code in (200, 201), r.text
        yield rig
    finally:
        for p in rig.replicas:
            p.stop()
        ehr.stop()
        redis.stop()


@pytest.fixture
def rig(chaos: Chaos) -> Iterator[Chaos]:
    """The module's rig, with every replica of the test stopped and the EHR and Redis running afterwards."""
    yield chaos
    for p in chaos.replicas:
        p.stop()
    chaos.replicas.clear()
    if chaos.ehr.proc is None:
        chaos.ehr.start()
    else:
        chaos.ehr.resume()
    if chaos.redis.proc is None:
        chaos.redis.start()


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0
