"""Capability-aware, idempotent write-back against real sekmet-fhir servers (EHR and care-coordination)."""

from __future__ import annotations

import asyncio
import copy
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from service import metrics
from service.fhir.capability import Capability, parse_capability
from service.fhir.client import FhirClient
from service.fhir.writeback import (NS_RESULT, WritebackError, choose_strategy, scopes_allow_create, write_back)
from service.storage import SQLiteStore
from tests.fhir_client import data
from tests.fhir_client.sekmet_server import running_sekmet

ID_SYSTEM = "https://fhir.onco-exercise.org/identifier/prescription"


@pytest.fixture(scope="module")
def cc_url() -> Iterator[str]:
    """A second sekmet server: the hospital's care-coordination FHIR server."""
    with running_sekmet() as base:
        yield base


@pytest.fixture
async def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "state.db")
    yield s
    await s.close()


@pytest.fixture
async def ehr(sekmet_url: str):
    async with FhirClient(sekmet_url) as c:
        yield c


@pytest.fixture
async def patient_ref(ehr: FhirClient) -> str:
    return f"Patient/{(await ehr.create(data.patient())).id}"


def key() -> str:
    return f"sig-{uuid.uuid4().hex[:12]}"


def doc_builder(k: str, patient_ref: str, seen: list[list[str]] | None = None):
    def build(related: list[str]) -> dict[str, Any]:
        if seen is not None:
            seen.append(list(related))
        return data.document_reference(f"{k}-doc", patient_ref, related)
    return build


async def count(client: FhirClient, rtype: str, query: str) -> int:
    name, _, value = query.partition("=")
    return len(await client.search_all(rtype, {name: value}))


async def counts_for(client: FhirClient, entries: list[dict]) -> dict[str, int]:
    return {e["resource"]["resourceType"]: await count(client, e["resource"]["resourceType"], e["ifNoneExist"])
            for e in entries}


def variant(cap_json: dict, *, no_create: tuple[str, ...] = (), conditional: bool = True,
            transaction: bool = True) -> Capability:
    """An EHR-like capability derived from sekmet's real statement (Epic: no CarePlan create, ...)."""
    doc = copy.deepcopy(cap_json)
    rest = doc["rest"][0]
    for r in rest["resource"]:
        if r["type"] in no_create:
            r["interaction"] = [i for i in r["interaction"] if i["code"] != "create"]
        if not conditional:
            r["conditionalCreate"] = False
    if not transaction:
        rest["interaction"] = [i for i in rest["interaction"] if i["code"] != "transaction"]
    return parse_capability(doc)


def metric(strategy: str, result: str) -> float:
    return metrics.REGISTRY.get_sample_value("onco_writeback_total", {"strategy": strategy, "result": result}) or 0.0


# -- choosing --------------------------------------------------------------------------------------------------


async def test_choose_strategy_from_capabilities_overrides_and_scopes(ehr: FhirClient) -> None:
    raw = await ehr.capability_statement()
    sekmet = parse_capability(raw)
    epic = variant(raw, no_create=("CarePlan", "Goal", "Task", "Provenance"), conditional=False, transaction=False)
    oracle = variant(raw, no_create=("CarePlan", "ServiceRequest", "Goal", "Task"), conditional=False)
    nothing = variant(raw, no_create=("CarePlan", "ServiceRequest", "Goal", "Task", "DocumentReference"))

    assert choose_strategy(sekmet, "auto", None) == "full"
    assert choose_strategy(epic, None, None) == "service-request-only"
    assert choose_strategy(oracle, "auto", None) == "document"
    assert choose_strategy(epic, "auto", None, care_coordination_available=True) == "care-coordination"
    assert choose_strategy(sekmet, "auto", None, care_coordination_available=True) == "full"
    assert choose_strategy(oracle, "service-request-only", None) == "service-request-only"  # override wins
    with pytest.raises(ValueError):
        choose_strategy(sekmet, "everything", None)
    with pytest.raises(WritebackError) as err:
        choose_strategy(nothing, "auto", None)
    assert err.value.status == 403 and "ServiceRequest" in err.value.message

    # scopes the EHR granted narrow it further
    with pytest.raises(WritebackError):
        choose_strategy(sekmet, "auto", "launch openid patient/*.read")
    assert choose_strategy(sekmet, "auto", "user/ServiceRequest.cu user/DocumentReference.c") == \
        "service-request-only"
    assert choose_strategy(sekmet, "auto", "patient/*.write") == "full"
    assert choose_strategy(sekmet, "auto", ["user/*.cruds"]) == "full"
    assert choose_strategy(sekmet, "auto", "user/DocumentReference.write") == "document"


