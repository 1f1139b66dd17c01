"""Issue 12 "Show", in a real browser: the plan at a glance at 1280x800; defer -> sign -> the inbox shows
nothing to start -> clearance -> released; an open referral -> revise -> one open referral; unsaved changes
warn before leaving. Screenshots go to tests/artifacts/e2e/<test>/."""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Sandbox, ehr_launch_page
from tests.support.browser import chromium_page, inbox_sign_in

pytestmark = pytest.mark.browser

GLANCE_PATIENT = "onc-05"  # metastatic breast cancer, bone metastases, open accepted referral: a busy summary
DEFER_PATIENT = "onc-31"  # tympanic fever in Fahrenheit on AC chemotherapy: deferred
REVISE_PATIENT = "onc-03"  # the cohort holds a requested referral for her
UNSAVED_PATIENT = "onc-22"


def _in_viewport(page: Page, selector: str, height: int = 800) -> None:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    assert box["y"] >= 0 and box["y"] + box["height"] <= height, (selector, box)


def test_the_plan_at_a_glance_fits_1280x800(sandbox: Sandbox, tmp_path: Any,
                                            shot: Callable[[Page, str], Any]) -> None:
    with chromium_page(tmp_path / "profile", width=1280, height=800) as page:
        ehr_launch_page(page, sandbox, GLANCE_PATIENT)
        # setting, clearance, red flags, the FITT table, top precautions and Sign & send: no scrolling
        for sel in ("#setting", "#clearance", "#fitt", "#top-precautions", "#sign-button", "#open-referrals"):
            _in_viewport(page, sel)
        expect(page.locator("#fitt tbody tr").first).to_be_visible()
        expect(page.locator("#open-referrals")).to_contain_text("in progress with the exercise service")
        expect(page.locator("#sign-hint")).to_contain_text("replaces the open referral")
        # abnormal values are marked, trends drawn where there is history
        expect(page.locator("#data-used tr.abnormal").first).to_be_visible()
        page.screenshot(path=str(shot(page, "glance-full").with_name("00-glance-viewport-1280x800.png")))
        assert page.locator("#trends figure").count() >= 1


def test_defer_sign_inbox_clearance_release(page: Page, sandbox: Sandbox, shot: Callable[[Page, str], Any]) -> None:
    ehr_launch_page(page, sandbox, DEFER_PATIENT)
    expect(page.locator("#setting")).to_have_text("Deferred pending medical clearance")
    expect(page.locator("#red-flag-list li").first).to_contain_text("temperature 38.6 °C")
    expect(page.locator("#fitt")).to_be_hidden()
    expect(page.locator("#sign-hint")).to_contain_text("records the plan pending medical clearance")
    expect(page.locator("#clearance-form")).to_be_visible()
    shot(page, "deferred-plan")
    page.locator("#sign-button").click()
    expect(page.locator("#sign-status")).to_contain_text("Sent.")
    shot(page, "deferred-signed")

    # the handout says what happens next; the inbox has nothing to start
    page.goto(page.url.replace("/smart/app", "/smart/handout"))
    expect(page.locator("#handout-clearance")).to_contain_text("on hold")
    shot(page, "deferred-handout")
    page.goto(f"{sandbox.url}/sandbox/exercise-service/")
    inbox_sign_in(page)
    pending = page.locator("section[aria-labelledby=pending-h]")
    expect(pending).to_contain_text("pending medical clearance")
    expect(pending).to_contain_text("Nothing to start")
    shot(page, "inbox-pending")
    pending.get_by_role("link", name=re.compile("Open")).first.click()
    expect(page.locator("#pending-clearance")).to_contain_text("nothing to start")
    expect(page.locator(".task-actions button")).to_have_count(0)
    shot(page, "inbox-pending-task")

    # a later launch: the pending referral is shown; the clearance is recorded, then signing releases it
    ehr_launch_page(page, sandbox, DEFER_PATIENT)
    expect(page.locator("#open-referrals")).to_contain_text("on hold, pending medical clearance")
    page.locator("#clearance-button").click()
    expect(page.locator("#clearance-problems")).to_contain_text("Confirm each item")
    for box in page.locator("#clearance-items input").all():
        box.check()
    page.locator("#clearance-note").fill("Afebrile on repeat (36.9 °C); infection screen negative.")
    page.locator("#clearance-button").click()
    expect(page.locator("#setting")).to_have_text("Clinically supervised")
    expect(page.locator("#clearance")).to_contain_text("Cleared by")
    expect(page.locator("#clearance-recorded")).to_be_visible()
    expect(page.locator("#fitt tbody tr").first).to_be_visible()
    shot(page, "cleared-plan")
    page.locator("#sign-button").click()
    expect(page.locator("#sign-status")).to_contain_text("Sent.")
    expect(page.locator("#written")).to_contain_text("updated")
    shot(page, "released")
    page.goto(f"{sandbox.url}/sandbox/exercise-service/")
    inbox_sign_in(page)
    expect(page.locator("section[aria-labelledby=pending-h]")).to_have_count(0)
    with sandbox.fhir() as fhir:
        name = fhir.get(f"/Patient/{DEFER_PATIENT}").json()["name"][0]["family"]
    row = page.locator("section[aria-labelledby=open-h] tbody tr").filter(has_text=name)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("requested")
    shot(page, "inbox-released")


