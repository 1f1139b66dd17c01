"""Real-world scenario tests (issue 11): patients coded the way real EHRs code them, each naming its source.

The Bundles and the manifest tests/fixtures/realworld/cases.json are built by tests/fixtures/build_realworld.py
from codes verified in public sources (VSAC expansions, OHDSI concept sets, CMS/WHO code tables, HL7 IG examples).
The expectations are the clinical reading of exercise-oncology.md, written independently of the code: where the
core disagrees, the test fails and that is a finding, not a reason to change the expectation.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from service.clinical.model import Prescription
from service.clinical.prescribe import prescribe
from service.clinical.rules import RULES
from service.clinical.snapshot import build_snapshot_report
from tests.clinical.support import NOW, fired, run, scenario_names
from tests.clinical.test_edits import RULES_EXERCISED_BY_EDIT_TESTS
from tests.clinical.test_scenarios import S as BUNDLE_SCENARIOS

REALWORLD = Path(__file__).resolve().parent.parent / "fixtures" / "realworld"
MANIFEST: dict[str, dict[str, Any]] = json.loads((REALWORLD / "cases.json").read_text(encoding="utf-8"))
SETTINGS = {"home-based", "community", "supervised", "defer"}
PREDICATE_RULES = {r.id for r in RULES if r.predicate is not None}


@lru_cache(maxsize=None)
def prescription(name: str) -> Prescription:
    data = json.loads((REALWORLD / f"{name}.json").read_text(encoding="utf-8"))
    snapshot, _issues = build_snapshot_report(data, NOW)
    return prescribe(snapshot, NOW, None)


def test_manifest_and_bundles_agree() -> None:
    bundles = sorted(p.stem for p in REALWORLD.glob("*.json") if p.name != "cases.json")
    assert bundles == sorted(MANIFEST)
    assert len(MANIFEST) >= 110


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_every_case_names_its_source(name: str) -> None:
    case = MANIFEST[name]
    assert isinstance(case.get("source"), str) and case["source"].strip(), name
    assert isinstance(case.get("description"), str) and case["description"].strip(), name
    exp = case["expect"]
    known = PREDICATE_RULES | {r.id for r in RULES}
    assert set(exp["fires"]) <= known and set(exp["absent"]) <= known, "unknown rule id in the manifest"
    assert not set(exp["fires"]) & set(exp["absent"]), "a rule cannot be expected to fire and stay silent"
    assert exp.get("setting") in SETTINGS | {None}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_realworld_case(name: str) -> None:
    exp = MANIFEST[name]["expect"]
    p = prescription(name)
    rules = fired(p)
    why = f"{name}: {MANIFEST[name]['description']}\nfired: {sorted(rules)}\n" + "\n".join(
        f"  {r.rule}: {r.finding}" for r in p.rationale if r.rule not in ("BASE-ACSM-2019", "SETTING-TRIAGE"))
    assert p.eligible is exp["eligible"], why
    if "setting" in exp:
        assert p.setting == exp["setting"], why
    if "clearance" in exp:
        assert p.clearance_required is exp["clearance"], why
    missing = set(exp["fires"]) - rules
    assert not missing, f"expected to fire but silent: {sorted(missing)}\n{why}"
    unexpected = set(exp["absent"]) & rules
    assert not unexpected, f"expected silent but fired: {sorted(unexpected)}\n{why}"
    codes = {x.code for x in p.precautions}
    assert set(exp.get("precautions", ())) <= codes, f"precautions {sorted(codes)}\n{why}"
    sources = {m.source for m in p.missing_data if m.source}
    for ref in exp.get("unreadable", ()):
        assert ref in sources, f"{ref} not reported as present-but-unreadable (missingData sources {sorted(sources)})"
    if p.setting == "defer":
        assert p.clearance_required and not p.components, why


def _observed() -> tuple[dict[str, int], dict[str, int]]:
    """How many cases (real-world and committed bundles) actually fire / leave silent each predicate rule."""
    fires = {rid: 0 for rid in PREDICATE_RULES}
    silent = {rid: 0 for rid in PREDICATE_RULES}
    results = [fired(prescription(n)) for n in MANIFEST] + [fired(run(n)[1]) for n in scenario_names()]
    for rules in results:
        for rid in PREDICATE_RULES:
            if rid in rules:
                fires[rid] += 1
            else:
                silent[rid] += 1
    return fires, silent


def test_every_rule_is_expected_to_fire_and_to_stay_silent_somewhere() -> None:
    """The manifests (real-world cases plus the committed scenario bundles) declare every rule both ways."""
    declared_fire = set().union(*(set(c["expect"]["fires"]) for c in MANIFEST.values()),
                                *(e.get("fires", set()) for e in BUNDLE_SCENARIOS.values()))
    declared_silent = set().union(*(set(c["expect"]["absent"]) for c in MANIFEST.values()),
                                  *(e.get("absent", set()) for e in BUNDLE_SCENARIOS.values()))
    assert PREDICATE_RULES - declared_fire - RULES_EXERCISED_BY_EDIT_TESTS == set(), "rules no case expects to fire"
    assert PREDICATE_RULES - declared_silent == set(), "rules no case expects to stay silent"


def test_every_rule_actually_fires_and_stays_silent_somewhere() -> None:
    fires, silent = _observed()
    assert [rid for rid, n in sorted(fires.items()) if n == 0] == [], "rules that never fired on any case"
    assert [rid for rid, n in sorted(silent.items()) if n == 0] == [], "rules that fired on every case"


def test_realworld_cases_alone_fire_most_rules() -> None:
    """Outside data, not only our own fixtures, must reach the red-flag and issue-11 rules."""
    required = {"FEVER-38", "HEME-PLT-20", "HEME-HB-8", "HEME-ANC-05", "HEME-WBC-05", "HEME-WBC-15",
                "HEME-WBC-NO-DIFF", "FEVER-CONDITION", "FEBRILE-NEUTROPENIA", "VTE-ACUTE", "VTE-ANTICOAGULATED",
                "CARD-MYOCARDITIS", "IMMUNO-MYOSITIS", "MSCC", "HYPERCALCAEMIA", "HYPERCALCAEMIA-SEVERE",
                "DATA-UNREADABLE-RED-FLAG", "DATA-CRITICAL-FLAG", "CARD-LVEF-40", "RESP-SPO2-90", "BRAIN-METS",
                "FRACTURE-PATHOLOGICAL", "SEIZURE", "OSTOMY", "CENTRAL-LINE", "HSCT", "PAEDIATRIC", "PREGNANCY",
                "CACHEXIA", "CARD-DISEASE", "CARD-DISEASE-ACTIVE", "TX-STALE-ORDER", "TX-CHEMO", "TX-RADIO",
                "TX-IMMUNO", "TX-ENDOCRINE", "TX-SURGERY-6W", "CARD-TOXIC", "BONE-METS", "METASTATIC"}
    declared = set().union(*(set(c["expect"]["fires"]) for c in MANIFEST.values()))
    assert required - declared == set()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_the_generated_plan_passes_its_own_edit_checks(name: str) -> None:
    """One definition of the limits (issue 12): the plan the rules build is never refused by the edit check."""
    from service.clinical.edits import apply_edits
    from service.clinical.serialize import component_to_json

    p = prescription(name)
    if not p.eligible or p.setting == "defer":
        return
    edits = {"setting": p.setting, "components": [component_to_json(c) for c in p.components]}
    assert apply_edits(p, edits, NOW).problems == []
