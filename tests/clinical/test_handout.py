"""The patient handout read as a patient would: over every fixture scenario and every real-world case (their
sources are in tests/fixtures/realworld/cases.json), no jargon, no codes, no repeated lines, agreeing numbers,
the planned days, who to contact, and what happens next for a deferred plan."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from service import canonical
from service.clinical.handout import Handout, handout_for, patient_wording
from service.clinical.model import Prescription
from service.clinical.serialize import preferences_from_json
from service.terminology import get_terminology
from tests.clinical.support import run, scenario_names
from tests.clinical.test_realworld import MANIFEST, prescription

JARGON = re.compile(r"\b(RPE|6MWT|HRR|ECOG|ANC|WBC|Hb|PLT|TUG|EVS|FITT|x10\^9|min/wk|d/wk|x/week|aerobic|"
                    r"resistance training|intensity|tolerance|volume|clearance required|LOINC|SNOMED)\b")
RULE_ID = re.compile(r"\b[A-Z]{2,}(?:-[A-Z0-9]+)+\b")
CODE = re.compile(r"\b\d{6,}\b|\{|\}|urn:|https?://")
BAD_PLURAL = re.compile(r"\b1 (times|sets|days|minutes|repetitions)\b")
PLANS = [("scenario", n) for n in scenario_names()] + [("realworld", n) for n in sorted(MANIFEST)]


def _plan(kind: str, name: str) -> Prescription:
    return run(name)[1] if kind == "scenario" else prescription(name)


def _handout(p: Prescription, **kw: str) -> Handout:
    return handout_for(p, service_name="Riverside Exercise Oncology Service", service_contact="+1-555-0210",
                       care_team_contact="+1-555-0199", precaution_text=patient_wording([x.code for x in p.precautions]),
                       **kw)


def _lines(h: Handout) -> list[str]:
    """Everything the patient reads (the stop rules are the clinical core's own plain sentences)."""
    out = [h.where, *(h.effort_scale and [h.effort_scale] or []), *h.goals, *h.building_up, *h.meanwhile,
           *h.next_steps, *h.contacts]
    for a in h.activities:  # one item per activity (its parts may be alike across activities: "easy" twice)
        out.append(" ".join(x for x in (a.title, a.what, a.how_often, a.how_hard, a.examples) if x))
    for why, avoid in h.take_care:
        out += [why, *avoid]
    return [x for x in out if x]


@pytest.mark.parametrize("kind,name", PLANS)
def test_the_handout_reads_plainly(kind: str, name: str) -> None:
    p = _plan(kind, name)
    if not p.eligible:
        return
    h = _handout(p)
    lines = _lines(h)
    text = " ".join(lines)
    assert not JARGON.search(text), JARGON.search(text)
    assert not RULE_ID.search(text), RULE_ID.search(text)
    assert not CODE.search(text), CODE.search(text)
    assert not BAD_PLURAL.search(text), BAD_PLURAL.search(text)
    keys = [" ".join(x.lower().split()) for x in lines]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]
    for a in h.activities:  # an example activity is named once
        examples = [e.strip().lower() for e in (a.examples or "").split(",") if e.strip()]
        assert len(examples) == len(set(examples))
    assert any("+1-555-0199" in c for c in h.contacts) and any("+1-555-0210" in c for c in h.contacts)
    if p.setting == "defer":
        assert h.on_hold and not h.activities and not h.week
        assert any("pending medical clearance" in s for s in h.next_steps)
        assert any("contact you" in s for s in h.next_steps)
    else:
        assert not h.on_hold and len(h.activities) == len(p.components)


@pytest.mark.parametrize("name", [n for n in scenario_names() if run(n)[1].components])
def test_building_up_agrees_with_the_plan(name: str) -> None:
    p = run(name)[1]
    h = _handout(p)
    aerobic = next((c for c in p.components if c.type == "aerobic"), None)
    text = " ".join(h.building_up)
    if aerobic is None:
        return
    goal = next((t.value for t in p.targets if t.measure == "aerobic-minutes-per-week"), 150)
    if aerobic.frequency_per_week * aerobic.minutes_per_session >= goal:
        assert f"at least {goal} minutes a week" in text
    else:
        times = f"{aerobic.frequency_per_week} time{'s' if aerobic.frequency_per_week != 1 else ''} a week"
        assert f"Weeks 1 and 2: {times}, {aerobic.minutes_per_session} minutes each time." in text
        slow = any("every 2 weeks" in line for line in p.progression)
        assert ("every 2 weeks" in text) == slow  # the same pace as the clinician's progression


def test_the_planned_days_spread_the_sessions() -> None:
    _, p, _ = run("baseline_breast")
    p = replace(p, preferences=preferences_from_json({"daysAvailable": ["mon", "wed", "fri", "sat"]}))
    h = _handout(p)
    days = dict(h.week)
    assert set(days) <= {"Monday", "Wednesday", "Friday", "Saturday"}
    for c in p.components:
        title = {"aerobic": "moving", "resistance": "strength exercises", "flexibility": "stretching",
                 "balance": "balance exercises"}[c.type]
        assert sum(title in what for what in days.values()) == min(c.frequency_per_week, 4)
    assert _handout(replace(p, preferences=None)).week == ()


def test_sets_agree_in_number() -> None:
    _, p, _ = run("bone_metastases")
    strength = next(a for a in _handout(p).activities if a.title == "Strength exercises")
    assert "1 set of" in strength.how_often


def test_every_precaution_has_patient_wording() -> None:
    term = get_terminology()
    for code in term.code_system_codes(canonical.CS_PRECAUTION):
        text = term.designation(canonical.CS_PRECAUTION, code, "patient")
        assert text and not JARGON.search(text), (code, text)


def test_without_contacts_the_handout_still_says_whom_to_call() -> None:
    _, p, _ = run("baseline_breast")
    h = handout_for(p, service_name="Riverside Exercise Oncology Service")
    assert "appointment letter" in h.contacts[0] and "will contact you" in h.contacts[1]


def test_the_example_week_uses_the_patients_days() -> None:
    from service.clinical.prescribe import example_week

    assert example_week(150, None) == "30 minutes on 5 days"
    assert example_week(150, 3) == "50 minutes on 3 days"
    assert example_week(150, 2) == "60 minutes on 2 days, plus short walks on other days"
    assert example_week(150, 1) == "60 minutes on 1 day, plus short walks on other days"
    snap, _, _ = run("baseline_breast")
    from service.clinical.prescribe import prescribe
    from tests.clinical.support import NOW

    p = prescribe(snap, NOW, preferences_from_json({"daysAvailable": ["tue", "sat"]}))
    assert any("60 minutes on 2 days" in line for line in p.progression)
    assert any("60 minutes on 2 days" in line for line in _handout(p).building_up)
