"""A lease: a lock in the shared store that expires within seconds unless its holder, alive, renews it.

Why: a lock held for the length of a session (hours) outlives a worker killed mid-write, and nobody can sign
that patient until it expires. A lease is renewed every third of its lifetime by a background task of the
live holder; a dead holder stops renewing, and the next caller takes the lease over after at most `ttl`
seconds. Renewal and release are owner-checked on the back end (`Store.touch` / `Store.release`), so a late
holder never extends or drops a lease somebody else has taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, AsyncIterator

log = logging.getLogger("onco_exercise.lease")


class Lease:
    """One lease on (namespace, key); `held()` keeps it alive while the block runs."""

    def __init__(self, store: Any, ns: str, key: str, ttl: float) -> None:
        self.store, self.ns, self.key, self.ttl = store, ns, key, ttl
        self.owner = uuid.uuid4().hex
        self.lost = False

    async def acquire(self) -> bool:
        """Take the lease if nobody holds a live one."""
        return bool(await self.store.add(self.ns, self.key, {"owner": self.owner, "since": time.time()},
                                         ttl=self.ttl))

    async def holder_alive(self) -> bool:
        """Whether somebody (else) holds a live lease on the key right now."""
        return await self.store.get(self.ns, self.key) is not None

    async def renew(self) -> bool:
        ok = bool(await self.store.touch(self.ns, self.key, self.owner, self.ttl))
        if not ok:
            self.lost = True
        return ok

    async def release(self) -> None:
        try:
            await self.store.release(self.ns, self.key, self.owner)
        except Exception as exc:  # noqa: BLE001 - an unreleased lease simply expires after `ttl`
            log.warning("lease not released (%s): it expires by itself", type(exc).__name__)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator["Lease"]:
        """Renew in the background until the block ends, then release. Store outages during renewal are
        tolerated (the next renewal retries); losing the lease is logged and flagged in `lost`."""

        async def keep() -> None:
            while True:
                await asyncio.sleep(self.ttl / 3)
                try:
                    if not await self.renew():
                        log.warning("lease lost (expired before renewal): another worker may take over")
                        return
                except Exception as exc:  # noqa: BLE001 - e.g. the store is briefly down; try again
                    log.debug("lease renewal failed (%s)", type(exc).__name__)

        task = asyncio.create_task(keep(), name=f"lease-{self.ns}")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await self.release()
