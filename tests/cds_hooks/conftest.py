"""Fixtures for the CDS Hooks contract tests: real keys, real JWTs, the real service over loopback HTTP.

- Two trusted CDS clients: `STATIC_ISS` with its JWKS inline in the settings (ES384 + RS384 keys), and
  `REMOTE_ISS` whose JWKS is served by a small live key server (jku + rotation tests).
- `service` is one running onco-exercise (serve mode) per test module with its own temp data dir.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from service.app import create_app
from service.config import Settings
from tests.support.live import free_port, serve

STATIC_ISS = "https://ehr.example.org"
REMOTE_ISS = "https://remote-ehr.example.org"


@dataclass
class KeyServer:
    """A live JWKS endpoint whose keys can be rotated; counts fetches."""

    url: str = ""
    keys: list[Any] = field(default_factory=list)
    fetches: int = 0

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks.json"


@pytest.fixture(scope="session")
def keys() -> dict[str, Any]:
    return {
        "es": ECKey.generate_key("P-384", parameters={"kid": "es-1", "alg": "ES384"}),
        "rs": RSAKey.generate_key(2048, parameters={"kid": "rs-1", "alg": "RS384"}),
        "remote": ECKey.generate_key("P-384", parameters={"kid": "remote-1", "alg": "ES384"}),
        "rotated": ECKey.generate_key("P-384", parameters={"kid": "remote-2", "alg": "ES384"}),
        "stranger": ECKey.generate_key("P-384", parameters={"kid": "es-1", "alg": "ES384"}),  # same kid, other key
        "es256": ECKey.generate_key("P-256", parameters={"kid": "es256-1", "alg": "ES256"}),
    }


@pytest.fixture(scope="module")
def key_server(keys: dict[str, Any]) -> Iterator[KeyServer]:
    ks = KeyServer(keys=[keys["remote"]])
    app = FastAPI()

    @app.get("/jwks.json")
    async def jwks() -> dict[str, Any]:
        ks.fetches += 1
        return {"keys": [k.as_dict(private=False) for k in ks.keys]}

    port = free_port()
    with serve(app, port) as url:
        ks.url = url
        yield ks


def make_settings(port: int, data_dir: Path, keys: dict[str, Any], key_server: KeyServer | None,
                  **overrides: Any) -> Settings:
    clients: list[dict[str, Any]] = [{"iss": STATIC_ISS, "jwks": {"keys": [
        keys["es"].as_dict(private=False), keys["rs"].as_dict(private=False),
        keys["es256"].as_dict(private=False)]}}]
    if key_server is not None:
        clients.append({"iss": REMOTE_ISS, "jwks_url": key_server.jwks_url})
    values: dict[str, Any] = dict(mode="serve", public_url=f"http://127.0.0.1:{port}", data_dir=data_dir,
                                  cds_clients=clients, log_json=False, hook_budget_seconds=2.0)
    values.update(overrides)
    return Settings(**values)


class Ehr:
    """A CDS client: signs a fresh JWT per call with aud = the exact URL it calls."""

    def __init__(self, base: str, key: Any, iss: str = STATIC_ISS, alg: str = "ES384",
                 jku: str | None = None) -> None:
        self.base = base
        self.key, self.iss, self.alg, self.jku = key, iss, alg, jku
        self.http = httpx.Client(timeout=30)

    def token(self, path: str, *, header: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        c: dict[str, Any] = {"iss": self.iss, "aud": f"{self.base}{path}", "exp": now + 300, "iat": now,
                             "jti": str(uuid.uuid4()), "tenant": "t1"}
        c.update(claims)
        c = {k: v for k, v in c.items() if v is not None}
        h: dict[str, Any] = {"alg": self.alg, "kid": self.key.kid, "typ": "JWT"}
        if self.jku:
            h["jku"] = self.jku
        h.update(header or {})
        h = {k: v for k, v in h.items() if v is not None}
        return jwt.encode(h, c, self.key, algorithms=[h["alg"]])

    def get(self, path: str, token: str | None = "auto", **kw: Any) -> httpx.Response:
        return self.http.get(f"{self.base}{path}", headers=self._headers(path, token), **kw)

    def post(self, path: str, body: Any, token: str | None = "auto", raw: bytes | None = None,
             headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        headers = {**self._headers(path, token), **(headers or {})}
        if raw is not None:
            return self.http.post(f"{self.base}{path}", content=raw,
                                  headers={**headers, "Content-Type": "application/json"}, **kw)
        return self.http.post(f"{self.base}{path}", json=body, headers=headers, **kw)

    def _headers(self, path: str, token: str | None) -> dict[str, str]:
        if token is None:
            return {}
        return {"Authorization": f"Bearer {self.token(path) if token == 'auto' else token}"}


@dataclass
class Service:
    url: str
    app: Any
    ehr: Ehr


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any],
            key_server: KeyServer) -> Iterator[Service]:
    port = free_port()
    app = create_app(make_settings(port, tmp_path_factory.mktemp("cds"), keys, key_server))
    with serve(app, port) as url:
        yield Service(url, app, Ehr(url, keys["es"]))


class Clock:
    """Moves the process's wall clock (`time.time`) forward: store expiry, JWT times and card claims alike."""

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c, real = Clock(), time.time
    monkeypatch.setattr(time, "time", lambda: real() + c.offset)
    return c


def hook_body(service_id: str, prefetch: dict[str, Any] | None, patient_id: str, *,
              hook: str | None = None, **extra: Any) -> dict[str, Any]:
    hook = hook or ("encounter-start" if service_id.endswith("encounter-start") else "patient-view")
    context: dict[str, Any] = {"userId": "Practitioner/onc-1", "patientId": patient_id}
    if hook == "encounter-start" or service_id.endswith("encounter-start"):
        context["encounterId"] = "enc-1"
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch is not None:
        body["prefetch"] = prefetch
    body.update(extra)
    return body


def find_empty(value: Any, path: str = "$", *, allow_empty_cards: bool = True) -> list[str]:
    """Paths of every null, empty string, empty array or empty object (CDS Hooks forbids them)."""
    bad: list[str] = []
    if value is None or value == "" or value == [] or value == {}:
        if not (allow_empty_cards and path == "$.cards" and value == []):
            bad.append(path)
        return bad
    if isinstance(value, dict):
        for k, v in value.items():
            bad += find_empty(v, f"{path}.{k}", allow_empty_cards=allow_empty_cards)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad += find_empty(v, f"{path}[{i}]", allow_empty_cards=allow_empty_cards)
    return bad


def assert_clean(resp: httpx.Response) -> Any:
    """Every JSON response of the service: parseable and free of empty values."""
    if not resp.content:
        return None
    data = resp.json()
    assert find_empty(data) == [], f"empty values in response: {find_empty(data)}"
    return data
