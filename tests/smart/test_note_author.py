"""A clinician signed in as a PractitionerRole: the app reads the role and lets its Practitioner (else its
Organization) author the referral's notes, the only authors the PA IG allows; when neither is known the sign
answer says the notes were left out."""

from __future__ import annotations

from typing import Any

import pytest

from service.fhir.signing import Signing
from service.smart.api import _unauthored
from service.smart.load import _requester


class _Ehr:
    def __init__(self, resource: Any) -> None:
        self.resource = resource

    async def read(self, rtype: str, rid: str) -> Any:
        if isinstance(self.resource, Exception):
            raise self.resource
        return self.resource


ROLE = {"resourceType": "PractitionerRole", "id": "r1",
        "practitioner": {"reference": "Practitioner/p7", "display": "Dr Ada Example"},
        "organization": {"reference": "Organization/onc"}}


@pytest.mark.parametrize("role,expected", [
    (ROLE, ("Dr Ada Example", "Practitioner/p7")),
    ({**ROLE, "practitioner": {"display": "Dr Ada Example"}}, ("Dr Ada Example", "Organization/onc")),
    ({"resourceType": "PractitionerRole", "id": "r1"}, (None, None)),
    (RuntimeError("403"), (None, None)),
])
async def test_the_role_s_practitioner_or_organization_authors_the_notes(role, expected):
    assert await _requester(_Ehr(role), {"requester": "PractitionerRole/r1"}) == expected


async def test_a_practitioner_signs_their_own_notes():
    doc = {"resourceType": "Practitioner", "id": "p7", "name": [{"prefix": ["Dr"], "given": ["Ada"],
                                                                  "family": "Example"}]}
    assert await _requester(_Ehr(doc), {"requester": "Practitioner/p7"}) == ("Dr Ada Example", None)


def test_the_sign_answer_says_when_the_notes_were_left_out():
    from datetime import datetime, timezone

    at = datetime(2026, 3, 2, tzinfo=timezone.utc)
    assert _unauthored(Signing(key="k", practitioner_ref="Practitioner/p7", signed_at=at)) == []
    assert _unauthored(Signing(key="k", practitioner_ref="PractitionerRole/r1", signed_at=at,
                               note_author_ref="Practitioner/p7")) == []
    [said] = _unauthored(Signing(key="k", practitioner_ref="PractitionerRole/r1", signed_at=at))
    assert "without its notes" in said
