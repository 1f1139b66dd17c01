"""The audit trail of write-backs: who wrote what, for which patient, when, and how.

Two steps per signing, so that no crash leaves a referral written without a record:
1. `record_intent` before anything is sent: the signing key, patient, signer, strategy, target server and the
   business identifiers the write-back will carry (store namespace `audit-intent`). If the store cannot take
   it, nothing is written.
2. `record_writeback` after: the outcome (what was written, what failed), in namespace `audit` (keys sort by
   time); `audit-index` maps the signing key to its record, so every attempt of one signing updates the same
   record (its `attempts` list grows) and a signing has exactly one record. The intent is removed once the
   outcome is settled; an uncertain one (the EHR failed or did not answer: the write may have landed) keeps
   it, so the next attempt resumes and the reconciler reads the EHR.
An intent left behind (worker killed, store lost mid-write) is finished by the next attempt of the same
signing or by service.smart.reconcile, which reads the EHR by those identifiers.

Records go to the dedicated logger `onco_exercise.audit` as structured fields (route it to an access-controlled
sink: unlike ordinary logs it names the patient) and stay in the store for `audit_retention_days`. Only
references are recorded, never resource contents.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable

from service.storage import Store

AUDIT_LOGGER = "onco_exercise.audit"
AUDIT_NS = "audit"
INTENT_NS = "audit-intent"
INDEX_NS = "audit-index"
DEFAULT_RETENTION_DAYS = 400
MAX_ATTEMPTS_KEPT = 20

audit_log = logging.getLogger(AUDIT_LOGGER)


def _reference(item: Any) -> str:
    """A resource reference for a written item: 'Type/id' (optionally /_history/v), or its Location."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        response = item.get("response") if isinstance(item.get("response"), dict) else {}
        for candidate in (item.get("reference"), item.get("location"), response.get("location")):
            if isinstance(candidate, str) and candidate:
                return candidate
        resource = item.get("resource") if isinstance(item.get("resource"), dict) else item
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if isinstance(rtype, str) and isinstance(rid, str):
            return f"{rtype}/{rid}"
    return "<unknown>"


def _strings(items: Iterable[Any]) -> list[str]:
    return [i if isinstance(i, str) else _reference(i) for i in items]


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _compact(iso: str) -> str:
    """'2026-01-22T09:30:00.123456Z' -> '20260122T093000.123456Z' (store keys sort by time)."""
    at = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(timezone.utc)
    return at.strftime("%Y%m%dT%H%M%S.%fZ")


def _emit(record: dict[str, Any]) -> None:
    """One structured log line: the record's fields are fields of the line, not a JSON string inside `msg`
    (the session id stays out of logs)."""
    fields = {k: v for k, v in record.items() if k != "session"}
    audit_log.info("%s %s", record["event"], record.get("outcome", ""), extra={**fields, "audit": True})


async def record_intent(store: Store, *, signing_key: str, practitioner: str | None, patient_ref: str,
                        strategy: str, target: str, identifiers: list[str], session: str | None,
                        request_id: str | None, retention_days: int = DEFAULT_RETENTION_DAYS,
                        now: datetime | None = None) -> dict[str, Any]:
    """Store (and log) the intent to write; raises when the store cannot take it (then nothing is written).
    A previous intent of the same signing (an interrupted attempt) is kept and returned with `interrupted`."""
    previous = await store.get(INTENT_NS, signing_key)
    at = _iso(now or datetime.now(timezone.utc))
    record: dict[str, Any] = {
        "event": "writeback-intent", "at": previous["at"] if previous else at, "attemptAt": at,
        "signingKey": signing_key, "practitioner": practitioner, "patient": patient_ref, "strategy": strategy,
        "target": target, "identifiers": identifiers, "session": session, "requestId": request_id,
        "attempt": int(previous.get("attempt", 1)) + 1 if previous else 1,
    }
    await store.put(INTENT_NS, signing_key, record, ttl=retention_days * 86400)
    _emit(record)
    return {**record, "interrupted": previous is not None}


