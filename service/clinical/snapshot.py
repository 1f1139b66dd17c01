"""FHIR R4 JSON (plain dicts) -> PatientSnapshot: typed, unit-normalised, latest valid value per measure.

This runs on every CDS hook call, so it reads dicts directly and checks only the elements it uses (validating
prefetch Bundles with fhir.resources models was measured at ~50x slower than the web framework). Real EHR data
is messy: any coding of a CodeableConcept may match (ICD-10-CM or SNOMED CT), refuted / entered-in-error data is
ignored, units are normalised to one canonical UCUM unit per measure, and a malformed resource is skipped and
noted - it never aborts the snapshot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from operator import attrgetter
from typing import Any, Callable, ClassVar

from service.clinical.model import CodedFact, Measurement, PatientSnapshot, Referral, Treatment, TreatmentKind
from service.terminology import Terminology, get_terminology

UTC = timezone.utc

# ---------------------------------------------------------------------------------------------------------
# UCUM normalisation: canonical unit -> {accepted unit spelling: converter}; measure-specific extras below.
# ---------------------------------------------------------------------------------------------------------

_Conv = Callable[[float], float]


def _f(factor: float) -> _Conv:
    return lambda v: v * factor


_ID: _Conv = _f(1.0)
_COUNT_PER_UL = {  # canonical 10*3/uL (== 10*9/L)
    "10*3/ul": _ID, "10^3/ul": _ID, "k/ul": _ID, "x10e3/ul": _ID, "10*3/mm3": _ID, "/nl": _ID,
    "10*9/l": _ID, "10^9/l": _ID, "x10e9/l": _ID, "g/l": _ID, "thou/ul": _ID, "10.3/ul": _ID,
    "/ul": _f(0.001), "/mm3": _f(0.001), "{cells}/ul": _f(0.001), "cells/ul": _f(0.001), "10*6/l": _f(0.001),
}
UNIT_TABLE: dict[str, dict[str, _Conv]] = {
    "10*3/uL": _COUNT_PER_UL,
    "g/dL": {"g/dl": _ID, "g/l": _f(0.1), "mg/dl": _f(0.001)},
    "Cel": {"cel": _ID, "°c": _ID, "degc": _ID, "c": _ID, "[degf]": lambda v: (v - 32.0) * 5.0 / 9.0,
            "°f": lambda v: (v - 32.0) * 5.0 / 9.0, "degf": lambda v: (v - 32.0) * 5.0 / 9.0,
            "f": lambda v: (v - 32.0) * 5.0 / 9.0, "k": lambda v: v - 273.15},
    "kg": {"kg": _ID, "g": _f(0.001), "[lb_av]": _f(0.45359237), "lb": _f(0.45359237), "lbs": _f(0.45359237),
           "[lbf_av]": _f(0.45359237), "lbf": _f(0.45359237)},
    "m": {"m": _ID, "km": _f(1000.0), "[ft_i]": _f(0.3048), "ft": _f(0.3048), "[yd_i]": _f(0.9144)},
    "s": {"s": _ID, "sec": _ID, "ms": _f(0.001), "min": _f(60.0)},
    "/min": {"/min": _ID, "{beats}/min": _ID, "beats/min": _ID, "bpm": _ID, "{beat}/min": _ID},
    "mm[Hg]": {"mm[hg]": _ID, "mmhg": _ID, "kpa": _f(7.50062)},
    "kg/m2": {"kg/m2": _ID, "kg/m^2": _ID},
    "mL/kg/min": {"ml/kg/min": _ID, "ml/(kg.min)": _ID, "ml/min/kg": _ID},
    "d/wk": {"d/wk": _ID, "/wk": _ID, "d/(7.d)": _ID, "days/week": _ID, "{days}/wk": _ID},
    "min/d": {"min/d": _ID, "min/day": _ID, "min/(24.h)": _ID, "h/d": _f(60.0)},
    "min/wk": {"min/wk": _ID, "min/(7.d)": _ID, "min/week": _ID, "h/wk": _f(60.0)},
}
# Conversions that depend on the substance, not only on the unit.
MEASURE_UNIT_EXTRA: dict[tuple[str, str], _Conv] = {
    ("hemoglobin", "mmol/l"): _f(1.6114),  # Hb (monomer, 16.114 g/mmol): 1 mmol/L = 1.6114 g/dL
}


def normalise_value(measure: str, canonical_unit: str, value: float, unit: str | None) -> float | None:
    """Value in the measure's canonical unit, or None when the unit is unknown for it (then it is not used).

    Dimensionless measures (canonical unit `{...}`, e.g. ECOG) accept any or no unit.
    """
    conv = unit_converter(measure, canonical_unit, unit)
    return None if conv is None else conv(value)


def _keep(v: float) -> float:
    return v


def unit_converter(measure: str, canonical_unit: str, unit: str | None) -> _Conv | None:
    """The converter `normalise_value` applies (None: unknown unit); a pure function of its arguments, so the
    snapshot looks it up once per (measure, unit) spelling instead of once per value."""
    if canonical_unit.startswith("{"):
        return _keep
    if canonical_unit == "%" and (unit is None or unit.strip() in ("%", "{score}", "")):
        return _keep
    if unit is None:
        return None
    key = unit.strip().lower()
    return MEASURE_UNIT_EXTRA.get((measure, key)) or UNIT_TABLE.get(canonical_unit, {}).get(key)


# ---------------------------------------------------------------------------------------------------------
# FHIR dates
# ---------------------------------------------------------------------------------------------------------


def parse_datetime(value: Any) -> datetime | None:
    """FHIR date/dateTime/instant ('2024', '2024-05', '2024-05-01', '...T10:00:00Z') -> aware UTC datetime."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            dt = datetime(int(value), 1, 1)
        elif len(value) == 7:
            dt = datetime(int(value[:4]), int(value[5:7]), 1)
        else:
            dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_date(value: Any) -> date | None:
    dt = parse_datetime(value)
    return dt.date() if dt else None


