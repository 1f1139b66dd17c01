"""UCUM codes as people read them ("Cel" -> "°C", "10*3/uL" -> "×10³/µL", "{score}" -> nothing).

FHIR keeps the UCUM code; anything shown to a clinician or a patient goes through `human_unit`. Pure.
"""

from __future__ import annotations

import re

_KNOWN = {
    "Cel": "°C",
    "[degF]": "°F",
    "mm[Hg]": "mm Hg",
    "/min": "/min",
    "min/wk": "min/week",
    "min/d": "min/day",
    "d/wk": "days/week",
    "kg/m2": "kg/m²",
    "uL": "µL",
    "[lb_av]": "lb",
    "[in_i]": "in",
}
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def human_unit(ucum: str | None) -> str:
    """The display form of a UCUM unit code; annotations alone ({score}, {repetitions}) display as nothing."""
    if not ucum:
        return ""
    if ucum in _KNOWN:
        return _KNOWN[ucum]
    text = re.sub(r"\{[^}]*\}", "", ucum)  # annotations are not units
    if not text or text == "1":
        return ""
    text = re.sub(r"10\*(-?\d+)", lambda m: "×10" + m.group(1).translate(_SUPERSCRIPT), text)
    text = text.replace("uL", "µL").replace("ug", "µg").replace("umol", "µmol")
    return text


def with_unit(value: str, ucum: str | None) -> str:
    """"38.6 °C", "3 (score)" -> "3": a value followed by its display unit when there is one."""
    unit = human_unit(ucum)
    return f"{value} {unit}" if unit else value
