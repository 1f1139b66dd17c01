"""Clinician-facing fixes from the browser review, checked through the real app API against the sandbox:
the signer's name, human units, goals and advice in the handout, and signing exactly the draft shown."""

from __future__ import annotations


from tests.smart.conftest import Sandbox, api, ehr_launch, fhir_reader


def test_the_signer_is_named_from_their_practitioner_resource(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-16")
        v = api(b, got.sid).json()
        assert v["requester"]["reference"] == "Practitioner/sandbox-clinician"
        assert v["requester"]["display"] == "Dr Alex Morgan"
        assert "user/Practitioner.rs" not in (v["writeBack"]["missingScopes"] or [])


def test_measurements_carry_a_human_unit_next_to_ucum(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-16")
        ms = {m["measure"]: m for m in api(b, got.sid).json()["data"]["measurements"]}
        assert ms["temperature"]["unit"] == "Cel" and ms["temperature"]["unitLabel"] == "°C"
        assert ms["ecog"]["unitLabel"] == "" if "ecog" in ms else True
        for m in ms.values():
            assert "{" not in m["unitLabel"] and "10*" not in m["unitLabel"], m


def test_handout_for_radiotherapy_offers_no_swimming_and_says_why(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-07")  # radiotherapy in progress
        v = api(b, got.sid).json()
        offered = {a for c in v["prescription"]["components"] for a in c["activities"]}
        assert not offered & {"swimming", "aqua aerobics"}
        html = b.get("/smart/handout", params={"s": got.sid}).text
        assert "walking, cycling, swimming" not in html
        care = html[html.index('id="handout-care"'):html.index('id="handout-stop"')]
        assert "No swimming" in care and "radiotherapy" in care
        assert 'id="handout-goals"' in html and "150 minutes" in html


def test_goal_and_progression_after_an_edit(sandbox: Sandbox):
    # onc-07 does 120 min/week: the goal stays the long-term target whatever the starting dose.
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-07")
        v = api(b, got.sid).json()
        aerobic = next(c for c in v["prescription"]["components"] if c["type"] == "aerobic")
        assert aerobic["frequencyPerWeek"] * aerobic["minutesPerSession"] >= 120  # not a beginner reset
        r = b.post("/smart/api/prescription", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf}, json={
            "preferences": {"daysAvailable": ["tue", "sat"]},
            "edits": {"components": [{"type": "aerobic", "minutesPerSession": 25}]}, "draftVersion": 0})
        assert r.status_code == 200, r.text
        rx = r.json()["prescription"]
        assert next(t for t in rx["targets"] if t["measure"] == "aerobic-minutes-per-week")["value"] >= 150
        assert rx["progression"][0].startswith("Weeks 1-2: aerobic 2x/week, 25 min")
        assert any(x["rule"] == "CLINICIAN-EDIT" and "-> 2x/week x 25 min" in x["finding"] for x in rx["rationale"])
        html = b.get("/smart/handout", params={"s": got.sid}).text
        assert "Weeks 1 and 2: 2 times a week, 25 minutes each time." in html  # the handout says the edited dose
        assert "Tuesday" in html and "Saturday" in html


def test_sign_signs_exactly_the_draft_version_shown(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-23")
        v = api(b, got.sid).json()
        aerobic = next(c for c in v["prescription"]["components"] if c["type"] == "aerobic")
        minutes = aerobic["minutesPerSession"] - 5
        r = b.post("/smart/api/prescription", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf},
                   json={"edits": {"components": [{"type": "aerobic", "minutesPerSession": minutes}]},
                         "draftVersion": 0})
        assert r.status_code == 200 and r.json()["draftVersion"] == 1
        stale = b.post("/smart/api/prescription/sign", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf},
                       json={"draftVersion": 0})
        assert stale.status_code == 409  # the page showed version 0: nothing is signed
        assert api(b, got.sid).json()["signed"] is None
        signed = b.post("/smart/api/prescription/sign", params={"s": got.sid}, headers={"X-CSRF-Token": got.csrf},
                        json={"draftVersion": 1})
        assert signed.status_code == 200, signed.text
        answer = signed.json()
        assert answer["draftVersion"] == 1
    with fhir_reader(sandbox) as fhir:
        srs = [fhir.get(f"/{w['reference']}").json() for w in answer["written"] if w["resourceType"] == "ServiceRequest"]
    aerobic_sr = next(s for s in srs if s["code"].get("text", "").lower().startswith("aerobic"))
    assert aerobic_sr["occurrenceTiming"]["repeat"]["duration"] == minutes
    referral = next(s for s in srs if "occurrencePeriod" in s)
    assert referral["requester"] == {"reference": "Practitioner/sandbox-clinician", "display": "Dr Alex Morgan"}
    # The stop rules travel once, as a list, in the referral; not repeated in each exercise request.
    lines = referral["patientInstruction"].split("\n")
    assert lines[0] == "Stop and seek advice:" and len(lines) > 2 and all(x.startswith("- ") for x in lines[1:])
    assert ".;" not in referral["patientInstruction"]
    assert all("Stop" not in s.get("patientInstruction", "") for s in srs if s is not referral)