def as_utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


# ---------------------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------------------

IGNORED_VERIFICATION = {"refuted", "entered-in-error"}
ACTIVE_CLINICAL = {"active", "recurrence", "relapse"}
CANCER_CLINICAL = ACTIVE_CLINICAL | {"remission"}  # survivors in remission remain eligible (Campbell 2019)
IGNORED_OBSERVATION = {"entered-in-error", "cancelled", "registered"}
COMORBIDITY_VALUESETS = (
    ("cardiac", "comorbidity-cardiac"),
    ("neuropathy", "comorbidity-neuropathy"),
    ("lymphedema", "comorbidity-lymphedema"),
    ("diabetes", "comorbidity-diabetes"),
    ("arthritis-osteoporosis", "comorbidity-arthritis-osteoporosis"),
)
MED_CLASS_ORDER: tuple[tuple[TreatmentKind, str], ...] = (
    ("immunotherapy", "treatment-immunotherapy"),
    ("targeted", "treatment-targeted"),
    ("endocrine", "treatment-endocrine"),
    ("chemotherapy", "treatment-chemotherapy"),
)
PROC_CLASS_ORDER: tuple[tuple[TreatmentKind, str], ...] = (
    ("radiotherapy", "treatment-radiotherapy"),
    ("chemotherapy", "treatment-chemotherapy"),
    ("immunotherapy", "treatment-immunotherapy"),
    ("endocrine", "treatment-endocrine"),
    ("surgery", "treatment-surgery"),
)
SURGICAL_CATEGORY = ("http://snomed.info/sct", "387713003")
TASK_FULFILL = ("http://hl7.org/fhir/CodeSystem/task-code", "fulfill")
# A chemotherapy/immunotherapy dose within this window means "on treatment" (a typical 2-4 week cycle).
ADMINISTRATION_ACTIVE_DAYS = 28
FALLS_LOOKBACK_DAYS = 365
SYMPTOM_NEW_DAYS = 30
SNAPSHOT_COMORBIDITY_KEYS = ("cardiac", "neuropathy", "lymphedema", "diabetes", "arthritis-osteoporosis", "falls",
                             "symptom", "beta-blocker")


def _measurement_factory() -> Callable[..., Measurement]:
    """`Measurement(...)` for the hot loop (one per Observation value, ~170 per hook call).

    The frozen dataclass's generated __init__ sets each field through object.__setattr__ (~1.5 us a call);
    filling the instance __dict__ directly makes the same object (same fields, eq, hash, repr) in a third of
    the time. Only while Measurement is the plain frozen dataclass this was written for: with slots, a
    __post_init__ or other fields, the real constructor is used.
    """
    names = tuple(f.name for f in dataclasses.fields(Measurement))
    plain = (names == ("measure", "value", "unit", "effective", "ref", "code", "components")
             and "__slots__" not in Measurement.__dict__ and not hasattr(Measurement, "__post_init__"))
    if not plain:
        return Measurement
    new = object.__new__

    def make(measure: str, value: float, unit: str, effective: datetime, ref: str, code: str,
             components: tuple[tuple[str, float], ...] = ()) -> Measurement:
        m = new(Measurement)
        m.__dict__.update(measure=measure, value=value, unit=unit, effective=effective, ref=ref, code=code,
                          components=components)
        return m

    return make