def test_scope_parsing() -> None:
    assert scopes_allow_create("patient/ServiceRequest.write", "ServiceRequest")
    assert scopes_allow_create("user/ServiceRequest.crs", "ServiceRequest")
    assert scopes_allow_create("system/*.*", "Goal")
    assert not scopes_allow_create("patient/ServiceRequest.read", "ServiceRequest")
    assert not scopes_allow_create("patient/ServiceRequest.rs", "ServiceRequest")
    assert not scopes_allow_create("patient/Goal.c", "ServiceRequest")
    assert not scopes_allow_create("", "Goal")
    assert scopes_allow_create(None, "Goal")


# -- full --------------------------------------------------------------------------------------------------------


async def test_full_writes_one_transaction_and_reads_back(ehr: FhirClient, store: SQLiteStore,
                                                          patient_ref: str) -> None:
    k = key()
    entries = data.prescription_entries(k, patient_ref)
    before = metric("full", "ok")
    result = await write_back(ehr, entries, strategy="full", store=store, signing_key=k)
    assert result.strategy == "full" and not result.failed and not result.replayed
    assert [w["resourceType"] for w in result.written] == ["Goal", "ServiceRequest", "CarePlan", "Task", "Provenance"]
    assert all(w["status"] == "created" and w["server"] == ehr.base_url for w in result.written)
    assert metric("full", "ok") == before + 1

    refs = {w["resourceType"]: w["reference"] for w in result.written}
    careplan = await ehr.read("CarePlan", refs["CarePlan"].split("/")[1])
    assert careplan["goal"][0]["reference"] == refs["Goal"]
    assert careplan["activity"][0]["reference"]["reference"] == refs["ServiceRequest"]
    task = await ehr.read("Task", refs["Task"].split("/")[1])
    assert task["focus"]["reference"] == refs["ServiceRequest"]
    assert task["identifier"][0]["value"] == f"{k}-task"
    prov = await ehr.read("Provenance", refs["Provenance"].split("/")[1])
    assert {t["reference"] for t in prov["target"]} == {refs[t] for t in ("CarePlan", "ServiceRequest", "Goal", "Task")}


async def test_sign_twice_gives_one_set(ehr: FhirClient, store: SQLiteStore, patient_ref: str,
                                        tmp_path: Path) -> None:
    k = key()
    entries = data.prescription_entries(k, patient_ref)
    first = await write_back(ehr, entries, strategy="full", store=store, signing_key=k)
    sent = ehr.requests_sent
    again = await write_back(ehr, entries, strategy="full", store=store, signing_key=k)
    assert again.replayed and again.written == first.written
    assert ehr.requests_sent == sent  # answered from the stored result

    # even with the stored result lost (another replica, a wiped store), the server keeps one set
    other = SQLiteStore(tmp_path / "other.db")
    try:
        third = await write_back(ehr, data.prescription_entries(k, patient_ref), strategy="full", store=other,
                                 signing_key=k)
    finally:
        await other.close()
    assert [w["reference"] for w in third.written] == [w["reference"] for w in first.written]
    assert all(w["status"] == "existing" for w in third.written)
    assert set((await counts_for(ehr, entries)).values()) == {1}


async def test_ten_concurrent_identical_signings_write_one_set(ehr: FhirClient, store: SQLiteStore,
                                                               patient_ref: str) -> None:
    k = key()
    entries = data.prescription_entries(k, patient_ref)
    results = await asyncio.gather(*(write_back(ehr, copy.deepcopy(entries), strategy="full", store=store,
                                                signing_key=k) for _ in range(10)))
    refs = {tuple(w["reference"] for w in r.written) for r in results}
    assert len(refs) == 1
    assert sum(not r.replayed for r in results) == 1
    assert set((await counts_for(ehr, entries)).values()) == {1}


async def test_failed_transaction_leaves_nothing_and_can_be_retried(ehr: FhirClient, store: SQLiteStore,
                                                                    patient_ref: str) -> None:
    k = key()
    entries = data.prescription_entries(k, patient_ref)
    broken = copy.deepcopy(entries)
    broken[3]["resource"]["owner"] = {"reference": "Organization?identifier=urn:none|no-such-org"}
    with pytest.raises(WritebackError) as err:
        await write_back(ehr, broken, strategy="full", store=store, signing_key=k)
    assert "nothing was written" in err.value.message and err.value.status == 404
    assert err.value.outcome is not None
    assert set((await counts_for(ehr, entries)).values()) == {0}
    assert await store.get(NS_RESULT, k) is None

    fixed = await write_back(ehr, entries, strategy="full", store=store, signing_key=k)  # lock was released
    assert len(fixed.written) == 5


