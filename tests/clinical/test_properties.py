"""Property tests: a dangerous value reads the same whatever code, unit or shape carries it, and a present but
unreadable safety-relevant value always needs clearance and is shown.

Codes, unit spellings and plausible ranges come from terminology/ (the LOINC variants and the real-world unit
spellings listed there, each with its source), so a new code or spelling added there is tested here at once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.clinical.prescribe import prescribe
from service.clinical.snapshot import build_snapshot, value_reader
from service.terminology import get_terminology
from tests.clinical.support import NOW

TERM = get_terminology()
READER = value_reader(TERM)
FAST = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

# (measure, dangerous canonical range [low, high), the rule that must fire). Ranges stay clear of the threshold
# by a margin so unit rounding cannot move a value across it.
DANGER = [
    ("platelets", (1.0, 19.0), "HEME-PLT-20"),
    ("hemoglobin", (3.0, 7.8), "HEME-HB-8"),
    ("anc", (0.01, 0.48), "HEME-ANC-05"),
    ("temperature", (38.1, 41.5), "FEVER-38"),
]
# A bound that is not itself past the threshold but could hide a value that is ("< 25" platelets could be 5).
SAFE_SIDE_BOUND = {"platelets": 25.0, "hemoglobin": 9.0, "anc": 0.9, "temperature": 37.6}


def _units(measure: str) -> list[str]:
    """Every spelling (UCUM code or real-world text) that converts into the measure's canonical unit."""
    info = TERM.measure(measure)
    spellings = {info.unit} | {u for u, _, _ in info.plausible}
    spellings |= {text for text in TERM.unit_synonyms() if READER.units.affine(
        measure, info.unit, text, info.molar_mass, info.valence) is not None}
    # Only spellings whose unit is itself plausible for this measure: "g/L" is a haemoglobin unit, not a count.
    return sorted(s for s in spellings if READER.units.affine(measure, info.unit, s, info.molar_mass, info.valence))


def _in_unit(measure: str, canonical_value: float, unit: str) -> float:
    info = TERM.measure(measure)
    a, b = READER.units.affine(measure, info.unit, unit, info.molar_mass, info.valence)  # type: ignore[misc]
    return (canonical_value - b) / a


def _patient(observation: dict[str, Any]) -> dict[str, Any]:
    when = (NOW - timedelta(hours=6)).isoformat()
    observation = {"resourceType": "Observation", "id": "probe", "status": "final",
                   "subject": {"reference": "Patient/p1"}, "effectiveDateTime": when, **observation}
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "gender": "female"}},
        {"resource": {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                      "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C50.911"}]}}},
        {"resource": observation}]}


@st.composite
def dangerous_observation(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    measure, (lo, hi), rule = draw(st.sampled_from(DANGER))
    info = TERM.measure(measure)
    system, code = draw(st.sampled_from(info.codes))
    value = draw(st.floats(min_value=lo, max_value=hi, allow_nan=False))
    unit = draw(st.sampled_from(_units(measure)))
    raw = round(_in_unit(measure, value, unit), 6)
    assume(raw > 0)
    shape = draw(st.sampled_from(["quantity-code", "quantity-text", "string", "bound"]))
    if shape == "quantity-code":
        v: dict[str, Any] = {"valueQuantity": {"value": raw, "code": unit, "system": "http://unitsofmeasure.org"}}
    elif shape == "quantity-text":
        v = {"valueQuantity": {"value": raw, "unit": unit}}
    elif shape == "string":
        v = {"valueString": f"{raw:g} {unit}"}
    else:  # a bound open toward danger: "< 25" platelets, "> 37.6" degrees
        bound = round(_in_unit(measure, SAFE_SIDE_BOUND[measure], unit), 6)
        v = {"valueQuantity": {"value": bound, "unit": unit, "comparator": "<" if info.danger == "low" else ">"}}
    return rule, {"code": {"coding": [{"system": system, "code": code}]}, **v}


@FAST
@given(dangerous_observation())
def test_a_dangerous_value_defers_whatever_its_code_unit_or_shape(case: tuple[str, dict[str, Any]]) -> None:
    rule, observation = case
    p = prescribe(build_snapshot(_patient(observation), NOW), NOW)
    assert p.setting == "defer" and p.clearance_required, (observation, p.setting)
    assert rule in {r.rule for r in p.red_flags}, (observation, [r.rule for r in p.red_flags])


SAFETY_MEASURES = sorted(k for k, m in TERM.measures().items() if m.unreadable != "note" and m.codes
                         and not m.unit.startswith("{"))
GARBAGE_UNITS = st.sampled_from(["furlongs", "mg/kg/h/sr", "K", "???", "10*6/uL/s", "pH"])
GARBAGE_STRINGS = st.sampled_from(["see comment", "hemolysed", "pending", "N/A", "++", "clotted sample"])


@st.composite
def unreadable_observation(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    measure = draw(st.sampled_from(SAFETY_MEASURES))
    info = TERM.measure(measure)
    system, code = draw(st.sampled_from(info.codes))
    shape = draw(st.sampled_from(["unit", "string", "implausible", "ratio", "open-range"]))
    if shape == "unit":
        v: dict[str, Any] = {"valueQuantity": {"value": draw(st.floats(0.1, 500)), "unit": draw(GARBAGE_UNITS)}}
        assume(READER.units.affine(measure, info.unit, v["valueQuantity"]["unit"], info.molar_mass,
                                   info.valence) is None)
    elif shape == "string":
        v = {"valueString": draw(GARBAGE_STRINGS)}
    elif shape == "implausible":
        lo, hi = info.canonical_range or (0.0, 1e6)
        v = {"valueQuantity": {"value": hi * 1000 + 1, "code": info.unit, "system": "http://unitsofmeasure.org"}}
    elif shape == "ratio":
        v = {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 2}}}
    else:  # a range with one end only: its dangerous end is unknown
        v = {"valueRange": {"high": {"value": 2, "code": info.unit, "system": "http://unitsofmeasure.org"}}}
    return measure, {"code": {"coding": [{"system": system, "code": code}]}, **v}


@FAST
@given(unreadable_observation())
def test_an_unreadable_safety_value_needs_clearance_and_is_shown(case: tuple[str, dict[str, Any]]) -> None:
    measure, observation = case
    p = prescribe(build_snapshot(_patient(observation), NOW), NOW)
    assert p.clearance_required, observation
    shown = [m for m in p.missing_data if m.source == "Observation/probe"]
    assert shown and measure == shown[0].measure, (observation, p.missing_data)
    assert any("Observation/probe" in r.refs for r in p.rationale)
    if TERM.measure(measure).unreadable == "defer":
        assert p.setting == "defer"
