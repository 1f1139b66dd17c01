"""Issue 6 "Show", in a real browser: sandbox EHR -> open an oncology encounter -> the CDS card -> SMART
launch through the sandbox authorization server -> review and edit the prescription -> Sign & send -> the
resources exist in the FHIR server and validate against our profiles -> the exercise-service inbox shows the
referral and accepting it updates the Task. A second test: the card's suggestion and its override."""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest
from playwright.sync_api import Page, expect

from service.fhir.validate import validate_resource
from tests.e2e.conftest import Sandbox

pytestmark = pytest.mark.browser

# Cohort patients whose encounter gets an info card with a referral suggestion and a smart link
# (service/sandbox/cohort/index.json): fit patients on treatment without red flags.
SIGN_PATIENT = "onc-07"      # prostate cancer, radiotherapy week 5 of 8; fit
ACCEPT_PATIENT = "onc-25"    # breast cancer after lumpectomy, radiotherapy week 3
OVERRIDE_PATIENT = "onc-27"  # melanoma on adjuvant nivolumab; strong and active
BP_PATIENT = "onc-04"        # breast cancer survivor on letrozole; active
EXPECTED_TYPES = {"CarePlan", "Goal", "ServiceRequest", "Task", "Provenance"}


def _open_encounter(page: Page, sandbox: Sandbox, patient: str) -> Any:
    """From the patient list, open today's encounter; returns the first info card (encounter-start)."""
    page.goto(f"{sandbox.url}/sandbox/")
    expect(page.get_by_role("heading", name="Today's clinic")).to_be_visible()
    row = page.locator("li.patient").filter(has=page.locator("code", has_text=re.compile(f"^{patient}$")))
    row.get_by_role("link", name="Open encounter").click()
    expect(page.locator("section.banner h1")).to_be_visible()
    card = page.locator("article.card.info").first
    expect(card).to_be_visible()
    return card


def _errors(resource: dict[str, Any]) -> list[Any]:
    return [i for i in validate_resource(resource) if i.severity in ("error", "fatal")]


