"""What an exercise service reports back about a referral, as FHIR R4 (the one place that builds it).

- an outcome measure (6-minute walk, 30-s sit-to-stand, grip, Timed Up and Go) or the sessions attended:
  an Observation (`onco-exercise-programme-observation`), `basedOn` the referral, codes and units from
  terminology/ (never literals here);
- at the end, the programme summary: a PA IG DiagnosticReport (`onco-exercise-programme-report` ->
  `pa-diagnosticreport`), `basedOn` the referral, `result` -> those Observations, `conclusion` = attendance and
  each measure before -> after; the fulfil Task links it from `Task.output` (PerformedActivityReference slice).
Both the sandbox inbox (a "light" service) and services with their own systems use these builders.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from service import canonical
from service.clinical.units import human_unit
from service.fhir.resources import instant, profile_urls
from service.terminology import get_terminology

OUTCOME_MEASURES = ("six-minute-walk", "sit-to-stand", "grip-right", "grip-left", "tug")
ATTENDANCE = "sessions-attended"
OFFERED_CODE = "sessions-offered"  # component code, local-observation CodeSystem
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SDOHCC_TEMP = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
REPORT_CODE = (canonical.LOINC, "11488-4", "Consult note")  # in the PA IG's pa-diagnosticreport-type value set
MAX_SESSIONS = 500
MAX_CONCLUSION = 2000


class ReportError(ValueError):
    """The reported values cannot be recorded (unknown measure, implausible value ...): a readable message."""


@dataclass(frozen=True)
class Reported:
    """One reported value read back from an Observation (what the summary and the card compare)."""

    measure: str
    value: float
    when: str
    reference: str | None = None
    offered: float | None = None


def _pa_category() -> dict[str, Any]:
    return {"coding": [{"system": canonical.PA_TEMPORARY_CODES, "code": "PhysicalActivity",
                        "display": "Physical Activity"}]}


def _measure_coding(measure: str) -> dict[str, str]:
    t = get_terminology()
    system, code = t.observation_codes(measure)[0]  # LOINC first, else our local code
    coding = {"system": system, "code": code}
    display = t.display(system, code)
    if display:
        coding["display"] = display
    return coding


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": human_unit(unit) or unit.strip("{}"), "system": canonical.UCUM, "code": unit}


def _check(measure: str, value: float) -> None:
    info = get_terminology().measure(measure)
    rng = info.canonical_range
    if rng is not None and not rng[0] <= value <= rng[1]:
        raise ReportError(f"{info.display}: {value:g} {human_unit(info.unit)} is not a plausible result "
                          f"({rng[0]:g}-{rng[1]:g})")


def outcome_observation(*, measure: str, value: float, when: datetime, patient_ref: str, referral_ref: str,
                        performer: dict[str, Any], note: str | None = None) -> dict[str, Any]:
    """An outcome measure the service took (baseline or later)."""
    if measure not in OUTCOME_MEASURES:
        raise ReportError(f"unknown outcome measure {measure!r} (use one of {', '.join(OUTCOME_MEASURES)})")
    _check(measure, value)
    obs = _observation(measure, when, patient_ref, referral_ref, performer, "exam")
    obs["effectiveDateTime"] = instant(when)
    obs["valueQuantity"] = _quantity(value, get_terminology().measure(measure).unit)
    if note:
        obs["note"] = [{"text": note[:500]}]
    return obs


def attendance_observation(*, attended: int, offered: int, start: datetime, end: datetime, patient_ref: str,
                           referral_ref: str, performer: dict[str, Any]) -> dict[str, Any]:
    """Sessions attended of those offered over a period (the newest one counts)."""
    if not 0 <= attended <= offered <= MAX_SESSIONS:
        raise ReportError(f"sessions attended must be between 0 and the sessions offered (at most {MAX_SESSIONS})")
    if end < start:
        raise ReportError("the attendance period ends before it starts")
    unit = get_terminology().measure(ATTENDANCE).unit
    obs = _observation(ATTENDANCE, end, patient_ref, referral_ref, performer, "activity")
    obs["effectivePeriod"] = {"start": instant(start), "end": instant(end)}
    obs["valueQuantity"] = _quantity(attended, unit)
    obs["component"] = [{"code": {"coding": [{"system": canonical.CS_LOCAL_OBSERVATION, "code": OFFERED_CODE,
                                              "display": "Exercise programme sessions offered"}]},
                         "valueQuantity": _quantity(offered, unit)}]
    return obs


def _observation(measure: str, when: datetime, patient_ref: str, referral_ref: str, performer: dict[str, Any],
                 category: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "meta": {"profile": profile_urls("onco-exercise-programme-observation")},
        "basedOn": [{"reference": referral_ref}],
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}, _pa_category()],
        "code": {"coding": [_measure_coding(measure)], "text": get_terminology().measure(measure).display},
        "subject": {"reference": patient_ref},
        "issued": instant(when),
        "performer": [dict(performer)],
    }


def reported(observations: Iterable[dict[str, Any]]) -> list[Reported]:
    """The programme Observations of a referral, read back (unknown or unreadable ones skipped), oldest first."""
    t = get_terminology()
    out = []
    for o in observations:
        coding = next(iter(((o.get("code") or {}).get("coding") or [])), {})
        measure = t.measure_for(coding.get("system"), coding.get("code"))
        value = (o.get("valueQuantity") or {}).get("value")
        when = o.get("effectiveDateTime") or (o.get("effectivePeriod") or {}).get("end") or ""
        if measure not in (*OUTCOME_MEASURES, ATTENDANCE) or not isinstance(value, (int, float)) or o.get(
                "status") not in ("final", "amended", "corrected"):
            continue
        offered = next(((c.get("valueQuantity") or {}).get("value") for c in o.get("component") or ()
                        if any(x.get("code") == OFFERED_CODE for x in (c.get("code") or {}).get("coding") or ())),
                       None)
        ref = f"Observation/{o['id']}" if o.get("id") else None
        out.append(Reported(measure, float(value), str(when), ref, offered))
    return sorted(out, key=lambda r: r.when)


def changes(values: Iterable[Reported]) -> list[tuple[str, Reported, Reported]]:
    """Per outcome measure with two or more results: (measure, first, last)."""
    by: dict[str, list[Reported]] = {}
    for r in values:
        if r.measure in OUTCOME_MEASURES:
            by.setdefault(r.measure, []).append(r)
    return [(m, rs[0], rs[-1]) for m in OUTCOME_MEASURES if len(rs := by.get(m, [])) >= 2]


def summary_text(values: list[Reported]) -> str:
    """Attendance and each measure before -> after, in one paragraph (the report's conclusion)."""
    t = get_terminology()
    parts = []
    attendance = [r for r in values if r.measure == ATTENDANCE]
    if attendance:
        a = attendance[-1]
        parts.append(f"Attended {a.value:g} of {a.offered:g} sessions." if a.offered is not None
                     else f"Attended {a.value:g} sessions.")
    for measure, first, last in changes(values):
        info = t.measure(measure)
        parts.append(f"{info.display}: {first.value:g} -> {last.value:g} {human_unit(info.unit)}.")
    singles = {r.measure for r in values if r.measure in OUTCOME_MEASURES} - {m for m, _, _ in changes(values)}
    for measure in sorted(singles):
        last = [r for r in values if r.measure == measure][-1]
        parts.append(f"{t.measure(measure).display}: {last.value:g} {human_unit(t.measure(measure).unit)} "
                     "(one result).")
    return " ".join(parts) or "No attendance or outcome measures were recorded."


def programme_report(*, patient_ref: str, referral_ref: str, performer: dict[str, Any], start: datetime | str,
                     end: datetime, results: list[str], conclusion: str, issued: datetime) -> dict[str, Any]:
    """The PA IG intervention report summarising the programme."""
    system, code, display = REPORT_CODE
    return {
        "resourceType": "DiagnosticReport",
        "meta": {"profile": profile_urls("onco-exercise-programme-report")},
        "basedOn": [{"reference": referral_ref}],
        "status": "final",
        "category": [_pa_category()],
        "code": {"coding": [{"system": system, "code": code, "display": display}],
                 "text": "Exercise programme report"},
        "subject": {"reference": patient_ref},
        "effectivePeriod": {"start": start if isinstance(start, str) else instant(start), "end": instant(end)},
        "issued": instant(issued),
        "performer": [dict(performer)],
        "result": [{"reference": r} for r in results],
        "conclusion": conclusion[:MAX_CONCLUSION],
    }


def report_output(report_ref: str) -> dict[str, Any]:
    """The Task.output that links the report (PA IG PerformedActivityReference slice)."""
    return {"type": {"coding": [{"system": SDOHCC_TEMP, "code": "resulting-activity",
                                 "display": "Resulting Activity"}]},
            "valueReference": {"reference": report_ref, "display": "Exercise programme report"}}


def completion_bundle(task: dict[str, Any], report: dict[str, Any], version: str | None,
                      base: str) -> dict[str, Any]:
    """One transaction: create the report, update the (completed) Task to point at it, with If-Match."""
    url = f"urn:uuid:{uuid.uuid4()}"
    task = dict(task)
    task["output"] = [*(task.get("output") or []), report_output(url)]
    put: dict[str, Any] = {"method": "PUT", "url": f"Task/{task['id']}"}
    if version:
        put["ifMatch"] = f'W/"{version}"'
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": url, "resource": report, "request": {"method": "POST", "url": "DiagnosticReport"}},
        {"fullUrl": f"{base}/Task/{task['id']}", "resource": task, "request": put}]}
