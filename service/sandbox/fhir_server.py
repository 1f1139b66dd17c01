"""The sandbox's FHIR R4 server: sekmet-fhir run in-process, its FHIR router only, at `{public_url}/sandbox/fhir`.

Why only the router: sekmet's own `create_app` also exposes its test-harness UI (broken under a prefix) and
calls `logging.basicConfig` for the whole process. Its routes are hard-coded under `/fhir/...`, so requests
reach it with the `/sandbox` prefix stripped (see `StripPrefix`). Every absolute URL it writes (Location,
fullUrl, paging links) comes from `Settings.base_url`, which is therefore the public FHIR base.

Gaps closed here (see `patch_search_params`): sekmet 0.1.1 has no Goal search parameters (a conditional create
on Goal fails, `Goal?identifier=` silently returns every Goal) and lacks CarePlan `goal` and
`activity-reference`. Its simulator (auto-fulfils orders) is turned off; it never binds a socket of its own.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from service.private_files import private_dir

log = logging.getLogger("onco.sandbox.fhir")

FHIR_PREFIX = "/sandbox/fhir"
STRIP = "/sandbox"  # sekmet's router serves /fhir/...; we strip this much of the path before it
PARAMS_VERSION = "onco-exercise-1"  # bump when the patches below change: existing DBs are reindexed once

# type -> "name:kind:path[|path][:target]" (sekmet's own table syntax)
_EXTRA_PARAMS: dict[str, list[str]] = {
    "Goal": [
        "identifier:token:identifier",
        "patient:reference:subject:Patient",
        "subject:reference:subject",
        "lifecycle-status:token:lifecycleStatus",
        "achievement-status:token:achievementStatus",
        "category:token:category",
        "target-date:date:target.dueDate",
        "start-date:date:startDate",
    ],
    "CarePlan": [
        "goal:reference:goal",
        "activity-reference:reference:activity.reference",
        "instantiates-canonical:uri:instantiatesCanonical",
    ],
}


def patch_search_params() -> None:
    """Add the missing Goal/CarePlan search parameters to sekmet's table (idempotent, process-wide).

    Must run before the first write: sekmet indexes at write time (`open_fhir` reindexes an existing DB).
    """
    from sekmet.fhir.search_params import PARAMS, SearchParam

    for rtype, lines in _EXTRA_PARAMS.items():
        table = PARAMS.setdefault(rtype, {})
        for line in lines:
            bits = line.split(":")
            name, kind, paths = bits[0], bits[1], tuple(bits[2].split("|"))
            target = bits[3] if len(bits) > 3 else None
            table.setdefault(name, SearchParam(name, kind, paths, target))


def sekmet_settings(public_url: str, db_path: Path | str) -> Any:
    from sekmet.config import Settings as SekmetSettings

    return SekmetSettings(
        base_url=f"{public_url}{FHIR_PREFIX}",
        public_url=f"{public_url}{STRIP}",
        host="127.0.0.1",
        db_path=str(db_path),
        data_dir=str(Path(db_path).parent) if str(db_path) != ":memory:" else "data",
        simulator={"enabled": False},
        log_inbound=False,
        facility_name="onco-exercise sandbox EHR",
        software_name="onco-exercise sandbox FHIR server (sekmet-fhir)",
    )


class StripPrefix:
    """ASGI wrapper: `/sandbox/fhir/...` -> `/fhir/...` for sekmet's router (root_path keeps the prefix)."""

    def __init__(self, app: ASGIApp, prefix: str = STRIP) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(self.prefix):
                scope = dict(scope)
                scope["path"] = path[len(self.prefix):] or "/"
                if scope.get("raw_path"):
                    raw = scope["raw_path"]
                    p = self.prefix.encode()
                    scope["raw_path"] = raw[len(p):] if raw.startswith(p) else raw
                scope["root_path"] = scope.get("root_path", "") + self.prefix
        await self.app(scope, receive, send)


