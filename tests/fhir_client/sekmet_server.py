"""A real sekmet-fhir server for the FHIR client tests and the snapshot-fetch benchmark.

Only sekmet's FHIR router runs (on a small FastAPI app, in-process, served over real loopback HTTP by the
caller), with an in-memory SQLite store and its workflow simulator off; its FHIR base is `{url}/fhir`.
The Goal/CarePlan search-parameter gaps are closed with the sandbox's `patch_search_params()`; while that
module did not exist this file carried a test-only copy, kept below as the fallback.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

from fastapi import FastAPI

from tests.support.live import free_port, serve


def _fallback_patch() -> None:
    from sekmet.fhir.search_params import PARAMS, SearchParam

    extra = {
        "Goal": ["identifier:token:identifier", "patient:reference:subject:Patient", "subject:reference:subject",
                 "lifecycle-status:token:lifecycleStatus", "category:token:category",
                 "target-date:date:target.dueDate"],
        "CarePlan": ["goal:reference:goal", "activity-reference:reference:activity.reference"],
    }
    for rtype, lines in extra.items():
        table = PARAMS.setdefault(rtype, {})
        for line in lines:
            bits = line.split(":")
            table.setdefault(bits[0], SearchParam(bits[0], bits[1], tuple(bits[2].split("|")),
                                                  bits[3] if len(bits) > 3 else None))


def patch_search_params() -> None:
    try:
        from service.sandbox.fhir_server import patch_search_params as sandbox_patch
    except ImportError:
        _fallback_patch()
    else:
        sandbox_patch()


def sekmet_app(base_url: str, *, patch: bool = True) -> tuple[FastAPI, Any]:
    """(ASGI app serving `/fhir/...`, sekmet AppContext); `base_url` must be the live `{url}/fhir`."""
    if patch:
        patch_search_params()
    from sekmet.config import Settings as SekmetSettings
    from sekmet.context import AppContext
    from sekmet.fhir.router import build_router

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ctx = AppContext(SekmetSettings(base_url=base_url, host="127.0.0.1", db_path=":memory:",
                                    simulator={"enabled": False}, log_inbound=False))
    root.handlers[:] = handlers
    root.setLevel(level)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(build_router(lambda: ctx))
    return app, ctx


@contextmanager
def running_sekmet() -> Iterator[str]:
    """A fresh in-memory sekmet server on a free loopback port; yields its FHIR base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    app, ctx = sekmet_app(base)
    try:
        with serve(app, port):
            yield base
    finally:
        close_ctx(ctx)


def close_ctx(ctx: Any) -> None:
    try:
        ctx.subscriptions.pool.shutdown(wait=False, cancel_futures=True)
    except Exception:  # noqa: BLE001 - best effort
        pass
    try:
        with ctx.store.lock:
            ctx.store.conn.close()
    except Exception:  # noqa: BLE001
        pass
