"""Small hand-made, valid FHIR resources for the client tests and the benchmark."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

LOINC = "http://loinc.org"
IRRELEVANT_LOINC = ["2345-7", "2160-0", "2951-2", "2823-3", "1742-6", "1920-8", "3094-0", "2075-0"]  # not read


def patient(pid: str | None = None) -> dict[str, Any]:
    return {"resourceType": "Patient", **({"id": pid} if pid else {}), "gender": "female",
            "birthDate": "1968-04-02", "name": [{"family": "Test", "given": ["Pat"]}]}


def observation(patient_ref: str, code: str, value: float, unit: str, when: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def condition(patient_ref: str, code: str = "254837009") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                           "code": "confirmed"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": patient_ref},
    }


def post_entries(resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r,
             "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]


def transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def observations_for(patient_ref: str, n: int, relevant: list[tuple[str, float, str]], now: datetime,
                     ) -> list[dict[str, Any]]:
    """n Observations: the `relevant` (code, value, unit) ones first, the rest irrelevant chemistry codes."""
    out = []
    for i in range(n):
        when = now - timedelta(hours=6 * i + 1)
        if i < len(relevant):
            code, value, unit = relevant[i]
        else:
            code, value, unit = IRRELEVANT_LOINC[i % len(IRRELEVANT_LOINC)], float(i % 97), "mg/dL"
        out.append(observation(patient_ref, code, value, unit, when))
    return out


NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def goal(identifier: str, patient_ref: str) -> dict[str, Any]:
    return {
        "resourceType": "Goal", "lifecycleStatus": "active",
        "identifier": [{"system": "https://fhir.onco-exercise.org/identifier/prescription", "value": identifier}],
        "description": {"text": "150 minutes of moderate activity per week"},
        "subject": {"reference": patient_ref},
        "target": [{"measure": {"coding": [{"system": LOINC, "code": "82290-8"}]},
                    "detailQuantity": {"value": 150, "unit": "min/wk", "system": "http://unitsofmeasure.org",
                                       "code": "min/wk"}}],
    }


def service_request(identifier: str, patient_ref: str, goal_url: str | None = None) -> dict[str, Any]:
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "identifier": [{"system": "https://fhir.onco-exercise.org/identifier/prescription", "value": identifier}],
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "229065009"}]},
        "subject": {"reference": patient_ref},
        "authoredOn": "2026-11-01T12:00:00+00:00",
        "requester": {"reference": "Practitioner/sandbox-clinician"},
        "reasonCode": [{"text": "cancer"}],
    }
    if goal_url:
        sr["supportingInfo"] = [{"reference": goal_url}]
    return sr


def care_plan(identifier: str, patient_ref: str, goal_url: str, sr_url: str) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "identifier": [{"system": "https://fhir.onco-exercise.org/identifier/prescription", "value": identifier}],
        "subject": {"reference": patient_ref},
        "goal": [{"reference": goal_url}],
        "activity": [{"reference": {"reference": sr_url}}],
    }


def task(identifier: str, patient_ref: str, sr_url: str) -> dict[str, Any]:
    return {
        "resourceType": "Task", "status": "requested", "intent": "order",
        "identifier": [{"system": "https://fhir.onco-exercise.org/identifier/prescription", "value": identifier}],
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": sr_url}, "for": {"reference": patient_ref},
        "authoredOn": "2026-11-01T12:00:00+00:00",
        "requester": {"reference": "Practitioner/sandbox-clinician"},
        "owner": {"reference": "Organization/exercise-oncology-service"},
    }


def provenance(tag: str, target_urls: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Provenance", "target": [{"reference": u} for u in target_urls],
        "meta": {"tag": [{"system": "https://fhir.onco-exercise.org/identifier/prescription", "code": tag}]},
        "recorded": "2026-11-01T12:00:00+00:00",
        "agent": [{"who": {"reference": "Practitioner/sandbox-clinician"}}],
    }


def document_reference(identifier: str, patient_ref: str, related: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference", "status": "current",
        "identifier": [{"system": "https://fhir.onco-exercise.org/identifier/prescription", "value": identifier}],
        "type": {"coding": [{"system": LOINC, "code": "18776-5"}]},
        "subject": {"reference": patient_ref},
        "content": [{"attachment": {"contentType": "text/html", "data": "PGgxPkV4ZXJjaXNlPC9oMT4="}}],
    }
    if related:
        doc["context"] = {"related": [{"reference": r} for r in related]}
    return doc


def prescription_entries(key: str, patient_ref: str) -> list[dict[str, Any]]:
    """What build_prescription_resources returns, by hand: Goal, ServiceRequest, CarePlan, Task, Provenance."""
    urls = {n: f"urn:uuid:{uuid.uuid4()}" for n in ("goal", "sr", "cp", "task", "prov")}
    res = {
        "goal": goal(f"{key}-goal", patient_ref),
        "sr": service_request(f"{key}-sr", patient_ref, urls["goal"]),
        "cp": care_plan(f"{key}-cp", patient_ref, urls["goal"], urls["sr"]),
        "task": task(f"{key}-task", patient_ref, urls["sr"]),
        "prov": provenance(f"{key}-prov", [urls["cp"], urls["sr"], urls["goal"], urls["task"]]),
    }
    out = []
    for n, r in res.items():
        if n == "prov":
            search = f"_tag=https://fhir.onco-exercise.org/identifier/prescription|{key}-prov"
        else:
            ident = r["identifier"][0]
            search = f"identifier={ident['system']}|{ident['value']}"
        out.append({"fullUrl": urls[n], "resource": r, "ifNoneExist": search})
    return out
