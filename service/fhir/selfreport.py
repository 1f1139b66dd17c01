"""A patient's report from the companion, as FHIR: PA IG observations, patient-reported scores, and for every
alert a Flag and a Communication to the care team, in one transaction.

Sessions are the PA IG's activity group (PAPanel) with its activity measures (type, duration, effort); daily
steps a PA IG time measure (LOINC 41950-7); symptom scores 0-10 survey Observations (pain LOINC 72514-3;
tiredness and breathlessness local codes until their LOINC items are verified, see terminology/). Every entry
carries a business identifier made from the client's entry id, so a queued entry sent twice (offline, then
online) is created once (conditional create).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from service import canonical
from service.clinical.selfreport import ALERT_DAYS, Alert, Report

ID_ENTRY = f"{canonical.BASE}/identifier/companion-entry"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
EVS_DAYS = "How many days per week did you engage in moderate to strenuous physical activity in the last 30 days"
EVS_MIN_DAY = ("On those days that you engage in moderate to strenuous exercise, how many minutes, on average, do "
               "you exercise")
EVS_MIN_WEEK = "Frequency of moderate to vigorous aerobic physical activity"
PRIORITY = {"emergency": "stat", "today": "urgent", "next-contact": "routine"}

Entry = dict[str, Any]


def report_bundle(report: Report, alerts: tuple[Alert, ...], *, entry_id: str, patient_ref: str,
                  now: datetime, care_team: str | None = None, flags: bool = True,
                  communications: bool = True) -> dict[str, Any]:
    """The transaction Bundle for one report; `care_team` (e.g. the referral's requester) receives the
    Communications when known; `flags`/`communications`: what the token may create."""
    b = _Builder(entry_id, patient_ref, report.day.isoformat(), now)
    if report.session is not None:
        s = report.session
        members = [
            b.measure("activity", "73985-4", "Exercise activity", {"valueCodeableConcept": {"text": s.activity}}),
            b.measure("duration", "55411-3", "Exercise duration", _qty(s.minutes, "min", "min")),
            b.measure("effort", "82289-0", "Rating of perceived exertion [Score]", _qty(s.effort, "{score}", "score")),
        ]
        b.group(members)
    if report.steps is not None:
        b.add("steps", {
            **b.base("pa-observation-time-measure", "41950-7", "Number of steps in 24 hour Measured"),
            **_qty(report.steps, "/d", "steps per day")})
    if report.symptoms is not None:
        sy = report.symptoms
        for role, value, system, code, display in (
                ("pain", sy.pain, canonical.LOINC, "72514-3",
                 "Pain severity - 0-10 verbal numeric rating [Score] - Reported"),
                ("fatigue", sy.fatigue, canonical.CS_LOCAL_OBSERVATION, "fatigue-nrs",
                 "Tiredness now, 0-10 (patient-reported)"),
                ("breathlessness", sy.breathlessness, canonical.CS_LOCAL_OBSERVATION, "breathlessness-nrs",
                 "Breathlessness now, 0-10 (patient-reported)")):
            if value is not None:
                b.add(role, b.survey(system, code, display, value))
    if report.recall is not None:  # the exercise vital sign (PA IG EVS profiles)
        r = report.recall
        days = b.add("evs-days", {**b.base("pa-observation-evs-days-per-week", "89555-7", EVS_DAYS),
                                  **_qty(r.days, "d/wk", "days per week")})
        per_day = b.add("evs-min-day", {**b.base("pa-observation-evs-min-per-day", "68516-4", EVS_MIN_DAY),
                                        **_qty(r.minutes_per_day, "min/d", "minutes per day")})
        b.add("evs-min-week", {**b.base("pa-observation-evs-min-per-week", "82290-8", EVS_MIN_WEEK),
                               **_qty(r.minutes_per_week, "min/wk", "minutes per week"),
                               "derivedFrom": [{"reference": days}, {"reference": per_day}]})
    for alert in alerts:
        flag_url = b.add(f"flag-{alert.rule}", b.flag(alert)) if flags else None
        if communications:
            b.add(f"communication-{alert.rule}", b.communication(alert, flag_url, care_team))
    return {"resourceType": "Bundle", "type": "transaction", "entry": b.entries}


def _qty(value: float, code: str, unit: str) -> dict[str, Any]:
    return {"valueQuantity": {"value": value, "unit": unit, "system": canonical.UCUM, "code": code}}


class _Builder:
    def __init__(self, entry_id: str, patient_ref: str, day: str, now: datetime) -> None:
        self.entry_id, self.patient_ref, self.day = entry_id, patient_ref, day
        self.now = now.isoformat(timespec="seconds")
        # when a report stops being news (ALERT_DAYS): the Flag's period ends, so it closes by itself
        self.until = (now + timedelta(days=ALERT_DAYS)).isoformat(timespec="seconds")
        self.entries: list[Entry] = []

    def identifier(self, role: str) -> dict[str, str]:
        return {"system": ID_ENTRY, "value": f"{self.entry_id}-{role}"}

    def add(self, role: str, resource: dict[str, Any]) -> str:
        ident = self.identifier(role)
        resource["identifier"] = [ident]
        value = ident["value"]
        url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{ID_ENTRY}|{value}')}"
        self.entries.append({"fullUrl": url, "resource": resource, "request": {
            "method": "POST", "url": resource["resourceType"],
            "ifNoneExist": f"identifier={ID_ENTRY}|{ident['value']}"}})
        return url

    def base(self, profile: str, code: str, display: str, system: str = canonical.LOINC) -> dict[str, Any]:
        return {"resourceType": "Observation", "meta": {"profile": [canonical.pa_sd_url(profile)]},
                "status": "final",
                "category": [{"coding": [{"system": OBS_CATEGORY, "code": "activity", "display": "Activity"}]},
                             {"coding": [{"system": canonical.PA_TEMPORARY_CODES, "code": "PhysicalActivity",
                                          "display": "Physical Activity"}]}],
                "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
                "subject": {"reference": self.patient_ref}, "effectiveDateTime": self.day,
                "performer": [{"reference": self.patient_ref}]}

    def measure(self, role: str, code: str, display: str, value: dict[str, Any]) -> str:
        return self.add(role, {**self.base("pa-observation-activity-measure", code, display), **value})

    def group(self, members: list[str]) -> str:
        res = self.base("pa-observation-activity-group", "PAPanel", "Physical Activity Panel",
                        canonical.PA_TEMPORARY_CODES)
        res["hasMember"] = [{"reference": m} for m in members]
        return self.add("session", res)

    def survey(self, system: str, code: str, display: str, value: int) -> dict[str, Any]:
        return {"resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": OBS_CATEGORY, "code": "survey", "display": "Survey"}]}],
                "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
                "subject": {"reference": self.patient_ref}, "effectiveDateTime": self.day,
                "performer": [{"reference": self.patient_ref}], **_qty(value, "{score}", "score")}

    def flag(self, alert: Alert) -> dict[str, Any]:
        return {"resourceType": "Flag", "status": "active",
                "category": [{"coding": [{"system": FLAG_CATEGORY, "code": "clinical", "display": "Clinical"}]}],
                "code": {"coding": [{"system": canonical.CS_COMPANION_ALERT, "code": alert.rule}],
                         "text": alert.clinician_text},
                "subject": {"reference": self.patient_ref}, "period": {"start": self.now, "end": self.until},
                "author": {"reference": self.patient_ref}}

    def communication(self, alert: Alert, flag_url: str | None, care_team: str | None) -> dict[str, Any]:
        res: dict[str, Any] = {
            "resourceType": "Communication", "status": "completed", "priority": PRIORITY[alert.urgency],
            "subject": {"reference": self.patient_ref}, "sent": self.now,
            "sender": {"reference": self.patient_ref},
            "reasonCode": [{"coding": [{"system": canonical.CS_COMPANION_ALERT, "code": alert.rule}],
                            "text": alert.clinician_text}],
            "payload": [{"contentString": f"{alert.clinician_text} Reported in the exercise companion on "
                                          f"{self.day}. The patient was told: {alert.patient_text}"}]}
        if flag_url:
            res["about"] = [{"reference": flag_url}]
        if care_team:
            res["recipient"] = [{"reference": care_team}]
        return res
