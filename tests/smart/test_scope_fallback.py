"""An authorization server that refuses scopes (`invalid_scope`) instead of trimming them: the app asks again
with the `essential` set, then the `minimum`, then explains what it needs. The refusals are the EHR's
redirects to our callback (as RFC 6749 4.1.2.1 has them); every grant comes from the real sandbox."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.smart.conftest import Sandbox, _sandbox, api, finish, new_launch


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _authorize(b: httpx.Client) -> dict[str, str]:
    launch, iss = new_launch(b, patient="onc-05")
    r = b.get("/smart/launch", params={"iss": iss, "launch": launch})
    assert r.status_code == 302
    return _query(r.headers["location"])


def _refuse(b: httpx.Client, state: str) -> httpx.Response:
    """What an EHR that refuses the requested scopes sends back."""
    return b.get("/smart/callback", params={"state": state, "error": "invalid_scope",
                                            "error_description": "Scopes could not be granted"})


def test_a_refusal_is_followed_by_the_essential_set_and_the_app_works(sandbox: Sandbox):
    with sandbox.browser() as b:
        first = _authorize(b)
        assert {"online_access", "user/Practitioner.rs"} <= set(first["scope"].split())
        r = _refuse(b, first["state"])
        assert r.status_code == 302 and r.headers["location"].startswith(f"{sandbox.url}/sandbox/auth/authorize")
        second = _query(r.headers["location"])
        assert set(first["scope"].split()) - set(second["scope"].split()) == {"online_access",
                                                                              "user/Practitioner.rs"}
        assert second["state"] != first["state"] and second["code_challenge"] != first["code_challenge"]
        assert second["launch"] == first["launch"] and second["aud"] == first["aud"]
        got = finish(b.get(r.headers["location"], follow_redirects=True))
        v = api(b, got.sid).json()
        assert v["writeBack"]["scopeFallback"]["tier"] == "essential"
        assert v["writeBack"]["scopeFallback"]["dropped"] == ["online_access", "user/Practitioner.rs"]
        assert any("asked again without: online_access user/Practitioner.rs" in n for n in v["notes"])
        assert v["writeBack"]["canSign"] is True
        signed = b.post("/smart/api/prescription/sign", params={"s": got.sid},
                        headers={"X-CSRF-Token": got.csrf}, json={})
        assert signed.status_code == 200 and signed.json()["status"] == "sent"


def test_two_refusals_end_in_the_minimum_set_a_view_only_app(sandbox: Sandbox):
    with sandbox.browser() as b:
        first = _authorize(b)
        second = _query(_refuse(b, first["state"]).headers["location"])
        r = _refuse(b, second["state"])
        assert r.status_code == 302
        third = _query(r.headers["location"])
        scopes = third["scope"].split()
        assert scopes[0] == "launch" and all(s == "launch" or s.endswith(".rs") for s in scopes)
        got = finish(b.get(r.headers["location"], follow_redirects=True))
        v = api(b, got.sid).json()
        assert v["prescription"]["components"] and v["writeBack"]["canSign"] is False
        fallback = v["writeBack"]["scopeFallback"]
        assert fallback["tier"] == "minimum" and fallback["first"] == "full"
        assert {"openid", "fhirUser", "online_access", "patient/CarePlan.crus"} <= set(fallback["dropped"])
        assert any("cannot be signed" in n for n in v["notes"]) and any("reviewed and printed" in n for n in v["notes"])


def test_a_refused_minimum_is_explained(sandbox: Sandbox):
    with sandbox.browser() as b:
        state = _authorize(b)["state"]
        for _ in range(2):
            state = _query(_refuse(b, state).headers["location"])["state"]
        r = _refuse(b, state)
        assert r.status_code == 403 and "location" not in r.headers
        assert "minimum permissions" in r.text and "patient/Observation.rs" in r.text
        assert "Scopes could not be granted" in r.text


def test_other_authorization_errors_are_not_retried(sandbox: Sandbox):
    with sandbox.browser() as b:
        state = _authorize(b)["state"]
        r = b.get("/smart/callback", params={"state": state, "error": "access_denied"})
        assert r.status_code == 403 and "did not authorize" in r.text


def test_configured_scopes_are_asked_first(tmp_path_factory: pytest.TempPathFactory):
    configured = "launch openid fhirUser patient/*.rs patient/ServiceRequest.crs"
    for sb in _sandbox(tmp_path_factory.mktemp("smart-scopes"), smart_scopes=configured):
        with sb.browser() as b:
            first = _authorize(b)
            assert first["scope"] == configured
            nxt: dict[str, Any] = _query(_refuse(b, first["state"]).headers["location"])
            assert "patient/Observation.rs" in nxt["scope"].split() and "online_access" not in nxt["scope"]
