"""Reporting back from the exercise-service inbox (the "light" service, writing into the EHR's FHIR server).

While a referral is accepted, running or on hold, the physiologist records outcome measures (6-minute walk,
30-s sit-to-stand, grip, Timed Up and Go) and the sessions attended: one Observation each, based on the
referral (service.fhir.reports builds and validates them). Completing the programme writes the programme report
(PA IG DiagnosticReport: attendance and each measure before -> after) and the completed Task pointing at it in
one transaction, conditional on the Task version read.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from service.clinical.units import human_unit
from service.fhir import reports
from service.fhir.validate import ValidationFailed, assert_valid
from service.sandbox.ehr import PageError, check_csrf, fhir_client, html_errors
from service.terminology import get_terminology

router = APIRouter(prefix="/sandbox/exercise-service", include_in_schema=False)

REPORTING = frozenset({"accepted", "in-progress", "on-hold"})
MAX_VALUE_CHARS = 12


def performer() -> dict[str, str]:
    from service.sandbox.inbox import ACTOR, ACTOR_NAME

    return {"reference": ACTOR, "display": ACTOR_NAME}


def measure_choices() -> list[dict[str, str]]:
    """The outcome measures the form offers: key, label and unit, from terminology/."""
    t = get_terminology()
    return [{"key": m, "label": t.measure(m).display, "unit": human_unit(t.measure(m).unit)}
            for m in reports.OUTCOME_MEASURES]


async def programme_observations(fhir: httpx.AsyncClient, referral_ref: str) -> list[dict[str, Any]]:
    """The Observations reported against this referral."""
    r = await fhir.get("Observation", params={"based-on": referral_ref, "_count": "200"})
    if r.status_code != 200:
        return []
    return [e["resource"] for e in r.json().get("entry", []) if e.get("resource", {}).get("resourceType") ==
            "Observation"]


def reported_rows(observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the task page lists: label, value with unit, date (oldest first)."""
    t = get_terminology()
    rows = []
    for r in reports.reported(observations):
        info = t.measure(r.measure)
        value = f"{r.value:g} of {r.offered:g}" if r.offered is not None else f"{r.value:g}"
        rows.append({"label": info.display, "value": f"{value} {human_unit(info.unit) or 'sessions'}",
                     "when": r.when})
    return rows


def _number(raw: str | None, what: str) -> float:
    text = (raw or "").strip()
    try:
        if not text or len(text) > MAX_VALUE_CHARS:
            raise ValueError
        return float(text)
    except ValueError:
        raise reports.ReportError(f"{what}: give a number") from None


def _date(raw: str | None, now: datetime) -> datetime:
    try:
        day = datetime.strptime((raw or "").strip(), "%Y-%m-%d").replace(hour=12, tzinfo=timezone.utc)
    except ValueError:
        raise reports.ReportError("Give the date as YYYY-MM-DD.") from None
    if day.date() == now.date():
        return now  # today: now (a result cannot be later than the moment it is recorded)
    if day > now or day < now - timedelta(days=3 * 365):
        raise reports.ReportError("The date must be within the last three years and not in the future.")
    return day


def build_from_form(form: dict[str, str], task: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The Observation the form describes (ReportError when it is incomplete or implausible)."""
    common = {"patient_ref": task["for"]["reference"], "referral_ref": task["focus"]["reference"],
              "performer": performer()}
    if form.get("kind") == "attendance":
        attended, offered = _number(form.get("attended"), "Sessions attended"), _number(form.get("offered"),
                                                                                          "Sessions offered")
        if attended != int(attended) or offered != int(offered):
            raise reports.ReportError("Sessions are whole numbers.")
        start = (task.get("executionPeriod") or {}).get("start") or task.get("authoredOn") or now.isoformat()
        begin = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        begin = begin if begin.tzinfo else begin.replace(tzinfo=timezone.utc)
        return reports.attendance_observation(attended=int(attended), offered=int(offered), start=min(begin, now),
                                              end=now, **common)
    measure = form.get("measure", "")
    if measure not in reports.OUTCOME_MEASURES:
        raise reports.ReportError("Choose a measure.")
    return reports.outcome_observation(measure=measure, value=_number(form.get("value"), "Result"),
                                       when=_date(form.get("date"), now), **common)


@router.post("/tasks/{tid}/report")
@html_errors
async def report(request: Request, tid: str) -> Response:
    from service.sandbox.inbox import OWNER, _read

    form = await check_csrf(request)
    back = f"/sandbox/exercise-service/tasks/{tid}"
    async with fhir_client(request) as fhir:
        task = await _read(fhir, f"Task/{tid}")
        if not task or (task.get("owner") or {}).get("reference") != OWNER:
            raise PageError(404, "Referral not found", f"There is no Task {tid!r} for this service.",
                            "/sandbox/exercise-service/")
        if task.get("status") not in REPORTING:
            return RedirectResponse(back + "?" + urlencode({"error": "Results are recorded once the referral is "
                                                            "accepted and until it is completed."}), 303)
        try:
            obs = build_from_form(form, task, datetime.now(timezone.utc))
            assert_valid(obs)
        except reports.ReportError as exc:
            return RedirectResponse(back + "?" + urlencode({"error": str(exc)}), 303)
        except ValidationFailed as exc:
            return RedirectResponse(back + "?" + urlencode({"error": f"Not recorded: {exc}"}), 303)
        r = await fhir.post("Observation", json=obs, headers={"Content-Type": "application/fhir+json"})
    if r.status_code >= 300:
        raise PageError(502, "Not recorded", f"The FHIR server refused the result (HTTP {r.status_code}).", back)
    return RedirectResponse(back + "?" + urlencode({"notice": f"Recorded: {obs['code']['text']}."}), 303)


async def complete_with_report(fhir: httpx.AsyncClient, completed: dict[str, Any], version: str | None,
                               now: datetime) -> httpx.Response:
    """Write the programme report and the completed Task (which links it) in one transaction."""
    referral = completed["focus"]["reference"]
    values = reports.reported(await programme_observations(fhir, referral))
    start = (completed.get("executionPeriod") or {}).get("start") or completed.get("authoredOn") or now
    report_resource = reports.programme_report(
        patient_ref=completed["for"]["reference"], referral_ref=referral, performer=performer(), start=start,
        end=now, results=[v.reference for v in values if v.reference], conclusion=reports.summary_text(values),
        issued=now)
    assert_valid(report_resource)
    bundle = reports.completion_bundle({**completed, "id": completed.get("id")}, report_resource, version,
                                       str(fhir.base_url).rstrip("/"))
    return await fhir.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
