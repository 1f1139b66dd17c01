"""Verifying the CDS client's JWT (CDS Hooks 2.0 "Trusting CDS Clients").

Verification is always on: only allowlisted issuers (`ONCO_EXERCISE_CDS_CLIENTS`) are trusted (an empty list
trusts nobody; the sandbox adds its own client), each with its keys configured inline or fetched from its
configured `jwks_url` (or a `jku` header naming that URL or one listed in the client's optional `"jku"` list;
anything else is refused and never fetched). Fetched key sets are cached with a TTL
and refetched, rate-limited, when a token names an unknown `kid` (key rotation). Every refusal is the same
opaque 401: the caller learns nothing about which check failed, and we never log the token.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.util import urlsafe_b64decode

from service.config import Settings
from service.storage import Store

from .signature import SHA256_ALGS, STRONG_ALGS, signature_valid
from .signature_process import SignatureProcess

log = logging.getLogger(__name__)

# RS256/ES256 are accepted only when configured (`Settings.cds_jwt_allow_sha256`, env
# ONCO_EXERCISE_CDS_JWT_ALLOW_SHA256); this default applies while Settings has no such field.
ALLOW_SHA256_DEFAULT = False

LEEWAY_SECONDS = 30  # clock skew tolerated on exp / iat / nbf
MAX_LIFETIME_SECONDS = 300  # CDS Hooks: exp at most 5 minutes after iat
MIN_RSA_BITS = 2048
JWKS_TTL_SECONDS = 3600  # a fetched key set is trusted this long
JWKS_MIN_REFETCH_SECONDS = 30  # an unknown kid triggers at most one refetch per URL in this interval
JWKS_FETCH_TIMEOUT = 3.0
JWKS_MAX_BYTES = 256_000
JTI_NAMESPACE = "cds-jti"


class Unauthorized(Exception):
    """Any failed check. The reason is kept for debugging in tests, never sent to the client."""


def _b64json(segment: str) -> dict[str, Any]:
    value = orjson.loads(urlsafe_b64decode(segment.encode("ascii")))
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def _normalise_url(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass
class _Jwks:
    """One remote key set with its cache state."""

    url: str
    keys: KeySet | None = None
    fetched_at: float = 0.0
    last_attempt: float = -1e9
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Client:
    iss: str
    static_keys: KeySet | None
    jwks_url: str | None
    jku_allowed: frozenset[str]


def _import_keys(jwks: Any) -> KeySet:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWKS")
    usable = [k for k in jwks["keys"] if isinstance(k, dict) and k.get("kty") in ("RSA", "EC")
              and isinstance(k.get("kid"), str)]
    public = [{n: v for n, v in k.items() if n not in ("d", "p", "q", "dp", "dq", "qi", "oth")} for k in usable]
    return KeySet.import_key_set({"keys": public})


def _rsa_bits(key: Any) -> int | None:
    """Modulus size of an RSA key (None for other key types)."""
    if getattr(key, "key_type", None) != "RSA":
        return None
    n = key.as_dict(private=False).get("n", "")
    return len(urlsafe_b64decode(n.encode("ascii"))) * 8 if n else 0


@dataclass
class PendingToken:
    """A client JWT whose every check has passed except the signature's (`check_signature`)."""

    iss: str
    claims: dict[str, Any]
    header: dict[str, Any]
    alg: str
    key: Any
    parts: list[str]

    @property
    def signing_input(self) -> bytes:
        return f"{self.parts[0]}.{self.parts[1]}".encode("ascii")

    async def check_signature(self, signatures: SignatureProcess | None) -> None:
        """Raise Unauthorized unless the signature verifies: in the signature process when there is one (the
        event loop serves other calls meanwhile), else here."""
        args = (self.header, self.alg, self.key, self.signing_input, self.parts[2])
        valid = signature_valid(*args) if signatures is None else await signatures.check(*args)
        if not valid:
            raise Unauthorized("bad signature")


