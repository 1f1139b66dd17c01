"""The JWT that proves a notification comes from this onco-exercise and was not altered on the way.

Sent as `Authorization: Bearer <jwt>`, signed with the app's own key (ES384 or RS384, the same keys as its
SMART client assertions), so a receiver verifies it with our JWKS at `{public_url}/.well-known/jwks.json`:
`iss` = our public URL, `aud` = the receiver's endpoint, `exp` 5 minutes after `iat`, a fresh `jti` per delivery
attempt, `notification_id` = the Bundle id (the same on every retry: dedupe on it) and `body_sha256` = the
base64url SHA-256 of the exact request body.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

LIFETIME = 300
LEEWAY = 30
ALGORITHMS = ["ES384", "RS384"]


class NotificationRejected(Exception):
    """The notification's JWT does not verify; `message` says why (never the token itself)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def body_digest(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode("ascii").rstrip("=")


def sign(key: Any, alg: str, *, issuer: str, audience: str, nid: str, body: bytes,
         now: float | None = None) -> str:
    """A compact JWT for one delivery attempt of notification `nid` carrying `body`."""
    iat = int(time.time() if now is None else now)
    header = {"alg": alg, "typ": "JWT", "kid": key.kid, "jku": f"{issuer}/.well-known/jwks.json"}
    claims = {"iss": issuer, "sub": issuer, "aud": audience, "iat": iat, "exp": iat + LIFETIME,
              "jti": uuid.uuid4().hex, "notification_id": nid, "body_sha256": body_digest(body)}
    return jwt.encode(header, claims, key, algorithms=[alg])


def verify(token: str, body: bytes, jwks: dict[str, Any], *, issuer: str, audience: str,
           now: float | None = None) -> dict[str, Any]:
    """The claims of a valid notification JWT for `body`; NotificationRejected otherwise."""
    try:
        decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=ALGORITHMS)
    except (JoseError, ValueError, TypeError) as exc:
        raise NotificationRejected(f"signature not valid ({type(exc).__name__})") from None
    claims = dict(decoded.claims)
    t = time.time() if now is None else now
    if claims.get("iss") != issuer:
        raise NotificationRejected("unexpected issuer")
    if claims.get("aud") != audience:
        raise NotificationRejected("audience is not this endpoint")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, (int, float)) or exp + LEEWAY < t:
        raise NotificationRejected("expired")
    if not isinstance(iat, (int, float)) or iat - LEEWAY > t or exp - iat > LIFETIME + LEEWAY:
        raise NotificationRejected("issued in the future or lives too long")
    if claims.get("body_sha256") != body_digest(body):
        raise NotificationRejected("the body does not match the signed digest")
    if not isinstance(claims.get("notification_id"), str) or not isinstance(claims.get("jti"), str):
        raise NotificationRejected("notification_id and jti are required")
    return claims
