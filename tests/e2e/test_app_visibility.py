"""What the app shows before it is ready and when the EHR draws its own patient banner (issue 14): the
`hidden` attribute must win over every layout rule, in a real browser."""

from __future__ import annotations

import re
from typing import Any, Callable

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Sandbox, ehr_launch_page

pytestmark = pytest.mark.browser


def test_need_patient_banner_false_hides_the_banner(page: Page, sandbox: Sandbox, shot: Callable[[Any, str], Any]):
    ehr_launch_page(page, sandbox, "onc-16", needPatientBanner=False)
    expect(page.locator("#decision")).to_be_visible()
    expect(page.locator("#patient-banner")).to_be_hidden()
    shot(page, "no-patient-banner")


def test_the_banner_shows_when_the_ehr_asks_for_it(page: Page, sandbox: Sandbox):
    ehr_launch_page(page, sandbox, "onc-16")
    expect(page.locator("#patient-banner")).to_be_visible()
    expect(page.locator("#banner-name")).not_to_be_empty()


def test_nothing_actionable_shows_while_loading(page: Page, sandbox: Sandbox, shot: Callable[[Any, str], Any]):
    """Until the script has rendered the patient's prescription there is no form and no Sign & send."""
    r = httpx.post(f"{sandbox.url}/sandbox/auth/launch", json={"patient": "onc-03",
                                                               "practitioner": "sandbox-clinician"}, timeout=30)
    page.route(re.compile(r".*/smart/static/app\.js$"), lambda route: route.abort())  # the script never runs
    page.goto(f"{sandbox.url}/smart/launch?iss={r.json()['iss']}&launch={r.json()['launch']}")
    page.wait_for_url(re.compile(r"/smart/app\?s="))
    expect(page.locator("#status")).to_have_text(re.compile("Loading"))
    for element in ("#app", "#prescription-form", "#sign-button", "#update-button", "#patient-banner"):
        expect(page.locator(element)).to_be_hidden()
    expect(page.locator("#sign-button")).to_be_disabled()
    shot(page, "loading")
