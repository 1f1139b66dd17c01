"""Realistic synthetic patients as CDS Hooks prefetch (plain FHIR R4 JSON), for tests and the benchmark.

Each builder returns {prefetch key: Patient resource | searchset Bundle}, keyed like our discovery document,
so a test can send all of it, part of it (fallback), or load the same resources into a FHIR server.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from service.fhir.queries import patient_queries, prefetch_templates

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

NOW = datetime.now(timezone.utc).replace(microsecond=0)

KEYS = tuple(prefetch_templates())  # every prefetch key the service declares
KEY_OF_TYPE = {q.resource_type: q.key for q in patient_queries()}


def _ts(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat()


def searchset(resources: list[dict[str, Any]], base: str = "http://ehr.example.org/fhir") -> dict[str, Any]:
    b: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if resources:
        b["entry"] = [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]
    return b


class PatientBuilder:
    """Accumulates one patient's resources with deterministic ids."""

    def __init__(self, pid: str, birth: str = "1962-05-14", gender: str = "female") -> None:
        self.pid = pid
        self.n = 0
        self.patient = {"resourceType": "Patient", "id": pid, "birthDate": birth, "gender": gender,
                        "name": [{"family": "Test", "given": [pid]}]}
        self.by_key: dict[str, list[dict[str, Any]]] = {k: [] for k in KEYS if k != "patient"}

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{self.pid}-{prefix}{self.n}"

    @property
    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    def condition(self, system: str, code: str, display: str, status: str = "active", onset_days: int = 200) -> str:
        rid = self._id("c")
        self.by_key["conditions"].append({
            "resourceType": "Condition", "id": rid,
            "clinicalStatus": {"coding": [{"system": COND_CLINICAL, "code": status}]},
            "verificationStatus": {"coding": [{"system": COND_VERIFICATION, "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "problem-list-item"}]}],
            "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
            "subject": self.subject, "onsetDateTime": _ts(onset_days),
        })
        return rid

    def obs(self, code: str, display: str, value: float, unit: str, days_ago: float,
            category: str = "laboratory", integer: bool = False) -> str:
        rid = self._id("o")
        res: dict[str, Any] = {
            "resourceType": "Observation", "id": rid, "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "subject": self.subject, "effectiveDateTime": _ts(days_ago),
        }
        if integer:
            res["valueInteger"] = int(value)
        else:
            res["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        self.by_key["observations"].append(res)
        return rid

    def chemo(self, code: str = "56946", display: str = "paclitaxel", status: str = "active",
              days_ago: int = 40) -> str:
        rid = self._id("m")
        self.by_key["medicationRequests"].append({
            "resourceType": "MedicationRequest", "id": rid, "status": status, "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}]},
            "subject": self.subject, "authoredOn": _ts(days_ago),
        })
        return rid

    def referral(self, status: str = "active", task_status: str | None = "accepted", days_ago: int = 30) -> str:
        rid = self._id("sr")
        self.by_key["exerciseReferrals"].append({
            "resourceType": "ServiceRequest", "id": rid, "status": status, "intent": "order",
            "code": {"coding": [{"system": SNOMED, "code": "390893007",
                                 "display": "Referral to physical activity program"}]},
            "subject": self.subject, "authoredOn": _ts(days_ago),
            "requester": {"reference": "Practitioner/onc-1"},
            "performer": [{"reference": "Organization/exercise-oncology-service"}],
        })
        if task_status:
            self.by_key["referralTasks"].append({
                "resourceType": "Task", "id": self._id("t"), "status": task_status, "intent": "order",
                "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
                "focus": {"reference": f"ServiceRequest/{rid}"}, "for": self.subject,
                "authoredOn": _ts(days_ago), "lastModified": _ts(days_ago - 2),
                "requester": {"reference": "Practitioner/onc-1"},
                "owner": {"reference": "Organization/exercise-oncology-service"},
            })
        return rid

    def labs(self, platelets: float = 245, hb: float = 12.8, anc: float = 3.4, temp: float = 36.8,
             days_ago: float = 2) -> None:
        self.obs("777-3", "Platelets", platelets, "10*3/uL", days_ago)
        self.obs("718-7", "Hemoglobin", hb, "g/dL", days_ago)
        self.obs("751-8", "Neutrophils", anc, "10*3/uL", days_ago)
        self.obs("8310-5", "Body temperature", temp, "Cel", days_ago, category="vital-signs")

    def history(self, months: int) -> None:
        """Monthly labs and vital signs going back `months` months: a realistic, bulky record."""
        for m in range(1, months + 1):
            d = 30 * m + 3
            self.labs(platelets=230 + m, hb=12.4 + 0.01 * m, anc=3.1, temp=36.7, days_ago=d)
            self.obs("8867-4", "Heart rate", 72 + (m % 5), "/min", d, category="vital-signs")
            self.obs("29463-7", "Body weight", 68 + 0.1 * m, "kg", d, category="vital-signs")
            self.obs("6690-2", "WBC", 6.1, "10*3/uL", d)

    def prefetch(self) -> dict[str, Any]:
        out: dict[str, Any] = {"patient": self.patient}
        for k, rs in self.by_key.items():
            out[k] = searchset(rs)
        return out

    def resources(self) -> list[dict[str, Any]]:
        return [self.patient] + [r for rs in self.by_key.values() for r in rs]


# -- the cohort the tests use -------------------------------------------------------------------------------


def bone_metastases(pid: str = "bone-mets") -> PatientBuilder:
    """Breast cancer with bone metastases on chemotherapy, labs fine, ECOG 1, inactive."""
    p = PatientBuilder(pid)
    p.condition(ICD10, "C50.911", "Malignant neoplasm of right female breast")
    p.condition(SNOMED, "94222008", "Secondary malignant neoplasm of bone")
    p.chemo()
    p.labs()
    p.obs("89247-1", "ECOG performance status", 1, "", 10, category="survey", integer=True)
    p.obs("82290-8", "Exercise minutes per week", 30, "min/wk", 10, category="activity")
    return p


def neutropenic_fever(pid: str = "neutro-fever") -> PatientBuilder:
    """Lung cancer on chemotherapy with fever and severe neutropenia today."""
    p = PatientBuilder(pid, birth="1958-02-01", gender="male")
    p.condition(ICD10, "C34.90", "Malignant neoplasm of unspecified part of bronchus or lung")
    p.chemo(code="40048", display="carboplatin", days_ago=9)
    p.labs(platelets=140, hb=10.9, anc=0.3, temp=38.7, days_ago=0.1)
    p.obs("89247-1", "ECOG performance status", 1, "", 5, category="survey", integer=True)
    return p


def survivorship(pid: str = "survivor") -> PatientBuilder:
    """Colorectal cancer, treatment finished over a year ago, fit: a home-based programme."""
    p = PatientBuilder(pid, birth="1971-09-30")
    p.condition(ICD10, "C18.9", "Malignant neoplasm of colon, unspecified", onset_days=900)
    p.chemo(code="32592", display="oxaliplatin", status="completed", days_ago=500)
    p.labs(platelets=260, hb=13.6, anc=4.0, temp=36.6, days_ago=20)
    p.obs("89247-1", "ECOG performance status", 0, "", 20, category="survey", integer=True)
    p.obs("64098-7", "Six minute walk test distance", 560, "m", 40, category="exam")
    p.obs("82290-8", "Exercise minutes per week", 60, "min/wk", 20, category="activity")
    return p


def existing_referral(pid: str = "has-referral") -> PatientBuilder:
    """Breast cancer with an accepted exercise referral and rising exercise minutes."""
    p = PatientBuilder(pid)
    p.condition(ICD10, "C50.912", "Malignant neoplasm of left female breast")
    p.labs(days_ago=15)
    p.obs("89247-1", "ECOG performance status", 0, "", 15, category="survey", integer=True)
    p.obs("82290-8", "Exercise minutes per week", 60, "min/wk", 45, category="activity")
    p.obs("82290-8", "Exercise minutes per week", 95, "min/wk", 5, category="activity")
    p.referral(status="active", task_status="in-progress", days_ago=50)
    return p


def non_oncology(pid: str = "no-cancer") -> PatientBuilder:
    p = PatientBuilder(pid, birth="1980-01-01", gender="male")
    p.condition(ICD10, "I10", "Essential (primary) hypertension")
    p.labs(days_ago=30)
    return p


def bulky(pid: str = "bulky", months: int = 24) -> PatientBuilder:
    """bone_metastases plus two years of monthly labs and vitals: ~200 resources, ~120 KB of prefetch."""
    p = bone_metastases(pid)
    p.history(months)
    return p
