"""Client JWT verification over real HTTP with real keys: every acceptance rule and every refusal."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from service.cds_hooks import auth
from service.cds_hooks.discovery import ENCOUNTER_START_ID
from tests.cds_hooks.conftest import REMOTE_ISS, STATIC_ISS, Ehr, KeyServer, Service, make_settings
from tests.support.live import free_port, serve

DISCOVERY = "/cds-services"
GENERIC_401 = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "login", "diagnostics": "Unauthorized"}]}


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _refused(resp: Any) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json() == GENERIC_401  # the same opaque body whatever failed
    assert resp.headers["www-authenticate"] == "Bearer"


def _claims(service: Service, path: str = DISCOVERY, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    c = {"iss": STATIC_ISS, "aud": f"{service.url}{path}", "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def test_valid_es384_and_rs384_tokens_are_accepted(service: Service, keys: dict[str, Any]) -> None:
    assert service.ehr.get(DISCOVERY).status_code == 200
    rs = Ehr(service.url, keys["rs"], alg="RS384")
    assert rs.get(DISCOVERY).status_code == 200


def test_es256_only_when_enabled(service: Service, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    es256 = Ehr(service.url, keys["es256"], alg="ES256")
    _refused(es256.get(DISCOVERY))  # not one of the spec's recommended algorithms: off by default
    assert service.ehr.get(DISCOVERY).status_code == 200  # (creates the verifier if needed)
    verifier = service.app.state.cds_verifier
    monkeypatch.setattr(verifier, "algorithms", auth.STRONG_ALGS | auth.SHA256_ALGS)  # what the setting does
    assert es256.get(DISCOVERY).status_code == 200


def test_missing_and_malformed_authorization_refused(service: Service) -> None:
    _refused(service.ehr.get(DISCOVERY, token=None))
    _refused(service.ehr.http.get(f"{service.url}{DISCOVERY}", headers={"Authorization": "Basic abc"}))
    _refused(service.ehr.get(DISCOVERY, token="not.a.jwt"))
    _refused(service.ehr.get(DISCOVERY, token="abc"))


def test_expired_refused_small_skew_tolerated(service: Service) -> None:
    now = int(time.time())
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, exp=now - 120, iat=now - 420)))
    assert service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, exp=now - 5, iat=now - 305)).status_code == 200


def test_iat_in_future_and_nbf_honoured(service: Service) -> None:
    now = int(time.time())
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, iat=now + 600, exp=now + 900)))
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, nbf=now + 600)))


def test_epic_style_extra_claims_accepted(service: Service) -> None:
    now = int(time.time())
    tok = service.ehr.token(DISCOVERY, nbf=now - 300, sub="epic-client-id", tenant="abc", extra={"x": 1})
    assert service.ehr.get(DISCOVERY, token=tok).status_code == 200


def test_audience_must_be_the_exact_url(service: Service) -> None:
    e = service.ehr
    path = f"/cds-services/{ENCOUNTER_START_ID}"
    _refused(e.get(DISCOVERY, token=e.token(DISCOVERY, aud=f"{service.url}{path}")))  # another endpoint
    _refused(e.get(DISCOVERY, token=e.token(DISCOVERY, aud=f"{service.url}{DISCOVERY}/")))
    _refused(e.get(DISCOVERY, token=e.token(DISCOVERY, aud="https://elsewhere.example.org/cds-services")))
    _refused(e.get(DISCOVERY, token=e.token(DISCOVERY, aud=[f"{service.url}{path}"])))
    _refused(e.get(DISCOVERY, token=e.token(DISCOVERY, aud=None)))
    ok = e.token(DISCOVERY, aud=["https://other.example.org", f"{service.url}{DISCOVERY}"])
    assert e.get(DISCOVERY, token=ok).status_code == 200
    # the hook endpoint's aud is its own URL
    assert e.post(path, {}, token=e.token(DISCOVERY)).status_code == 401


def test_wrong_issuer_refused(service: Service) -> None:
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, iss="https://evil.example.org")))
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, iss=None)))


def test_unknown_kid_refused(service: Service) -> None:
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, header={"kid": "nope"})))
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, header={"kid": None})))


def test_bad_signature_refused(service: Service, keys: dict[str, Any]) -> None:
    stranger = Ehr(service.url, keys["stranger"])  # same kid as the trusted key, different key
    _refused(stranger.get(DISCOVERY))
    good = service.ehr.token(DISCOVERY)
    h, p, s = good.split(".")
    forged = _b64({**json.loads(base64.urlsafe_b64decode(p + "==")), "tenant": "other"})
    _refused(service.ehr.get(DISCOVERY, token=f"{h}.{forged}.{s}"))
    _refused(service.ehr.get(DISCOVERY, token=f"{h}.{p}.{s[:-4]}AAAA"))


def test_alg_none_and_hmac_refused(service: Service, keys: dict[str, Any]) -> None:
    claims = _claims(service)
    none_tok = f"{_b64({'alg': 'none', 'kid': 'es-1', 'typ': 'JWT'})}.{_b64(claims)}."
    _refused(service.ehr.get(DISCOVERY, token=none_tok))
    # HS256 keyed with the public key's JSON (the classic algorithm-confusion attack)
    secret = OctKey.import_key(json.dumps(keys["es"].as_dict(private=False)).encode())
    hs = jwt.encode({"alg": "HS256", "kid": "es-1", "typ": "JWT"}, _claims(service), secret, algorithms=["HS256"])
    _refused(service.ehr.get(DISCOVERY, token=hs))
    hs512 = jwt.encode({"alg": "HS512", "kid": "es-1"}, _claims(service), secret, algorithms=["HS512"])
    _refused(service.ehr.get(DISCOVERY, token=hs512))


def test_alg_must_match_key(service: Service, keys: dict[str, Any]) -> None:
    # an RS384 header naming the EC key's kid
    tok = service.ehr.token(DISCOVERY)
    h, p, s = tok.split(".")
    _refused(service.ehr.get(DISCOVERY, token=f"{_b64({'alg': 'RS384', 'kid': 'es-1', 'typ': 'JWT'})}.{p}.{s}"))


def test_replayed_jti_refused(service: Service) -> None:
    tok = service.ehr.token(DISCOVERY)
    assert service.ehr.get(DISCOVERY, token=tok).status_code == 200
    _refused(service.ehr.get(DISCOVERY, token=tok))
    # the same jti in a freshly signed token is still a replay
    jti = str(uuid.uuid4())
    assert service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, jti=jti)).status_code == 200
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, jti=jti)))


def test_required_claims(service: Service) -> None:
    for missing in ("jti", "exp", "iat"):
        _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, **{missing: None})))
    _refused(service.ehr.get(DISCOVERY, token=service.ehr.token(DISCOVERY, header={"typ": "at+jwt"})))


def test_jku_must_be_allowlisted(service: Service, keys: dict[str, Any], key_server: KeyServer) -> None:
    before = key_server.fetches
    # the static client may not point at any JWKS URL, not even a real one
    e = Ehr(service.url, keys["es"], jku=key_server.jwks_url)
    _refused(e.get(DISCOVERY))
    evil = Ehr(service.url, keys["remote"], iss=REMOTE_ISS, jku=f"{key_server.url}/other.json")
    _refused(evil.get(DISCOVERY))
    evil2 = Ehr(service.url, keys["remote"], iss=REMOTE_ISS, jku="http://169.254.169.254/latest/jwks")
    _refused(evil2.get(DISCOVERY))
    assert key_server.fetches == before  # nothing was fetched for a refused jku


def test_remote_jwks_with_jku_cache_and_rotation(service: Service, keys: dict[str, Any], key_server: KeyServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    remote = Ehr(service.url, keys["remote"], iss=REMOTE_ISS, jku=key_server.jwks_url)
    assert remote.get(DISCOVERY).status_code == 200
    fetched = key_server.fetches
    assert fetched >= 1
    assert remote.get(DISCOVERY).status_code == 200
    without_jku = Ehr(service.url, keys["remote"], iss=REMOTE_ISS)  # falls back to the configured jwks_url
    assert without_jku.get(DISCOVERY).status_code == 200
    assert key_server.fetches == fetched  # cached

    # rotation: the client publishes a new key and signs with it; the unknown kid triggers one refetch
    monkeypatch.setattr(auth, "JWKS_MIN_REFETCH_SECONDS", 0)
    key_server.keys = [keys["rotated"]]
    rotated = Ehr(service.url, keys["rotated"], iss=REMOTE_ISS, jku=key_server.jwks_url)
    assert rotated.get(DISCOVERY).status_code == 200
    assert key_server.fetches == fetched + 1
    # the old key is gone from the published set: refused after the refetch
    _refused(remote.get(DISCOVERY))

    # unknown kids are rate-limited: a burst of them costs at most one fetch per interval
    monkeypatch.setattr(auth, "JWKS_MIN_REFETCH_SECONDS", 3600)
    n = key_server.fetches
    for _ in range(5):
        _refused(remote.get(DISCOVERY, token=remote.token(DISCOVERY, header={"kid": f"k-{uuid.uuid4()}"})))
    assert key_server.fetches == n


def test_every_endpoint_requires_the_jwt(service: Service) -> None:
    e = service.ehr
    _refused(e.get(DISCOVERY, token=None))
    _refused(e.post(f"/cds-services/{ENCOUNTER_START_ID}", {}, token=None))
    _refused(e.post(f"/cds-services/{ENCOUNTER_START_ID}/feedback", {}, token=None))
    _refused(e.post("/cds-services/unknown", {}, token=None))  # no probing service ids without a JWT


def test_no_client_list_trusts_nobody(tmp_path: Any, keys: dict[str, Any]) -> None:
    port = free_port()
    settings = make_settings(port, tmp_path, keys, None, cds_clients=[])
    from service.app import create_app

    with serve(create_app(settings), port) as url:
        e = Ehr(url, keys["es"])
        _refused(e.get(DISCOVERY, token=None))
        _refused(e.get(DISCOVERY))  # a well-signed token from an issuer nobody configured
        _refused(e.post(f"/cds-services/{ENCOUNTER_START_ID}", {}))


def test_replayed_jti_on_a_hook_call(service: Service) -> None:
    from tests.cds_hooks import patients
    from tests.cds_hooks.conftest import hook_body

    path = f"/cds-services/{ENCOUNTER_START_ID}"
    p = patients.non_oncology(f"replay-{uuid.uuid4().hex[:6]}")
    tok = service.ehr.token(path)
    assert service.ehr.post(path, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid), token=tok).status_code == 200
    _refused(service.ehr.post(path, hook_body(ENCOUNTER_START_ID, p.prefetch(), p.pid), token=tok))
    # a replay is refused even when the body is invalid (401 comes before 400/404)
    _refused(service.ehr.post(path, {"junk": True}, token=tok))
