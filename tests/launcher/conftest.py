"""The reference SMART launcher (smart-on-fhir/smart-launcher-v2, built by tests/launcher/build.py from the
unmodified copy in ../shared/vendor) in front of a stock sekmet-fhir (`sekmet serve`, no auth of its own)
loaded with the sandbox cohort, and our app in `serve` mode: three processes written by three parties.

Sites: the launcher (EHR and authorization server) is addressed as http://localhost:PORT and our app as
http://127.0.0.1:PORT, so every launch crosses sites as it does in a hospital; the browser blocks unpartitioned
third-party cookies. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlencode

import httpx
import pytest

from service.app import create_app
from service.config import Settings
from tests.launcher.build import LauncherUnavailable, ensure_built
from tests.support.browser import BLOCK_THIRD_PARTY_COOKIES, chromium_page, need_chromium, screenshot_taker
from tests.support.live import free_port, serve

START_TIMEOUT = 60.0
PRACTITIONER = "sandbox-clinician"  # a Practitioner of the cohort: the launcher's provider, our fhirUser

# The launcher's launch-parameter encoding (src/isomorphic/codec.ts): a base64url JSON array, by position.
_LAUNCH_TYPES = ["provider-ehr", "patient-portal", "provider-standalone", "patient-standalone"]
_CLIENT_TYPES = ["public", "confidential-symmetric", "confidential-asymmetric"]
_PKCE = ["none", "auto", "always"]


def encode_launch(*, launch_type: str = "provider-ehr", patient: str = "", provider: str = PRACTITIONER,
                  encounter: str = "NONE", skip_login: bool = True, skip_auth: bool = False, sim_ehr: bool = False,
                  scope: str = "", redirect_uris: str = "", client_id: str = "onco-exercise", auth_error: str = "",
                  jwks_url: str = "", jwks: str = "", client_type: str = "public", pkce: str = "always") -> str:
    """Launch options as the launcher's UI encodes them. `client_id`, `redirect_uris` and `scope` make the
    launcher check what the app sends (a registration); `pkce="always"` makes it demand S256."""
    values = [_LAUNCH_TYPES.index(launch_type), patient, provider, encounter, int(skip_login), int(skip_auth),
              int(sim_ehr and "standalone" not in launch_type), scope, redirect_uris, client_id, "", auth_error,
              jwks_url, jwks, _CLIENT_TYPES.index(client_type), _PKCE.index(pkce), ""]
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Launcher:
    url: str  # http://localhost:PORT
    token_seconds: int

    @property
    def iss(self) -> str:
        """The FHIR base of EHR launches (the launcher's proxy of sekmet)."""
        return f"{self.url}/v/r4/fhir"

    def standalone_iss(self, launch_type: str = "provider-standalone", **options: Any) -> str:
        """Standalone launches carry their options in the iss: each set of options is its own FHIR base."""
        return f"{self.url}/v/r4/sim/{encode_launch(launch_type=launch_type, **options)}/fhir"

    def launch_url(self, app_url: str, **options: Any) -> str:
        """What the EHR opens for an EHR launch (the launcher UI's "Launch" link)."""
        return f"{app_url}/smart/launch?" + urlencode({"iss": self.iss, "launch": encode_launch(**options)})

    def ehr_frame_url(self, app_url: str, **options: Any) -> str:
        """The launcher's simulated EHR page showing the app in an iframe (`sim_ehr`: no patient banner)."""
        return f"{self.url}/ehr?app={quote(self.launch_url(app_url, sim_ehr=True, **options), safe='')}"


@contextmanager
def _process(cmd: list[str], *, cwd: Path, env: dict[str, str], ready_url: str, log: Path) -> Iterator[None]:
    """Run `cmd` until the block ends; ready when `ready_url` answers 200 (START_TIMEOUT at most)."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited ({proc.returncode}) before it was ready; log: {log}")
                try:
                    if httpx.get(ready_url, timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[0]} was not ready within {START_TIMEOUT:.0f} s; log: {log}")
                time.sleep(0.2)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def launcher_dir() -> Path:
    need_chromium()
    try:
        return ensure_built(verbose=True)
    except LauncherUnavailable as exc:
        pytest.fail(f"the reference SMART launcher cannot be built: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A stock `sekmet serve` (no auth, no patches), loaded with the sandbox's synthetic cohort."""
    from service.sandbox.cohort import load_cohort

    folder = tmp_path_factory.mktemp("sekmet")
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    settings = folder / "settings.yaml"
    settings.write_text(json.dumps({  # JSON is YAML
        "base_url": base, "host": "127.0.0.1", "port": port, "data_dir": str(folder / "data"),
        "db_path": str(folder / "sekmet.db"), "log_inbound": False, "simulator": {"enabled": False},
        "server_auth": {"types": ["none"]}}))
    sekmet_cmd = str(Path(sys.executable).parent / "sekmet")
    with _process([sekmet_cmd, "serve", "-c", str(settings)], cwd=folder, env=dict(os.environ),
                  ready_url=f"{base}/metadata", log=folder / "sekmet.log"):
        async def load() -> Any:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                return await load_cohort(client, reset=True)

        result = asyncio.run(load())
        assert not result.failed, result.failed
        yield base


@contextmanager
def running_launcher(launcher_dir: Path, sekmet: str, folder: Path, token_minutes: float) -> Iterator[Launcher]:
    port = free_port()
    env = {**os.environ, "NODE_ENV": "production", "PORT": str(port), "HOST": "127.0.0.1",
           "FHIR_SERVER_R4": sekmet, "FHIR_SERVER_R3": "", "FHIR_SERVER_R2": "",
           "ACCESS_TOKEN_LIFETIME": str(token_minutes), "SECRET": secrets.token_urlsafe(32),
           "PICKER_ORIGIN": f"http://localhost:{port}"}
    ts_node = str(launcher_dir / "node_modules" / ".bin" / "ts-node")
    url = f"http://localhost:{port}"
    with _process(["node", ts_node, "--transpile-only", "backend/index.ts"], cwd=launcher_dir, env=env,
                  ready_url=f"{url}/v/r4/fhir/.well-known/smart-configuration", log=folder / "launcher.log"):
        yield Launcher(url, int(token_minutes * 60))


@pytest.fixture(scope="session")
def launcher(launcher_dir: Path, sekmet: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """The launcher issuing 60-second access tokens (short, as some EHRs do: Oracle Health's live 570 s)."""
    with running_launcher(launcher_dir, sekmet, tmp_path_factory.mktemp("launcher"), 1) as it:
        yield it


@pytest.fixture(scope="session")
def short_launcher(launcher_dir: Path, sekmet: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """A second launcher issuing 15-second access tokens, to see them expire within a test."""
    with running_launcher(launcher_dir, sekmet, tmp_path_factory.mktemp("launcher-short"), 0.25) as it:
        yield it


@dataclass
class App:
    url: str
    app: Any

    @property
    def settings(self) -> Settings:
        return self.app.state.settings

    def stored(self, ns: str, key: str) -> Any:
        """One record of the app's store (read from its SQLite file, off Playwright's event loop)."""
        from service.state import open_state_store


        async def read() -> Any:
            store = open_state_store(self.settings)
            try:
                return await store.get(ns, key)
            finally:
                await store.close()

        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, read()).result(timeout=30)

    def change(self, ns: str, key: str, **changes: Any) -> None:
        from service.state import open_state_store


        async def write() -> None:
            store = open_state_store(self.settings)
            try:
                rec = await store.get(ns, key)
                await store.put(ns, key, {**rec, **changes}, ttl=600)
            finally:
                await store.close()

        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, write()).result(timeout=30)


@contextmanager
def running_app(folder: Path, launcher: Launcher, **overrides: Any) -> Iterator[App]:
    """Our service as hospitals run it (`serve` mode, Secure cookies), allowing the launcher's FHIR base."""
    port = free_port()
    values: dict[str, Any] = dict(mode="serve", public_url=f"http://127.0.0.1:{port}", data_dir=folder,
                                  fhir_servers=[launcher.iss], allow_no_cds_clients=True, cookie_secure=True,
                                  log_json=False)
    values.update(overrides)
    app = create_app(Settings(**values))
    with serve(app, port) as url:
        yield App(url, app)


@pytest.fixture(scope="module")
def app(launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """A public client (PKCE only), the default registration."""
    with running_app(tmp_path_factory.mktemp("app-public"), launcher) as it:
        yield it


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with chromium_page(tmp_path / "profile", extra_args=(BLOCK_THIRD_PARTY_COOKIES,), height=1000) as p:
        yield p


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Any:
    return screenshot_taker("launcher", request.node.name)
