"""Load a launched patient once: FHIR reads (with the session's token), snapshot, prescription, strategy.

The callback starts the load in the background and redirects at once; the app page and the API await it.
The raw resources are kept in the store (namespace smart-data) so another replica, or this one after a
restart, rebuilds the snapshot without reading the EHR again; the in-process cache makes repeated API calls
cost microseconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from service.config import Settings
from service.smart.runtime import SmartRuntime
from service.smart.scopes import Grants, fallback_notes
from service.smart.sessions import DATA_NS, TOKEN_NS
from service.smart.tokens import RefreshFailed, TokenKeeper

log = logging.getLogger("service.smart.load")

PATIENT_BUDGET_SECONDS = 20.0


class LoadError(Exception):
    """The patient could not be loaded; `relaunch` says whether launching again may help."""

    def __init__(self, message: str, status: int = 502, relaunch: bool = False) -> None:
        super().__init__(message)
        self.message, self.status, self.relaunch = message, status, relaunch


@dataclass
class Loaded:
    """One session's patient, ready to serve."""

    snapshot: Any
    patient: dict[str, Any] | None
    now: datetime
    complete: bool
    failures: list[str]
    truncated: list[str]
    capability: Any  # service.fhir.capability.Capability | None
    strategy: str | None
    strategy_why: list[str]
    notes: list[str] = field(default_factory=list)
    requests: int = 0
    requester_display: str | None = None  # the signed-in clinician's name, from their Practitioner resource
    open_referrals: list[Any] = field(default_factory=list)  # service.fhir.open_referrals.OpenReferral
    note_author: str | None = None  # who authors a PractitionerRole signer's notes: its Practitioner, else Organization


def keeper_for(rt: SmartRuntime, store: Any, sid: str, sess: dict[str, Any]) -> TokenKeeper:
    return TokenKeeper(store, sid, rt.client_config(), sess["token_endpoint"],
                       ttl=rt.settings.session_ttl_seconds, transport=rt.transport)


class _Provider:
    """FhirClient token hooks over a TokenKeeper: the 401 hook refreshes only if nobody else did."""

    def __init__(self, keeper: TokenKeeper) -> None:
        self.keeper = keeper
        self.last: str | None = None

    async def token(self) -> str | None:
        from service.fhir.errors import FhirError

        try:
            self.last = await self.keeper.access_token()
        except RefreshFailed:  # surfaces as a 401 of each FHIR call, which the callers already handle
            raise FhirError(401, "the EHR session has expired and could not be renewed", kind="auth") from None
        return self.last

    async def on_401(self) -> str | None:
        try:
            self.last = await self.keeper.after_401(self.last or "")
        except RefreshFailed:
            return None
        return self.last


def fhir_client(rt: SmartRuntime, store: Any, sid: str, sess: dict[str, Any], base: str | None = None) -> Any:
    from service.fhir.client import FhirClient

    p = _Provider(keeper_for(rt, store, sid, sess))
    return FhirClient(base or sess["iss"], token_provider=p.token, on_unauthorized=p.on_401,
                      timeout=rt.settings.fhir_timeout_seconds, transport=rt.transport)


# ---------------------------------------------------------------------------------------------------------
# Write-back strategy: the server's abilities x the scopes granted, explained in plain words.
# ---------------------------------------------------------------------------------------------------------

_NEEDS = {
    "full": ("CarePlan", "Goal", "ServiceRequest", "Task"),
    "service-request-only": ("ServiceRequest",),
    "document": ("DocumentReference",),
    "care-coordination": ("DocumentReference",),
}
_DESCRIBE = {
    "full": "the full plan: CarePlan, Goals, exercise ServiceRequests, the referral and its Task, and a Provenance",
    "service-request-only": "the exercise ServiceRequests and the referral (the plan travels in them and in a "
                            "document), because the EHR cannot take a CarePlan",
    "document": "a document (DocumentReference) with the readable prescription, because the EHR cannot take "
                "ServiceRequests",
    "care-coordination": "the full plan on the care-coordination FHIR server, with a document link in the EHR",
}


def _fallback_strategy(capability: Any, override: str, grants: Grants) -> str | None:
    def ok(t: str) -> bool:
        return grants.can_create(t) and (capability is None or capability.can_create(t))

    if override not in ("auto", ""):
        return override
    for strategy in ("full", "service-request-only", "document"):
        if all(ok(t) for t in _NEEDS[strategy]):
            return strategy
    return None