def test_an_open_referral_is_revised_not_duplicated(page: Page, sandbox: Sandbox,
                                                     shot: Callable[[Page, str], Any]) -> None:
    with sandbox.fhir() as fhir:
        def open_referrals() -> list[dict[str, Any]]:
            bundle = fhir.get("/ServiceRequest", params={"patient": REVISE_PATIENT,
                                                         "code": "http://snomed.info/sct|390893007"}).json()
            return [e["resource"] for e in bundle.get("entry", [])
                    if e["resource"]["status"] in ("draft", "active", "on-hold")]

        [before] = open_referrals()
        ehr_launch_page(page, sandbox, REVISE_PATIENT)
        expect(page.locator("#open-referrals")).to_contain_text("sent to the exercise service")
        expect(page.locator("#sign-hint")).to_contain_text("replaces the open referral")
        shot(page, "open-referral-shown")
        page.locator("#sign-button").click()
        expect(page.locator("#sign-status")).to_contain_text("Sent.")
        shot(page, "revised")
        [after] = open_referrals()
        assert after["id"] != before["id"] and after["replaces"] == [{"reference": f"ServiceRequest/{before['id']}"}]
        assert fhir.get(f"/ServiceRequest/{before['id']}").json()["status"] == "revoked"


def test_unsaved_changes_warn_before_leaving(page: Page, sandbox: Sandbox, shot: Callable[[Page, str], Any]) -> None:
    ehr_launch_page(page, sandbox, UNSAVED_PATIENT)
    expect(page.locator("#unsaved")).to_be_hidden()
    page.locator("#component-0-minutes").fill("25")
    expect(page.locator("#unsaved")).to_be_visible()
    shot(page, "unsaved-marked")
    dialogs: list[str] = []

    def on_dialog(d: Any) -> None:
        dialogs.append(d.type)
        d.dismiss()  # stay on the page

    page.on("dialog", on_dialog)
    page.close(run_before_unload=True)
    page.wait_for_timeout(500)
    assert dialogs == ["beforeunload"]


def test_an_unsafe_edit_needs_a_clinical_reason(page: Page, sandbox: Sandbox, shot: Callable[[Page, str], Any]) -> None:
    """Bone metastases: a vigorous aerobic component is beyond the rules' cap; the refusal is in clinician
    language (no rule ids, no JSON paths) and offers only the clinical override reasons."""
    ehr_launch_page(page, sandbox, "onc-05")
    page.locator("#component-0-intensity").select_option("vigorous")
    page.locator("#update-button").click()
    problems = page.locator("#problems")
    expect(problems).to_contain_text("The changes were not accepted")
    text = problems.inner_text()
    assert not re.search(r"\b[A-Z]{2,}(-[A-Z0-9]+)+\b", text) and "components[" not in text, text
    reasons = problems.locator("select option")
    labels = [o.inner_text() for o in reasons.all()]
    assert "Patient declined" not in " ".join(labels)  # the card-dismissal reasons are not offered here
    shot(page, "unsafe-edit-refused")
    problems.locator("select").first.select_option(index=1)
    problems.locator("input[data-path]").first.fill("Supervised by the physiotherapist in clinic")
    page.locator("#update-button").click()
    expect(page.locator("#status")).to_have_text("Prescription updated.")
    expect(page.locator("#overrides")).to_be_visible()
    shot(page, "unsafe-edit-with-reason")