async def test_invalid_resource_is_never_sent(ehr: FhirClient, store: SQLiteStore, patient_ref: str) -> None:
    k = key()
    entries = data.prescription_entries(k, patient_ref)
    entries[0]["resource"]["lifecycleStatus"] = 42  # not a code
    await ehr.capabilities()
    sent = ehr.requests_sent
    with pytest.raises(WritebackError) as err:
        await write_back(ehr, entries, strategy="full", store=store, signing_key=k)
    assert err.value.status == 422 and "Goal" in err.value.message
    assert ehr.requests_sent == sent


# -- service-request-only / document ----------------------------------------------------------------------------


async def test_service_request_only_with_transaction(ehr: FhirClient, store: SQLiteStore, patient_ref: str) -> None:
    k = key()
    seen: list[list[str]] = []
    entries = data.prescription_entries(k, patient_ref)
    result = await write_back(ehr, entries, doc_builder(k, patient_ref, seen), strategy="service-request-only",
                              store=store, signing_key=k)
    assert [w["resourceType"] for w in result.written] == ["ServiceRequest", "DocumentReference"]
    assert seen == [[entries[1]["fullUrl"]]]  # the document links to the request in the same transaction
    assert any("CarePlan" in n and "Goal" in n for n in result.notes)
    sr_ref = result.references("ServiceRequest")[0]
    doc = await ehr.read("DocumentReference", result.references("DocumentReference")[0].split("/")[1])
    assert doc["context"]["related"][0]["reference"] == sr_ref
    sr = await ehr.read("ServiceRequest", sr_ref.split("/")[1])
    assert "supportingInfo" not in sr  # its link to the (unwritten) Goal was pruned
    counts = await counts_for(ehr, entries)
    assert counts == {"Goal": 0, "ServiceRequest": 1, "CarePlan": 0, "Task": 0, "Provenance": 0}


async def test_service_request_only_epic_like_no_transaction_no_conditional(
        ehr: FhirClient, store: SQLiteStore, patient_ref: str, tmp_path: Path) -> None:
    epic = variant(await ehr.capability_statement(), no_create=("CarePlan", "Goal", "Task", "Provenance"),
                   conditional=False, transaction=False)
    k = key()
    entries = data.prescription_entries(k, patient_ref)
    first = await write_back(ehr, entries, doc_builder(k, patient_ref), strategy="service-request-only",
                             store=store, signing_key=k, capability=epic)
    assert [w["status"] for w in first.written] == ["created", "created"]
    # a second signing with its stored result lost: search-by-identifier finds both, nothing is created
    other = SQLiteStore(tmp_path / "other.db")
    try:
        second = await write_back(ehr, data.prescription_entries(k, patient_ref), doc_builder(k, patient_ref),
                                  strategy="service-request-only", store=other, signing_key=k, capability=epic)
    finally:
        await other.close()
    assert [w["status"] for w in second.written] == ["existing", "existing"]
    assert [w["reference"] for w in second.written] == [w["reference"] for w in first.written]
    assert await count(ehr, "DocumentReference", f"identifier={ID_SYSTEM}|{k}-doc") == 1


async def test_sequential_concurrent_signings_guarded_by_store_lock(ehr: FhirClient, store: SQLiteStore,
                                                                    patient_ref: str) -> None:
    epic = variant(await ehr.capability_statement(), no_create=("CarePlan", "Goal", "Task", "Provenance"),
                   conditional=False, transaction=False)
    k = key()
    entries = data.prescription_entries(k, patient_ref)
    results = await asyncio.gather(*(write_back(ehr, copy.deepcopy(entries), doc_builder(k, patient_ref),
                                                strategy="service-request-only", store=store, signing_key=k,
                                                capability=epic) for _ in range(10)))
    assert len({tuple(r.references()) for r in results}) == 1
    assert await count(ehr, "ServiceRequest", f"identifier={ID_SYSTEM}|{k}-sr") == 1
    assert await count(ehr, "DocumentReference", f"identifier={ID_SYSTEM}|{k}-doc") == 1


