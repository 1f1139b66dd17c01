"""Clearing a deferred plan: every to-resolve line confirmed, a note, and exactly the red flags that deferred it."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest

from service.clinical.clearance import ClearanceError, record_clearance
from service.clinical.prescribe import prescribe
from service.clinical.serialize import prescription_from_json, prescription_to_json
from tests.clinical.support import NOW, run, scenario_names

AT = datetime(2026, 11, 21, 9, 30, tzinfo=timezone.utc)
DEFERRED = [n for n in scenario_names() if run(n)[1].setting == "defer"]


def test_the_fixtures_hold_deferred_plans() -> None:
    assert len(DEFERRED) >= 8  # fever, cytopenias, ECOG 4, new symptom, unreadable red-flag result ...


@pytest.mark.parametrize("name", DEFERRED)
def test_a_clearance_releases_a_supervised_plan(name: str) -> None:
    snap, p, _ = run(name)
    assert p.to_resolve and p.red_flags and not p.components
    c = record_clearance(p, by="Practitioner/dr-1", by_display="Dr One", at=AT, reviewed=list(p.to_resolve),
                         note="Repeat result reviewed in clinic.")
    cleared = prescribe(snap, NOW, p.preferences, clearance=c)
    assert cleared.setting == "supervised" and cleared.components and not cleared.red_flags
    assert not cleared.to_resolve and cleared.clearance == c
    for rule in c.rules:
        reason = next(r for r in cleared.rationale if r.rule == rule)
        assert reason.effect.startswith("cleared by Dr One on 2026-11-21")
    # the precautions a red flag carries are kept: clearing lifts the deferral, not the caution
    assert {x.code for x in p.precautions} <= {x.code for x in cleared.precautions}
    assert prescription_from_json(prescription_to_json(cleared)) == cleared


def test_without_a_clearance_nothing_changes() -> None:
    snap, p, _ = run("fever_celsius")
    assert prescribe(snap, NOW, p.preferences) == p and p.clearance is None


def test_a_clearance_clears_only_the_red_flags_it_names() -> None:
    snap, p, _ = run("junk_resources")
    assert {r.rule for r in p.red_flags} == {"HEME-PLT-20", "DATA-UNREADABLE-RED-FLAG"}
    c = record_clearance(p, by="Practitioner/dr-1", at=AT, reviewed=list(p.to_resolve), note="checked")
    partial = replace(c, rules=("HEME-PLT-20",))
    still = prescribe(snap, NOW, clearance=partial)
    assert still.setting == "defer" and [r.rule for r in still.red_flags] == ["DATA-UNREADABLE-RED-FLAG"]
    assert len(still.to_resolve) == 1 and "unreadable" in still.to_resolve[0].lower()


def test_a_clearance_for_other_red_flags_is_ignored() -> None:
    snap, p, _ = run("fever_celsius")
    other = record_clearance(run("platelets_15_si")[1], by="Practitioner/dr-1", at=AT,
                             reviewed=list(run("platelets_15_si")[1].to_resolve), note="ok")
    again = prescribe(snap, NOW, clearance=other)
    assert again.setting == "defer" and again.clearance is None


@pytest.mark.parametrize("reviewed,note,message", [
    ([], "afebrile", "Confirm each item"),
    (["Something else"], "afebrile", "not among"),
    ("all", "afebrile", "must be a list"),
    (None, "afebrile", "must be a list"),
    ("__all__", "   ", "Say what you reviewed"),
    ("__all__", None, "Say what you reviewed"),
    ("__all__", "x" * 2001, "too long"),
])
def test_an_incomplete_clearance_is_refused(reviewed: object, note: object, message: str) -> None:
    _, p, _ = run("fever_celsius")
    items = list(p.to_resolve) if reviewed == "__all__" else reviewed
    with pytest.raises(ClearanceError, match=message):
        record_clearance(p, by="Practitioner/dr-1", at=AT, reviewed=items, note=note)


def test_a_plan_that_is_not_deferred_has_nothing_to_clear() -> None:
    _, p, _ = run("baseline_breast")
    with pytest.raises(ClearanceError, match="not deferred"):
        record_clearance(p, by="Practitioner/dr-1", at=AT, reviewed=[], note="fine")


def test_a_clearance_needs_a_signed_in_clinician() -> None:
    _, p, _ = run("fever_celsius")
    with pytest.raises(ClearanceError, match="which clinician"):
        record_clearance(p, by="", at=AT, reviewed=list(p.to_resolve), note="fine")
