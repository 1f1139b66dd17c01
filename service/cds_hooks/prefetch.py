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
from functools import lru_cache
from datetime import datetime
from typing import Any

import httpx

from service import metrics
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


def _unusable(key: str, value: dict[str, Any]) -> str | None:
    """Why a prefetched value cannot be taken at face value (None: usable). Clients may answer a prefetch query
    with an OperationOutcome, a Bundle carrying an error, the wrong resource type, or one page of a longer
    search (CDS Hooks 2.0: services should check prefetch for errors; clients may page it)."""
    kind = value.get("resourceType")
    expected = _expected_types(key)
    if kind == "OperationOutcome":
        return "the EHR answered this prefetch query with an error"
    if key == "patient":
        return None if kind == "Patient" else f"expected a Patient, got {kind}"
    if kind != "Bundle":
        return f"expected a search Bundle, got {kind}"
    entries, links = value.get("entry") or [], value.get("link") or []
    if not isinstance(entries, list) or not isinstance(links, list):
        return "the search Bundle is not shaped as FHIR says (entry and link are lists)"
    matches = 0
    for entry in entries:
        res = entry.get("resource") if isinstance(entry, dict) else None
        rtype = res.get("resourceType") if isinstance(res, dict) else None
        if not isinstance(rtype, str):
            return "the search Bundle holds an entry that is not a resource"
        if rtype == "OperationOutcome":
            if any(isinstance(i, dict) and i.get("severity") in ("error", "fatal") for i in res.get("issue") or ()):
                return "the EHR's search Bundle carries an error"
            continue
        if rtype in expected:
            matches += 1
        elif rtype not in INCLUDED_TYPES:
            return f"the search Bundle holds {rtype} resources, not {' or '.join(sorted(expected))}"
    if any(isinstance(lk, dict) and lk.get("relation") == "next" for lk in links):
        return "only the first page of the search was prefetched"
    total = value.get("total")
    if isinstance(total, int) and not isinstance(total, bool) and total > matches:
        return f"the search found {total} resources but the Bundle holds {matches}"
    return None


@lru_cache(maxsize=64)
def _expected_types(key: str) -> frozenset[str]:
    """The resource type a prefetch key's query returns (cached: every hook call screens every key)."""
    return frozenset({_resource_type(key)})


# Resources a search may include alongside its matches (`_include` of the Medication a medication resource
# references); anything else in a search Bundle means the client answered another query.
INCLUDED_TYPES = frozenset({"Medication"})


def screen(req: HookRequest) -> tuple[list[Any], dict[str, str]]:
    """(usable prefetch values, {key: why it must be read again}) for the keys our templates declare; a key the
    client did not send is not screened here (it is simply missing)."""
    templates = prefetch_templates()
    items: list[Any] = []
    unusable: dict[str, str] = {}
    for key, value in (req.prefetch or {}).items():
        if key not in templates or value is None:
            continue
        why = _unusable(key, value)
        if why is None:
            items.append(value)
        else:
            unusable[key] = why
    return items, unusable


Screened = tuple[list[Any], dict[str, str]]  # what `screen` returns


def prefetch_complete(req: HookRequest, screened: Screened | None = None) -> bool:
    """True when every prefetch key was sent (possibly null) and usable: no fallback read is needed.
    `screened`: `screen(req)` when the caller has it already (the hook screens once for both questions)."""
    prefetch = req.prefetch or {}
    return all(k in prefetch for k in prefetch_templates()) and not (screened or screen(req))[1]


async def gather(req: HookRequest, settings: Settings, now: datetime, screened: Screened | None = None) -> HookData:
    templates = prefetch_templates()
    prefetch = req.prefetch or {}
    items, unusable = screened or screen(req)
    items = list(items)  # the fallback below extends it: never the caller's list
    for key, why in unusable.items():
        log.info("hook %s: prefetch %s not used: %s", req.hook_instance, key, why)
    missing_keys = [k for k in templates if k not in prefetch or k in unusable]
    if not missing_keys:
        return HookData(items)
    if unusable and not (req.fhir_server and settings.fhir_allowed(req.fhir_server)):
        # Sent but unusable, and nowhere to read it again: answer with what we have, named as incomplete.
        absent = [k for k in missing_keys if k not in unusable]
        if absent:
            raise DataUnavailable(f"prefetch is missing {', '.join(absent)} and the data cannot be read elsewhere")
        required = required_keys()
        if set(unusable) & required:
            raise DataUnavailable("the prefetched " + ", ".join(sorted(set(unusable) & required))
                                  + " could not be used and the data cannot be read elsewhere")
        failed_types = {_resource_type(k) for k in unusable}
        return HookData(items, complete=not (failed_types & SAFETY_TYPES),
                        missing=[f"{k}: {why}" for k, why in unusable.items()])
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
    if timed_out:
        metrics.HOOK_BUDGET_EXHAUSTED.labels(req.hook).inc()
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
