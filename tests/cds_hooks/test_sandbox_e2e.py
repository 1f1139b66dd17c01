"""End to end in the sandbox: the sandbox EHR's own CDS client (ES384 JWT with jku, prefetch from our
templates, fhirServer + fhirAuthorization) opens encounters for cohort patients against our service over real
HTTP; accepting a suggestion writes the draft ServiceRequest to the sandbox FHIR server; override feedback is
stored."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

from service.app import create_app
from service.canonical import CS_OVERRIDE_REASON
from service.cds_hooks.discovery import ENCOUNTER_START_ID, PATIENT_VIEW_ID
from tests.cds_hooks.conftest import find_empty
from tests.conftest import sandbox_settings
from tests.support.live import free_port, serve

CLINICIAN = "Practitioner/sandbox-clinician"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Any]]:
    pytest.importorskip("service.sandbox.cds_client")
    port = free_port()
    data_dir = tmp_path_factory.mktemp("sandbox-e2e")
    app = create_app(sandbox_settings(port, data_dir))
    with serve(app, port) as url:
        from service.sandbox.keys import load_keys

        yield url, app, load_keys(data_dir / "sandbox")


def _run(sandbox: tuple[str, Any, Any], scenario: Any) -> Any:
    from service.sandbox.cds_client import CdsClient
    from service.sandbox.fhir_server import sandbox_fhir_client

    url, app, keys = sandbox
    settings = app.state.settings

    async def go() -> Any:
        async with sandbox_fhir_client(app) as fhir:
            async with CdsClient(public_url=url, fhir_base=settings.sandbox_fhir_base, signing_key=keys.cds,
                                 fhir=fhir) as client:
                discovery = await client.discover(url)
                services = {s.id: s for s in discovery.services}
                return await scenario(client, services, fhir)

    return asyncio.run(go())


def _open(client: Any, services: dict[str, Any], pid: str, service_id: str = ENCOUNTER_START_ID) -> Any:
    context = {"userId": CLINICIAN, "patientId": pid}
    if service_id == ENCOUNTER_START_ID:
        context["encounterId"] = f"enc-{pid}"
    return client.call(services[service_id], context)


def test_cohort_patients_get_the_expected_card(sandbox: tuple[str, Any, Any]) -> None:
    async def scenario(client: Any, services: dict[str, Any], fhir: Any) -> dict[str, Any]:
        assert set(services) >= {ENCOUNTER_START_ID, PATIENT_VIEW_ID}
        out = {}
        for pid in ("onc-06", "onc-17", "onc-05", "non-01"):
            call = await _open(client, services, pid)
            assert call.error is None, (pid, call.error)
            assert call.warnings == [], call.warnings  # the sandbox client found nothing wrong with our cards
            out[pid] = call.cards
        return out

    cards = _run(sandbox, scenario)
    for pid, cs in cards.items():
        assert find_empty({"cards": cs}) == [], pid
    [bone] = cards["onc-06"]
    assert bone["indicator"] == "info" and bone["summary"].startswith("Exercise referral")
    [fever] = cards["onc-17"]
    assert fever["indicator"] == "warning" and "suggestions" not in fever
    [follow] = cards["onc-05"]  # accepted referral: the follow-up card with the Task status
    assert "suggestions" not in follow and follow["summary"].startswith("Exercise referral: Task accepted")
    assert cards["non-01"] == []


def test_accept_creates_a_draft_service_request_and_override_is_stored(sandbox: tuple[str, Any, Any]) -> None:
    async def scenario(client: Any, services: dict[str, Any], fhir: Any) -> tuple[Any, ...]:
        call = await _open(client, services, "onc-07", PATIENT_VIEW_ID)
        assert call.error is None, call.error
        [card] = call.cards
        [suggestion] = card["suggestions"]
        applied = await client.apply_actions(suggestion["actions"])
        assert applied.ok, applied.message
        fb = await client.feedback(services[PATIENT_VIEW_ID], card["uuid"], "accepted", [suggestion["uuid"]])
        assert fb.ok, fb.message
        drafts = (await fhir.get("ServiceRequest", params={"patient": "onc-07", "status": "draft"})).json()

        other = await _open(client, services, "onc-27")
        assert other.error is None, other.error
        [card2] = other.cards
        reason = next(c for c in card2["overrideReasons"] if c["code"] == "already-exercising")
        fb2 = await client.feedback(services[ENCOUNTER_START_ID], card2["uuid"], "overridden",
                                    override_reason=reason, user_comment="runs 3x a week")
        assert fb2.ok, fb2.message
        return drafts, card["uuid"], card2["uuid"], reason

    drafts, accepted_uuid, overridden_uuid, reason = _run(sandbox, scenario)
    assert reason["system"] == CS_OVERRIDE_REASON
    entries = [e["resource"] for e in drafts.get("entry", [])]
    assert any(r["resourceType"] == "ServiceRequest" and r["status"] == "draft" for r in entries)

    _, app, _ = sandbox

    async def rows() -> list[dict[str, Any]]:
        from service.state import open_state_store

        s = open_state_store(app.state.settings)
        try:
            return [v for _, v in await s.scan("cds-feedback")]
        finally:
            await s.close()

    stored = asyncio.run(rows())
    assert any(r["card"] == accepted_uuid and r["outcome"] == "accepted" for r in stored)
    assert any(r["card"] == overridden_uuid and r["outcome"] == "overridden"
               and r["reason"]["code"] == "already-exercising" for r in stored)
