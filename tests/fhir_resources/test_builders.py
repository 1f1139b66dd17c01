"""resources.py: the resources we write are complete, profiled, deterministic and link to each other."""

import base64
import copy
import json
from dataclasses import replace

import pytest

from service import canonical
from service.clinical.model import Clearance
from service.fhir import resources as R
from service.fhir.validate import validate_bundle, validate_resource
from tests.fhir_resources import factories as F


def _errors(resource):
    return [str(i) for i in validate_resource(resource) if i.severity == "error"]


def test_full_set_has_each_resource_and_all_validate(entries):
    types = [e["resource"]["resourceType"] for e in entries]
    # goals: aerobic, strength, in-session intensity; aerobic, resistance, the referral
    assert types == ["CarePlan", "Goal", "Goal", "Goal"] + ["ServiceRequest"] * 3 + ["Task", "Provenance"]
    for e in entries:
        assert _errors(e["resource"]) == [], e["resource"]["resourceType"]
    assert [str(i) for i in validate_bundle(R.transaction_bundle(entries))] == []


def test_same_input_same_identifiers_and_full_urls():
    a = R.build_prescription_resources(F.prescription(), F.snapshot(), F.signing())
    b = R.build_prescription_resources(F.prescription(), F.snapshot(), F.signing())
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = R.build_prescription_resources(F.prescription(), F.snapshot(), F.signing(key="another-signing"))
    assert not {e["fullUrl"] for e in a} & {e["fullUrl"] for e in c}


def test_identifiers_full_urls_and_if_none_exist_agree(entries):
    for e in entries:
        res = e["resource"]
        if res["resourceType"] == "Provenance":
            tag = res["meta"]["tag"][0]
            assert e["ifNoneExist"] == f"_tag={tag['system']}|{tag['code']}"
            value = tag["code"]
        else:
            ident = res["identifier"][0]
            assert ident["system"] == canonical.ID_PRESCRIPTION
            assert ident["value"].startswith(F.signing().key + "-")
            assert e["ifNoneExist"] == f"identifier={ident['system']}|{ident['value']}"
            value = ident["value"]
        assert e["fullUrl"] == R.full_url(canonical.ID_PRESCRIPTION, value)
        assert e["fullUrl"].startswith("urn:uuid:")
    assert len({e["fullUrl"] for e in entries}) == len(entries)


def _refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node["reference"]
        for v in node.values():
            yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_references_resolve_within_the_bundle(entries):
    urls = {e["fullUrl"] for e in entries}
    internal = [r for e in entries for r in _refs(e["resource"]) if r.startswith("urn:")]
    assert internal and set(internal) <= urls
    # everything else points at the patient's existing data or known actors
    external = {r for e in entries for r in _refs(e["resource"]) if not r.startswith("urn:")}
    assert external == {"Patient/p1", "Condition/breast-1", "Observation/plt-1", "Practitioner/sandbox-clinician",
                        "Organization/exercise-oncology-service", "Encounter/e1"}


