"""Server-side SMART sessions in the shared Store; the browser only holds an opaque cookie.

Two identifiers, both random:
- the *browser cookie* (`oe_smart`, HttpOnly, Path=/smart; over https `Secure; SameSite=None; Partitioned`,
  so that it also works when the EHR embeds the app in a cross-site iframe): binds launches and sessions to
  one browser; the store only keeps its SHA-256, so a store dump yields no usable cookie;
- the *session id* `s` (in the app's URL): one per completed launch, so two tabs with two patients never mix.
A request is served only when both match. Tokens, patient data and drafts stay in the store.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from fastapi import Request, Response

from service.config import Settings

COOKIE = "oe_smart"
SESSION_NS = "smart-session"
DATA_NS = "smart-data"
TOKEN_NS = "smart-token"  # tokens apart from the session record: a refresh never races an edit


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def browser_binding(request: Request) -> str | None:
    """SHA-256 of the browser cookie, or None when the browser has none."""
    value = request.cookies.get(COOKIE)
    return _hash(value) if value and 20 <= len(value) <= 200 else None


def ensure_browser_cookie(request: Request, response: Response, settings: Settings) -> str:
    """Keep the browser's cookie (several tabs may launch) or set a new one; returns its binding hash."""
    value = request.cookies.get(COOKIE)
    if not value or not 20 <= len(value) <= 200:
        value = secrets.token_urlsafe(32)
    set_cookie(response, value, settings)
    return _hash(value)


def cookie_header(value: str, settings: Settings) -> str:
    """The Set-Cookie value. Many EHRs show apps in an iframe on their own site, where a SameSite=Lax cookie is
    never sent: over https the cookie is `SameSite=None` (sent in cross-site frames; the API still needs the
    CSRF header and a same-origin Origin, the callback a state bound to this cookie) and `Partitioned` (CHIPS:
    kept per top-level site, so it survives browsers that block other third-party cookies). Plain-http
    development keeps SameSite=Lax: browsers drop SameSite=None cookies that are not Secure."""
    attrs = [f"{COOKIE}={value}", f"Max-Age={int(settings.session_ttl_seconds)}", "Path=/", "HttpOnly"]  # /smart and /patient
    attrs += ["Secure", "SameSite=None", "Partitioned"] if settings.cookie_secure else ["SameSite=Lax"]
    return "; ".join(attrs)


def set_cookie(response: Response, value: str, settings: Settings) -> None:
    # Written by hand: Starlette only emits `Partitioned` on Python 3.14+.
    response.headers.append("set-cookie", cookie_header(value, settings))


def new_session_id() -> str:
    return secrets.token_urlsafe(18)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


class SessionNotFound(Exception):
    """No live session for this id and browser: expired, unknown, or another browser's."""


async def load_session(store: Any, sid: str | None, binding: str | None, *, patient: bool = False) -> dict[str, Any]:
    """The session of this browser; a patient's companion session never opens the clinician's app or API, nor
    the reverse (`patient` says which kind the caller serves)."""
    if not sid or not binding or len(sid) > 100:
        raise SessionNotFound()
    sess = await store.get(SESSION_NS, sid)
    if not sess or not same(sess.get("browser"), binding) or (sess.get("mode") == "patient") != patient:
        raise SessionNotFound()
    return sess


async def save_session(store: Any, sid: str, sess: dict[str, Any], settings: Settings) -> None:
    ttl = max(1.0, sess.get("created", time.time()) + settings.session_ttl_seconds - time.time())
    await store.put(SESSION_NS, sid, sess, ttl=ttl)


async def update_session(store: Any, sid: str, settings: Settings, **changes: Any) -> dict[str, Any]:
    """Re-read, apply changes, write back (the freshest tokens are never overwritten by a stale copy)."""
    sess = await store.get(SESSION_NS, sid)
    if sess is None:
        raise SessionNotFound()
    sess.update(changes)
    await save_session(store, sid, sess, settings)
    return sess
