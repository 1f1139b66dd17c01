"""Token exchange and refresh against a mocked token endpoint (respx: failure paths and call counting)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from joserfc import jwt
from joserfc.jwk import KeySet

from service.config import Settings
from service.smart.keys import load_or_create_keys
from service.smart.sessions import TOKEN_NS
from service.smart.tokens import (ASSERTION_TYPE, ClientConfig, RefreshFailed, TokenError, TokenKeeper,
                                  exchange_code, refresh, token_record)
from service.storage import SQLiteStore

TOKEN_URL = "https://ehr.example/oauth/token"


def _form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


@pytest.fixture
def keys(tmp_path):
    return load_or_create_keys(Settings(data_dir=tmp_path, log_json=False))


@pytest.fixture
async def store(tmp_path):
    s = SQLiteStore(tmp_path / "state.db")
    yield s
    await s.close()


@respx.mock
async def test_public_client_exchange_sends_verifier_and_client_id():
    route = respx.post(TOKEN_URL).respond(json={"access_token": "A", "token_type": "Bearer", "expires_in": 300,
                                                "scope": "patient/Patient.rs", "patient": "p1"})
    cfg = ClientConfig("onco-exercise", "public", "ES384", None)
    token = await exchange_code(cfg, TOKEN_URL, "CODE", "https://app/smart/callback", "VERIFIER")
    assert token["access_token"] == "A" and token["patient"] == "p1"
    form = _form(route.calls.last.request)
    assert form == {"grant_type": "authorization_code", "code": "CODE", "redirect_uri": "https://app/smart/callback",
                    "code_verifier": "VERIFIER", "client_id": "onco-exercise"}


@respx.mock
@pytest.mark.parametrize("alg", ["ES384", "RS384"])
async def test_private_key_jwt_sends_a_fresh_assertion_each_time(keys, alg):
    route = respx.post(TOKEN_URL).respond(json={"access_token": "A", "token_type": "bearer"})
    cfg = ClientConfig("onco-exercise", "private_key_jwt", alg, keys)
    await exchange_code(cfg, TOKEN_URL, "CODE", "https://app/cb", "V")
    await refresh(cfg, TOKEN_URL, "R")
    public = KeySet.import_key_set(keys.public_jwks())
    jtis = []
    for call in route.calls:
        form = _form(call.request)
        assert form["client_assertion_type"] == ASSERTION_TYPE
        assert "client_secret" not in form
        claims = jwt.decode(form["client_assertion"], public, algorithms=[alg]).claims
        assert claims["aud"] == TOKEN_URL and claims["exp"] - time.time() <= 300
        jtis.append(claims["jti"])
    assert len(set(jtis)) == 2
    assert _form(route.calls[1].request)["grant_type"] == "refresh_token"


@respx.mock
async def test_refused_exchange_is_a_token_error():
    respx.post(TOKEN_URL).respond(400, json={"error": "invalid_grant", "error_description": "PKCE verification failed"})
    with pytest.raises(TokenError) as err:
        await exchange_code(ClientConfig("c", "public", "ES384", None), TOKEN_URL, "C", "https://a/cb", "V")
    assert err.value.error == "invalid_grant" and "PKCE" in str(err.value)


@respx.mock
async def test_non_bearer_or_html_answers_are_refused():
    respx.post(TOKEN_URL).mock(side_effect=[httpx.Response(200, json={"access_token": "A", "token_type": "mac"}),
                                            httpx.Response(502, text="<html>bad gateway</html>")])
    cfg = ClientConfig("c", "public", "ES384", None)
    for _ in range(2):
        with pytest.raises(TokenError):
            await exchange_code(cfg, TOKEN_URL, "C", "https://a/cb", "V")


@respx.mock
async def test_refresh_without_new_refresh_token_leaves_it_to_the_caller():
    respx.post(TOKEN_URL).respond(json={"access_token": "B", "token_type": "Bearer", "expires_in": 570})
    data = await refresh(ClientConfig("c", "public", "ES384", None), TOKEN_URL, "OLD")
    assert data["access_token"] == "B" and "refresh_token" not in data


# -- TokenKeeper ------------------------------------------------------------------------------------------


async def _keeper(store, sid="s1", *, expires_in=-1, refresh_token="R1") -> TokenKeeper:
    rec = token_record({"access_token": "OLD", "token_type": "Bearer", "expires_in": expires_in,
                        "refresh_token": refresh_token, "scope": "patient/*.rs"})
    await store.put(TOKEN_NS, sid, rec, ttl=600)
    return TokenKeeper(store, sid, ClientConfig("c", "public", "ES384", None), TOKEN_URL, ttl=600)


def _slow_token_endpoint(counter: list[int], *, fail: bool = False, new_refresh: str | None = None):
    async def handler(request: httpx.Request) -> httpx.Response:
        counter.append(1)
        await asyncio.sleep(0.1)
        if fail:
            return httpx.Response(400, json={"error": "invalid_grant"})
        body = {"access_token": f"NEW{len(counter)}", "token_type": "Bearer", "expires_in": 300}
        if new_refresh:
            body["refresh_token"] = new_refresh
        return httpx.Response(200, json=body)
    return handler


@respx.mock
async def test_expired_token_is_refreshed_once_for_many_concurrent_callers(store):
    calls: list[int] = []
    respx.post(TOKEN_URL).mock(side_effect=_slow_token_endpoint(calls))
    keeper = await _keeper(store)
    tokens = await asyncio.gather(*(keeper.access_token() for _ in range(20)))
    assert set(tokens) == {"NEW1"} and len(calls) == 1
    rec = await store.get(TOKEN_NS, "s1")
    assert rec["refresh_token"] == "R1"  # none returned: the old one is kept
    assert rec["refreshed"] == 1


@respx.mock
async def test_two_keepers_for_one_session_share_the_store_lock(store):
    """Two replicas = two keepers (and two in-process locks): the Store lock still makes it one refresh."""
    calls: list[int] = []
    respx.post(TOKEN_URL).mock(side_effect=_slow_token_endpoint(calls, new_refresh="R2"))
    a = await _keeper(store)
    b = TokenKeeper(store, "s1", ClientConfig("c", "public", "ES384", None), TOKEN_URL, ttl=600)
    import service.smart.tokens as tokens_mod

    tokens_mod._local_locks.clear()
    results = await asyncio.gather(a.access_token(), a.access_token(), b.access_token())
    assert len(calls) == 1 and set(results) == {"NEW1"}
    assert (await store.get(TOKEN_NS, "s1"))["refresh_token"] == "R2"


@respx.mock
async def test_fresh_token_is_not_refreshed(store):
    route = respx.post(TOKEN_URL).respond(json={"access_token": "X", "token_type": "Bearer"})
    keeper = await _keeper(store, expires_in=3600)
    assert await keeper.access_token() == "OLD"
    assert route.call_count == 0


@respx.mock
async def test_401_refreshes_once_even_when_many_requests_fail_together(store):
    calls: list[int] = []
    respx.post(TOKEN_URL).mock(side_effect=_slow_token_endpoint(calls))
    keeper = await _keeper(store, expires_in=3600)
    used = await keeper.access_token()
    tokens = await asyncio.gather(*(keeper.after_401(used) for _ in range(10)))
    assert set(tokens) == {"NEW1"} and len(calls) == 1


@respx.mock
async def test_a_401_right_after_a_refresh_does_not_refresh_again(store):
    """One FhirClient's concurrent requests: a late 401 reports the *new* token as failed."""
    calls: list[int] = []
    respx.post(TOKEN_URL).mock(side_effect=_slow_token_endpoint(calls))
    keeper = await _keeper(store, expires_in=3600)
    new = await keeper.after_401("OLD")
    assert await keeper.after_401(new) == new
    assert len(calls) == 1


