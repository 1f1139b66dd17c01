"""Discovery, scopes, PKCE and the authorize URL (pure pieces; respx for the discovery failure paths)."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from service.smart import launch as launch_mod
from service.smart.launch import (Discovery, LaunchError, authorize_url, build_scopes, creatable_types, discover,
                                  new_pkce_verifier, new_state)
from service.smart.scopes import Grants, missing, requested_scopes

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


def test_v2_scopes_with_writes_only_for_creatable_types():
    cap = {"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": [
        {"type": "ServiceRequest", "interaction": [{"code": "create"}, {"code": "read"}]},
        {"type": "CarePlan", "interaction": [{"code": "read"}, {"code": "search-type"}]},
        {"type": "DocumentReference", "interaction": [{"code": "create"}]}]}]}
    assert creatable_types(cap) == ["ServiceRequest", "DocumentReference"]
    disc = Discovery("a", "t", capabilities=["permission-v2", "permission-v1", "permission-offline"])
    scopes = build_scopes(disc, cap, ehr_launch=True)
    assert "launch" in scopes and "openid" in scopes and "fhirUser" in scopes and "offline_access" in scopes
    assert "patient/ServiceRequest.crs" in scopes and "patient/DocumentReference.crs" in scopes
    assert "patient/Observation.rs" in scopes and "patient/Patient.rs" in scopes
    assert not any(s.startswith("patient/CarePlan") for s in scopes)
    assert creatable_types(None) == ["CarePlan", "Goal", "ServiceRequest", "Task", "Provenance", "DocumentReference"]
    assert creatable_types(None, "document") == ["DocumentReference"]


def test_v1_fallback_and_standalone_context():
    disc = Discovery("a", "t", capabilities=["permission-v1", "launch-standalone"])
    scopes = build_scopes(disc, None, ehr_launch=False)
    assert "launch/patient" in scopes and "launch" not in scopes
    assert "patient/Observation.read" in scopes and "patient/CarePlan.write" in scopes
    assert not any(s.endswith(".rs") or s.endswith(".crs") for s in scopes)


def test_granted_scopes_v1_and_v2_and_missing():
    req = requested_scopes(ehr_launch=True, v1=False, write_types=["CarePlan", "ServiceRequest"],
                           types=["Patient", "Observation"])
    granted = "launch openid fhirUser patient/Patient.rs patient/Observation.read patient/ServiceRequest.crs " \
              "patient/CarePlan.rs"
    assert missing(req, granted) == ["patient/CarePlan.crs"]
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
