"""Our profiles are the PA IG's profiles as published (compiled from its FSH) plus deliberate additions, and
`validate` enforces them: IG-invalid data fails, IG-valid data passes, R4 core invariants are checked."""

from __future__ import annotations

import copy

import pytest

from profiles import build, fsh
from service import canonical
from service.fhir import validate as V


def errs(resource):
    return [(i.path, i.message) for i in V.validate_resource(resource) if i.severity == "error"]


def only_error(resource, path, contains=""):
    found = errs(resource)
    assert [p for p, _ in found] == [path], found
    assert contains in found[0][1], found


# --- the profiles are the IG's ---------------------------------------------------------------------------


def test_committed_profiles_are_what_the_fsh_gives():
    assert build.main(["--check"]) == 0


def test_our_profiles_derive_from_the_pa_ig_profiles():
    files = build.build()
    ours = {sd["id"]: sd for sd in files.values() if sd.get("url", "").startswith(canonical.BASE)}
    assert {sd["baseDefinition"] for sd in ours.values()} == {
        canonical.pa_sd_url(p) for p in ("pa-careplan", "pa-goal", "pa-servicerequest",
                                         "pa-task-for-referral-management")}
    for sd in ours.values():  # the validator walks the chain down to US Core
        chain = [p.url for p in V._chain(sd["url"])]
        assert chain[1] == sd["baseDefinition"], chain


RULE_KEYS = ("min", "max", "binding", "type", "constraint", "slicing")


@pytest.mark.parametrize("name", build.PA_PROFILES)
def test_every_ig_rule_reaches_the_validator(name):
    """Each constraining FSH rule of the IG profile is in the StructureDefinition the validator loads."""
    layers = build.sources()
    entity = layers["ig"].entities[name]
    sd = next(sd for sd in build.build().values() if sd.get("name") == name)
    loaded = V._profiles()[sd["url"]]
    rtype = sd["type"]
    for rule in entity.rules:
        text = rule.text.strip()
        eid = build.element_id(rtype, rule.path)
        if text.startswith("obeys "):
            keys = {c[0]["key"] for c in loaded.by_id[eid].constraints}
            assert set(k.strip() for k in text[6:].split(" and ")) <= keys, (name, rule.path)
        elif text.startswith(("only ", "from ", "= ")) or fsh.cardinality(text.split(" ")[0] if text else ""):
            assert eid in loaded.by_id, (name, rule.path, text)


def test_our_additions_never_loosen_the_ig_and_each_has_a_reason():
    layers = build.sources()
    for entity in layers["ours"].of_kind("Profile"):
        unexplained = [r.path for r in entity.rules if not r.why and not r.text.startswith("^slicing")]
        assert unexplained == [], unexplained
    for url in (u for u in V.known_profiles() if u.startswith(canonical.BASE)):
        chain = V._chain(url)
        for el in chain[0].elements:
            for base in chain[1:]:
                b = base.by_id.get(el.id)
                if b is None:
                    continue
                d, bd = el.definition, b.definition
                assert d.get("min", bd.get("min", 0)) >= bd.get("min", 0), (url, el.id)
                if bd.get("max") not in (None, "*"):
                    assert d.get("max", bd["max"]) != "*" and int(d.get("max", bd["max"])) <= int(bd["max"])


# --- IG rules now enforced (each of these passed `validate` before) --------------------------------------


def test_service_request_note_without_author_or_time_fails(by_role):
    sr = by_role["referral"]
    sr["note"] = [{"text": "Prefers mornings."}]
    found = dict(errs(sr))
    assert set(found) == {"ServiceRequest.note[0].author[x]", "ServiceRequest.note[0].time"}, found


def test_note_author_as_a_bare_name_fails(by_role):
    sr = by_role["rx-aerobic"]
    sr["note"][0].pop("authorReference")
    sr["note"][0]["authorString"] = "Dr Ada Example"  # PA IG: author[x] only Reference(Practitioner | Organization)
    only_error(sr, "ServiceRequest.note[0].authorString", "type String not allowed")


def test_display_only_requester_fails_pa_ident_1(by_role):
    sr = by_role["referral"]
    sr["requester"] = {"display": "Ordering clinician"}
    only_error(sr, "ServiceRequest.requester", "PA-ident-1")


def test_organisation_requester_fails_on_a_service_request(by_role):
    sr = by_role["referral"]
    sr["requester"] = {"reference": "Organization/sandbox-hospital"}
    only_error(sr, "ServiceRequest.requester.reference", "must reference Practitioner or PractitionerRole")


def test_implicit_rules_and_modifier_extensions_are_not_allowed(by_role):
    task = by_role["task"]
    task["implicitRules"] = "http://example.org/rules"
    only_error(task, "Task.implicitRules", "not allowed")


def test_goal_target_must_be_a_quantity(by_role):
    goal = by_role["goal-aerobic"]
    goal["target"][0].pop("detailQuantity")
    goal["target"][0]["detailString"] = "150 minutes"
    assert "Goal.target[0].detailQuantity" in dict(errs(goal))


def test_pertains_to_goal_must_be_a_resolvable_reference(by_role):
    sr = by_role["rx-aerobic"]
    sr["extension"][0]["valueReference"] = {"display": "the aerobic goal"}
    only_error(sr, "ServiceRequest.extension[0].valueReference.reference", "missing required element")


def test_care_plan_narrative_status_is_us_core(by_role):
    cp = by_role["careplan"]
    cp["text"]["status"] = "empty"  # US Core 3.1.1 (the PA CarePlan's parent): generated | additional
    only_error(cp, "CarePlan.text.status", "us-core-narrative-status")


# --- IG-valid data is accepted (our old profiles rejected it) --------------------------------------------


def test_ig_valid_variants_pass(by_role):
    sr = by_role["rx-aerobic"]
    sr["category"] = sr["category"][:1]  # no US Core category: the IG's slice is 0..*
    del sr["performer"]  # the IG does not require a performer
    sr["occurrencePeriod"] = sr.pop("occurrenceTiming")["repeat"]["boundsPeriod"]  # dateTime | Period | Timing
    sr["code"]["text"] = "Walking programme"
    assert errs(sr) == []
    cp = by_role["careplan"]
    cp["text"]["status"] = "additional"  # US Core: generated | additional
    assert errs(cp) == []


# --- R4 core invariants ------------------------------------------------------------------------------------


def test_core_invariant_tim_4(by_role):
    sr = by_role["rx-aerobic"]
    sr["occurrenceTiming"]["repeat"]["duration"] = -30
    only_error(sr, "ServiceRequest.occurrenceTiming.repeat", "tim-4")


def test_core_invariant_per_1(by_role):
    cp = by_role["careplan"]
    cp["period"] = {"start": cp["period"]["end"], "end": cp["period"]["start"]}
    only_error(cp, "CarePlan.period", "per-1")


def test_core_invariant_task_inv_1(by_role):
    task = by_role["task"]
    task["lastModified"] = "2026-03-01T00:00:00Z"  # before authoredOn
    only_error(task, "Task", "inv-1")


def test_core_invariants_apply_at_any_depth(by_role):
    sr = copy.deepcopy(by_role["rx-aerobic"])
    sr["occurrenceTiming"]["repeat"]["boundsPeriod"]["end"] = "2020-01-01"
    only_error(sr, "ServiceRequest.occurrenceTiming.repeat.boundsPeriod", "per-1")
