"""Read a running app's SQLite store from a test thread (Playwright's sync API and the live server keep event
loops in theirs, so the read runs on its own loop in another thread)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def stored_rows(app: Any, ns: str) -> list[tuple[str, Any]]:
    """(key, value) of every row in one namespace of the app's store."""
    from service.state import open_state_store  # values are sealed at rest: read them through the same keys

    async def rows() -> list[tuple[str, Any]]:
        store = open_state_store(app.state.settings)
        try:
            return list(await store.scan(ns))
        finally:
            await store.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, rows()).result(timeout=30)