async def record_writeback(store: Store | None, *, practitioner: str | None, patient_ref: str, strategy: str,
                           written: Iterable[Any], failed: Iterable[Any], request_id: str | None,
                           retention_days: int = DEFAULT_RETENTION_DAYS, now: datetime | None = None,
                           signing_key: str | None = None, intent: dict[str, Any] | None = None,
                           how: str = "signed", notes: Iterable[str] = (), settled: bool = True) -> dict[str, Any]:
    """Log and store the outcome record of one signing; returns it. A store failure is logged, never raised:
    the write-back has happened, its caller must still answer, and the intent left in the store is
    reconciled later."""
    at = _iso(now or datetime.now(timezone.utc))
    written_refs = [_reference(w) for w in written]
    failed_items = _strings(failed)
    outcome = "failed" if not written_refs else ("partial" if failed_items else "success")
    if how == "unverified":
        outcome = "unverified"
    record: dict[str, Any] = {
        "event": "writeback", "at": at, "practitioner": practitioner, "patient": patient_ref,
        "strategy": strategy, "outcome": outcome, "written": written_refs, "failed": failed_items,
        "requestId": request_id,
    }
    if signing_key:
        record.update(signingKey=signing_key, how=how, notes=list(notes))
    _emit(record)
    if store is None:
        return record
    ttl = retention_days * 86400
    key = f"{_compact(at)}-{uuid.uuid4().hex[:12]}"
    try:
        if signing_key:
            index = await store.get(INDEX_NS, signing_key)
            if index is None:
                started = (intent or {}).get("at") or at
                index = {"key": f"{_compact(started)}-{signing_key[:24]}"}
                await store.put(INDEX_NS, signing_key, index, ttl=ttl)
            key = index["key"]
            previous = await store.get(AUDIT_NS, key)
            attempts = list((previous or {}).get("attempts") or [])
            attempts.append({"at": at, "outcome": outcome, "how": how, "requestId": request_id,
                             "written": len(written_refs), "failed": len(failed_items)})
            record = {**record, "attempts": attempts[-MAX_ATTEMPTS_KEPT:]}
        await store.put(AUDIT_NS, key, record, ttl=ttl)
        if signing_key and settled:
            await store.delete(INTENT_NS, signing_key)
    except Exception as exc:  # noqa: BLE001 - see docstring
        logging.getLogger("onco_exercise.ops").error("could not store audit record %s (%s); the intent stays "
                                                     "and is reconciled later", key, type(exc).__name__)
    return record


async def record_notification(store: Store | None, *, service: str, channel: str, outcome: str,
                              notification_id: str | None, tasks: Iterable[str], attempts: int = 0,
                              detail: str | None = None, retention_days: int = DEFAULT_RETENTION_DAYS,
                              now: datetime | None = None) -> dict[str, Any]:
    """One audit record per notification outcome (delivered, failed, or handed to a Subscription / the
    inbox): which service learnt about which Tasks, how and when. References only; never a token."""
    at = _iso(now or datetime.now(timezone.utc))
    record: dict[str, Any] = {"event": "notification", "at": at, "service": service, "channel": channel,
                              "outcome": outcome, "notificationId": notification_id, "tasks": _strings(tasks),
                              "attempts": attempts}
    if detail:
        record["detail"] = detail[:300]
    _emit(record)
    if store is not None:
        key = f"{_compact(at)}-{uuid.uuid4().hex[:12]}"
        try:
            await store.put(AUDIT_NS, key, record, ttl=retention_days * 86400)
        except Exception as exc:  # noqa: BLE001 - the notification happened: log, never raise
            logging.getLogger("onco_exercise.ops").error("could not store audit record %s (%s)", key,
                                                         type(exc).__name__)
    return record


async def pending_intents(store: Store) -> list[dict[str, Any]]:
    """Intents without an outcome yet (an attempt in progress, or one that was interrupted)."""
    return [value for _, value in await store.scan(INTENT_NS)]


async def recent_writebacks(store: Store, prefix: str = "") -> list[dict[str, Any]]:
    """Stored audit records, oldest first (keys sort by time); prefix e.g. '20260122' for one day."""
    return [value for _, value in await store.scan(AUDIT_NS, prefix)]
