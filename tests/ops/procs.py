"""Test helpers: a real FHIR server app (sekmet's router) that also publishes a SMART configuration, and
`onco-exercise serve` run as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from tests.support.live import free_port

VENV_BIN = Path(sys.executable).parent
ONCO = str(VENV_BIN / "onco-exercise")


CDS_ISS = "https://ehr.test"


def cds_key() -> Any:
    """A fresh, real EC P-384 key pair, as a CDS client holds."""
    from joserfc.jwk import ECKey

    return ECKey.generate_key("P-384", parameters={"kid": f"k-{uuid.uuid4().hex[:8]}"})


def public_jwks(key: Any = None) -> dict[str, object]:
    """The public JWKS a CDS client publishes."""
    return {"keys": [(key or cds_key()).as_dict(private=False)]}


def cds_clients_json(key: Any = None, iss: str = CDS_ISS) -> str:
    """ONCO_EXERCISE_CDS_CLIENTS with one client and an inline public JWKS."""
    return json.dumps([{"iss": iss, "jwks": public_jwks(key)}])


def cds_client_jwt(key: Any, audience: str, iss: str = CDS_ISS, jti: str | None = None) -> str:
    """A CDS client's bearer JWT (CDS Hooks 2.0: iss, aud, exp, iat, jti; ES384, kid)."""
    from joserfc import jwt

    now = int(time.time())
    claims = {"iss": iss, "sub": iss, "aud": audience, "iat": now, "exp": now + 300,
              "jti": jti or uuid.uuid4().hex}
    return jwt.encode({"alg": "ES384", "typ": "JWT", "kid": key.kid}, claims, key, algorithms=["ES384"])


def fhir_app(base_url: str, db_path: str) -> FastAPI:
    """sekmet's FHIR router at /fhir plus a SMART configuration (sekmet has no user-facing authorize)."""
    from sekmet.config import Settings as SekmetSettings
    from sekmet.context import AppContext
    from sekmet.fhir.router import build_router

    settings = SekmetSettings(base_url=base_url, db_path=db_path, log_inbound=False,
                              simulator={"enabled": False})
    ctx = AppContext(settings)
    app = FastAPI()

    @app.get("/fhir/.well-known/smart-configuration")
    async def smart_configuration() -> dict[str, object]:
        root = base_url.rsplit("/fhir", 1)[0]
        return {"authorization_endpoint": f"{root}/auth/authorize", "token_endpoint": f"{root}/auth/token",
                "capabilities": ["launch-ehr", "client-public", "permission-v2"],
                "code_challenge_methods_supported": ["S256"]}

    keys = public_jwks()

    @app.get("/jwks.json")
    async def jwks() -> dict[str, object]:
        return keys

    app.include_router(build_router(lambda: ctx))
    return app


def dead_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/fhir"


_SHARED_STATE_KEY: dict[str, str] = {}


def shared_state_keys() -> str:
    """ONCO_EXERCISE_STATE_KEYS shared by every replica of this test run (replicas must share the key ring)."""
    if not _SHARED_STATE_KEY:
        from service.sealing import new_key

        _SHARED_STATE_KEY.update(new_key())
    return f"{_SHARED_STATE_KEY['kid']}:{_SHARED_STATE_KEY['k']}"


def onco_env(tmp: Path, **values: str) -> dict[str, str]:
    """A clean environment for a subprocess: no inherited ONCO_EXERCISE_* variables, data in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCO_EXERCISE_")}
    env.update({"ONCO_EXERCISE_DATA_DIR": str(tmp), "ONCO_EXERCISE_COOKIE_SECURE": "false"})
    env.update({f"ONCO_EXERCISE_{k.upper()}": v for k, v in values.items()})
    return env


class ServeProcess:
    """`onco-exercise serve --port P` as a subprocess; output goes to a file to be read afterwards."""

    def __init__(self, env: dict[str, str], log_path: Path, argv: list[str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        argv = argv or ["onco-exercise", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if argv[0] == "onco-exercise":
            argv = [ONCO, *argv[1:]]  # the venv's console script, as the image's PATH would find it
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not start: {self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")
