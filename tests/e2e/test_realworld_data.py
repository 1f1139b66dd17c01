"""Browser checks (headless Chromium) that data coded the real-world ways reaches the clinician: a result that
is present but unreadable is on the card and in the app, and a fever recorded at another site in °F holds
exercise. Patients: the sandbox cohort's real-world-coded ones (service/sandbox/cohort_realworld.py)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import httpx
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


HOSTILE = '<img src=x onerror="window.__pwned=1">[phish](http://evil.example) **b** <script>window.__pwned=2</script>'


def _put_hostile_patient(sandbox: Sandbox) -> str:
    """A patient whose diagnosis, drug, result text, unit and name carry markup and script, written to the sandbox
    FHIR server as an EHR might hold it."""
    from service.sandbox.auth_server import mint_access_token

    pid = "hostile-1"
    subject = {"reference": f"Patient/{pid}"}
    when = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()

    def cc(system: str, code: str) -> dict[str, Any]:
        return {"coding": [{"system": system, "code": code, "display": HOSTILE}], "text": HOSTILE}

    resources = [
        {"resourceType": "Patient", "id": pid, "birthDate": "1970-02-03", "gender": "female",
         "name": [{"family": HOSTILE, "given": ["Mallory"]}]},
        {"resourceType": "Condition", "id": f"{pid}-c1", "subject": subject,
         "code": cc("http://hl7.org/fhir/sid/icd-10-cm", "C50.911")},
        {"resourceType": "MedicationRequest", "id": f"{pid}-m1", "status": "active", "intent": "order",
         "subject": subject, "authoredOn": when,
         "medicationCodeableConcept": cc("http://www.nlm.nih.gov/research/umls/rxnorm", "1191138")},
        {"resourceType": "Observation", "id": f"{pid}-o1", "status": "final", "subject": subject,
         "effectiveDateTime": when, "code": cc("http://loinc.org", "10230-1"),
         "valueQuantity": {"value": 55, "unit": HOSTILE}},
    ]
    token = mint_access_token("user/*.*", subject="Practitioner/sandbox-clinician", lifetime=600, app=sandbox.app)
    r = httpx.post(sandbox.fhir_base, timeout=30, json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": x, "request": {"method": "PUT", "url": f"{x['resourceType']}/{x['id']}"}} for x in resources]},
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text[:300]
    return pid


def test_hostile_strings_are_rendered_inert(page: Page, sandbox: Sandbox, shot: Callable[[Page, str], Any]) -> None:
    pid = _put_hostile_patient(sandbox)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{sandbox.url}/sandbox/patients/{pid}")
    card = page.locator("article.card").first
    expect(card).to_be_visible()
    expect(card.locator(".detail")).to_contain_text("evil.example")  # shown as text
    assert card.locator(".detail a[href*='evil']").count() == 0 and card.locator(".detail img").count() == 0
    shot(page, "ehr-card-hostile-strings")
    ehr_launch_page(page, sandbox, pid)
    expect(page.locator("#conditions")).to_contain_text("<script>")  # the markup is visible, as text
    assert page.locator("#conditions img, #conditions script, #data-used img").count() == 0
    shot(page, "app-hostile-strings")
    handout = page.context.new_page()
    handout.goto(f"{sandbox.url}{page.locator('#handout-link').get_attribute('href')}")
    expect(handout.locator("body")).to_be_visible()
    assert handout.locator("main img, main script").count() == 0
    assert page.evaluate("window.__pwned") is None and handout.evaluate("window.__pwned") is None
    assert dialogs == []
