"""The notification an exercise service receives: a Subscriptions backport (R4) `history` Bundle whose first
entry is the SubscriptionStatus `Parameters`, id-only payload, on the topic the PA IG uses for Tasks.

The same shape a FHIR server sends for a rest-hook Subscription, so a receiver handles both alike: read the
`focus` Task (and the referral in `additional-context`) from the EHR with its own token. The Bundle's `id` is
the notification id: a retry carries the same id, so a receiver dedupes on it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Iterable

from service.notify.events import TaskEvent

TASK_TOPIC = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
NOTIFICATION_PROFILE = f"{BACKPORT}/backport-subscription-notification-r4"
STATUS_PROFILE = f"{BACKPORT}/backport-subscription-status-r4"
_NS = uuid.uuid5(uuid.NAMESPACE_URL, "https://fhir.onco-exercise.org/notification")


def notification_id(service_ref: str, events: Iterable[TaskEvent]) -> str:
    """Deterministic: the same news for the same service is the same notification (a replayed signing is
    not sent twice)."""
    seed = "|".join([service_ref, *sorted(f"{e.kind}@{e.task}" for e in events)])
    return str(uuid.uuid5(_NS, seed))


def stream_url(public_url: str, service_ref: str) -> str:
    """The notification stream of one service: what `subscription` names when we, not the FHIR server, notify."""
    return f"{public_url}/exercise-services/{service_ref}/subscription"


def _instant(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def notification_bundle(nid: str, *, public_url: str, service_ref: str, events: list[TaskEvent],
                        first_number: int, at: datetime) -> dict[str, Any]:
    """The Bundle for `events` (event numbers `first_number`, `first_number + 1`, ...)."""
    sub = stream_url(public_url, service_ref)
    last = first_number + len(events) - 1
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": sub}},
        {"name": "topic", "valueCanonical": TASK_TOPIC},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": "event-notification"},
        {"name": "events-since-subscription-start", "valueString": str(last)},
    ]
    for n, ev in enumerate(events, start=first_number):
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(n)},
            {"name": "timestamp", "valueInstant": _instant(at)},
            {"name": "focus", "valueReference": {"reference": ev.task}},
        ]
        if ev.referral:
            parts.append({"name": "additional-context", "valueReference": {"reference": ev.referral}})
        params.append({"name": "notification-event", "part": parts})
    status_id = str(uuid.uuid5(_NS, f"{nid}|status"))
    return {
        "resourceType": "Bundle",
        "id": nid,
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": _instant(at),
        "entry": [{
            "fullUrl": f"urn:uuid:{status_id}",
            "resource": {"resourceType": "Parameters", "id": status_id, "meta": {"profile": [STATUS_PROFILE]},
                         "parameter": params},
            "request": {"method": "GET", "url": f"{sub}/$status"},
            "response": {"status": "200"},
        }],
    }


def focus_references(bundle: Any) -> list[str]:
    """The `focus` references of a notification Bundle (ours or a FHIR server's); [] when it is not one."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or bundle.get("type") != "history":
        return []
    entries = bundle.get("entry") if isinstance(bundle.get("entry"), list) else []
    first = entries[0].get("resource") if entries and isinstance(entries[0], dict) else None
    if not isinstance(first, dict) or first.get("resourceType") != "Parameters":
        return []
    out = []
    for p in first.get("parameter") or ():
        if isinstance(p, dict) and p.get("name") in ("notification-event", "notificationEvent"):
            for part in p.get("part") or ():
                ref = (part.get("valueReference") or {}).get("reference") if isinstance(part, dict) else None
                if part.get("name") == "focus" and isinstance(ref, str):
                    out.append(ref)
    return out
