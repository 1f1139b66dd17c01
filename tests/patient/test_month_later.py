"""The sandbox's "one month later": four weeks of companion logs that follow the signed plan, written as the
companion writes them (they validate), and the next follow-up card says how it is going and proposes the next
step; the generator's pattern (missed and shorter sessions in week 1, effort and tiredness easing) is checked."""

from __future__ import annotations

import re
from datetime import date

from service.fhir.validate import validate_resource
from service.sandbox.month_later import synthetic_month
from tests.notify.conftest import sign
from tests.notify.test_report_back import follow_up_card
from tests.smart.conftest import Sandbox, fhir_reader


def test_the_pattern_is_realistic_and_deterministic() -> None:
    month = synthetic_month("onc-12", date(2026, 3, 30), sessions_per_week=3, minutes=30)
    again = synthetic_month("onc-12", date(2026, 3, 30), sessions_per_week=3, minutes=30)
    assert month == again
    sessions = [r.session for r in month if r.session]
    assert len(sessions) == 11 and min(s.minutes for s in sessions) == 20  # one missed, one shorter
    fatigue = [r.symptoms.fatigue for r in month if r.symptoms]
    assert fatigue[0] > fatigue[-1] and not any(r.warnings.chest_pain for r in month)


def test_one_month_later_shows_the_adapted_card(sandbox: Sandbox) -> None:
    patient = "onc-12"
    with sandbox.browser() as clin:
        assert sign(clin, patient, service=None)["status"] == "sent"
        chart = clin.get(f"/sandbox/patients/{patient}")
        csrf = re.search(r'name="csrf" value="([^"]+)"', chart.text).group(1)
        r = clin.post(f"/sandbox/patients/{patient}/month-later", data={"csrf": csrf})
        assert r.status_code == 303 and "notice=" in r.headers["location"], r.text[:300]
        assert clin.post(f"/sandbox/patients/{patient}/month-later", data={"csrf": "forged"}).status_code == 403
        # a patient without a signed plan: a readable refusal, nothing written
        r = clin.post("/sandbox/patients/onc-13/month-later", data={"csrf": csrf})
        assert r.status_code == 409 and "Sign an exercise referral" in r.text
    with fhir_reader(sandbox) as fhir:
        obs = fhir.get("/Observation", params={"patient": patient, "code": "http://loinc.org|55411-3",
                                               "_count": "100"}).json()["entry"]
        assert len(obs) == 11 and all(validate_resource(e["resource"]) == [] or all(
            i.severity != "error" for i in validate_resource(e["resource"])) for e in obs)
    card = follow_up_card(sandbox, patient)
    # (the cohort's own activity observations for this patient count too, so the weeks at goal are not asserted)
    assert re.search(r"\*\*At home\*\*: [34] of 4 weeks at the planned minutes, effort easy, fatigue down 2 points",
                     card["detail"]), card["detail"]
    assert "**Proposed next step**: progress to" in card["detail"] and "ADAPT-PROGRESS" in card["detail"]
    assert re.search(r"\*\*Exercise vital sign\*\*: 1\d\d min/week on", card["detail"]), card["detail"]