async def test_document_strategy_writes_only_the_document(ehr: FhirClient, store: SQLiteStore,
                                                          patient_ref: str) -> None:
    oracle = variant(await ehr.capability_statement(), no_create=("CarePlan", "ServiceRequest", "Goal", "Task"),
                     conditional=False)
    k = key()
    entries = data.prescription_entries(k, patient_ref)
    result = await write_back(ehr, entries, doc_builder(k, patient_ref), strategy="document", store=store,
                              signing_key=k, capability=oracle)
    assert [w["resourceType"] for w in result.written] == ["DocumentReference"]
    doc = await ehr.read("DocumentReference", result.written[0]["id"])
    assert doc["identifier"][0]["value"] == f"{k}-doc"
    assert set((await counts_for(ehr, entries)).values()) == {0}


async def test_strategy_the_server_cannot_take_sends_nothing(ehr: FhirClient, store: SQLiteStore,
                                                             patient_ref: str) -> None:
    epic = variant(await ehr.capability_statement(), no_create=("CarePlan",), conditional=False)
    k = key()
    sent = ehr.requests_sent
    with pytest.raises(WritebackError) as err:
        await write_back(ehr, data.prescription_entries(k, patient_ref), strategy="full", store=store,
                         signing_key=k, capability=epic)
    assert "CarePlan" in err.value.message and ehr.requests_sent == sent


# -- care-coordination --------------------------------------------------------------------------------------------


async def test_care_coordination_full_set_elsewhere_and_link_in_ehr(ehr: FhirClient, store: SQLiteStore,
                                                                    patient_ref: str, cc_url: str) -> None:
    k = key()
    entries = data.prescription_entries(k, patient_ref)
    async with FhirClient(cc_url) as cc:
        result = await write_back(ehr, entries, doc_builder(k, patient_ref), strategy="care-coordination",
                                  store=store, signing_key=k, care_coordination=cc)
        assert not result.failed
        on_cc = [w for w in result.written if w["server"] == cc.base_url]
        on_ehr = [w for w in result.written if w["server"] == ehr.base_url]
        assert [w["resourceType"] for w in on_cc] == ["Goal", "ServiceRequest", "CarePlan", "Task", "Provenance"]
        assert [w["resourceType"] for w in on_ehr] == ["DocumentReference"]
        careplan = await cc.read("CarePlan", next(w["id"] for w in on_cc if w["resourceType"] == "CarePlan"))
        assert careplan["identifier"][0]["value"] == f"{k}-cp"
        assert set((await counts_for(cc, entries)).values()) == {1}
    assert set((await counts_for(ehr, entries)).values()) == {0}
    doc = await ehr.read("DocumentReference", on_ehr[0]["id"])
    related = {r["reference"] for r in doc["context"]["related"]}
    assert related == {w["url"] for w in on_cc if w["resourceType"] != "Provenance"}
    assert all(r.startswith(cc_url) for r in related)


async def test_care_coordination_reports_the_failed_ehr_step(ehr: FhirClient, store: SQLiteStore,
                                                             patient_ref: str, cc_url: str) -> None:
    no_docs = variant(await ehr.capability_statement(), no_create=("DocumentReference",))
    k = key()
    async with FhirClient(cc_url) as cc:
        result = await write_back(ehr, data.prescription_entries(k, patient_ref), doc_builder(k, patient_ref),
                                  strategy="care-coordination", store=store, signing_key=k, care_coordination=cc,
                                  capability=no_docs)
        assert len(result.written) == 5 and all(w["server"] == cc.base_url for w in result.written)
        assert len(result.failed) == 1 and "DocumentReference" in result.failed[0] and cc_url in result.failed[0]
        # a partial result is not kept: signing again retries the missing step without duplicating the set
        assert await store.get(NS_RESULT, k) is None
        again = await write_back(ehr, data.prescription_entries(k, patient_ref), doc_builder(k, patient_ref),
                                 strategy="care-coordination", store=store, signing_key=k, care_coordination=cc)
        assert not again.failed and [w["status"] for w in again.written[:5]] == ["existing"] * 5
        assert again.written[5]["resourceType"] == "DocumentReference"


async def test_care_coordination_needs_a_server(ehr: FhirClient, store: SQLiteStore) -> None:
    with pytest.raises(WritebackError):
        await write_back(ehr, [], strategy="care-coordination", store=store, signing_key=key())


async def test_nothing_to_write_is_an_error(ehr: FhirClient, store: SQLiteStore) -> None:
    with pytest.raises(WritebackError) as err:
        await write_back(ehr, [], strategy="full", store=store, signing_key=key())
    assert "nothing to write" in err.value.message
