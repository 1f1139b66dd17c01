"""Browser checks (headless Chromium) that data coded the real-world ways reaches the clinician: a result that
is present but unreadable is on the card and in the app, and a fever recorded at another site in °F holds
exercise. Patients: the sandbox cohort's real-world-coded ones (service/sandbox/cohort_realworld.py)."""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Sandbox, ehr_launch_page

pytestmark = pytest.mark.browser

UNREADABLE_HB = "onc-38"  # haemoglobin "see comment" this morning; ileostomy; ondansetron for the cancer
TYMPANIC_FEVER = "onc-31"  # tympanic 101.5 °F; AC chemotherapy ordered as RxNorm clinical drugs


def _encounter_cards(page: Page, sandbox: Sandbox, patient: str) -> Any:
    page.goto(f"{sandbox.url}/sandbox/")
    row = page.locator("li.patient").filter(has=page.locator("code", has_text=re.compile(f"^{patient}$")))
    row.get_by_role("link", name="Open encounter").click()
    expect(page.locator("section.banner h1")).to_be_visible()
    cards = page.locator("article.card")
    expect(cards.first).to_be_visible()
    return cards


def test_an_unreadable_haemoglobin_is_on_the_card_and_in_the_app(page: Page, sandbox: Sandbox,
                                                                  shot: Callable[[Page, str], Any]) -> None:
    cards = _encounter_cards(page, sandbox, UNREADABLE_HB)
    warning = cards.filter(has=page.locator(".indicator", has_text="warning")).first
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("Hold exercise today")
    expect(warning).to_contain_text("Results present but unreadable")
    expect(warning).to_contain_text("see comment")
    shot(page, "ehr-card-unreadable-haemoglobin")

    ehr_launch_page(page, sandbox, UNREADABLE_HB)
    box = page.locator("#unreadable-box")
    expect(box).to_be_visible()
    expect(box).to_contain_text("Haemoglobin")
    expect(box).to_contain_text("Observation/onc-38-obs-1")
    expect(box).to_contain_text("exercise deferred until a clinician checks it")
    expect(page.locator("#setting")).to_contain_text(re.compile("defer", re.I))
    expect(page.locator("#missing-data")).to_contain_text("present but unreadable")
    # The antiemetic given for the cancer is not chemotherapy.
    expect(page.locator("#conditions")).not_to_contain_text("ondansetron (chemotherapy")
    shot(page, "app-unreadable-haemoglobin")


def test_a_tympanic_fever_in_fahrenheit_holds_exercise(page: Page, sandbox: Sandbox,
                                                       shot: Callable[[Page, str], Any]) -> None:
    cards = _encounter_cards(page, sandbox, TYMPANIC_FEVER)
    warning = cards.filter(has=page.locator(".indicator", has_text="warning")).first
    expect(warning).to_contain_text("temperature")
    expect(warning).to_contain_text("38.6")
    shot(page, "ehr-card-tympanic-fever")
    ehr_launch_page(page, sandbox, TYMPANIC_FEVER)
    expect(page.locator("#red-flags")).to_contain_text("38.6")
    expect(page.locator("#conditions")).to_contain_text("doxorubicin")
    shot(page, "app-tympanic-fever")
