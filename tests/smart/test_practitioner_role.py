"""A PractitionerRole signer: the app reads the role for the name and the Practitioner behind it, who authors
the referral's notes (the PA IG allows only a Practitioner or Organization as a note author)."""

from __future__ import annotations

import asyncio
from typing import Any

from service.fhir.resources import build_prescription_resources
from service.smart.load import _requester_name
from tests.fhir_resources import factories as F


class _Ehr:
    """Answers reads from a dict, as a FHIR server would for the resources it holds."""

    def __init__(self, resources: dict[str, dict[str, Any]]) -> None:
        self.resources = resources

    async def read(self, rtype: str, rid: str) -> dict[str, Any]:
        return self.resources[f"{rtype}/{rid}"]


ROLE = {"resourceType": "PractitionerRole", "id": "r9",
        "practitioner": {"reference": "Practitioner/dr-9", "display": "Dr Nine"}}


def test_the_practitioner_behind_a_role_authors_the_notes() -> None:
    name, behind = asyncio.run(_requester_name(_Ehr({"PractitionerRole/r9": ROLE}),
                                               {"requester": "PractitionerRole/r9"}))
    assert (name, behind) == ("Dr Nine", "Practitioner/dr-9")
    signing = F.signing(practitioner_ref="PractitionerRole/r9", note_author_ref=behind)
    p = F.prescription(notes=("Clinician note: prefers mornings",))
    referral = next(e["resource"] for e in build_prescription_resources(p, F.snapshot(), signing)
                    if e["resource"]["resourceType"] == "ServiceRequest" and "390893007" in str(e["resource"]["code"]))
    assert referral["requester"]["reference"] == "PractitionerRole/r9"
    assert referral["note"] and all(n["authorReference"]["reference"] == "Practitioner/dr-9" for n in referral["note"])


def test_a_practitioner_signer_or_an_unreadable_role_names_no_one_else() -> None:
    doc = {"resourceType": "Practitioner", "id": "p1", "name": [{"text": "Dr One"}]}
    assert asyncio.run(_requester_name(_Ehr({"Practitioner/p1": doc}), {"requester": "Practitioner/p1"})) == \
        ("Dr One", None)
    assert asyncio.run(_requester_name(_Ehr({}), {"requester": "PractitionerRole/gone"})) == (None, None)
    odd = dict(ROLE, practitioner={"reference": "Organization/o1"})
    assert asyncio.run(_requester_name(_Ehr({"PractitionerRole/r9": odd}), {"requester": "PractitionerRole/r9"}))[1] \
        is None
