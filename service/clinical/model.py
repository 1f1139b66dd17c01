"""The typed values the clinical core passes around: what we know about a patient, and what we prescribe.

These types are the contract between the functional core and every outer layer (FHIR resources, CDS cards,
the SMART app, the CLI). They are frozen so a Prescription can be shared and cached without surprises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

Setting = Literal["home-based", "community", "supervised", "defer"]
ComponentType = Literal["aerobic", "resistance", "flexibility", "balance"]
TreatmentKind = Literal["chemotherapy", "immunotherapy", "endocrine", "targeted", "radiotherapy", "surgery"]

# Settings ordered from least to most restrictive: the most restrictive one wins.
SETTING_ORDER: tuple[Setting, ...] = ("home-based", "community", "supervised", "defer")


# ---------------------------------------------------------------------------------------------------------
# What we know: PatientSnapshot
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodedFact:
    """A Condition reduced to what the rules use; `ref` is the FHIR relative reference ("Condition/123")."""

    ref: str
    system: str
    code: str
    display: str
    onset: date | None = None


@dataclass(frozen=True)
class Measurement:
    """One Observation value, normalised to the canonical UCUM unit of its measure.

    `measure` is the key of the observation codes table in terminology/ (e.g. "platelets", "hemoglobin",
    "six-minute-walk", "ecog", "evs-minutes-per-week"); `components` holds component values such as
    systolic/diastolic for blood pressure (keyed by measure name too).
    """

    measure: str
    value: float
    unit: str
    effective: datetime
    ref: str
    code: str
    components: tuple[tuple[str, float], ...] = ()
    comparator: str | None = None  # "<", "<=", ">=", ">": the value is a bound, read toward the dangerous side
    flag: str | None = None  # the lab's critical interpretation (LL, HH, AA ...), a signal for review
    derived_from: tuple[str, ...] = ()  # a value calculated from other results (ANC from WBC x neutrophil %)


@dataclass(frozen=True)
class Unreadable:
    """A safety-relevant datum that is present but could not be read: shown, and it requires clearance.

    `requires` is "defer" for measures whose dangerous value is a red flag (platelets, temperature ...) and
    "clearance" for the others; `what` names the datum for people ("Platelets", "Condition text").
    """

    measure: str
    what: str
    ref: str
    problem: str
    requires: str
    effective: datetime | None = None


@dataclass(frozen=True)
class Treatment:
    """An antineoplastic treatment (medication or procedure) with its time window."""

    kind: TreatmentKind
    ref: str
    display: str
    start: datetime | None
    end: datetime | None
    active: bool
    cardiotoxic: bool = False
    stale_order: bool = False  # an "active" order authored long ago with nothing since: not counted as current


@dataclass(frozen=True)
class Referral:
    """An existing exercise ServiceRequest (and its fulfil Task when known), for follow-up cards."""

    ref: str
    status: str
    authored: datetime | None
    task_ref: str | None = None
    task_status: str | None = None
    identifier: str | None = None
    task_business: str | None = None  # Task.businessStatus text: where the service is ("assessment booked")
    task_reason: str | None = None  # Task.statusReason text (why rejected / on hold / cancelled)
    task_note: str | None = None  # the newest Task.note: what the exercise service reported
    task_updated: datetime | None = None
    to_resolve: tuple[str, ...] = ()  # on hold pending medical clearance: what the clinician must resolve
    task_report: str | None = None  # the service's programme report (Task.output -> DiagnosticReport)

    @property
    def pending_clearance(self) -> bool:
        """Signed while deferred: on hold until a clinician records the clearance (nothing for the service)."""
        return self.status == "on-hold" and bool(self.to_resolve)


@dataclass(frozen=True)
class PlannedDose:
    """The weekly exercise minutes one signed prescription (a phase of it) asks for, and when."""

    ref: str
    minutes_per_week: float
    start: date | None = None
    end: date | None = None

    def covers(self, day: date) -> bool:
        return (self.start is None or self.start <= day) and (self.end is None or day <= self.end)


@dataclass(frozen=True)
class PatientAlert:
    """An open Flag the patient companion raised (a red flag or stop rule the patient reported)."""

    ref: str
    rule: str
    text: str
    reported: datetime | None


@dataclass(frozen=True)
class PatientSnapshot:
    """Everything the rules need about one patient at `as_of`, and what was missing or stale."""

    as_of: datetime
    patient_ref: str | None
    birth_date: date | None
    sex: str | None
    cancers: tuple[CodedFact, ...] = ()
    metastases: tuple[CodedFact, ...] = ()
    bone_metastases: tuple[CodedFact, ...] = ()
    comorbidities: dict[str, tuple[CodedFact, ...]] = field(default_factory=dict)
    treatments: tuple[Treatment, ...] = ()
    latest: dict[str, Measurement] = field(default_factory=dict)
    history: dict[str, tuple[Measurement, ...]] = field(default_factory=dict)
    stale: dict[str, Measurement] = field(default_factory=dict)
    referrals: tuple[Referral, ...] = ()
    cancer_history: tuple[CodedFact, ...] = ()  # personal history of cancer (survivors: in scope)
    regional_nodes: tuple[CodedFact, ...] = ()  # regional lymph-node involvement: cancer, not distant spread
    brain_metastases: tuple[CodedFact, ...] = ()
    unreadable: tuple[Unreadable, ...] = ()
    planned: tuple[PlannedDose, ...] = ()  # signed prescriptions' weekly minutes (active ones), per phase
    patient_alerts: tuple[PatientAlert, ...] = ()  # open companion Flags, most urgent first, then newest
    device_refs: frozenset[str] = frozenset()  # activity Observations a device recorded (not the patient)

    @property
    def has_cancer(self) -> bool:
        """A cancer of any kind on record: primary, metastatic, regional nodes or a history of cancer."""
        return bool(self.cancers or self.metastases or self.regional_nodes or self.cancer_history)

    @property
    def age(self) -> int | None:
        if self.birth_date is None:
            return None
        d = self.as_of.date()
        b = self.birth_date
        return d.year - b.year - ((d.month, d.day) < (b.month, b.day))


# ---------------------------------------------------------------------------------------------------------
# What we prescribe: Prescription
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preferences:
    """What the patient told us; shapes the plan within the safety limits."""

    preferred_setting: Setting | None = None
    activities: tuple[str, ...] = ()
    days_available: tuple[str, ...] = ()
    equipment: tuple[str, ...] = ()


@dataclass(frozen=True)
class Intensity:
    """Intensity on a named scale, e.g. scale "RPE 6-20" low 12 high 13 label "moderate"."""

    label: str
    scale: str
    low: float | None = None
    high: float | None = None
    hrr_low_pct: int | None = None
    hrr_high_pct: int | None = None


@dataclass(frozen=True)
class Component:
    type: ComponentType
    frequency_per_week: int
    minutes_per_session: int
    intensity: Intensity
    activities: tuple[str, ...] = ()
    sets: int | None = None
    repetitions: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Precaution:
    code: str
    text: str
    rule: str
    source: str


@dataclass(frozen=True)
class MissingData:
    """Data the plan needs and lacks; with `source` set, a result that is present but unreadable (its resource)."""

    measure: str
    text: str
    recommendation: str
    source: str | None = None


@dataclass(frozen=True)
class Reason:
    """One line of the rationale: which data point fired which rule, with what effect and on what source."""

    rule: str
    finding: str
    effect: str
    source: str
    refs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """A long-term goal the plan builds up to (e.g. 150 min/week of moderate aerobic activity).

    Kept apart from the components, which are the *starting* dose: a goal must never read as less than
    what the patient already does just because the plan starts gently.
    `measure` is "aerobic-minutes-per-week" or "strength-days-per-week".
    """

    measure: str
    value: int
    text: str


@dataclass(frozen=True)
class Clearance:
    """A clinician's record that the red flags deferring a plan were reviewed and exercise may start.

    It clears exactly the red-flag rules that fired when it was recorded (`rules`): a red flag that appears
    afterwards defers the plan again. A cleared red flag still sets a supervised start (the most cautious
    setting a clinician can then lower, with a clinical reason, like any other limit)."""

    by: str  # the clearing clinician (Practitioner reference)
    at: datetime
    rules: tuple[str, ...]
    reviewed: tuple[str, ...]  # what the clinician reviewed: the deferred plan's to-resolve items
    note: str
    by_display: str | None = None


@dataclass(frozen=True)
class Prescription:
    eligible: bool
    setting: Setting
    clearance_required: bool
    components: tuple[Component, ...]
    precautions: tuple[Precaution, ...]
    missing_data: tuple[MissingData, ...]
    rationale: tuple[Reason, ...]
    progression: tuple[str, ...]
    stop_rules: tuple[str, ...]
    red_flags: tuple[Reason, ...]
    ruleset_version: str
    generated_at: datetime
    patient_ref: str | None = None
    cancer_refs: tuple[str, ...] = ()
    supporting_refs: tuple[str, ...] = ()
    preferences: Preferences | None = None
    notes: tuple[str, ...] = ()
    targets: tuple[Target, ...] = ()
    to_resolve: tuple[str, ...] = ()  # a deferred plan: what the clinician must resolve before clearing it
    clearance: Clearance | None = None  # the clearance this plan was generated under (no longer deferred)
    progression_step_weeks: int = 1  # aerobic build-up: +5 min per session every N weeks (2 when progression is slow)
