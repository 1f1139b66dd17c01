"""profiles/examples/: one example per profile, generated from the builders (test factories), references
made relative (`Type/example-<role>`), so the examples always show what we really write.

    python -m tests.fhir_resources.examples     # rewrite profiles/examples/
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from service.clinical.model import Clearance
from service.fhir import resources as R
from service.paths import PROFILES_DIR
from tests.fhir_resources import factories as F

ROLES = {"careplan": "careplan", "goal-aerobic": "goal-aerobic", "rx-aerobic": "rx-aerobic",
         "referral": "referral", "task": "task", "clearance": "clearance", "provenance": "provenance",
         "document": "document"}
# The example plan was released after a clearance, so the clearance Task has an example too.
CLEARANCE = Clearance(by="Practitioner/sandbox-clinician", by_display="Dr Ada Example",
                      at=datetime(2026, 3, 2, 9, 15, tzinfo=timezone.utc), rules=("HEME-PLT-20",),
                      reviewed=("Repeat the platelet count; exercise may start once platelets are at least "
                                "20 x10^9/L.",),
                      note="Repeat platelet count 42 x10^9/L on 2 March, no bleeding: cleared for supervised exercise.")


def examples() -> dict[Path, dict[str, Any]]:
    """File -> example resource."""
    p, s, signing = F.prescription(setting="supervised", clearance=CLEARANCE), F.snapshot(), F.signing()
    entries = R.build_prescription_resources(p, s, signing)
    entries.append(R.build_document_reference(p, s, signing, [e["fullUrl"] for e in entries[:1]]))
    prefix = f"{signing.key}-"
    roles = {e["fullUrl"]: (e["resource"]["resourceType"], e["ifNoneExist"].split("|", 1)[1][len(prefix):])
             for e in entries}
    text = json.dumps([e["resource"] for e in entries])
    for urn, (rtype, role) in roles.items():
        text = text.replace(f'"{urn}"', f'"{rtype}/example-{role}"')
    out: dict[Path, dict[str, Any]] = {}
    for (rtype, role), resource in zip(roles.values(), json.loads(text)):
        if role in ROLES:
            out[PROFILES_DIR / "examples" / f"{rtype}-example-{role}.json"] = \
                {"resourceType": rtype, "id": f"example-{role}", **{k: v for k, v in resource.items()
                                                                      if k != "resourceType"}}
    return {**out, **report_examples()}


def report_examples() -> dict[Path, dict[str, Any]]:
    """What an exercise service reports back (service.fhir.reports): a 6-minute walk and the programme report."""
    from service.fhir import reports

    start, end = datetime(2026, 3, 2, 9, tzinfo=timezone.utc), datetime(2026, 5, 25, 9, tzinfo=timezone.utc)
    who = {"patient_ref": "Patient/example-patient", "referral_ref": "ServiceRequest/example-referral",
           "performer": {"reference": "Practitioner/exercise-physiologist", "display": "Jordan Blake"}}
    walk = reports.outcome_observation(measure="six-minute-walk", value=452, when=end, **who)
    report = reports.programme_report(**who, start=start, end=end, issued=end,
                                      results=["Observation/example-six-minute-walk", "Observation/example-attendance"],
                                      conclusion="Attended 10 of 12 sessions. 6-minute walk distance: 380 -> 452 m.")
    folder = PROFILES_DIR / "examples"
    return {folder / "Observation-example-six-minute-walk.json": {"resourceType": "Observation",
                                                                  "id": "example-six-minute-walk", **walk},
            folder / "DiagnosticReport-example-programme-report.json": {"resourceType": "DiagnosticReport",
                                                                        "id": "example-programme-report", **report}}


if __name__ == "__main__":
    for path, resource in examples().items():
        path.write_text(json.dumps(resource, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")
