"""The FHIR Subscription path: when the EHR's server offers the PA IG's Task topic (Subscriptions backport on
R4, rest-hook, id-only payload), it notifies the exercise service itself on every change of the service's Tasks
(new, released, revised, cancelled, and the service's own updates), so we keep one Subscription per service
there instead of sending our own notifications.

`ensure_subscription` finds it (search `Subscription?url=<endpoint>`) or creates it, with the access token of
the signing; a server that refuses (no permission to create Subscriptions, an unsupported filter) raises
FhirError and the caller falls back to sending the notification itself. The endpoint comes from configuration.
"""

from __future__ import annotations

from typing import Any

from service.exercise_services import ExerciseService
from service.fhir.client import FhirClient
from service.notify.bundle import BACKPORT, TASK_TOPIC
from service.storage import Store

SUBSCRIPTION_PROFILE = f"{BACKPORT}/backport-subscription"
FILTER = f"{BACKPORT}/backport-filter-criteria"
CONTENT = f"{BACKPORT}/backport-payload-content"
NS_KNOWN = "notify-subscription"
KNOWN_SECONDS = 3600.0
LIVE = ("requested", "active")


def owner_filter(service: ExerciseService) -> str:
    return f"Task?owner={service.reference}"


def subscription_resource(service: ExerciseService) -> dict[str, Any]:
    """The backport Subscription the IG shows for a service provider: Tasks it owns, rest-hook, id-only."""
    return {
        "resourceType": "Subscription",
        "meta": {"profile": [SUBSCRIPTION_PROFILE]},
        "status": "requested",
        "reason": f"Notify {service.name} of exercise referrals addressed to it (onco-exercise)",
        "criteria": TASK_TOPIC,
        "_criteria": {"extension": [{"url": FILTER, "valueString": owner_filter(service)}]},
        "channel": {"type": "rest-hook", "endpoint": service.endpoint, "payload": "application/fhir+json",
                    "_payload": {"extension": [{"url": CONTENT, "valueCode": "id-only"}]}},
    }


def _is_ours(sub: dict[str, Any], service: ExerciseService) -> bool:
    filters = [e.get("valueString") for e in (sub.get("_criteria") or {}).get("extension") or []
               if isinstance(e, dict) and e.get("url") == FILTER]
    return (sub.get("criteria") == TASK_TOPIC and sub.get("status") in LIVE
            and (sub.get("channel") or {}).get("endpoint") == service.endpoint
            and owner_filter(service) in filters)


async def ensure_subscription(client: FhirClient, store: Store, service: ExerciseService) -> tuple[str, bool]:
    """(`Subscription/<id>` on the client's server for this service, whether it was created just now);
    FhirError when the server refuses. A new Subscription misses the write that came before it: the caller
    notifies that one itself."""
    from service.fhir.validate import assert_valid

    key = f"{client.base_url}|{service.reference}|{service.endpoint}"
    known = await store.get(NS_KNOWN, key)
    if known is not None:
        return str(known["ref"]), False
    found = await client.search("Subscription", [("url", str(service.endpoint))], max_pages=1)
    hit = next((s for s in found.resources if s.get("resourceType") == "Subscription" and _is_ours(s, service)),
               None)
    created_now = hit is None
    if hit is not None:
        ref = f"Subscription/{hit['id']}"
    else:
        resource = subscription_resource(service)
        assert_valid(resource)
        created = await client.create(resource)
        ref = f"Subscription/{created.id}"
    await store.put(NS_KNOWN, key, {"ref": ref}, ttl=KNOWN_SECONDS)
    return ref, created_now
