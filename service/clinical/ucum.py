"""Unit conversion for observation values: UCUM codes and real-world unit text -> a measure's canonical unit.

Labs send UCUM codes ("10*9/L"), other spellings of them ("K/uL", "x10^9/L", "gm/dL", "deg C") or nothing.
Spellings come from the synonym ConceptMap in terminology/ (a spelling may name several UCUM units; the one
whose dimension fits the measure wins, so French "G/L" is 10*9/L for platelets and g/L for haemoglobin).
UCUM itself is parsed by `ucumvert` (the UCUM grammar on pint), imported on first use: the common case - the
canonical unit itself - never needs it. Every conversion is affine (`value * a + b`; b is non-zero only for
temperatures) and memoised per (measure, spelling), so the hot path is one dict probe.

Substance-to-mass conversions (haemoglobin in mmol/L) use the measure's molar mass from terminology/;
milliequivalents divide by the ion's valence (calcium: 2 mEq = 1 mmol). Pure: no I/O.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache
from typing import Any

Affine = tuple[float, float]
IDENTITY: Affine = (1.0, 0.0)

# Bound on memoised spellings: hostile or garbage units must not grow memory without limit.
MAX_MEMO = 4096
_lock = threading.Lock()


@lru_cache(maxsize=1)
def _registry() -> Any:
    from ucumvert import PintUcumRegistry  # heavy import (pint), only when a unit needs real parsing

    return PintUcumRegistry()


def warm() -> None:
    """Load the UCUM parser now (called at service start-up so the first odd unit does not pay ~0.4 s)."""
    _registry()


@lru_cache(maxsize=MAX_MEMO)
def _ucum_affine(src: str, dst: str, molar_mass: float | None, valence: int | None) -> Affine | None:
    """value in `src` -> value in `dst`, or None when `src` is not UCUM or not convertible to `dst`."""
    import pint  # available with ucumvert

    ureg = _registry()
    try:
        qs, qd = ureg.from_ucum(src), ureg.from_ucum(dst)
    except Exception:  # noqa: BLE001 - any parse failure means "not a UCUM unit we can use"
        return None
    if not (hasattr(qs, "units") and hasattr(qd, "units")):
        return None  # an annotation alone ("{score}") is a label, not a unit
    scale = 1.0
    if "eq" in src.lower():
        if not valence:
            return None  # equivalents mean nothing for a substance without a charge (haemoglobin)
        scale = 1.0 / valence  # equivalents -> moles
    src_units = qs.units
    if qs.dimensionality != qd.dimensionality and molar_mass:
        per_mol = ureg.from_ucum("g/mol").units  # units must come from the same registry
        if (qs.units * per_mol).dimensionality == qd.dimensionality:
            src_units = src_units * per_mol
            scale *= molar_mass
        elif (qs.units / per_mol).dimensionality == qd.dimensionality:
            src_units = src_units / per_mol
            scale /= molar_mass
    try:
        points = [ureg.Quantity(x * scale * qs.magnitude, src_units).to(qd.units).magnitude / qd.magnitude
                  for x in (0.0, 1.0)]
    except (pint.errors.DimensionalityError, pint.errors.OffsetUnitCalculusError, ValueError, TypeError,
            ZeroDivisionError, AttributeError):
        return None
    b, one = float(points[0]), float(points[1])
    a = one - b
    if not (math.isfinite(a) and math.isfinite(b)) or a == 0.0:
        return None
    return _tidy(a), _tidy(b)


def _tidy(x: float) -> float:
    """Round away binary noise (0.0010000000000000002 -> 0.001) so converted values print cleanly."""
    return float(f"{x:.12g}")


class UnitResolver:
    """Resolves a unit spelling to an affine conversion into a measure's canonical unit, memoised."""

    def __init__(self, synonyms: dict[str, tuple[str, ...]]) -> None:
        self._synonyms = synonyms  # lower-case spelling -> candidate UCUM codes
        self._memo: dict[tuple[str, str], Affine | None] = {}

    def candidates(self, unit: str) -> tuple[str, ...]:
        """UCUM codes a spelling may stand for: the synonym table first (it knows lab slang that happens to
        parse as other UCUM, e.g. "10.3/uL"), then the spelling itself as UCUM."""
        text = unit.strip()
        known = self._synonyms.get(text.lower(), ())
        return known + ((text,) if text and text not in known else ())

    def affine(self, measure: str, canonical: str, unit: str, molar_mass: float | None = None,
               valence: int | None = None) -> Affine | None:
        key = (measure, unit)
        try:
            return self._memo[key]
        except KeyError:
            pass
        found = self._resolve(canonical, unit, molar_mass, valence)
        with _lock:
            if len(self._memo) < MAX_MEMO:
                self._memo[key] = found
        return found

    def _resolve(self, canonical: str, unit: str, molar_mass: float | None, valence: int | None) -> Affine | None:
        for code in self.candidates(unit):
            if code == canonical:
                return IDENTITY
            conv = _ucum_affine(code, canonical, molar_mass, valence)
            if conv is not None:
                return conv
        return None
