"""EHR and standalone launches against the real sandbox SMART server over HTTP, and every refusal."""

from __future__ import annotations

import re
import secrets
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.smart.launch import STATE_NS
from service.smart.sessions import COOKIE, SESSION_NS, TOKEN_NS
from tests.smart.conftest import (Sandbox, _sandbox, api, callback_url, ehr_launch, forget_loaded, new_launch,
                                  standalone_launch, stored_tokens)


def _authorize_query(client: httpx.Client, iss: str, launch: str | None = None) -> dict[str, str]:
    params = {"iss": iss, **({"launch": launch} if launch else {})}
    r = client.get("/smart/launch", params=params)
    assert r.status_code == 302
    return {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).query).items()}


# -- the happy paths ----------------------------------------------------------------------------------------


async def test_ehr_launch_reaches_the_app_with_context_and_no_token_in_the_browser(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-01", encounter="enc-onc-01",
                         appContext={"cardUuid": "c-1", "kind": "new-referral", "encounterId": "enc-onc-01"})
        view = api(b, got.sid)
        assert view.status_code == 200
        v = view.json()
        assert v["patient"]["id"] == "onc-01" and v["patient"]["name"]
        assert v["needPatientBanner"] is True
        assert v["requester"]["reference"] == "Practitioner/sandbox-clinician"
        assert v["launch"] == {"mode": "ehr", "fromCard": True,
                               "appContext": {"cardUuid": "c-1", "kind": "new-referral", "encounterId": "enc-onc-01"}}
        assert v["writeBack"]["strategy"] == "full" and v["writeBack"]["canSign"] is True
        assert v["data"]["measurements"] and all(m["source"].startswith("Observation/") for m in v["data"]["measurements"])
        assert v["prescription"]["setting"] in ("home-based", "community", "supervised", "defer")
        cookies = {c.name: c.value for c in b.cookies.jar}
        assert set(cookies) == {COOKIE}
        store = sandbox.store()
        try:
            tokens = await store.get(TOKEN_NS, got.sid)
            sess = await store.get(SESSION_NS, got.sid)
        finally:
            await store.close()
    assert tokens and tokens["access_token"] and tokens["refresh_token"]
    assert sess["browser"] != cookies[COOKIE]  # the store keeps a hash, never the cookie itself
    secrets_ = [tokens["access_token"], tokens["refresh_token"]]
    visible = " ".join(got.urls) + got.page.text + view.text + " ".join(cookies.values())
    for s in secrets_:
        assert s not in visible


def test_launch_cookie_is_opaque_httponly_samesite(sandbox: Sandbox):
    with sandbox.browser() as b:
        launch, iss = new_launch(b)
        r = b.get("/smart/launch", params={"iss": iss, "launch": launch})
        assert r.status_code == 302
        set_cookie = r.headers["set-cookie"]
        assert set_cookie.startswith(f"{COOKIE}=")
        low = set_cookie.lower()
        assert "httponly" in low and "samesite=lax" in low and ("path=/;" in low or low.endswith("path=/"))
        assert "secure" not in low  # the test sandbox runs on plain http (cookie_secure=False)
        assert r.headers["cache-control"] == "no-store"


def test_authorize_request_has_pkce_s256_state_aud_launch_and_scopes(sandbox: Sandbox):
    with sandbox.browser() as b:
        launch, iss = new_launch(b)
        q = _authorize_query(b, iss, launch)
        assert q["response_type"] == "code" and q["client_id"] == "onco-exercise"
        assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
        assert q["aud"] == iss and q["launch"] == launch
        assert len(q["state"]) >= 43
        assert q["redirect_uri"] == f"{sandbox.url}/smart/callback"
        scopes = q["scope"].split()
        assert {"launch", "openid", "fhirUser"} <= set(scopes)
        assert "patient/Observation.rs" in scopes and "patient/CarePlan.crus" in scopes
        assert "patient/DocumentReference.crs" not in scopes  # the full strategy writes no document
        assert "online_access" in scopes and "offline_access" not in scopes  # the sandbox offers online_access
        q2 = _authorize_query(b, iss)
        assert "launch" not in q2 and "launch/patient" in q2["scope"].split()
        assert q2["state"] != q["state"] and q2["code_challenge"] != q["code_challenge"]


