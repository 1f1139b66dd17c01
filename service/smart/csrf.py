"""CSRF protection for the app's state-changing API calls.

The page embeds the session's CSRF token (random, server-side, per session); the JS sends it back in the
`X-CSRF-Token` header. A cross-site page can neither read the token nor set that header without a CORS
preflight (the session cookie itself is SameSite=None over https, for EHRs that embed the app in an iframe).
When the browser sends `Origin`, it must be ours too.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import Request

from service.smart.sessions import same

HEADER = "X-CSRF-Token"


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port); None for what is not a valid origin (e.g. a port out of range or not a number)."""
    try:
        p = urlsplit(url)
        return p.scheme, (p.hostname or "").lower(), p.port or (443 if p.scheme == "https" else 80)
    except ValueError:
        return None


def csrf_ok(request: Request, sess: dict[str, Any], public_url: str) -> bool:
    if not same(request.headers.get(HEADER), sess.get("csrf")):
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null":
        mine = _origin(origin)
        return mine is not None and mine in (_origin(public_url), _origin(str(request.base_url)))
    return True