_measurement = _measurement_factory()
_BY_TIME = attrgetter("effective", "ref")


class _Skip(Exception):
    """This resource is unusable (malformed or out of scope): skip it and say why."""


def _status_code(cc: Any) -> str | None:
    """Code of an R4 status CodeableConcept (clinicalStatus/verificationStatus); a bare string is STU3 -> skip."""
    if cc is None:
        return None
    if not isinstance(cc, dict):
        raise _Skip("status is not a CodeableConcept (STU3 shape?)")
    for coding in cc.get("coding") or ():
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            return coding["code"]
    return None


def _has_value(res: dict[str, Any]) -> bool:
    return "valueQuantity" in res or any(k.startswith("value") for k in res)


def _ref(res: dict[str, Any], full_url: str | None) -> str:
    rid = res.get("id")
    if isinstance(rid, str) and rid:
        return f"{res['resourceType']}/{rid}"
    return full_url or f"{res['resourceType']}/(no id)"


def _cc_display(cc: Any, coding: dict[str, Any] | None, term: Terminology | None = None) -> str:
    if coding and isinstance(coding.get("display"), str):
        return coding["display"]
    if isinstance(cc, dict) and isinstance(cc.get("text"), str):
        return cc["text"]
    if coding and term is not None and isinstance(coding.get("system"), str) and isinstance(coding.get("code"), str):
        known = term.display(coding["system"], coding["code"])
        if known:
            return known
    return coding.get("code", "") if coding else ""


