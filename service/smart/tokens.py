"""Token endpoint calls: code exchange and refresh, public or private_key_jwt client authentication.

authlib's AsyncOAuth2Client does the OAuth plumbing; its own PrivateKeyJWT is replaced because it signs with
exp = iat + 3600 and can reuse a jti. Here every request gets a *fresh* assertion: exp <= 5 minutes ahead,
a new 128-bit jti, `kid` in the header (SMART App Launch, client-confidential-asymmetric).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.urls import add_params_to_qs
from service import metrics
from service.smart._authlib import AsyncOAuth2Client, OAuthError
from joserfc import jwt

from service.smart.keys import AppKeys

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 240  # seconds; the spec caps it at 300


class TokenError(Exception):
    """The token endpoint refused or failed; `error` is the RFC 6749 code when the server sent one."""

    def __init__(self, message: str, error: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.status = status


def client_assertion(keys: AppKeys, alg: str, client_id: str, token_endpoint: str,
                     now: float | None = None) -> str:
    """A fresh private_key_jwt assertion for one token request."""
    now = time.time() if now is None else now
    key = keys.signing_key(alg)
    header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "iat": int(now),
        "exp": int(now) + ASSERTION_LIFETIME,
        "jti": secrets.token_urlsafe(24),
    }
    return jwt.encode(header, claims, key, algorithms=[alg])


@dataclass
class ClientConfig:
    client_id: str
    auth: str  # "public" | "private_key_jwt"
    alg: str
    keys: AppKeys | None
    timeout: float = 10.0


class _FreshAssertionAuth:
    """authlib client-auth hook: adds a newly signed client_assertion to each token request body."""

    name = "private_key_jwt"

    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg

    def __call__(self, auth: Any, method: str, uri: str, headers: dict, body: str) -> tuple[str, dict, str]:
        assert self.cfg.keys is not None
        assertion = client_assertion(self.cfg.keys, self.cfg.alg, self.cfg.client_id, str(uri))
        body = add_params_to_qs(body or "", [("client_assertion_type", ASSERTION_TYPE),
                                             ("client_assertion", assertion)])
        return uri, headers, body


def _client(cfg: ClientConfig, transport: httpx.AsyncBaseTransport | None = None) -> AsyncOAuth2Client:
    kwargs: dict[str, Any] = {}
    if transport is not None:
        kwargs["transport"] = transport
    if cfg.auth == "private_key_jwt":
        client = AsyncOAuth2Client(client_id=cfg.client_id, token_endpoint_auth_method="private_key_jwt",
                                   timeout=cfg.timeout, **kwargs)
        client.register_client_auth_method(_FreshAssertionAuth(cfg))
    else:
        client = AsyncOAuth2Client(client_id=cfg.client_id, token_endpoint_auth_method="none",
                                   timeout=cfg.timeout, **kwargs)
    return client


def _normalise(token: Any) -> dict[str, Any]:
    data = dict(token)
    if not data.get("access_token"):
        raise TokenError("the token endpoint returned no access_token", "invalid_response")
    if str(data.get("token_type", "")).lower() != "bearer":
        raise TokenError("the token endpoint returned a token that is not a Bearer token", "invalid_response")
    return data


async def _call(coro_factory: Any) -> dict[str, Any]:
    try:
        return _normalise(await coro_factory())
    except OAuthError as exc:
        raise TokenError(exc.description or exc.error or "token request refused", exc.error) from None
    except httpx.HTTPError as exc:
        raise TokenError(f"the token endpoint could not be reached ({type(exc).__name__})",
                         "temporarily_unavailable") from None
    except ValueError:  # a non-JSON answer (HTML error page, proxy error...)
        raise TokenError("the token endpoint answered with something that is not a token response",
                         "invalid_response") from None


async def exchange_code(cfg: ClientConfig, token_endpoint: str, code: str, redirect_uri: str,
                        code_verifier: str, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """grant_type=authorization_code with the PKCE verifier."""
    async with _client(cfg, transport) as client:
        return await _call(lambda: client.fetch_token(
            token_endpoint, grant_type="authorization_code", code=code, redirect_uri=redirect_uri,
            code_verifier=code_verifier))


async def refresh(cfg: ClientConfig, token_endpoint: str, refresh_token: str,
                  transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """grant_type=refresh_token; the caller keeps the old refresh token when none comes back."""
    async with _client(cfg, transport) as client:
        data = await _call(lambda: client.refresh_token(token_endpoint, refresh_token=refresh_token))
    if data.get("refresh_token") == refresh_token:
        data.pop("refresh_token")  # authlib copies the old one in; the caller decides what to keep
    return data



# ---------------------------------------------------------------------------------------------------------
# Per-session access tokens: refreshed shortly before expiry (and once after a 401), single-flight; a
# still-valid token keeps serving when a refresh fails.
# ---------------------------------------------------------------------------------------------------------

REFRESH_MARGIN_MAX = 60.0  # refresh at most this many seconds before expiry ...
REFRESH_MARGIN_SHARE = 0.2  # ... and no earlier than the last fifth of the token's life (a 60 s token: 12 s)
EXPIRY_GRACE = 2.0  # a token this close to expiry is treated as expired (the request would arrive too late)
RETRY_AFTER = 15.0  # after an unreachable token endpoint, wait this long before trying again
RECENT_REFRESH = 10.0  # a 401 within this many seconds of a refresh does not refresh again
LOCK_NS = "smart-refresh-lock"
_local_locks: "weakref.WeakValueDictionary[str, asyncio.Lock]" = weakref.WeakValueDictionary()


class RefreshFailed(Exception):
    """The session's tokens cannot be renewed; the user has to launch the app again from the EHR."""


