"""The app's own signing keys (private_key_jwt client assertions) and their public JWKS.

Keys are generated once (one EC P-384 key for ES384 and one RSA 2048 key for RS384) and persisted under
`{data_dir}/smart-client-jwks.json` so that an EHR that registered our JWKS URL keeps trusting us across
restarts; an operator may supply their own private JWKS with ONCO_EXERCISE_SMART_PRIVATE_JWKS_FILE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

from service.config import Settings
from service.private_files import write_private

KEY_FILE_NAME = "smart-client-jwks.json"
SUPPORTED_ALGS = ("ES384", "RS384")


class KeyConfigError(RuntimeError):
    """The configured private JWKS cannot be used (unreadable, no private key for the algorithm...)."""


def _alg_of(key: Any) -> str | None:
    alg = key.get("alg") if hasattr(key, "get") else None
    if alg in SUPPORTED_ALGS:
        return alg
    if isinstance(key, ECKey) and key.curve_name == "P-384":
        return "ES384"
    if isinstance(key, RSAKey):
        return "RS384"
    return None


@dataclass
class AppKeys:
    """The private key set; `signing_key(alg)` picks the key that signs assertions for that algorithm."""

    keyset: KeySet

    def signing_key(self, alg: str) -> Any:
        for key in self.keyset.keys:
            if key.is_private and _alg_of(key) == alg and key.kid:
                return key
        raise KeyConfigError(f"no private key with a kid for {alg} in the app's JWKS")

    def public_jwks(self) -> dict[str, Any]:
        """Public members only (never `d`, `p`, `q`...): served at /.well-known/jwks.json."""
        keys = []
        for key in self.keyset.keys:
            public = key.as_dict(private=False)
            public.setdefault("use", "sig")
            alg = _alg_of(key)
            if alg:
                public.setdefault("alg", alg)
            keys.append(public)
        return {"keys": keys}


def _generate() -> KeySet:
    ec = ECKey.generate_key("P-384", parameters={"use": "sig", "alg": "ES384"}, private=True)
    ec.ensure_kid()
    rsa = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS384"}, private=True)
    rsa.ensure_kid()
    return KeySet([ec, rsa])


def _read(path: Path) -> KeySet:
    try:
        data = json.loads(path.read_text())
        keyset = KeySet.import_key_set(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyConfigError(f"cannot read the SMART private JWKS at {path}: {exc}") from None
    for key in keyset.keys:
        key.ensure_kid()
    return keyset


def load_or_create_keys(settings: Settings) -> AppKeys:
    """Load the configured JWKS file, else the one in data_dir, else generate and persist (mode 0600)."""
    if settings.smart_private_jwks_file:
        keys = AppKeys(_read(Path(settings.smart_private_jwks_file)))
        if settings.smart_client_auth == "private_key_jwt":
            keys.signing_key(settings.smart_alg)  # fail at start, not at the first launch
        return keys
    path = Path(settings.data_dir) / KEY_FILE_NAME
    if path.exists():
        return AppKeys(_read(path))
    keyset = _generate()
    # atomic and refuses to overwrite: a concurrent first start keeps one key set
    if not write_private(path, json.dumps(keyset.as_dict(private=True)).encode(), exclusive=True):
        return AppKeys(_read(path))
    return AppKeys(keyset)
