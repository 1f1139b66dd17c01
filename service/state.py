"""The store as the app uses it: values sealed at rest, back-end failures turned into one clear error.

`StateStore` wraps a SQLiteStore or RedisStore:
- every value is sealed (service.sealing) except in `PLAIN_NAMESPACES`, whose values carry no PHI and must
  stay readable by the back end's atomic owner checks (signing leases);
- any back-end failure (Redis down or timing out, SQLite I/O error) becomes `StoreUnavailable`, which the web
  layer answers with 503 (service.ops); the outage is logged once when it starts and once when it ends (not
  once per request), counted in `onco_store_errors_total` and shown by `onco_store_up`; the back end's own
  client reconnects, so the service recovers without a restart;
- a value that no key opens (key retired too early, tampering) reads as absent, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import Any, Awaitable, Callable, TypeVar

from service import metrics
from service.sealing import KeyRing, Unsealable, is_sealed
from service.storage import Store, open_store

log = logging.getLogger("onco_exercise.store")

RELOAD_INTERVAL = 10.0  # seconds between two key-file reloads triggered by unknown key ids
PLAIN_NAMESPACES = frozenset({"sign-lease", "writeback-lock", "smart-refresh-lock"})
T = TypeVar("T")


class StoreUnavailable(Exception):
    """The state store cannot be reached or used right now (answered 503; retry later)."""


def _backend_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, asyncio.TimeoutError)
    try:
        from redis.exceptions import RedisError

        errors += (RedisError,)
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return errors


_BACKEND_ERRORS = _backend_errors()


class StateStore:
    """Implements service.storage.Store over another Store; see the module docstring."""

    def __init__(self, inner: Store, ring: KeyRing | None, plain: frozenset[str] = PLAIN_NAMESPACES,
                 reload: Callable[[], KeyRing] | None = None) -> None:
        self.inner = inner
        self.ring = ring
        self.plain = plain
        self.reload = reload  # re-reads the key file when a value names a key we do not have (a rotation)
        self._reloaded_at = 0.0
        self.down_since: float | None = None
        metrics.STORE_UP.set(1)

    # -- outage bookkeeping ------------------------------------------------------------------------------

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await fn()
        except _BACKEND_ERRORS as exc:
            metrics.STORE_ERRORS.labels(op, type(exc).__name__).inc()
            if self.down_since is None:
                self.down_since = time.monotonic()
                metrics.STORE_UP.set(0)
                log.error("state store unavailable (%s); answering 503 until it is back", type(exc).__name__)
            raise StoreUnavailable(type(exc).__name__) from None
        if self.down_since is not None:
            log.warning("state store available again after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None
            metrics.STORE_UP.set(1)
        return result

    # -- sealing -----------------------------------------------------------------------------------------

    def _seal(self, ns: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
        if self.ring is None or ns in self.plain:
            return value
        return self.ring.seal(ns, key, value)

    def _open(self, ns: str, key: str, stored: dict[str, Any] | None) -> dict[str, Any] | None:
        if stored is None or self.ring is None or ns in self.plain:
            return stored
        if not is_sealed(stored):  # written before encryption was on: `onco-exercise state-key reseal` seals it
            return stored
        try:
            return self.ring.open(ns, key, stored)
        except Unsealable as exc:
            kid = self.ring.sealed_with(stored)
            if (self.reload is not None and kid not in {k for k, _ in self.ring.keys}
                    and time.monotonic() - self._reloaded_at > RELOAD_INTERVAL):
                self._reloaded_at = time.monotonic()
                try:
                    self.ring = self.reload()
                    log.warning("state keys reloaded: a value was sealed with a new key (%s)", kid)
                    return self._open(ns, key, stored)
                except Exception as reload_exc:  # noqa: BLE001 - keep the old ring
                    log.warning("state keys could not be reloaded (%s)", type(reload_exc).__name__)
            metrics.STORE_ERRORS.labels("open", "Unsealable").inc()
            log.warning("state entry in %s does not open (%s): treated as absent", ns, exc)
            return None

    # -- the Store interface -----------------------------------------------------------------------------

    async def get(self, ns: str, key: str) -> dict[str, Any] | None:
        return self._open(ns, key, await self._call("get", lambda: self.inner.get(ns, key)))

    async def put(self, ns: str, key: str, value: dict[str, Any], ttl: float | None = None) -> None:
        sealed = self._seal(ns, key, value)
        await self._call("put", lambda: self.inner.put(ns, key, sealed, ttl))

    async def add(self, ns: str, key: str, value: dict[str, Any], ttl: float | None = None) -> bool:
        sealed = self._seal(ns, key, value)
        return await self._call("add", lambda: self.inner.add(ns, key, sealed, ttl))

    async def pop(self, ns: str, key: str) -> dict[str, Any] | None:
        return self._open(ns, key, await self._call("pop", lambda: self.inner.pop(ns, key)))

    async def delete(self, ns: str, key: str) -> None:
        await self._call("delete", lambda: self.inner.delete(ns, key))

    async def scan(self, ns: str, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        rows = await self._call("scan", lambda: self.inner.scan(ns, prefix))
        out = []
        for k, v in rows:
            opened = self._open(ns, k, v)
            if opened is not None:
                out.append((k, opened))
        return out

    async def touch(self, ns: str, key: str, owner: str, ttl: float) -> bool:
        return await self._call("touch", lambda: self.inner.touch(ns, key, owner, ttl))

    async def release(self, ns: str, key: str, owner: str) -> bool:
        return await self._call("release", lambda: self.inner.release(ns, key, owner))

    async def entries(self, ns: str) -> list[tuple[str, dict[str, Any], float | None]]:
        rows = await self._call("entries", lambda: self.inner.entries(ns))
        return [(k, o, t) for k, v, t in rows if (o := self._open(ns, k, v)) is not None]

    async def namespaces(self) -> list[str]:
        return await self._call("namespaces", self.inner.namespaces)

    async def ping(self) -> bool:
        try:
            return await self._call("ping", self.inner.ping)
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # back-end extras (purge_expired, eviction_policy)
        return getattr(self.inner, name)

    # -- rotation ----------------------------------------------------------------------------------------

    async def reseal(self) -> int:
        """Re-seal every value not sealed with the ring's first key (after adding a new key first); returns
        how many were rewritten. Entries keep their remaining lifetime."""
        if self.ring is None:
            return 0
        count = 0
        for ns in await self.namespaces():
            if ns in self.plain:
                continue
            raw = await self._call("entries", lambda: self.inner.entries(ns))
            for key, stored, left in raw:
                if self.ring.sealed_with(stored) == self.ring.primary:
                    continue
                value = self._open(ns, key, stored) if is_sealed(stored) else stored
                if value is None or (left is not None and left <= 0):
                    continue
                await self.put(ns, key, value, ttl=left)
                count += 1
        return count


def open_state_store(settings: Any, ring: KeyRing | None = None) -> StateStore:
    """The app's store for these settings: the back end from the storage URL, sealed with the state keys."""
    from service.sealing import load_key_ring

    reload = None if settings.state_keys else (lambda: load_key_ring(settings))
    return StateStore(open_store(settings.resolved_storage_url()), ring or load_key_ring(settings), reload=reload)