def test_standalone_launch_with_patient_picker(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = standalone_launch(b, sandbox.iss, patient="onc-02")
        v = api(b, got.sid).json()
        assert v["patient"]["id"] == "onc-02" and v["launch"]["mode"] == "standalone"
        assert v["requester"]["reference"] == "Practitioner/sandbox-clinician"


def test_standalone_launch_without_iss_uses_the_only_allowed_server(sandbox: Sandbox):
    with sandbox.browser() as b:
        r = b.get("/smart/launch")
        assert r.status_code == 302
        assert parse_qs(urlsplit(r.headers["location"]).query)["aud"] == [sandbox.iss]


def test_private_key_jwt_client_launch(tmp_path_factory: pytest.TempPathFactory):
    for sb in _sandbox(tmp_path_factory.mktemp("smart-pkjwt"), smart_client_auth="private_key_jwt",
                       smart_alg="RS384"):
        with sb.browser() as b:
            jwks = b.get("/.well-known/jwks.json").json()
            assert {k["alg"] for k in jwks["keys"]} == {"ES384", "RS384"}
            assert all("d" not in k for k in jwks["keys"])
            got = ehr_launch(b, patient="onc-03")
            assert api(b, got.sid).json()["patient"]["id"] == "onc-03"


# -- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("iss", ["https://evil.example/fhir", "http://127.0.0.1:1/sandbox/fhir", "not a url"])
def test_launch_with_an_unlisted_iss_is_refused_without_redirect(sandbox: Sandbox, iss: str):
    with sandbox.browser() as b:
        r = b.get("/smart/launch", params={"iss": iss, "launch": "x"})
        assert r.status_code == 400 and "location" not in r.headers
        assert "not configured to work with the FHIR server" in r.text
        assert COOKIE not in r.headers.get("set-cookie", "")


def test_ehr_launch_without_iss_is_refused(sandbox: Sandbox):
    with sandbox.browser() as b:
        r = b.get("/smart/launch", params={"launch": "abc"})
        assert r.status_code == 400 and "location" not in r.headers


def test_state_is_single_use(sandbox: Sandbox):
    with sandbox.browser() as b:
        cb = callback_url(b, sandbox)
        assert b.get(cb).status_code == 303
        again = b.get(cb)
        assert again.status_code == 400 and "already used" in again.text


def test_unknown_state_is_refused(sandbox: Sandbox):
    with sandbox.browser() as b:
        cb = callback_url(b, sandbox)
        forged = re.sub(r"state=[^&]+", f"state={secrets.token_urlsafe(32)}", cb)
        r = b.get(forged)
        assert r.status_code == 400 and "Sign-in refused" in r.text
        assert b.get(cb).status_code == 303  # the genuine one is untouched


def test_state_from_another_browser_is_refused(sandbox: Sandbox):
    with sandbox.browser() as victim, sandbox.browser() as attacker:
        cb = callback_url(attacker, sandbox)
        victim.get("/smart/launch", params={"iss": sandbox.iss})  # the victim has a cookie of their own
        r = victim.get(cb)
        assert r.status_code == 400 and "another browser" in r.text
        assert attacker.get(cb).status_code == 400  # and the state is spent


def test_expired_state_is_refused(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch):
    import service.smart.routes as routes

    monkeypatch.setattr(routes, "STATE_TTL", 1)
    with sandbox.browser() as b:
        cb = callback_url(b, sandbox)
        time.sleep(1.2)
        r = b.get(cb)
        assert r.status_code == 400 and "expired" in r.text


async def test_wrong_pkce_verifier_is_refused_by_the_ehr(sandbox: Sandbox):
    with sandbox.browser() as b:
        cb = callback_url(b, sandbox)
        state = parse_qs(urlsplit(cb).query)["state"][0]
        store = sandbox.store()
        try:
            rec = await store.get(STATE_NS, state)
            rec["verifier"] = secrets.token_urlsafe(64)
            await store.put(STATE_NS, state, rec, ttl=60)
        finally:
            await store.close()
        r = b.get(cb)
        assert r.status_code == 400 and "The EHR refused the sign-in" in r.text and "invalid_grant" in r.text


def test_denied_authorization_shows_a_page(sandbox: Sandbox):
    with sandbox.browser() as b:
        r = b.get("/smart/launch", params={"iss": sandbox.iss}, follow_redirects=True)
        txn = re.search(r'name="txn" value="([^"]+)"', r.text).group(1)
        r = b.post("/sandbox/auth/authorize/decision", data={"txn": txn, "action": "deny"}, follow_redirects=True)
        assert r.status_code == 403 and "did not authorize" in r.text


async def test_missing_patient_context_is_a_clear_error(sandbox: Sandbox):
    from service.sandbox.auth_oauth import NS_LAUNCH

    launch = secrets.token_urlsafe(16)
    store = sandbox.store()
    try:  # an EHR launch whose context names no patient (the sandbox API always binds one)
        await store.put(NS_LAUNCH, launch, {"launch": launch, "patient": None, "encounter": None,
                                            "practitioner": "sandbox-clinician", "app_context": None,
                                            "read_only_types": [], "need_patient_banner": True, "intent": None},
                        ttl=300)
    finally:
        await store.close()
    with sandbox.browser() as b:
        r = b.get("/smart/launch", params={"iss": sandbox.iss, "launch": launch}, follow_redirects=True)
        assert r.status_code == 400 and "No patient selected" in r.text
        assert r.url.path == "/smart/callback"


def test_narrowed_scopes_degrade_the_write_back_with_an_explanation(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-04", readOnlyTypes=["CarePlan", "Goal"])
        wb = api(b, got.sid).json()["writeBack"]
        assert wb["strategy"] == "service-request-only" and wb["canSign"]
        assert "patient/CarePlan.crus" in wb["missingScopes"] and "patient/Goal.crus" in wb["missingScopes"]
        assert any("CarePlan" in w and "permission" in w for w in wb["why"])
        r = b.post("/smart/api/prescription/sign", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf}, json={})
        assert r.status_code == 200, r.text
        written = {w["resourceType"] for w in r.json()["written"]}
        assert r.json()["strategy"] == "service-request-only"
        # Scopes follow the planned (full) strategy, so no DocumentReference create was asked for: the
        # ServiceRequests go, the document beside them is skipped with a note.
        assert written == {"ServiceRequest"}
        assert any("DocumentReference not written" in n for n in r.json()["notes"])


def test_no_write_scope_at_all_means_view_only(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-05", readOnlyTypes=["CarePlan", "Goal", "ServiceRequest", "Task",
                                                            "Provenance", "DocumentReference"])
        v = api(b, got.sid).json()
        assert v["writeBack"]["strategy"] is None and v["writeBack"]["canSign"] is False
        assert "Nothing can be written" in v["writeBack"]["why"][0]
        r = b.post("/smart/api/prescription/sign", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf}, json={})
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"


