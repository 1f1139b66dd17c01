"""The app inside a cross-site iframe, as several EHRs show apps: the EHR page is on `localhost`, the app on
`127.0.0.1` (another site), and the browser blocks unpartitioned third-party cookies (Chromium's default
here, and forced with --test-third-party-cookie-phaseout). Launch, review, handout and sign all happen in the
frame; the session cookie is `Secure; SameSite=None; Partitioned` (Chromium treats 127.0.0.1 as secure)."""

from __future__ import annotations

import html
import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import running_sandbox
from tests.e2e.conftest import Sandbox
from tests.support.browser import BLOCK_THIRD_PARTY_COOKIES, chromium_page, need_chromium
from tests.support.live import free_port

pytestmark = pytest.mark.browser

# The iframe attributes of the reference launcher's simulated EHR (after Athena's embedded-apps guide).
FRAME_SANDBOX = ("allow-forms allow-modals allow-pointer-lock allow-popups allow-popups-to-escape-sandbox "
                 "allow-same-origin allow-scripts allow-downloads")


@contextmanager
def ehr_page(app_url: str) -> Iterator[str]:
    """A one-page "EHR" on http://localhost:PORT that shows `app_url` in an iframe; yields the page URL."""
    body = (f'<!doctype html><title>EHR</title><h1>Simulated EHR chart</h1>'
            f'<iframe id="app" title="SMART app" style="width:1200px;height:1400px" sandbox="{FRAME_SANDBOX}" '
            f'src="{html.escape(app_url)}"></iframe>').encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{port}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def secure_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A sandbox with production cookie settings (Secure), on http://127.0.0.1."""
    need_chromium()
    with running_sandbox(tmp_path_factory.mktemp("e2e-iframe"), cookie_secure=True) as (url, app):
        yield Sandbox(url, app)


@pytest.fixture
def blocking_page(tmp_path: Path) -> Iterator[Page]:
    """Chromium that blocks unpartitioned third-party cookies, as browsers increasingly do."""
    with chromium_page(tmp_path / "profile", extra_args=(BLOCK_THIRD_PARTY_COOKIES,), height=1000) as p:
        yield p


def test_launch_review_handout_and_sign_inside_a_cross_site_iframe(blocking_page: Page, secure_sandbox: Sandbox,
                                                                     shot: Callable[[Any, str], Any]):
    page = blocking_page
    r = httpx.post(f"{secure_sandbox.url}/sandbox/auth/launch", timeout=30,
                   json={"patient": "onc-04", "practitioner": "sandbox-clinician", "needPatientBanner": False})
    assert r.status_code == 201, r.text
    launch_url = f"{secure_sandbox.url}/smart/launch?" + urlencode({"iss": r.json()["iss"],
                                                                     "launch": r.json()["launch"]})
    with ehr_page(launch_url) as ehr:
        page.goto(ehr)
        app = page.frame_locator("#app")
        expect(app.locator("#status")).to_have_text("Ready.")
        expect(app.locator("#patient-banner")).to_be_hidden()  # the EHR shows the patient itself
        expect(app.locator("#sign-button")).to_be_enabled()
        frame = next(f for f in page.frames if f.url.startswith(f"{secure_sandbox.url}/smart/app"))
        sid = re.search(r"[?&]s=([^&]+)", frame.url).group(1)
        shot(page, "app-in-ehr-iframe")

        app.locator("#handout-link").click()  # opens in the frame: a new tab would not carry the cookie
        expect(app.locator("#handout-title")).to_have_text("Your exercise plan")
        app.locator("#back-to-app").click()
        expect(app.locator("#status")).to_have_text("Ready.")

        app.locator("#sign-button").click()
        expect(app.locator("#sign-status")).to_contain_text("Sent.")
        shot(page, "signed-in-ehr-iframe")
    with secure_sandbox.fhir() as fhir:
        plans = fhir.get("CarePlan", params={"subject": "Patient/onc-04"}).json()
    assert plans.get("total", len(plans.get("entry", []))) >= 1
    assert secure_sandbox.stored("smart-session") and sid
