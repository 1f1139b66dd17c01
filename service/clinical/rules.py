"""The rule table: every clinical decision the prescription makes, with its trigger, effect and source.

Each Rule pairs a predicate over `Facts` (derived once from a PatientSnapshot) with a declarative `Effect`
(setting floor, clearance, red flag, precaution, intensity/resistance caps, activities to avoid, volume).
`prescribe.py` combines the effects: the most restrictive setting wins, the lowest cap wins. Rules whose
predicate is None (preferences, clinician overrides) are applied by prescribe.py / edits.py; they are listed
here so the README table and the rationale share one vocabulary. Thresholds: exercise-oncology reference;
"common clinical practice" marks thresholds that are not guideline text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Literal

from service.clinical.model import SETTING_ORDER, Measurement, PatientSnapshot, Setting, Treatment
from service.clinical.units import with_unit

RULESET_VERSION = "1.0.0"

Level = Literal["light", "moderate", "vigorous"]
LEVELS: tuple[Level, ...] = ("light", "moderate", "vigorous")
ResistanceCap = Literal["none", "light", "moderate"]

# ------------------------------------------------------------------------------------------------ sources
CAMPBELL_2019 = "Campbell KL et al., Med Sci Sports Exerc 2019;51(11):2375-2390 (ACSM roundtable)"
SCHMITZ_2019 = "Schmitz KH et al., CA Cancer J Clin 2019;69:468-484"
EXCEEDS_2021 = "Covington KR et al., EXCEEDS, Support Care Cancer 2021;29:6469-6480"
BROWN_2015 = "Brown JC, Ko EM, Schmitz KH, PM&R 2015"
BONE_2022 = "International Bone Metastases Exercise Working Group, JCO Oncol Pract 2022 (doi 10.1200/OP.21.00454)"
MALTSER_2017 = "Maltser S et al., PM&R 2017, Table 2 (common clinical practice, not guideline text)"
PAG_2018 = "Physical Activity Guidelines for Americans, 2nd ed., 2018"
SANTA_MINA_2018 = "Santa Mina D et al., Curr Oncol 2018;25:149-162"
SEED_002 = "Safe exercise in metastatic/advanced cancer (seed 002); common clinical practice"
PRACTICE = "common clinical practice"
MCODE = "HL7 mCODE STU4 (cancer condition in scope)"

# ------------------------------------------------------------------------------------------------ thresholds
FEVER_C = 38.0
PLT_RED_FLAG, PLT_LIGHT, PLT_MODERATE = 20.0, 30.0, 50.0  # 10^9/L
HB_RED_FLAG, HB_LOW = 8.0, 11.0  # g/dL
ANC_RED_FLAG, ANC_LOW = 0.5, 1.5  # 10^9/L
TUG_FALL_RISK_S = 12.0  # CDC STEADI: >= 12 s indicates fall risk
SIX_MWT_LOW_M = 400.0
VO2PEAK_LOW = 18.0  # mL/kg/min
STS_LOW = 10.0  # 30-s chair stands
GRIP_LOW_KG = {"male": 27.0, "female": 16.0}  # EWGSOP2 cut-offs
SBP_HIGH, DBP_HIGH = 160.0, 100.0
FACIT_FATIGUE_LOW = 30.0  # FACIT-Fatigue 0-52; < 30 is commonly used for clinically significant fatigue
PAIN_SEVERE = 7.0
SURGERY_RECENT_DAYS = 42
CARDIOTOXIC_LOOKBACK_DAYS = 365
EVS_INACTIVE, EVS_TARGET = 10.0, 150.0
OLDER_ADULT_AGE = 65
FUNCTIONAL_MEASURES = ("six-minute-walk", "vo2peak", "sit-to-stand", "tug", "grip-right", "grip-left",
                       "two-minute-step")
CBC_MEASURES = ("platelets", "hemoglobin", "anc")
SYSTEMIC = ("chemotherapy", "immunotherapy", "targeted")


@dataclass(frozen=True)
class Hit:
    """A rule fired: what data point triggered it (human-readable) and the FHIR references behind it."""

    finding: str
    refs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Effect:
    ineligible: bool = False
    min_setting: Setting | None = None
    clearance: bool = False
    red_flag: bool = False
    precaution: str | None = None
    max_intensity: Level | None = None
    resistance: ResistanceCap | None = None
    add_balance: bool = False
    avoid: frozenset[str] = frozenset()
    volume: float | None = None  # multiplier on the starting aerobic minutes
    no_public: bool = False
    rpe_only: bool = False
    resistance_emphasis: bool = False
    slow_progression: bool = False
    missing: tuple[str, str] | None = None  # (measure, recommendation)
    note: str | None = None  # advice added to the plan
    until_cleared: str | None = None  # what the patient may do while deferred


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    trigger: str
    effect_text: str
    citation: str
    predicate: Callable[["Facts"], Hit | None] | None
    effect: Effect = Effect()


# ------------------------------------------------------------------------------------------------ facts


def _fmt(m: Measurement) -> str:
    value = f"{m.value:g}" if m.value == int(m.value) else f"{m.value:.1f}"
    return f"{m.measure} {with_unit(value, m.unit)} on {m.effective.date().isoformat()}"


@dataclass(frozen=True)
class Facts:
    """What the rules read, derived once from the snapshot (so each predicate is a cheap lookup)."""

    s: PatientSnapshot
    now: datetime

    def m(self, measure: str) -> Measurement | None:
        return self.s.latest.get(measure)

    def below(self, measure: str, threshold: float, floor: float | None = None) -> Hit | None:
        m = self.m(measure)
        if m is not None and m.value < threshold and (floor is None or m.value >= floor):
            return Hit(_fmt(m), (m.ref,))
        return None

    def performance_grade(self) -> tuple[int, Measurement] | None:
        """ECOG grade, from ECOG or from Karnofsky (80-100 -> 0-1, 60-70 -> 2, 40-50 -> 3, <= 30 -> 4); worst wins."""
        options: list[tuple[int, Measurement]] = []
        if (e := self.m("ecog")) is not None:
            options.append((int(round(e.value)), e))
        if (k := self.m("karnofsky")) is not None:
            kps = k.value
            grade = 1 if kps >= 80 else 2 if kps >= 60 else 3 if kps >= 40 else 4
            options.append((grade, k))
        return max(options, key=lambda o: o[0]) if options else None

    def ps(self, low: int, high: int) -> Hit | None:
        pg = self.performance_grade()
        if pg is not None and low <= pg[0] <= high:
            return Hit(f"performance status grade {pg[0]} ({_fmt(pg[1])})", (pg[1].ref,))
        return None

    def treatments(self, kind: str, active: bool = True) -> list[Treatment]:
        return [t for t in self.s.treatments if t.kind == kind and (t.active or not active)]

    def active(self, kind: str) -> Hit | None:
        ts = self.treatments(kind)
        if ts:
            return Hit(f"active {kind}: " + ", ".join(sorted({t.display for t in ts})), tuple(t.ref for t in ts))
        return None

    def comorbidity(self, key: str) -> Hit | None:
        facts = self.s.comorbidities.get(key, ())
        if facts:
            return Hit(", ".join(sorted({f.display or f.code for f in facts})), tuple(f.ref for f in facts))
        return None

    def evs_minutes(self) -> tuple[float, tuple[str, ...], str] | None:
        """Minutes/week of moderate-to-vigorous activity: 82290-8, else days/week x minutes/day."""
        if (m := self.m("evs-minutes-per-week")) is not None:
            return m.value, (m.ref,), _fmt(m)
        d, mpd = self.m("evs-days-per-week"), self.m("evs-minutes-per-day")
        if d is not None and mpd is not None:
            return d.value * mpd.value, (d.ref, mpd.ref), f"{d.value:g} days/week x {mpd.value:g} min/day"
        return None

    def evs(self, low: float, high: float | None) -> Hit | None:
        e = self.evs_minutes()
        if e is not None and e[0] >= low and (high is None or e[0] < high):
            return Hit(f"exercise vital sign {e[0]:g} min/week ({e[2]})", e[1])
        return None

    def eligible(self) -> bool:
        return bool(self.s.cancers or self.s.metastases)

    def fresh(self, measures: tuple[str, ...]) -> bool:
        return any(m in self.s.latest for m in measures)

    def stale_text(self, measures: tuple[str, ...]) -> str:
        stale = [self.s.stale[m] for m in measures if m in self.s.stale]
        return "; latest is stale: " + ", ".join(_fmt(m) for m in stale) if stale else ""


# ------------------------------------------------------------------------------------------------ predicates


def _not_eligible(f: Facts) -> Hit | None:
    return None if f.eligible() else Hit("no active primary or secondary cancer Condition")


def _fever(f: Facts) -> Hit | None:
    m = f.m("temperature")
    return Hit(_fmt(m), (m.ref,)) if m is not None and m.value >= FEVER_C else None


def _new_symptom(f: Facts) -> Hit | None:
    h = f.comorbidity("symptom")
    return Hit(f"new symptom in the last 30 days: {h.finding}", h.refs) if h else None


def _bone_mets(f: Facts) -> Hit | None:
    facts = f.s.bone_metastases
    return Hit(", ".join(sorted({x.display or x.code for x in facts})), tuple(x.ref for x in facts)) if facts else None


def _metastatic(f: Facts) -> Hit | None:
    facts = f.s.metastases
    return Hit(", ".join(sorted({x.display or x.code for x in facts})), tuple(x.ref for x in facts)) if facts else None


def _cardiotoxic(f: Facts) -> Hit | None:
    limit = f.now - timedelta(days=CARDIOTOXIC_LOOKBACK_DAYS)
    ts = [t for t in f.s.treatments if t.cardiotoxic and (t.active or (t.end or t.start or limit) >= limit)]
    if ts:
        return Hit("cardiotoxic therapy: " + ", ".join(sorted({t.display for t in ts})), tuple(t.ref for t in ts))
    return None


def _bp_high(f: Facts) -> Hit | None:
    sbp, dbp = f.m("bp-systolic"), f.m("bp-diastolic")
    hits = [m for m, limit in ((sbp, SBP_HIGH), (dbp, DBP_HIGH)) if m is not None and m.value >= limit]
    return Hit("; ".join(_fmt(m) for m in hits), tuple(sorted({m.ref for m in hits}))) if hits else None


def _recent_surgery(f: Facts) -> Hit | None:
    limit = f.now - timedelta(days=SURGERY_RECENT_DAYS)
    ts = [t for t in f.treatments("surgery", active=False) if (t.end or t.start) and (t.end or t.start) >= limit]
    if ts:
        when = max((t.end or t.start) for t in ts)  # type: ignore[type-var]
        return Hit(f"surgery on {when.date().isoformat()}: " + ", ".join(sorted({t.display for t in ts})),
                   tuple(t.ref for t in ts))
    return None


def _after_treatment(f: Facts) -> Hit | None:
    if not f.s.treatments or any(t.active for t in f.s.treatments if t.kind != "surgery"):
        return None
    if _recent_surgery(f):
        return None
    return Hit("treatment completed: " + ", ".join(sorted({t.display for t in f.s.treatments})),
               tuple(t.ref for t in f.s.treatments))


def _falls(f: Facts) -> Hit | None:
    return f.comorbidity("falls")


def _tug(f: Facts) -> Hit | None:
    m = f.m("tug")
    return Hit(_fmt(m), (m.ref,)) if m is not None and m.value >= TUG_FALL_RISK_S else None


def _pain(f: Facts) -> Hit | None:
    m = f.m("pain")
    return Hit(_fmt(m), (m.ref,)) if m is not None and m.value >= PAIN_SEVERE else None


def _grip_low(f: Facts) -> Hit | None:
    grips = [m for m in (f.m("grip-right"), f.m("grip-left")) if m is not None]
    if not grips:
        return None
    best = max(grips, key=lambda m: m.value)
    limit = GRIP_LOW_KG.get(f.s.sex or "", GRIP_LOW_KG["female"])
    return Hit(f"best {_fmt(best)} < {limit:g} kg", (best.ref,)) if best.value < limit else None


def _older(f: Facts) -> Hit | None:
    age = f.s.age
    return Hit(f"age {age}", (f.s.patient_ref,) if f.s.patient_ref else ()) if age is not None and age >= OLDER_ADULT_AGE else None


def _no_functional(f: Facts) -> Hit | None:
    if f.fresh(FUNCTIONAL_MEASURES):
        return None
    return Hit("no functional test (6MWT, VO2peak, sit-to-stand, TUG, grip, 2-minute step) in 180 days"
               + f.stale_text(FUNCTIONAL_MEASURES))


def _no_ps(f: Facts) -> Hit | None:
    if f.fresh(("ecog", "karnofsky")):
        return None
    return Hit("no ECOG or Karnofsky performance status in 90 days" + f.stale_text(("ecog", "karnofsky")))


def _no_cbc_on_treatment(f: Facts) -> Hit | None:
    on = [t for t in f.s.treatments if t.active and t.kind in SYSTEMIC]
    missing = tuple(m for m in CBC_MEASURES if m not in f.s.latest)
    if not on or not missing:
        return None
    return Hit(f"on {on[0].kind} without a recent ({', '.join(missing)}) result in 14 days" + f.stale_text(missing),
               tuple(t.ref for t in on))


def _no_evs(f: Facts) -> Hit | None:
    if f.evs_minutes() is not None:
        return None
    return Hit("no exercise vital sign (minutes/week of moderate-to-vigorous activity) in 90 days"
               + f.stale_text(("evs-minutes-per-week", "evs-days-per-week", "evs-minutes-per-day")))


def _beta_blocker(f: Facts) -> Hit | None:
    return f.comorbidity("beta-blocker")


# ------------------------------------------------------------------------------------------------ the table

RULES: tuple[Rule, ...] = (
    # --- eligibility
    Rule("ELIG-CANCER", "Not eligible without a cancer diagnosis",
         "no active/recurrent/remission primary or secondary cancer Condition (refuted and entered-in-error ignored)",
         "not eligible: no oncology exercise prescription", MCODE, _not_eligible, Effect(ineligible=True)),
    Rule("BASE-ACSM-2019", "General exercise prescription for cancer survivors",
         "eligible patient", "aerobic moderate 30 min 3x/week, resistance 2x/week 2 sets of 8-15 reps, "
         "flexibility; progress towards 150 min/week", CAMPBELL_2019,
         lambda f: Hit("eligible: cancer diagnosis present") if f.eligible() else None),
    # --- red flags: defer pending clearance
    Rule("FEVER-38", "Fever", f"temperature >= {FEVER_C:g} °C in the last 2 days",
         "defer; clearance required; no exercise until the fever resolves", f"{PRACTICE} (Maltser 2017)", _fever,
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="fever",
                until_cleared="Rest until the fever has gone and any infection is treated.")),
    Rule("HEME-PLT-20", "Severe thrombocytopenia", f"platelets < {PLT_RED_FLAG:g} x10^9/L (last 14 days)",
         "defer structured exercise; clearance required; walking and daily activities only, fall precautions",
         MALTSER_2017, lambda f: f.below("platelets", PLT_RED_FLAG),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="thrombocytopenia",
                until_cleared="Gentle walking and usual daily activities only; avoid falls, bumps and straining.")),
    Rule("HEME-HB-8", "Severe anaemia", f"haemoglobin < {HB_RED_FLAG:g} g/dL (last 14 days)",
         "defer; clearance required (many programmes wait for transfusion)", MALTSER_2017,
         lambda f: f.below("hemoglobin", HB_RED_FLAG),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="anemia",
                until_cleared="Short, symptom-limited daily activities only until reviewed.")),
    Rule("HEME-ANC-05", "Severe neutropenia", f"ANC < {ANC_RED_FLAG:g} x10^9/L (last 14 days)",
         "defer; clearance required; neutropenic precautions", MALTSER_2017,
         lambda f: f.below("anc", ANC_RED_FLAG),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="neutropenia", no_public=True,
                until_cleared="Stay active at home only; avoid crowds; check your temperature if unwell.")),
    Rule("PS-ECOG-4", "Performance status 4", "ECOG >= 4 (or Karnofsky <= 30) in the last 90 days",
         "defer; clearance required; daily-activity goals only", f"{PRACTICE}; {EXCEEDS_2021}",
         lambda f: f.ps(4, 5),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="low-performance-status",
                until_cleared="Daily-activity goals set with the care team.")),
    Rule("SYMPTOM-NEW", "New symptom needing review",
         "active bone pain, chest pain, dyspnoea or syncope Condition recorded in the last 30 days",
         "defer; medical clearance before exercise", f"{SEED_002}; {BROWN_2015}", _new_symptom,
         Effect(min_setting="defer", clearance=True, red_flag=True,
                until_cleared="See your care team about the new symptom before starting.")),
    # --- performance status
    Rule("PS-ECOG-3", "Performance status 3", "ECOG 3 (or Karnofsky 40-50)",
         "clinically supervised; clearance; light intensity, short sessions", f"{PRACTICE}; {EXCEEDS_2021}",
         lambda f: f.ps(3, 3),
         Effect(min_setting="supervised", clearance=True, precaution="low-performance-status", max_intensity="light",
                resistance="light", volume=0.34, add_balance=True, slow_progression=True,
                note="Daily-activity goals first; sessions of a few minutes with rests.")),
    Rule("PS-ECOG-2", "Performance status 2", "ECOG 2 (or Karnofsky 60-70)",
         "clinically supervised or modified programme; reduced volume", f"{PRACTICE}; {EXCEEDS_2021}",
         lambda f: f.ps(2, 2),
         Effect(min_setting="supervised", precaution="low-performance-status", max_intensity="moderate",
                volume=0.5, slow_progression=True)),
    # --- haematology (adapt, don't stop)
    Rule("HEME-PLT-30", "Thrombocytopenia 20-30", "20 <= platelets < 30 x10^9/L",
         "light exercise and walking only; no resistance training; no contact or high-impact", MALTSER_2017,
         lambda f: f.below("platelets", PLT_LIGHT, PLT_RED_FLAG),
         Effect(precaution="thrombocytopenia", max_intensity="light", resistance="none",
                avoid=frozenset({"contact", "high-impact"}))),
    Rule("HEME-PLT-50", "Thrombocytopenia 30-50", "30 <= platelets < 50 x10^9/L",
         "moderate intensity at most; no heavy resistance; no contact sports", MALTSER_2017,
         lambda f: f.below("platelets", PLT_MODERATE, PLT_LIGHT),
         Effect(precaution="thrombocytopenia", max_intensity="moderate", resistance="light",
                avoid=frozenset({"contact"}))),
    Rule("HEME-HB-11", "Anaemia", "8 <= haemoglobin < 11 g/dL",
         "symptom-guided intensity (moderate at most), start lower", MALTSER_2017,
         lambda f: f.below("hemoglobin", HB_LOW, HB_RED_FLAG),
         Effect(precaution="anemia", max_intensity="moderate", volume=0.75)),
    Rule("HEME-ANC-15", "Neutropenia", "0.5 <= ANC < 1.5 x10^9/L",
         "neutropenic precautions: no public gyms or pools (home-based rather than community)", MALTSER_2017,
         lambda f: f.below("anc", ANC_LOW, ANC_RED_FLAG),
         Effect(precaution="neutropenia", no_public=True, avoid=frozenset({"public-facility", "water"}))),
    # --- treatment phase
    Rule("TX-CHEMO", "During chemotherapy", "active chemotherapy (medication or procedure, dose in last 28 days)",
         "active-treatment precaution; lower starting volume; keep consistency", f"{CAMPBELL_2019}; {PRACTICE}",
         lambda f: f.active("chemotherapy"),
         Effect(precaution="active-treatment", volume=0.75, slow_progression=True,
                note="Expect lower tolerance in the days after each infusion: reduce volume rather than stop.")),
    Rule("TX-RADIO", "During radiotherapy", "radiotherapy course in progress",
         "active-treatment precaution; no swimming while skin is irradiated", f"{CAMPBELL_2019}; {PRACTICE}",
         lambda f: f.active("radiotherapy"),
         Effect(precaution="active-treatment", avoid=frozenset({"water"}),
                note="Avoid chlorinated pools on irradiated skin; fatigue often peaks late in the course.")),
    Rule("TX-IMMUNO", "During immunotherapy", "active immune checkpoint inhibitor",
         "active-treatment precaution; report new breathlessness or muscle pain", f"{CAMPBELL_2019}; {PRACTICE}",
         lambda f: f.active("immunotherapy"),
         Effect(precaution="active-treatment",
                note="Report new breathlessness, cough or muscle pain (possible immune-related side effects).")),
    Rule("TX-ENDOCRINE", "During endocrine therapy", "active endocrine therapy",
         "emphasise resistance training for bone and muscle health", f"{CAMPBELL_2019}; {PRACTICE}",
         lambda f: f.active("endocrine"),
         Effect(resistance_emphasis=True,
                note="Resistance training helps bone and muscle health during hormone therapy.")),
    Rule("TX-SURGERY-6W", "Recent surgery", f"surgical Procedure in the last {SURGERY_RECENT_DAYS} days",
         "recent-surgery precaution; light resistance only, no loading of the operated area, no swimming until healed",
         PRACTICE, _recent_surgery,
         Effect(precaution="recent-surgery", resistance="light", avoid=frozenset({"water", "heavy-lifting"}),
                note="Follow the surgeon's restrictions: no heavy lifting for about 6 weeks.")),
    Rule("TX-COMPLETED", "After treatment", "every recorded anticancer treatment has ended",
         "survivorship: work up to the full guideline dose", f"{CAMPBELL_2019}; {PAG_2018}", _after_treatment,
         Effect(note="After treatment: work up to 150-300 minutes a week plus strength training twice a week.")),
    # --- metastatic disease
    Rule("BONE-METS", "Bone metastases", "bone metastasis Condition (SNOMED 94222008, ICD-10-CM C79.51/C79.52/C7B.03)",
         "clinically supervised; clearance; no high-impact, contact or loaded spinal flexion/rotation; light "
         "resistance", BONE_2022, _bone_mets,
         Effect(min_setting="supervised", clearance=True, precaution="bone-metastases", resistance="light",
                avoid=frozenset({"high-impact", "contact", "spinal-loading", "heavy-lifting"}))),
    Rule("METASTATIC", "Metastatic disease", "secondary (metastatic) cancer Condition",
         "at least community-based with a professional; gentle start (5-10 min), gradual progression", SEED_002,
         _metastatic,
         Effect(min_setting="community", precaution="metastatic-disease", volume=0.34, slow_progression=True)),
    # --- comorbidities
    Rule("CARD-DISEASE", "Cardiac disease", "active heart disease Condition",
         "medical clearance; supervised start", BROWN_2015, lambda f: f.comorbidity("cardiac"),
         Effect(min_setting="supervised", clearance=True, precaution="cardiac")),
    Rule("CARD-TOXIC", "Cardiotoxic therapy",
         f"anthracycline or HER2-directed therapy, active or within {CARDIOTOXIC_LOOKBACK_DAYS} days",
         "medical clearance; supervised start", f"{BROWN_2015}; {PRACTICE}", _cardiotoxic,
         Effect(min_setting="supervised", clearance=True, precaution="cardiac")),
    Rule("CARD-BP-HIGH", "High blood pressure", f"systolic >= {SBP_HIGH:g} or diastolic >= {DBP_HIGH:g} mm[Hg]",
         "medical review; moderate intensity at most", f"{BROWN_2015}; {PRACTICE}", _bp_high,
         Effect(clearance=True, precaution="high-blood-pressure", max_intensity="moderate")),
    Rule("CARD-BETA-BLOCKER", "Beta blocker", "active beta-blocker medication",
         "intensity by RPE only (heart-rate targets unreliable)", PRACTICE, _beta_blocker,
         Effect(precaution="heart-rate-unreliable", rpe_only=True)),
    Rule("NEURO", "Peripheral neuropathy", "active peripheral neuropathy Condition",
         "stationary/recumbent cycling preferred; balance training; supportive footwear", PRACTICE,
         lambda f: f.comorbidity("neuropathy"),
         Effect(precaution="peripheral-neuropathy", add_balance=True, avoid=frozenset({"running", "balance-demanding"}))),
    Rule("LYMPH", "Lymphoedema", "active lymphoedema Condition",
         "resistance with supervised slow progression (community programme at least); compression if prescribed",
         f"{CAMPBELL_2019}; {PRACTICE}", lambda f: f.comorbidity("lymphedema"),
         Effect(min_setting="community", precaution="lymphedema", slow_progression=True,
                note="Wear your compression garment if one was prescribed; report new swelling.")),
    Rule("FALL-HISTORY", "History of falls", "fall Condition in the last 12 months",
         "fall-risk precaution; balance training; clinically supervised start", f"{EXCEEDS_2021}; {PAG_2018}", _falls,
         Effect(min_setting="supervised", precaution="fall-risk", add_balance=True,
                avoid=frozenset({"high-impact", "balance-demanding"}))),
    Rule("FALL-TUG-12", "Slow Timed Up and Go", f"TUG >= {TUG_FALL_RISK_S:g} s (last 180 days)",
         "fall-risk precaution; balance training; clinically supervised start", f"{EXCEEDS_2021}; {PRACTICE} (CDC STEADI)",
         _tug,
         Effect(min_setting="supervised", precaution="fall-risk", add_balance=True,
                avoid=frozenset({"high-impact", "balance-demanding"}))),
    Rule("COMOR-DIABETES", "Diabetes", "active diabetes Condition", "check glucose around exercise; foot care",
         PRACTICE, lambda f: f.comorbidity("diabetes"), Effect(precaution="diabetes")),
    Rule("COMOR-BONE-HEALTH", "Arthritis or osteoporosis", "active arthritis or osteoporosis Condition",
         "low-impact activities; no loaded spinal flexion; resistance and balance", PRACTICE,
         lambda f: f.comorbidity("arthritis-osteoporosis"),
         Effect(precaution="bone-health", add_balance=True, avoid=frozenset({"high-impact", "spinal-loading"}))),
    Rule("PAIN-SEVERE", "Severe pain", f"pain >= {PAIN_SEVERE:g}/10 (last 14 days)",
         "medical review; light intensity within pain limits", PRACTICE, _pain,
         Effect(clearance=True, precaution="severe-pain", max_intensity="light")),
    # --- baseline fitness and age
    Rule("FIT-6MWT-LOW", "Low walking capacity", f"6-minute walk < {SIX_MWT_LOW_M:g} m",
         "shorter starting sessions; slower progression", PRACTICE,
         lambda f: f.below("six-minute-walk", SIX_MWT_LOW_M),
         Effect(volume=0.5, slow_progression=True)),
    Rule("FIT-VO2-LOW", "Low aerobic capacity", f"VO2peak < {VO2PEAK_LOW:g} mL/kg/min",
         "shorter starting sessions; slower progression", PRACTICE, lambda f: f.below("vo2peak", VO2PEAK_LOW),
         Effect(volume=0.5, slow_progression=True)),
    Rule("FIT-STS-LOW", "Low lower-body strength", f"30-s sit-to-stand < {STS_LOW:g}",
         "emphasise lower-body resistance (chair-based)", PRACTICE, lambda f: f.below("sit-to-stand", STS_LOW),
         Effect(resistance_emphasis=True)),
    Rule("FIT-GRIP-LOW", "Low grip strength", "grip < 27 kg (men) / 16 kg (women)",
         "emphasise resistance training (sarcopenia risk)", "Cruz-Jentoft AJ et al., Age Ageing 2019 (EWGSOP2)",
         _grip_low, Effect(resistance_emphasis=True)),
    Rule("AGE-65", "Older adult", f"age >= {OLDER_ADULT_AGE}", "add balance training", PAG_2018, _older,
         Effect(add_balance=True)),
    Rule("FATIGUE-FACIT", "Cancer-related fatigue", f"FACIT-Fatigue < {FACIT_FATIGUE_LOW:g} (last 90 days)",
         "exercise is recommended for fatigue: shorter, more frequent sessions; slower progression",
         f"{CAMPBELL_2019} (strong evidence for fatigue); {PRACTICE} (threshold)",
         lambda f: f.below("facit-fatigue", FACIT_FATIGUE_LOW),
         Effect(volume=0.75, slow_progression=True,
                note="Fatigue: short sessions on most days help more than rest; keep a steady routine.")),
    # --- current activity (exercise vital sign)
    Rule("ACT-INACTIVE", "Inactive", f"exercise vital sign < {EVS_INACTIVE:g} min/week",
         "start low (short sessions), progress slowly; avoid inactivity", CAMPBELL_2019,
         lambda f: f.evs(0, EVS_INACTIVE), Effect(volume=0.5, slow_progression=True)),
    Rule("ACT-LOW", "Below the guideline", f"{EVS_INACTIVE:g} <= exercise vital sign < {EVS_TARGET:g} min/week",
         "progress towards 150 min/week, starting from current activity when above the beginner dose",
         f"{CAMPBELL_2019}; {PAG_2018}", lambda f: f.evs(EVS_INACTIVE, EVS_TARGET)),
    Rule("ACT-MEETS", "Meets the guideline", f"exercise vital sign >= {EVS_TARGET:g} min/week",
         "maintain 150-300 min/week (starting dose and goal from current activity, not a beginner dose); keep "
         "resistance twice weekly", PAG_2018, lambda f: f.evs(EVS_TARGET, None),
         Effect(note="Already active: keep 150-300 minutes a week and add strength training twice weekly.")),
    # --- missing data
    Rule("DATA-NO-FUNCTIONAL", "No recent functional test", "no 6MWT/VO2peak/sit-to-stand/TUG/grip in 180 days",
         "missing data: baseline 6-minute walk test recommended", f"{CAMPBELL_2019}; {SANTA_MINA_2018}",
         _no_functional,
         Effect(missing=("functional-test", "Baseline 6-minute walk test (and 30-s sit-to-stand) recommended."))),
    Rule("DATA-NO-PS", "No recent performance status", "no ECOG or Karnofsky in 90 days",
         "missing data: record ECOG performance status", f"{SCHMITZ_2019} (Assess)", _no_ps,
         Effect(missing=("performance-status", "Record ECOG performance status at this visit."))),
    Rule("DATA-NO-CBC", "No recent blood count on treatment",
         "active systemic therapy and no platelets/haemoglobin/ANC in 14 days",
         "missing data: full blood count before starting; moderate intensity at most until known", PRACTICE,
         _no_cbc_on_treatment,
         Effect(max_intensity="moderate",
                missing=("blood-count", "Full blood count (platelets, haemoglobin, neutrophils) before starting."))),
    Rule("DATA-NO-EVS", "No exercise vital sign", "no exercise vital sign in 90 days",
         "missing data: ask minutes/week of moderate-to-vigorous activity", f"{SCHMITZ_2019} (Assess)", _no_evs,
         Effect(missing=("exercise-vital-sign", "Ask the exercise vital sign: days/week x minutes/day."))),
    # --- setting triage and preferences (applied in prescribe.py)
    Rule("SETTING-TRIAGE", "Setting triage", "the most restrictive setting any fired rule requires",
         "home-based self-managed unless a rule requires community, supervised or defer",
         f"{EXCEEDS_2021}; {SCHMITZ_2019}", None),
    Rule("PREF-SETTING", "Preferred setting", "patient's preferred setting",
         "used when at least as restrictive as the safety floor; otherwise set aside for safety", SCHMITZ_2019, None),
    Rule("PREF-ACTIVITIES", "Preferred activities", "activities the patient enjoys",
         "used unless a precaution rules them out (then set aside for safety)", f"{CAMPBELL_2019}; {PRACTICE}", None),
    Rule("PREF-DAYS", "Days available", "days the patient can exercise",
         "frequency limited to those days; session length raised within limits", PRACTICE, None),
    Rule("PREF-EQUIPMENT", "Equipment at home", "equipment the patient has",
         "resistance and aerobic activities chosen to match", PRACTICE, None),
    Rule("CLINICIAN-EDIT", "Clinician edit", "any accepted clinician change (dose, intensity, activities, setting, precautions)",
         "applied; the change is recorded and progression and goals follow the edited plan", "clinician judgement",
         None),
    Rule("CLINICIAN-OVERRIDE", "Clinician override", "a clinician edit beyond a safety limit, with a reason",
         "accepted and recorded with the reason", PRACTICE, None),
)

RULES_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
assert len(RULES_BY_ID) == len(RULES), "duplicate rule id"


def setting_index(setting: Setting) -> int:
    return SETTING_ORDER.index(setting)


def fire(snapshot: PatientSnapshot, now: datetime) -> list[tuple[Rule, Hit]]:
    """Evaluate every rule with a predicate, in table order."""
    facts = Facts(snapshot, now)
    out: list[tuple[Rule, Hit]] = []
    for rule in RULES:
        if rule.predicate is None:
            continue
        hit = rule.predicate(facts)
        if hit is not None:
            out.append((rule, hit))
    return out