def token_record(token: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """What the store keeps for a session's tokens (never sent to the browser)."""
    now = time.time() if now is None else now
    try:
        lifetime = float(token["expires_in"]) if token.get("expires_in") is not None else None
    except (TypeError, ValueError):
        lifetime = None
    return {"access_token": token["access_token"], "refresh_token": token.get("refresh_token"),
            "expires_at": now + lifetime if lifetime is not None else None, "lifetime": lifetime,
            "scope": token.get("scope"), "refreshed": 0, "refresh_attempts": 0}


def refresh_margin(rec: dict[str, Any]) -> float:
    """Seconds before expiry at which a refresh is due: a fifth of the token's life, at most a minute. (A fixed
    minute made every 60 s token due at once: one refresh per request.)"""
    lifetime = rec.get("lifetime")
    if not isinstance(lifetime, (int, float)) or lifetime <= 0:
        return REFRESH_MARGIN_MAX
    return min(REFRESH_MARGIN_MAX, lifetime * REFRESH_MARGIN_SHARE)


def _left(rec: dict[str, Any], now: float) -> float | None:
    exp = rec.get("expires_at")
    return None if exp is None else exp - now


def expired(rec: dict[str, Any], now: float | None = None) -> bool:
    left = _left(rec, time.time() if now is None else now)
    return left is not None and left <= EXPIRY_GRACE


def refresh_due(rec: dict[str, Any], now: float | None = None) -> bool:
    left = _left(rec, time.time() if now is None else now)
    return left is not None and left <= refresh_margin(rec)


def can_refresh(rec: dict[str, Any]) -> bool:
    """There is a refresh token and the EHR has not refused it before."""
    return bool(rec.get("refresh_token")) and not rec.get("refresh_refused")


class TokenKeeper:
    """Bearer tokens for one session.

    `access_token()` refreshes when a refresh is due (`refresh_due`); `after_401(used)` refreshes once unless
    another request already did. A refresh that fails while the token is still valid changes nothing for the
    caller: the token serves until it expires (a refused refresh is not tried again; an unreachable endpoint
    is retried after RETRY_AFTER). Concurrent callers share one refresh: an in-process lock per session plus a
    Store `add` lock, so several replicas behind a load balancer also refresh only once.
    """

    def __init__(self, store: Any, sid: str, cfg: ClientConfig, token_endpoint: str, ttl: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.store, self.sid, self.cfg, self.token_endpoint = store, sid, cfg, token_endpoint
        self.ttl, self.transport = ttl, transport

    async def _record(self) -> dict[str, Any]:
        from service.smart.sessions import TOKEN_NS

        rec = await self.store.get(TOKEN_NS, self.sid)
        if rec is None:
            raise RefreshFailed("the session has expired")
        if rec.get("refresh_failed"):
            raise RefreshFailed("the EHR refused to renew the session")
        return rec

    async def _save(self, rec: dict[str, Any]) -> None:
        from service.smart.sessions import TOKEN_NS

        await self.store.put(TOKEN_NS, self.sid, rec, ttl=self.ttl)

    @staticmethod
    def _serves(rec: dict[str, Any], rejected: str | None) -> bool:
        """Can the stored token be handed out without a refresh?"""
        if rejected is not None:
            # someone refreshed since that request failed, or a moment ago (concurrent 401s of one client
            # cannot say which token each request carried: one refresh serves them all)
            return rec["access_token"] != rejected or time.time() - rec.get("refreshed_at", 0) < RECENT_REFRESH
        if not refresh_due(rec):
            return True
        if expired(rec):
            return False
        # Due but still valid: keep using it when a refresh is impossible or recently found unreachable.
        return not can_refresh(rec) or rec.get("retry_after", 0) > time.time()

    async def access_token(self) -> str:
        return await self._get(None)

    async def after_401(self, used_token: str) -> str:
        return await self._get(used_token)

    async def _get(self, rejected: str | None) -> str:
        rec = await self._record()
        if self._serves(rec, rejected):
            return rec["access_token"]
        lock = _local_locks.get(self.sid)
        if lock is None:
            lock = asyncio.Lock()
            _local_locks[self.sid] = lock
        async with lock:
            rec = await self._record()
            if self._serves(rec, rejected):
                return rec["access_token"]
            deadline = time.monotonic() + 15
            while not await self.store.add(LOCK_NS, self.sid, {"at": time.time()}, ttl=20):
                await asyncio.sleep(0.05)  # another replica is refreshing: wait for its result
                rec = await self._record()
                if self._serves(rec, rejected):
                    return rec["access_token"]
                if time.monotonic() > deadline:
                    raise RefreshFailed("the token refresh did not finish in time")
            try:
                rec = await self._record()
                if self._serves(rec, rejected):
                    return rec["access_token"]
                return await self._refresh(rec, rejected)
            finally:
                await self.store.delete(LOCK_NS, self.sid)

    async def _refresh(self, rec: dict[str, Any], rejected: str | None) -> str:
        """Refresh; on failure keep serving a token that is still valid and not the one just rejected."""
        still_valid = rejected is None and not expired(rec)
        if not can_refresh(rec):
            if still_valid:
                return rec["access_token"]
            await self._save({**rec, "refresh_failed": True})
            raise RefreshFailed("the access token has expired and cannot be renewed")
        attempts = int(rec.get("refresh_attempts", 0)) + 1
        try:
            new = await refresh(self.cfg, self.token_endpoint, rec["refresh_token"], self.transport)
        except TokenError as exc:
            unreachable = exc.error == "temporarily_unavailable"
            metrics.TOKEN_REFRESH.labels("unreachable" if unreachable else "refused").inc()
            changes: dict[str, Any] = {"refresh_attempts": attempts}
            if unreachable:
                changes["retry_after"] = time.time() + RETRY_AFTER
            else:
                changes["refresh_refused"] = True  # invalid_grant and the like: asking again will not help
            if not still_valid and not unreachable:
                changes["refresh_failed"] = True
            await self._save({**rec, **changes})
            if still_valid:
                return rec["access_token"]
            raise RefreshFailed(str(exc)) from None
        updated = token_record(new)
        updated["refresh_token"] = new.get("refresh_token") or rec["refresh_token"]  # Oracle sends none
        updated["scope"] = new.get("scope") or rec.get("scope")
        updated["refreshed"] = int(rec.get("refreshed", 0)) + 1
        updated["refresh_attempts"] = attempts
        updated["refreshed_at"] = time.time()
        metrics.TOKEN_REFRESH.labels("ok").inc()
        await self._save(updated)
        return updated["access_token"]
