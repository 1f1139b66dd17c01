"""The audit trail of write-backs: who wrote what, for which patient, when, and how.

Each write-back produces one JSON record, sent to the dedicated logger `onco_exercise.audit` (route it to an
access-controlled sink: unlike ordinary logs it names the patient) and kept in the store namespace `audit`
for `audit_retention_days`. Only references are recorded, never resource contents.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable

from service.storage import Store

AUDIT_LOGGER = "onco_exercise.audit"
AUDIT_NS = "audit"
DEFAULT_RETENTION_DAYS = 400

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


def _started(event: str, now: datetime | None) -> tuple[datetime, dict[str, Any]]:
    """The time (UTC) and the head of a record: which event, when."""
    at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return at, {"event": event, "at": at.isoformat().replace("+00:00", "Z")}


async def _emit(store: Store | None, record: dict[str, Any], at: datetime, retention_days: int) -> None:
    """Log the record and keep it in the store; a store failure is logged, never raised (what it records has
    already happened)."""
    audit_log.info(json.dumps(record, separators=(",", ":")), extra={"audit": True})
    if store is not None:
        key = f"{at.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:12]}"
        try:
            await store.put(AUDIT_NS, key, record, ttl=retention_days * 86400)
        except Exception:  # noqa: BLE001 - see the docstring
            logging.getLogger("onco_exercise.ops").exception("could not store audit record %s", key)


async def record_writeback(store: Store | None, *, practitioner: str | None, patient_ref: str, strategy: str,
                           written: Iterable[Any], failed: Iterable[Any], request_id: str | None,
                           retention_days: int = DEFAULT_RETENTION_DAYS,
                           now: datetime | None = None) -> dict[str, Any]:
    """Log and store one audit record; returns it. A store failure is logged, never raised: the write-back
    itself has already happened and its caller must still answer the clinician."""
    at, record = _started("writeback", now)
    written_refs = [_reference(w) for w in written]
    failed_items = _strings(failed)
    outcome = "failed" if not written_refs else ("partial" if failed_items else "success")
    record.update({
        "practitioner": practitioner,
        "patient": patient_ref,
        "strategy": strategy,
        "outcome": outcome,
        "written": written_refs,
        "failed": failed_items,
        "requestId": request_id,
    })
    await _emit(store, record, at, retention_days)
    return record


async def record_notification(store: Store | None, *, service: str, channel: str, outcome: str,
                              notification_id: str | None, tasks: Iterable[str], attempts: int = 0,
                              detail: str | None = None, retention_days: int = DEFAULT_RETENTION_DAYS,
                              now: datetime | None = None) -> dict[str, Any]:
    """One audit record per notification outcome (delivered, failed, or handed to a Subscription / the
    inbox): which service learnt about which Tasks, how and when. References only; never a token."""
    at, record = _started("notification", now)
    record.update({
        "service": service,
        "channel": channel,
        "outcome": outcome,
        "notificationId": notification_id,
        "tasks": _strings(tasks),
        "attempts": attempts,
    })
    if detail:
        record["detail"] = detail[:300]
    await _emit(store, record, at, retention_days)
    return record


async def recent_writebacks(store: Store, prefix: str = "") -> list[dict[str, Any]]:
    """Stored audit records, oldest first (keys sort by time); prefix e.g. '20260122' for one day."""
    return [value for _, value in await store.scan(AUDIT_NS, prefix)]
