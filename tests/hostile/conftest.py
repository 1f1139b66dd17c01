"""Fixtures for the hostile-input and fault tests: a real sandbox (service + sekmet FHIR + SMART auth server)
whose public URL is a fault-injecting proxy in front of it, so every call the service makes to "the EHR"
(FHIR reads, transactions, token requests, JWKS) crosses the proxy over real loopback HTTP."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from service.app import create_app
from tests.conftest import sandbox_settings
from tests.hostile.faultproxy import FaultProxy
from tests.support.live import free_port, serve

BUDGET = 1.0  # hook_budget_seconds of the rig
FHIR_TIMEOUT = 3.0  # fhir_timeout_seconds of the rig (sign & send against a hanging EHR)
ES = "onco-exercise-encounter-start"
PV = "onco-exercise-patient-view"
TRACE_WORDS = ("Traceback", 'File "', "KeyError", "TypeError", "ValueError", "AttributeError", "IndexError",
               "RecursionError", "JSONDecodeError", "UnicodeDecodeError", "ValidationError", "pydantic",
               "AssertionError", "ZeroDivisionError", "OverflowError", "Exception(", "NoneType")


@dataclass
class Rig:
    """`direct`: the service's own port; `url`: the proxy (= the public URL, the EHR's origin too)."""

    url: str
    direct: str
    app: Any
    proxy: FaultProxy
    data_dir: Path
    _cds: Any = None

    @property
    def fhir_base(self) -> str:
        return f"{self.url}/sandbox/fhir"

    @property
    def settings(self) -> Any:
        return self.app.state.settings

    def browser(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def mint(self, scope: str = "user/*.rs", patient: str | None = None, lifetime: int = 600,
             client_id: str = "onco-exercise") -> str:
        """A real sandbox access token (RS256 JWT) for the FHIR server."""
        from service.sandbox.auth_server import mint_access_token

        return mint_access_token(scope, patient, "Practitioner/sandbox-clinician", lifetime, app=self.app,
                                 client_id=client_id)

    def cds_jwt(self, path: str) -> str:
        """The sandbox CDS client's JWT for one call (its own signing code: service/sandbox/cds_client.py)."""
        from service.sandbox.cds_client import CdsClient
        from service.sandbox.keys import cds_client_key

        if self._cds is None:  # only sign_jwt is used: no HTTP client is needed
            self._cds = CdsClient(public_url=self.url, fhir_base=self.fhir_base,
                                  signing_key=cds_client_key(self.app), fhir=None,  # type: ignore[arg-type]
                                  http=httpx.AsyncClient())
        return self._cds.sign_jwt(f"{self.url}{path}")

    def hook(self, service_id: str, body: Any, *, raw: bytes | None = None, timeout: float = 30,
             token: str | None = "auto") -> httpx.Response:
        """POST a hook call straight to the service's port (the JWT's aud is the public URL, as configured)."""
        path = f"/cds-services/{service_id}"
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.cds_jwt(path) if token == 'auto' else token}"
        content = raw if raw is not None else httpx.Request("POST", "http://x", json=body).content
        return httpx.post(f"{self.direct}{path}", content=content, headers=headers, timeout=timeout)

    def fhir(self) -> httpx.Client:
        """An unfaulted admin reader of the sandbox FHIR server (the service's own port, not the proxy)."""
        return httpx.Client(base_url=f"{self.direct}/sandbox/fhir", timeout=30,
                            headers={"Authorization": f"Bearer {self.mint()}"})


def hook_body(patient: str, *, service_id: str = ES, token: str | None = None, fhir_server: str | None = None,
              prefetch: dict[str, Any] | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/sandbox-clinician", "patientId": patient}
    if service_id == ES:
        context["encounterId"] = f"enc-{patient}"
    body: dict[str, Any] = {"hook": "encounter-start" if service_id == ES else "patient-view",
                            "hookInstance": str(uuid.uuid4()), "context": context}
    if fhir_server:
        body["fhirServer"] = fhir_server
    if token:
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.rs", "subject": "onco-exercise", "patient": patient}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def assert_no_trace(text: str) -> None:
    for word in TRACE_WORDS:
        assert word not in text, f"{word!r} leaked into a response: {text[:300]}"


def assert_outcome(resp: httpx.Response) -> dict[str, Any]:
    """A non-2xx answer: an OperationOutcome with at least one issue, no stack trace."""
    assert_no_trace(resp.text)
    body = resp.json()
    assert body.get("resourceType") == "OperationOutcome", resp.text[:300]
    assert body.get("issue"), resp.text[:300]
    return body


def _rig(tmp: Path, **overrides: Any) -> Iterator[Rig]:
    port, proxy_port = free_port(), free_port()
    proxy = FaultProxy(upstream=f"http://127.0.0.1:{port}")
    values: dict[str, Any] = dict(hook_budget_seconds=BUDGET, fhir_timeout_seconds=FHIR_TIMEOUT)
    values.update(overrides)
    settings = sandbox_settings(port, tmp, **values)
    settings.public_url = f"http://127.0.0.1:{proxy_port}"  # the proxy is the public face
    app = create_app(settings)
    with serve(app, port) as direct, serve(proxy, proxy_port) as url:
        rig = Rig(url=url, direct=direct, app=app, proxy=proxy, data_dir=tmp)
        _warm(rig)
        yield rig


def _warm(rig: Rig) -> None:
    """The first JWKS fetch and FHIR read happen here, not inside a timed test."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = rig.hook(ES, hook_body("onc-01", token=rig.mint("patient/*.rs", "onc-01"), fhir_server=rig.fhir_base))
        if r.status_code == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"rig did not warm up: {r.status_code} {r.text[:300]}")


@pytest.fixture(scope="package")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    yield from _rig(tmp_path_factory.mktemp("hostile-rig"))


@pytest.fixture(autouse=True)
def _clean_proxy(request: pytest.FixtureRequest) -> Iterator[None]:
    """No fault outlives the test that injected it."""
    yield
    if "rig" in request.fixturenames:
        request.getfixturevalue("rig").proxy.clear()
