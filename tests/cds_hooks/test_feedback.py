"""Feedback over real HTTP: validation, idempotent storage, metrics, and its effect on the next card."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from service import metrics
from service.cds_hooks import followup
from service.cds_hooks.discovery import ENCOUNTER_START_ID, PATIENT_VIEW_ID
from service.canonical import CS_OVERRIDE_REASON
from tests.cds_hooks import patients
from tests.cds_hooks.conftest import Clock, Service, assert_clean, hook_body

ES = f"/cds-services/{ENCOUNTER_START_ID}"
FB = f"{ES}/feedback"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _card(service: Service, builder: Any) -> tuple[dict[str, Any], patients.PatientBuilder]:
    p = builder(f"fb-{uuid.uuid4().hex[:8]}")
    resp = service.ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid))
    assert resp.status_code == 200, resp.text
    [card] = resp.json()["cards"]
    return card, p


def _count(outcome: str, reason: str = "none") -> float:
    return metrics.REGISTRY.get_sample_value(
        "onco_cds_feedback_total", {"service": ENCOUNTER_START_ID, "outcome": outcome, "reason": reason}) or 0.0


def _stored(service: Service, card_uuid: str) -> list[dict[str, Any]]:
    """Feedback rows for one card, read through a second connection to the service's SQLite file."""
    from service.state import open_state_store

    store = open_state_store(service.app.state.settings)

    async def scan() -> list[tuple[str, dict[str, Any]]]:
        try:
            return await store.scan("cds-feedback")
        finally:
            await store.close()

    return [v for _, v in asyncio.run(scan()) if v["card"] == card_uuid]


def test_accepted_feedback_is_idempotent_and_counted(service: Service) -> None:
    card, _ = _card(service, patients.survivorship)
    sid = card["suggestions"][0]["uuid"]
    item = {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": sid}],
            "outcomeTimestamp": _now()}
    before = _count("accepted")
    for _ in range(3):  # the EHR retries: stored and counted once
        resp = service.ehr.post(FB, {"feedback": [item]})
        assert resp.status_code == 200, resp.text
        assert_clean(resp)
    assert _count("accepted") == before + 1
    [row] = _stored(service, card["uuid"])
    assert row["outcome"] == "accepted" and row["acceptedSuggestions"] == [sid]


def test_override_feedback_stored_counted_and_quiets_the_card(service: Service, clock: Clock) -> None:
    card, p = _card(service, patients.bone_metastases)
    control, c = _card(service, patients.bone_metastases)  # same card, no feedback
    reason = {"system": CS_OVERRIDE_REASON, "code": "patient-declined", "display": "Patient declined"}
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": _now(),
            "overrideReason": {"reason": reason, "userComment": "prefers to wait until after surgery"}}
    before = _count("overridden", "patient-declined")
    assert service.ehr.post(FB, {"feedback": [item]}).status_code == 200
    assert service.ehr.post(FB, {"feedback": [item]}).status_code == 200
    assert _count("overridden", "patient-declined") == before + 1
    [row] = _stored(service, card["uuid"])
    assert row["reason"]["code"] == "patient-declined"
    assert "userComment" not in row and row["hasComment"] is True  # free text is not kept

    # a month later (the repeat window is long over): declined -> still quiet, for both hooks (the twin too);
    # the card without feedback comes back
    clock.advance(30 * followup.DAY)
    body = hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)
    assert service.ehr.post(ES, body).json() == {"cards": []}
    pv = hook_body(PATIENT_VIEW_ID, p.prefetch(), p.pid)
    [quiet] = service.ehr.post(f"/cds-services/{PATIENT_VIEW_ID}", pv).json()["cards"]
    # patient-view keeps the app one click away and says why the suggestion is quiet; no suggestion, no nag
    assert quiet["summary"].startswith("Exercise referral dismissed on") and "(Patient declined)" in quiet["summary"]
    assert "suggestions" not in quiet and quiet["links"][0]["type"] == "smart" and quiet["indicator"] == "info"
    assert len(service.ehr.post(ES, hook_body(ENCOUNTER_START_ID, c.prefetch(), c.pid)).json()["cards"]) == 1
    clock.advance(61 * followup.DAY)  # 91 days after "patient declined": ask again
    assert len(service.ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).json()["cards"]) == 1


def test_accepted_feedback_quiets_the_card_for_30_days(service: Service, clock: Clock) -> None:
    card, p = _card(service, patients.survivorship)
    item = {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": _now()}
    assert service.ehr.post(FB, {"feedback": [item]}).status_code == 200
    clock.advance(29 * followup.DAY)
    assert service.ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).json() == {"cards": []}
    clock.advance(2 * followup.DAY)
    assert len(service.ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).json()["cards"]) == 1


