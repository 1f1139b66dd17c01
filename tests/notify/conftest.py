"""A real sandbox whose "full" exercise service (the sandbox receiver) is notified; retries are quick."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import httpx
import pytest

from tests.smart.conftest import Sandbox, _sandbox, api, ehr_launch

FULL = "Organization/community-exercise-programme"
LIGHT = "Organization/exercise-oncology-service"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from _sandbox(tmp_path_factory.mktemp("notify"), notify_retry_seconds=0.3)


def sign(b: httpx.Client, patient: str, service: str | None = FULL, **extra: Any) -> dict[str, Any]:
    """Launch the app for `patient` and sign its draft to `service`; the sign answer."""
    got = ehr_launch(b, patient=patient)
    v = api(b, got.sid).json()
    body: dict[str, Any] = {"draftVersion": v["draftVersion"], **extra}
    if service is not None:
        body["exerciseService"] = service
    r = b.post("/smart/api/prescription/sign", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf},
               json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stored(sandbox: Sandbox, fn: Callable[[Any], Any]) -> Any:
    """`await fn(store)` on a second connection to the app's SQLite store."""
    import asyncio

    async def go() -> Any:
        store = sandbox.store()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def receiver_log(sandbox: Sandbox) -> list[dict[str, Any]]:
    """What the sandbox receiver logged, oldest first (the page at /sandbox/exercise-receiver/ shows it)."""
    from service.sandbox.receiver import received

    return stored(sandbox, received)


def wait_for(check: Callable[[], Any], seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)
