"""FHIR R4 JSON (plain dicts) -> PatientSnapshot: typed, unit-normalised, every valid value per measure.

This runs on every CDS hook call, so it reads dicts directly and checks only the elements it uses (validating
prefetch Bundles with fhir.resources models was measured at ~50x slower than the web framework). Real EHR data
is messy, and recognition works by value set, never by one code: any coding of a CodeableConcept may match
(ICD-10-CM, WHO ICD-10, SNOMED CT; LOINC variants by method, specimen and site; RxNorm ingredients, clinical and
branded drugs, ATC, HCPCS, Medication resources; CPT, ICD-10-PCS, OPCS-4 procedures), refuted /
entered-in-error data is ignored, and values are read into one canonical UCUM unit per measure (values.py).
A malformed resource is skipped and noted; a safety-relevant value that is present but unreadable is never
skipped: it is kept in `PatientSnapshot.unreadable`, and the rules require a clinician to check it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from operator import attrgetter
from typing import Any, Callable, ClassVar, Mapping

from service.canonical import CS_COMPANION_ALERT as COMPANION_ALERT
from service.clinical.selfreport import urgency_rank
from service.clinical.drugs import classify as classify_drug
from service.clinical.drugs import concepts as drug_concepts
from service.clinical.model import (
    CodedFact,
    Measurement,
    PatientAlert,
    PatientSnapshot,
    PlannedDose,
    Referral,
    Treatment,
    TreatmentKind,
    Unreadable,
)
from service.clinical.values import ValueReader, interpretation_flag
from service.terminology import MeasureInfo, Terminology, get_terminology

UTC = timezone.utc

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
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # e.g. "0001-01-01T00:00:00+01:00": before year 1 in UTC; no usable date
        return None


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
HISTORY_CLINICAL = CANCER_CLINICAL | {"inactive", "resolved"}  # "history of cancer" is a fact whatever its status
IGNORED_OBSERVATION = {"entered-in-error", "cancelled", "registered"}


@dataclass(frozen=True)
class ConditionFact:
    """A kind of non-cancer Condition the rules read: snapshot key, value set, and when it counts.

    `active_only`: only an active/recurrent/relapsed (or status-less) Condition counts. `within_days`: the onset
    *or* the recorded date must fall within this many days (a symptom coded today with an onset last year is
    new to us); None: any time.
    """

    key: str
    valueset: str
    active_only: bool = True
    within_days: int | None = None


# First match wins, so the more specific sets come first (febrile neutropenia before fever and neutropenia).
CONDITION_FACTS: tuple[ConditionFact, ...] = (
    ConditionFact("febrile-neutropenia", "febrile-neutropenia", within_days=30),
    ConditionFact("fever", "fever-condition", within_days=7),
    ConditionFact("neutropenia", "neutropenia-condition", within_days=30),
    ConditionFact("spinal-cord-compression", "spinal-cord-compression", within_days=180),
    ConditionFact("pathological-fracture", "pathological-fracture", within_days=180),
    ConditionFact("vte", "vte", within_days=90),
    ConditionFact("myocarditis", "myocarditis-pericarditis", within_days=180),
    ConditionFact("immune-myositis", "immune-myositis", within_days=180),
    ConditionFact("hypercalcaemia", "hypercalcaemia", within_days=30),
    ConditionFact("symptom", "red-flag-symptom", within_days=30),
    ConditionFact("falls", "comorbidity-falls", active_only=False, within_days=365),
    ConditionFact("seizure", "seizure"),
    ConditionFact("gvhd", "gvhd"),
    ConditionFact("hsct", "hsct"),
    ConditionFact("ostomy", "ostomy"),
    ConditionFact("central-line", "central-venous-line"),
    ConditionFact("pregnancy", "pregnancy", within_days=300),
    ConditionFact("cachexia", "cachexia", within_days=180),
    ConditionFact("cardiac", "comorbidity-cardiac"),
    ConditionFact("neuropathy", "comorbidity-neuropathy"),
    ConditionFact("lymphedema", "comorbidity-lymphedema"),
    ConditionFact("diabetes", "comorbidity-diabetes"),
    ConditionFact("arthritis-osteoporosis", "comorbidity-arthritis-osteoporosis"),
)
PROC_CLASS_ORDER: tuple[tuple[TreatmentKind, str], ...] = (
    ("radiotherapy", "treatment-radiotherapy"),
    ("chemotherapy", "treatment-chemotherapy-procedure"),
    ("chemotherapy", "treatment-chemotherapy"),
    ("immunotherapy", "treatment-immunotherapy"),
    ("endocrine", "treatment-endocrine"),
    ("surgery", "treatment-surgery"),
)
# Procedures that are facts rather than treatments: (snapshot key, value set).
PROC_FACTS: tuple[tuple[str, str], ...] = (("hsct", "hsct"), ("central-line", "central-venous-line-insertion"))
TASK_FULFILL = ("http://hl7.org/fhir/CodeSystem/task-code", "fulfill")
DEVICE_SOURCED = frozenset({"exercise-minutes", "steps-per-day"})  # whose source (a device or not) matters
TASK_CLEARANCE = ("http://hl7.org/fhir/CodeSystem/task-code", "approve")  # the clinician's clearance of a deferral
TASK_OPEN = frozenset({"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"})
# A chemotherapy/immunotherapy dose within this window means "on treatment" (a typical 2-4 week cycle).
ADMINISTRATION_ACTIVE_DAYS = 28
# Radiotherapy is given in daily fractions: a fraction (or the end of a course) within this window means "during
# radiotherapy" (a gap of two weeks means the course is over; skin reactions peak in the fortnight after it).
RADIOTHERAPY_RECENT_DAYS = 14
# An "active" anticancer order authored longer ago than this, with no end date, no validity period covering
# now and no administration since, is not current treatment (orders are renewed well within six months).
STALE_ORDER_DAYS = 180
# A central line inserted within this many days is assumed still in place unless a Device says otherwise.
LINE_ASSUMED_DAYS = 180


def _measurement_factory() -> Callable[..., Measurement]:
    """`Measurement(...)` for the hot loop (one per Observation value, ~170 per hook call).

    The frozen dataclass's generated __init__ sets each field through object.__setattr__ (~1.5 us a call);
    filling the instance __dict__ directly makes the same object (same fields, eq, hash, repr) in a third of
    the time. Only while Measurement is the plain frozen dataclass this was written for: with slots, a
    __post_init__ or other fields, the real constructor is used.
    """
    names = tuple(f.name for f in dataclasses.fields(Measurement))
    plain = (names == ("measure", "value", "unit", "effective", "ref", "code", "components", "comparator", "flag",
                       "derived_from")
             and "__slots__" not in Measurement.__dict__ and not hasattr(Measurement, "__post_init__"))
    if not plain:
        return Measurement
    new = object.__new__

    def make(measure: str, value: float, unit: str, effective: datetime, ref: str, code: str,
             components: tuple[tuple[str, float], ...] = (), comparator: str | None = None,
             flag: str | None = None, derived_from: tuple[str, ...] = ()) -> Measurement:
        m = new(Measurement)
        m.__dict__.update(measure=measure, value=value, unit=unit, effective=effective, ref=ref, code=code,
                          components=components, comparator=comparator, flag=flag, derived_from=derived_from)
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
    return any(k.startswith("value") for k in res)


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


@lru_cache(maxsize=8)
def _measure_positions(term: Terminology) -> dict[str, int]:
    """measure -> its place in the terminology's observation table (the snapshot's order of measures)."""
    return {key: i for i, key in enumerate(term.measures())}


def _within(days: int, now: datetime, *dates: datetime | None) -> bool:
    """True when any of `dates` (onset, recorded ...) falls within `days` before `now`."""
    return any(d is not None and (now - d).days <= days for d in dates)


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
    cancer_history: list[CodedFact] = field(default_factory=list)
    metastases: list[CodedFact] = field(default_factory=list)
    regional: list[CodedFact] = field(default_factory=list)
    bone: list[CodedFact] = field(default_factory=list)
    brain: list[CodedFact] = field(default_factory=list)
    comorbidities: dict[str, list[CodedFact]] = field(default_factory=dict)
    treatments: list[Treatment] = field(default_factory=list)
    values: dict[str, list[Measurement]] = field(default_factory=dict)
    unreadable: list[Unreadable] = field(default_factory=list)
    service_requests: list[tuple[str, str, datetime | None, str | None]] = field(default_factory=list)
    tasks: list[tuple[str, str, str, datetime | None, dict[str, Any]]] = field(default_factory=list)
    planned: list[PlannedDose] = field(default_factory=list)
    alerts: list[PatientAlert] = field(default_factory=list)
    device_refs: set[str] = field(default_factory=set)
    clearances: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (focus, what to resolve)
    # (focus, ref, status, time, the Task itself for its business status, reason and notes)
    medications: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    measure_by_code: dict[tuple[str, str], str] = field(default_factory=dict)
    infos: dict[str, MeasureInfo] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    # Per-snapshot memo (hot path): a lab panel's results share one timestamp, parsed once per snapshot.
    _dt_memo: dict[str, datetime | None] = field(default_factory=dict, repr=False)
    # measure -> the time before which its results are set aside unread (see `lookback`), and those set aside
    cutoffs: dict[str, datetime] = field(default_factory=dict)
    # measure -> (effective, resource, ref) of each result set aside, in input order
    older: dict[str, list[tuple[datetime, dict[str, Any], str]]] = field(default_factory=dict)
    anonymous: int = 0  # resources with neither an id nor a fullUrl, each given its own reference

    def __post_init__(self) -> None:
        self.measure_by_code = self.term.measure_index()
        self.infos = self.term.measures()
        self.units = {k: m.unit for k, m in self.infos.items()}
        self.reader = value_reader(self.term)
        self.positions = _measure_positions(self.term)

    def _position(self, measure: str) -> int:
        return self.positions.get(measure, len(self.positions))

    # ------------------------------------------------------------ entry point
    def add_all(self, items: list[tuple[dict[str, Any], str | None]]) -> None:
        # Patients and Medications first: other resources refer to them.
        for res, full_url in items:
            kind = res.get("resourceType")
            if kind == "Patient" and self.patient_ref is None:
                self._guard(_Builder._patient, res, full_url)
            elif kind == "Medication":
                ref = self._ref(kind, res, full_url)
                self.medications[ref] = res
                if full_url:
                    self.medications[full_url] = res
        cutoffs = self.cutoffs
        for res, full_url in items:
            kind = res.get("resourceType")
            if kind == "Observation" and cutoffs and self._set_aside(res, full_url):
                continue
            handler = self._HANDLERS.get(kind)  # type: ignore[arg-type]
            if handler is not None:
                self._guard(handler, res, full_url)

    def _guard(self, handler: Callable[..., None], res: dict[str, Any], full_url: str | None) -> None:
        kind = res["resourceType"]
        ref = self._ref(kind, res, full_url)
        if ref in self.seen and kind != "Patient":
            return  # the same resource in two prefetch Bundles
        self.seen.add(ref)
        self._run(handler, res, ref)

    def _ref(self, kind: str, res: dict[str, Any], full_url: str | None) -> str:
        """`Kind/id`, else the fullUrl; a resource with neither gets one of its own (`Kind/(no id 2)`), so that
        it is not taken for a copy of another one and skipped."""
        rid = res.get("id")
        if isinstance(rid, str) and rid:
            return f"{kind}/{rid}"
        if full_url:
            return full_url
        self.anonymous += 1
        return f"{kind}/(no id {self.anonymous})"

    def _run(self, handler: Callable[..., None], res: dict[str, Any], ref: str) -> None:
        """One resource's handler; a resource naming another patient as its subject, or malformed, is skipped
        with a note."""
        kind = res["resourceType"]
        try:
            if self.patient_aliases and kind != "Patient":
                subject = res.get("subject") or res.get("patient") or res.get("for")
                if isinstance(subject, dict):
                    sref = subject.get("reference")
                    if isinstance(sref, str) and sref.startswith("Patient/") and sref not in self.patient_aliases:
                        raise _Skip("belongs to another patient")
            handler(self, res, ref)
        except _Skip as exc:
            self.issues.append(f"{ref} skipped: {exc}")
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            self.issues.append(f"{ref} skipped: malformed ({type(exc).__name__})")

    def _set_aside(self, res: dict[str, Any], full_url: str | None) -> bool:
        """True when `res` is a result older than its measure's lookback: kept unread (see `result`). Anything
        unusual (no plain date, a panel, a status we ignore, a malformed code) goes the normal way instead."""
        when = res.get("effectiveDateTime")
        status = res.get("status")
        if type(when) is not str or type(status) is not str or status in IGNORED_OBSERVATION or "component" in res:
            return False
        # _dt and _measure_of, inlined: this runs for every dated Observation of every hook call
        effective = self._dt_memo.get(when) or self._dt(when)
        if effective is None:
            return False
        code = res.get("code")
        codings = code.get("coding") if type(code) is dict else None
        if type(codings) is not list:
            return False
        by_code, measure = self.measure_by_code, None
        try:
            for coding in codings:
                if type(coding) is dict and (measure := by_code.get((coding.get("system"), coding.get("code")))):
                    break
        except TypeError:  # an unhashable system or code: malformed, reported by the normal way
            return False
        cutoff = self.cutoffs.get(measure) if measure else None
        if cutoff is None or effective >= cutoff:
            return False
        ref = self._ref("Observation", res, full_url)
        if ref not in self.seen:  # the first copy of a resource counts, as in _guard
            self.seen.add(ref)
            self.older.setdefault(measure, []).append((effective, res, ref))  # type: ignore[arg-type]
        return True

    def _release(self, measure: str, whole: bool) -> None:
        """Read the results of `measure` set aside as older than its lookback: all of them in their input order,
        or (not `whole`) the newest first until one reads (the `stale` value when there is no current one)."""
        older = self.older.pop(measure, [])
        if whole:
            for _, res, ref in older:
                self._run(_Builder._observation, res, ref)
            return
        for effective, res, ref in sorted(older, key=lambda x: (x[0], x[2]), reverse=True):
            newest = self._newest(measure)
            if newest is not None and effective < newest:
                return  # all that share the newest time are read (a conflict there is shown)
            self._run(_Builder._observation, res, ref)

    def _newest(self, measure: str) -> datetime | None:
        got = self.values.get(measure)
        return max(m.effective for m in got) if got else None

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
        onset = parse_datetime(res.get("onsetDateTime"))
        if onset is None and isinstance(res.get("onsetPeriod"), dict):
            onset = parse_datetime(res["onsetPeriod"].get("start"))
        recorded = parse_datetime(res.get("recordedDate"))
        when = onset or recorded
        if when is not None and when > self.now and (recorded is None or recorded > self.now):
            return  # recorded after the reference time
        is_active = clinical is None or clinical in ACTIVE_CLINICAL
        if self._cancer_condition(res, ref, code, clinical, is_active, when):
            return
        t = self.term
        for cf in CONDITION_FACTS:
            c = t.match(cf.valueset, code)
            if c is None:
                continue
            if cf.active_only and not is_active:
                return
            if cf.within_days is not None and not _within(cf.within_days, self.now, onset, recorded):
                return
            self.comorbidities.setdefault(cf.key, []).append(self._fact(ref, code, c, when))
            return

    def _fact(self, ref: str, code: dict[str, Any], coding: dict[str, Any], when: datetime | None) -> CodedFact:
        return CodedFact(ref, coding.get("system", ""), coding.get("code", ""), _cc_display(code, coding, self.term),
                         when.date() if when else None)

    def _cancer_condition(self, res: dict[str, Any], ref: str, code: dict[str, Any], clinical: str | None,
                          is_active: bool, when: datetime | None) -> bool:
        """Record a cancer Condition (primary, history, regional nodes, distant/bone/brain metastasis); False if
        the code is not a cancer. mCODE codes the site of a metastasis in bodySite: a secondary malignant
        neoplasm with bodySite bone is a bone metastasis."""
        t = self.term
        if (c := t.match("bone-metastasis", code)) is not None:
            site = "bone"
        elif (c := t.match("brain-metastasis", code)) is not None:
            site = "brain"
        elif (c := t.match("cancer-regional-nodes", code)) is not None:
            site = "nodes"
        elif (c := t.match("cancer-secondary", code)) is not None:
            site = self._metastasis_site(res)
        else:
            site = None
        if c is not None:
            if is_active:
                f = self._fact(ref, code, c, when)
                if site == "nodes":
                    self.regional.append(f)
                else:
                    self.metastases.append(f)
                    if site == "bone":
                        self.bone.append(f)
                    elif site == "brain":
                        self.brain.append(f)
            return True
        if (c := t.match("cancer-primary", code)) is not None:
            if clinical is None or clinical in CANCER_CLINICAL:
                self.cancers.append(self._fact(ref, code, c, when))
            return True
        if (c := t.match("cancer-history", code)) is not None:
            if clinical is None or clinical in HISTORY_CLINICAL:
                self.cancer_history.append(self._fact(ref, code, c, when))
            return True
        return False

    def _metastasis_site(self, res: dict[str, Any]) -> str | None:
        t = self.term
        for site in res.get("bodySite") or ():
            if not isinstance(site, dict):
                continue
            if t.match("body-site-bone", site) is not None or t.match("body-site-spine", site) is not None:
                return "bone"
            if t.match("body-site-brain", site) is not None:
                return "brain"
            if t.match("body-site-lymph-node", site) is not None:
                return "nodes"
        return None

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
            if _has_value(res) and self.infos[measure].unreadable != "note":
                self._unreadable(measure, ref, "no date or time (cannot tell whether it is current)", None)
                return
            raise _Skip("no effective time")
        if effective > self.now:
            return
        units = self.units
        flag = interpretation_flag(res) if "interpretation" in res else None
        comps = res.get("component")
        if comps:
            # A panel (e.g. blood pressure): each component is its own measure, carrying the others alongside.
            parts: list[tuple[str, float, str, str | None]] = []
            for comp in comps:
                if not isinstance(comp, dict) or "dataAbsentReason" in comp:
                    continue
                cfound = self._measure_of(comp.get("code"))
                if cfound is None:
                    continue
                cval = self.reader.read(self.infos[cfound[0]], comp)
                if isinstance(cval, str):
                    self._unreadable(cfound[0], ref, cval, effective)
                elif cval is not None:
                    parts.append((cfound[0], cval[0], cfound[1], cval[1]))
            for name, cv, ccode, ccomp in parts:
                others = tuple((n, v) for n, v, _, _ in parts if n != name)
                self._add(_measurement(name, cv, units[name], effective, ref, ccode, others, ccomp,
                                       interpretation_flag(comp) if "interpretation" in comp else flag))
            if parts and not _has_value(res):
                return
        if measure == "blood-pressure" or "dataAbsentReason" in res:
            return
        value = self.reader.read(self.infos[measure], res)
        if value is None:
            return
        if type(value) is str:
            self._unreadable(measure, ref, value + (f" (the lab flagged it {flag})" if flag else ""), effective)
            return
        m = _measurement(measure, value[0], units[measure], effective, ref, code_str, (), value[1], flag)
        if "device" in res and measure in DEVICE_SOURCED:
            self.device_refs.add(ref)
        values = self.values.get(measure)  # _add, inlined
        if values is None:
            self.values[measure] = [m]
        else:
            values.append(m)

    def _unreadable(self, measure: str, ref: str, problem: str, effective: datetime | None) -> None:
        """A value that is present but unreadable: a safety-relevant one is kept (shown, needs clearance)."""
        info = self.infos[measure]
        if info.unreadable == "note" or (effective is not None and
                                         (self.now - effective).days > info.max_age_days):
            self.issues.append(f"{ref} skipped: {info.display.lower()}: {problem}")
            return
        self.unreadable.append(Unreadable(measure, info.display, ref, problem, info.unreadable, effective))

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

    def _add(self, m: Measurement) -> None:
        self.values.setdefault(m.measure, []).append(m)

    # ------------------------------------------------------------ medications
    def _cancer_reason(self, res: dict[str, Any]) -> bool:
        t = self.term
        return any(t.match("cancer-primary", r) or t.match("cancer-secondary", r) or t.match("cancer-history", r)
                   or t.match("cancer-regional-nodes", r) for r in res.get("reasonCode") or ())

    def _medication(self, res: dict[str, Any], ref: str) -> None:
        kind_ = res["resourceType"]
        status = res.get("status")
        stale = False
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
            validity = ((res.get("dispenseRequest") or {}).get("validityPeriod") or {})
            valid_to = parse_datetime(validity.get("end")) if isinstance(validity, dict) else None
            active = status in ("active", "on-hold") and (end is None or end >= self.now)
            if (active and end is None and start is not None and (self.now - start).days > STALE_ORDER_DAYS
                    and (valid_to is None or valid_to < self.now)):
                active, stale = False, True
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
        ccs = drug_concepts(res, self.medications)
        drug = classify_drug(ccs, self.term, self._cancer_reason(res))
        if not drug.kinds:
            if active and drug.other in ("beta-blocker", "anticoagulant"):
                self.comorbidities.setdefault(drug.other, []).append(
                    CodedFact(ref, "", "", drug.display, start.date() if start else None))
            return
        for kind in drug.kinds:
            self.treatments.append(Treatment(kind, ref, drug.display or kind, start, end, active, drug.cardiotoxic,
                                             stale))

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
        t = self.term
        start, end = self._period(res, "performed")
        for key, vs in PROC_FACTS:
            if (c := t.match(vs, code)) is not None:
                when = end or start
                if when is not None and when <= self.now:
                    self.comorbidities.setdefault(key, []).append(self._fact(ref, code, c, when))
                return
        kind: TreatmentKind | None = None
        coding = None
        for k, vs in PROC_CLASS_ORDER:
            if (coding := t.match(vs, code)) is not None:
                kind = k
                break
        if kind is None and any(isinstance(cat, dict) and t.match("procedure-category-surgical", cat) is not None
                                for cat in _categories(res)):
            kind = "surgery"
        if kind is None:
            return
        if start is None and end is None:
            raise _Skip("no performed time")
        if (start or end) > self.now:  # type: ignore[operator]
            return
        last = end or start
        if kind == "surgery":
            active = status == "in-progress"
        elif status == "in-progress" or (end is None and "performedPeriod" in res):
            active = True
        else:  # a completed dose or fraction: on treatment while the last one is recent
            recent = RADIOTHERAPY_RECENT_DAYS if kind == "radiotherapy" else ADMINISTRATION_ACTIVE_DAYS
            active = last is not None and (self.now - last).days <= recent
        cardiotoxic = t.match("cardiotoxic-therapy", code) is not None
        self.treatments.append(Treatment(kind, ref, _cc_display(code, coding, t) or kind, start, end, active, cardiotoxic))

    # ------------------------------------------------------------ Device (central lines)
    def _device(self, res: dict[str, Any], ref: str) -> None:
        if res.get("status") not in (None, "active"):
            return
        c = self.term.match("central-venous-line-device", res.get("type"))
        if c is not None:
            self.comorbidities.setdefault("central-line", []).append(
                CodedFact(ref, c.get("system", ""), c.get("code", ""), _cc_display(res.get("type"), c, self.term)))

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
        if status == "active":
            dose = _weekly_dose(res, ref)
            if dose is not None:
                self.planned.append(dose)

    def _flag(self, res: dict[str, Any], ref: str) -> None:
        """An open Flag the patient companion raised (its code is one of the companion's alert rules); one whose
        period has ended is closed."""
        if res.get("status") != "active":
            return
        period = res.get("period") if isinstance(res.get("period"), dict) else {}
        end = parse_datetime(period.get("end"))
        if end is not None and end < self.now:
            return
        code = res.get("code") if isinstance(res.get("code"), dict) else {}
        for c in code.get("coding") or ():
            if isinstance(c, dict) and c.get("system") == COMPANION_ALERT and isinstance(c.get("code"), str):
                when = parse_datetime(period.get("start"))
                text = code.get("text") if isinstance(code.get("text"), str) else c.get("display") or c["code"]
                self.alerts.append(PatientAlert(ref, c["code"], str(text), when))
                return

    def _task(self, res: dict[str, Any], ref: str) -> None:
        code = res.get("code")
        codes = {(c.get("system"), c.get("code")) for c in (code.get("coding") or () if isinstance(code, dict) else ())
                 if isinstance(c, dict)}
        focus = (res.get("focus") or {}).get("reference")
        status = res.get("status")
        if not isinstance(focus, str) or not isinstance(status, str) or status == "entered-in-error":
            return
        if TASK_CLEARANCE in codes:
            if status in TASK_OPEN:
                lines = [i["valueString"] for i in res.get("input") or () if isinstance(i, dict)
                         and isinstance(i.get("valueString"), str)]
                self.clearances.append((focus, tuple(lines) or ("Review the red flags in the record.",)))
            return
        if TASK_FULFILL not in codes:
            return
        when = parse_datetime(res.get("lastModified")) or parse_datetime(res.get("authoredOn"))
        self.tasks.append((focus, ref, status, when, res))

    _HANDLERS: ClassVar[dict[str, Callable[..., None]]] = {
        "Condition": _condition,
        "Observation": _observation,
        "MedicationRequest": _medication,
        "MedicationAdministration": _medication,
        "MedicationStatement": _medication,
        "Procedure": _procedure,
        "Device": _device,
        "ServiceRequest": _service_request,
        "Task": _task,
        "Flag": _flag,
    }

    # ------------------------------------------------------------ result
    def result(self) -> PatientSnapshot:
        if self.older:
            # A measure with no result inside its lookback is read in full (its newest older result is `stale`);
            # neutrophils reported in parts are combined with the white cells of the same draw, so then the
            # whole blood count is read in full.
            parts = any(k in self.values or k in self.older for k in NEUTROPHIL_PARTS)
            for measure in list(self.older):
                if parts and measure in BLOOD_COUNT:
                    self._release(measure, whole=True)
                elif (newest := self._newest(measure)) is None or newest < self.cutoffs[measure]:
                    self._release(measure, whole=False)  # nothing inside the lookback (a panel's, a period's)
        for m in derived_anc(self.values):
            self._add(m)
        latest: dict[str, Measurement] = {}
        stale: dict[str, Measurement] = {}
        history: dict[str, tuple[Measurement, ...]] = {}
        measures = self.infos
        # in the terminology's order, not the input's: what reads them in order (findings, wording) is the same
        # whatever order the EHR sent them in
        for measure in sorted(self.values, key=self._position):
            values = self.values[measure]
            values.sort(key=_BY_TIME)  # (effective, ref)
            history[measure] = tuple(values)
            newest = values[-1]
            if self.now - newest.effective <= timedelta(days=measures[measure].max_age_days):
                latest[measure] = newest
            else:
                stale[measure] = newest
        referrals = []
        for sr_ref, status, authored, ident in sorted(self.service_requests, key=lambda s: s[0]):
            def about(focus: str) -> bool:
                return focus == sr_ref or focus.endswith("/" + sr_ref)

            mine = [tk for tk in self.tasks if about(tk[0])]
            mine.sort(key=lambda tk: (tk[3] or datetime.min.replace(tzinfo=UTC), tk[1]))
            task = mine[-1] if mine else None
            pending = tuple(line for focus, lines in self.clearances if about(focus) for line in lines) \
                if status == "on-hold" else ()
            if task is None:
                referrals.append(Referral(sr_ref, status, authored, identifier=ident, to_resolve=pending))
                continue
            t = task[4]
            referrals.append(Referral(sr_ref, status, authored, task[1], task[2], ident,
                                      concept_text(t.get("businessStatus")), concept_text(t.get("statusReason")),
                                      _newest_note(t.get("note")), task[3], to_resolve=pending,
                                      task_report=_report_ref(t.get("output"))))
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
            cancer_history=tuple(self.cancer_history),
            regional_nodes=tuple(self.regional),
            brain_metastases=tuple(self.brain),
            unreadable=tuple(sorted(self.unreadable, key=lambda u: (u.requires != "defer", u.measure, u.ref))),
            planned=tuple(sorted(self.planned, key=lambda d: (d.start or date.min, d.ref))),
            patient_alerts=tuple(sorted(self.alerts, key=lambda a: (urgency_rank(a.rule),
                                                                    -(a.reported or self.now).timestamp(), a.ref))),
            device_refs=frozenset(self.device_refs),
        )


def _weekly_dose(res: dict[str, Any], ref: str) -> PlannedDose | None:
    """Weekly minutes of a prescription timed as `frequency` sessions of `duration` minutes per week."""
    timing = res.get("occurrenceTiming")
    rep = timing.get("repeat") if isinstance(timing, dict) else None
    if not isinstance(rep, dict) or rep.get("periodUnit") != "wk" or rep.get("durationUnit") != "min":
        return None
    freq, period, minutes = rep.get("frequency"), rep.get("period", 1), rep.get("duration")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (freq, period, minutes)):
        return None
    bounds = rep.get("boundsPeriod") if isinstance(rep.get("boundsPeriod"), dict) else {}
    start, end = parse_datetime(bounds.get("start")), parse_datetime(bounds.get("end"))
    return PlannedDose(ref, float(freq) * float(minutes) / float(period), start.date() if start else None,
                       end.date() if end else None)


NEUTROPHIL_PARTS = ("neutrophils-segmented", "neutrophils-band", "neutrophils-percent", "neutrophils-segmented-percent",
                    "neutrophils-band-percent")
BLOOD_COUNT = frozenset({"wbc", "anc", *NEUTROPHIL_PARTS})  # what `derived_anc` combines


def derived_anc(values: dict[str, list[Measurement]]) -> list[Measurement]:
    """Absolute neutrophil counts for draws where the lab reported the neutrophils only in parts.

    Segmented + band counts are summed (segmented alone is a slight underestimate: the safe side for a
    low-danger measure); otherwise white cells x neutrophil percentage (total, or segmented + band). Only
    results taken at the same time are combined, never a bound ("< 0.1"): a guess is not a count.
    """
    def at(key: str) -> dict[datetime, Measurement]:
        return {m.effective: m for m in values.get(key, ()) if m.comparator is None}

    if not any(k in values for k in ("neutrophils-segmented", "neutrophils-percent", "neutrophils-segmented-percent")):
        return []  # the common case: the lab sent the count itself
    direct = {m.effective for m in values.get("anc", ())}
    segs, bands, wbc = at("neutrophils-segmented"), at("neutrophils-band"), at("wbc")
    pct, segs_pct, bands_pct = at("neutrophils-percent"), at("neutrophils-segmented-percent"), at("neutrophils-band-percent")
    out: list[Measurement] = []
    for when in sorted(set(segs) | set(pct) | set(segs_pct)):
        if when in direct:
            continue
        parts: list[Measurement]
        if when in segs:
            parts = [segs[when]] + ([bands[when]] if when in bands else [])
            value = sum(p.value for p in parts)
        elif when in wbc and (when in pct or when in segs_pct):
            share = [pct[when]] if when in pct else [segs_pct[when]] + ([bands_pct[when]] if when in bands_pct else [])
            parts = [wbc[when], *share]
            value = wbc[when].value * sum(p.value for p in share) / 100.0
        else:
            continue
        refs = tuple(dict.fromkeys(p.ref for p in parts))
        out.append(_measurement("anc", round(value, 3), "10*3/uL", when, refs[0], "calculated", (), None, None, refs))
    return out


def concept_text(cc: Any) -> str | None:
    """The words of a CodeableConcept: its text, else its first coding's display."""
    if not isinstance(cc, dict):
        return None
    if isinstance(cc.get("text"), str) and cc["text"].strip():
        return cc["text"].strip()
    return next((c["display"] for c in cc.get("coding") or () if isinstance(c, dict) and isinstance(c.get("display"), str)),
                None)


def _report_ref(outputs: Any) -> str | None:
    """The last DiagnosticReport a Task's output points at (the service's programme report)."""
    refs = [((o.get("valueReference") or {}).get("reference")) for o in outputs or () if isinstance(o, dict)
            and isinstance(o.get("valueReference"), dict)]
    reports = [r for r in refs if isinstance(r, str) and "DiagnosticReport/" in r]
    return reports[-1] if reports else None


def _newest_note(notes: Any) -> str | None:
    """The text of the newest Annotation (by time; the last one when times are missing)."""
    if not isinstance(notes, list):
        return None
    valid = [(parse_datetime(n.get("time")) or datetime.min.replace(tzinfo=UTC), i, n["text"])
             for i, n in enumerate(notes) if isinstance(n, dict) and isinstance(n.get("text"), str)]
    return max(valid)[2] if valid else None


def _categories(res: dict[str, Any]) -> list[Any]:
    """Procedure.category is one CodeableConcept in R4 (a list in R5 and in some R4 servers' output)."""
    cat = res.get("category")
    return cat if isinstance(cat, list) else [cat]


@lru_cache(maxsize=4)
def value_reader(term: Terminology) -> ValueReader:
    """One ValueReader per Terminology: its unit memo lives as long as the process."""
    return ValueReader(term)


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


def build_snapshot_report(data: Any, now: datetime, terminology: Terminology | None = None,
                          lookback: Mapping[str, int] | None = None) -> tuple[PatientSnapshot, tuple[str, ...]]:
    """The snapshot plus notes on every resource that was skipped (malformed, unusable unit, other patient).

    `lookback` (measure -> days, see `service.clinical.lookback`) leaves out the history of those measures
    older than that many days, when a newer result exists: what the rules read is unchanged, the reading of
    years of monthly labs is saved (the CDS hook). Without it the history is complete (the app's trends).
    """
    at = as_utc(now)
    builder = _Builder(at, terminology or get_terminology())
    if lookback:
        builder.cutoffs = {m: at - timedelta(days=days) for m, days in lookback.items()}
    builder.add_all(iter_resources(data))
    return builder.result(), tuple(builder.issues)


def build_snapshot(data: Any, now: datetime, lookback: Mapping[str, int] | None = None) -> PatientSnapshot:
    """FHIR R4 Bundle(s)/resource(s) as dicts -> PatientSnapshot at `now` (hot path: no model validation)."""
    return build_snapshot_report(data, now, lookback=lookback)[0]


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
