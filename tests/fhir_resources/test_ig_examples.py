"""Test data from outside: the PA IG's own examples (its FSH Instances, exported by profiles/instances.py).

- every IG example of the CarePlan, Goal, ServiceRequest and Task profiles ours derive from passes `validate`
  under the IG's profiles, except two the IG itself gets wrong (named below, with the IG rule they break);
- under our profiles they fail only on our deliberate additions (docs/profiles.md), never on an IG rule;
- Medplum's validator accepts them too (a check of the exporter as much as of the examples);
- everything we write (our examples, the cohort corpus) passes with the IG's profiles alone;
- the IG's examples, broken one IG rule at a time, are rejected (negative cases built from outside data).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from profiles import instances
from service import canonical
from service.fhir import resources as R
from service.fhir.validate import validate_resource
from tests.fhir_resources.written import cohort_written
from tests.oracle import medplum

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "profiles" / "examples"

# The IG's examples that break the IG's own profiles. Both put a PractitionerRole as a note's author, which the
# IG's note.author[x] type list leaves out (its FSH says "TODO - add support for PractitionerRole when we move
# to different US Core"). Our validator reports exactly that, and nothing else, for them.
IG_EXAMPLE_DEFECTS = {
    "ExampleGoal": [("Goal.note[0].authorReference.reference", "pa-goal", "not PractitionerRole")],
    "ExampleFulfillmentTask": [("Task.note[0].authorReference.reference", "pa-task-for-referral-management",
                                "not PractitionerRole")],
}

# Our deliberate additions (docs/profiles.md, profiles/source/onco-exercise.fsh), as validate reports them:
# (our profile, path, message part)
OUR_ADDITIONS = {
    ("identifier", "missing required element 'identifier'"),  # all: business identifier for idempotent signing
    ("code", "must match pattern"),  # prescription 229065009 / referral 390893007
    ("performer", "missing required element 'performer'"),  # referral: addressed to one service
    ("", "oe-ref-1"),  # referral: exactly one setting
    ("", "oe-rx-1"),  # prescription: performed by the patient
}
OUR_PROFILE = {"CarePlan": "onco-exercise-careplan", "Goal": "onco-exercise-goal", "Task": "onco-exercise-task"}


@pytest.fixture(scope="module")
def ig_examples() -> dict[str, dict[str, Any]]:
    return instances.examples()


def _errors(resource: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(i.path, i.source, i.message) for i in validate_resource(resource) if i.severity == "error"]


def _ours(resource: dict[str, Any]) -> str:
    if resource["resourceType"] != "ServiceRequest":
        return OUR_PROFILE[resource["resourceType"]]
    exercise = any(c.get("code") == "229065009" for c in resource.get("code", {}).get("coding", []))
    return "onco-exercise-prescription" if exercise else "onco-exercise-referral"


# --- the exporter --------------------------------------------------------------------------------------------


def test_every_ig_example_of_our_parent_profiles_is_exported(ig_examples):
    kinds = {}
    for name, r in ig_examples.items():
        assert r["id"] == name and r["meta"]["profile"][0].startswith(canonical.PA_BASE), name
        kinds[r["resourceType"]] = kinds.get(r["resourceType"], 0) + 1
    assert kinds == {"CarePlan": 5, "Goal": 8, "ServiceRequest": 4, "Task": 9}


def test_the_export_follows_sushi(ig_examples):
    """Spot checks of what SUSHI writes for these rules (values it implies, soft indexes, RuleSets)."""
    cp = ig_examples["ExampleCarePlan"]
    codes = [c["coding"][0]["code"] for c in cp["category"]]
    assert sorted(codes) == ["PhysicalActivity", "assess-plan"]  # required slices of PA CarePlan and US Core CarePlan
    assert [g["reference"] for g in ig_examples["Scen4CarePlanV2"]["goal"]] == ["Goal/Scen4Goal1V2",
                                                                               "Goal/Scen4Goal2V1"]
    sr = ig_examples["Scen2ServiceRequest"]  # two `reasonReference =` rules without [+]: the second one wins
    assert sr["reasonReference"] == [{"reference": "Condition/Scen2ConditionHypertension"}]
    assert sr["requester"] == {"reference": "PractitionerRole/Scen2RoleLopez", "display": "Dr. Lopez"}
    task = ig_examples["ExampleFulfillmentTask"]
    assert task["intent"] == "order"  # the IG's fixed value for a required element the instance leaves out
    out = ig_examples["Scen2TaskFit4LifeV3"]["output"][0]
    assert out["type"]["coding"][0]["code"] == "resulting-activity"  # the slice's pattern
    assert out["valueReference"] == {"reference": "DiagnosticReport/Scen2DiagnosticReport"}
    goal = ig_examples["Scen1GoalV1"]
    assert goal["target"][0]["detailQuantity"] == {"value": 100, "system": "http://unitsofmeasure.org",
                                                   "code": "min/wk"}
    note = ig_examples["Scen1CarePlanV2"]["note"][0]
    assert note["authorReference"]["reference"] == "Practitioner/Scen1PractitionerPatel" and note["time"]


# --- positive cases ------------------------------------------------------------------------------------------


def test_ig_examples_pass_validate_under_the_ig_profiles(ig_examples):
    found = {name: _errors(r) for name, r in ig_examples.items()}
    for name, errors in found.items():
        expected = IG_EXAMPLE_DEFECTS.get(name, [])
        assert [(p, s) for p, s, _ in errors] == [(p, s) for p, s, _ in expected], (name, errors)
        assert all(part in m for (_, _, m), (_, _, part) in zip(errors, expected)), (name, errors)


def test_ig_examples_fail_our_profiles_only_on_our_additions(ig_examples):
    for name, r in ig_examples.items():
        r = copy.deepcopy(r)
        r["meta"]["profile"] = R.profile_urls(_ours(r))
        for path, source, message in _errors(r):
            if (path, source) in {(p, s) for p, s, _ in IG_EXAMPLE_DEFECTS.get(name, [])}:
                continue
            assert source.startswith("onco-exercise-"), (name, path, source, message)  # never an IG/core rule
            element = path.split(".", 1)[1] if "." in path else ""
            assert any(element == e and part in message for e, part in OUR_ADDITIONS), (name, path, message)


def test_medplum_accepts_the_ig_examples(ig_examples):
    """No error. Its only findings are warnings on absolute references ("http://example.org/fhir/Patient/1"),
    which Medplum cannot type-check (it reads the type from the first path segment)."""
    results = medplum.validate(ig_examples.values())
    for (name, r), issues in zip(ig_examples.items(), results):
        for issue in issues:
            assert issue.severity == "warning" and issue.text.startswith('Invalid reference: got "http:"'), \
                (name, str(issue))
    assert sum(len(i) for i in results) > 0  # the absolute references are there, and reported


def _ig_only(resource: dict[str, Any]) -> dict[str, Any]:
    r = copy.deepcopy(resource)
    r["meta"]["profile"] = [u for u in r["meta"]["profile"] if not u.startswith(canonical.BASE)]
    return r


def test_what_we_write_meets_the_ig_profiles_alone():
    """Our examples and the whole cohort corpus, claiming only the IG's profiles: no error (our additions hide
    nothing the IG requires)."""
    ours = [json.loads(p.read_text()) for p in sorted(EXAMPLES_DIR.glob("*.json"))]
    corpus = [w.resource for w in cohort_written() if w.origin in ("prescribe", "revision", "cds-draft")]
    checked = 0
    for r in ours + corpus:
        if any(u.startswith(canonical.PA_BASE) for u in r.get("meta", {}).get("profile", [])):
            assert _errors(_ig_only(r)) == [], r.get("id") or r["resourceType"]
            checked += 1
    assert checked > 500


# --- negative cases: the IG's examples, each broken in one IG rule -------------------------------------------

BREAKS = [  # (example, change, the error it must give: path, message part)
    ("Scen2TaskGetFitV2", lambda r: r.pop("statusReason"), "Task", "pa-taskrm-1"),  # rejected without a reason
    ("Scen2TaskFit4LifeV2", lambda r: r.update(statusReason={"text": "why"}), "Task", "pa-taskrm-1"),
    ("Scen3TaskYMCAV3", lambda r: r["note"][0].pop("time"), "Task.note[0].time", "missing required"),
    ("Scen3TaskYMCAV1", lambda r: r.update(code={"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code",
                                                             "code": "approve"}]}), "Task.code", "pattern"),
    ("Scen2TaskGetFitV1", lambda r: r.update(status="ready"), "Task.status", "pa-task-status"),
    ("ExampleServiceRequest", lambda r: r.pop("reasonReference"), "ServiceRequest", "pa-sr-1"),
    ("Scen1ExerciseRx", lambda r: r.update(doNotPerform=True), "ServiceRequest.doNotPerform", "not allowed"),
    ("Scen1ExerciseRx", lambda r: r.update(requester={"reference": "Organization/x"}),
     "ServiceRequest.requester.reference", "must reference Practitioner or PractitionerRole"),
    ("Scen3ServiceRequest", lambda r: r.update(requester={"display": "Dr. Blackrock"}), "ServiceRequest.requester",
     "PA-ident-1"),
    ("Scen3ServiceRequest", lambda r: r.update(category=[]), "ServiceRequest.category", "missing required"),
    ("Scen1GoalV1", lambda r: (r.pop("description"), r.pop("target")), "Goal", "pa-goal-1"),
    ("Scen1GoalV1", lambda r: r["target"][0]["detailQuantity"].update(system="urn:other"),
     "Goal.target[0].detailQuantity.system", "must be exactly"),
    ("Scen1CarePlanV2", lambda r: r["note"][0].pop("authorReference"), "CarePlan.note[0].author[x]",
     "missing required"),
    ("Scen1CarePlanV2", lambda r: r.update(intent="order"), "CarePlan.intent", "pattern"),
    ("Scen4CarePlanV1", lambda r: r.update(implicitRules="http://example.org/rules"), "CarePlan.implicitRules",
     "not allowed"),
    ("Scen1ExerciseRx", lambda r: r["extension"][0].update(valueReference={"display": "a goal"}),
     "ServiceRequest.extension[0].valueReference.reference", "missing required"),  # pertainsToGoal: reference-rest
    ("Scen1ExerciseRx", lambda r: r["extension"][0].update(valueReference={"reference": "Condition/c1"}),
     "ServiceRequest.extension[0].valueReference.reference", "must reference Goal"),  # pertainsToGoal -> PAGoal
    ("Scen1ExerciseRx", lambda r: (r.pop("occurrencePeriod"), r.update(occurrenceTiming={"repeat": {
        "frequency": 3, "period": 1, "periodUnit": "wk", "duration": 30}})),
     "ServiceRequest.occurrenceTiming.repeat", "tim-1"),  # R4 core: a duration needs its unit
]


@pytest.mark.parametrize("name,change,path,message", BREAKS, ids=[f"{b[0]}-{b[2]}-{b[3]}" for b in BREAKS])
def test_ig_examples_broken_in_one_ig_rule_are_rejected(ig_examples, name, change, path, message):
    r = copy.deepcopy(ig_examples[name])
    assert _errors(r) == [], "the example is valid before it is broken"
    change(r)
    errors = _errors(r)
    assert any(p == path and re.search(message, m) for p, _, m in errors), errors