# -- token refresh ------------------------------------------------------------------------------------------


async def test_token_near_expiry_is_refreshed_before_use(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-06")
        assert api(b, got.sid).status_code == 200
        before = await forget_loaded(sandbox, got.sid, expires_at=time.time() + 5)
        assert api(b, got.sid).status_code == 200
        after = await stored_tokens(sandbox, got.sid)
    assert after["refreshed"] == 1 and after["access_token"] != before["access_token"]
    assert after["refresh_token"]


async def test_rejected_token_is_refreshed_once_and_the_call_retried(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-07")
        assert api(b, got.sid).status_code == 200
        await forget_loaded(sandbox, got.sid, access_token="revoked-" + secrets.token_urlsafe(8),
                             expires_at=time.time() + 3600)
        r = api(b, got.sid)
        assert r.status_code == 200 and r.json()["patient"]["id"] == "onc-07"
        after = await stored_tokens(sandbox, got.sid)
    assert after["refreshed"] == 1 and not after["access_token"].startswith("revoked-")


async def test_failed_refresh_asks_to_relaunch(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-08")
        assert api(b, got.sid).status_code == 200
        await forget_loaded(sandbox, got.sid, access_token="revoked", refresh_token="bogus", expires_at=time.time() - 1)
        r = api(b, got.sid)
        assert r.status_code == 401
        body = r.json()
        assert body["resourceType"] == "OperationOutcome" and "again from the EHR" in body["issue"][0]["diagnostics"]
        page = b.get("/smart/app", params={"s": got.sid})
        assert page.status_code == 200  # the shell loads; its script shows the API's message


def test_session_belongs_to_its_browser(sandbox: Sandbox):
    with sandbox.browser() as b, sandbox.browser() as other:
        got = ehr_launch(b, patient="onc-09")
        assert api(other, got.sid).status_code == 401
        page = other.get("/smart/app", params={"s": got.sid})
        assert page.status_code == 401 and "Session expired" in page.text
        assert api(b, "nonexistent").status_code == 401


def test_unreachable_allowed_server_is_an_error_page(sandbox: Sandbox):
    from tests.support.live import free_port

    dead = f"http://127.0.0.1:{free_port()}/fhir"  # allowlisted, but nothing listens there
    sandbox.app.state.settings.fhir_servers.append(dead)
    try:
        with sandbox.browser() as b:
            r = b.get("/smart/launch", params={"iss": dead, "launch": "x"})
            assert r.status_code == 502 and "location" not in r.headers
            assert "could not be reached" in r.text
    finally:
        sandbox.app.state.settings.fhir_servers.remove(dead)


def test_patient_banner_follows_the_ehr(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-16", needPatientBanner=False)
        assert api(b, got.sid).json()["needPatientBanner"] is False


def test_over_https_the_cookie_works_in_a_cross_site_iframe(tmp_path_factory: pytest.TempPathFactory):
    """Secure deployments: SameSite=None (sent inside an EHR's iframe) and Partitioned (kept when the browser
    blocks other third-party cookies); never readable by scripts."""
    for sb in _sandbox(tmp_path_factory.mktemp("smart-secure-cookie"), cookie_secure=True):
        with sb.browser() as b:
            launch, iss = new_launch(b)
            r = b.get("/smart/launch", params={"iss": iss, "launch": launch})
            assert r.status_code == 302
            attrs = [a.strip().lower() for a in r.headers["set-cookie"].split(";")]
            assert attrs[0].startswith(f"{COOKIE}=")
            assert {"secure", "samesite=none", "partitioned", "httponly", "path=/"} <= set(attrs)
