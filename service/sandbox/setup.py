"""Sandbox wiring: settings additions, the runtime object, routers, the FHIR guard and start-up work.

`create_app` calls `prepare_settings` then `install` in sandbox mode only; nothing here runs under `serve`.
Start-up (a lifespan part): keys, the sekmet FHIR store (reset on request), the synthetic cohort.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI

from service.config import Settings

log = logging.getLogger("onco.sandbox")

_RUNNING: list["SandboxRuntime"] = []  # sandboxes running in this process, most recent last


@dataclass
class SandboxRuntime:
    """Everything one running sandbox needs; `app.state.sandbox`."""

    settings: Settings
    keys: Any = None  # keys.SandboxKeys, set at start-up
    fhir: Any = None  # fhir_server.SandboxFhir, set at start-up
    store: Any = None  # the app's Store, set at start-up
    auth: Any = None  # auth_server.SandboxAuthServer
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def public_url(self) -> str:
        return self.settings.public_url

    @property
    def dir(self) -> Path:
        return Path(self.settings.data_dir) / "sandbox"

    @property
    def fhir_base(self) -> str:
        return self.settings.sandbox_fhir_base

    @property
    def issuer(self) -> str:
        return f"{self.public_url}/sandbox/auth"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def cds_client_iss(self) -> str:
        return f"{self.public_url}/sandbox"

    @property
    def cds_jwks_url(self) -> str:
        return f"{self.public_url}/sandbox/.well-known/jwks.json"


def runtime_for(app: Any = None) -> SandboxRuntime:
    """The sandbox of `app` (a FastAPI app or a Request), else the most recently started one in this process."""
    for obj in (app, getattr(app, "app", None)) if app is not None else ():
        rt = getattr(getattr(obj, "state", None), "sandbox", None)
        if isinstance(rt, SandboxRuntime):
            return rt
    if not _RUNNING:
        raise RuntimeError("no sandbox is running in this process")
    return _RUNNING[-1]


SANDBOX_SERVICE_CONTACT = "+1-555-0210 or referrals@exercise-oncology.example (Monday to Friday, 9am to 5pm)"
SANDBOX_CARE_TEAM_CONTACT = "Riverside Cancer Centre, +1-555-0199 (24-hour line for urgent problems)"


def prepare_settings(settings: Settings) -> None:
    """Allowlist the sandbox FHIR base, trust the sandbox CDS client, give the handout the cohort's contacts and,
    unless configured otherwise, refer to the sandbox's two exercise services (idempotent)."""
    if settings.sandbox_fhir_base not in settings.fhir_servers:
        settings.fhir_servers.append(settings.sandbox_fhir_base)
    if not settings.exercise_service_contact:  # the cohort's exercise service (service/sandbox/cohort.py)
        settings.exercise_service_contact = SANDBOX_SERVICE_CONTACT
    if not settings.care_team_contact:
        settings.care_team_contact = SANDBOX_CARE_TEAM_CONTACT
    if not settings.exercise_services:  # the inbox's light service (the default) and the receiver's full one
        from service.sandbox.receiver import service_entry

        settings.exercise_services = [
            {"reference": settings.exercise_service_ref, "name": settings.exercise_service_name, "endpoint": None},
            service_entry(settings.public_url)]
    iss = f"{settings.public_url}/sandbox"
    if not any(c.get("iss") == iss for c in settings.cds_clients):
        settings.cds_clients.append({"iss": iss, "jwks_url": f"{settings.public_url}/sandbox/.well-known/jwks.json"})


def _optional_router(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module).router
    except ImportError as exc:
        log.info("sandbox: %s not available (%s)", module, exc.__class__.__name__)
        return None


async def _load_cohort(app: FastAPI, runtime: SandboxRuntime, reset: bool) -> None:
    try:
        from service.sandbox import cohort
    except ImportError:
        log.warning("sandbox: no cohort module yet; the FHIR server starts empty")
        return
    from service.sandbox.fhir_server import sandbox_fhir_client

    async with sandbox_fhir_client(app) as fhir:
        await cohort.load_cohort(fhir, reset)


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the sandbox: FHIR server (behind the SMART guard), auth server, EHR screen, inbox, CDS JWKS."""
    from service.sandbox.auth_guard import FhirGuard
    from service.sandbox.auth_server import SandboxAuthServer, build_router as auth_router
    from service.sandbox.auth_server import well_known_router

    runtime = SandboxRuntime(settings=settings)
    runtime.auth = SandboxAuthServer(runtime)
    app.state.sandbox = runtime

    app.include_router(well_known_router(runtime))
    app.include_router(auth_router(runtime))
    for module in ("service.sandbox.ehr", "service.sandbox.inbox", "service.sandbox.inbox_report",
                   "service.sandbox.receiver", "service.sandbox.month_later"):
        router = _optional_router(module)
        if router is not None:
            app.include_router(router)
    app.add_middleware(FhirGuard, runtime=runtime)
    from service.sandbox.perimeter import SandboxPerimeter, cors_exempt

    app.add_middleware(SandboxPerimeter, public_url=settings.public_url)
    app.state.cors_exempt = cors_exempt  # service.ops: no CORS on the sandbox's pages and authorization endpoints

    @asynccontextmanager
    async def sandbox_lifespan(app: FastAPI) -> AsyncIterator[None]:
        from service.sandbox.fhir_server import open_fhir
        from service.sandbox.keys import load_keys

        runtime.store = app.state.store
        runtime.keys = load_keys(runtime.dir)
        runtime.fhir = open_fhir(settings.public_url, runtime.dir, reset=settings.sandbox_reset)
        _RUNNING.append(runtime)
        try:
            await _load_cohort(app, runtime, settings.sandbox_reset)
            if settings.sandbox_reset:  # a clean sandbox shows its cards again
                from service.cds_hooks.followup import forget_all

                await forget_all(app.state.store)
            yield
        finally:
            if runtime in _RUNNING:
                _RUNNING.remove(runtime)
            runtime.fhir.close()
            runtime.fhir = None

    app.state.lifespan_parts.append(sandbox_lifespan)