def test_careplan_links_goals_and_requests(by_role, full):
    cp = by_role["careplan"]
    assert cp["intent"] == "plan" and cp["status"] == "active"
    assert [g["reference"] for g in cp["goal"]] == [full["Goal:goal-aerobic"], full["Goal:goal-strength"],
                                                    full["Goal:goal-aerobic-intensity"]]
    assert [a["reference"]["reference"] for a in cp["activity"]] == [
        full["ServiceRequest:rx-aerobic"], full["ServiceRequest:rx-resistance"], full["ServiceRequest:referral"]]
    assert cp["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    assert "&lt;&amp;&gt;" in cp["text"]["div"]  # precaution text escaped
    assert cp["period"] == {"start": "2026-03-02", "end": "2026-05-25"}


def test_goals_carry_loinc_targets_in_ucum(by_role):
    aero, strength = by_role["goal-aerobic"], by_role["goal-strength"]
    assert aero["target"][0]["measure"]["coding"][0]["code"] == "82290-8"
    # No targets on this (hand-built) prescription: the guideline goal, not the 3x30 starting dose.
    assert aero["target"][0]["detailQuantity"] == {"value": 150, "unit": "min/week", "system": canonical.UCUM,
                                                   "code": "min/wk"}
    assert strength["target"][0]["measure"]["coding"][0]["code"] == "82291-6"
    assert strength["target"][0]["detailQuantity"]["value"] == 2


def test_goals_are_the_clinical_cores_targets_not_the_starting_dose():
    from service.clinical.model import Target

    p = F.prescription(targets=(Target("aerobic-minutes-per-week", 210, "Keep up at least 210 minutes a week"),
                                Target("strength-days-per-week", 3, "Strength on 3 days a week")))
    entries = R.build_prescription_resources(p, F.snapshot(), F.signing())
    goals = {e["resource"]["identifier"][0]["value"].split("sig-4f2a9c-")[1]: e["resource"]
             for e in entries if e["resource"]["resourceType"] == "Goal"}
    aero, strength = goals["goal-aerobic"], goals["goal-strength"]
    assert aero["target"][0]["detailQuantity"]["value"] == 210
    assert aero["description"]["text"] == "Keep up at least 210 minutes a week"
    assert strength["target"][0]["detailQuantity"]["value"] == 3
    # The starting dose stays in the ServiceRequest timing.
    rx = next(e["resource"] for e in entries if e["resource"]["identifier"][0]["value"].endswith("-rx-aerobic"))
    assert (rx["occurrenceTiming"]["repeat"]["frequency"], rx["occurrenceTiming"]["repeat"]["duration"]) == (3, 30)


def test_goal_fallback_never_below_the_guideline_or_the_starting_dose():
    from service.clinical.model import Component, Intensity

    big = Component("aerobic", 5, 45, Intensity("moderate", "RPE 6-20", 12, 13))
    entries = R.build_prescription_resources(F.prescription(components=(big,)), F.snapshot(), F.signing())
    [aero] = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Goal"
              and e["resource"]["identifier"][0]["value"].endswith("-goal-aerobic")]
    assert aero["target"][0]["detailQuantity"]["value"] == 225


def test_stop_rules_travel_once_as_a_list():
    rules = ("Stop and rest if you feel dizzy, faint or light-headed.", "Stop for chest pain.")
    entries = R.build_prescription_resources(F.prescription(stop_rules=rules), F.snapshot(), F.signing())
    srs = {e["resource"]["identifier"][0]["value"].split("sig-4f2a9c-")[1]: e["resource"]
           for e in entries if e["resource"]["resourceType"] == "ServiceRequest"}
    assert srs["referral"]["patientInstruction"] == (
        "Stop and seek advice:\n- Stop and rest if you feel dizzy, faint or light-headed.\n- Stop for chest pain.")
    for role in ("rx-aerobic", "rx-resistance"):
        assert "Stop" not in srs[role]["patientInstruction"]


def test_clinician_note_is_an_authored_referral_note():
    p = F.prescription(notes=("No swimming or water exercise for now (during radiotherapy).",
                              "Clinician note: Prefers mornings."))
    entries = R.build_prescription_resources(p, F.snapshot(), F.signing())
    referral = next(e["resource"] for e in entries if e["resource"]["identifier"][0]["value"].endswith("-referral"))
    # every note is authored (by the signer) and timed, as the PA IG requires; the clinician's own words first
    assert referral["note"][0] == {"text": "Clinician note: Prefers mornings.", "time": "2026-03-02T09:30:00Z",
                                   "authorReference": {"reference": "Practitioner/sandbox-clinician",
                                                       "display": "Dr Ada Example"}}
    assert all(n["authorReference"] and n["time"] for n in referral["note"])
    assert any(n["text"].startswith("No swimming") for n in referral["note"])
    assert _errors(referral) == []


