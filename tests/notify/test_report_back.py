"""Reporting back, end to end on the real sandbox: a full service through the FHIR API with its own token, a
light one through the inbox; every resource written validates; the next card and the app show the outcome."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from service.fhir import reports
from service.fhir.validate import validate_resource
from tests.notify.conftest import FULL, receiver_log, sign, wait_for
from tests.smart.conftest import Sandbox, api, ehr_launch
from tests.support.inbox import fresh_token, sign_in

PHYSIO = {"reference": "Practitioner/exercise-physiologist", "display": "Jordan Blake"}


def errors(resource: dict[str, Any]) -> list[str]:
    return [str(i) for i in validate_resource(resource) if i.severity == "error"]


def follow_up_card(sandbox: Sandbox, patient: str) -> dict[str, Any]:
    from service.sandbox.cds_client import CdsClient
    from service.sandbox.fhir_server import sandbox_fhir_client
    from service.sandbox.keys import load_keys

    keys = load_keys(sandbox.data_dir / "sandbox")

    async def go() -> Any:
        async with sandbox_fhir_client(sandbox.app) as fhir:
            async with CdsClient(public_url=sandbox.url, fhir_base=sandbox.iss, signing_key=keys.cds,
                                 fhir=fhir) as client:
                services = {s.id: s for s in (await client.discover(sandbox.url)).services}
                pv = next(s for s in services.values() if s.hook == "patient-view")
                return await client.call(pv, {"userId": "Practitioner/sandbox-clinician", "patientId": patient})

    result = asyncio.run(go())
    cards = getattr(result, "cards", None)
    if cards is None:
        cards = (getattr(result, "response", None) or {}).get("cards", [])
    [card] = [c for c in cards if "exercise referral" in (c.get("summary") if isinstance(c, dict) else c.summary
                                                          ).lower()]
    return card if isinstance(card, dict) else card.__dict__


def service_client(sandbox: Sandbox) -> httpx.Client:
    """The full exercise service's own client on the EHR's FHIR server (its token, its client id)."""
    from service.sandbox.receiver import CLIENT_ID, SCOPE

    token = sandbox.app.state.sandbox.auth.mint_access_token(SCOPE, client_id=CLIENT_ID)
    return httpx.Client(base_url=sandbox.iss, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_full_service_reports_back_through_the_fhir_api(sandbox: Sandbox) -> None:
    patient = "onc-07"
    with sandbox.browser() as b:
        answer = sign(b, patient)
    task_ref = next(w["reference"] for w in answer["written"] if w["resourceType"] == "Task")
    wait_for(lambda: [e for e in receiver_log(sandbox) if e.get("notificationId") ==
                      answer["notifications"][0]["notificationId"]])
    signed_at = datetime.now(timezone.utc)
    with service_client(sandbox) as fhir:
        task = fhir.get(task_ref).json()
        referral, subject = task["focus"]["reference"], task["for"]["reference"]
        for status, text in (("accepted", "Assessment booked"), ("in-progress", "Programme under way")):
            task = {k: v for k, v in task.items() if k != "meta"} | {"status": status, "businessStatus": {"text": text}}
            r = fhir.put(task_ref, json=task, headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 200, r.text
            task = r.json()
        time.sleep(2.1)  # the follow-up (2 s after the baseline, whole seconds apart) is in the past now
        made = []
        for value, when in ((380, signed_at), (452, signed_at + timedelta(seconds=2))):
            obs = reports.outcome_observation(measure="six-minute-walk", value=value, when=when, patient_ref=subject,
                                              referral_ref=referral, performer=PHYSIO)
            made.append(obs)
        made.append(reports.attendance_observation(attended=10, offered=12, start=signed_at,
                                                   end=datetime.now(timezone.utc), patient_ref=subject,
                                                   referral_ref=referral, performer=PHYSIO))
        refs = []
        for obs in made:
            assert errors(obs) == []
            r = fhir.post("/Observation", json=obs, headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 201, r.text
            refs.append(f"Observation/{r.json()['id']}")
        values = reports.reported(fhir.get("/Observation", params={"based-on": referral}).json()["entry"][i][
            "resource"] for i in range(3))
        summary = reports.summary_text(values)
        assert summary.startswith("Attended 10 of 12 sessions.") and "380 -> 452 m" in summary
        report = reports.programme_report(patient_ref=subject, referral_ref=referral, performer=PHYSIO,
                                          start=signed_at, end=datetime.now(timezone.utc), results=refs,
                                          conclusion=summary, issued=datetime.now(timezone.utc))
        assert errors(report) == []
        done = {k: v for k, v in task.items() if k != "meta"} | {"status": "completed",
                                                                  "businessStatus": {"text": "Programme completed"}}
        r = fhir.post("", json=reports.completion_bundle(done, report, task["meta"]["versionId"], sandbox.iss),
                      headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text
        final = fhir.get(task_ref).json()
        assert final["status"] == "completed" and errors(final) == []
        [out] = [o for o in final["output"] if "valueReference" in o]
        stored_report = fhir.get(f"/{out['valueReference']['reference']}").json()
        assert stored_report["conclusion"] == summary and errors(stored_report) == []

    card = follow_up_card(sandbox, patient)
    detail = card["detail"]
    assert "Task completed" in card["summary"]
    assert "**Attendance**: 10 of 12 sessions" in detail
    assert re.search(r"\*\*6-minute walk distance\*\*: .*→ 452 m", detail), detail
    assert "**Programme report**: DiagnosticReport/" in detail
    with sandbox.browser() as b:
        v = api(b, ehr_launch(b, patient=patient).sid).json()
    prog = v["exerciseProgramme"]
    assert prog["taskStatus"] == "completed" and prog["attendance"]["attended"] == 10
    [change] = [c for c in prog["changes"] if c["measure"] == "six-minute-walk"]
    assert change["after"]["value"] == 452
    assert [s["kind"] for s in v["exerciseServices"]] == ["light", "full"]


def _inbox(b: httpx.Client, path: str, **form: str) -> httpx.Response:
    return b.post(f"/sandbox/exercise-service/tasks/{path}", data={"csrf": fresh_token(b), **form})


def test_light_service_reports_back_from_the_inbox(sandbox: Sandbox) -> None:
    patient = "onc-08"
    with sandbox.browser() as b:
        answer = sign(b, patient, service=None)
    tid = next(w["id"] for w in answer["written"] if w["resourceType"] == "Task")
    today = datetime.now(timezone.utc).date()
    with httpx.Client(base_url=sandbox.url, timeout=60, follow_redirects=False) as b:
        sign_in(b)
        for action, extra in (("accept", {}), ("start", {}), ("hold", {"reason": "Admitted for a chest infection"}),
                              ("resume", {})):
            r = _inbox(b, tid, action=action, **extra)
            assert r.status_code == 303 and "error" not in r.headers["location"], r.headers["location"]
        assert "error=" in _inbox(b, tid, action="hold").headers["location"]  # a hold needs a reason
        for form in ({"kind": "measure", "measure": "sit-to-stand", "value": "9",
                      "date": (today - timedelta(days=1)).isoformat()},
                     {"kind": "measure", "measure": "sit-to-stand", "value": "13", "date": today.isoformat()},
                     {"kind": "attendance", "attended": "8", "offered": "12"}):
            r = _inbox(b, f"{tid}/report", **form)
            assert r.status_code == 303 and "notice" in r.headers["location"], r.headers["location"]
        for bad in ({"kind": "measure", "measure": "tug", "value": "9000", "date": today.isoformat()},
                    {"kind": "measure", "measure": "vo2peak", "value": "20", "date": today.isoformat()},
                    {"kind": "attendance", "attended": "13", "offered": "12"}):
            assert "error=" in _inbox(b, f"{tid}/report", **bad).headers["location"]
        page = b.get(f"/sandbox/exercise-service/tasks/{tid}").text
        assert "Recorded for this referral" in page and "8 of 12 sessions" in page
        r = _inbox(b, tid, action="complete", note="12-week programme finished; continuing at home")
        assert r.status_code == 303 and "error" not in r.headers["location"], r.headers["location"]
    from tests.smart.conftest import fhir_reader

    with fhir_reader(sandbox) as fhir:
        task = fhir.get(f"/Task/{tid}").json()
        assert task["status"] == "completed" and errors(task) == []
        [ref] = [o["valueReference"]["reference"] for o in task["output"] if "valueReference" in o]
        report = fhir.get(f"/{ref}").json()
        assert errors(report) == [] and report["basedOn"] == [task["focus"]]
        assert report["conclusion"].startswith("Attended 8 of 12 sessions.") and "9 -> 13" in report["conclusion"]
        for r in report["result"]:
            assert errors(fhir.get(f"/{r['reference']}").json()) == []
    detail = follow_up_card(sandbox, patient)["detail"]
    assert "**Attendance**: 8 of 12 sessions" in detail and "→ 13" in detail