class ClientVerifier:
    """Verifies `Authorization: Bearer <JWT>` for one audience URL; one instance per app."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        self.signatures: SignatureProcess | None = None  # set per call from the app's lifespan (routes._verifier)
        allow_sha256 = getattr(settings, "cds_jwt_allow_sha256", ALLOW_SHA256_DEFAULT)
        self.algorithms = STRONG_ALGS | (SHA256_ALGS if allow_sha256 else frozenset())
        self.clients: dict[str, _Client] = {}
        self.remote: dict[str, _Jwks] = {}
        for c in settings.cds_clients:
            url = _normalise_url(c["jwks_url"]) if c.get("jwks_url") else None
            extra = c.get("jku") or []
            if isinstance(extra, str):
                extra = [extra]
            allowed = {_normalise_url(u) for u in extra if isinstance(u, str)}
            if url:
                allowed.add(url)
            static = _import_keys(c["jwks"]) if c.get("jwks") is not None else None
            self.clients[c["iss"]] = _Client(c["iss"], static, url, frozenset(allowed))
            for u in allowed:
                self.remote.setdefault(u, _Jwks(u))

    # -- key sets ------------------------------------------------------------------------------------------

    async def _fetch(self, entry: _Jwks) -> None:
        entry.last_attempt = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=JWKS_FETCH_TIMEOUT, follow_redirects=False) as http:
                resp = await http.get(entry.url, headers={"Accept": "application/json"})
            if resp.status_code != 200 or len(resp.content) > JWKS_MAX_BYTES:
                raise ValueError(f"status {resp.status_code}")
            entry.keys = _import_keys(resp.json())
            entry.fetched_at = time.monotonic()
            log.info("cds client JWKS fetched", extra={"jwks_url": entry.url})
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            log.warning("cds client JWKS fetch failed", extra={"jwks_url": entry.url, "error": type(exc).__name__})

    async def _remote_key(self, entry: _Jwks, kid: str) -> Any:
        def stale() -> bool:
            return entry.keys is None or time.monotonic() - entry.fetched_at > JWKS_TTL_SECONDS

        if stale():
            async with entry.lock:  # single flight: concurrent calls wait for one fetch
                if stale() and time.monotonic() - entry.last_attempt >= 1.0:
                    await self._fetch(entry)
        key = self._find(entry.keys, kid)
        if key is None:  # unknown kid: maybe the client rotated its keys; refetch, rate-limited
            async with entry.lock:
                key = self._find(entry.keys, kid)
                if key is None and time.monotonic() - entry.last_attempt >= JWKS_MIN_REFETCH_SECONDS:
                    await self._fetch(entry)
                    key = self._find(entry.keys, kid)
        return key

    @staticmethod
    def _find(keys: KeySet | None, kid: str) -> Any:
        if keys is None:
            return None
        for k in keys.keys:
            if k.kid == kid:
                return k
        return None

    # -- the check -----------------------------------------------------------------------------------------

    async def verify(self, authorization: str | None, audience: str) -> str:
        """Return the verified issuer, or raise Unauthorized."""
        iss, claims = await self.verify_token(authorization, audience)
        if not await self.consume_jti(iss, claims):
            raise Unauthorized("replayed jti")
        return iss

    async def consume_jti(self, iss: str, claims: dict[str, Any]) -> bool:
        """Record the token's jti until it expires; False when it was seen before (a replay)."""
        ttl = max(float(claims["exp"]) - time.time() + LEEWAY_SECONDS, 1.0)
        jti_key = hashlib.sha256(f"{iss}\x00{claims['jti']}".encode()).hexdigest()
        return await self.store.add(JTI_NAMESPACE, jti_key, {"exp": claims["exp"]}, ttl=ttl)

    async def verify_token(self, authorization: str | None, audience: str) -> tuple[str, dict[str, Any]]:
        """Every check except the replay cache: (issuer, claims), or raise Unauthorized."""
        token = await self.prepare(authorization, audience)
        await token.check_signature(self.signatures)
        return token.iss, token.claims

    async def prepare(self, authorization: str | None, audience: str) -> PendingToken:
        """Every check but the signature's (format, algorithm, issuer, key, aud, exp/iat/nbf, jti present): the
        cheap ones first, so that a forged token costs no signature verification (~0.6 ms for ES384)."""
        if not authorization:
            raise Unauthorized("missing Authorization header")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("not a Bearer token")
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthorized("not a compact JWS")
        try:
            header = _b64json(parts[0])
            claims = _b64json(parts[1])
        except (ValueError, binascii.Error):  # also UnicodeError and orjson's JSONDecodeError
            raise Unauthorized("undecodable JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise Unauthorized("algorithm not allowed")
        if "crit" in header:  # RFC 7515 4.1.11: we understand no extension, so a critical one is refused
            raise Unauthorized("crit header not understood")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("no kid")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise Unauthorized("typ is not JWT")
        iss = claims.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise Unauthorized("issuer not allowlisted")

        jku = header.get("jku")
        if jku is not None:
            if not isinstance(jku, str) or _normalise_url(jku) not in client.jku_allowed:
                raise Unauthorized("jku not allowlisted")
            key = await self._remote_key(self.remote[_normalise_url(jku)], kid)
        elif client.static_keys is not None:
            key = self._find(client.static_keys, kid)
        elif client.jwks_url:
            key = await self._remote_key(self.remote[client.jwks_url], kid)
        else:
            key = None
        if key is None:
            raise Unauthorized("unknown kid")
        if _rsa_bits(key) is not None and _rsa_bits(key) < MIN_RSA_BITS:  # type: ignore[operator]
            raise Unauthorized("RSA key under 2048 bits")
        self._check_claims(claims, audience)
        return PendingToken(iss, claims, header, alg, key, parts)

    @staticmethod
    def _check_claims(claims: dict[str, Any], audience: str) -> None:
        now = time.time()
        aud = claims.get("aud")
        if isinstance(aud, str):
            ok = aud == audience
        elif isinstance(aud, list):
            ok = audience in aud
        else:
            ok = False
        if not ok:
            raise Unauthorized("wrong audience")
        for name in ("exp", "iat"):
            v = claims.get(name)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise Unauthorized(f"{name} missing")
        if claims["exp"] + LEEWAY_SECONDS <= now:
            raise Unauthorized("expired")
        if claims["iat"] - LEEWAY_SECONDS > now:
            raise Unauthorized("issued in the future")
        if claims["exp"] - claims["iat"] > MAX_LIFETIME_SECONDS + LEEWAY_SECONDS:
            raise Unauthorized("lifetime over 5 minutes")
        if claims["iat"] + MAX_LIFETIME_SECONDS + LEEWAY_SECONDS < now:
            raise Unauthorized("issued too long ago")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not isinstance(nbf, (int, float)) or isinstance(nbf, bool) or nbf - LEEWAY_SECONDS > now:
                raise Unauthorized("not yet valid")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise Unauthorized("jti missing")