@respx.mock
async def test_failed_refresh_asks_for_a_relaunch_and_is_not_retried(store):
    calls: list[int] = []
    respx.post(TOKEN_URL).mock(side_effect=_slow_token_endpoint(calls, fail=True))
    keeper = await _keeper(store)
    with pytest.raises(RefreshFailed):
        await keeper.access_token()
    with pytest.raises(RefreshFailed):
        await keeper.access_token()
    assert len(calls) == 1


async def test_no_refresh_token_means_relaunch(store):
    keeper = await _keeper(store, refresh_token=None)
    with pytest.raises(RefreshFailed):
        await keeper.access_token()


@respx.mock
async def test_unreachable_token_endpoint_is_not_marked_as_failed(store):
    respx.post(TOKEN_URL).mock(side_effect=[httpx.ConnectError("down"),
                                            httpx.Response(200, json={"access_token": "N", "token_type": "Bearer"})])
    keeper = await _keeper(store)
    with pytest.raises(RefreshFailed):
        await keeper.access_token()
    assert await keeper.access_token() == "N"


# -- refresh only when due; a still-valid token keeps serving when a refresh fails (issue 14) ----------------


def _token_endpoint(calls: list[str], *, lifetime: int = 60, fail: str | None = None):
    """A token endpoint issuing `lifetime`-second tokens (no new refresh token), or refusing with `fail`."""
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(_form(request)["grant_type"])
        if fail == "down":
            raise httpx.ConnectError("token endpoint down")
        if fail:
            return httpx.Response(400, json={"error": fail})
        return httpx.Response(200, json={"access_token": f"NEW{len(calls)}", "token_type": "Bearer",
                                         "expires_in": lifetime})
    return handler


