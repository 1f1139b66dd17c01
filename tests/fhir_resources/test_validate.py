"""validate.py: what is valid passes; each kind of breakage fails with the right path."""

import copy
import json

import pytest

from service import canonical
from service.fhir import validate as V
from service.fhir.resources import transaction_bundle
from service.paths import PROFILES_DIR
from tests.fhir_resources.conftest import load

EXAMPLES = sorted((PROFILES_DIR / "examples").glob("*.json"))
CONFORMANCE = sorted(PROFILES_DIR.glob("*.json")) + sorted((PROFILES_DIR / "valuesets").glob("*.json"))


def errs(resource):
    return [(i.path, i.message) for i in V.validate_resource(resource) if i.severity == "error"]


def paths(resource):
    return {i.path for i in V.validate_resource(resource) if i.severity == "error"}


def only_error(resource, path, contains=""):
    found = errs(resource)
    assert [p for p, _ in found] == [path], found
    assert contains in found[0][1], found
    return found[0][1]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path):
    assert errs(load(path)) == []


def test_one_example_per_profile():
    claimed = {load(p)["meta"]["profile"][0] for p in EXAMPLES}
    ours = {u for u in V.known_profiles() if u.startswith(canonical.BASE)}
    assert claimed == ours and len(EXAMPLES) == len(claimed)


@pytest.mark.parametrize("path", CONFORMANCE, ids=lambda p: p.name)
def test_structure_definitions_value_sets_and_capability_statement_are_valid_r4(path):
    assert errs(load(path)) == []


def test_profiles_derive_from_the_pa_ig_and_every_required_binding_resolves():
    for path in PROFILES_DIR.glob("StructureDefinition-*.json"):
        sd = load(path)
        assert sd["url"] == canonical.sd_url(sd["id"]) and sd["derivation"] == "constraint"
        # the clearance Task is a step the PA IG does not model (docs/profiles.md says why): core Task
        if sd["type"] in ("CarePlan", "Goal", "ServiceRequest", "Task") and sd["id"] != "onco-exercise-clearance-task":
            assert sd["baseDefinition"].startswith(canonical.PA_BASE + "/StructureDefinition/pa-")
        for el in sd["differential"]["element"]:
            b = el.get("binding")
            if b and b["strength"] == "required":
                # a made-up code is rejected (False), i.e. the value set is known here (None: unchecked)
                assert V._in_valueset(b["valueSet"], "http://example.org", "made-up") is False, b["valueSet"]


# --- schema layer ----------------------------------------------------------------------------------------


def test_bad_status_code_is_a_schema_error(by_role):
    task = by_role["task"]
    task["status"] = "bogus"
    msg = only_error(task, "Task.status", "'bogus' is not one of")
    assert "requested" in msg


def test_unknown_element_is_reported_at_its_path(by_role):
    sr = by_role["rx-aerobic"]
    sr["occurrenceTiming"]["repeat"]["freqency"] = 3
    only_error(sr, "ServiceRequest.occurrenceTiming.repeat.freqency", "unknown element")


def test_bad_primitive_format(by_role):
    sr = by_role["rx-aerobic"]
    sr["authoredOn"] = "2nd of March"
    only_error(sr, "ServiceRequest.authoredOn", "does not match")


def test_unknown_resource_type_and_non_resources():
    assert errs({"resourceType": "Exercise"}) == [("resourceType", "unknown FHIR R4 resource type 'Exercise'")]
    assert errs(["not", "a", "resource"])[0][0] == "(root)"


# --- model layer -----------------------------------------------------------------------------------------


def test_model_layer_catches_what_the_schema_does_not(by_role):
    task = by_role["task"]
    del task["intent"]  # the R4 JSON Schema does not list intent as required; the R4B model does
    assert "Task.intent" in paths(task)


# --- profile layer: cardinality, fixed/pattern, bindings, types ------------------------------------------


def test_missing_required_element(by_role):
    sr = by_role["referral"]
    del sr["requester"]
    only_error(sr, "ServiceRequest.requester", "missing required element 'requester'")


