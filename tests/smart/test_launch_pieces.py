"""Discovery, scopes, PKCE and the authorize URL (pure pieces; respx for the discovery failure paths)."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from service.smart import launch as launch_mod
from service.smart.launch import (Discovery, LaunchError, authorize_url, build_scopes, discover, new_pkce_verifier,
                                  new_state, planned_writes)
from service.smart.scopes import Grants, fallback_notes, missing, next_tier, requested_scopes

ISS = "https://ehr.example/fhir"


@pytest.fixture(autouse=True)
def _no_cache():
    launch_mod._discovery_cache.clear()


def test_state_and_verifier_have_enough_entropy():
    states = {new_state() for _ in range(50)}
    assert len(states) == 50 and all(len(s) >= 43 for s in states)  # 32 bytes = 256 bits
    v = new_pkce_verifier()
    assert 43 <= len(v) <= 128 and set(v) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def test_authorize_url_carries_s256_challenge_aud_launch_state():
    disc = Discovery("https://ehr.example/auth/authorize", "https://ehr.example/auth/token")
    v = new_pkce_verifier()
    url = authorize_url(disc, client_id="onco-exercise", redirect_uri="https://app/smart/callback",
                        scopes=["launch", "openid"], state="S" * 43, verifier=v, aud=ISS, launch="L1")
    q = {k: vals[0] for k, vals in parse_qs(urlsplit(url).query).items()}
    expected = base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b"=").decode()
    assert q["code_challenge"] == expected and q["code_challenge_method"] == "S256"
    assert q["response_type"] == "code" and q["client_id"] == "onco-exercise"
    assert q["aud"] == ISS and q["launch"] == "L1" and q["state"] == "S" * 43
    assert q["redirect_uri"] == "https://app/smart/callback" and q["scope"] == "launch openid"
    assert v not in url


def _cap(creates: list[str], *, transaction: bool = True, read_only: tuple[str, ...] = ("CarePlan",)) -> dict:
    resources = [{"type": t, "interaction": [{"code": "create"}, {"code": "read"}]} for t in creates]
    resources += [{"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}]} for t in read_only
                  if t not in creates]
    rest = {"mode": "server", "resource": resources,
            "interaction": [{"code": "transaction"}] if transaction else []}
    return {"resourceType": "CapabilityStatement", "rest": [rest]}


FULL = ["CarePlan", "Goal", "ServiceRequest", "Task", "Provenance"]


def test_create_rights_follow_the_write_back_strategy():
    """Only what the strategy this server allows will write (issue 14: 17 scopes whatever the strategy)."""
    assert planned_writes(_cap([*FULL, "DocumentReference"])) == FULL  # full: no DocumentReference
    assert planned_writes(_cap(["CarePlan", "Goal", "ServiceRequest", "Task"])) == FULL[:4]  # no Provenance create
    epic_like = _cap(["ServiceRequest", "DocumentReference", "Observation"])
    assert planned_writes(epic_like) == ["ServiceRequest", "DocumentReference"]
    assert planned_writes(_cap(["DocumentReference"], read_only=("CarePlan", "ServiceRequest"))) == [
        "DocumentReference"]
    assert planned_writes(_cap(["Observation"])) == []  # nothing can be written: read scopes only
    assert planned_writes(None) == FULL  # capabilities unknown: ask for the full plan
    assert planned_writes(_cap([*FULL, "DocumentReference"]), "document") == ["DocumentReference"]
    assert planned_writes(epic_like, care_coordination=True) == ["DocumentReference"]


def test_scope_tiers_for_an_epic_like_server():
    disc = Discovery("a", "t", capabilities=["permission-v2", "permission-v1", "permission-offline"])
    writes = planned_writes(_cap(["ServiceRequest", "DocumentReference"]))
    full = build_scopes(disc, writes, ehr_launch=True)
    assert full[:6] == ["openid", "fhirUser", "launch", "offline_access", "user/Practitioner.rs", "patient/Patient.rs"]
    assert "patient/ServiceRequest.crus" in full and "patient/DocumentReference.crs" in full
    assert "patient/Observation.rs" in full and not any(s.startswith("patient/CarePlan") for s in full)
    essential = build_scopes(disc, writes, ehr_launch=True, tier="essential")
    assert set(full) - set(essential) == {"offline_access", "user/Practitioner.rs"}
    minimum = build_scopes(disc, writes, ehr_launch=True, tier="minimum")
    assert minimum[0] == "launch" and all(s == "launch" or s.endswith(".rs") for s in minimum)
    assert "patient/ServiceRequest.rs" in minimum and "openid" not in minimum
    assert [next_tier(t) for t in ("configured", "full", "essential", "minimum")] == [
        "essential", "essential", "minimum", None]
    configured = build_scopes(disc, writes, ehr_launch=True, tier="configured", configured="launch, patient/*.read")
    assert configured == ["launch", "patient/*.read"]


def test_online_access_when_offered():
    both = Discovery("a", "t", capabilities=["permission-offline", "permission-online"])
    assert both.refresh_scope == "online_access"
    assert Discovery("a", "t", capabilities=["permission-offline"]).refresh_scope == "offline_access"
    assert Discovery("a", "t").refresh_scope == "offline_access"


def test_v1_fallback_and_standalone_context():
    disc = Discovery("a", "t", capabilities=["permission-v1", "launch-standalone"])
    scopes = build_scopes(disc, FULL, ehr_launch=False)
    assert "launch/patient" in scopes and "launch" not in scopes
    assert "patient/Observation.read" in scopes and "patient/CarePlan.write" in scopes
    assert not any(s.endswith(".rs") or s.endswith(".crs") for s in scopes)


def test_what_a_scope_fallback_costs_is_said():
    assert fallback_notes(None) == []
    notes = fallback_notes({"tier": "essential", "reason": "Scopes could not be granted",
                            "dropped": ["offline_access", "user/Practitioner.rs"]})
    assert "without: offline_access user/Practitioner.rs" in notes[0] and "Scopes could not be granted" in notes[0]
    assert any("launch the app again" in n for n in notes) and not any("cannot be signed" in n for n in notes)
    notes = fallback_notes({"tier": "minimum", "dropped": ["openid", "fhirUser", "patient/Task.crs"]})
    assert any("cannot be signed" in n for n in notes) and any("reviewed and printed" in n for n in notes)


def test_granted_scopes_v1_and_v2_and_missing():
    req = requested_scopes(ehr_launch=True, v1=False, write_types=["CarePlan", "ServiceRequest"],
                           types=["Patient", "Observation"])
    granted = "launch openid fhirUser patient/Patient.rs patient/Observation.read patient/ServiceRequest.crus " \
              "patient/CarePlan.rs"
    assert missing(req, granted) == ["patient/CarePlan.crus"]
    g = Grants.parse("user/*.read patient/Goal.write")
    assert g.can_read("Observation") and not g.can_create("CarePlan") and g.can_create("Goal")


@respx.mock
async def test_discovery_prefers_smart_configuration():
    respx.get(f"{ISS}/.well-known/smart-configuration").respond(json={
        "authorization_endpoint": "https://ehr.example/a", "token_endpoint": "https://ehr.example/t",
        "capabilities": ["launch-ehr", "permission-v2"], "code_challenge_methods_supported": ["S256"],
        "issuer": "https://ehr.example", "jwks_uri": "https://ehr.example/jwks"})
    async with httpx.AsyncClient() as http:
        d = await discover(http, ISS)
    assert d.token_endpoint == "https://ehr.example/t" and d.source == "smart-configuration"
    assert d.issuer == "https://ehr.example" and not d.v1_only


@respx.mock
async def test_discovery_falls_back_to_capability_statement_oauth_uris():
    respx.get(f"{ISS}/.well-known/smart-configuration").respond(404)
    respx.get(f"{ISS}/metadata").respond(json={"resourceType": "CapabilityStatement", "rest": [{"mode": "server",
        "security": {"extension": [{"url": launch_mod.OAUTH_URIS, "extension": [
            {"url": "authorize", "valueUri": "https://old.example/authorize"},
            {"url": "token", "valueUri": "https://old.example/token"}]}]}}]})
    async with httpx.AsyncClient() as http:
        d = await discover(http, ISS)
    assert (d.authorization_endpoint, d.token_endpoint, d.source) == (
        "https://old.example/authorize", "https://old.example/token", "capability-statement")


@respx.mock
async def test_discovery_without_endpoints_or_with_plain_only_pkce_fails():
    respx.get(f"{ISS}/.well-known/smart-configuration").respond(404)
    respx.get(f"{ISS}/metadata").respond(json={"resourceType": "CapabilityStatement", "rest": []})
    async with httpx.AsyncClient() as http:
        with pytest.raises(LaunchError, match="does not publish"):
            await discover(http, ISS)
    respx.get(f"{ISS}/.well-known/smart-configuration").respond(json={
        "authorization_endpoint": "a", "token_endpoint": "t", "code_challenge_methods_supported": ["plain"]})
    async with httpx.AsyncClient() as http:
        with pytest.raises(LaunchError, match="S256"):
            await discover(http, ISS)
