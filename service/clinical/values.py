"""Reading one Observation value the way labs send it: quantity, integer, numeric string or coded answer.

A value is read into the measure's canonical unit with its comparator kept ("<20" stays "< 20", and the rules
read it toward the dangerous side). Units come as UCUM codes, as unit text, or not at all: a missing unit is
inferred only when exactly one of the measure's units makes the number plausible (38.6 can only be °C; 7.5
haemoglobin could be g/dL or mmol/L, so it is not guessed). A value that is present but cannot be read - an
unknown unit, a string that is not a number, an implausible number, an unknown coded answer - comes back as a
problem text, never as silence: the snapshot decides what that requires. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Any

from service.clinical.ucum import Affine, UnitResolver
from service.terminology import MeasureInfo, Terminology

COMPARATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "≤": "<=", "≥": ">=", "=<": "<=", "=>": ">="}
_NUMBER = re.compile(r"^\s*(<=|>=|=<|=>|<|>|≤|≥)?\s*([+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+))\s*(.*?)\s*$")
_UNSIGNED = r"(\d+(?:[.,]\d*)?|[.,]\d+)"
_RANGE = re.compile(rf"^\s*{_UNSIGNED}\s*(?:-|–|to)\s*{_UNSIGNED}\s*(.*?)\s*$", re.IGNORECASE)
MAX_FAST = 4096  # (measure, code, unit) combinations remembered; bounded against hostile variety
MAX_TEXT = 40  # characters of an unreadable value quoted back to the clinician
# Observation.interpretation codes (v3 ObservationInterpretation) that mean "critical": a signal for review.
CRITICAL_INTERPRETATIONS = frozenset({"LL", "HH", "AA", "critical", "CRIT"})

Value = tuple[float, str | None]  # (value in the canonical unit, comparator or None)


def quote(text: Any) -> str:
    """A short, single-line rendering of a raw value for a message (no control characters, bounded)."""
    s = " ".join(str(text).split())
    return s if len(s) <= MAX_TEXT else s[: MAX_TEXT - 1] + "…"


class ValueReader:
    """Reads Observation (or component) values for the measures in terminology/, with memoised units."""

    def __init__(self, term: Terminology) -> None:
        self.term = term
        self.units = UnitResolver(term.unit_synonyms())
        # (measure, code, unit) -> (a, b, low, high) for quantities read before: the hot path (every
        # Observation of every hook call) is then one dict probe, one multiply-add and one range check.
        self._fast: dict[tuple[str, Any, Any], tuple[float, float, float, float]] = {}

    # ---------------------------------------------------------------- public
    def read(self, info: MeasureInfo, holder: dict[str, Any]) -> Value | str | None:
        """(value, comparator), or a problem text when a value is present but unreadable, or None (no value)."""
        q = holder.get("valueQuantity")
        if q is not None:
            if type(q) is dict and "comparator" not in q:
                v = q.get("value")
                fast = self._fast.get((info.key, q.get("code"), q.get("unit")))
                if fast is not None and (type(v) is float or type(v) is int):
                    x = v * fast[0] + fast[1] if fast[0] != 1.0 or fast[1] else float(v)
                    if fast[2] <= x <= fast[3]:
                        return round(x, 9), None
            return self._quantity(info, q)
        v = holder.get("valueInteger")
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int):
                return f"valueInteger {quote(v)} is not an integer"
            return self._number(info, float(v), None, None)
        s = holder.get("valueString")
        if s is not None:
            return self._string(info, s)
        cc = holder.get("valueCodeableConcept")
        if cc is not None:
            return self._coded(info, cc)
        r = holder.get("valueRange")
        if r is not None:
            return self._range(info, r)
        for key in ("valueRatio", "valueSampledData", "valueBoolean", "valuePeriod"):
            if key in holder:
                return f"{key} is not a single number"
        return None

    # ---------------------------------------------------------------- shapes
    def _quantity(self, info: MeasureInfo, q: Any) -> Value | str:
        if not isinstance(q, dict):
            return "valueQuantity is not an object"
        v = q.get("value")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "valueQuantity has no number" if v is None else f"valueQuantity.value {quote(v)} is not a number"
        comparator = q.get("comparator")
        if comparator is not None and comparator not in COMPARATORS:
            return f"comparator {quote(comparator)} is not one of <, <=, >=, >"
        code, text = q.get("code"), q.get("unit")
        units = [u for u in (code, text) if isinstance(u, str) and u.strip()]
        if comparator is None and units and not info.unit.startswith("{") and len(self._fast) < MAX_FAST:
            conv = self._converter(info, units)
            rng = info.canonical_range or (-math.inf, math.inf)
            if conv is not None:
                self._fast[(info.key, code, text)] = (conv[0], conv[1], rng[0], rng[1])
        return self._number(info, float(v), COMPARATORS.get(comparator) if comparator else None, units)

    def _string(self, info: MeasureInfo, s: Any) -> Value | str:
        if not isinstance(s, str):
            return "valueString is not a string"
        rm = _RANGE.match(s)
        if rm is not None:  # "30-35%": the end on the dangerous side counts
            low, high, unit = rm.groups()
            return self._worst_end(info, [self._number(info, float(x.replace(",", ".")), None, [unit] if unit else None)
                                          for x in (low, high)])
        m = _NUMBER.match(s)
        if m is None:
            return f"value {quote(s)!r} is not a number"
        comparator, number, unit = m.groups()
        try:
            value = float(number.replace(",", "."))
        except ValueError:
            return f"value {quote(s)!r} is not a number"
        return self._number(info, value, COMPARATORS[comparator] if comparator else None, [unit] if unit else None)

    def _range(self, info: MeasureInfo, r: Any) -> Value | str:
        """valueRange: read both ends; the one on the dangerous side counts (a missing end is unknown)."""
        if not isinstance(r, dict) or not isinstance(r.get("low"), dict) or not isinstance(r.get("high"), dict):
            return "valueRange without both a low and a high end"
        return self._worst_end(info, [self._quantity(info, r["low"]), self._quantity(info, r["high"])])

    @staticmethod
    def _worst_end(info: MeasureInfo, ends: list[Value | str]) -> Value | str:
        problems = [e for e in ends if isinstance(e, str)]
        if problems:
            return problems[0]
        values = [e[0] for e in ends if not isinstance(e, str)]
        if info.danger == "high":
            return max(values), None
        if info.danger == "low":
            return min(values), None
        return sum(values) / len(values), None

    def _coded(self, info: MeasureInfo, cc: Any) -> Value | str:
        if not isinstance(cc, dict):
            return "valueCodeableConcept is not an object"
        for coding in cc.get("coding") or ():
            if isinstance(coding, dict):
                score = self.term.answer_score(coding.get("system"), coding.get("code"), info.key)
                if score is not None:
                    return score, None
        label = cc.get("text") or next((c.get("display") or c.get("code") for c in cc.get("coding") or ()
                                        if isinstance(c, dict)), None)
        return f"coded answer {quote(label)!r} is not one we can score" if label else "coded answer without a code"

    # ---------------------------------------------------------------- numbers and units
    def _number(self, info: MeasureInfo, value: float, comparator: str | None,
                units: list[str] | None) -> Value | str:
        if value != value or value in (float("inf"), float("-inf")):
            return "value is not a finite number"
        if info.unit.startswith("{"):  # scores, counts of repetitions: no unit to convert
            return self._plausible(info, value, comparator, info.unit)
        if not units:
            return self._unitless(info, value, comparator)
        conv = self._converter(info, units)
        if conv is None:
            return f"unit {quote(' / '.join(dict.fromkeys(units)))!r} is not a unit of {info.display.lower()}"
        a, b = conv
        return self._plausible(info, round(value * a + b, 9), comparator, units[0])

    def _converter(self, info: MeasureInfo, units: list[str]) -> Affine | None:
        for unit in units:
            conv = self.units.affine(info.key, info.unit, unit, info.molar_mass, info.valence)
            if conv is not None:
                return conv
        return None

    def _unitless(self, info: MeasureInfo, value: float, comparator: str | None) -> Value | str:
        """A number without a unit: read only when every plausible unit gives the same canonical value."""
        if info.unit in ("%", "1") and not info.plausible:
            return value, comparator
        readings = set()
        for unit, lo, hi in info.plausible:
            if lo <= value <= hi:
                conv = self.units.affine(info.key, info.unit, unit, info.molar_mass, info.valence)
                if conv is not None:
                    readings.add(round(value * conv[0] + conv[1], 9))
        if len(readings) == 1:
            return readings.pop(), comparator
        if not readings:
            return f"value {value:g} has no unit and is implausible in every unit of {info.display.lower()}"
        return f"value {value:g} has no unit, and more than one unit is plausible"

    def _plausible(self, info: MeasureInfo, value: float, comparator: str | None, unit: str) -> Value | str:
        rng = info.canonical_range
        if rng is not None and not (rng[0] <= value <= rng[1]):
            return f"value {value:g} {info.unit} is implausible (from {quote(unit)})"
        return value, comparator


def interpretation_flag(res: dict[str, Any]) -> str | None:
    """The critical interpretation code on an Observation (LL, HH, AA, ...), if the lab set one."""
    interp = res.get("interpretation")
    if not isinstance(interp, list):
        return None
    for cc in interp:
        if isinstance(cc, dict):
            for coding in cc.get("coding") or ():
                if isinstance(coding, dict) and coding.get("code") in CRITICAL_INTERPRETATIONS:
                    return str(coding["code"])
            text = cc.get("text")
            if isinstance(text, str) and "critical" in text.lower():
                return "critical"
    return None