def test_exercise_prescription_request(by_role):
    sr = by_role["rx-aerobic"]
    assert sr["code"]["coding"][0] == {"system": canonical.SNOMED, "code": "229065009",
                                       "display": sr["code"]["coding"][0]["display"]}
    assert sr["performer"] == [{"reference": "Patient/p1"}] and sr["subject"] == {"reference": "Patient/p1"}
    rep = sr["occurrenceTiming"]["repeat"]
    assert (rep["frequency"], rep["period"], rep["periodUnit"], rep["duration"], rep["durationUnit"]) == \
        (3, 1, "wk", 30, "min")
    assert rep["boundsPeriod"] == {"start": "2026-03-02", "end": "2026-05-25"}  # no weekly target: one phase
    assert sr["orderDetail"][0]["text"].startswith("Intensity: moderate")
    assert sr["orderDetail"][1]["coding"][0]["system"] == canonical.CS_PRECAUTION
    assert sr["orderDetail"][1]["coding"][0]["code"] == "thrombocytopenia"
    assert sr["reasonReference"] == [{"reference": "Condition/breast-1", "display": "Malignant neoplasm of breast"}]
    assert sr["reasonCode"] == [{"coding": [{"system": canonical.SNOMED, "code": "254837009",
                                             "display": "Malignant neoplasm of breast"}],
                                 "text": "Malignant neoplasm of breast"}]
    assert sr["supportingInfo"] == [{"reference": "Observation/plt-1", "display": "Platelets 42 ×10³/µL (2026-03-02)"}]
    assert "dizziness or fainting" not in sr["patientInstruction"]  # stop rules: once, in the referral
    assert sr["requester"]["reference"] == "Practitioner/sandbox-clinician"
    assert sr["meta"]["profile"] == [canonical.sd_url("onco-exercise-prescription"),
                                     canonical.pa_sd_url("pa-servicerequest")]
    res = by_role["rx-resistance"]
    assert res["occurrenceTiming"]["repeat"]["frequency"] == 2


def test_referral_task_and_provenance(by_role, entries, full):
    ref = by_role["referral"]
    assert ref["code"]["coding"][0]["code"] == "390893007"
    assert ref["performer"][0]["reference"] == "Organization/exercise-oncology-service"
    setting = [d for d in ref["orderDetail"] if d.get("coding", [{}])[0].get("system") == canonical.CS_SETTING]
    assert [d["coding"][0]["code"] for d in setting] == ["home-based"]
    shown = {s["reference"]: s.get("display") for s in ref["supportingInfo"]}
    assert shown[full["ServiceRequest:rx-aerobic"]] == \
        "Exercise prescription: Aerobic: Weeks 1-12: keep 3 days/week, 30 min per session"
    task = by_role["task"]
    assert (task["status"], task["intent"], task["code"]["coding"][0]["code"]) == ("requested", "order", "fulfill")
    assert task["focus"] == {"reference": full["ServiceRequest:referral"]}
    assert task["owner"]["reference"] == "Organization/exercise-oncology-service"
    assert task["for"] == {"reference": "Patient/p1"} and task["authoredOn"] == "2026-03-02T09:30:00Z"
    prov = by_role["provenance"]
    assert [t["reference"] for t in prov["target"]] == [e["fullUrl"] for e in entries[:-1]]
    assert prov["agent"][0]["who"]["reference"] == "Practitioner/sandbox-clinician"
    assert prov["entity"][0]["what"]["identifier"] == {"system": R.RULESET_SYSTEM, "value": "2026.03.0"}
    assert prov["policy"] == [f"{R.RULESET_SYSTEM}/2026.03.0"]


def test_transaction_bundle_posts_conditionally(entries):
    bundle = R.transaction_bundle(entries)
    assert bundle["type"] == "transaction"
    for e, be in zip(entries, bundle["entry"]):
        assert be["fullUrl"] == e["fullUrl"] and be["resource"] is e["resource"]
        assert be["request"] == {"method": "POST", "url": e["resource"]["resourceType"],
                                 "ifNoneExist": e["ifNoneExist"]}


def test_document_reference_is_readable_html():
    entry = R.build_document_reference(F.prescription(), F.snapshot(), F.signing(), ["urn:uuid:1234"])
    doc = entry["resource"]
    assert _errors(doc) == []
    html = base64.b64decode(doc["content"][0]["attachment"]["data"]).decode()
    assert html.startswith("<!DOCTYPE html>") and "Dr Ada Example" in html and "brisk walking" in html
    assert doc["context"]["related"] == [{"reference": "urn:uuid:1234"}]
    assert entry["ifNoneExist"].endswith(f"{F.signing().key}-document")


