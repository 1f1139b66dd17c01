"""The sandbox's "one month later" control: four weeks of a patient's companion logs, written as the companion
writes them, so the adapted follow-up card can be seen in a minute.

The pattern is synthetic and deterministic per patient: sessions on the plan's days at the planned minutes, with
the things real home programmes show: a missed session in week 1, one shorter session when tired, effort
settling from "moderate" to "easy" and tiredness easing (6 -> 4 of 10), steps rising from about 4,000 to 6,000 a
day, and the weekly check-in's exercise vital sign (days x minutes) as logged. Adherence is about 90% of
sessions (home-based programmes supported by an app report high adherence; seed 001, "digital monitoring"). It
never writes a red flag: the alert path is shown by the companion itself.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import RedirectResponse, Response

from service.clinical.selfreport import Recall, Report, Session, Symptoms, effort_score
from service.fhir.selfreport import report_bundle
from service.patient.plan import plan_view, weekly_minutes
from service.sandbox.ehr import FHIR_ID, PageError, check_csrf, fhir_client, html_errors

router = APIRouter(prefix="/sandbox", include_in_schema=False)
WEEKS = 4
SESSION_DAYS = (0, 2, 4, 5, 6)  # Monday, Wednesday, Friday, then the weekend for plans with more sessions


def synthetic_month(patient: str, today: date, *, sessions_per_week: int, minutes: int) -> list[Report]:
    """Four weeks of reports ending today (oldest first), seeded by the patient id."""
    rng = random.Random(f"{patient}|{today.isoformat()}")
    start = today - timedelta(days=7 * WEEKS - 1)
    out: list[Report] = []
    for week in range(WEEKS):
        monday = start + timedelta(days=7 * week)
        for i, offset in enumerate(SESSION_DAYS[:max(1, min(sessions_per_week, len(SESSION_DAYS)))]):
            day = monday + timedelta(days=offset)
            if day > today or (week == 0 and i == 1):  # the first week: one session missed...
                continue
            tired = week == 0 and i == 0  # and one shorter session when tired
            effort = "moderate" if week < 2 or tired else "easy"
            mins = max(5, minutes - 10) if tired else minutes
            out.append(Report(day, Session(day, "Walking" if i % 2 == 0 else "Cycling", mins, effort_score(effort)),
                              steps=4000 + 700 * week + rng.randrange(0, 500)))
        check = min(monday + timedelta(days=6), today)
        done = [r.session for r in out if r.session and monday <= r.day <= check]
        recall = Recall(len(done), round(sum(x.minutes for x in done) / len(done))) if done else Recall(0, 0)
        out.append(Report(check, symptoms=Symptoms(check, fatigue=6 - (2 * week) // 3, pain=2, breathlessness=1),
                          recall=recall))
    return out


@router.post("/patients/{pid}/month-later")
@html_errors
async def month_later(request: Request, pid: str = PathParam(pattern=FHIR_ID)) -> Response:
    await check_csrf(request)
    today = datetime.now(timezone.utc).date()
    async with fhir_client(request) as fhir:
        found: list[dict[str, Any]] = []
        for rtype in ("ServiceRequest", "Task", "Goal"):
            r = await fhir.get(rtype, params={"patient": pid, "_count": "100"})
            found += [e["resource"] for e in (r.json().get("entry") or [])] if r.status_code == 200 else []
        view = plan_view(found, today)
        if view["state"] in ("none", "pending-clearance", "draft"):
            raise PageError(409, "No plan to follow yet", "Sign an exercise referral for this patient first (open "
                            "the card's app and press Sign & send); then a month of logs can follow it.",
                            f"/sandbox/patients/{pid}")
        sessions = max((int(w.get("sessions") or 0) for w in view["thisWeek"]), default=3) or 3
        minutes = -(-weekly_minutes(view) // sessions) if weekly_minutes(view) else 20  # whole minutes, at the plan
        now = datetime.now(timezone.utc)
        for n, report in enumerate(synthetic_month(pid, today, sessions_per_week=sessions, minutes=max(10, minutes))):
            bundle = report_bundle(report, (), entry_id=f"month-later-{pid}-{today.isoformat()}-{n}",
                                   patient_ref=f"Patient/{pid}", now=now)
            r = await fhir.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
            if r.status_code >= 400:
                raise PageError(502, "The logs could not be written", f"The sandbox FHIR server answered "
                                f"{r.status_code}.", f"/sandbox/patients/{pid}")
    return RedirectResponse(f"/sandbox/patients/{pid}?encounter=enc-{pid}&notice=" + "A+month+of+companion+logs+"
                            "was+added%3A+the+follow-up+card+now+shows+how+it+is+going.", 303)