@dataclass
class SandboxFhir:
    """One running sekmet FHIR store and the ASGI app that serves it (without our auth)."""

    ctx: Any  # sekmet.context.AppContext
    asgi: ASGIApp  # expects paths starting with /sandbox/fhir
    base_url: str
    db_path: Path

    def close(self) -> None:
        try:
            self.ctx.subscriptions.pool.shutdown(wait=False, cancel_futures=True)
        except Exception:  # noqa: BLE001 - best effort at shut-down
            pass
        try:
            for t in list(getattr(self.ctx.simulator, "timers", [])):
                t.cancel()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.ctx.reset_clients()
            with self.ctx.store.lock:
                self.ctx.store.conn.close()
        except Exception:  # noqa: BLE001
            pass


def reset_fhir_data(sandbox_dir: Path) -> None:
    """Delete the FHIR database (and its WAL files): the next start is a clean server."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(sandbox_dir) / f"fhir.db{suffix}"
        if p.exists():
            p.unlink()
    bulk = Path(sandbox_dir) / "bulk"
    if bulk.is_dir():
        shutil.rmtree(bulk, ignore_errors=True)


def add_sort_index(store: Any) -> None:
    """sekmet sorts `_sort=-date` through its idx table with no (type, id, param, lo) index: 0.7-1.1 s per page
    for a patient with 1,000 Observations. This covering index makes it ~0.03 s (see docs/smart-app.md)."""
    with store.lock:
        store.conn.execute("CREATE INDEX IF NOT EXISTS idx_res_param_lo ON idx(type, id, param, lo)")


def open_fhir(public_url: str, sandbox_dir: Path, reset: bool = False) -> SandboxFhir:
    """Start sekmet on `{sandbox_dir}/fhir.db`; `reset` deletes the database first."""
    sandbox_dir = private_dir(Path(sandbox_dir))
    if reset:
        reset_fhir_data(sandbox_dir)
    db = sandbox_dir / "fhir.db"
    if not db.exists():  # created 0600 before sekmet opens it (SQLite gives -wal/-shm the same mode)
        os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))
    patch_search_params()

    root = logging.getLogger()
    handlers_before = list(root.handlers)
    level_before = root.level
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from sekmet.context import AppContext
    from sekmet.fhir.router import build_router

    db_path = sandbox_dir / "fhir.db"
    fresh = not db_path.exists()
    settings = sekmet_settings(public_url, db_path)
    ctx = AppContext(settings)
    # sekmet must not reconfigure our logging (it only does so in create_app, which we do not call: check anyway)
    root.handlers[:] = handlers_before
    root.setLevel(level_before)

    add_sort_index(ctx.store)
    if ctx.store.kv_get("onco_params_version") != PARAMS_VERSION:
        n = 0 if fresh else ctx.store.reindex_all()  # a new DB was indexed with the patched table already
        ctx.store.kv_set("onco_params_version", PARAMS_VERSION)
        if n:
            log.info("sandbox FHIR: reindexed %d resources for the added search parameters", n)

    fhir_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    fhir_app.include_router(build_router(lambda: ctx))
    fhir_app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"],
                            expose_headers=["Location", "ETag", "Last-Modified", "Content-Location"])
    return SandboxFhir(ctx=ctx, asgi=StripPrefix(fhir_app), base_url=settings.base_url, db_path=db_path)


def sandbox_fhir_client(app: Any, timeout: float = 30.0) -> httpx.AsyncClient:
    """An httpx client bound in-process to the sandbox FHIR server, base URL = the public FHIR base.

    Server-side and trusted: it bypasses the SMART guard (use it for start-up loading and sandbox internals,
    never hand it to code acting for a user). Use as `async with sandbox_fhir_client(app) as fhir: ...`.
    """
    runtime = app.state.sandbox
    if runtime.fhir is None:
        raise RuntimeError("the sandbox FHIR server is not running (lifespan not started)")
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=runtime.fhir.asgi),
        base_url=runtime.fhir.base_url,
        headers={"Accept": "application/fhir+json"},
        timeout=timeout,
    )
