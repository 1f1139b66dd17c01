"""The sandbox's signing keys, generated on first start and kept in `{data_dir}/sandbox/keys.json`.

Two keys with two jobs: the authorization server's RS256 key signs access tokens and OpenID id_tokens (public
half at the auth server's `jwks_uri`); the sandbox CDS client's ES384 key signs the JWTs the EHR screen sends to
CDS services (public half at `/sandbox/.well-known/jwks.json`). Persisting them keeps tokens and registered
JWKS valid across restarts; deleting the file rotates both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwk

from service.private_files import write_private

AUTH_ALG = "RS256"
CDS_ALG = "ES384"


@dataclass(frozen=True)
class SandboxKeys:
    auth: jwk.RSAKey  # RS256: access tokens and id_tokens
    cds: jwk.ECKey  # ES384: the sandbox CDS client's JWTs

    def auth_jwks(self) -> dict[str, Any]:
        return {"keys": [self.auth.as_dict(private=False)]}

    def cds_jwks(self) -> dict[str, Any]:
        return {"keys": [self.cds.as_dict(private=False)]}


def _new_keys() -> dict[str, Any]:
    auth = jwk.RSAKey.generate_key(2048, parameters={"alg": AUTH_ALG, "use": "sig"}, auto_kid=True)
    cds = jwk.ECKey.generate_key("P-384", parameters={"alg": CDS_ALG, "use": "sig"}, auto_kid=True)
    return {"auth": auth.as_dict(private=True), "cds": cds.as_dict(private=True)}


def load_keys(sandbox_dir: Path) -> SandboxKeys:
    """Read the key file, creating it (mode 0600, written atomically) when absent or unreadable."""
    path = Path(sandbox_dir) / "keys.json"
    data: dict[str, Any] | None = None
    if path.exists():
        try:
            data = json.loads(path.read_text())
            keys = SandboxKeys(auth=jwk.RSAKey.import_key(data["auth"]), cds=jwk.ECKey.import_key(data["cds"]))
            if keys.auth.is_private and keys.cds.is_private:
                return keys
        except (ValueError, KeyError, TypeError):
            pass  # damaged file: replace it (sandbox keys carry no value beyond this machine)
    data = _new_keys()
    write_private(path, json.dumps(data).encode())
    return SandboxKeys(auth=jwk.RSAKey.import_key(data["auth"]), cds=jwk.ECKey.import_key(data["cds"]))


def cds_client_key(app: Any = None) -> jwk.ECKey:
    """The sandbox CDS client's private ES384 signing key (kid set) of `app`'s sandbox (default: the running one)."""
    from service.sandbox.setup import runtime_for

    return runtime_for(app).keys.cds