def test_missing_nested_required_element(by_role):
    sr = by_role["referral"]
    del sr["note"][0]["time"]  # PA IG: every ServiceRequest note has a time
    only_error(sr, "ServiceRequest.note[0].time", "missing required element")


def test_wrong_fixed_value(by_role):
    cp = by_role["careplan"]
    cp["intent"] = "order"
    only_error(cp, "CarePlan.intent", 'must match pattern "plan"')
    goal = by_role["goal-aerobic"]
    goal["target"][0]["detailQuantity"]["system"] = "http://example.org/units"
    only_error(goal, "Goal.target[0].detailQuantity.system", 'must be exactly "http://unitsofmeasure.org"')


def test_wrong_pattern_code(by_role):
    sr = by_role["rx-aerobic"]
    sr["code"]["coding"][0]["code"] = "390893007"  # in the value set, but a referral code on a prescription
    only_error(sr, "ServiceRequest.code", "must match pattern")


def test_missing_pattern_slice(by_role):
    goal = by_role["goal-aerobic"]
    goal["category"] = [{"text": "Exercise"}]
    only_error(goal, "Goal.category", "slice 'PA' of category: expected at least 1")


def test_prohibited_element(by_role):
    sr = by_role["referral"]
    sr["doNotPerform"] = True
    only_error(sr, "ServiceRequest.doNotPerform", "not allowed")


def test_too_many(by_role):
    sr = by_role["referral"]
    sr["performer"].append({"reference": "Organization/other"})
    only_error(sr, "ServiceRequest.performer[1]", "at most 1")


def test_status_outside_required_binding(by_role):
    sr = by_role["rx-aerobic"]
    sr["status"] = "unknown"  # a request-status code, excluded by the PA IG
    only_error(sr, "ServiceRequest.status", "not in value set pa-servicerequest-status")


needs_terminology = pytest.mark.skipif(not V.binding_checks_available(),
                                       reason="service.terminology not importable: our value sets unchecked")


@needs_terminology
def test_precaution_code_outside_required_binding(by_role):
    sr = by_role["rx-aerobic"]
    sr["orderDetail"][1]["coding"][0]["code"] = "no-such-precaution"
    only_error(sr, "ServiceRequest.orderDetail[1].coding[0].code", "precaution")


@needs_terminology
def test_setting_code_outside_required_binding(by_role):
    sr = by_role["referral"]
    sr["orderDetail"][0]["coding"][0]["code"] = "gym"
    found = errs(sr)
    assert ("ServiceRequest.orderDetail[0].coding[0].code" in [p for p, _ in found]), found


def test_referral_code_is_our_pattern(by_role):
    sr = by_role["referral"]
    sr["code"]["coding"][0]["code"] = "73761001"  # colonoscopy: the IG's binding is extensible, our pattern is not
    only_error(sr, "ServiceRequest.code", "must match pattern")


def test_reference_to_the_wrong_type(by_role):
    task = by_role["task"]
    task["focus"] = {"reference": "Patient/p1"}
    only_error(task, "Task.focus.reference", "must reference ServiceRequest")


def test_profile_claimed_by_the_wrong_resource_type(by_role):
    goal = by_role["goal-aerobic"]
    goal["meta"]["profile"] = [canonical.sd_url("onco-exercise-task")]
    only_error(goal, "Goal.meta.profile", "is for Task")


def test_profiles_are_selected_by_meta_profile(by_role):
    sr = by_role["referral"]
    del sr["requester"]
    sr["meta"]["profile"] = ["http://example.org/StructureDefinition/other"]
    assert errs(sr) == []  # base R4 only: requester is optional there


# --- invariants ------------------------------------------------------------------------------------------


def test_pa_sr_1(by_role):
    sr = by_role["rx-aerobic"]
    del sr["reasonReference"], sr["reasonCode"]
    only_error(sr, "ServiceRequest", "pa-sr-1")


