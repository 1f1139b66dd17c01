"""What a patient reports at home, and the answers that must reach the care team now.

Pure: the companion (service.patient) turns a form into a `Report`, `screen` says which answers match a stop
rule or a red flag. Every alert tells the patient plainly what to do now and is written for the care team (a
FHIR Flag and Communication): nothing a patient reports about a red flag is only stored. The alert rules are
in `ALERT_RULES` (ids, triggers, sources) and in the README's companion table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from service.clinical.rules import CAMPBELL_2019, MALTSER_2017, PAIN_SEVERE, SEED_002, Rule

Urgency = Literal["emergency", "today", "next-contact"]

# Effort in plain words -> Borg CR-10 (0-10, LOINC 82289-0). CR-10 moderate is 3-4, vigorous 5-6 (the
# exercise-oncology reference, "Intensity scales"); the words are the talk test the handout teaches.
EFFORT_WORDS: dict[str, tuple[int, str]] = {
    "very-easy": (1, "Very easy: I could sing"),
    "easy": (2, "Easy: I could talk and sing a little"),
    "moderate": (4, "Moderate: I could talk, but not sing"),
    "hard": (6, "Hard: only a few words at a time"),
    "very-hard": (8, "Very hard: I could not talk"),
}
ALERT_DAYS = 14  # a report stays open (Flag.period.end) this long: the card leads with it, the plan is held
SYMPTOM_SEVERE = 7  # of 10: the pain threshold the rules use (rules.PAIN_SEVERE), applied to each symptom
MAX_MINUTES = 600  # one session; more is a typing slip, refused with a readable message
MAX_STEPS = 100_000


@dataclass(frozen=True)
class Session:
    """One exercise session: what, how long, how hard it felt (CR-10)."""

    day: date
    activity: str
    minutes: int
    effort: int


@dataclass(frozen=True)
class Symptoms:
    """The weekly check-in: each 0-10, None when not answered."""

    day: date
    fatigue: int | None = None
    pain: int | None = None
    breathlessness: int | None = None


@dataclass(frozen=True)
class Recall:
    """The exercise vital sign asked at the weekly check-in: days of moderate exercise last week, minutes on those
    days (minutes per week is their product)."""

    days: int
    minutes_per_day: int

    @property
    def minutes_per_week(self) -> int:
        return self.days * self.minutes_per_day


@dataclass(frozen=True)
class Warnings:
    """The yes/no questions asked with every entry (the stop rules and red flags of the plan)."""

    chest_pain: bool = False
    fainting: bool = False
    fever: bool = False
    bone_pain: bool = False


@dataclass(frozen=True)
class Report:
    """One submission from the companion (any part may be absent)."""

    day: date
    session: Session | None = None
    steps: int | None = None
    symptoms: Symptoms | None = None
    warnings: Warnings = field(default_factory=Warnings)
    recall: Recall | None = None


@dataclass(frozen=True)
class Alert:
    """A reported answer the care team must hear about, and what the patient is told to do now."""

    rule: str
    urgency: Urgency
    patient_text: str
    clinician_text: str


_SYMPTOM_NAMES = {"fatigue": "tiredness", "pain": "pain", "breathlessness": "breathlessness"}

ALERT_RULES: tuple[Rule, ...] = (
    Rule("PT-CHEST-PAIN", "Chest pain or pressure (patient report)",
         "the patient reports chest pain, pressure or tightness",
         "stop now; emergency services if severe or lasting; care team flagged (emergency)",
         f"{SEED_002}; Campbell 2019 pre-exercise screening", None),
    Rule("PT-FAINTING", "Fainting or near-fainting (patient report)",
         "the patient reports fainting, or feeling about to faint",
         "no exercise until the care team has spoken to them; care team flagged (today)", SEED_002, None),
    Rule("PT-FEVER", "Fever (patient report)",
         "the patient reports a temperature of 38 °C or more, or feeling hot and shivery",
         "no exercise; call the 24-hour cancer line now; care team flagged (today)", MALTSER_2017, None),
    Rule("PT-BONE-PAIN", "New or worse bone pain (patient report)",
         "the patient reports new or worsening pain in a bone (back, hips, ribs, limbs)",
         "stop the exercises that hurt; care team flagged (today): medical review before carrying on",
         f"{SEED_002}; International Bone Metastases Exercise Working Group 2022", None),
    Rule("PT-SYMPTOM-SEVERE", "Severe symptom (patient report)",
         f"tiredness, pain or breathlessness reported at {SYMPTOM_SEVERE} or more of 10",
         "rest or gentle walking only; care team flagged (next contact)",
         f"{CAMPBELL_2019}; pain threshold as rule PAIN-SEVERE ({PAIN_SEVERE:g}/10)", None),
)


def screen(report: Report) -> tuple[Alert, ...]:
    """The alerts one report raises, most urgent first (empty: nothing to flag)."""
    w = report.warnings
    out: list[Alert] = []
    if w.chest_pain:
        out.append(Alert("PT-CHEST-PAIN", "emergency",
                         "Stop exercising now and rest. If the pain is severe, lasts more than a few minutes, or "
                         "comes with sweating, sickness or breathlessness, call emergency services now. "
                         "Otherwise call your care team today.",
                         "Patient reports chest pain or pressure."))
    if w.fever:
        out.append(Alert("PT-FEVER", "today",
                         "Do not exercise. Call your 24-hour cancer helpline now (the number is on your treatment "
                         "card, or under \"Whom to call\"): a temperature of 38 °C or more during cancer "
                         "treatment needs checking straight away.",
                         "Patient reports a temperature of 38 °C or more (or feeling hot and shivery)."))
    if w.fainting:
        out.append(Alert("PT-FAINTING", "today",
                         "Do not exercise again until you have spoken to your care team. Call them today. If you "
                         "faint again or hurt yourself, call emergency services.",
                         "Patient reports fainting or near-fainting."))
    if w.bone_pain:
        out.append(Alert("PT-BONE-PAIN", "today",
                         "Stop the exercises that hurt and call your care team today: new bone pain needs "
                         "checking before you carry on. Gentle walking is fine if it does not hurt.",
                         "Patient reports new or worsening bone pain."))
    severe = _severe_symptoms(report.symptoms)
    if severe:
        out.append(Alert("PT-SYMPTOM-SEVERE", "next-contact",
                         "Rest today, or take a gentle walk if you feel able. Your care team will see this; call "
                         "them sooner if it gets worse or does not ease in a few days.",
                         "Patient reports severe " + ", ".join(f"{_SYMPTOM_NAMES[k]} ({v}/10)" for k, v in severe)
                         + "."))
    return tuple(out)


def _severe_symptoms(s: Symptoms | None) -> list[tuple[str, int]]:
    if s is None:
        return []
    values = (("fatigue", s.fatigue), ("pain", s.pain), ("breathlessness", s.breathlessness))
    return [(k, v) for k, v in values if v is not None and v >= SYMPTOM_SEVERE]


def urgency_rank(rule: str) -> int:
    """Order of the alert rules (most urgent first); unknown rules last."""
    ids = [r.id for r in ALERT_RULES]
    return ids.index(rule) if rule in ids else len(ids)


def effort_score(word: str) -> int:
    """CR-10 score of an effort word; KeyError for a word the form does not offer."""
    return EFFORT_WORDS[word][0]


def effort_word(score: float) -> str:
    """The plain word for a CR-10 score (the nearest the form offers)."""
    return min(EFFORT_WORDS.items(), key=lambda kv: abs(kv[1][0] - score))[0].replace("-", " ")
