"""Reconciling interrupted signings: an audit intent with no outcome and no live signer gets its outcome.

Why: a worker killed (or cut off from the store) between "intent recorded" and "outcome recorded" may have
written the referral; nobody might ever press Sign & send again. At start-up and then every few lease
lifetimes, each replica looks at the pending intents whose signer holds no lease any more, reads the EHR by
the identifiers in the intent (with the session's own token, refreshed if needed), and records what exists
as the signing's outcome (`how: reconciled`). When the EHR cannot be read (session gone, EHR down), it tries
again later; after `UNVERIFIED_AFTER` it records the outcome as `unverified`, listing the searches to run by
hand. A later press of Sign & send on the same draft still completes the set and updates the same record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator
from urllib.parse import parse_qsl

from service import metrics
from service.audit import pending_intents, record_writeback

log = logging.getLogger("onco_exercise.reconcile")

UNVERIFIED_AFTER = 600.0  # seconds an unreadable intent waits before it is recorded as unverified
PATIENT_SEARCH_TYPES = frozenset({"CarePlan", "Goal", "ServiceRequest", "Task", "Provenance", "DocumentReference"})


def _age(intent: dict[str, Any]) -> float:
    at = datetime.fromisoformat(str(intent.get("attemptAt") or intent["at"]).replace("Z", "+00:00"))
    return (datetime.now(timezone.utc) - at).total_seconds()


async def _read_back(rt: Any, store: Any, intent: dict[str, Any]) -> tuple[list[str], list[str], list[str]] | None:
    """(references found, searches that found nothing, optional searches that found nothing), or None when the
    EHR cannot be read now. A Provenance names the patient only through its targets, so an EHR that limits
    searches to the launch patient may not find it by tag: its absence is a note, not a failure."""
    from service.fhir.errors import FhirError
    from service.smart.load import fhir_client
    from service.smart.sessions import SESSION_NS

    sid = intent.get("session")
    sess = await store.get(SESSION_NS, sid) if sid else None
    if not sess or not sess.get("token_endpoint"):
        return None
    found: list[str] = []
    missing: list[str] = []
    optional: list[str] = []
    try:
        async with fhir_client(rt, store, sid, sess, base=intent.get("target")) as client:
            for search in intent.get("identifiers") or []:
                rtype, _, query = search.partition("?")
                params = parse_qsl(query, keep_blank_values=True)
                if rtype in PATIENT_SEARCH_TYPES and intent.get("patient"):
                    params.append(("patient", intent["patient"]))
                result = await client.search(rtype, params, max_pages=1)
                hits = [r for r in result.resources if r.get("resourceType") == rtype and r.get("id")]
                if hits:
                    found.extend(f"{rtype}/{r['id']}" for r in hits[:1])
                else:
                    (optional if rtype == "Provenance" else missing).append(search)
    except FhirError as exc:
        log.info("reconcile: the EHR could not be read (%s)", exc.status)
        return None
    except Exception as exc:  # noqa: BLE001 - refresh failures, transport errors: try again later
        log.info("reconcile: the EHR could not be read (%s)", type(exc).__name__)
        return None
    return found, missing, optional


async def reconcile_once(rt: Any, store: Any, settings: Any) -> int:
    """One pass over the pending intents; returns how many got an outcome."""
    from service.smart.api import LEASE_NS

    done = 0
    for intent in await pending_intents(store):
        key = intent.get("signingKey")
        if not key or _age(intent) < settings.sign_lease_seconds:
            continue
        if await store.get(LEASE_NS, key) is not None:
            continue  # a live signer is on it
        got = await _read_back(rt, store, intent)
        if got is None and _age(intent) < UNVERIFIED_AFTER:
            continue
        found, missing, optional = got if got is not None else ([], list(intent.get("identifiers") or []), [])
        how = "reconciled" if got is not None else "unverified"
        notes = ["an attempt at this signing was interrupted; its outcome was established by reading the EHR"
                 if got is not None else "an attempt at this signing was interrupted and the EHR could not be "
                 "read: run the searches listed under 'failed' to see what was written"]
        notes += [f"not found by search (may exist; the EHR limits searches to the patient): {o}" for o in optional]
        await record_writeback(store, practitioner=intent.get("practitioner"), patient_ref=intent["patient"],
                               strategy=intent.get("strategy", ""), written=found,
                               failed=[f"not found: {m}" if got is not None else f"unverified: {m}" for m in missing],
                               request_id=None, retention_days=settings.audit_retention_days,
                               signing_key=key, intent=intent, how=how, notes=notes)
        metrics.SIGN_RESUMED.labels(how).inc()
        done += 1
    return done


def interval(settings: Any) -> float:
    return max(5.0, settings.sign_lease_seconds * 4)


@contextlib.asynccontextmanager
async def reconciler(rt: Any, app: Any) -> AsyncIterator[None]:
    """Run `reconcile_once` at start-up and then every `interval` seconds until shutdown."""

    async def loop() -> None:
        while True:
            started = time.monotonic()
            try:
                n = await reconcile_once(rt, app.state.store, rt.settings)
                if n:
                    log.warning("reconciled %d interrupted signing(s)", n)
            except Exception as exc:  # noqa: BLE001 - e.g. the store is down: the next pass tries again
                log.info("reconcile pass skipped (%s)", type(exc).__name__)
            await asyncio.sleep(max(0.0, interval(rt.settings) - (time.monotonic() - started)))

    task = asyncio.create_task(loop(), name="reconcile-signings")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