@dataclass
class _Builder:
    now: datetime
    term: Terminology
    issues: list[str] = field(default_factory=list)
    patient_ref: str | None = None
    patient_aliases: set[str] = field(default_factory=set)
    birth_date: date | None = None
    sex: str | None = None
    cancers: list[CodedFact] = field(default_factory=list)
    metastases: list[CodedFact] = field(default_factory=list)
    bone: list[CodedFact] = field(default_factory=list)
    comorbidities: dict[str, list[CodedFact]] = field(default_factory=dict)
    treatments: list[Treatment] = field(default_factory=list)
    values: dict[str, list[Measurement]] = field(default_factory=dict)
    service_requests: list[tuple[str, str, datetime | None, str | None]] = field(default_factory=list)
    tasks: list[tuple[str, str, str, datetime | None]] = field(default_factory=list)  # focus, ref, status, time
    medications: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    measure_by_code: dict[tuple[str, str], str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    # Per-snapshot memos (hot path): a lab panel's results share one timestamp, and a record uses a handful of
    # unit spellings, so each distinct string is parsed / looked up once per snapshot.
    _dt_memo: dict[str, datetime | None] = field(default_factory=dict, repr=False)
    _conv_memo: dict[tuple[str, str | None], _Conv | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.measure_by_code = self.term.measure_index()
        self.units = {k: m.unit for k, m in self.term.measures().items()}

    # ------------------------------------------------------------ entry point
    def add_all(self, items: list[tuple[dict[str, Any], str | None]]) -> None:
        # Patients and Medications first: other resources refer to them.
        for res, full_url in items:
            kind = res.get("resourceType")
            if kind == "Patient" and self.patient_ref is None:
                self._guard(_Builder._patient, res, full_url)
            elif kind == "Medication":
                ref = _ref(res, full_url)
                self.medications[ref] = res
                if full_url:
                    self.medications[full_url] = res
        for res, full_url in items:
            handler = self._HANDLERS.get(res.get("resourceType"))  # type: ignore[arg-type]
            if handler is not None:
                self._guard(handler, res, full_url)

    def _guard(self, handler: Callable[..., None], res: dict[str, Any], full_url: str | None) -> None:
        ref = _ref(res, full_url)
        if ref in self.seen and res.get("resourceType") != "Patient":
            return  # the same resource in two prefetch Bundles
        try:
            if self.patient_aliases:  # (the check's own first test, inlined: this runs for every resource)
                self._check_subject(res)
            handler(self, res, ref)
        except _Skip as exc:
            self.issues.append(f"{ref} skipped: {exc}")
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            self.issues.append(f"{ref} skipped: malformed ({type(exc).__name__})")
        self.seen.add(ref)

    def _check_subject(self, res: dict[str, Any]) -> None:
        if not self.patient_aliases or res.get("resourceType") == "Patient":
            return
        subject = res.get("subject") or res.get("patient") or res.get("for")
        if isinstance(subject, dict):
            ref = subject.get("reference")
            if isinstance(ref, str) and ref.startswith("Patient/") and ref not in self.patient_aliases:
                raise _Skip("belongs to another patient")

    # ------------------------------------------------------------ Patient
    def _patient(self, res: dict[str, Any], ref: str) -> None:
        self.patient_ref = ref
        self.patient_aliases = {ref}
        self.birth_date = parse_date(res.get("birthDate"))
        gender = res.get("gender")
        self.sex = gender if isinstance(gender, str) else None

    # ------------------------------------------------------------ Condition
    def _condition(self, res: dict[str, Any], ref: str) -> None:
        verification = _status_code(res.get("verificationStatus"))
        if verification in IGNORED_VERIFICATION:
            return
        clinical = _status_code(res.get("clinicalStatus"))
        code = res.get("code")
        if not isinstance(code, dict):
            raise _Skip("no code")
        onset_dt = parse_datetime(res.get("onsetDateTime"))
        if onset_dt is None and isinstance(res.get("onsetPeriod"), dict):
            onset_dt = parse_datetime(res["onsetPeriod"].get("start"))
        recorded = parse_datetime(res.get("recordedDate"))
        when = onset_dt or recorded
        if when is not None and when > self.now:
            return  # recorded after the reference time
        t = self.term

        def fact(coding: dict[str, Any]) -> CodedFact:
            return CodedFact(ref, coding.get("system", ""), coding.get("code", ""), _cc_display(code, coding, self.term),
                             when.date() if when else None)

        is_active = clinical is None or clinical in ACTIVE_CLINICAL
        if (c := t.match("bone-metastasis", code)) is not None:
            if is_active:
                f = fact(c)
                self.bone.append(f)
                self.metastases.append(f)
            return
        if (c := t.match("cancer-secondary", code)) is not None:
            if is_active:
                self.metastases.append(fact(c))
            return
        if (c := t.match("cancer-primary", code)) is not None:
            if clinical is None or clinical in CANCER_CLINICAL:
                self.cancers.append(fact(c))
            return
        if (c := t.match("comorbidity-falls", code)) is not None:
            if when is None or (self.now - when).days <= FALLS_LOOKBACK_DAYS:
                self.comorbidities.setdefault("falls", []).append(fact(c))
            return
        if (c := t.match("red-flag-symptom", code)) is not None:
            if is_active and when is not None and (self.now - when).days <= SYMPTOM_NEW_DAYS:
                self.comorbidities.setdefault("symptom", []).append(fact(c))
            return
        if not is_active:
            return
        for key, vs in COMORBIDITY_VALUESETS:
            if (c := t.match(vs, code)) is not None:
                self.comorbidities.setdefault(key, []).append(fact(c))
                return

    # ------------------------------------------------------------ Observation
    def _measure_of(self, code: Any) -> tuple[str, str] | None:
        """(measure key, code) for the first coding of a CodeableConcept that the observation table knows."""
        if not isinstance(code, dict):
            return None
        by_code = self.measure_by_code
        for coding in code.get("coding") or ():
            if isinstance(coding, dict):
                c = coding.get("code")
                m = by_code.get((coding.get("system"), c))
                if m is not None:
                    return m, c
        return None

    def _observation(self, res: dict[str, Any], ref: str) -> None:
        if res.get("status") in IGNORED_OBSERVATION:
            return
        code = res.get("code")
        if not isinstance(code, dict):
            raise _Skip("no code")
        # _measure_of, inlined (this runs for every Observation)
        by_code = self.measure_by_code
        measure = code_str = None
        for coding in code.get("coding") or ():
            if isinstance(coding, dict):
                c = coding.get("code")
                m = by_code.get((coding.get("system"), c))
                if m is not None:
                    measure, code_str = m, c
                    break
        if measure is None:
            return
        # Hot path: a panel's results share their effectiveDateTime, usually parsed already for this snapshot.
        when = res.get("effectiveDateTime")
        effective = self._dt_memo.get(when) if type(when) is str else None
        if effective is None:
            effective = self._effective(res)
        if effective is None:
            raise _Skip("no effective time")
        if effective > self.now:
            return
        units = self.units
        comps = res.get("component")
        if comps:
            # A panel (e.g. blood pressure): each component is its own measure, carrying the others alongside.
            parts: list[tuple[str, float, str]] = []
            for comp in comps:
                if not isinstance(comp, dict) or "dataAbsentReason" in comp:
                    continue
                cfound = self._measure_of(comp.get("code"))
                if cfound is None:
                    continue
                cval = self._value(cfound[0], comp)
                if cval is not None:
                    parts.append((cfound[0], cval, cfound[1]))
            for name, cval, ccode in parts:
                others = tuple((n, v) for n, v, _ in parts if n != name)
                self._add(_measurement(name, cval, units[name], effective, ref, ccode, others))
            if parts and not _has_value(res):
                return
        if measure == "blood-pressure" or "dataAbsentReason" in res:
            return
        value = self._value(measure, res)
        if value is None:
            if _has_value(res):
                self.issues.append(f"{ref} skipped: value or unit not usable for {measure}")
            return
        m = _measurement(measure, value, units[measure], effective, ref, code_str)
        values = self.values.get(measure)  # _add, inlined
        if values is None:
            self.values[measure] = [m]
        else:
            values.append(m)

    def _dt(self, value: Any) -> datetime | None:
        """parse_datetime, memoised for this snapshot."""
        if type(value) is not str:
            return parse_datetime(value)
        memo = self._dt_memo
        try:
            return memo[value]
        except KeyError:
            dt = memo[value] = parse_datetime(value)
            return dt

    def _effective(self, res: dict[str, Any]) -> datetime | None:
        dt = self._dt
        eff = dt(res.get("effectiveDateTime")) or dt(res.get("effectiveInstant"))
        if eff is None and isinstance(res.get("effectivePeriod"), dict):
            p = res["effectivePeriod"]
            eff = dt(p.get("end")) or dt(p.get("start"))
        return eff or dt(res.get("issued"))

    def _value(self, measure: str, holder: dict[str, Any]) -> float | None:
        canonical = self.units[measure]
        q = holder.get("valueQuantity")
        if isinstance(q, dict):
            v = q.get("value")
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise _Skip("valueQuantity.value is not a number")
            unit = q.get("code") if isinstance(q.get("code"), str) else q.get("unit")
            if isinstance(q.get("comparator"), str):
                return None  # '<20' is not a value the thresholds can use safely
            unit = unit if isinstance(unit, str) else None
            try:
                conv = self._conv_memo[(measure, unit)]
            except KeyError:
                conv = self._conv_memo[(measure, unit)] = unit_converter(measure, canonical, unit)
            return None if conv is None else conv(float(v))
        v = holder.get("valueInteger")
        if isinstance(v, int) and not isinstance(v, bool):
            return float(v) if canonical.startswith("{") else None
        cc = holder.get("valueCodeableConcept")
        if isinstance(cc, dict):
            for coding in cc.get("coding") or ():
                if isinstance(coding, dict):
                    score = self.term.answer_score(coding.get("system"), coding.get("code"))
                    if score is not None:
                        return score
        return None

    def _add(self, m: Measurement) -> None:
        self.values.setdefault(m.measure, []).append(m)

    # ------------------------------------------------------------ medications
    def _med_code(self, res: dict[str, Any]) -> Any:
        cc = res.get("medicationCodeableConcept")
        if cc is not None:
            return cc
        mref = res.get("medicationReference")
        if isinstance(mref, dict) and isinstance(mref.get("reference"), str):
            r = mref["reference"]
            if r.startswith("#"):
                for contained in res.get("contained") or ():
                    if isinstance(contained, dict) and contained.get("id") == r[1:]:
                        return contained.get("code")
            med = self.medications.get(r)
            if med is not None:
                return med.get("code")
            if isinstance(mref.get("display"), str):
                return {"text": mref["display"]}
        return None

    def _classify_med(self, res: dict[str, Any]) -> tuple[TreatmentKind | None, dict[str, Any] | None, Any]:
        code = self._med_code(res)
        t = self.term
        if isinstance(code, dict):
            for kind, vs in MED_CLASS_ORDER:
                if (c := t.match(vs, code)) is not None:
                    return kind, c, code
        # mCODE cancer-related medication: a cancer reason makes it antineoplastic even if we do not know the drug.
        for reason in res.get("reasonCode") or ():
            if t.match("cancer-primary", reason) or t.match("cancer-secondary", reason):
                return "chemotherapy", None, code
        return None, None, code

    def _medication(self, res: dict[str, Any], ref: str) -> None:
        kind_ = res["resourceType"]
        status = res.get("status")
        if kind_ == "MedicationRequest":
            if status not in ("active", "on-hold", "completed", "stopped") or res.get("intent") == "proposal":
                return
            start = parse_datetime(res.get("authoredOn"))
            end = None
            for di in res.get("dosageInstruction") or ():
                bounds = ((di or {}).get("timing") or {}).get("repeat", {}).get("boundsPeriod")
                if isinstance(bounds, dict):
                    start = parse_datetime(bounds.get("start")) or start
                    end = parse_datetime(bounds.get("end"))
            active = status in ("active", "on-hold") and (end is None or end >= self.now)
        elif kind_ == "MedicationAdministration":
            if status not in ("completed", "in-progress"):
                return
            start, end = self._period(res, "effective")
            last = end or start
            if last is None:
                raise _Skip("no effective time")
            active = status == "in-progress" or (self.now - last).days <= ADMINISTRATION_ACTIVE_DAYS
        else:  # MedicationStatement
            if status not in ("active", "completed", "on-hold"):
                return
            start, end = self._period(res, "effective")
            if start is None:
                start = parse_datetime(res.get("dateAsserted"))
            active = status in ("active", "on-hold") and (end is None or end >= self.now)
        if start is not None and start > self.now:
            return
        kind, coding, code = self._classify_med(res)
        if kind is None:
            if active and isinstance(code, dict) and (c := self.term.match("beta-blocker", code)) is not None:
                self.comorbidities.setdefault("beta-blocker", []).append(
                    CodedFact(ref, c.get("system", ""), c.get("code", ""), _cc_display(code, c, self.term),
                              start.date() if start else None))
            return
        cardiotoxic = isinstance(code, dict) and self.term.match("cardiotoxic-therapy", code) is not None
        self.treatments.append(Treatment(kind, ref, _cc_display(code, coding, self.term) or kind, start, end, active, cardiotoxic))

    def _period(self, res: dict[str, Any], prefix: str) -> tuple[datetime | None, datetime | None]:
        dt = parse_datetime(res.get(f"{prefix}DateTime"))
        if dt is not None:
            return dt, dt
        p = res.get(f"{prefix}Period")
        if isinstance(p, dict):
            return parse_datetime(p.get("start")), parse_datetime(p.get("end"))
        return None, None

    # ------------------------------------------------------------ Procedure
    def _procedure(self, res: dict[str, Any], ref: str) -> None:
        status = res.get("status")
        if status not in ("completed", "in-progress"):
            return
        code = res.get("code")
        if not isinstance(code, dict):
            raise _Skip("no code")
        kind: TreatmentKind | None = None
        coding = None
        for k, vs in PROC_CLASS_ORDER:
            if (coding := self.term.match(vs, code)) is not None:
                kind = k
                break
        if kind is None:
            cat = res.get("category")
            if isinstance(cat, dict) and any(
                isinstance(c, dict) and (c.get("system"), c.get("code")) == SURGICAL_CATEGORY
                for c in cat.get("coding") or ()
            ):
                kind = "surgery"
        if kind is None:
            return
        start, end = self._period(res, "performed")
        if start is None and end is None:
            raise _Skip("no performed time")
        if (start or end) > self.now:  # type: ignore[operator]
            return
        last = end or start
        if kind == "surgery":
            active = status == "in-progress"
        elif status == "in-progress" or (end is None and "performedPeriod" in res):
            active = True
        else:
            active = kind != "radiotherapy" and last is not None and (self.now - last).days <= ADMINISTRATION_ACTIVE_DAYS
        cardiotoxic = self.term.match("cardiotoxic-therapy", code) is not None
        self.treatments.append(Treatment(kind, ref, _cc_display(code, coding, self.term) or kind, start, end, active, cardiotoxic))

    # ------------------------------------------------------------ referrals
    def _service_request(self, res: dict[str, Any], ref: str) -> None:
        status = res.get("status")
        if status == "entered-in-error" or not isinstance(status, str):
            return
        if self.term.match("exercise-servicerequest-code", res.get("code")) is None:
            return
        ident = None
        for i in res.get("identifier") or ():
            if isinstance(i, dict) and isinstance(i.get("value"), str):
                ident = i["value"]
                break
        self.service_requests.append((ref, status, parse_datetime(res.get("authoredOn")), ident))

    def _task(self, res: dict[str, Any], ref: str) -> None:
        code = res.get("code")
        if not isinstance(code, dict) or not any(
            isinstance(c, dict) and (c.get("system"), c.get("code")) == TASK_FULFILL for c in code.get("coding") or ()
        ):
            return
        focus = (res.get("focus") or {}).get("reference")
        status = res.get("status")
        if not isinstance(focus, str) or not isinstance(status, str) or status == "entered-in-error":
            return
        when = parse_datetime(res.get("lastModified")) or parse_datetime(res.get("authoredOn"))
        self.tasks.append((focus, ref, status, when))

    _HANDLERS: ClassVar[dict[str, Callable[..., None]]] = {
        "Condition": _condition,
        "Observation": _observation,
        "MedicationRequest": _medication,
        "MedicationAdministration": _medication,
        "MedicationStatement": _medication,
        "Procedure": _procedure,
        "ServiceRequest": _service_request,
        "Task": _task,
    }

    # ------------------------------------------------------------ result
    def result(self) -> PatientSnapshot:
        latest: dict[str, Measurement] = {}
        stale: dict[str, Measurement] = {}
        history: dict[str, tuple[Measurement, ...]] = {}
        measures = self.term.measures()
        for measure, values in self.values.items():
            values.sort(key=_BY_TIME)  # (effective, ref)
            history[measure] = tuple(values)
            newest = values[-1]
            if self.now - newest.effective <= timedelta(days=measures[measure].max_age_days):
                latest[measure] = newest
            else:
                stale[measure] = newest
        referrals = []
        for sr_ref, status, authored, ident in sorted(self.service_requests, key=lambda s: s[0]):
            mine = [tk for tk in self.tasks if tk[0] == sr_ref or tk[0].endswith("/" + sr_ref)]
            mine.sort(key=lambda tk: (tk[3] or datetime.min.replace(tzinfo=UTC), tk[1]))
            task = mine[-1] if mine else None
            referrals.append(Referral(sr_ref, status, authored, task[1] if task else None,
                                      task[2] if task else None, ident))
        return PatientSnapshot(
            as_of=self.now,
            patient_ref=self.patient_ref,
            birth_date=self.birth_date,
            sex=self.sex,
            cancers=tuple(self.cancers),
            metastases=tuple(self.metastases),
            bone_metastases=tuple(self.bone),
            comorbidities={k: tuple(v) for k, v in self.comorbidities.items()},
            treatments=tuple(self.treatments),
            latest=latest,
            history=history,
            stale=stale,
            referrals=tuple(referrals),
        )


def iter_resources(data: Any) -> list[tuple[dict[str, Any], str | None]]:
    """Flatten a Bundle, a resource, or an iterable of those into (resource, fullUrl) pairs."""
    out: list[tuple[dict[str, Any], str | None]] = []
    _walk(data, None, out)
    return out


def _walk(item: Any, full_url: str | None, out: list[tuple[dict[str, Any], str | None]]) -> None:
    # A module-level function, not a closure: a recursive closure is a reference cycle (function -> cell ->
    # function) that kept `out`, and through it the whole parsed prefetch, alive until the cyclic GC ran.
    if isinstance(item, dict):
        if item.get("resourceType") == "Bundle":
            for entry in item.get("entry") or ():
                if isinstance(entry, dict) and isinstance(res := entry.get("resource"), dict):
                    fu = entry.get("fullUrl")
                    fu = fu if isinstance(fu, str) else None
                    kind = res.get("resourceType")
                    if kind == "Bundle":
                        _walk(res, fu, out)
                    elif isinstance(kind, str):  # the common case, without a recursive call
                        out.append((res, fu))
        elif isinstance(item.get("resourceType"), str):
            out.append((item, full_url))
    elif isinstance(item, (list, tuple)):
        for x in item:
            _walk(x, None, out)
    elif item is not None and not isinstance(item, (str, bytes)) and hasattr(item, "__iter__"):
        for x in item:
            _walk(x, None, out)


def build_snapshot_report(data: Any, now: datetime,
                          terminology: Terminology | None = None) -> tuple[PatientSnapshot, tuple[str, ...]]:
    """The snapshot plus notes on every resource that was skipped (malformed, unusable unit, other patient)."""
    builder = _Builder(as_utc(now), terminology or get_terminology())
    builder.add_all(iter_resources(data))
    return builder.result(), tuple(builder.issues)


def build_snapshot(data: Any, now: datetime) -> PatientSnapshot:
    """FHIR R4 Bundle(s)/resource(s) as dicts -> PatientSnapshot at `now` (hot path: no model validation)."""
    return build_snapshot_report(data, now)[0]


# ---------------------------------------------------------------------------------------------------------
# Strict input check for the CLI (off the hot path): is this really a FHIR R4 Bundle?
# ---------------------------------------------------------------------------------------------------------

STU3_ONLY_TYPES = frozenset({
    "ProcedureRequest", "ReferralRequest", "BodySite", "DataElement", "DeviceComponent", "EligibilityRequest",
    "EligibilityResponse", "EnrollmentRequest", "ExpansionProfile", "ImagingManifest", "ProcessRequest",
    "ProcessResponse", "Sequence", "ServiceDefinition",
})
R5_ONLY_TYPES = frozenset({
    "ActorDefinition", "ArtifactAssessment", "BiologicallyDerivedProductDispense", "ConditionDefinition",
    "DeviceAssociation", "DeviceDispense", "DeviceUsage", "EncounterHistory", "FormularyItem", "GenomicStudy",
    "ImagingSelection", "InventoryItem", "InventoryReport", "NutritionIntake", "NutritionProduct", "Permission",
    "Requirements", "SubscriptionStatus", "SubscriptionTopic", "TestPlan", "Transport",
})
_R5_SHAPES = {  # elements whose R5 shape differs visibly from R4
    "MedicationRequest": ("medication",), "MedicationStatement": ("medication",),
    "MedicationAdministration": ("medication", "occurenceDateTime", "occurencePeriod"),
    "Condition": ("participant",), "Procedure": ("occurrenceDateTime", "occurrencePeriod"),
    "Observation": ("instantiatesCanonical",),
}


def check_r4_bundle(data: Any, source: str = "input") -> None:
    """Raise ValueError naming the first problem unless `data` is a FHIR R4 Bundle whose resources parse.

    Uses fhir.resources.R4B (R4-compatible for the resources we read); slow, so CLI/validation use only.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source} is not a FHIR Bundle: the JSON is a {type(data).__name__}, not an object")
    rtype = data.get("resourceType")
    if rtype != "Bundle":
        raise ValueError(f"{source} is not a FHIR Bundle (resourceType is {rtype!r})")
    entries = data.get("entry", [])
    if not isinstance(entries, list):
        raise ValueError(f"{source}: Bundle.entry is not a list")
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    for i, entry in enumerate(entries):
        where = f"{source}: entry[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            raise ValueError(f"{where} has no resource object")
        res = entry["resource"]
        kind = res.get("resourceType")
        if not isinstance(kind, str):
            raise ValueError(f"{where}: resource has no resourceType")
        label = f"{kind}/{res.get('id')}" if res.get("id") else kind
        if kind in STU3_ONLY_TYPES:
            raise ValueError(f"{where} ({label}): {kind} is a FHIR STU3 resource type; this service reads FHIR R4")
        if kind in R5_ONLY_TYPES:
            raise ValueError(f"{where} ({label}): {kind} exists only in FHIR R5; this service reads FHIR R4")
        if kind == "Condition":
            for el in ("clinicalStatus", "verificationStatus"):
                if isinstance(res.get(el), str):
                    raise ValueError(f"{where} ({label}): Condition.{el} is a plain string (FHIR STU3 shape); "
                                     "FHIR R4 uses a CodeableConcept")
        for el in _R5_SHAPES.get(kind, ()):
            if el in res:
                raise ValueError(f"{where} ({label}): element '{el}' is FHIR R5; this service reads FHIR R4")
        try:
            model = get_fhir_model_class(kind)
        except (ValueError, KeyError):
            raise ValueError(f"{where}: {kind!r} is not a FHIR R4 resource type") from None
        try:
            model.model_validate(res)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__") or kind
            raise ValueError(f"{where} ({label}) does not parse as FHIR R4: {loc}: {err.get('msg')}") from None
        except Exception as exc:  # noqa: BLE001 - a model bug must still be a readable message
            raise ValueError(f"{where} ({label}) does not parse as FHIR R4: {exc}") from None
    patients = [e["resource"].get("id") for e in entries if e["resource"].get("resourceType") == "Patient"]
    if len(set(patients)) > 1:
        raise ValueError(f"{source}: the Bundle holds {len(set(patients))} different patients; expected one")