def test_feedback_on_a_warning_does_not_quiet_it(service: Service, clock: Clock) -> None:
    card, p = _card(service, patients.neutropenic_fever)
    assert card["indicator"] == "warning"
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": _now(),
            "overrideReason": {"reason": {"system": CS_OVERRIDE_REASON, "code": "patient-declined"}}}
    assert service.ehr.post(FB, {"feedback": [item]}).status_code == 200
    clock.advance(followup.WARNING_REPEAT_WINDOW + 1)
    [again] = service.ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).json()["cards"]
    assert again["indicator"] == "warning"


def test_discuss_next_visit_brings_the_card_back(service: Service, clock: Clock) -> None:
    card, p = _card(service, patients.bone_metastases)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": _now(),
            "overrideReason": {"reason": {"system": CS_OVERRIDE_REASON, "code": "discuss-next-visit"}}}
    assert service.ehr.post(FB, {"feedback": [item]}).status_code == 200
    assert service.ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).json() == {"cards": []}
    clock.advance(followup.REPEAT_WINDOW + 60)
    assert len(service.ehr.post(ES, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).json()["cards"]) == 1


def test_unknown_override_reason_counted_as_other(service: Service) -> None:
    card, _ = _card(service, patients.bone_metastases)
    before = _count("overridden", "other")
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": _now(),
            "overrideReason": {"reason": {"system": "urn:ehr:local", "code": f"x-{uuid.uuid4()}"}}}
    assert service.ehr.post(FB, {"feedback": [item]}).status_code == 200
    assert _count("overridden", "other") == before + 1


def test_feedback_for_an_unknown_card_is_stored(service: Service) -> None:
    item = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": _now()}
    assert service.ehr.post(FB, {"feedback": [item]}).status_code == 200
    assert len(_stored(service, item["card"])) == 1


@pytest.mark.parametrize("items, expect", [
    (None, "'feedback' must be a non-empty array"),
    ([], "'feedback' must be a non-empty array"),
    (["x"], "feedback[0]"),
    ([{"card": "c", "outcome": "maybe", "outcomeTimestamp": "2026-01-01T00:00:00Z"}], "outcome"),
    ([{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}], "acceptedSuggestions"),
    ([{"card": "c", "outcome": "accepted", "acceptedSuggestions": [], "outcomeTimestamp": "2026-01-01T00:00:00Z"}],
     "acceptedSuggestions"),
    ([{"card": "c", "outcome": "accepted", "acceptedSuggestions": ["s1"], "outcomeTimestamp": "2026-01-01T00:00:00Z"}],
     "acceptedSuggestions[0]"),
    ([{"card": "c", "outcome": "overridden", "acceptedSuggestions": [{"id": "s"}],
       "outcomeTimestamp": "2026-01-01T00:00:00Z"}], "only allowed"),
    ([{"card": "c", "outcome": "accepted", "acceptedSuggestions": [{"id": "s"}],
       "overrideReason": {"userComment": "x"}, "outcomeTimestamp": "2026-01-01T00:00:00Z"}], "only allowed"),
    ([{"card": "c", "outcome": "overridden"}], "outcomeTimestamp"),
    ([{"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"}], "outcomeTimestamp"),
    ([{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00"}], "time zone"),
    ([{"outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}], "card"),
    ([{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z",
       "overrideReason": {"reason": "declined"}}], "Coding"),
])
def test_invalid_feedback_is_400(service: Service, items: Any, expect: str) -> None:
    body = {"feedback": items} if items is not None else {"nothing": 1}
    resp = service.ehr.post(FB, body)
    assert resp.status_code == 400, resp.text
    assert expect in resp.json()["issue"][0]["diagnostics"]
    assert_clean(resp)


def test_feedback_must_match_the_card(service: Service) -> None:
    card, _ = _card(service, patients.survivorship)
    bad = {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
           "outcomeTimestamp": _now()}
    resp = service.ehr.post(FB, {"feedback": [bad]})
    assert resp.status_code == 400 and "not on this card" in resp.json()["issue"][0]["diagnostics"]
    # a card issued by the encounter-start service is not the patient-view service's card
    ok = {**bad, "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]}
    resp = service.ehr.post(f"/cds-services/{PATIENT_VIEW_ID}/feedback", {"feedback": [ok]})
    assert resp.status_code == 400
    assert _stored(service, card["uuid"]) == []  # nothing half-stored
    assert service.ehr.post(FB, raw=b"{not json", body=None).status_code == 400
