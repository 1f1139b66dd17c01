"""id_token validation (OIDC): signature via the issuer's JWKS, iss, aud = client_id, exp; fhirUser out.

The issuer is the one the SMART configuration advertises; its keys come from `jwks_uri` (from the SMART
configuration, else from `{issuer}/.well-known/openid-configuration`).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

# The signature algorithms accepted, with the key type (and curve) each needs.
_KEY_FOR_ALG = {"RS256": ("RSA", None), "RS384": ("RSA", None), "ES256": ("EC", "P-256"),
                "ES384": ("EC", "P-384")}
ID_TOKEN_ALGS = list(_KEY_FOR_ALG)
LEEWAY = 60


class IdTokenError(Exception):
    """The id_token is not acceptable; the message says which check failed (never the token itself)."""


def _unverified_part(token: str, index: int) -> dict[str, Any]:
    """The JOSE header (0) or the claims (1) before any check: to find the issuer and the key."""
    try:
        part = token.split(".")[index]
        part += "=" * (-len(part) % 4)
        data = json.loads(base64.urlsafe_b64decode(part))
        return data if isinstance(data, dict) else {}
    except (IndexError, ValueError):
        raise IdTokenError("the id_token is not a JWT") from None


def _candidates(keys: KeySet, alg: str) -> list[Key]:
    """Keys that could have made an `alg` signature: right type and curve, meant for signing (or unlabelled),
    not bound to another algorithm."""
    kty, crv = _KEY_FOR_ALG[alg]
    return [k for k in keys if k.key_type == kty and (crv is None or k.get("crv") == crv)
            and k.get("use") in (None, "sig") and k.get("alg") in (None, alg)]


def _verify(token: str, keys: KeySet) -> Any:
    """Verify against the key named by `kid`; without a `kid`, against every key of the right type. OIDC Core
    (10.1) asks issuers for a `kid` when their JWKS holds several keys, yet some send none (the reference
    launcher's id_tokens have none); during a key rotation the JWKS holds two, and picking "the only key"
    would lock everyone out."""
    header = _unverified_part(token, 0)
    alg = header.get("alg")
    if alg not in ID_TOKEN_ALGS:
        raise IdTokenError("the id_token is signed with an algorithm this app does not accept")
    if header.get("kid") is not None:
        return jwt.decode(token, keys, algorithms=[alg])
    for key in _candidates(keys, alg):
        try:
            return jwt.decode(token, key, algorithms=[alg])
        except (JoseError, ValueError):
            continue
    raise IdTokenError("the id_token signature does not verify with any of the issuer's keys")


async def _jwks(http: httpx.AsyncClient, issuer: str, jwks_uri: str | None) -> KeySet:
    try:
        if not jwks_uri:
            r = await http.get(f"{issuer.rstrip('/')}/.well-known/openid-configuration")
            r.raise_for_status()
            jwks_uri = r.json().get("jwks_uri")
            if not jwks_uri:
                raise IdTokenError("the issuer publishes no jwks_uri")
        r = await http.get(jwks_uri)
        r.raise_for_status()
        return KeySet.import_key_set(r.json())
    except IdTokenError:
        raise
    except (httpx.HTTPError, ValueError, KeyError, TypeError, JoseError):
        raise IdTokenError("the issuer's signing keys could not be fetched") from None


async def validate_id_token(http: httpx.AsyncClient, token: str, *, client_id: str, issuer: str | None,
                            jwks_uri: str | None, now: float | None = None) -> dict[str, Any]:
    """Return the verified claims or raise IdTokenError."""
    claimed_iss = _unverified_part(token, 1).get("iss")
    expected_iss = issuer or claimed_iss
    if not isinstance(expected_iss, str) or urlsplit(expected_iss).scheme not in ("http", "https"):
        raise IdTokenError("the id_token has no usable issuer")
    keys = await _jwks(http, expected_iss, jwks_uri)
    try:
        decoded = _verify(token, keys)
    except (JoseError, ValueError) as exc:
        raise IdTokenError(f"the id_token signature does not verify ({type(exc).__name__})") from None
    claims = decoded.claims
    now = time.time() if now is None else now
    if claims.get("iss") != expected_iss:
        raise IdTokenError("the id_token was issued by another issuer")
    aud = claims.get("aud")
    if not (aud == client_id or (isinstance(aud, list) and client_id in aud)):
        raise IdTokenError("the id_token is meant for another client (aud)")
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or exp + LEEWAY < now:
        raise IdTokenError("the id_token has expired")
    iat = claims.get("iat")
    if isinstance(iat, (int, float)) and iat - LEEWAY > now:
        raise IdTokenError("the id_token is issued in the future")
    return claims


def requester_ref(fhir_user: str | None, fhir_base: str) -> str | None:
    """fhirUser (absolute or relative) as a reference usable on the EHR's server: relative when it lives
    there, absolute otherwise; only Practitioner/PractitionerRole may request a referral."""
    if not fhir_user or not isinstance(fhir_user, str):
        return None
    ref = fhir_user
    base = fhir_base.rstrip("/") + "/"
    if ref.startswith(base):
        ref = ref[len(base):]
    parts = ref.rstrip("/").split("/")
    if len(parts) < 2 or parts[-2] not in ("Practitioner", "PractitionerRole"):
        return None
    return ref if ref.startswith(("http://", "https://")) else f"{parts[-2]}/{parts[-1]}"
