"""The patient-data queries the rules need, defined once for both CDS Hooks prefetch and fallback reads.

Each query is a template with the `{{context.patientId}}` token, kept within the CDS Hooks prefetch subset
(instance read, type search, token equality with comma-OR, `_count`, `_sort`), plus `_include` of the
Medication a medication resource references (EHRs that code drugs as Medication resources send nothing else;
a client that ignores `_include` still answers, and a referenced Medication missing from the answer leaves the
drug unidentified, which the rules treat on the safe side). The fallback path (no or
partial prefetch, SMART app reads) uses the same queries as concrete searches and adds a date floor
(`ge<date>`), which prefetch cannot express because CDS Hooks 2.0 has no date token.

Observation searches are filtered server-side to the codes the rules read (`get_terminology().observation_codes()`,
sent without their system to keep the URL short), newest first: a patient with thousands of irrelevant
Observations costs the same few requests as one with none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

PATIENT_TOKEN = "{{context.patientId}}"
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"

# How far back the fallback searches look. Labs and vital signs older than this cannot be "latest" for the
# rules and trends beyond two years are not used; treatments older than this are history the snapshot
# does not need.
OBSERVATION_LOOKBACK_DAYS = 730
PROCEDURE_LOOKBACK_DAYS = 730
ADMINISTRATION_LOOKBACK_DAYS = 365


@dataclass(frozen=True)
class PatientQuery:
    """One query: `key` is its prefetch key; `params` may contain the patient token."""

    key: str
    resource_type: str
    params: tuple[tuple[str, str], ...] = ()
    read: bool = False  # instance read ([type]/{{context.patientId}}) instead of a search
    date_param: str | None = None  # fallback only: add `date_param=ge<now - lookback_days>`
    lookback_days: int | None = None
    max_pages: int = 3
    required: bool = False  # without it no snapshot can be built (the Patient)

    def template(self) -> str:
        """The CDS Hooks prefetch template, e.g. `Condition?patient={{context.patientId}}&_count=100`."""
        if self.read:
            return f"{self.resource_type}/{PATIENT_TOKEN}"
        query = "&".join(f"{k}={_encode(v)}" for k, v in self.params)
        return f"{self.resource_type}?{query}"

    def concrete(self, patient_id: str, now: datetime) -> tuple[str, list[tuple[str, str]]]:
        """(resource type, params) for the fallback search; for reads params is empty and the id is in type."""
        if self.read:
            return f"{self.resource_type}/{patient_id}", []
        params = [(k, v.replace(PATIENT_TOKEN, patient_id)) for k, v in self.params]
        if self.date_param and self.lookback_days:
            floor = (now - timedelta(days=self.lookback_days)).date().isoformat()
            params.append((self.date_param, f"ge{floor}"))
        return self.resource_type, params


def _encode(value: str) -> str:
    """URL-encode a parameter value but keep the prefetch token and FHIR's `|` and `,` readable."""
    return quote(value, safe="{}.|,:/-_")


def _terminology() -> Any:
    from service.terminology import get_terminology  # imported lazily: loaded once, on first use

    return get_terminology()


def _tokens(codes: list[tuple[str, str]]) -> str:
    return ",".join(f"{system}|{code}" for system, code in codes)


def patient_queries() -> tuple[PatientQuery, ...]:
    """All patient-data queries, in a stable order (the prefetch keys are part of our discovery document)."""
    term = _terminology()
    # Codes without their system: ~200 LOINC variants as system|code would make a 5 KB URL (servers often stop at
    # 4-8 KB); the code alone is a prefilter (it also matches LOINC sent under its OID), and the snapshot checks the
    # system of every coding it reads.
    obs_codes = ",".join(dict.fromkeys(code for _, code in term.observation_codes()))
    exercise_codes = _tokens(list(dict.fromkeys(term.codes("exercise-servicerequest-code"))))
    p = PATIENT_TOKEN
    queries = [
        PatientQuery("patient", "Patient", read=True, required=True),
        PatientQuery("conditions", "Condition", (("patient", p), ("_count", "100")), max_pages=5),
        PatientQuery("observations", "Observation",
                     (("patient", p), ("code", obs_codes), ("_sort", "-date"), ("_count", "200")),
                     date_param="date", lookback_days=OBSERVATION_LOOKBACK_DAYS, max_pages=5),
        PatientQuery("medicationRequests", "MedicationRequest",
                     (("patient", p), ("status", "active,on-hold,completed"),
                      ("_include", "MedicationRequest:medication"), ("_count", "100"))),
        PatientQuery("medicationAdministrations", "MedicationAdministration",
                     (("patient", p), ("_include", "MedicationAdministration:medication"), ("_count", "100")),
                     date_param="effective-time", lookback_days=ADMINISTRATION_LOOKBACK_DAYS),
        PatientQuery("medicationStatements", "MedicationStatement",
                     (("patient", p), ("status", "active,completed,intended"),
                      ("_include", "MedicationStatement:medication"), ("_count", "100"))),
        PatientQuery("procedures", "Procedure", (("patient", p), ("_sort", "-date"), ("_count", "100")),
                     date_param="date", lookback_days=PROCEDURE_LOOKBACK_DAYS),
        PatientQuery("devices", "Device", (("patient", p), ("_count", "50"))),
        PatientQuery("exerciseReferrals", "ServiceRequest",
                     (("patient", p), ("code", exercise_codes), ("_count", "50"))),
        PatientQuery("referralTasks", "Task",
                     (("patient", p), ("code", f"{TASK_CODE_SYSTEM}|fulfill,{TASK_CODE_SYSTEM}|approve"),
                      ("_count", "50"))),
        # what the patient companion flagged for the care team (service.clinical.selfreport)
        PatientQuery("patientFlags", "Flag", (("patient", p), ("status", "active"), ("_count", "50"))),
    ]
    return tuple(q for q in queries if not (q.key == "exerciseReferrals" and not exercise_codes))


def prefetch_templates() -> dict[str, str]:
    """{prefetch key: template} for the CDS Hooks discovery document."""
    return {q.key: q.template() for q in patient_queries()}


def query_by_key(key: str) -> PatientQuery:
    for q in patient_queries():
        if q.key == key:
            return q
    raise KeyError(key)
