"""Our profiles are the PA IG's profiles as published (compiled from its FSH) plus deliberate additions, and
`validate` enforces them: IG-invalid data fails, IG-valid data passes, R4 core invariants are checked."""

from __future__ import annotations

import pytest

from profiles import build, fsh
from service import canonical
from service.fhir import validate as V


from tests.fhir_resources.test_validate import errs, only_error  # noqa: E402 - shared assertion helpers


# --- the profiles are the IG's ---------------------------------------------------------------------------


def test_committed_profiles_are_what_the_fsh_gives():
    assert build.main(["--check"]) == 0


def test_our_profiles_derive_from_the_pa_ig_profiles():
    files = build.build()
    ours = {sd["id"]: sd for sd in files.values() if sd.get("url", "").startswith(canonical.BASE)}
    # the clearance Task is a step the IG does not model (docs/profiles.md): core Task, on purpose
    core = {i for i, sd in ours.items() if not sd["baseDefinition"].startswith(canonical.PA_BASE)}
    assert core == {"onco-exercise-clearance-task"}
    assert ours["onco-exercise-clearance-task"]["baseDefinition"] == "http://hl7.org/fhir/StructureDefinition/Task"
    assert {sd["baseDefinition"] for i, sd in ours.items() if i not in core} == {
        canonical.pa_sd_url(p) for p in ("pa-careplan", "pa-goal", "pa-servicerequest",
                                         "pa-task-for-referral-management")}
    for i, sd in ours.items():  # the validator walks the chain down to US Core
        if i in core:
            continue
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


def _put(resource, path, value):
    """Set (or, with value None, remove) the element at a dotted path such as `note.0.authorString`."""
    *parents, last = path.split(".")
    node = resource
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is None:
        node.pop(last)
    else:
        node[last] = value


BROKEN = [  # (role, [(path, value or None to remove)], error path, message part): each passed `validate` before
    ("referral", [("note.0.authorReference", None), ("note.0.authorString", "Dr Ada Example")],
     "ServiceRequest.note[0].authorString", "type String not allowed"),  # author[x] only Reference
    ("referral", [("requester", {"display": "Ordering clinician"})], "ServiceRequest.requester", "PA-ident-1"),
    ("referral", [("requester", {"reference": "Organization/sandbox-hospital"})],
     "ServiceRequest.requester.reference", "must reference Practitioner or PractitionerRole"),
    ("task", [("implicitRules", "http://example.org/rules")], "Task.implicitRules", "not allowed"),
    ("careplan", [("text.status", "empty")], "CarePlan.text.status", "us-core-narrative-status"),
    ("rx-aerobic", [("extension.0.valueReference", {"display": "the aerobic goal"})],
     "ServiceRequest.extension[0].valueReference.reference", "missing required element"),  # reference-rest
    # R4 core invariants
    ("rx-aerobic", [("occurrenceTiming.repeat.duration", -30)], "ServiceRequest.occurrenceTiming.repeat", "tim-4"),
    ("careplan", [("period", {"start": "2026-05-25", "end": "2026-03-02"})], "CarePlan.period", "per-1"),
    ("task", [("lastModified", "2026-03-01T00:00:00Z")], "Task", "inv-1"),  # before authoredOn
    ("rx-aerobic", [("occurrenceTiming.repeat.boundsPeriod.end", "2020-01-01")],
     "ServiceRequest.occurrenceTiming.repeat.boundsPeriod", "per-1"),  # invariants apply at any depth
]


@pytest.mark.parametrize("role,changes,path,message", BROKEN, ids=lambda x: x if isinstance(x, str) else None)
def test_ig_and_core_rules_are_enforced(by_role, role, changes, path, message):
    resource = by_role[role]
    for where, value in changes:
        _put(resource, where, value)
    only_error(resource, path, message)


def test_goal_target_must_be_a_quantity(by_role):
    goal = by_role["goal-aerobic"]
    goal["target"][0].pop("detailQuantity")
    goal["target"][0]["detailString"] = "150 minutes"
    assert "Goal.target[0].detailQuantity" in dict(errs(goal))


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