def test_service_request_only_variant_carries_the_plan():
    entries = R.build_service_request_only(F.prescription(), F.snapshot(), F.signing())
    assert [e["resource"]["resourceType"] for e in entries] == ["ServiceRequest"] * 3 + ["DocumentReference"]
    for e in entries:
        assert _errors(e["resource"]) == []
    referral = entries[2]["resource"]
    notes = " ".join(n["text"] for n in referral["note"])
    assert "Aerobic: 3x/week, 30 min" in notes and "Resistance (strength): 2x/week" in notes
    assert all("basedOn" not in e["resource"] for e in entries)
    assert [r["reference"] for r in entries[3]["resource"]["context"]["related"]] == [e["fullUrl"] for e in entries[:3]]
    assert validate_bundle(R.transaction_bundle(entries)) == []


@pytest.mark.parametrize("practitioner", ["Practitioner/sandbox-clinician", "PractitionerRole/oncologist"])
def test_draft_referral_validates(practitioner):
    sr = R.build_draft_referral(F.prescription(), F.snapshot(), "Organization/exercise-oncology-service",
                                practitioner)
    assert sr["status"] == "draft" and sr["resourceType"] == "ServiceRequest"
    assert _errors(sr) == []
    again = R.build_draft_referral(F.prescription(), F.snapshot(), "Organization/exercise-oncology-service",
                                   practitioner)
    assert again["identifier"] == sr["identifier"]
    assert sr["requester"] == {"reference": practitioner}
    # the PA IG lets only a Practitioner or an Organization author a note: a role's draft carries none
    assert bool(sr.get("note")) is practitioner.startswith("Practitioner/")


def test_draft_referral_needs_a_clinician_reference():
    with pytest.raises(ValueError, match="names no clinician"):
        R.build_draft_referral(F.prescription(), F.snapshot(), "Organization/exercise-oncology-service", "")


def test_deferred_plan_is_written_pending_clearance():
    """Design contract: nothing asks the exercise service to start (no active referral, no active Task)."""
    p = F.prescription(setting="defer", clearance_required=True, components=(),
                       to_resolve=("Repeat the platelet count.",))
    entries = R.build_prescription_resources(p, F.snapshot(), F.signing())
    by_type = [(e["resource"]["resourceType"], e["resource"].get("status") or e["resource"].get("lifecycleStatus"))
               for e in entries]
    assert by_type == [("CarePlan", "on-hold"), ("Goal", "on-hold"), ("ServiceRequest", "on-hold"),
                       ("Task", "draft"), ("Task", "requested"), ("Provenance", None)]
    goal, referral, fulfil, clearance = (entries[i]["resource"] for i in (1, 2, 3, 4))
    assert "target" not in goal and "achievementStatus" not in goal
    assert "clearance" in goal["description"]["text"]
    assert any("Pending medical clearance" in n["text"] for n in referral["note"])
    assert fulfil["owner"]["reference"].endswith("exercise-service") or fulfil["owner"] == referral["performer"][0]
    assert "nothing to start" in fulfil["description"]
    assert clearance["code"]["coding"][0]["code"] == "approve"
    assert clearance["owner"] == clearance["requester"] and clearance["focus"]["reference"] == entries[2]["fullUrl"]
    assert [i["valueString"] for i in clearance["input"]] == ["Repeat the platelet count."]
    assert validate_bundle(R.transaction_bundle(entries)) == []


