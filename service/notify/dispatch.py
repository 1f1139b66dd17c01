"""After a write-back: tell each exercise service about its news, in the way that service and the EHR allow.

Per service owning a Task in the news (service.notify.events):
- not configured: nothing is sent (we only ever contact configured endpoints);
- no endpoint ("light"): it works from the inbox; recorded as `inbox`;
- the Tasks' server offers the IG's Task topic: a Subscription there notifies the service (ensured now;
  recorded as `subscription`); if the server refuses, or the Subscription is new, we also send our own;
- otherwise: our own signed notification (service.notify.outbox), first attempt in the background.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from service import metrics
from service.audit import record_notification
from service.exercise_services import service_for
from service.fhir.errors import FhirError
from service.notify import outbox
from service.notify.bundle import TASK_TOPIC, notification_bundle, notification_id
from service.notify.events import TaskEvent, by_owner, task_events
from service.notify.subscription import ensure_subscription
from service.storage import Store

log = logging.getLogger("service.notify")


async def notify_after_write(*, settings: Any, store: Store, keys: Any, entries: list[dict[str, Any]],
                             written: list[dict[str, Any]], previous_status: dict[str, str],
                             ehr: Any = None, capability: Any = None) -> list[dict[str, Any]]:
    """Notify for one write-back; returns one summary per service (for the clinician's answer)."""
    summaries = []
    for owner, events in by_owner(task_events(entries, written, previous_status)).items():
        try:
            summaries.append(await _one(settings, store, keys, owner, events, ehr, capability))
        except Exception:  # noqa: BLE001 - a notification problem never undoes the signing
            log.exception("notifying %s failed", owner)
            summaries.append({"service": owner, "channel": "direct", "status": "failed"})
    return summaries


async def _one(settings: Any, store: Store, keys: Any, owner: str, events: list[TaskEvent], ehr: Any,
               capability: Any) -> dict[str, Any]:
    service = service_for(settings.exercise_service_list(), owner)
    tasks = [e.task for e in events]
    if service is None:
        log.warning("Tasks for %s, which is not a configured exercise service: nobody notified", owner)
        return {"service": owner, "channel": "none", "status": "not-configured"}
    summary: dict[str, Any] = {"service": owner, "name": service.name, "events": [e.kind for e in events]}
    if not service.endpoint:
        metrics.NOTIFICATIONS.labels("inbox", "queued").inc()
        await record_notification(store, service=owner, channel="inbox", outcome="listed", notification_id=None,
                                  tasks=tasks, retention_days=settings.audit_retention_days)
        return {**summary, "channel": "inbox", "status": "listed"}
    on_ehr = ehr is not None and all(t.startswith(f"{ehr.base_url}/") for t in tasks)
    if on_ehr and capability is not None and capability.supports_topic(TASK_TOPIC):
        try:
            ref, created = await ensure_subscription(ehr, store, service)
        except FhirError as exc:
            metrics.NOTIFICATIONS.labels("subscription", "fallback").inc()
            summary["note"] = f"the EHR refused a Subscription ({exc.status}): sent directly instead"
        else:
            metrics.NOTIFICATIONS.labels("subscription", "subscribed").inc()
            await record_notification(store, service=owner, channel="subscription", outcome="handed-over",
                                      notification_id=ref, tasks=tasks,
                                      retention_days=settings.audit_retention_days)
            if not created:
                return {**summary, "channel": "subscription", "status": "handed-over", "subscription": ref}
            summary["subscription"] = ref  # created after this write: it notifies from the next change on
    nid = notification_id(owner, events)
    if await store.get(outbox.NS, nid) is not None:  # the same news again (a replayed signing): sent once
        return {**summary, "channel": "direct", "status": "already-sent", "notificationId": nid}
    first = await outbox.next_event_numbers(store, owner, len(events))
    body = notification_bundle(nid, public_url=settings.public_url, service_ref=owner, events=events,
                               first_number=first, at=datetime.now(timezone.utc))
    if await outbox.enqueue(store, nid=nid, service_ref=owner, body=body, tasks=tasks):
        outbox.send_soon(store, settings, keys, nid)
        status = "queued"
    else:
        status = "already-sent"
    return {**summary, "channel": "direct", "status": status, "notificationId": nid}
