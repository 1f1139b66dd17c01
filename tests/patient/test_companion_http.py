"""The companion over HTTP: a patient signs in to their own record, sees the signed plan, logs a session, steps
and symptoms (PA IG observations that validate), and a red-flag answer flags the care team (Flag +
Communication) and tells the patient what to do now; a patient session never opens the clinician's API."""

from __future__ import annotations

import uuid

from service.fhir.validate import validate_resource
from tests.notify.conftest import sign
from tests.notify.test_report_back import follow_up_card
from tests.patient.conftest import Companion, patient_launch, post_entry
from tests.smart.conftest import Sandbox, api, fhir_reader


def _errors(resource: dict) -> list:
    return [i for i in validate_resource(resource) if i.severity == "error"]


def test_patient_launch_plan_log_and_red_flag(sandbox: Sandbox) -> None:
    patient = "onc-06"
    with sandbox.browser() as clin:
        signed = sign(clin, patient, service=None)
    assert signed.get("status") == "sent", signed
    with sandbox.browser() as b:
        c = patient_launch(b, sandbox.iss, patient)
        assert "Your exercise plan" in c.page.text and "This week" in c.page.text
        plan = b.get("/patient/api/plan", params={"s": c.sid}).json()
        assert plan["state"] in ("sent", "in-progress") and plan["thisWeek"] and plan["stopRules"], plan
        assert plan["requester"].startswith("Practitioner/")
        # a session with steps: written as the PA IG activity group with its measures, and daily steps
        entry = {"entryId": str(uuid.uuid4()), "session": {"activity": "Walking", "minutes": 25, "effort": "moderate"},
                 "steps": 6400}
        r = post_entry(b, c, entry)
        assert r.status_code == 201 and r.json()["alerts"] == [] and r.json()["written"] == 5, r.text
        again = post_entry(b, c, entry)  # the offline queue sending the same entry twice: recorded once
        assert again.status_code == 201
        assert b.get("/patient/api/plan", params={"s": c.sid}).json()["loggedThisWeek"] == 25
        # the weekly check-in with a red flag: advice now, and the care team is flagged
        r = post_entry(b, c, {"entryId": str(uuid.uuid4()), "symptoms": {"fatigue": 4, "pain": 2},
                              "recall": {"days": 3, "minutesPerDay": 25}, "warnings": {"fever": True}})
        assert r.status_code == 201 and r.json()["flagged"] is True
        [alert] = r.json()["alerts"]
        assert alert["rule"] == "PT-FEVER" and "24-hour" in alert["text"]
        # bad input: a readable refusal, nothing written
        for bad in ({"entryId": "x"}, {"entryId": str(uuid.uuid4()), "session": {"activity": "Walking",
                     "minutes": 9000, "effort": "moderate"}}, {"entryId": str(uuid.uuid4()), "day": "2020-01-01",
                     "steps": 10}, {"entryId": str(uuid.uuid4()), "warnings": {"chest_pain": "yes"}}):
            r = post_entry(b, c, bad)
            assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome", r.text
        assert post_entry(b, Companion(c.sid, "wrong", c.page), entry).status_code == 403
        # a patient session is not a clinician session
        assert api(b, c.sid).status_code == 401
    with fhir_reader(sandbox) as fhir:
        obs = fhir.get("/Observation", params={"patient": patient, "_count": "100"}).json()
        mine = [e["resource"] for e in obs.get("entry", []) if any(
            i.get("system", "").endswith("/identifier/companion-entry") for i in e["resource"].get("identifier", []))]
        codes = sorted(o["code"]["coding"][0]["code"] for o in mine)
        assert codes == sorted(["PAPanel", "73985-4", "55411-3", "82289-0", "41950-7", "72514-3", "fatigue-nrs",
                                "89555-7", "68516-4", "82290-8"])
        for o in mine:
            assert _errors(o) == [], (o["code"], _errors(o))
        [flag] = [e["resource"] for e in fhir.get("/Flag", params={"patient": patient}).json().get("entry", [])]
        assert flag["status"] == "active" and flag["code"]["coding"][0]["code"] == "PT-FEVER" and _errors(flag) == []
        [comm] = [e["resource"] for e in fhir.get("/Communication", params={"patient": patient}).json()["entry"]]
        assert comm["priority"] == "urgent" and comm["recipient"][0]["reference"].startswith("Practitioner/")
        assert comm["about"][0]["reference"] == f"Flag/{flag['id']}" and _errors(comm) == []

    # the clinician's next card: the flag first, how it is going at home, the proposed next step
    card = follow_up_card(sandbox, patient)
    assert card["indicator"] == "warning" and card["summary"].startswith("Patient reported a temperature of 38 °C")
    assert "**Reported by the patient**: a temperature of 38 °C or more" in card["detail"]
    assert "**At home**:" in card["detail"] and "ADAPT-ALERT-HOLD" in card["detail"]
    assert "**Exercise vital sign**: 75 min/week" in card["detail"]  # the check-in's EVS (3 days x 25 min)


def test_a_wearables_minutes_count_like_the_patients_own(sandbox: Sandbox) -> None:
    """Another app posts the day's exercise minutes (LOINC 101691-4, "Duration of physical activity", one of the
    exercise-minutes codes in terminology/) with its device: the companion counts them, naming the device."""
    from datetime import datetime, timezone

    import httpx

    from service.sandbox.auth_server import mint_access_token

    patient = "onc-10"
    with sandbox.browser() as clin:
        assert sign(clin, patient, service=None)["status"] == "sent"
    token = mint_access_token("user/*.cruds", app=sandbox.app)
    today = datetime.now(timezone.utc).date().isoformat()
    with httpx.Client(base_url=sandbox.iss, headers={"Authorization": f"Bearer {token}"}, timeout=30) as fhir:
        r = fhir.post("/Observation", json={
            "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{patient}"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "activity"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "101691-4"}]},
            "effectiveDateTime": today, "device": {"display": "Fitbit Charge 6"},
            "valueQuantity": {"value": 42, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}})
        assert r.status_code == 201, r.text
    with sandbox.browser() as b:
        c = patient_launch(b, sandbox.iss, patient)
        plan = b.get("/patient/api/plan", params={"s": c.sid}).json()
        assert plan["loggedThisWeek"] == 42 and plan["devices"] == ["Fitbit Charge 6"]
        assert "Includes minutes from Fitbit Charge 6" in b.get("/patient/app", params={"s": c.sid}).text
