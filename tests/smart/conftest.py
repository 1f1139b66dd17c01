"""Fixtures for the SMART app tests: a real sandbox (FHIR + SMART auth server + our app) on a loopback port,
and helpers that drive the browser part of a launch with httpx (redirects, the sandbox's sign-in form)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from service.app import create_app
from service.state import StateStore, open_state_store
from tests.conftest import sandbox_settings
from tests.support.live import free_port, serve


@dataclass
class Sandbox:
    url: str
    app: Any
    data_dir: Path

    @property
    def iss(self) -> str:
        return f"{self.url}/sandbox/fhir"

    def store(self) -> StateStore:
        """A second connection to the app's store (SQLite in WAL mode, sealed with the app's state keys): tests
        read and tamper with server-side state."""
        return open_state_store(self.app.state.settings)

    def browser(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


def _sandbox(tmp: Path, **overrides: Any) -> Iterator[Sandbox]:
    port = free_port()
    app = create_app(sandbox_settings(port, tmp, **overrides))
    with serve(app, port) as url:
        yield Sandbox(url, app, tmp)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Public client (the default registration)."""
    yield from _sandbox(tmp_path_factory.mktemp("smart-public"))


@dataclass
class Launched:
    sid: str
    csrf: str
    page: httpx.Response
    urls: list[str]


def new_launch(client: httpx.Client, **body: Any) -> tuple[str, str]:
    body.setdefault("patient", "onc-01")
    body.setdefault("practitioner", "sandbox-clinician")
    r = client.post("/sandbox/auth/launch", json=body)
    assert r.status_code == 201, r.text
    return r.json()["launch"], r.json()["iss"]


def finish(r: httpx.Response) -> Launched:
    assert r.status_code == 200, r.text[:500]
    assert r.url.path == "/smart/app", r.url
    sid = r.url.params["s"]
    m = re.search(r'name="csrf-token" content="([^"]+)"', r.text)
    assert m, "the app page embeds the CSRF token"
    return Launched(sid, m.group(1), r, [str(h.url) for h in r.history] + [str(r.url)])


def ehr_launch(client: httpx.Client, **body: Any) -> Launched:
    launch, iss = new_launch(client, **body)
    return finish(client.get("/smart/launch", params={"iss": iss, "launch": launch}, follow_redirects=True))


def standalone_launch(client: httpx.Client, iss: str, patient: str = "onc-02") -> Launched:
    r = client.get("/smart/launch", params={"iss": iss}, follow_redirects=True)
    assert r.status_code == 200 and r.url.path == "/sandbox/auth/authorize", r.text[:300]
    txn = re.search(r'name="txn" value="([^"]+)"', r.text).group(1)
    form_history = [str(h.url) for h in r.history] + [str(r.url)]
    r = client.post("/sandbox/auth/authorize/decision", follow_redirects=True, data={
        "txn": txn, "practitioner": "sandbox-clinician", "patient": patient, "action": "approve"})
    done = finish(r)
    done.urls = form_history + done.urls
    return done


def callback_url(client: httpx.Client, sandbox: Sandbox) -> str:
    """Run an EHR launch up to the EHR's redirect back to the app, without following it."""
    launch, iss = new_launch(client)
    r = client.get("/smart/launch", params={"iss": iss, "launch": launch})
    r = client.get(r.headers["location"])
    assert r.status_code in (302, 303) and r.headers["location"].startswith(f"{sandbox.url}/smart/callback")
    return r.headers["location"]


def api(client: httpx.Client, sid: str) -> httpx.Response:
    return client.get("/smart/api/prescription", params={"s": sid})


def fhir_reader(sandbox: Sandbox) -> httpx.Client:
    """A client on the sandbox FHIR server with a read-only user token (to check what the app wrote)."""
    from service.sandbox.auth_server import mint_access_token

    token = mint_access_token("user/*.rs", app=sandbox.app)
    return httpx.Client(base_url=sandbox.iss, headers={"Authorization": f"Bearer {token}"}, timeout=30)


async def stored_tokens(sandbox: Sandbox, sid: str) -> dict:
    """The session's token record, read from the app's store (it is never in a page or a cookie)."""
    from service.smart.sessions import TOKEN_NS

    store = sandbox.store()
    try:
        return await store.get(TOKEN_NS, sid)
    finally:
        await store.close()


async def forget_loaded(sandbox: Sandbox, sid: str, **token_changes: object) -> dict:
    """Drop the cached patient so the next API call reads the EHR again, and alter the stored tokens."""
    from service.smart.sessions import DATA_NS, TOKEN_NS

    sandbox.app.state.smart.cache.pop(sid, None)
    store = sandbox.store()
    try:
        await store.delete(DATA_NS, sid)
        rec = await store.get(TOKEN_NS, sid)
        rec.update(token_changes)
        await store.put(TOKEN_NS, sid, rec, ttl=600)
        return rec
    finally:
        await store.close()
