"""Reading values the way labs send them: UCUM codes, real-world unit spellings, comparators, numeric strings,
missing units, implausible numbers and critical flags (service/clinical/values.py, ucum.py)."""

from __future__ import annotations

from typing import Any

import pytest

from service.clinical.snapshot import value_reader
from service.clinical.values import interpretation_flag
from service.terminology import get_terminology

TERM = get_terminology()
READER = value_reader(TERM)


def read(measure: str, holder: dict[str, Any]) -> Any:
    return READER.read(TERM.measure(measure), holder)


def q(value: float, unit: str | None = None, **extra: Any) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value, **extra}
    if unit is not None:
        quantity["unit"] = unit
    return {"valueQuantity": quantity}


def _measure_for(ucum: str) -> str | None:
    """A measure whose canonical unit this UCUM code converts into (to test a spelling in context)."""
    for key, info in TERM.measures().items():
        if info.unit.startswith("{"):
            continue
        if READER.units.affine(f"probe:{key}", info.unit, ucum, info.molar_mass, info.valence) is not None:
            return key
    return None


SYNONYMS = sorted((text, target) for text, targets in TERM.unit_synonyms().items() for target in targets)


@pytest.mark.parametrize("text,target", SYNONYMS, ids=[f"{t}->{u}" for t, u in SYNONYMS])
def test_every_unit_spelling_reads_like_its_ucum_code(text: str, target: str) -> None:
    """Each spelling in the ConceptMap converts exactly as the UCUM unit it stands for, for some measure."""
    measure = _measure_for(target)
    if measure is None:
        # a spelling of a unit no measure uses today (kept for the patient companion's data); it must parse
        assert READER.units.candidates(text), text
        return
    info = TERM.measure(measure)
    by_text = READER.units.affine(measure, info.unit, text, info.molar_mass, info.valence)
    by_code = READER.units.affine(measure, info.unit, target, info.molar_mass, info.valence)
    assert by_code is not None and by_text is not None, (text, target, measure)
    # Where a spelling names several units (G/L), the measure decides: it must match one of them.
    alternatives = [READER.units.affine(measure, info.unit, t, info.molar_mass, info.valence)
                    for t in TERM.unit_synonyms()[text]]
    assert by_text in alternatives


@pytest.mark.parametrize("measure,holder,expected", [
    ("platelets", q(14, "x10^9/L"), 14), ("platelets", q(14, "K/uL"), 14), ("platelets", q(14, "x10E3/uL"), 14),
    ("platelets", q(14, "10.3/uL"), 14), ("platelets", q(14000, "cells/mm3"), 14), ("platelets", q(14, "G/L"), 14),
    ("platelets", q(14, "thou/uL"), 14), ("platelets", q(14000, "/uL"), 14),
    ("hemoglobin", q(75, "G/L"), 7.5), ("hemoglobin", q(7.5, "gm/dL"), 7.5), ("hemoglobin", q(4.65, "mmol/L"), 7.49),
    ("temperature", q(101.5, "deg F"), 38.61), ("temperature", q(38.6, "deg C"), 38.6),
    ("temperature", q(38.6, "°C"), 38.6), ("temperature", q(311.75, "K"), 38.6),
    ("calcium", q(12.8, "mg/dL"), 3.19), ("calcium", q(6.4, "mEq/L"), 3.2),
])
def test_real_world_units(measure: str, holder: dict[str, Any], expected: float) -> None:
    value, comparator = read(measure, holder)
    assert value == pytest.approx(expected, abs=0.01) and comparator is None


def test_ucum_code_wins_over_unit_text_and_either_may_be_missing() -> None:
    assert read("platelets", {"valueQuantity": {"value": 14, "code": "10*9/L", "unit": "billion per litre"}}) == (14, None)
    assert read("platelets", {"valueQuantity": {"value": 14, "unit": "10*9/L"}}) == (14, None)


