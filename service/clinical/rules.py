"""The rule table: every clinical decision the prescription makes, with its trigger, effect and source.

Each Rule pairs a predicate over `Facts` (derived once from a PatientSnapshot) with a declarative `Effect`
(setting floor, clearance, red flag, precaution, intensity/resistance caps, activities to avoid, volume).
`prescribe.py` combines the effects: the most restrictive setting wins, the lowest cap wins. Rules whose
predicate is None (preferences, clinician overrides) are applied by prescribe.py / edits.py; they are listed
here so the README table and the rationale share one vocabulary. Thresholds: exercise-oncology reference;
"common clinical practice" marks thresholds that are not guideline text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Literal

from service.clinical.facts import Facts, Hit, coded_hit, fmt, fmt_value
from service.clinical.model import SETTING_ORDER, PatientSnapshot, Setting

RULESET_VERSION = "2.0.0"

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
FLETCHER_2013 = "Fletcher GF et al., AHA exercise standards, Circulation 2013;128:873-934"
LYON_2022 = "Lyon AR et al., ESC cardio-oncology guideline, Eur Heart J 2022;43:4229-4361"
BTS_2017 = "BTS guideline for oxygen use in adults, Thorax 2017"
NICE_NG234 = "NICE NG234, Spinal metastases and metastatic spinal cord compression, 2023"
SCHMITZ_2010 = "Schmitz KH et al., ACSM roundtable, Med Sci Sports Exerc 2010;42:1409-1426"
WHO_2020 = "Bull FC et al., WHO 2020 guidelines on physical activity, Br J Sports Med 2020;54:1451-1462"
RIEBE_2015 = "Riebe D et al., ACSM pre-participation screening, Med Sci Sports Exerc 2015;47:2473-2479"
FEARON_2011 = "Fearon K et al., cancer cachexia consensus, Lancet Oncol 2011;12:489-495"
HSCT_PRACTICE = f"{PRACTICE} (Wiskemann and Steindorf exercise trials in stem-cell transplantation)"
FAIL_SAFE = f"{PRACTICE}: a safety-relevant result that is present but unreadable is reviewed, never ignored"

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
WBC_LOW = 4.0  # 10^9/L: below this, the neutrophil count matters and is unknown without a differential
ACSM_REGULAR_MIN_WEEK = 90.0  # ACSM "regular exercise": >= 30 min of moderate activity on >= 3 days a week
LVEF_LOW_PCT = 40.0  # severe LV dysfunction (ESC 2022)
SPO2_LOW_PCT = 90.0
HSCT_RECENT_DAYS = 100
ADULT_AGE = 18
WEIGHT_LOSS_PCT, WEIGHT_LOSS_DAYS = 5.0, 182  # > 5% in 6 months (Fearon 2011)
CALCIUM_HIGH, CALCIUM_SEVERE = 3.0, 3.5  # mmol/L, total corrected (12 and 14 mg/dL)
CALCIUM_IONISED_HIGH, CALCIUM_IONISED_SEVERE = 1.5, 1.75  # mmol/L
ALBUMIN_REFERENCE_G_L = 40.0


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
    resolve: str | None = None  # what the clinician must resolve before clearing a deferred plan


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    trigger: str
    effect_text: str
    citation: str
    predicate: Callable[["Facts"], Hit | None] | None
    effect: Effect = Effect()


# ------------------------------------------------------------------------------------------------ predicates


def _not_eligible(f: Facts) -> Hit | None:
    return None if f.eligible() else Hit("no active primary or secondary cancer Condition and no history of cancer")


def _fever(f: Facts) -> Hit | None:
    return f.at_least("temperature", FEVER_C)


def _new_symptom(f: Facts) -> Hit | None:
    h = f.comorbidity("symptom")
    return Hit(f"new symptom in the last 30 days: {h.finding}", h.refs) if h else None


def _bone_mets(f: Facts) -> Hit | None:
    return coded_hit(f.s.bone_metastases)


def _metastatic(f: Facts) -> Hit | None:
    return coded_hit(f.s.metastases)


def _cardiotoxic(f: Facts) -> Hit | None:
    limit = f.now - timedelta(days=CARDIOTOXIC_LOOKBACK_DAYS)
    ts = [t for t in f.s.treatments if t.cardiotoxic and (t.active or (t.end or t.start or limit) >= limit)]
    if ts:
        return Hit("cardiotoxic therapy: " + ", ".join(sorted({t.display for t in ts})), tuple(t.ref for t in ts))
    return None


def _bp_high(f: Facts) -> Hit | None:
    hits = [h for h in (f.at_least("bp-systolic", SBP_HIGH), f.at_least("bp-diastolic", DBP_HIGH)) if h]
    return Hit("; ".join(h.finding for h in hits), tuple(sorted({r for h in hits for r in h.refs}))) if hits else None


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
    return f.at_least("tug", TUG_FALL_RISK_S)


def _pain(f: Facts) -> Hit | None:
    return f.at_least("pain", PAIN_SEVERE)


def _grip_low(f: Facts) -> Hit | None:
    grips = [m for m in (f.m("grip-right"), f.m("grip-left")) if m is not None]
    if not grips:
        return None
    best = max(grips, key=lambda m: m.value)
    limit = GRIP_LOW_KG.get(f.s.sex or "", GRIP_LOW_KG["female"])
    return Hit(f"best {fmt(best)} < {limit:g} kg", (best.ref,)) if best.value < limit else None


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


# --- fail-safe reading of the data


def _unreadable(requires: str) -> Callable[[Facts], Hit | None]:
    def predicate(f: Facts) -> Hit | None:
        items = [u for u in f.s.unreadable if u.requires == requires]
        if not items:
            return None
        return Hit("; ".join(f"{u.what} result unreadable ({u.problem})" for u in items), tuple(u.ref for u in items))
    return predicate


def _critical_flag(f: Facts) -> Hit | None:
    flagged = [r for key in f.s.latest if (r := f.reading(key)) is not None and r.m.flag
               and f.safety(key)]
    if not flagged:
        return None
    return Hit("; ".join(r.describe() for r in flagged), tuple(ref for r in flagged for ref in r.refs))


def _stale_order(f: Facts) -> Hit | None:
    # An old open order is only worth a word when nothing of its kind has been given recently.
    given = {t.kind for t in f.s.treatments if t.active}
    ts = [t for t in f.s.treatments if t.stale_order and t.kind not in given]
    if not ts:
        return None
    return Hit("; ".join(f"{t.display} ordered {t.start.date().isoformat() if t.start else 'long ago'}"
                         for t in ts), tuple(t.ref for t in ts))


# --- white cells without a differential (the neutrophil count cannot exceed the white-cell count)


def _wbc_only(f: Facts, below: float, floor: float | None) -> Hit | None:
    if f.reading("anc") is not None:
        return None
    h = f.below("wbc", below, floor)
    return Hit(f"{h.finding}; no neutrophil count (differential) in 14 days", h.refs) if h else None


def _febrile_neutropenia(f: Facts) -> Hit | None:
    """Febrile neutropenia as one concept (SNOMED 409089005) or as ICD-10-CM codes it: D70.x with R50.81."""
    if (h := f.comorbidity("febrile-neutropenia")) is not None:
        return h
    fever, neutropenia = f.comorbidity("fever"), f.comorbidity("neutropenia")
    if fever and neutropenia:
        return Hit(f"{neutropenia.finding} with {fever.finding}", neutropenia.refs + fever.refs)
    return None


def _neutropenia_dx(f: Facts) -> Hit | None:
    if f.reading("anc") is not None or f.reading("wbc") is not None:
        return None
    h = f.comorbidity("neutropenia")
    return Hit(f"neutropenia recorded ({h.finding}); no recent blood count", h.refs) if h else None


# --- thromboembolism, heart, lungs


def _vte(anticoagulated: bool) -> Callable[[Facts], Hit | None]:
    def predicate(f: Facts) -> Hit | None:
        if bool(f.facts("anticoagulant")) != anticoagulated:
            return None
        h = f.comorbidity("vte")
        if h is None:
            return None
        if anticoagulated:
            return Hit(f"{h.finding}; anticoagulated ({f.comorbidity('anticoagulant').finding})",  # type: ignore[union-attr]
                       h.refs + tuple(x.ref for x in f.facts("anticoagulant")))
        return Hit(f"{h.finding}; no active anticoagulant", h.refs)
    return predicate


def _immune_myositis(f: Facts) -> Hit | None:
    h, ici = f.comorbidity("immune-myositis"), f.active("immunotherapy")
    return Hit(f"{h.finding} during {ici.finding}", h.refs + ici.refs) if h and ici else None


def _regularly_active(f: Facts) -> bool:
    e = f.evs_minutes()
    return e is not None and e[0] >= ACSM_REGULAR_MIN_WEEK


def _cardiac(active: bool) -> Callable[[Facts], Hit | None]:
    def predicate(f: Facts) -> Hit | None:
        h = f.comorbidity("cardiac")
        if h is None or _regularly_active(f) != active:
            return None
        if active:
            e = f.evs_minutes()
            return Hit(f"{h.finding}; already active ({e[0]:g} min/week), no symptom recorded",  # type: ignore[index]
                       h.refs + e[1])  # type: ignore[index]
        return h
    return predicate


# --- nervous system, bone, body


def _brain_mets(f: Facts) -> Hit | None:
    return coded_hit(f.s.brain_metastases)


def _hsct(f: Facts) -> Hit | None:
    recent = [x for x in f.facts("hsct") if x.onset is not None
              and (f.now.date() - x.onset).days <= HSCT_RECENT_DAYS]
    return coded_hit((*recent, *f.facts("gvhd")))


def _paediatric(f: Facts) -> Hit | None:
    age = f.s.age
    return Hit(f"age {age}", (f.s.patient_ref,) if f.s.patient_ref else ()) if age is not None and age < ADULT_AGE else None


def _pregnancy(f: Facts) -> Hit | None:
    r = f.reading("pregnancy-status")
    if r is not None and r.value >= 1:
        return Hit(f"pregnancy status: pregnant on {r.m.effective.date().isoformat()}", r.refs)
    return f.comorbidity("pregnancy")


def _weight_loss(f: Facts) -> Hit | None:
    """Weight loss of more than 5% within 6 months (the newest weight against the heaviest before it)."""
    newest = f.s.latest.get("weight") or f.s.stale.get("weight")
    if newest is None or (f.now - newest.effective).days > WEIGHT_LOSS_DAYS:
        return None
    since = newest.effective - timedelta(days=WEIGHT_LOSS_DAYS)
    earlier = [m for m in f.s.history.get("weight", ()) if since <= m.effective < newest.effective]
    if not earlier:
        return None
    top = max(earlier, key=lambda m: m.value)
    loss = (top.value - newest.value) / top.value * 100 if top.value > 0 else 0.0
    if loss <= WEIGHT_LOSS_PCT:
        return None
    return Hit(f"weight {fmt(top)} -> {fmt(newest)} ({loss:.1f}% loss)", (top.ref, newest.ref))


def _cachexia(f: Facts) -> Hit | None:
    hits = [h for h in (f.comorbidity("cachexia"), _weight_loss(f)) if h]
    return Hit("; ".join(h.finding for h in hits), tuple(r for h in hits for r in h.refs)) if hits else None


def _calcium(f: Facts) -> tuple[float, float, Hit] | None:
    """(value, its severe threshold ratio base, Hit) for the calcium the rules read: total calcium corrected
    for albumin (+0.02 mmol/L per g/L below 40 g/L, albumin within 2 days), else ionised calcium. The value is
    returned as a fraction of the moderate threshold of its kind (1.0 = 3.0 mmol/L total, 1.5 ionised) so one
    comparison serves both kinds."""
    r = f.reading("calcium")
    if r is not None:
        value, text, refs = r.value, r.describe(), r.refs
        alb = f.reading("albumin")
        if alb is not None and abs(alb.m.effective - r.m.effective) <= timedelta(days=2) and math.isfinite(value):
            value += 0.02 * (ALBUMIN_REFERENCE_G_L - alb.value)
            text += f"; corrected for albumin {fmt_value(alb.m)}: {value:.2f} mmol/L"
            refs += (alb.m.ref,)
        return value / CALCIUM_HIGH, CALCIUM_SEVERE / CALCIUM_HIGH, Hit(text, refs)
    i = f.reading("calcium-ionized")
    if i is not None:
        return i.value / CALCIUM_IONISED_HIGH, CALCIUM_IONISED_SEVERE / CALCIUM_IONISED_HIGH, Hit(i.describe(), i.refs)
    return None


def _hypercalcaemia(f: Facts) -> Hit | None:
    c = _calcium(f)
    if c is not None and 1.0 <= c[0] < c[1]:
        return c[2]
    if c is not None and c[0] >= c[1]:
        return None  # the severe rule speaks
    h = f.comorbidity("hypercalcaemia")
    return Hit(f"hypercalcaemia recorded in the last 30 days: {h.finding}", h.refs) if h else None


def _hypercalcaemia_severe(f: Facts) -> Hit | None:
    c = _calcium(f)
    return c[2] if c is not None and c[0] >= c[1] else None


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
                resolve='Confirm the fever has settled (a repeat temperature) and any infection is treated.',
                until_cleared="Rest until the fever has gone and any infection is treated.")),
    Rule("HEME-PLT-20", "Severe thrombocytopenia", f"platelets < {PLT_RED_FLAG:g} x10^9/L (last 14 days)",
         "defer structured exercise; clearance required; walking and daily activities only, fall precautions",
         MALTSER_2017, lambda f: f.below("platelets", PLT_RED_FLAG),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="thrombocytopenia",
                resolve='Repeat the platelet count (or after transfusion).',
                until_cleared="Gentle walking and usual daily activities only; avoid falls, bumps and straining.")),
    Rule("HEME-HB-8", "Severe anaemia", f"haemoglobin < {HB_RED_FLAG:g} g/dL (last 14 days)",
         "defer; clearance required (many programmes wait for transfusion)", MALTSER_2017,
         lambda f: f.below("hemoglobin", HB_RED_FLAG),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="anemia",
                resolve='Repeat the haemoglobin (or after transfusion) and review symptoms.',
                until_cleared="Short, symptom-limited daily activities only until reviewed.")),
    Rule("HEME-ANC-05", "Severe neutropenia", f"ANC < {ANC_RED_FLAG:g} x10^9/L (last 14 days)",
         "defer; clearance required; neutropenic precautions", MALTSER_2017,
         lambda f: f.below("anc", ANC_RED_FLAG),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="neutropenia", no_public=True,
                resolve='Repeat the neutrophil count.',
                until_cleared="Stay active at home only; avoid crowds; check your temperature if unwell.")),
    Rule("FEVER-CONDITION", "Fever recorded as a diagnosis", "active fever Condition recorded in the last 7 days",
         "defer; clearance required; no exercise until the fever resolves", f"{PRACTICE} (Maltser 2017)",
         lambda f: f.comorbidity("fever"),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="fever",
                resolve='Confirm the fever has settled and any infection is treated.',
                until_cleared="Rest until the fever has gone and any infection is treated.")),
    Rule("FEBRILE-NEUTROPENIA", "Febrile neutropenia", "active febrile neutropenia Condition in the last 30 days "
         "(or neutropenia with a recent fever Condition)",
         "defer; clearance required; neutropenic precautions", MALTSER_2017,
         _febrile_neutropenia,
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="neutropenia", no_public=True,
                resolve='Treat the febrile neutropenia; repeat the blood count with a differential.',
                until_cleared="Rest and follow the care team's advice for the infection; avoid crowds.")),
    Rule("HEME-WBC-05", "Very low white cells, no differential",
         f"white cells < {ANC_RED_FLAG:g} x10^9/L and no neutrophil count",
         "defer; clearance required; neutropenic precautions (the neutrophil count cannot exceed the white-cell "
         "count)", MALTSER_2017, lambda f: _wbc_only(f, ANC_RED_FLAG, None),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="neutropenia", no_public=True,
                resolve='Repeat the blood count with a differential.',
                until_cleared="Stay active at home only; avoid crowds; check your temperature if unwell.")),
    Rule("VTE-ACUTE", "Acute venous thromboembolism", "pulmonary embolism or DVT in the last 90 days, no active "
         "anticoagulant", "defer until anticoagulated and stable; clearance required", f"{FLETCHER_2013}; {PRACTICE}",
         _vte(anticoagulated=False),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="vte",
                resolve='Start anticoagulation and confirm the patient is stable.',
                until_cleared="Usual daily activities only until the clot is treated and a clinician has reviewed it.")),
    Rule("CARD-MYOCARDITIS", "Myocarditis or pericarditis", "active myocarditis or pericarditis in the last 180 days",
         "defer; clearance required (acute myocarditis and pericarditis are contraindications to exercise testing)",
         FLETCHER_2013, lambda f: f.comorbidity("myocarditis"),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="cardiac",
                resolve='Cardiology review of the myocarditis or pericarditis.',
                until_cleared="No exercise until a cardiologist has reviewed the heart inflammation.")),
    Rule("IMMUNO-MYOSITIS", "Immune-related myositis", "myositis during checkpoint-inhibitor therapy",
         "defer; clearance required (possible immune-related myositis/myocarditis)", f"{FLETCHER_2013}; {PRACTICE}",
         _immune_myositis,
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="active-treatment",
                resolve='Oncology review of the immune-related myositis (consider myocarditis).',
                until_cleared="Rest the muscles until the oncology team has reviewed the muscle inflammation.")),
    Rule("MSCC", "Spinal cord compression", "spinal cord compression Condition in the last 180 days",
         "defer; urgent review; no exercise of the spine until reviewed", NICE_NG234,
         lambda f: f.comorbidity("spinal-cord-compression"),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="spinal-cord-compression",
                resolve='Spinal team review of the cord compression and what movement is safe.',
                until_cleared="Follow the spinal team's instructions on moving; report new weakness, numbness or "
                              "bladder or bowel changes at once.")),
    Rule("HYPERCALCAEMIA-SEVERE", "Severe hypercalcaemia",
         f"corrected calcium >= {CALCIUM_SEVERE:g} mmol/L (or ionised >= {CALCIUM_IONISED_SEVERE:g})",
         "defer; clearance required (urgent treatment)", PRACTICE, _hypercalcaemia_severe,
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="hypercalcaemia",
                resolve='Treat the hypercalcaemia and repeat the calcium.',
                until_cleared="Drink fluids as advised and rest until the calcium has been treated.")),
    Rule("DATA-UNREADABLE-RED-FLAG", "Unreadable red-flag result",
         "a blood count or temperature result is present but cannot be read (unit, number, date)",
         "defer until a clinician has checked the result; clearance required", FAIL_SAFE, _unreadable("defer"),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="data-review",
                resolve='Check the unreadable result in the record, or repeat the test.',
                until_cleared="Usual daily activities until the care team has checked a blood or temperature result.")),
    Rule("PS-ECOG-4", "Performance status 4", "ECOG >= 4 (or Karnofsky <= 30) in the last 90 days",
         "defer; clearance required; daily-activity goals only", f"{PRACTICE}; {EXCEEDS_2021}",
         lambda f: f.ps(4, 5),
         Effect(min_setting="defer", clearance=True, red_flag=True, precaution="low-performance-status",
                resolve='Review the performance status and the goals of care.',
                until_cleared="Daily-activity goals set with the care team.")),
    Rule("SYMPTOM-NEW", "New symptom needing review",
         "active bone pain, chest pain, dyspnoea or syncope Condition recorded in the last 30 days",
         "defer; medical clearance before exercise", f"{SEED_002}; {BROWN_2015}", _new_symptom,
         Effect(min_setting="defer", clearance=True, red_flag=True,
                resolve='Assess the new symptom (bone pain, chest pain, breathlessness or fainting).',
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
    Rule("HEME-WBC-15", "Low white cells, no differential",
         f"{ANC_RED_FLAG:g} <= white cells < {ANC_LOW:g} x10^9/L and no neutrophil count",
         "neutropenic precautions (the neutrophil count is at most the white-cell count)", MALTSER_2017,
         lambda f: _wbc_only(f, ANC_LOW, ANC_RED_FLAG),
         Effect(precaution="neutropenia", no_public=True, avoid=frozenset({"public-facility", "water"}),
                missing=("blood-count", "Neutrophil count (differential) to judge infection risk."))),
    Rule("HEME-WBC-NO-DIFF", "White cells without a differential",
         f"{ANC_LOW:g} <= white cells < {WBC_LOW:g} x10^9/L and no neutrophil count",
         "missing data: neutrophil count; no public gyms or pools until it is known", MALTSER_2017,
         lambda f: _wbc_only(f, WBC_LOW, ANC_LOW),
         Effect(no_public=True, missing=("blood-count", "Neutrophil count (differential) to judge infection risk."))),
    Rule("HEME-NEUTROPENIA-DX", "Neutropenia on the problem list", "neutropenia Condition in the last 30 days and "
         "no blood count in 14 days", "neutropenic precautions; missing data: blood count", MALTSER_2017,
         _neutropenia_dx,
         Effect(precaution="neutropenia", no_public=True, avoid=frozenset({"public-facility", "water"}),
                missing=("blood-count", "Full blood count with differential before starting."))),
    Rule("HYPERCALCAEMIA", "Hypercalcaemia",
         f"corrected calcium {CALCIUM_HIGH:g}-{CALCIUM_SEVERE:g} mmol/L (or ionised {CALCIUM_IONISED_HIGH:g}-"
         f"{CALCIUM_IONISED_SEVERE:g}), or hypercalcaemia recorded in the last 30 days",
         "clinical review (clearance) before exercise; stay hydrated", PRACTICE, _hypercalcaemia,
         Effect(clearance=True, precaution="hypercalcaemia")),
    # --- treatment phase
    Rule("TX-CHEMO", "During chemotherapy", "active chemotherapy (medication or procedure, dose in last 28 days)",
         "active-treatment precaution; lower starting volume; keep consistency", f"{CAMPBELL_2019}; {PRACTICE}",
         lambda f: f.active("chemotherapy"),
         Effect(precaution="active-treatment", volume=0.75, slow_progression=True,
                note="You may feel more tired in the days after each treatment: do a little less on those days rather than stopping.")),
    Rule("TX-RADIO", "During radiotherapy", "radiotherapy course in progress",
         "active-treatment precaution; no swimming while skin is irradiated", f"{CAMPBELL_2019}; {PRACTICE}",
         lambda f: f.active("radiotherapy"),
         Effect(precaution="active-treatment", avoid=frozenset({"water"}),
                note="Keep chlorinated pool water off the skin being treated (radiotherapy); tiredness often peaks late in the course.")),
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
    Rule("TX-STALE-ORDER", "Old open order", "an 'active' anticancer order authored more than 180 days ago, no "
         "end date and nothing given since", "not counted as current treatment; confirm the treatment status",
         PRACTICE, _stale_order,
         Effect(note="An old anticancer order is still open in the record: confirm whether treatment is current.")),
    Rule("HSCT", "Stem-cell transplant", f"haematopoietic stem-cell transplant in the last {HSCT_RECENT_DAYS} days, "
         "or graft-versus-host disease", "clinically supervised; infection precautions; no public gyms or pools",
         HSCT_PRACTICE, _hsct,
         Effect(min_setting="supervised", precaution="stem-cell-transplant", no_public=True,
                avoid=frozenset({"public-facility", "water"}), slow_progression=True)),
    # --- metastatic disease
    Rule("BONE-METS", "Bone metastases", "bone metastasis Condition (or a secondary neoplasm with bodySite bone/spine)",
         "clinically supervised; clearance; no high-impact, contact or loaded spinal flexion/rotation; light "
         "resistance", BONE_2022, _bone_mets,
         Effect(min_setting="supervised", clearance=True, precaution="bone-metastases", resistance="light",
                avoid=frozenset({"high-impact", "contact", "spinal-loading", "heavy-lifting"}))),
    Rule("METASTATIC", "Metastatic disease", "distant metastasis Condition (regional lymph nodes are not distant)",
         "at least community-based with a professional; gentle start (5-10 min), gradual progression", SEED_002,
         _metastatic,
         Effect(min_setting="community", precaution="metastatic-disease", volume=0.34, slow_progression=True)),
    Rule("BRAIN-METS", "Brain metastases", "brain metastasis Condition (or secondary neoplasm with bodySite brain)",
         "supervised start; no activities where a seizure would be dangerous (swimming alone, cycling on roads, "
         "heights)", PRACTICE, _brain_mets,
         Effect(min_setting="supervised", precaution="seizure-risk", avoid=frozenset({"seizure-risk"}))),
    Rule("FRACTURE-PATHOLOGICAL", "Pathological or impending fracture", "pathological fracture Condition in the "
         "last 180 days", "clearance; supervised; no loading of the affected bone until reviewed; light resistance",
         f"{BONE_2022}; {NICE_NG234}", lambda f: f.comorbidity("pathological-fracture"),
         Effect(min_setting="supervised", clearance=True, precaution="pathological-fracture", resistance="light",
                avoid=frozenset({"high-impact", "contact", "spinal-loading", "heavy-lifting"}))),
    # --- comorbidities
    Rule("CARD-DISEASE", "Cardiac disease", "clinically significant cardiovascular disease (coronary, heart "
         "failure, cardiomyopathy, significant valve disease, serious arrhythmia, vascular) in a person not "
         "regularly active", "medical clearance; supervised start", f"{RIEBE_2015}; {BROWN_2015}", _cardiac(False),
         Effect(min_setting="supervised", clearance=True, precaution="cardiac")),
    Rule("CARD-DISEASE-ACTIVE", "Cardiac disease, already active",
         f"clinically significant cardiovascular disease, exercise vital sign >= {ACSM_REGULAR_MIN_WEEK:g} min/week "
         "and no new symptom", "continue at moderate intensity; medical clearance before vigorous exercise",
         RIEBE_2015, _cardiac(True),
         Effect(precaution="cardiac", max_intensity="moderate")),
    Rule("CARD-LVEF-40", "Reduced ejection fraction", f"LVEF < {LVEF_LOW_PCT:g}%",
         "medical clearance; supervised, cardiac-rehabilitation-style start", LYON_2022,
         lambda f: f.below("lvef", LVEF_LOW_PCT),
         Effect(min_setting="supervised", clearance=True, precaution="cardiac", max_intensity="moderate",
                slow_progression=True)),
    Rule("RESP-SPO2-90", "Low oxygen saturation", f"resting SpO2 < {SPO2_LOW_PCT:g}%",
         "medical review (clearance); supervised start at light intensity", BTS_2017,
         lambda f: f.below("spo2", SPO2_LOW_PCT),
         Effect(min_setting="supervised", clearance=True, precaution="low-oxygen", max_intensity="light")),
    Rule("VTE-ANTICOAGULATED", "Venous thromboembolism on treatment", "pulmonary embolism or DVT in the last 90 "
         "days, anticoagulated", "medical clearance; graded return with slow progression; no contact sports",
         f"{FLETCHER_2013}; {PRACTICE}", _vte(anticoagulated=True),
         Effect(clearance=True, precaution="vte", slow_progression=True, avoid=frozenset({"contact"}))),
    Rule("ANTICOAGULANT", "Anticoagulant", "active anticoagulant medication",
         "no contact sports (bleeding risk)", PRACTICE, lambda f: f.comorbidity("anticoagulant"),
         Effect(precaution="anticoagulation", avoid=frozenset({"contact"}))),
    Rule("SEIZURE", "Seizures", "active seizure disorder or seizure Condition",
         "supervised start; no activities where a seizure would be dangerous", PRACTICE,
         lambda f: f.comorbidity("seizure"),
         Effect(min_setting="supervised", precaution="seizure-risk", avoid=frozenset({"seizure-risk"}))),
    Rule("OSTOMY", "Ostomy", "colostomy, ileostomy or urostomy", "light resistance and no contact sports until "
         "a physician allows more; support garment", SCHMITZ_2010, lambda f: f.comorbidity("ostomy"),
         Effect(precaution="ostomy", resistance="light", avoid=frozenset({"contact", "heavy-lifting"}),
                note="Wear a support garment or belt over the stoma for exercise; ask before heavy lifting.")),
    Rule("CENTRAL-LINE", "Central venous line", "central venous catheter, PICC or port in place",
         "no swimming and no heavy upper-body loading while the line is in place", PRACTICE,
         lambda f: f.comorbidity("central-line"),
         Effect(precaution="central-line", avoid=frozenset({"water", "heavy-lifting"}),
                note="Keep the line dressing dry and secure; no swimming while the line is in.")),
    Rule("PREGNANCY", "Pregnancy", "current pregnancy (Condition or pregnancy status)",
         "obstetric guidance first (clearance); no contact or high-impact sports", f"{WHO_2020}; {PRACTICE}",
         _pregnancy,
         Effect(clearance=True, precaution="pregnancy", avoid=frozenset({"contact", "high-impact"}))),
    Rule("CACHEXIA", "Cachexia or weight loss", f"cachexia Condition, or weight loss > {WEIGHT_LOSS_PCT:g}% in 6 "
         "months", "clinical review (clearance); resistance emphasis once cleared; nutrition support",
         f"{FEARON_2011}; {PRACTICE}", _cachexia,
         Effect(clearance=True, precaution="cachexia", resistance_emphasis=True,
                note="Eat enough protein and energy around exercise; a dietitian can help.")),
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
    Rule("PAEDIATRIC", "Child or adolescent", f"age < {ADULT_AGE}",
         "paediatric dose: an average of 60 minutes a day of moderate-to-vigorous activity and strengthening on 3 "
         "days a week, in a paediatric oncology programme", WHO_2020, _paediatric,
         Effect(min_setting="community", precaution="paediatric",
                note="Children and teenagers: aim for an average of 60 minutes of activity a day, through play and "
                     "sport, with a paediatric oncology exercise programme.")),
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
    Rule("DATA-UNREADABLE", "Unreadable result", "a safety-relevant result other than a blood count or temperature "
         "is present but cannot be read", "clearance: a clinician checks the result", FAIL_SAFE, _unreadable("clearance"),
         Effect(clearance=True, precaution="data-review")),
    Rule("DATA-CRITICAL-FLAG", "Result flagged critical", "the lab flagged a current safety-relevant result critical "
         "(LL, HH, AA)", "clearance: a clinician reviews the flagged result", f"{PRACTICE} (critical laboratory values "
         "are reviewed by a clinician)", _critical_flag, Effect(clearance=True, precaution="data-review")),
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