def test_pa_goal_1(by_role):
    goal = by_role["goal-aerobic"]
    del goal["description"], goal["target"]
    found = errs(goal)
    assert ("Goal", "pa-goal-1: Either a description or a target SHALL be provided (or both)") in found


@pytest.mark.parametrize("status,reason", [("rejected", False), ("on-hold", False), ("requested", True)])
def test_pa_taskrm_1(by_role, status, reason):
    task = by_role["task"]
    task["status"] = status
    if reason:
        task["statusReason"] = {"text": "patient declined"}
    only_error(task, "Task", "pa-taskrm-1")


def test_pa_taskrm_1_satisfied_with_a_reason(by_role):
    task = by_role["task"]
    task["status"], task["statusReason"] = "rejected", {"text": "no capacity"}
    assert errs(task) == []


def test_our_invariants(by_role):
    sr = by_role["rx-aerobic"]
    sr["performer"] = [{"reference": "Practitioner/sandbox-clinician"}]
    only_error(sr, "ServiceRequest", "oe-rx-1")
    prov = by_role["provenance"]
    prov["entity"] = [{"role": "source", "what": {"display": "something"}}]
    only_error(prov, "Provenance", "oe-prov-2")


# --- bundles and assert_valid ----------------------------------------------------------------------------


def test_bundle_entries_are_validated_with_prefixed_paths(entries):
    broken = copy.deepcopy(entries)
    sr = next(i for i, e in enumerate(broken) if e["resource"]["resourceType"] == "ServiceRequest")
    task = next(i for i, e in enumerate(broken) if e["resource"]["resourceType"] == "Task")
    broken[sr]["resource"]["status"] = "unknown"
    del broken[task]["resource"]["owner"]
    bundle = transaction_bundle(broken)
    assert paths(bundle) == {f"Bundle.entry[{sr}].resource.status", f"Bundle.entry[{task}].resource.owner"}


def test_bundle_references_must_resolve(entries):
    bundle = transaction_bundle(entries[:-2])  # drops the Task and the Provenance: nothing points at them
    assert errs(bundle) == []
    bundle = transaction_bundle(entries[1:])  # drops the CarePlan that the requests are based on
    found = errs(bundle)
    assert found and all("does not resolve within the Bundle" in m for _, m in found)
    first_sr = next(i for i, e in enumerate(entries[1:]) if e["resource"]["resourceType"] == "ServiceRequest")
    assert f"Bundle.entry[{first_sr}].resource.basedOn[0].reference" in [p for p, _ in found]


def test_assert_valid_raises_with_issues(by_role):
    V.assert_valid(by_role["careplan"])
    del by_role["careplan"]["subject"]
    with pytest.raises(V.ValidationFailed) as exc:
        V.assert_valid(by_role["careplan"])
    assert "CarePlan.subject" in [i.path for i in exc.value.issues]
    assert "CarePlan.subject" in str(exc.value)


def test_issue_is_printable():
    issue = V.Issue("error", "Task.status", "bad")
    assert str(issue) == "error: Task.status: bad" and json.dumps(issue.__dict__)


@pytest.mark.parametrize("div,message", [
    ("<div>no namespace</div>", "XHTML namespace"),
    ('<div xmlns="http://www.w3.org/1999/xhtml"><p>unclosed</div>', "well-formed"),
    ('<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></div>', "not allowed"),
    ('<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">hi</p></div>', "not allowed"),
    ('<div xmlns="http://www.w3.org/1999/xhtml">  </div>', "txt-2"),
])
def test_narrative_must_be_safe_xhtml(by_role, div, message):
    cp = by_role["careplan"]
    cp["text"]["div"] = div
    only_error(cp, "CarePlan.text.div", message)


async def test_warm_up_lifespan_part():
    async with V.warm_up_lifespan(None):
        assert V._schema_defs.cache_info().currsize == 1 and V._profiles.cache_info().currsize == 1


def test_examples_are_what_the_builders_write():
    from tests.fhir_resources.examples import examples

    stale = [p.name for p, resource in examples().items() if load(p) != resource]
    assert stale == [], "run: python -m tests.fhir_resources.examples"