def test_card_launch_review_edit_sign_and_inbox_accept(page: Page, sandbox: Sandbox,
                                                        shot: Callable[[Page, str], Any]) -> None:
    # 1. The EHR screen and the encounter: the referral card is shown.
    page.goto(f"{sandbox.url}/sandbox/")
    expect(page.get_by_role("heading", name="Today's clinic")).to_be_visible()
    shot(page, "ehr-patient-list")
    card = _open_encounter(page, sandbox, SIGN_PATIENT)
    expect(card.locator("h3")).to_contain_text("Exercise referral suggested")
    expect(card.locator(".indicator")).to_have_text("info")
    expect(card.get_by_role("button", name=re.compile(r"^Accept: "))).to_be_visible()
    smart_link = card.get_by_role("button", name=re.compile(r"Review and sign"))
    expect(smart_link).to_be_visible()
    shot(page, "ehr-encounter-card")

    # 2. The smart link: EHR launch through the sandbox authorization server, back to the app.
    smart_link.click()
    page.wait_for_url(re.compile(r"/smart/app\?s="))
    status = page.locator("#status")
    expect(status).to_have_text("Ready.")
    expect(page.locator("#patient-banner")).to_be_visible()
    expect(page.locator("#banner-name")).to_contain_text("David Nguyen")
    expect(page.locator("#setting")).not_to_be_empty()
    expect(page.locator("#rationale li").first).to_be_visible()
    expect(page.locator("#data-used tbody tr").first).to_be_visible()
    expect(page.locator("#sign-button")).to_be_enabled()
    expect(page.locator("#strategy")).to_contain_text("Write-back:")
    shot(page, "app-prescription")
    page.set_viewport_size({"width": 820, "height": 1180})  # a tablet held upright
    expect(page.locator("#sign-button")).to_be_visible()
    shot(page, "app-tablet")
    page.set_viewport_size({"width": 1280, "height": 900})

    # 3. Edit: the aerobic component's minutes and the patient's preferences; the clinical core re-runs.
    aerobic = page.locator("fieldset.component[data-type='aerobic']")
    minutes = aerobic.get_by_label("Minutes per session")
    before = int(minutes.input_value())
    new_minutes = before - 5
    minutes.fill(str(new_minutes))
    page.locator("#pref-activities").fill("walking, cycling")
    page.locator("#pref-day-tue").check()
    page.locator("#pref-day-sat").check()
    page.locator("#notes").fill("Prefers mornings; happy to be contacted by phone.")
    page.locator("#update-button").click()
    expect(status).to_have_text("Prescription updated.")
    expect(page.locator("#problems")).to_be_hidden()
    expect(aerobic.get_by_label("Minutes per session")).to_have_value(str(new_minutes))
    expect(page.locator("#pref-activities")).to_have_value("walking, cycling")
    expect(page.locator("#pref-day-tue")).to_be_checked()
    expect(page.locator("#notes")).to_have_value("Prefers mornings; happy to be contacted by phone.")
    shot(page, "app-after-edit")

    # The printable handout for the patient (a separate page).
    handout = page.context.new_page()
    handout.goto(f"{sandbox.url}{page.locator('#handout-link').get_attribute('href')}")
    expect(handout.locator("main")).to_contain_text(f"about {new_minutes} minutes each time")
    shot(handout, "app-handout")
    handout.close()

    # 4. Sign & send: the result lists what was written where.
    page.locator("#sign-button").click()
    expect(status).to_have_text("Signed and sent.")
    expect(page.locator("#sign-result")).to_be_visible()
    expect(page.locator("#sign-status")).to_contain_text("Sent.")
    expect(page.locator("#sign-failed li")).to_have_count(0)
    rows = page.locator("#written tbody tr")
    expect(rows.first).to_be_visible()
    written = [[c.strip() for c in r.locator("td").all_inner_texts()] for r in rows.all()]
    expect(page.locator("#sign-button")).to_be_disabled()
    expect(aerobic.get_by_label("Minutes per session")).to_be_disabled()
    shot(page, "app-signed")

    types = {w[0] for w in written}
    assert EXPECTED_TYPES <= types, written
    assert all(w[1] and sandbox.fhir_base in w[2] for w in written), written

    # 5. Over FHIR: each written resource exists and passes our profile validation.
    resources: dict[str, list[dict[str, Any]]] = {}
    with sandbox.fhir() as fhir:
        for rtype, rid, *_ in written:
            r = fhir.get(f"{rtype}/{rid}")
            assert r.status_code == 200, (rtype, rid, r.status_code, r.text[:300])
            body = r.json()
            assert _errors(body) == [], (rtype, rid, _errors(body))
            # Our profiles apply (so validate_resource checks them, not only the base R4 schema).
            assert body.get("meta", {}).get("profile"), (rtype, rid, body.get("meta"))
            resources.setdefault(rtype, []).append(body)
    [task] = resources["Task"]
    assert task["status"] == "requested"
    assert task["for"]["reference"].endswith(f"Patient/{SIGN_PATIENT}")
    # The edit reached the EHR: the aerobic exercise ServiceRequest carries the new minutes.
    [aerobic_sr] = [sr for sr in resources["ServiceRequest"]
                    if sr.get("code", {}).get("text", "").lower().startswith("aerobic")]
    assert aerobic_sr["occurrenceTiming"]["repeat"]["duration"] == new_minutes, aerobic_sr["occurrenceTiming"]

    # 6. The exercise-service inbox shows the referral; open it and accept it.
    page.goto(f"{sandbox.url}/sandbox/exercise-service/")
    expect(page.get_by_role("heading", name="Referrals")).to_be_visible()
    link = page.locator(f"a[href='/sandbox/exercise-service/tasks/{task['id']}']")
    expect(link).to_be_visible()
    shot(page, "inbox-list")
    link.click()
    expect(page.locator("section.banner h1")).to_contain_text("David Nguyen")
    expect(page.locator("section.banner .status")).to_have_text("requested")
    shot(page, "inbox-referral")
    page.get_by_role("button", name="Accept", exact=True).click()
    expect(page.locator("section.banner .status")).to_have_text("accepted")
    shot(page, "inbox-accepted")

    with sandbox.fhir() as fhir:
        after = fhir.get(f"Task/{task['id']}").json()
    assert after["status"] == "accepted"
    assert _errors(after) == []


