"""Feedback: what the clinician did with a card, stored once however often the EHR resends it.

Each item is keyed by card uuid + outcome + (accepted suggestion ids | override reason): the first arrival is
stored, counted in `/metrics` and attached to the patient's card history (which quiets the card, see
followup.py); repeats are acknowledged and change nothing. Feedback about a card we issued is checked against
it (service, suggestion ids); feedback about a card we no longer know (expired) is stored but not linked.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from service import metrics
from service.storage import Store

from . import followup
from .cards import override_reasons
from .models import Feedback, RequestInvalid

FEEDBACK_NS = "cds-feedback"
FEEDBACK_TTL = 400 * 86400.0


def _reason_label(f: Feedback) -> str:
    """Metric label: our override-reason codes only (a client's own codes would grow the label set)."""
    if f.outcome != "overridden":
        return "none"
    if f.reason_code is None:
        return "unspecified"
    ours = {c["code"] for c in override_reasons() if c["system"] == f.reason_system or f.reason_system is None}
    return f.reason_code if f.reason_code in ours else "other"


def _key(f: Feedback) -> str:
    detail = ",".join(sorted(f.accepted_suggestions)) if f.outcome == "accepted" else \
        f"{f.reason_system or ''}|{f.reason_code or ''}"
    return hashlib.sha256(f"{f.card}\x00{f.outcome}\x00{detail}".encode()).hexdigest()[:48]


async def check(store: Store, service_id: str, items: list[Feedback]) -> list[dict[str, Any] | None]:
    """Look up each item's card and refuse feedback that contradicts it (before anything is stored)."""
    cards: list[dict[str, Any] | None] = []
    for i, f in enumerate(items):
        card = await store.get(followup.CARD_NS, f.card)
        if card is not None:
            if card.get("service") != service_id:
                raise RequestInvalid(f"'feedback[{i}].card' was issued by another service", f"feedback[{i}].card")
            offered = set(card.get("suggestions") or [])
            unknown = [s for s in f.accepted_suggestions if s not in offered]
            if unknown:
                raise RequestInvalid(f"'feedback[{i}].acceptedSuggestions' names a suggestion that is not on "
                                     "this card", f"feedback[{i}].acceptedSuggestions")
        cards.append(card)
    return cards


async def store_feedback(store: Store, service_id: str, items: list[Feedback]) -> int:
    """Validate against the issued cards, then store each item idempotently; returns how many were new."""
    cards = await check(store, service_id, items)
    new = 0
    for f, card in zip(items, cards):
        value: dict[str, Any] = {"service": service_id, "card": f.card, "outcome": f.outcome,
                                 "outcomeTimestamp": f.outcome_timestamp.isoformat()}
        if f.accepted_suggestions:
            value["acceptedSuggestions"] = list(f.accepted_suggestions)
        if f.reason_code:
            value["reason"] = {"system": f.reason_system, "code": f.reason_code}
        if f.user_comment:
            value["hasComment"] = True  # free text may hold PHI: note that there was one, do not keep it
        if not await store.add(FEEDBACK_NS, _key(f), value, ttl=FEEDBACK_TTL):
            continue
        new += 1
        metrics.FEEDBACK.labels(service=service_id, outcome=f.outcome, reason=_reason_label(f)).inc()
        if card is not None:  # the time we heard it, not the client's clock, starts the quiet period
            await followup.record_outcome(store, card, f.card, f.outcome, f.reason_code, time.time())
    return new
