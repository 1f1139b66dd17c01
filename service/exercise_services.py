"""The exercise services referrals go to, from configuration only (never from FHIR data: no SSRF).

One entry per service: its FHIR `reference` (ServiceRequest.performer, Task.owner), a display `name`, and an
optional `endpoint` where it receives notifications. A service with an endpoint is "full" (it has its own
system and is told about each referral); one without is "light" (it works from the Task inbox, polling the
EHR as the Physical Activity IG describes). ONCO_EXERCISE_EXERCISE_SERVICES lists them as JSON; when it is
empty the older single-service settings (…_EXERCISE_SERVICE_REF / …_NAME) make the one, default, entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_SERVICES = 50
MAX_NAME = 200
_REFERENCE = re.compile(r"^(Organization|Practitioner|PractitionerRole|HealthcareService)/[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class ExerciseService:
    """One configured exercise service."""

    reference: str
    name: str
    endpoint: str | None = None

    @property
    def kind(self) -> str:
        """`full` (notified at its endpoint) or `light` (works from the inbox)."""
        return "full" if self.endpoint else "light"

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "name": self.name, "kind": self.kind}


def _endpoint(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > 2000:
        raise ValueError(f"{where}: 'endpoint' must be an http(s) URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or parts.username:
        raise ValueError(f"{where}: 'endpoint' must be an http(s) URL with a host (no credentials, no fragment)")
    return value.strip()


def parse_services(raw: list[Any]) -> list[ExerciseService]:
    """A list of `{reference, name, endpoint?}` (the setting's JSON, parsed) -> services; ValueError with a
    readable message."""
    if len(raw) > MAX_SERVICES:
        raise ValueError(f"at most {MAX_SERVICES} exercise services")
    out: list[ExerciseService] = []
    for i, item in enumerate(raw):
        if isinstance(item, ExerciseService):
            out.append(item)
            continue
        where = f"exercise service #{i + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be an object")
        ref, name = item.get("reference"), item.get("name")
        if not isinstance(ref, str) or not _REFERENCE.match(ref):
            raise ValueError(f"{where}: 'reference' must be Organization/<id>, Practitioner/<id>, "
                             "PractitionerRole/<id> or HealthcareService/<id>")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise ValueError(f"{where}: 'name' must be a non-empty string of at most {MAX_NAME} characters")
        endpoint = item.get("endpoint")
        unknown = set(item) - {"reference", "name", "endpoint"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        out.append(ExerciseService(ref, name.strip(), _endpoint(endpoint, where) if endpoint else None))
    refs = [s.reference for s in out]
    if len(set(refs)) != len(refs):
        raise ValueError("each exercise service reference may be listed once")
    return out


def service_for(services: list[ExerciseService], reference: str | None) -> ExerciseService | None:
    """The configured service with this reference (the first, the default, when None); None if unknown."""
    if not services:
        return None
    if reference is None:
        return services[0]
    return next((s for s in services if s.reference == reference), None)