async def _set(store, sid="s1", **changes):
    rec = await store.get(TOKEN_NS, sid)
    rec.update(changes)
    await store.put(TOKEN_NS, sid, rec, ttl=600)


@respx.mock
async def test_sixty_second_tokens_are_not_refreshed_on_every_request(store):
    """A 60 s token was 'stale' from birth under a fixed 60 s margin: one refresh per request."""
    calls: list[str] = []
    respx.post(TOKEN_URL).mock(side_effect=_token_endpoint(calls, lifetime=60))
    keeper = await _keeper(store, expires_in=60)
    assert {await keeper.access_token() for _ in range(11)} == {"OLD"}
    assert calls == []
    await _set(store, expires_at=time.time() + 10)  # within the last fifth of its life: due
    assert await keeper.access_token() == "NEW1"
    assert {await keeper.access_token() for _ in range(10)} == {"NEW1"}  # the new 60 s token is not due
    assert calls == ["refresh_token"]


def test_refresh_margin_is_a_fifth_of_the_lifetime_up_to_a_minute():
    from service.smart.tokens import refresh_margin

    assert refresh_margin({"lifetime": 60}) == 12
    assert refresh_margin({"lifetime": 570}) == 60  # Oracle Health's access tokens
    assert refresh_margin({"lifetime": 3600}) == 60
    assert refresh_margin({"lifetime": None}) == 60


async def _due_keeper(store, *, fail: str | None = None) -> tuple[TokenKeeper, list[str]]:
    """A 60 s token 8 s before expiry (a refresh is due, the token still valid) and the token endpoint's calls."""
    calls: list[str] = []
    respx.post(TOKEN_URL).mock(side_effect=_token_endpoint(calls, fail=fail))
    keeper = await _keeper(store, expires_in=60)
    await _set(store, expires_at=time.time() + 8)
    return keeper, calls


@respx.mock
async def test_refused_refresh_keeps_the_still_valid_token_and_is_not_retried(store):
    keeper, calls = await _due_keeper(store, fail="invalid_grant")
    assert [await keeper.access_token() for _ in range(5)] == ["OLD"] * 5
    assert calls == ["refresh_token"]
    rec = await store.get(TOKEN_NS, "s1")
    assert rec["refresh_refused"] and not rec.get("refresh_failed")
    await _set(store, expires_at=time.time() - 1)  # now it has expired: relaunch
    with pytest.raises(RefreshFailed):
        await keeper.access_token()
    assert calls == ["refresh_token"]


@respx.mock
async def test_without_a_refresh_token_the_token_serves_until_it_expires(store):
    route = respx.post(TOKEN_URL).respond(json={"access_token": "X", "token_type": "Bearer"})
    keeper = await _keeper(store, expires_in=60, refresh_token=None)
    await _set(store, expires_at=time.time() + 5)
    assert await keeper.access_token() == "OLD"
    await _set(store, expires_at=time.time() + 1)  # within EXPIRY_GRACE: as good as expired
    with pytest.raises(RefreshFailed):
        await keeper.access_token()
    assert route.call_count == 0


@respx.mock
async def test_unreachable_endpoint_while_valid_backs_off_then_tries_again(store):
    keeper, calls = await _due_keeper(store, fail="down")
    assert [await keeper.access_token() for _ in range(4)] == ["OLD"] * 4
    assert len(calls) == 1  # one attempt, then the back-off
    rec = await store.get(TOKEN_NS, "s1")
    assert not rec.get("refresh_refused") and rec["retry_after"] > time.time()
    respx.post(TOKEN_URL).mock(side_effect=_token_endpoint(calls))
    await _set(store, retry_after=time.time() - 1)
    assert await keeper.access_token() == "NEW2"


@respx.mock
async def test_a_rejected_token_is_never_served_again_when_refresh_is_refused(store):
    calls: list[str] = []
    respx.post(TOKEN_URL).mock(side_effect=_token_endpoint(calls, fail="invalid_grant"))
    keeper = await _keeper(store, expires_in=3600)
    with pytest.raises(RefreshFailed):
        await keeper.after_401("OLD")
    with pytest.raises(RefreshFailed):
        await keeper.access_token()
    assert calls == ["refresh_token"]
