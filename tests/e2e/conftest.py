"""Browser end-to-end fixtures: one real sandbox per module (state is ours), the system Chromium through
Playwright with a fresh profile per test, and a screenshot helper writing to tests/artifacts/e2e/."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import running_sandbox
from tests.support.browser import chromium_page, need_chromium, screenshot_taker


@dataclass
class Sandbox:
    url: str
    app: Any

    @property
    def fhir_base(self) -> str:
        return f"{self.url}/sandbox/fhir"

    def fhir(self) -> httpx.Client:
        """A FHIR client with a real access token from the sandbox's own authorization server."""
        from service.sandbox.auth_server import mint_access_token

        token = mint_access_token("user/*.read", subject="Practitioner/sandbox-clinician", lifetime=600,
                                  app=self.app)
        return httpx.Client(base_url=self.fhir_base, timeout=30,
                            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})

    def stored(self, ns: str) -> list[dict[str, Any]]:
        """Rows of one namespace of the service's store, read from its SQLite file."""
        from service.state import open_state_store


        async def rows() -> list[dict[str, Any]]:
            store = open_state_store(self.app.state.settings)
            try:
                return [v for _, v in await store.scan(ns)]
            finally:
                await store.close()

        # Playwright's sync API keeps an event loop running in this thread: read from another one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, rows()).result(timeout=30)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    need_chromium()  # module fixtures are set up first: do not start a sandbox for nothing
    with running_sandbox(tmp_path_factory.mktemp("e2e-sandbox")) as (url, app):
        yield Sandbox(url, app)


def ehr_launch_page(page: Any, sandbox: Sandbox, patient: str, **context: Any) -> None:
    """An EHR launch straight from the sandbox authorization server (no card needed), ready in the app;
    `context` adds launch context (e.g. needPatientBanner=False)."""
    from playwright.sync_api import expect

    r = httpx.post(f"{sandbox.url}/sandbox/auth/launch", json={"patient": patient,
                                                               "practitioner": "sandbox-clinician", **context},
                   timeout=30)
    assert r.status_code == 201, r.text
    page.goto(f"{sandbox.url}/smart/launch?" + urlencode({"iss": r.json()["iss"], "launch": r.json()["launch"]}))
    page.wait_for_url(re.compile(r"/smart/app\?s="))
    expect(page.locator("#status")).to_have_text("Ready.")


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    """A page in headless system Chromium with a fresh user-data dir (never `playwright install`)."""
    with chromium_page(tmp_path / "profile") as p:
        yield p


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """shot(page, "step-name") saves a full-page PNG as tests/artifacts/e2e/<test>/<NN>-<step>.png."""
    return screenshot_taker("e2e", request.node.name)