def test_a_cleared_plan_carries_its_clearance_as_a_completed_task():
    at = F.NOW.replace(hour=8)
    c = Clearance(by="Practitioner/dr-2", by_display="Dr Two", at=at, rules=("HEME-PLT-20",),
                  reviewed=("Repeat the platelet count.",), note="Platelets 64 on repeat.")
    p = F.prescription(setting="supervised", clearance=c)
    entries = R.build_prescription_resources(p, F.snapshot(), F.signing())
    statuses = {(e["resource"]["resourceType"], e["resource"].get("status")) for e in entries}
    assert ("ServiceRequest", "on-hold") not in statuses and ("Task", "requested") in statuses
    task = next(e["resource"] for e in entries if e["resource"].get("code", {}).get("coding", [{}])[0].get("code")
                == "approve")
    assert task["status"] == "completed" and task["owner"] == {"reference": "Practitioner/dr-2", "display": "Dr Two"}
    assert task["executionPeriod"]["end"].startswith(at.date().isoformat())
    assert task["output"][0]["valueString"] == "Repeat the platelet count."
    assert task["note"][0]["text"] == "Platelets 64 on repeat." and task["note"][0]["authorReference"] == task["owner"]
    referral = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "ServiceRequest"
                    and e["resource"]["code"]["coding"][0]["code"] == "390893007")
    assert any("clearance given by Dr Two" in n["text"] for n in referral["note"])
    assert validate_bundle(R.transaction_bundle(entries)) == []
    broken = copy.deepcopy(task)
    del broken["output"]
    assert any("oe-clear-1" in i.source for i in validate_resource(broken))


def test_without_condition_reference_the_reason_is_coded():
    p = F.prescription(cancer_refs=())
    entries = R.build_prescription_resources(p, F.snapshot(), F.signing())
    sr = next(e["resource"] for e in entries if e["resource"]["identifier"][0]["value"].endswith("-rx-aerobic"))
    assert "reasonReference" not in sr
    assert sr["reasonCode"][0]["coding"][0]["code"] == "254837009"
    assert validate_bundle(R.transaction_bundle(entries)) == []


def test_two_components_of_one_type_get_distinct_roles():
    p = F.prescription()
    p = replace(p, components=p.components + (p.components[0],))
    entries = R.build_prescription_resources(p, F.snapshot(), F.signing())
    values = [e["ifNoneExist"] for e in entries]
    assert len(set(values)) == len(values)
    assert any(v.endswith("rx-aerobic-2") for v in values)


def test_naive_signing_time_is_utc_and_missing_patient_is_refused():
    entries = R.build_prescription_resources(F.prescription(), F.snapshot(),
                                             F.signing(signed_at=F.NOW.replace(tzinfo=None)))
    assert entries[0]["resource"]["created"] == "2026-03-02T09:30:00Z"
    with pytest.raises(ValueError, match="patient"):
        R.build_prescription_resources(F.prescription(patient_ref=None), replace(F.snapshot(), patient_ref=None),
                                       F.signing())


def test_components_without_sessions_are_not_scheduled():
    p = F.prescription()
    p = replace(p, components=(replace(p.components[0], frequency_per_week=0),) + p.components[1:])
    entries = R.build_prescription_resources(p, F.snapshot(), F.signing())
    roles = [e["ifNoneExist"].rsplit("-", 1)[-1] for e in entries]
    assert "aerobic" not in roles and "resistance" in roles
    assert validate_bundle(R.transaction_bundle(entries)) == []


def test_aerobic_plan_is_phased_towards_the_weekly_target():
    """Start (weeks 1-2), build up (+5 min per session, days up to 5), keep: one prescription per phase, each
    with its own Timing, so the service schedules the progression instead of 12 weeks of the starting dose."""
    from service.clinical.model import Target

    p = F.prescription(targets=(Target("aerobic-minutes-per-week", 150, "Build up to 150 min/week"),),
                       progression_step_weeks=2)
    entries = R.build_prescription_resources(p, F.snapshot(), F.signing())
    srs = {e["resource"]["identifier"][0]["value"].split("sig-4f2a9c-")[1]: e["resource"]
           for e in entries if e["resource"]["resourceType"] == "ServiceRequest"}
    phases = [srs[r]["occurrenceTiming"]["repeat"] for r in ("rx-aerobic", "rx-aerobic-phase-2", "rx-aerobic-phase-3")]
    assert [(t["boundsPeriod"]["start"], t["boundsPeriod"]["end"]) for t in phases] == [
        ("2026-03-02", "2026-03-16"), ("2026-03-16", "2026-04-13"), ("2026-04-13", "2026-05-25")]
    assert (phases[0]["frequency"], phases[0]["duration"]) == (3, 30)
    assert (phases[1]["frequency"], phases[1]["frequencyMax"], phases[1]["duration"]) == (4, 5, 30)
    assert (phases[2]["frequency"], phases[2]["duration"]) == (5, 30)  # 5 x 30 = the 150 min/week target
    assert "Phase 2 of 3 (weeks 3-6): build up: 4 to 5 days/week" in srs["rx-aerobic-phase-2"]["patientInstruction"]
    assert "rx-resistance-phase-2" not in srs  # resistance progresses by load and sets (notes), not by schedule
    assert validate_bundle(R.transaction_bundle(entries)) == []