def test_accepting_the_suggestion_and_overriding_a_card(page: Page, sandbox: Sandbox,
                                                         shot: Callable[[Page, str], Any]) -> None:
    # Accept: the suggestion's actions are applied to the FHIR server -> a draft ServiceRequest.
    card = _open_encounter(page, sandbox, ACCEPT_PATIENT)
    with sandbox.fhir() as fhir:
        before = fhir.get("ServiceRequest", params={"patient": ACCEPT_PATIENT, "status": "draft"}).json()
    assert not before.get("entry"), "the patient already has a draft referral"
    card.get_by_role("button", name=re.compile(r"^Accept: ")).click()
    expect(page.get_by_role("heading", name="Suggestion applied")).to_be_visible()
    shot(page, "suggestion-applied")
    with sandbox.fhir() as fhir:
        drafts = fhir.get("ServiceRequest", params={"patient": ACCEPT_PATIENT, "status": "draft"}).json()
    entries = [e["resource"] for e in drafts.get("entry", []) if e["resource"]["resourceType"] == "ServiceRequest"]
    assert len(entries) == 1, drafts
    assert entries[0]["subject"]["reference"].endswith(f"Patient/{ACCEPT_PATIENT}")
    accepted = [r for r in sandbox.stored("cds-feedback") if r["outcome"] == "accepted"]
    assert accepted, "accepted feedback was not stored"

    # Override with a reason: the service stores the feedback (without the free-text comment).
    card = _open_encounter(page, sandbox, OVERRIDE_PATIENT)
    card.locator("details.override summary").click()
    reason = card.get_by_label(re.compile("already", re.I))
    reason.check()
    card.locator("details.override input[name='comment']").fill("runs three times a week")
    shot(page, "override-form")
    card.get_by_role("button", name="Dismiss", exact=True).click()
    expect(page.get_by_role("heading", name="Card dismissed")).to_be_visible()
    shot(page, "card-dismissed")
    overridden = [r for r in sandbox.stored("cds-feedback") if r["outcome"] == "overridden"]
    assert len(overridden) == 1, overridden
    assert overridden[0]["reason"]["code"] == "already-exercising"
    assert overridden[0].get("hasComment") is True


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="service/smart/static/app.js renderData shows a blood-pressure row's "
                   "*other* components (m.components) instead of its own value: the 'Systolic' row shows the "
                   "diastolic value and vice versa. Remove this marker when fixed.")
def test_the_app_shows_blood_pressure_as_recorded(page: Page, sandbox: Sandbox,
                                                  shot: Callable[[Page, str], Any]) -> None:
    card = _open_encounter(page, sandbox, BP_PATIENT)
    card.get_by_role("button", name=re.compile(r"Review and sign")).click()
    expect(page.locator("#status")).to_have_text("Ready.")
    row = page.locator("#data-used tbody tr").filter(has_text="Systolic blood pressure")
    expect(row).to_have_count(1)
    source = row.locator("td.source").inner_text().strip()
    shown = row.locator("td").nth(1).inner_text()
    shot(page, "app-data-used")
    with sandbox.fhir() as fhir:
        obs = fhir.get(source).json()
    [systolic] = [c["valueQuantity"]["value"] for c in obs["component"]
                  if any(x.get("code") == "8480-6" for x in c["code"]["coding"])]
    assert shown.split()[0] == f"{systolic:g}", (shown, systolic)
