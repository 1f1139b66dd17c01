"""The app's keys and its private_key_jwt client assertions (real keys, real signatures)."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from service.config import Settings
from service.smart.keys import KEY_FILE_NAME, KeyConfigError, load_or_create_keys
from service.smart.tokens import ASSERTION_TYPE, client_assertion


def _settings(tmp_path, **kw) -> Settings:
    return Settings(data_dir=tmp_path, log_json=False, **kw)


def test_keys_generated_once_and_persisted_private(tmp_path):
    keys = load_or_create_keys(_settings(tmp_path))
    path = tmp_path / KEY_FILE_NAME
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_or_create_keys(_settings(tmp_path))
    assert [k["kid"] for k in again.public_jwks()["keys"]] == [k["kid"] for k in keys.public_jwks()["keys"]]


def test_public_jwks_has_no_private_members(tmp_path):
    jwks = load_or_create_keys(_settings(tmp_path)).public_jwks()
    algs = {k["alg"] for k in jwks["keys"]}
    assert algs == {"ES384", "RS384"}
    for k in jwks["keys"]:
        assert k["kid"] and k["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(k)


def test_configured_jwks_file_is_used(tmp_path):
    first = load_or_create_keys(_settings(tmp_path / "a"))
    private = tmp_path / "mine.json"
    private.write_text(json.dumps(first.keyset.as_dict(private=True)))
    keys = load_or_create_keys(_settings(tmp_path / "b", smart_private_jwks_file=private,
                                         smart_client_auth="private_key_jwt"))
    assert keys.public_jwks() == first.public_jwks()
    assert not (tmp_path / "b" / KEY_FILE_NAME).exists()


def test_unreadable_jwks_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KeyConfigError, match="cannot read"):
        load_or_create_keys(_settings(tmp_path, smart_private_jwks_file=bad))


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_assertion_claims_are_fresh_and_short_lived(tmp_path, alg):
    keys = load_or_create_keys(_settings(tmp_path))
    public = KeySet.import_key_set(keys.public_jwks())
    endpoint = "https://ehr.example/oauth/token"
    tokens = [client_assertion(keys, alg, "onco-exercise", endpoint) for _ in range(3)]
    jtis = set()
    for t in tokens:
        decoded = jwt.decode(t, public, algorithms=[alg])
        h, c = decoded.header, decoded.claims
        assert h["alg"] == alg and h["typ"] == "JWT" and h["kid"] == keys.signing_key(alg).kid
        assert c["iss"] == c["sub"] == "onco-exercise"
        assert c["aud"] == endpoint
        assert 0 < c["exp"] - c["iat"] <= 300
        assert c["exp"] <= time.time() + 300
        jtis.add(c["jti"])
    assert len(jtis) == 3
    assert ASSERTION_TYPE == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
