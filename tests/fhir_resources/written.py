"""Everything onco-exercise writes, for every patient of the sandbox cohort: the corpus the validators check.

Each cohort Bundle goes through the real pipeline (snapshot -> prescribe -> the write-back builders of every
strategy, and the CDS card's draft referral, with and without a clinician user). Cached per test session.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from service.cds_hooks.cards import CardContext, decide
from service.clinical.prescribe import prescribe
from service.clinical.snapshot import build_snapshot
from service.fhir import resources as R
from service.fhir.signing import Signing
from service.sandbox import cohort

SIGNER = "Practitioner/sandbox-clinician"


@dataclass(frozen=True)
class Written:
    """One written resource: where it came from (patient, strategy) and the resource itself."""

    patient: str
    origin: str  # "full", "service-request-only", "document", "cds-draft"
    resource: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.patient}/{self.origin}/{self.resource['resourceType']}"


@lru_cache(maxsize=1)
def cohort_written() -> tuple[Written, ...]:
    """Every resource the builders write for the cohort (eligible patients; deferred plans included)."""
    out: list[Written] = []
    for pid in (p["id"] for p in cohort.load_index()):
        bundle = json.loads((cohort.COHORT_DIR / f"{pid}.json").read_text(encoding="utf-8"))
        snap = build_snapshot(bundle, cohort.ANCHOR)
        p = prescribe(snap, cohort.ANCHOR)
        if not p.eligible:
            continue
        signing = Signing(key=f"oracle-{pid}", practitioner_ref=SIGNER, signed_at=cohort.ANCHOR,
                          practitioner_display="Dr Sandbox Clinician", encounter_ref=f"Encounter/enc-{pid}",
                          ruleset_version=p.ruleset_version)
        full = R.build_prescription_resources(p, snap, signing)
        out += [Written(pid, "full", e["resource"]) for e in _server_references(full)]
        sro = R.build_service_request_only(p, snap, signing)
        out += [Written(pid, "service-request-only", e["resource"]) for e in _server_references(sro)]
        doc = R.build_document_reference(p, snap, signing, [e["fullUrl"] for e in full])
        out += [Written(pid, "document", e["resource"]) for e in _server_references(full + [doc])[-1:]]
        for user in (SIGNER, "PractitionerRole/sandbox-oncologist", f"Patient/{pid}"):
            out += [Written(pid, "cds-draft", r) for r in _draft_referrals(p, snap, user)]
    return tuple(out)


def _draft_referrals(p: Any, snap: Any, user: str) -> list[dict[str, Any]]:
    """The draft ServiceRequests a CDS card suggests to this user (through the real card builder)."""
    ctx = CardContext(service_id="onco-exercise-encounter-start", public_url="http://127.0.0.1:8000",
                      exercise_service_ref=cohort.EXERCISE_SERVICE, user_ref=user, hook_instance="oracle")
    card = decide(p, snap, ctx).card or {}
    return [a["resource"] for s in card.get("suggestions", []) for a in s.get("actions", [])
            if a.get("type") == "create"]


def _server_references(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries as a server stores them: each urn:uuid fullUrl becomes `Type/<uuid>` in every reference.

    Independent validators cannot type-check a bare urn:uuid; after a transaction a server has rewritten them.
    """
    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['fullUrl'].rsplit(':', 1)[1]}" for e in entries}
    text = json.dumps([copy.deepcopy(e) for e in entries])
    for urn, ref in ids.items():
        text = text.replace(f'"{urn}"', f'"{ref}"')
    return json.loads(text)
