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
from tests.e2e.conftest import Sandbox, ehr_launch_page
from tests.support.browser import inbox_sign_in

pytestmark = pytest.mark.browser

# Cohort patients whose encounter gets an info card with a referral suggestion and a smart link
# (service/sandbox/cohort/index.json): fit patients on treatment without red flags.
SIGN_PATIENT = "onc-07"      # prostate cancer, radiotherapy week 5 of 8; fit
ACCEPT_PATIENT = "onc-25"    # breast cancer after lumpectomy, radiotherapy week 3
OVERRIDE_PATIENT = "onc-27"  # melanoma on adjuvant nivolumab; strong and active
BP_PATIENT = "onc-04"        # breast cancer survivor on letrozole; active
UNSAVED_PATIENT = "onc-23"   # CLL, watch and wait; active (launched directly, no card needed)
RAW_UCUM = ("Cel", "{score}", "10*3/uL", "mm[Hg]", "min/wk")
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
    # The signer is named from their Practitioner resource, once (not "ref (ref)").
    expect(page.locator("#requester")).to_have_text("Signing as Dr Alex Morgan (Practitioner/sandbox-clinician)")
    values = page.locator("#data-used tbody td:nth-child(2)").all_inner_texts()
    assert not [v for v in values if any(u in v for u in RAW_UCUM)], values  # human units, not UCUM codes
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
    # Radiotherapy: nothing suggests swimming; "Take care" says why not; the goal is the long-term target.
    expect(handout.locator("#handout-what")).not_to_contain_text("swimming")
    expect(handout.locator("#handout-care")).to_contain_text("No swimming")
    expect(handout.locator("#handout-goals")).to_contain_text("150 minutes")
    expect(handout.locator("#handout-building-up")).to_contain_text(f"{new_minutes} minutes each time")  # follows the edit
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
    expect(aerobic.get_by_label("Minutes per session")).to_have_value(str(new_minutes))  # what was signed
    expect(page.locator("#prescription-form")).to_have_class(re.compile(r"\blocked\b"))  # styled read-only
    # The result table fits its panel at 1280 px: long ids and URLs wrap, nothing scrolls sideways.
    table, wrap = page.locator("#written").bounding_box(), page.locator("#sign-result .table-wrap").bounding_box()
    assert table and wrap and table["width"] <= wrap["width"] + 1, (table, wrap)
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
    # The edit reached the EHR: the aerobic exercise ServiceRequest (its first phase) carries the new minutes.
    [aerobic_sr] = [sr for sr in resources["ServiceRequest"] if sr["identifier"][0]["value"].endswith("-rx-aerobic")]
    assert aerobic_sr["occurrenceTiming"]["repeat"]["duration"] == new_minutes, aerobic_sr["occurrenceTiming"]
    # The build-up phases stay within the two days the patient chose (Tue, Sat): more minutes, not more days.
    phases = [sr["occurrenceTiming"]["repeat"] for sr in resources["ServiceRequest"]
              if "-rx-aerobic" in sr["identifier"][0]["value"]]
    assert len(phases) >= 2 and all(max(t["frequency"], t.get("frequencyMax", 0)) <= 2 for t in phases), phases
    # The Goal is the long-term target (150 min/week), not the edited starting dose.
    aerobic_goal = next(g for g in resources["Goal"] if g["identifier"][0]["value"].endswith("-goal-aerobic"))
    assert aerobic_goal["target"][0]["detailQuantity"]["value"] >= 150, aerobic_goal["target"]
    [referral] = [sr for sr in resources["ServiceRequest"] if "occurrencePeriod" in sr]
    assert referral["requester"].get("display") == "Dr Alex Morgan", referral["requester"]

    # 6. The exercise-service inbox shows the referral; open it and accept it.
    page.goto(f"{sandbox.url}/sandbox/exercise-service/")
    inbox_sign_in(page)
    expect(page.get_by_role("heading", name="Referrals")).to_be_visible()
    link = page.locator(f"a[href='/sandbox/exercise-service/tasks/{task['id']}']")
    expect(link).to_be_visible()
    shot(page, "inbox-list")
    link.click()
    expect(page.locator("section.banner h1")).to_contain_text("David Nguyen")
    expect(page.locator("section.banner .status")).to_have_text("requested")
    expect(page.locator("#clinician-notes")).to_contain_text("Prefers mornings; happy to be contacted by phone.")
    # The stop rules are listed once; the FITT rows carry only their own instructions.
    expect(page.locator("#stop-rules li").first).to_be_visible()
    expect(page.locator("#fitt-h + table")).not_to_contain_text("light-headed")
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
    comment = card.locator("details.override [name='comment']")
    comment.fill("runs three times a week")
    box, form = comment.bounding_box(), card.locator("details.override form").bounding_box()
    assert box and form and box["width"] >= 0.8 * form["width"], (box, form)  # room to write a comment
    shot(page, "override-form")
    card.get_by_role("button", name="Dismiss", exact=True).click()
    expect(page.get_by_role("heading", name="Card dismissed")).to_be_visible()
    shot(page, "card-dismissed")
    overridden = [r for r in sandbox.stored("cds-feedback") if r["outcome"] == "overridden"]
    assert len(overridden) == 1, overridden
    assert overridden[0]["reason"]["code"] == "already-exercising"
    assert overridden[0].get("hasComment") is True


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
    [diastolic] = [c["valueQuantity"]["value"] for c in obs["component"]
                   if any(x.get("code") == "8462-4" for x in c["code"]["coding"])]
    assert shown.split()[0] == f"{systolic:g}", (shown, systolic)
    drow = page.locator("#data-used tbody tr").filter(has_text="Diastolic blood pressure")
    dshown = drow.locator("td").nth(1).inner_text()
    assert dshown.split()[0] == f"{diastolic:g}", (dshown, diastolic)
    # The panel, when shown, reads systolic/diastolic on both rows, in human units.
    for text in (shown, dshown):
        assert f"{systolic:g}/{diastolic:g}" in text and "mm Hg" in text and "mm[Hg]" not in text, text