@pytest.mark.parametrize("holder,expected", [
    (q(20, "10*3/uL", comparator="<"), (20, "<")),
    ({"valueString": "<20"}, (20, "<")),
    ({"valueString": "< 20 x10^9/L"}, (20, "<")),
    ({"valueString": "<=20 K/uL"}, (20, "<=")),
    ({"valueString": "≤ 20"}, (20, "<=")),
    ({"valueString": "14"}, (14, None)),
    ({"valueString": " 14,5 "}, (14.5, None)),
    ({"valueInteger": 14}, (14, None)),
])
def test_comparators_and_numeric_strings(holder: dict[str, Any], expected: tuple[float, str | None]) -> None:
    value, comparator = read("platelets", holder)
    assert (value, comparator) == (pytest.approx(expected[0]), expected[1])


@pytest.mark.parametrize("measure,holder,problem", [
    ("platelets", q(14, "furlongs"), "unit"),
    ("platelets", {"valueString": "see comment"}, "not a number"),
    ("platelets", {"valueString": "clumped"}, "not a number"),
    ("platelets", q(14, "10*3/uL", comparator="~"), "comparator"),
    ("platelets", {"valueQuantity": {"unit": "10*3/uL"}}, "no number"),
    ("platelets", {"valueRange": {"low": {"value": 10, "unit": "10*3/uL"}}}, "both"),
    ("platelets", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 2}}}, "single number"),
    ("temperature", q(386, "Cel"), "implausible"),
    ("temperature", q(386), "implausible"),
    ("hemoglobin", q(7.5), "more than one unit"),  # g/dL and mmol/L are both plausible: not guessed
    ("hemoglobin", q(7.5, "mEq/L"), "unit"),  # equivalents mean nothing for haemoglobin
    ("ecog", {"valueCodeableConcept": {"text": "ambulatory"}}, "score"),
    ("ecog", {"valueInteger": 9}, "implausible"),
])
def test_present_but_unreadable_values_come_back_as_problems(measure: str, holder: dict[str, Any],
                                                             problem: str) -> None:
    got = read(measure, holder)
    assert isinstance(got, str) and problem in got, got


@pytest.mark.parametrize("measure,value,expected", [
    ("temperature", 38.6, 38.6),  # only °C makes 38.6 plausible
    ("temperature", 101.3, 38.5),  # only °F makes 101.3 plausible
    ("platelets", 14, 14),  # 14 per µL is not a platelet count; 14 x10^9/L is
    ("platelets", 140000, 140),  # 140,000 x10^9/L is impossible; per µL it is a normal count
])
def test_a_missing_unit_is_inferred_only_when_one_unit_fits(measure: str, value: float, expected: float) -> None:
    got = read(measure, q(value))
    assert isinstance(got, tuple) and got[0] == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("measure,holder,expected", [
    ("lvef", {"valueString": "30-35%"}, 30),  # low ejection fraction is the danger: the low end counts
    ("lvef", {"valueRange": {"low": {"value": 30, "unit": "%"}, "high": {"value": 35, "unit": "%"}}}, 30),
    ("temperature", {"valueString": "37.5 to 38.4 °C"}, 38.4),  # fever is the danger: the high end counts
    ("platelets", {"valueString": "18-22 K/uL"}, 18),
])
def test_ranges_read_at_their_dangerous_end(measure: str, holder: dict[str, Any], expected: float) -> None:
    value, _ = read(measure, holder)
    assert value == pytest.approx(expected)


def test_critical_interpretation_flag() -> None:
    interp = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    assert interpretation_flag({"interpretation": [{"coding": [{"system": interp, "code": "LL"}]}]}) == "LL"
    assert interpretation_flag({"interpretation": [{"text": "Critical high"}]}) == "critical"
    assert interpretation_flag({"interpretation": [{"coding": [{"system": interp, "code": "L"}]}]}) is None
    assert interpretation_flag({"interpretation": "LL"}) is None
