"""Search-then-create write-back under a SMART `patient/` token: the lookup must name the patient, or a server
that enforces patient compartments (the sandbox does, like real EHRs) refuses it with 403."""

from __future__ import annotations

import uuid
from pathlib import Path

from service.fhir.client import FhirClient
from service.fhir.writeback import write_back
from service.storage import SQLiteStore
from tests.fhir_client import data
from tests.fhir_client.test_writeback import doc_builder, variant


async def test_lookup_by_identifier_names_the_patient(sandbox_url: str, tmp_path: Path) -> None:
    from service.sandbox.auth_server import mint_access_token

    token = mint_access_token("patient/*.cruds", patient="onc-01", subject="Practitioner/sandbox-clinician")

    async def bearer() -> str:
        return token

    base = f"{sandbox_url}/sandbox/fhir"
    async with FhirClient(base, token_provider=bearer) as ehr:
        epic = variant(await ehr.capability_statement(), no_create=("CarePlan", "Goal", "Task", "Provenance"),
                       conditional=False, transaction=False)
        k = f"sig-{uuid.uuid4().hex[:12]}"
        patient_ref = "Patient/onc-01"
        stores = [SQLiteStore(tmp_path / "a.db"), SQLiteStore(tmp_path / "b.db")]
        try:
            first = await write_back(ehr, data.prescription_entries(k, patient_ref), doc_builder(k, patient_ref),
                                     strategy="service-request-only", store=stores[0], signing_key=k,
                                     capability=epic)
            # a second signing whose stored result is lost must find both by identifier (within the patient)
            second = await write_back(ehr, data.prescription_entries(k, patient_ref), doc_builder(k, patient_ref),
                                      strategy="service-request-only", store=stores[1], signing_key=k,
                                      capability=epic)
        finally:
            for s in stores:
                await s.close()
    assert [w["status"] for w in first.written] == ["created", "created"]
    assert [w["status"] for w in second.written] == ["existing", "existing"]
    assert [w["reference"] for w in second.written] == [w["reference"] for w in first.written]
