"""create_app(settings) -> FastAPI: wires the service's routers, shared state and (in sandbox mode) the sandbox."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator, Callable, AsyncContextManager

from fastapi import FastAPI

from service import __version__
from service.config import Settings
from service.sealing import KeyRing, load_key_ring
from service.state import open_state_store

LifespanPart = Callable[[FastAPI], AsyncContextManager[None]]


def parts_lifespan(settings: Settings, parts: list[LifespanPart], ring: KeyRing | None = None) -> LifespanPart:
    """The app's lifespan: open the store (sealed with the state keys), enter each part in order (parts may be
    appended until start-up), and leave them in reverse and close the store on the way out, whatever happens."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = open_state_store(settings, ring or load_key_ring(settings))
        await _warn_if_evicting(app.state.store)
        async with AsyncExitStack() as stack:
            for part in parts:
                await stack.enter_async_context(part(app))
            try:
                yield
            finally:
                await app.state.store.close()

    return lifespan


async def _warn_if_evicting(store: object) -> None:
    """A Redis that may evict keys can drop sessions, signing leases and audit intents (check-config refuses
    it; serve starts, since Redis may be configured later, but says so)."""
    import logging

    policy_of = getattr(store, "eviction_policy", None)
    try:
        policy = await policy_of() if policy_of is not None else "noeviction"
    except Exception:  # noqa: BLE001 - Redis not up yet: check-config and /readyz report it
        return
    if policy not in ("noeviction", None):
        logging.getLogger("onco_exercise.serve").warning(
            "the Redis store's maxmemory-policy is %s: set noeviction, or sessions, signing leases and audit "
            "records may be evicted", policy)


@asynccontextmanager
async def warm_units_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the UCUM parser during start-up, so the first result in an unusual unit does not pay ~0.4 s."""
    import asyncio

    from service.clinical.ucum import warm

    await asyncio.to_thread(warm)
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.mode == "sandbox":
        from service.sandbox.setup import prepare_settings

        prepare_settings(settings)  # adds the sandbox FHIR base and CDS client to the allowlists

    from service.fhir.validate import warm_up_lifespan
    from service.notify.outbox import retry_lifespan
    from service.cds_hooks.signature_process import signature_process_lifespan
    from service.metrics import set_build_info
    from service.clinical.rules import RULESET_VERSION

    ring = load_key_ring(settings)  # at creation, so a bad key configuration stops the start with a message
    set_build_info(__version__, RULESET_VERSION)

    # compile the validator before the first signing; load the UCUM parser before the first odd unit; retry
    # notifications to exercise services that are due (also those from before a restart);
    # check CDS client signatures in a helper process when there is a second CPU for it
    parts: list[LifespanPart] = [warm_up_lifespan, warm_units_lifespan, retry_lifespan,
                                 signature_process_lifespan]

    app = FastAPI(
        title="onco-exercise",
        version=__version__,
        description="CDS Hooks service and SMART on FHIR app for safe, personalised exercise referral in oncology.",
        lifespan=parts_lifespan(settings, parts, ring),
    )
    app.state.settings = settings
    app.state.lifespan_parts = parts

    from service import ops
    from service.cds_hooks.routes import router as cds_router
    from service.patient.routes import router as patient_router
    from service.smart.routes import router as smart_router

    app.include_router(cds_router)
    app.include_router(smart_router)
    app.include_router(patient_router)
    from service.cds_hooks.direct import DirectHookRoute, hook_route

    app.add_middleware(DirectHookRoute, route=hook_route(cds_router.routes))  # innermost: see its module

    if settings.mode == "sandbox":
        from service.sandbox.setup import install as install_sandbox

        install_sandbox(app, settings)
    ops.install(app, settings)  # last, so its middleware is outermost: request ids and metrics cover everything
    return app
