"""`onco-exercise sandbox --reset` starts clean: the cohort is reloaded and the cards show again (issue 12)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from service.cds_hooks.followup import CARD_NS, SHOWN_NS
from service.state import open_state_store
from tests.conftest import running_sandbox
from tests.support.stored import stored_rows


def _rows(app: Any, ns: str) -> list[str]:
    return [k for k, _ in stored_rows(app, ns)]


def _put(app: Any, ns: str, key: str) -> None:

    async def put() -> None:
        store = open_state_store(app.state.settings)
        try:
            await store.put(ns, key, {"shownAt": 1.0}, ttl=3600)
        finally:
            await store.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, put()).result(timeout=30)


def test_reset_clears_the_card_history_and_a_plain_restart_keeps_it(tmp_path: Path) -> None:
    with running_sandbox(tmp_path) as (_, app):
        _put(app, SHOWN_NS, "patient:fingerprint")
        _put(app, CARD_NS, "card-uuid")
    with running_sandbox(tmp_path) as (_, app):  # a plain restart: a card shown today stays quiet
        assert _rows(app, SHOWN_NS) == ["patient:fingerprint"] and _rows(app, CARD_NS) == ["card-uuid"]
    with running_sandbox(tmp_path, sandbox_reset=True) as (_, app):
        assert _rows(app, SHOWN_NS) == [] and _rows(app, CARD_NS) == []
