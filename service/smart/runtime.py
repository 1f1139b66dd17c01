"""Per-application state of the SMART app: its keys, one outbound HTTP client for OAuth calls, and the
in-process cache of loaded patients (the store holds the durable copy; any replica can rebuild from it)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx
from fastapi import FastAPI, Request

from service.config import Settings
from service.smart.keys import AppKeys, load_or_create_keys
from service.smart.tokens import ClientConfig

CACHE_SIZE = 200


class PatientCache(OrderedDict):  # type: ignore[type-arg]
    """The loaded patients of recent sessions, each kept `ttl` seconds (ONCO_EXERCISE_PATIENT_CACHE_SECONDS):
    patient data stays in memory only as long as the app page needs it, then is read again from the EHR."""

    def __init__(self, ttl: float, size: int = CACHE_SIZE) -> None:
        super().__init__()
        self.ttl, self.size = ttl, size

    def remember(self, sid: str, value: Any) -> None:
        super().__setitem__(sid, (time.monotonic() + self.ttl, value))
        self.move_to_end(sid)
        while len(self) > self.size:
            self.popitem(last=False)

    def get(self, sid: str, default: Any = None) -> Any:  # type: ignore[override]
        item = super().get(sid)
        if item is None:
            return default
        if item[0] < time.monotonic():
            super().pop(sid, None)
            return default
        return item[1]

    def __contains__(self, sid: object) -> bool:
        return isinstance(sid, str) and self.get(sid) is not None


class SmartRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._keys: AppKeys | None = None
        self._http: httpx.AsyncClient | None = None
        self.loads: dict[str, asyncio.Task[Any]] = {}
        self.cache = PatientCache(settings.patient_cache_seconds)
        self.locks: dict[str, asyncio.Lock] = {}
        self.transport: httpx.AsyncBaseTransport | None = None  # tests may route OAuth calls elsewhere

    @property
    def keys(self) -> AppKeys:
        if self._keys is None:
            self._keys = load_or_create_keys(self.settings)
        return self._keys

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None or self._http.is_closed:
            self._http = httpx.AsyncClient(timeout=self.settings.fhir_timeout_seconds, follow_redirects=False,
                                           transport=self.transport)
        return self._http

    def client_config(self) -> ClientConfig:
        s = self.settings
        return ClientConfig(client_id=s.smart_client_id, auth=s.smart_client_auth, alg=s.smart_alg,
                            keys=self.keys if s.smart_client_auth == "private_key_jwt" else None,
                            timeout=s.fhir_timeout_seconds)

    def lock(self, sid: str) -> asyncio.Lock:
        lock = self.locks.get(sid)
        if lock is None:
            lock = self.locks[sid] = asyncio.Lock()
        return lock

    def remember(self, sid: str, loaded: Any) -> None:
        self.cache.remember(sid, loaded)
        for old in [k for k in self.locks if k not in self.cache and not self.locks[k].locked()]:
            self.locks.pop(old, None)

    async def close(self) -> None:
        for task in list(self.loads.values()):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()


def runtime(app: FastAPI) -> SmartRuntime:
    rt = getattr(app.state, "smart", None)
    if rt is None:
        rt = app.state.smart = SmartRuntime(app.state.settings)
    return rt


def of(request: Request) -> SmartRuntime:
    return runtime(request.app)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The router's lifespan (FastAPI merges it into the app's, inside the store's)."""
    from service.smart.reconcile import reconciler

    rt = runtime(app)
    rt.keys  # generate (or load) the signing keys at start, not during the first launch
    try:
        async with reconciler(rt, app):  # interrupted signings get their audit outcome (service.smart.reconcile)
            yield
    finally:
        await rt.close()
