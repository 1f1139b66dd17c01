"""Strict client JWTs (CDS Hooks: exp at most 5 minutes after iat): long-lived, long-ago, weak-key and
critical-extension tokens are refused over real HTTP with real signatures; refusals are counted by reason."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from service import metrics
from service.cds_hooks.auth import ClientVerifier, Unauthorized
from service.config import Settings
from service.storage import SQLiteStore
from tests.cds_hooks.conftest import STATIC_ISS, Service
from tests.cds_hooks.test_auth import DISCOVERY, _b64, _refused


def _refusals(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("onco_cds_jwt_refusals_total", {"reason": reason}) or 0.0


def test_lifetime_beyond_five_minutes_is_refused(service: Service) -> None:
    now = int(time.time())
    before = _refusals("lifetime over 5 minutes")
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, iat=now, exp=now + 10 * 365 * 86400)))
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, iat=now, exp=now + 400)))
    assert service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, iat=now, exp=now + 300)).status_code == 200
    assert _refusals("lifetime over 5 minutes") == before + 2


def test_an_absurd_exp_is_refused_not_a_500(service: Service) -> None:
    now = int(time.time())
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, iat=now, exp=10 ** 17)))
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, iat=now, exp=1e300)))


def test_issued_long_ago_is_refused(service: Service) -> None:
    now = int(time.time())
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, iat=now - 10 * 365 * 86400,
                                                                  exp=now + 60)))
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, iat=now - 3600, exp=now + 60)))


def _signed(key: Any, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS signed by hand (joserfc itself refuses to emit a `crit` it does not know)."""
    from joserfc.jws import JWSRegistry

    msg = f"{_b64(header)}.{_b64(claims)}"
    sig = JWSRegistry(algorithms=["ES384"]).get_alg("ES384").sign(msg.encode(), key)
    return f"{msg}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def test_crit_header_is_refused(service: Service) -> None:
    now = int(time.time())

    def claims() -> dict[str, Any]:
        return {"iss": STATIC_ISS, "aud": f"{service.url}{DISCOVERY}", "iat": now, "exp": now + 300,
                "jti": uuid.uuid4().hex}

    key = service.ehr.key
    plain = {"alg": "ES384", "kid": key.kid, "typ": "JWT"}
    assert service.ehr.get(DISCOVERY, token=_signed(key, plain, claims())).status_code == 200  # hand-made is fine
    for crit in ({"crit": ["https://example.org/unknown"], "https://example.org/unknown": True},
                 {"crit": ["exp"]}, {"crit": []}):
        _refused(service.ehr.get(DISCOVERY, token=_signed(key, {**plain, **crit}, claims())))


async def test_rsa_keys_under_2048_bits_are_refused(tmp_path: Path) -> None:
    weak = RSAKey.generate_key(1024, parameters={"kid": "weak-1", "alg": "RS384"})
    strong = RSAKey.generate_key(2048, parameters={"kid": "strong-1", "alg": "RS384"})
    settings = Settings(cds_clients=[{"iss": STATIC_ISS, "jwks": {"keys": [weak.as_dict(private=False),
                                                                         strong.as_dict(private=False)]}}])
    store = SQLiteStore(tmp_path / "s.db")
    verifier = ClientVerifier(settings, store)

    def token(key: Any) -> str:
        now = int(time.time())
        claims = {"iss": STATIC_ISS, "aud": "https://svc/cds-services", "iat": now, "exp": now + 300,
                  "jti": uuid.uuid4().hex}
        return jwt.encode({"alg": "RS384", "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=["RS384"])

    try:
        await verifier.verify(f"Bearer {token(strong)}", "https://svc/cds-services")
        try:
            await verifier.verify(f"Bearer {token(weak)}", "https://svc/cds-services")
        except Unauthorized as exc:
            assert "2048" in str(exc)
        else:
            raise AssertionError("a 1024-bit RSA key was accepted")
    finally:
        await store.close()


def test_replay_cache_ttl_is_bounded_on_redis(tmp_path: Path) -> None:
    """exp far in the future used to reach Redis as an expiry it refuses (a 500): the TTL is capped."""
    import pytest

    from service.redis_store import RedisStore
    from tests.storage.redis_server import redis_server

    if not Path("/usr/bin/redis-server").exists():
        pytest.skip("no redis-server")
    with redis_server(tmp_path / "redis") as url:
        async def go() -> bool:
            store = RedisStore(url)
            try:
                return await store.add("cds-jti", "k", {"exp": 1e17}, ttl=1e17)
            finally:
                await store.close()

        assert asyncio.run(go()) is True
