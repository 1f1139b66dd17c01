"""A clinician signed in as a PractitionerRole whose role names no Practitioner: its Organization authors the
referral's notes (the other author the PA IG allows); when no author is known the sign answer says the notes
were left out (tests/smart/test_practitioner_role.py covers the Practitioner behind a role)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from service.fhir.signing import Signing
from service.smart.api import _unauthored
from service.smart.load import _requester_name


class _Ehr:
    def __init__(self, resource: dict[str, Any]) -> None:
        self.resource = resource

    async def read(self, rtype: str, rid: str) -> dict[str, Any]:
        return self.resource


ROLE = {"resourceType": "PractitionerRole", "id": "r1",
        "practitioner": {"reference": "Practitioner/p7", "display": "Dr Ada Example"},
        "organization": {"reference": "Organization/onc"}}


def test_the_role_s_organization_authors_when_it_names_no_practitioner() -> None:
    ask = {"requester": "PractitionerRole/r1"}
    assert asyncio.run(_requester_name(_Ehr(ROLE), ask)) == ("Dr Ada Example", "Practitioner/p7")
    no_one = {**ROLE, "practitioner": {"display": "Dr Ada Example"}}
    assert asyncio.run(_requester_name(_Ehr(no_one), ask)) == ("Dr Ada Example", "Organization/onc")
    swapped = {**ROLE, "practitioner": {"reference": "Organization/onc"},
               "organization": {"reference": "Practitioner/p7"}}
    assert asyncio.run(_requester_name(_Ehr(swapped), ask)) == (None, None)  # each only in its own place


def test_the_sign_answer_says_when_the_notes_were_left_out() -> None:
    at = datetime(2026, 3, 2, tzinfo=timezone.utc)
    assert _unauthored(Signing(key="k", practitioner_ref="Practitioner/p7", signed_at=at)) == []
    assert _unauthored(Signing(key="k", practitioner_ref="PractitionerRole/r1", signed_at=at,
                               note_author_ref="Organization/onc")) == []
    [said] = _unauthored(Signing(key="k", practitioner_ref="PractitionerRole/r1", signed_at=at))
    assert "without its notes" in said
