"""The transaction Bundle a signing would write, built offline for `onco-exercise prescribe`."""

from __future__ import annotations

import hashlib
from typing import Any

from service.clinical.model import PatientSnapshot, Prescription
from service.fhir.resources import build_prescription_resources, transaction_bundle
from service.fhir.signing import Signing
from service.fhir.validate import assert_valid

DEFAULT_SIGNER = "Practitioner/signing-clinician"


def _bundle_practitioner(data: Any) -> str | None:
    """The Bundle's Practitioner when there is exactly one: the clinician the data came with."""
    entries = data.get("entry") if isinstance(data, dict) else None
    ids = {
        e["resource"].get("id")
        for e in entries or []
        if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        and e["resource"].get("resourceType") == "Practitioner" and e["resource"].get("id")
    }
    return f"Practitioner/{ids.pop()}" if len(ids) == 1 else None


def preview_transaction(prescription: Prescription, snapshot: PatientSnapshot, data: Any,
                        signer: str | None = None) -> dict[str, Any]:
    """Validated transaction Bundle for this prescription; the signing key is derived from patient, signer
    and time so the same preview always carries the same business identifiers."""
    practitioner = signer or _bundle_practitioner(data) or DEFAULT_SIGNER
    seed = f"{prescription.patient_ref}|{practitioner}|{prescription.generated_at.isoformat()}|" \
           f"{prescription.ruleset_version}"
    signing = Signing(
        key=hashlib.sha256(seed.encode()).hexdigest()[:24],
        practitioner_ref=practitioner,
        signed_at=prescription.generated_at,
        ruleset_version=prescription.ruleset_version,
    )
    bundle = transaction_bundle(build_prescription_resources(prescription, snapshot, signing))
    assert_valid(bundle)
    return bundle