def decide_strategy(capability: Any, settings: Settings, granted_scope: str | None) -> tuple[str | None, list[str]]:
    """(strategy or None when nothing can be written, reasons a clinician can read)."""
    grants = Grants.parse(granted_scope)
    granted_list = (granted_scope or "").split()
    strategy: str | None
    if capability is None:  # the EHR's abilities are unknown: go by the granted scopes alone
        strategy = _fallback_strategy(None, settings.writeback_strategy, grants)
    else:
        from service.fhir.writeback import WritebackError, choose_strategy

        try:
            strategy = choose_strategy(capability, settings.writeback_strategy, granted_list,
                                       care_coordination_available=bool(settings.care_coordination_fhir_url))
        except (WritebackError, ValueError):  # not even a DocumentReference can be written
            strategy = None
    why: list[str] = []
    if settings.writeback_strategy not in ("auto", ""):
        why.append(f"The service is configured to use the '{settings.writeback_strategy}' strategy.")
    for t in ("CarePlan", "Goal", "ServiceRequest", "Task", "DocumentReference"):
        if capability is not None and not capability.can_create(t):
            why.append(f"The EHR's FHIR server does not accept new {t} resources.")
        elif not grants.can_create(t):
            why.append(f"The EHR did not grant permission to create {t} (scope patient/{t}.c).")
    if strategy is None or strategy == "none":
        why.insert(0, "Nothing can be written to the EHR with the permissions granted: the prescription can be "
                      "reviewed and printed, but not sent.")
        return None, why
    why.insert(0, f"Sign & send will write {_DESCRIBE.get(strategy, strategy)}.")
    return strategy, why


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def _patient_of(resources: list[dict[str, Any]], patient_id: str) -> dict[str, Any] | None:
    return next((r for r in resources if r.get("resourceType") == "Patient" and r.get("id") == patient_id), None)


def _build(rt: SmartRuntime, sess: dict[str, Any], data: dict[str, Any], capability: Any) -> Loaded:
    from service.clinical.snapshot import build_snapshot
    from service.fhir.open_referrals import open_referrals

    now = datetime.fromisoformat(data["loadedAt"])
    resources = data["resources"]
    snapshot = build_snapshot({"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": r} for r in resources]}, now)
    strategy, why = decide_strategy(capability, rt.settings, sess.get("scope_granted"))
    notes = fallback_notes(sess.get("scope_fallback"))
    if not sess.get("requester"):
        notes.append("The EHR did not say which clinician is signed in (no fhirUser): the referral cannot be "
                     "signed from this session.")
    return Loaded(snapshot=snapshot, patient=_patient_of(resources, sess["patient"]), now=now,
                  complete=data.get("complete", True), failures=list(data.get("failures") or []),
                  truncated=list(data.get("truncated") or []), capability=capability,
                  strategy=strategy, strategy_why=why, notes=notes, requests=data.get("requests", 0),
                  requester_display=data.get("requesterDisplay"), open_referrals=open_referrals(resources),
                  note_author=data.get("noteAuthor"))


def _capability_from(raw: dict[str, Any] | None) -> Any:
    if not raw:
        return None
    from service.fhir.capability import parse_capability

    try:
        return parse_capability(raw)
    except ValueError:
        return None


def practitioner_name(resource: dict[str, Any] | None) -> str | None:
    """"Dr Alex Morgan" from a Practitioner's first usable HumanName (text, else prefix given family)."""
    if not isinstance(resource, dict):
        return None
    for n in resource.get("name") or []:
        if not isinstance(n, dict):
            continue
        if isinstance(n.get("text"), str) and n["text"].strip():
            return n["text"].strip()
        parts = [*(n.get("prefix") or []), *(n.get("given") or []), n.get("family") or ""]
        name = " ".join(str(x) for x in parts if isinstance(x, str) and x).strip()
        if name:
            return name
    return None


