"""Showing a card once per patient context: brief, repeated conversations, not a nag.

The EHR often fires `encounter-start` and `patient-view` at the same instant when a clinician opens an
encounter, and both would return the same card. Whether a card may be shown is therefore decided by one
atomic claim in the store (`Store.add`, which only one caller can win) on the key (patient, fingerprint):

- patient = a hash of fhirServer + patient id (never the id itself); fingerprint = what the card says
  (cards.py), so anything that changes it (new precaution, new Task status, new exercise vital sign ...)
  shows the card again;
- a referral / follow-up / incomplete card claims its key for `REPEAT_WINDOW` (12 h): the concurrent twin,
  encounter-start firing again and patient-view right after all lose the claim and answer `{"cards": []}`;
- feedback on a card re-claims the same key for the quiet period of its outcome (overridden: by reason, 90
  days for "patient declined"; accepted: 30 days), so it quiets the card for both hooks (its twin included);
- a warning (unsafe today) claims a key that also names the clinician (`userId`) for `WARNING_REPEAT_WINDOW`
  (60 s): the two hooks of one chart opening show it once, any other clinician or a later opening sees it
  again, and feedback never quiets it.

One write per shown card (the claim) plus the card record (`CARD_NS`, for feedback to find the card); no read.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from service.storage import Store

from .cards import CardPlan

SHOWN_NS = "cds-shown"
CARD_NS = "cds-card"
DAY = 86400.0
REPEAT_WINDOW = 12 * 3600.0
WARNING_REPEAT_WINDOW = 60.0
TWIN_SECONDS = 60.0  # encounter-start and patient-view of one chart opening arrive within this
ACCEPTED_QUIET = 30 * DAY
CARD_TTL = 180 * DAY
# Quiet period after an override, by override-reason code (terminology/CodeSystem-override-reason.json).
OVERRIDE_QUIET: dict[str, float] = {
    "patient-declined": 90 * DAY,
    "already-exercising": 90 * DAY,
    "not-appropriate-now": 14 * DAY,
    "discuss-next-visit": REPEAT_WINDOW,  # bring it back at the next visit
}
OVERRIDE_QUIET_DEFAULT = 30 * DAY
PER_USER = frozenset({"warning"})  # safety: claimed per clinician, briefly, and never quieted by feedback


def patient_key(fhir_server: str | None, patient_id: str) -> str:
    return hashlib.sha256(f"{(fhir_server or '').rstrip('/')}\x00{patient_id}".encode()).hexdigest()[:40]


def shown_key(pkey: str, plan_kind: str, fingerprint: str, user_id: str | None = None) -> str:
    """The claim key: patient + fingerprint (+ a hash of the clinician for warnings)."""
    if plan_kind in PER_USER:
        user = hashlib.sha256((user_id or "").encode()).hexdigest()[:16]
        return f"{pkey}:{fingerprint}:{user}"
    return f"{pkey}:{fingerprint}"


async def why_quiet(store: Store, pkey: str, plan: CardPlan, user_id: str | None = None) -> dict[str, Any] | None:
    """The record that kept this card quiet (when it was shown, or the feedback that quieted it)."""
    return await store.get(SHOWN_NS, shown_key(pkey, plan.kind, plan.fingerprint, user_id))


def is_twin(record: dict[str, Any] | None, now: float | None = None) -> bool:
    """True when the card was shown moments ago: the other hook of the same chart opening showed it."""
    if not record or record.get("outcome"):
        return False
    shown = record.get("shownAt")
    return isinstance(shown, (int, float)) and (time.time() if now is None else now) - shown < TWIN_SECONDS


async def forget_all(store: Store) -> int:
    """Drop every shown-card record and claim (the sandbox's --reset): cards show again."""
    n = 0
    for ns in (SHOWN_NS, CARD_NS):
        for key, _ in await store.scan(ns):
            await store.delete(ns, key)
            n += 1
    return n


def quiet_period(outcome: str, reason: str | None) -> float:
    """How long feedback keeps a card quiet (seconds)."""
    if outcome == "accepted":
        return ACCEPTED_QUIET
    return OVERRIDE_QUIET.get(reason or "", OVERRIDE_QUIET_DEFAULT)


async def claim(store: Store, pkey: str, plan: CardPlan, service_id: str, user_id: str | None = None,
                now: float | None = None, repeat_window: float = REPEAT_WINDOW) -> bool:
    """Atomically claim showing this card now; False when it was shown recently or is quiet after feedback.
    `repeat_window` (seconds; ONCO_EXERCISE_CARD_REPEAT_HOURS) is how long a shown card stays quiet."""
    assert plan.card is not None
    window = WARNING_REPEAT_WINDOW if plan.kind in PER_USER else repeat_window
    value = {"cardUuid": plan.card["uuid"], "service": service_id, "kind": plan.kind,
             "shownAt": time.time() if now is None else now}
    return await store.add(SHOWN_NS, shown_key(pkey, plan.kind, plan.fingerprint, user_id), value, ttl=window)


async def remember(store: Store, pkey: str, plan: CardPlan, service_id: str, now: float | None = None) -> None:
    """Record a card that was shown, for feedback to find (service, suggestion ids, what to quiet)."""
    assert plan.card is not None
    await store.put(CARD_NS, plan.card["uuid"], {
        "service": service_id, "patient": pkey, "kind": plan.kind, "fingerprint": plan.fingerprint,
        "shownAt": time.time() if now is None else now, "suggestions": list(plan.suggestion_ids)}, ttl=CARD_TTL)


async def record_outcome(store: Store, card: dict[str, Any], card_uuid: str, outcome: str, reason: str | None,
                         at: float) -> None:
    """Feedback on a card we issued quiets that card (same patient, same fingerprint) for both hooks."""
    pkey, fingerprint, kind = card.get("patient"), card.get("fingerprint"), card.get("kind") or ""
    if not pkey or not fingerprint or kind in PER_USER:
        return
    value: dict[str, Any] = {"cardUuid": card_uuid, "service": card.get("service"), "kind": kind,
                             "outcome": outcome, "outcomeAt": at}
    if reason:
        value["reason"] = reason
    await store.put(SHOWN_NS, shown_key(pkey, kind, fingerprint), value, ttl=quiet_period(outcome, reason))
