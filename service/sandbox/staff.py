"""Sign-in for the sandbox's exercise-service inbox (demo-grade, but no open door).

Why: the inbox changes Tasks on the FHIR server; anybody who could reach it could accept or reject referrals.
Staff pick who they are on a sign-in page (synthetic people, no passwords: the sandbox binds loopback only);
the choice is kept in a signed cookie (HMAC with the sandbox's per-process secret, with an expiry), so it
cannot be forged by another site or another port of 127.0.0.1.
"""

from __future__ import annotations

import hmac
import time
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from service.sandbox.ehr import sandbox_secret

COOKIE = "sandbox_staff"
SIGN_IN = "/sandbox/exercise-service/sign-in"
LIFETIME = 8 * 3600
STAFF = {
    "jordan-blake": ("Jordan Blake", "exercise physiologist"),
    "sam-okafor": ("Sam Okafor", "physiotherapist"),
}


def _mac(request: Request, text: str) -> str:
    return hmac.new(sandbox_secret(request), f"staff:{text}".encode(), "sha256").hexdigest()


def signed_in(request: Request) -> str | None:
    """The signed-in staff id, or None (no cookie, forged, or expired)."""
    raw = request.cookies.get(COOKIE) or ""
    user, _, rest = raw.partition(".")
    exp, _, mac = rest.partition(".")
    if user not in STAFF or not exp.isdigit() or int(exp) < time.time():
        return None
    return user if hmac.compare_digest(mac, _mac(request, f"{user}.{exp}")) else None


def sign_in_response(request: Request, user: str, next_url: str) -> Response:
    exp = str(int(time.time()) + LIFETIME)
    resp = RedirectResponse(next_url, status_code=303)
    secure = request.app.state.settings.public_url.startswith("https://")
    resp.set_cookie(COOKIE, f"{user}.{exp}.{_mac(request, f'{user}.{exp}')}", max_age=LIFETIME, httponly=True,
                    samesite="strict", secure=secure, path="/sandbox/exercise-service")
    return resp


def safe_next(value: str | None) -> str:
    """Only a path inside the inbox (no open redirect)."""
    if value and value.startswith("/sandbox/exercise-service/") and "//" not in value and "\\" not in value:
        return value
    return "/sandbox/exercise-service/"


def require_staff(request: Request) -> Response | None:
    """None when signed in, else the redirect to the sign-in page (coming back here afterwards)."""
    if signed_in(request):
        return None
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{SIGN_IN}?next={quote(safe_next(here), safe='/')}", status_code=303)
