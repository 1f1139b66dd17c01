"""The discovery document: our two services, their prefetch templates and what the fallback path needs.

The prefetch templates come from `service.fhir.queries` (one definition shared with the fallback reads and
the SMART app), so what an EHR prefetches is exactly what we would otherwise read ourselves. The document
is built once and served as bytes: discovery is polled by EHRs and should cost nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from service import __version__

ENCOUNTER_START_ID = "onco-exercise-encounter-start"
PATIENT_VIEW_ID = "onco-exercise-patient-view"


@dataclass(frozen=True)
class ServiceDef:
    id: str
    hook: str
    title: str
    description: str


SERVICES: dict[str, ServiceDef] = {
    s.id: s
    for s in (
        ServiceDef(
            ENCOUNTER_START_ID, "encounter-start", "Exercise referral for people with cancer",
            "At the start of an oncology encounter, suggests a safe, personalised exercise referral built from the "
            "patient's own data (setting, precautions, missing assessments), warns when exercise is unsafe today "
            "(fever, severe cytopenias) and shows the progress of an existing referral.",
        ),
        ServiceDef(
            PATIENT_VIEW_ID, "patient-view", "Exercise referral for people with cancer (chart)",
            "When an oncology patient's chart is opened, suggests a safe, personalised exercise referral, warns "
            "when exercise is unsafe today and shows the progress of an existing referral. Stays quiet when the "
            "same card was shown recently and nothing changed.",
        ),
    )
}


@lru_cache(maxsize=1)
def prefetch_templates() -> dict[str, str]:
    """{key: template}; computed once (terminology lookups) and shared with the hook handler."""
    from service.fhir.queries import prefetch_templates as templates

    return dict(templates())


@lru_cache(maxsize=1)
def required_keys() -> frozenset[str]:
    """Prefetch keys without which no card can be decided: the Patient and the Conditions (eligibility)."""
    from service.fhir.queries import patient_queries

    return frozenset(q.key for q in patient_queries() if q.required or q.resource_type == "Condition")


def _read_scopes(templates: dict[str, str]) -> list[str]:
    types = sorted({t.split("?", 1)[0].split("/", 1)[0] for t in templates.values()})
    return [f"patient/{t}.rs" for t in types]


def discovery_document(templates: dict[str, str] | None = None) -> dict[str, object]:
    templates = prefetch_templates() if templates is None else templates
    scopes = " ".join(_read_scopes(templates))
    usage = (f"Send prefetch for every key. Without it the service reads the missing data from fhirServer "
             f"(allowlisted servers only) and needs fhirAuthorization with the SMART scopes: {scopes} "
             f"(v1 equivalents: patient/<Type>.read). The 'Review and sign' link is a SMART app launch.")
    return {
        "services": [
            {
                "hook": s.hook,
                "title": s.title,
                "description": s.description,
                "id": s.id,
                "prefetch": templates,
                "usageRequirements": usage,
                "version": __version__,
            }
            for s in SERVICES.values()
        ]
    }


@lru_cache(maxsize=1)
def discovery_bytes() -> bytes:
    return json.dumps(discovery_document(), separators=(",", ":")).encode()