def test_sign_with_unsaved_edits_saves_them_first_or_refuses(page: Page, sandbox: Sandbox,
                                                             shot: Callable[[Page, str], Any]) -> None:
    ehr_launch_page(page, sandbox, UNSAVED_PATIENT)
    status = page.locator("#status")
    minutes = page.locator("fieldset.component[data-type='aerobic']").get_by_label("Minutes per session")
    # An invalid unsaved edit: the server's problems are shown and nothing is signed.
    minutes.fill("500")
    page.locator("#sign-button").click()
    expect(page.locator("#problems")).to_be_visible()
    expect(page.locator("#problems")).to_contain_text("minutes per session must be a whole number from 5 to 120")
    expect(page.locator("#problems")).not_to_contain_text("minutesPerSession")  # clinical words, not JSON paths
    expect(status).to_contain_text("Not signed")
    expect(page.locator("#sign-result")).to_be_hidden()
    expect(minutes).to_be_enabled()
    shot(page, "unsaved-invalid-refused")
    # A valid unsaved edit (no Update pressed): saved through the edit API, then that version is signed.
    new_minutes = 25
    minutes.fill(str(new_minutes))
    page.locator("#notes").fill("Signed without pressing Update.")
    page.locator("#sign-button").click()
    expect(status).to_have_text("Signed and sent.")
    expect(minutes).to_be_disabled()
    expect(minutes).to_have_value(str(new_minutes))
    expect(page.locator("#notes")).to_have_value("Signed without pressing Update.")
    shot(page, "unsaved-valid-signed")
    rows = page.locator("#written tbody tr")
    written = [[c.strip() for c in r.locator("td").all_inner_texts()] for r in rows.all()]
    with sandbox.fhir() as fhir:
        srs = [fhir.get(f"ServiceRequest/{rid}").json() for rtype, rid, *_ in written if rtype == "ServiceRequest"]
    [aerobic_sr] = [sr for sr in srs if sr["identifier"][0]["value"].endswith("-rx-aerobic")]
    assert aerobic_sr["occurrenceTiming"]["repeat"]["duration"] == new_minutes
    [referral] = [sr for sr in srs if "occurrencePeriod" in sr]
    assert any(n.get("text") == "Clinician note: Signed without pressing Update."
               for n in referral.get("note", [])), referral["note"]
