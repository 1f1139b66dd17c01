"""Encryption at rest for the state store: AES-256-GCM (an AEAD) under a key ring.

Why: the store holds bearer tokens (SMART access and refresh tokens) and patient data (PHI); a copied SQLite
file, a Redis dump or a backup must not give them away. Every value is sealed with the ring's first key and a
random 96-bit nonce; the namespace and key are the associated data, so a sealed value moved to another entry
does not open. Any key of the ring opens what it sealed, which is how rotation works (docs/operations.md):
put a new key first, re-seal (`onco-exercise state-key reseal`), then drop the old key.

Keys come from ONCO_EXERCISE_STATE_KEYS (`kid:base64url-key,...`, e.g. from a secret manager) or the JSON file
ONCO_EXERCISE_STATE_KEY_FILE (`{"keys": [{"kid": ..., "k": ...}]}`); with neither, a file is generated in the
data folder (0600) on first start. Replicas sharing a Redis store must share the keys.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.private_files import write_private

KEY_FILE_NAME = "state-keys.json"
SEALED = "$sealed"
_VERSION = "v1"
_NONCE = 12


class KeyRingError(ValueError):
    """The configured state keys cannot be used (unreadable file, bad key)."""


class Unsealable(ValueError):
    """A sealed value that no key of the ring opens (key dropped too early, or tampered with)."""


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key() -> dict[str, str]:
    """A fresh 256-bit key with a time-ordered id."""
    return {"kid": time.strftime("k%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(2),
            "k": _b64e(AESGCM.generate_key(bit_length=256))}


@dataclass
class KeyRing:
    """Ordered keys: the first seals, every one opens."""

    keys: list[tuple[str, AESGCM]]

    @classmethod
    def from_entries(cls, entries: list[dict[str, Any]]) -> "KeyRing":
        ring: list[tuple[str, AESGCM]] = []
        for i, e in enumerate(entries):
            kid, k = (e.get("kid"), e.get("k")) if isinstance(e, dict) else (None, None)
            if not isinstance(kid, str) or not kid or "." in kid or not isinstance(k, str):
                raise KeyRingError(f"state key #{i + 1}: needs a 'kid' (no dots) and a base64url 'k'")
            try:
                raw = _b64d(k)
            except ValueError:
                raise KeyRingError(f"state key {kid!r} is not base64url") from None
            if len(raw) != 32:
                raise KeyRingError(f"state key {kid!r} must be 256 bits (32 bytes), got {len(raw)} bytes")
            ring.append((kid, AESGCM(raw)))
        if not ring:
            raise KeyRingError("the state key ring is empty")
        if len({kid for kid, _ in ring}) != len(ring):
            raise KeyRingError("two state keys share a kid")
        return cls(ring)

    @property
    def primary(self) -> str:
        return self.keys[0][0]

    def seal(self, ns: str, key: str, value: dict[str, Any]) -> dict[str, str]:
        kid, aead = self.keys[0]
        nonce = os.urandom(_NONCE)
        blob = aead.encrypt(nonce, orjson.dumps(value), _aad(ns, key))
        return {SEALED: f"{_VERSION}.{kid}.{_b64e(nonce + blob)}"}

    def open(self, ns: str, key: str, stored: dict[str, Any]) -> dict[str, Any]:
        token = stored.get(SEALED)
        if not isinstance(token, str):
            raise Unsealable("not a sealed value")
        version, _, rest = token.partition(".")
        kid, _, body = rest.partition(".")
        aead = next((a for k, a in self.keys if k == kid), None)
        if version != _VERSION or aead is None:
            raise Unsealable(f"no state key {kid!r} in the ring")
        try:
            raw = _b64d(body)
            value = orjson.loads(aead.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(ns, key)))
        except (InvalidTag, ValueError) as exc:
            raise Unsealable(f"sealed value does not open ({type(exc).__name__})") from None
        if not isinstance(value, dict):
            raise Unsealable("sealed value is not an object")
        return value

    def sealed_with(self, stored: dict[str, Any]) -> str | None:
        token = stored.get(SEALED)
        return token.split(".")[1] if isinstance(token, str) and token.count(".") >= 2 else None


def _aad(ns: str, key: str) -> bytes:
    return f"onco-exercise-state\x00{ns}\x00{key}".encode()


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get(SEALED), str) and len(value) == 1


def read_key_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyRingError(f"state key file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise KeyRingError(f"cannot read state key file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyRingError(f"state key file {path} must be a JSON object {{\"keys\": [...]}}")
    return data["keys"]


def write_key_file(path: Path, entries: list[dict[str, Any]]) -> None:
    write_private(path, json.dumps({"keys": entries}, indent=2).encode())


def parse_env_keys(text: str) -> list[dict[str, str]]:
    """`kid:base64url,kid2:base64url` (the value of ONCO_EXERCISE_STATE_KEYS)."""
    out = []
    for item in (p.strip() for p in text.split(",")):
        if item:
            kid, sep, k = item.partition(":")
            if not sep:
                raise KeyRingError("ONCO_EXERCISE_STATE_KEYS entries are kid:base64url-key")
            out.append({"kid": kid.strip(), "k": k.strip()})
    return out


def key_file_path(settings: Any) -> Path:
    return Path(settings.state_key_file) if settings.state_key_file else Path(settings.data_dir) / KEY_FILE_NAME


def load_key_ring(settings: Any, *, create: bool = True) -> KeyRing:
    """The ring from the environment, the configured file, or the data folder's file (generated if absent)."""
    if settings.state_keys:
        return KeyRing.from_entries(parse_env_keys(settings.state_keys))
    path = key_file_path(settings)
    if settings.state_key_file or path.exists() or not create:
        return KeyRing.from_entries(read_key_file(path))
    if not write_private(path, json.dumps({"keys": [new_key()]}, indent=2).encode(), exclusive=True):
        pass  # another process created it first: use theirs
    return KeyRing.from_entries(read_key_file(path))
