"""Deferral -> clearance -> release, and one open referral per patient, through the app API against the real
sandbox (its FHIR server checks If-Match and runs the transactions): what the FHIR server holds at each step."""

from __future__ import annotations

from typing import Any

import httpx

from tests.smart.conftest import Sandbox, api, ehr_launch, fhir_reader

REFERRAL = "http://snomed.info/sct|390893007"
OPEN = ("draft", "active", "on-hold")


def _post(b: httpx.Client, sid: str, path: str = "", csrf: str | None = None, **kw: Any) -> httpx.Response:
    return b.post(f"/smart/api/prescription{path}", params={"s": sid}, headers={"X-CSRF-Token": csrf or ""}, **kw)


def _search(fhir: httpx.Client, rtype: str, patient: str, **params: str) -> list[dict[str, Any]]:
    bundle = fhir.get(f"/{rtype}", params={"patient": f"Patient/{patient}", "_count": "200", **params}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def _referrals(fhir: httpx.Client, patient: str) -> list[dict[str, Any]]:
    return _search(fhir, "ServiceRequest", patient, code=REFERRAL)


def _tasks(fhir: httpx.Client, patient: str, code: str) -> list[dict[str, Any]]:
    return _search(fhir, "Task", patient, code=f"http://hl7.org/fhir/CodeSystem/task-code|{code}")


def _sign(b: httpx.Client, got: Any, version: int) -> dict[str, Any]:
    r = _post(b, got.sid, "/sign", csrf=got.csrf, json={"draftVersion": version})
    assert r.status_code == 200, r.text
    return r.json()


def test_deferred_plan_is_held_then_cleared_and_released(sandbox: Sandbox) -> None:
    patient = "onc-33"  # platelets "14 x10^9/L" as text, HSCT, central line: deferred
    with sandbox.browser() as b:
        got = ehr_launch(b, patient=patient)
        v = api(b, got.sid).json()
        assert v["prescription"]["setting"] == "defer" and v["clearance"]["canRecord"]
        assert v["clearance"]["toResolve"] and v["openReferrals"] == []
        signed = _sign(b, got, v["draftVersion"])
        assert signed["status"] == "sent"
    with fhir_reader(sandbox) as fhir:
        [referral] = _referrals(fhir, patient)
        [fulfil] = _tasks(fhir, patient, "fulfill")
        [clearance] = _tasks(fhir, patient, "approve")
        careplans = _search(fhir, "CarePlan", patient)
        # the design contract: nothing asks the exercise service to start
        assert referral["status"] == "on-hold" and fulfil["status"] == "draft"
        assert [c["status"] for c in careplans] == ["on-hold"]
        assert clearance["status"] == "requested" and clearance["owner"]["reference"].startswith("Practitioner/")
        assert [i["valueString"] for i in clearance["input"]] == v["clearance"]["toResolve"]

    # a later launch: the app shows the pending referral and what is to resolve
    with sandbox.browser() as b:
        got = ehr_launch(b, patient=patient)
        v = api(b, got.sid).json()
        [open_ref] = v["openReferrals"]
        assert open_ref["state"] == "pending-clearance" and open_ref["reference"] == f"ServiceRequest/{referral['id']}"
        assert open_ref["toResolve"] == v["clearance"]["toResolve"]
        # an incomplete clearance is refused in clinician language, nothing changes
        r = _post(b, got.sid, csrf=got.csrf, json={"draftVersion": 0, "clearance": {"reviewed": [], "note": "ok"}})
        assert r.status_code == 422 and "Confirm each item" in r.json()["problems"][0]["message"]
        r = _post(b, got.sid, csrf=got.csrf, json={"draftVersion": 0, "clearance": {
            "reviewed": v["clearance"]["toResolve"], "note": "Repeat platelets 64 x10^9/L, no bleeding."}})
        assert r.status_code == 200, r.text
        v2 = r.json()
        rx = v2["prescription"]
        assert rx["setting"] == "supervised" and rx["components"] and not rx["redFlags"]
        assert rx["clearance"]["by"] == "Practitioner/sandbox-clinician" and rx["clearance"]["note"].startswith("Repeat")
        signed = _sign(b, got, v2["draftVersion"])
        assert {w["status"] for w in signed["written"]} >= {"created", "updated"}

    with fhir_reader(sandbox) as fhir:
        refs = _referrals(fhir, patient)
        open_refs = [r for r in refs if r["status"] in OPEN]
        assert len(open_refs) == 1 and open_refs[0]["status"] == "active"
        new = open_refs[0]
        assert new["replaces"] == [{"reference": f"ServiceRequest/{referral['id']}"}]
        old = fhir.get(f"/ServiceRequest/{referral['id']}").json()
        assert old["status"] == "revoked" and "Replaced by a revised referral" in old["note"][-1]["text"]
        tasks = {t["id"]: t for t in _tasks(fhir, patient, "fulfill")}
        assert tasks[fulfil["id"]]["status"] == "cancelled" and tasks[fulfil["id"]]["statusReason"]["text"]
        live = [t for t in tasks.values() if t["status"] == "requested"]
        assert len(live) == 1 and live[0]["focus"]["reference"] == f"ServiceRequest/{new['id']}"
        # the clearance: the clinician's to-do completed with who, when and what was reviewed (one record)
        [done] = _tasks(fhir, patient, "approve")
        assert done["id"] == clearance["id"] and done["status"] == "completed"
        assert done["owner"]["reference"] == "Practitioner/sandbox-clinician"
        assert done["output"][0]["valueString"] == v["clearance"]["toResolve"][0]
        assert done["note"][-1]["text"].startswith("Repeat platelets") and done["executionPeriod"]["end"]
        # the CarePlan is a new version of the same resource, now active
        [plan] = _search(fhir, "CarePlan", patient)
        assert plan["id"] == careplans[0]["id"] and plan["status"] == "active"
        assert int(plan["meta"]["versionId"]) >= 2 and len(plan["identifier"]) == 2
        goals = {g["id"]: g["lifecycleStatus"] for g in _search(fhir, "Goal", patient)}
        first_goals = [g["reference"].split("/")[1] for g in careplans[0]["goal"]]
        assert all(goals[g] == "cancelled" for g in first_goals)
        assert {g["reference"].split("/")[1] for g in plan["goal"]} == {k for k, s in goals.items() if s == "active"}


def test_signing_again_revises_the_open_referral(sandbox: Sandbox) -> None:
    patient = "onc-05"  # the cohort holds an accepted referral for her (the exercise service is booking)
    with fhir_reader(sandbox) as fhir:
        [before] = [r for r in _referrals(fhir, patient) if r["status"] in OPEN]
    with sandbox.browser() as b:
        got = ehr_launch(b, patient=patient)
        v = api(b, got.sid).json()
        [shown] = v["openReferrals"]
        assert shown["reference"] == f"ServiceRequest/{before['id']}" and shown["task"]["status"] == "accepted"
        assert shown["state"] == "in-progress" and shown["ours"]
        _sign(b, got, v["draftVersion"])
    with fhir_reader(sandbox) as fhir:
        open_refs = [r for r in _referrals(fhir, patient) if r["status"] in OPEN]
        assert len(open_refs) == 1 and open_refs[0]["id"] != before["id"]
        assert fhir.get(f"/ServiceRequest/{before['id']}").json()["status"] == "revoked"
        old_rx = [r for r in _search(fhir, "ServiceRequest", patient) if r["id"].startswith(f"{patient}-rx-")]
        assert old_rx and all(r["status"] == "revoked" for r in old_rx)
        statuses = sorted(t["status"] for t in _tasks(fhir, patient, "fulfill"))
        assert statuses == ["cancelled", "requested"]


def test_the_card_draft_is_replaced_not_orphaned(sandbox: Sandbox) -> None:
    from service.clinical.prescribe import prescribe
    from service.clinical.snapshot import build_snapshot
    from service.fhir.resources import build_draft_referral

    patient = "onc-12"
    with fhir_reader(sandbox) as fhir:
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": r} for rtype in ("Patient", "Condition", "Observation")
            for r in (_search(fhir, rtype, patient) if rtype != "Patient" else [fhir.get(f"/Patient/{patient}").json()])]}
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    snap = build_snapshot(bundle, now)
    draft = build_draft_referral(prescribe(snap, now), snap, "Organization/exercise-oncology-service",
                                 "Practitioner/sandbox-clinician")
    # what the EHR does when the clinician accepts the card's suggestion (a create by the EHR itself)
    from service.sandbox.auth_server import mint_access_token

    token = mint_access_token("user/*.cruds", app=sandbox.app)
    r = httpx.post(f"{sandbox.iss}/ServiceRequest", json=draft, timeout=30,
                   headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
    assert r.status_code == 201, r.text
    draft_id = r.json()["id"]
    with sandbox.browser() as b:
        got = ehr_launch(b, patient=patient)
        v = api(b, got.sid).json()
        assert [o["state"] for o in v["openReferrals"]] == ["draft"] and v["openReferrals"][0]["fromCard"]
        _sign(b, got, v["draftVersion"])
    with fhir_reader(sandbox) as fhir:
        assert fhir.get(f"/ServiceRequest/{draft_id}").json()["status"] == "revoked"
        open_refs = [r for r in _referrals(fhir, patient) if r["status"] in OPEN]
        assert len(open_refs) == 1 and open_refs[0]["replaces"] == [{"reference": f"ServiceRequest/{draft_id}"}]