def test_intensity_is_a_goal_with_heart_rate_and_rpe_targets():
    from service.clinical.model import Measurement

    rest = Measurement("resting-hr", 70, "/min", F.NOW, "Observation/hr-1", "40443-4")
    snap = F.snapshot()
    snap = replace(snap, latest={**snap.latest, "resting-hr": rest})
    entries = R.build_prescription_resources(F.prescription(), snap, F.signing())
    goal = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Goal"
                and e["resource"]["identifier"][0]["value"].endswith("-goal-aerobic-intensity"))
    got = {(t["measure"]["coding"][0]["code"], t["detailQuantity"]["comparator"]):
           (t["detailQuantity"]["value"], t["detailQuantity"]["code"]) for t in goal["target"]}
    # age 55 at 2026-03-02: HRmax 165, reserve 95; 40-59 % -> 108-126 beats/min
    assert got == {("rpe-6-20", ">="): (12, "{score}"), ("rpe-6-20", "<="): (13, "{score}"),
                   ("8867-4", ">="): (108, "/min"), ("8867-4", "<="): (126, "/min")}
    assert _errors(goal) == []



def test_heart_rate_targets_say_what_the_clinical_core_s_note_says_for_every_cohort_patient():
    """The structured heart-rate targets of the intensity Goal equal the band the clinical core states in its
    aerobic note ("Target heart rate 104-122 beats/min ..."), for every cohort patient that has one."""
    import json
    import re

    from service.clinical.prescribe import prescribe
    from service.clinical.snapshot import build_snapshot
    from service.sandbox import cohort

    compared = 0
    for pid in (x["id"] for x in cohort.load_index()):
        snap = build_snapshot(json.loads((cohort.COHORT_DIR / f"{pid}.json").read_text()), cohort.ANCHOR)
        p = prescribe(snap, cohort.ANCHOR)
        aerobic = next((c for c in p.components if c.type == "aerobic"), None)
        stated = [tuple(int(x) for x in m.groups()) for n in (aerobic.notes if aerobic else ())
                  if (m := re.search(r"Target heart rate (\d+)-(\d+) beats/min", n))]
        goals = [e["resource"] for e in R.build_prescription_resources(p, snap, F.signing())
                 if e["ifNoneExist"].endswith("-goal-aerobic-intensity")]
        hr = sorted(t["detailQuantity"]["value"] for g in goals for t in g["target"]
                    if t["measure"]["coding"][0]["code"] == "8867-4")
        assert (list(stated[0]) if stated else []) == hr, pid
        compared += bool(hr)
    assert compared >= 20


@pytest.mark.parametrize("author,expected", [
    ("Practitioner/dr-behind-role", "Practitioner/dr-behind-role"),  # the role's Practitioner signs the notes
    ("Organization/oncology-dept", "Organization/oncology-dept"),  # else its Organization
    (None, None),  # none known: no notes (the sign answer says so)
    ("PractitionerRole/other", None),  # never an author the IG excludes
])
def test_a_practitioner_role_signer_s_notes_are_authored_as_the_ig_allows(author, expected):
    signing = F.signing(practitioner_ref="PractitionerRole/oncologist", note_author_ref=author)
    entries = R.build_prescription_resources(F.prescription(notes=("Clinician note: prefers mornings",)),
                                             F.snapshot(), signing)
    referral = next(e["resource"] for e in entries if e["ifNoneExist"].endswith("-referral"))
    assert referral["requester"]["reference"] == "PractitionerRole/oncologist"
    authors = {n["authorReference"]["reference"] for e in entries for n in e["resource"].get("note", [])}
    assert authors == ({expected} if expected else set())
    assert (R.note_author(signing) or {}).get("reference") == expected
    assert validate_bundle(R.transaction_bundle(entries)) == []
