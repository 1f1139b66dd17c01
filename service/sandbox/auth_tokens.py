"""Access tokens and id_tokens of the sandbox authorization server (JWTs signed with the sandbox RS256 key).

Access tokens are self-contained JWTs (RFC 9068 `typ: at+jwt`) so the FHIR guard checks them without a store
lookup; `aud` is the FHIR base, so an id_token (aud = client_id) is never accepted as an access token.
Refresh tokens, codes and launches are opaque and live in the app store (see auth_server).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError

from service.sandbox.keys import AUTH_ALG

ACCESS_TYP = "at+jwt"
LEEWAY = 5


class TokenInvalid(Exception):
    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.expired = expired


def issue_access_token(runtime: Any, *, scope: str, client_id: str, patient: str | None = None,
                       encounter: str | None = None, fhir_user: str | None = None,
                       lifetime: int | None = None) -> tuple[str, int]:
    """(token, expires_in). `fhir_user` is a relative reference such as `Practitioner/sandbox-clinician`."""
    now = int(time.time())
    life = int(lifetime if lifetime is not None else runtime.settings.sandbox_access_token_seconds)
    claims: dict[str, Any] = {
        "iss": runtime.issuer,
        "aud": runtime.fhir_base,
        "sub": fhir_user or client_id,
        "client_id": client_id,
        "scope": scope,
        "iat": now,
        "exp": now + life,
        "jti": secrets.token_urlsafe(16),
    }
    if patient:
        claims["patient"] = patient
    if encounter:
        claims["encounter"] = encounter
    if fhir_user:
        claims["fhirUser"] = fhir_user
    header = {"alg": AUTH_ALG, "kid": runtime.keys.auth.kid, "typ": ACCESS_TYP}
    return jwt.encode(header, claims, runtime.keys.auth, algorithms=[AUTH_ALG]), life


def verify_access_token(runtime: Any, token: str) -> dict[str, Any]:
    """Claims of a valid access token for this sandbox's FHIR base; raises TokenInvalid otherwise."""
    try:
        decoded = jwt.decode(token, runtime.keys.auth, algorithms=[AUTH_ALG])
    except (JoseError, ValueError) as exc:
        raise TokenInvalid(f"access token rejected ({type(exc).__name__})") from None
    if decoded.header.get("typ") != ACCESS_TYP:
        raise TokenInvalid("not an access token")
    reg = jwt.JWTClaimsRegistry(
        leeway=LEEWAY,
        iss={"essential": True, "value": runtime.issuer},
        aud={"essential": True, "value": runtime.fhir_base},
        exp={"essential": True},
    )
    try:
        reg.validate(decoded.claims)
    except JoseError as exc:
        if getattr(exc, "error", "") == "expired_token":
            raise TokenInvalid("access token expired", expired=True) from None
        raise TokenInvalid(f"access token rejected: {exc.description or exc.error}") from None
    return dict(decoded.claims)


def issue_id_token(runtime: Any, *, client_id: str, fhir_user: str, nonce: str | None = None,
                   lifetime: int = 3600) -> str:
    """OpenID Connect id_token (RS256); `fhirUser` is the absolute URL of the practitioner resource."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": runtime.issuer,
        "sub": fhir_user.rsplit("/", 1)[-1],
        "aud": client_id,
        "iat": now,
        "exp": now + lifetime,
        "auth_time": now,
        "fhirUser": f"{runtime.fhir_base}/{fhir_user}",
    }
    if nonce:
        claims["nonce"] = nonce
    header = {"alg": AUTH_ALG, "kid": runtime.keys.auth.kid, "typ": "JWT"}
    return jwt.encode(header, claims, runtime.keys.auth, algorithms=[AUTH_ALG])
