"""Who signed what, when: the context every written resource carries (requester, Provenance, identifiers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Signing:
    """One clinician's signature on one prescription draft.

    `key` is the idempotency key of the signing (stable for the same draft and signer, e.g. a hash of the
    draft id): business identifiers are derived from it so that signing twice never writes twice.
    """

    key: str
    practitioner_ref: str
    signed_at: datetime
    practitioner_display: str | None = None
    exercise_service_ref: str = "Organization/exercise-oncology-service"
    exercise_service_name: str = "Exercise oncology service"
    encounter_ref: str | None = None
    ruleset_version: str | None = None
    # Who authors the written notes when the signer is not a Practitioner: the PA IG allows only a Practitioner
    # or an Organization as a note's author (e.g. the Practitioner behind a PractitionerRole signer).
    note_author_ref: str | None = None
