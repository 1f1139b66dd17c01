"""What the rules read from a PatientSnapshot: the value that counts for each measure, and how to say it.

A threshold rule must not be fooled by the order results arrive in. For each measure the rules read the
*worst* value in its window, not only the newest: a temperature of 39 °C this morning is not cleared by
37 °C after paracetamol (window: the last 48 hours), a platelet count is read with the other counts of the
same draw and the days around it (window: 72 hours before the newest, since a transfusion's effect is
short-lived), and other measures with the results taken at the newest result's time (two results at once:
the worse one wins and the conflict is said). "Worse" follows the measure's dangerous side in terminology/
(low platelets, high temperature), and a bound ("< 20") is read toward it: "< 20" platelets could be 5.
Pure: no I/O, deterministic given the snapshot and `now`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

from service.clinical.model import CodedFact, Measurement, PatientSnapshot, Treatment
from service.clinical.units import with_unit
from service.terminology import get_terminology

# Windows in which the worst value counts (hours). Temperature: back from now, antipyretics mask a fever.
# Blood counts: back from the newest result. Everything else: the newest result's own time only.
WINDOW_FROM_NOW_HOURS = {"temperature": 48}
WINDOW_FROM_NEWEST_HOURS = {"platelets": 72, "hemoglobin": 72, "anc": 72, "wbc": 72}


@dataclass(frozen=True)
class Hit:
    """A rule fired: what data point triggered it (human-readable) and the FHIR references behind it."""

    finding: str
    refs: tuple[str, ...] = ()


def worst_case(m: Measurement, danger: str) -> float:
    """The value a threshold should compare: a bound read toward the dangerous side.

    Low-danger measures (platelets): "< 20" could be anything below 20, so it is -inf; "> 50" is just above
    50. High-danger measures (temperature) mirror this. Measures with no dangerous side ignore comparators.
    """
    c = m.comparator
    if c is None or danger == "none":
        return m.value
    if danger == "low":
        if c in ("<", "<="):
            return -math.inf
        return math.nextafter(m.value, math.inf) if c == ">" else m.value
    if c in (">", ">="):
        return math.inf
    return math.nextafter(m.value, -math.inf) if c == "<" else m.value


def fmt_value(m: Measurement) -> str:
    value = f"{m.value:g}" if m.value == int(m.value) else f"{m.value:.1f}"
    if m.comparator:
        value = f"{m.comparator} {value}"
    return with_unit(value, m.unit)


def fmt(m: Measurement) -> str:
    return f"{m.measure} {fmt_value(m)} on {m.effective.date().isoformat()}"


@dataclass(frozen=True)
class Reading:
    """The value the rules use for one measure, and why it is that one."""

    m: Measurement
    value: float  # worst-case value for threshold comparisons
    others: tuple[Measurement, ...] = ()  # other values in the window (shown when they disagree)
    same_time: bool = False  # the disagreement is between results taken at the same time

    def describe(self) -> str:
        text = fmt(self.m)
        if self.m.derived_from:
            text += f" (calculated from {', '.join(self.m.derived_from)})"
        if self.m.flag:
            text += f" (flagged {self.m.flag} by the lab)"
        if not self.others:
            return text
        values = ", ".join(fmt_value(o) for o in self.others)
        if self.same_time:
            return f"{text} (results taken at the same time disagree: also {values}; the worse one is used)"
        return f"{text} (worst in its window; also {values})"

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.m.ref, *self.m.derived_from, *(o.ref for o in self.others))))


@dataclass(frozen=True)
class Facts:
    """What the rules read, derived once from the snapshot (so each predicate is a cheap lookup)."""

    s: PatientSnapshot
    now: datetime
    _readings: dict[str, Reading | None] = field(default_factory=dict, compare=False, repr=False)

    def danger(self, measure: str) -> str:
        info = get_terminology().measures_by_key().get(measure)
        return info.danger if info is not None else "none"

    def safety(self, measure: str) -> bool:
        """Whether the measure is safety-relevant (an unreadable value of it needs a clinician)."""
        info = get_terminology().measures_by_key().get(measure)
        return info is not None and info.unreadable != "note"

    def reading(self, measure: str) -> Reading | None:
        """The worst value of `measure` in its window (None when there is no current value)."""
        if measure in self._readings:
            return self._readings[measure]
        found = self._reading(measure)
        self._readings[measure] = found
        return found

    def _reading(self, measure: str) -> Reading | None:
        newest = self.s.latest.get(measure)
        if newest is None:
            return None
        danger = self.danger(measure)
        if measure in WINDOW_FROM_NOW_HOURS:
            since = self.now - timedelta(hours=WINDOW_FROM_NOW_HOURS[measure])
        else:
            since = newest.effective - timedelta(hours=WINDOW_FROM_NEWEST_HOURS.get(measure, 0))
        window = [m for m in self.s.history.get(measure, (newest,)) if since <= m.effective <= self.now]
        if not window:
            window = [newest]
        if danger == "none":
            chosen = newest
        else:
            pick = min if danger == "low" else max
            # Ties go to the newest value (history is in time order; max/min keep the first, so reverse).
            chosen = pick(reversed(window), key=lambda m: worst_case(m, danger))
        value = worst_case(chosen, danger)
        others = tuple(m for m in window if m is not chosen and worst_case(m, danger) != value)
        same_time = bool(others) and all(m.effective == chosen.effective for m in others)
        return Reading(chosen, value, others, same_time)

    def m(self, measure: str) -> Measurement | None:
        r = self.reading(measure)
        return r.m if r is not None else None

    def value(self, measure: str) -> float | None:
        r = self.reading(measure)
        return r.value if r is not None else None

    def below(self, measure: str, threshold: float, floor: float | None = None) -> Hit | None:
        r = self.reading(measure)
        if r is not None and r.value < threshold and (floor is None or r.value >= floor):
            return Hit(r.describe(), r.refs)
        return None

    def at_least(self, measure: str, threshold: float, ceiling: float | None = None) -> Hit | None:
        r = self.reading(measure)
        if r is not None and r.value >= threshold and (ceiling is None or r.value < ceiling):
            return Hit(r.describe(), r.refs)
        return None

    def performance_grade(self) -> tuple[int, Reading] | None:
        """ECOG grade, from ECOG or from Karnofsky (80-100 -> 0-1, 60-70 -> 2, 40-50 -> 3, <= 30 -> 4); worst wins."""
        options: list[tuple[int, Reading]] = []
        if (e := self.reading("ecog")) is not None:
            options.append((min(5, int(round(e.value))) if math.isfinite(e.value) else 5, e))
        if (k := self.reading("karnofsky")) is not None:
            kps = k.value
            grade = 1 if kps >= 80 else 2 if kps >= 60 else 3 if kps >= 40 else 4
            options.append((grade, k))
        return max(options, key=lambda o: o[0]) if options else None

    def ps(self, low: int, high: int) -> Hit | None:
        pg = self.performance_grade()
        if pg is not None and low <= pg[0] <= high:
            return Hit(f"performance status grade {pg[0]} ({pg[1].describe()})", pg[1].refs)
        return None

    def treatments(self, kind: str, active: bool = True) -> list[Treatment]:
        return [t for t in self.s.treatments if t.kind == kind and (t.active or not active)]

    def active(self, kind: str) -> Hit | None:
        ts = self.treatments(kind)
        if ts:
            return Hit(f"active {kind}: " + ", ".join(sorted({t.display for t in ts})), tuple(t.ref for t in ts))
        return None

    def facts(self, key: str) -> tuple[CodedFact, ...]:
        return self.s.comorbidities.get(key, ())

    def comorbidity(self, key: str) -> Hit | None:
        return coded_hit(self.facts(key))

    def evs_minutes(self) -> tuple[float, tuple[str, ...], str] | None:
        """Minutes/week of moderate-to-vigorous activity: 82290-8, else days/week x minutes/day."""
        if (m := self.s.latest.get("evs-minutes-per-week")) is not None:
            return m.value, (m.ref,), fmt(m)
        d, mpd = self.s.latest.get("evs-days-per-week"), self.s.latest.get("evs-minutes-per-day")
        if d is not None and mpd is not None:
            return d.value * mpd.value, (d.ref, mpd.ref), f"{d.value:g} days/week x {mpd.value:g} min/day"
        return None

    def evs(self, low: float, high: float | None) -> Hit | None:
        e = self.evs_minutes()
        if e is not None and e[0] >= low and (high is None or e[0] < high):
            return Hit(f"exercise vital sign {e[0]:g} min/week ({e[2]})", e[1])
        return None

    def eligible(self) -> bool:
        return self.s.has_cancer

    def fresh(self, measures: tuple[str, ...]) -> bool:
        return any(m in self.s.latest for m in measures)

    def stale_text(self, measures: tuple[str, ...]) -> str:
        stale = [self.s.stale[m] for m in measures if m in self.s.stale]
        return "; latest is stale: " + ", ".join(fmt(m) for m in stale) if stale else ""


def coded_hit(facts: Iterable[CodedFact], prefix: str = "") -> Hit | None:
    """A Hit naming coded facts (Conditions, Devices ...) and their references, or None when there are none."""
    facts = tuple(facts)
    if not facts:
        return None
    return Hit(prefix + ", ".join(sorted({f.display or f.code for f in facts})), tuple(f.ref for f in facts))
