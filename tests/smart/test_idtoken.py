"""id_token validation with real keys: signature via the issuer's JWKS, iss, aud, exp; fhirUser -> requester."""

from __future__ import annotations

import time

import httpx
import pytest
import respx
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from service.smart.idtoken import IdTokenError, requester_ref, validate_id_token

ISSUER = "https://ehr.example/auth"
JWKS_URI = f"{ISSUER}/jwks"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"}, private=True)
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"}, private=True)


def _token(key=KEY, **overrides) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "u1", "aud": "onco-exercise", "iat": now, "exp": now + 300,
              "fhirUser": "https://ehr.example/fhir/Practitioner/p1"}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key, algorithms=["RS256"])


@pytest.fixture
def jwks():
    with respx.mock:
        respx.get(JWKS_URI).respond(json=KeySet([KEY]).as_dict(private=False))
        respx.get(f"{ISSUER}/.well-known/openid-configuration").respond(json={"issuer": ISSUER, "jwks_uri": JWKS_URI})
        yield


async def _validate(token: str, **kw):
    async with httpx.AsyncClient() as http:
        return await validate_id_token(http, token, client_id="onco-exercise", issuer=kw.get("issuer", ISSUER),
                                       jwks_uri=kw.get("jwks_uri", JWKS_URI))


async def test_valid_token_yields_claims(jwks):
    claims = await _validate(_token())
    assert claims["fhirUser"].endswith("Practitioner/p1")
    claims = await _validate(_token(aud=["other", "onco-exercise"]), jwks_uri=None)  # via openid-configuration
    assert claims["sub"] == "u1"


@pytest.mark.parametrize("token,match", [
    (lambda: _token(key=OTHER), "signature"),
    (lambda: _token(aud="someone-else"), "another client"),
    (lambda: _token(iss="https://evil.example"), "another issuer"),
    (lambda: _token(exp=int(time.time()) - 3600), "expired"),
    (lambda: _token(exp=None), "expired"),
    (lambda: _token(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200), "future"),
    (lambda: "not-a-jwt", "not a JWT"),
])
async def test_bad_tokens_are_refused(jwks, token, match):
    with pytest.raises(IdTokenError, match=match):
        await _validate(token())


async def test_unreachable_jwks_is_an_error():
    with respx.mock:
        respx.get(JWKS_URI).respond(500)
        with pytest.raises(IdTokenError, match="signing keys"):
            await _validate(_token())


def test_requester_from_fhir_user():
    base = "https://ehr.example/fhir"
    assert requester_ref(f"{base}/Practitioner/p1", base) == "Practitioner/p1"
    assert requester_ref("PractitionerRole/r9", base) == "PractitionerRole/r9"
    assert requester_ref("https://other.example/fhir/Practitioner/p2", base) == "https://other.example/fhir/Practitioner/p2"
    assert requester_ref(f"{base}/Patient/x", base) is None
    assert requester_ref(None, base) is None


# -- id_tokens without `kid` (the reference launcher sends none): every key of the right type is tried --------

ROTATED = RSAKey.generate_key(2048, parameters={"kid": "k2", "use": "sig"}, private=True)
EC_KEY = ECKey.generate_key("P-384", parameters={"kid": "e1"}, private=True)
EC_256 = ECKey.generate_key("P-256", parameters={"kid": "e0"}, private=True)


def _no_kid(key, alg: str, **overrides) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "u1", "aud": "onco-exercise", "iat": now, "exp": now + 300, **overrides}
    return jwt.encode({"alg": alg}, claims, key, algorithms=[alg])


@pytest.fixture
def rotating_jwks():
    """An issuer in the middle of a key rotation: two RSA keys, plus EC keys of two curves."""
    with respx.mock:
        respx.get(JWKS_URI).respond(json=KeySet([KEY, ROTATED, EC_256, EC_KEY]).as_dict(private=False))
        yield


@pytest.mark.parametrize("key,alg", [(KEY, "RS256"), (ROTATED, "RS256"), (ROTATED, "RS384"), (EC_KEY, "ES384"),
                                     (EC_256, "ES256")])
async def test_token_without_kid_is_checked_against_every_key_of_its_type(rotating_jwks, key, alg):
    claims = await _validate(_no_kid(key, alg))
    assert claims["sub"] == "u1"


@pytest.mark.parametrize("token,match", [
    (lambda: _no_kid(OTHER, "RS256"), "any of the issuer's keys"),
    (lambda: _no_kid(ECKey.generate_key("P-384", private=True), "ES384"), "any of the issuer's keys"),
    (lambda: _no_kid(KEY, "RS256", aud="someone-else"), "another client"),
    (lambda: jwt.encode({"alg": "HS256"}, {"iss": ISSUER, "aud": "onco-exercise"}, OctKey.generate_key(256),
                        algorithms=["HS256"]), "algorithm"),
])
async def test_token_without_kid_still_needs_a_matching_key(rotating_jwks, token, match):
    with pytest.raises(IdTokenError, match=match):
        await _validate(token())


async def test_a_key_bound_to_another_algorithm_is_not_a_candidate():
    bound = RSAKey.generate_key(2048, parameters={"kid": "b1", "alg": "RS384"}, private=True)
    same_material = RSAKey.import_key({k: v for k, v in bound.as_dict(private=True).items() if k != "alg"})
    with respx.mock:
        respx.get(JWKS_URI).respond(json=KeySet([bound, ROTATED]).as_dict(private=False))
        with pytest.raises(IdTokenError, match="any of the issuer's keys"):
            await _validate(_no_kid(same_material, "RS256"))
        assert (await _validate(_no_kid(same_material, "RS384")))["sub"] == "u1"
