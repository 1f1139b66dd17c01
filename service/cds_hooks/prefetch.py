"""Getting the patient's data for a hook call: prefetch first, then fallback reads within a time budget.

- A prefetch key set to null means "the client has no data" (an empty result, not a gap).
- A key the client omitted is read from `fhirServer` with the hook's `fhirAuthorization` token — only when
  that server is allowlisted (`ONCO_EXERCISE_FHIR_SERVERS`); otherwise nothing is sent anywhere (SSRF guard:
  the token and the patient id never reach an unknown host) and the call gets 412.
- Fallback reads run concurrently through `service.fhir.patient_data` with `ONCO_EXERCISE_HOOK_BUDGET_SECONDS`
  as the deadline; what has not arrived by then is abandoned (see `HookData.complete`).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from service.config import Settings

from .discovery import prefetch_templates, required_keys
from .models import HookRequest

log = logging.getLogger(__name__)


# Data whose absence could hide a reason not to exercise today (labs, temperature): without it no one-click
# referral is offered. Other gaps (medications, procedures ...) are named on the card but do not block it.
SAFETY_TYPES = frozenset({"Observation"})


class DataUnavailable(Exception):
    """The data needed cannot be obtained: answered with 412 (CDS Hooks 2.0)."""


@dataclass
class HookData:
    items: list[dict[str, Any]]  # prefetch values (resources / Bundles) and fetched resources
    complete: bool = True  # False: safety-relevant data (SAFETY_TYPES) is missing
    missing: list[str] = field(default_factory=list)  # readable, one per query not obtained
    eligibility_unknown: bool = False  # the Patient or the Conditions could not be read in time
    fetched: int = 0  # fallback requests sent


def _failed_key(line: str) -> str:
    return line.split(" ", 1)[0]


def prefetch_complete(req: HookRequest) -> bool:
    """True when every prefetch key was sent (possibly null): no fallback read is needed."""
    prefetch = req.prefetch or {}
    return all(k in prefetch for k in prefetch_templates())


async def gather(req: HookRequest, settings: Settings, now: datetime) -> HookData:
    templates = prefetch_templates()
    prefetch = req.prefetch or {}
    items = [v for k, v in prefetch.items() if k in templates and v is not None]
    missing_keys = [k for k in templates if k not in prefetch]
    if not missing_keys:
        return HookData(items)
    if not req.fhir_server:
        raise DataUnavailable(f"prefetch is missing {', '.join(missing_keys)} and no fhirServer was given")
    if not settings.fhir_allowed(req.fhir_server):
        log.warning("hook %s: fhirServer is not allowlisted; no fallback read made", req.hook_instance)
        raise DataUnavailable(f"prefetch is missing {', '.join(missing_keys)} and fhirServer is not an allowed "
                              "FHIR server for this service")

    from service.fhir.client import FhirClient
    from service.fhir.patient_data import fetch_patient_data

    budget = settings.hook_budget_seconds
    token = req.fhir_authorization.access_token if req.fhir_authorization else None
    async with FhirClient(req.fhir_server, token, timeout=min(settings.fhir_timeout_seconds, budget),
                          retries=1, backoff=0.05, transport=_shared_transport()) as client:
        data = await fetch_patient_data(client, req.patient_id, now, budget_seconds=budget, keys=missing_keys)
    items.extend(data.resources)
    if data.complete:
        return HookData(items, fetched=data.requests)

    required = required_keys()
    timed_out = {_failed_key(f) for f in data.failures if "budget" in f}
    errored = {_failed_key(f) for f in data.failures} - timed_out
    if errored & required or (errored and not data.resources and not timed_out and len(errored) == len(missing_keys)):
        # The server refused or could not answer (401/403/404/5xx/unreachable) for what we cannot do without.
        raise DataUnavailable("the FHIR server did not return the patient data: "
                              + "; ".join(f for f in data.failures if _failed_key(f) in errored))
    log.info("hook %s: fallback incomplete (%d queries missing)", req.hook_instance, len(data.failures))
    missing = [f"{f.split(':', 1)[0]}: " + ("not read within the time budget" if _failed_key(f) in timed_out
                                            else "the FHIR server could not return it") for f in data.failures]
    failed_types = {_resource_type(k) for k in timed_out | errored}
    return HookData(items, complete=not (failed_types & SAFETY_TYPES), missing=missing,
                    eligibility_unknown=bool(timed_out & required), fetched=data.requests)


class _SharedTransport(httpx.AsyncBaseTransport):
    """One connection pool (and one TLS context) per event loop for every fallback read, instead of a new
    httpx client per hook call: building a client's TLS context costs ~30 ms of CPU, more than the reads.
    Requests carry their own Authorization header (the hook's token), so sharing connections shares nothing
    else. Closing a FhirClient leaves it open; it closes with its event loop."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:  # shared: one FhirClient closing must not close it for the others
        return None


_TRANSPORTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SharedTransport] = weakref.WeakKeyDictionary()


def _shared_transport() -> _SharedTransport:
    loop = asyncio.get_running_loop()  # connections belong to the loop that opened them (tests run several)
    transport = _TRANSPORTS.get(loop)
    if transport is None:
        transport = _TRANSPORTS[loop] = _SharedTransport()
    return transport


def _resource_type(key: str) -> str:
    from service.fhir.queries import query_by_key

    try:
        return query_by_key(key).resource_type
    except KeyError:
        return ""
