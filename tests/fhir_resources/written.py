"""Everything onco-exercise writes, for every patient of the sandbox cohort: the corpus the validators check.

Each cohort Bundle goes through the real pipeline: snapshot -> prescribe -> what signing writes, as
- `prescribe`: the transaction Bundle `onco-exercise prescribe` prints (service.fhir.preview, as the CLI);
- `full`, `service-request-only`, `document`: the write-back builders of every strategy (with an encounter and
  the signer's name, which the CLI leaves out);
- `revision`: signing again over what the first signing stored (service.fhir.revision): the new set plus the
  updates that retire the old referral (revoked ServiceRequests, cancelled Tasks with a reason, cancelled
  Goals, the CarePlan updated in place); for a deferred plan the second signing carries the clinician's recorded
  clearance, so the clearance Task is completed with who, when and what was reviewed;
- `cds-draft`: the CDS card's draft referral for a Practitioner, a PractitionerRole and a Patient user.
Resources are taken as a server stores them (urn:uuid references rewritten to `Type/id`). Cached per session.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from service.cds_hooks.cards import CardContext, decide
from service.clinical.clearance import record_clearance
from service.clinical.prescribe import prescribe
from service.clinical.snapshot import build_snapshot
from service.fhir import resources as R
from service.fhir.open_referrals import open_referrals
from service.fhir.preview import preview_transaction
from service.fhir.revision import revise
from service.fhir.signing import Signing
from service.sandbox import cohort

SIGNER = "Practitioner/sandbox-clinician"


@dataclass(frozen=True)
class Written:
    """One written resource: where it came from (patient, strategy) and the resource itself."""

    patient: str
    origin: str  # "prescribe", "full", "service-request-only", "document", "revision", "cds-draft"
    resource: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.patient}/{self.origin}/{self.resource['resourceType']}"


@lru_cache(maxsize=1)
def prescribe_bundles() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(patient, the transaction Bundle `onco-exercise prescribe` prints) for every eligible cohort patient."""
    out = []
    for pid, bundle, snap, p in _cohort():
        out.append((pid, preview_transaction(p, snap, bundle)))
    return tuple(out)


@lru_cache(maxsize=1)
def _cohort() -> tuple[tuple[str, dict[str, Any], Any, Any], ...]:
    """(patient id, the cohort Bundle, its snapshot, its prescription) for every eligible cohort patient."""
    out = []
    for pid in (p["id"] for p in cohort.load_index()):
        bundle = json.loads((cohort.COHORT_DIR / f"{pid}.json").read_text(encoding="utf-8"))
        snap = build_snapshot(bundle, cohort.ANCHOR)
        p = prescribe(snap, cohort.ANCHOR)
        if p.eligible:
            out.append((pid, bundle, snap, p))
    return tuple(out)


@lru_cache(maxsize=1)
def cohort_written() -> tuple[Written, ...]:
    """Every resource written for the cohort (eligible patients; deferred plans included)."""
    out: list[Written] = []
    for pid, tx in prescribe_bundles():
        out += [Written(pid, "prescribe", e["resource"]) for e in _server_references(tx["entry"])]
    for pid, bundle, snap, p in _cohort():
        signing = Signing(key=f"oracle-{pid}", practitioner_ref=SIGNER, signed_at=cohort.ANCHOR,
                          practitioner_display="Dr Sandbox Clinician", encounter_ref=f"Encounter/enc-{pid}",
                          ruleset_version=p.ruleset_version)
        full = R.build_prescription_resources(p, snap, signing)
        out += [Written(pid, "full", e["resource"]) for e in _server_references(full)]
        sro = R.build_service_request_only(p, snap, signing)
        out += [Written(pid, "service-request-only", e["resource"]) for e in _server_references(sro)]
        doc = R.build_document_reference(p, snap, signing, [e["fullUrl"] for e in full])
        out += [Written(pid, "document", e["resource"]) for e in _server_references(full + [doc])[-1:]]
        out += [Written(pid, "revision", r) for r in _signed_again(pid, snap, p, full)]
        for user in (SIGNER, "PractitionerRole/sandbox-oncologist", f"Patient/{pid}"):
            out += [Written(pid, "cds-draft", r) for r in _draft_referrals(p, snap, user)]
    return tuple(out)


def _signed_again(pid: str, snap: Any, p: Any, first: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a second signing a day later writes over the first one as stored (new set + updates); a deferred
    plan is signed again under the clinician's recorded clearance of every item it asked to resolve."""
    stored = [{**e["resource"], "id": e["fullUrl"].rsplit("/", 1)[1], "meta": {**e["resource"]["meta"],
                                                                             "versionId": "1"}}
              for e in _server_references(first)]
    later = cohort.ANCHOR + timedelta(days=1)
    if p.setting == "defer":
        clearance = record_clearance(p, by=SIGNER, at=later, reviewed=p.to_resolve, by_display="Dr Sandbox Clinician",
                                     note="Reviewed with the repeat results: fit to start supervised exercise.")
        p = prescribe(snap, cohort.ANCHOR, clearance=clearance)
    signing = Signing(key=f"oracle-{pid}-2", practitioner_ref=SIGNER, signed_at=later,
                      practitioner_display="Dr Sandbox Clinician", ruleset_version=p.ruleset_version)
    entries = revise(R.build_prescription_resources(p, snap, signing), open_referrals(stored),
                     {f"{r['resourceType']}/{r['id']}": r for r in stored},
                     signed_at=R.instant(later), author={"reference": SIGNER, "display": "Dr Sandbox Clinician"})
    assert any(e.get("method") == "PUT" for e in entries), f"{pid}: the second signing retired nothing"
    return [e["resource"] for e in _server_references(entries)]


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
    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['fullUrl'].rsplit(':', 1)[1]}" for e in entries
           if e["fullUrl"].startswith("urn:uuid:")}
    text = json.dumps([copy.deepcopy(e) for e in entries])
    for urn, ref in ids.items():
        text = text.replace(f'"{urn}"', f'"{ref}"')
    return json.loads(text)
