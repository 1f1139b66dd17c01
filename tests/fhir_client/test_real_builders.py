"""write_back with the real resource builders and validator (service.fhir.resources / validate) against sekmet."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from service.fhir.client import FhirClient
from service.fhir.writeback import write_back
from service.storage import SQLiteStore

resources = pytest.importorskip("service.fhir.resources")
factories = pytest.importorskip("tests.fhir_resources.factories")


@pytest.fixture
async def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "state.db")
    yield s
    await s.close()


def signing():
    return factories.signing(key=f"sig-{uuid.uuid4().hex[:10]}")


async def test_full_set_from_the_builders(sekmet_url: str, store: SQLiteStore) -> None:
    sig, p, snap = signing(), factories.prescription(), factories.snapshot()
    entries = resources.build_prescription_resources(p, snap, sig)
    async with FhirClient(sekmet_url) as ehr:
        first = await write_back(ehr, entries, strategy="full", store=store, signing_key=sig.key)
        types = [w["resourceType"] for w in first.written]
        assert types == [e["resource"]["resourceType"] for e in entries]
        assert {"CarePlan", "Goal", "ServiceRequest", "Task", "Provenance"} <= set(types)
        assert all(w["status"] == "created" for w in first.written)
        task = await ehr.read("Task", first.references("Task")[0].split("/")[1])
        assert task["focus"]["reference"] in first.references("ServiceRequest")
        # the same signing, stored result lost: conditional creates find every resource, Provenance included
        other = SQLiteStore(":memory:")
        again = await write_back(ehr, resources.build_prescription_resources(p, snap, sig), strategy="full",
                                 store=other, signing_key=sig.key)
        await other.close()
        assert [w["reference"] for w in again.written] == [w["reference"] for w in first.written]
        assert {w["status"] for w in again.written} == {"existing"}


async def test_service_request_only_from_the_builder(sekmet_url: str, store: SQLiteStore) -> None:
    sig, p, snap = signing(), factories.prescription(), factories.snapshot()
    entries = resources.build_service_request_only(p, snap, sig)
    async with FhirClient(sekmet_url) as ehr:
        result = await write_back(ehr, entries, strategy="service-request-only", store=store, signing_key=sig.key)
        assert {w["resourceType"] for w in result.written} == {"ServiceRequest", "DocumentReference"}
        doc = await ehr.read("DocumentReference", result.references("DocumentReference")[0].split("/")[1])
        assert {r["reference"] for r in doc["context"]["related"]} == set(result.references("ServiceRequest"))


async def test_care_coordination_with_document_builder(sekmet_url: str, store: SQLiteStore) -> None:
    from tests.fhir_client.sekmet_server import running_sekmet

    sig, p, snap = signing(), factories.prescription(), factories.snapshot()
    with running_sekmet() as cc_base:
        async with FhirClient(sekmet_url) as ehr, FhirClient(cc_base) as cc:
            result = await write_back(
                ehr, resources.build_prescription_resources(p, snap, sig),
                lambda refs: resources.build_document_reference(p, snap, sig, refs),
                strategy="care-coordination", store=store, signing_key=sig.key, care_coordination=cc)
            assert not result.failed
            doc_ref = result.references("DocumentReference")[0]
            doc = await ehr.read("DocumentReference", doc_ref.split("/")[1])
            assert all(r["reference"].startswith(cc.base_url) for r in doc["context"]["related"])
