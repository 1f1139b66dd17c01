"""Card history and suppression: brief, repeated conversations, not a nag.

For each patient (keyed by a hash of fhirServer + patient id, never the id itself) we keep the last card
shown: its kind, a fingerprint of what it said, when, and the clinician's feedback on it. A new card is
suppressed when its fingerprint equals the last one and
- it was shown less than `REPEAT_WINDOW` ago (encounter-start fires again, or patient-view right after it), or
- it was overridden, for the quiet period of the override reason (patient declined: 90 days ...), or
- its suggestion was accepted less than `ACCEPTED_QUIET` ago (the draft referral may not be visible yet).
Anything that changes the fingerprint (new precaution, new Task status, new exercise vital sign ...) shows
the card again. Warnings are never suppressed: they are about today's safety.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from service.storage import Store

from .cards import CardPlan

HISTORY_NS = "cds-history"
CARD_NS = "cds-card"
DAY = 86400.0
REPEAT_WINDOW = 12 * 3600.0
ACCEPTED_QUIET = 30 * DAY
CARD_TTL = 180 * DAY
HISTORY_TTL = 365 * DAY
# Quiet period after an override, by override-reason code (terminology/CodeSystem-override-reason.json).
OVERRIDE_QUIET: dict[str, float] = {
    "patient-declined": 90 * DAY,
    "already-exercising": 90 * DAY,
    "not-appropriate-now": 14 * DAY,
    "discuss-next-visit": REPEAT_WINDOW,  # bring it back at the next visit
}
OVERRIDE_QUIET_DEFAULT = 30 * DAY
NEVER_SUPPRESSED = frozenset({"warning"})


def patient_key(fhir_server: str | None, patient_id: str) -> str:
    return hashlib.sha256(f"{(fhir_server or '').rstrip('/')}\x00{patient_id}".encode()).hexdigest()[:40]


def suppressed(plan: CardPlan, history: dict[str, Any] | None, now: float | None = None) -> bool:
    """True when the card says what the last one said and the clinician has seen it recently enough."""
    if plan.card is None or history is None or plan.kind in NEVER_SUPPRESSED:
        return False
    if history.get("fingerprint") != plan.fingerprint:
        return False
    now = time.time() if now is None else now
    if now - float(history.get("shownAt", 0)) < REPEAT_WINDOW:
        return True
    outcome, at = history.get("outcome"), float(history.get("outcomeAt", 0))
    if outcome == "overridden":
        quiet = OVERRIDE_QUIET.get(history.get("reason") or "", OVERRIDE_QUIET_DEFAULT)
        return now - at < quiet
    if outcome == "accepted":
        return now - at < ACCEPTED_QUIET
    return False


async def load_history(store: Store, pkey: str) -> dict[str, Any] | None:
    return await store.get(HISTORY_NS, pkey)


async def remember(store: Store, pkey: str, plan: CardPlan, service_id: str, now: float | None = None) -> None:
    """Record a card that was shown: the patient's history, and the card itself for feedback to find."""
    assert plan.card is not None
    now = time.time() if now is None else now
    card_uuid = plan.card["uuid"]
    await store.put(CARD_NS, card_uuid, {"service": service_id, "patient": pkey, "kind": plan.kind,
                                         "fingerprint": plan.fingerprint, "shownAt": now,
                                         "suggestions": list(plan.suggestion_ids)}, ttl=CARD_TTL)
    await store.put(HISTORY_NS, pkey, {"fingerprint": plan.fingerprint, "kind": plan.kind, "cardUuid": card_uuid,
                                       "shownAt": now}, ttl=HISTORY_TTL)


async def record_outcome(store: Store, card: dict[str, Any], card_uuid: str, outcome: str, reason: str | None,
                         at: float) -> None:
    """Attach feedback to the patient's history when it is about the card last shown to them."""
    pkey = card.get("patient")
    if not pkey:
        return
    history = await store.get(HISTORY_NS, pkey)
    if history is None or history.get("cardUuid") != card_uuid:
        return
    history.update({"outcome": outcome, "outcomeAt": at})
    if reason:
        history["reason"] = reason
    else:
        history.pop("reason", None)
    await store.put(HISTORY_NS, pkey, history, ttl=HISTORY_TTL)