async def _requester_name(client: Any, sess: dict[str, Any]) -> tuple[str | None, str | None]:
    """Read the Practitioner (or PractitionerRole) named by fhirUser, when it lives on this EHR: the signer's
    name, and for a PractitionerRole who authors the notes: the Practitioner behind it, else its Organization
    (the PA IG lets only a Practitioner or an Organization author notes). (None, None) when it cannot be read."""
    ref = sess.get("requester") or ""
    parts = ref.split("/")
    if ref.startswith(("http://", "https://")) or len(parts) != 2 or parts[0] not in ("Practitioner",
                                                                                      "PractitionerRole"):
        return None, None
    try:
        resource = await client.read(parts[0], parts[1])
    except Exception:  # noqa: BLE001 - a display name is cosmetic: fall back to the reference
        log.info("smart load: the signed-in clinician's %s could not be read", parts[0])
        return None, None
    if parts[0] == "PractitionerRole":
        who = (resource.get("practitioner") or {}) if isinstance(resource, dict) else {}
        org = (resource.get("organization") or {}) if isinstance(resource, dict) else {}
        behind = next((r["reference"] for r, kind in ((who, "Practitioner/"), (org, "Organization/"))
                       if isinstance(r, dict) and isinstance(r.get("reference"), str)
                       and r["reference"].startswith(kind)), None)
        return (who.get("display") if isinstance(who, dict) else None), behind
    return practitioner_name(resource), None


async def _fetch(rt: SmartRuntime, store: Any, sid: str, sess: dict[str, Any]) -> dict[str, Any]:
    from service.fhir.errors import FhirError
    from service.fhir.patient_data import fetch_patient_data

    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    async with fhir_client(rt, store, sid, sess) as client:
        data_task = asyncio.create_task(fetch_patient_data(client, sess["patient"], now,
                                                           budget_seconds=PATIENT_BUDGET_SECONDS))
        name_task = asyncio.create_task(_requester_name(client, sess))
        try:
            raw_cap: dict[str, Any] | None = await client.capability_statement()
        except FhirError:
            raw_cap = None
        data = await data_task
        requester_display, note_author = await name_task
    if _patient_of(data.resources, sess["patient"]) is None:
        tokens = await store.get(TOKEN_NS, sid)
        if tokens is None or tokens.get("refresh_failed"):
            raise LoadError("The EHR session has expired and could not be renewed.", 401, relaunch=True)
        refused = any(": 401" in f or ": 403" in f for f in data.failures)
        raise LoadError("The patient record could not be read from the EHR" +
                        (" (access was refused)." if refused else "."), 502, relaunch=True)
    log.info("smart load: %d resources in %d requests, %.0f ms", len(data.resources), data.requests,
             (time.perf_counter() - started) * 1000)
    return {"resources": data.resources, "complete": data.complete, "failures": data.failures,
            "truncated": data.truncated, "requests": data.requests, "capability": raw_cap,
            "requesterDisplay": requester_display, "noteAuthor": note_author, "loadedAt": now.isoformat()}


async def ensure_loaded(rt: SmartRuntime, store: Any, sid: str, sess: dict[str, Any]) -> Loaded:
    """The session's patient: from the in-process cache, from the store, or fetched (once, per session)."""
    cached = rt.cache.get(sid)
    if cached is not None:
        return cached
    async with rt.lock(sid):
        cached = rt.cache.get(sid)
        if cached is not None:
            return cached
        data = await store.get(DATA_NS, sid)
        if data is None:
            try:
                data = await _fetch(rt, store, sid, sess)
            except RefreshFailed:
                raise LoadError("The EHR session has expired and could not be renewed.", 401, relaunch=True) \
                    from None
            await store.put(DATA_NS, sid, data, ttl=rt.settings.patient_cache_seconds)
        loaded = _build(rt, sess, data, _capability_from(data.get("capability")))
        rt.remember(sid, loaded)
        return loaded


def start_loading(rt: SmartRuntime, store: Any, sid: str, sess: dict[str, Any]) -> None:
    """Begin the load right after the callback so the app page finds it (nearly) done."""
    async def run() -> None:
        try:
            await ensure_loaded(rt, store, sid, sess)
        except Exception as exc:  # noqa: BLE001 - the page asks again and shows the error
            log.info("smart background load failed: %s", type(exc).__name__)
        finally:
            rt.loads.pop(sid, None)

    rt.loads[sid] = asyncio.create_task(run(), name=f"smart-load-{sid[:6]}")
