"""FhirClient against a real sekmet-fhir server over loopback HTTP."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from service.fhir.client import FhirClient
from service.fhir.errors import FhirError
from tests.fhir_client import data


async def _load(client: FhirClient, resources: list[dict], batch: int = 500) -> None:
    for i in range(0, len(resources), batch):
        await client.transaction(data.transaction(data.post_entries(resources[i:i + batch])))


@pytest.fixture
async def client(sekmet_url: str):
    async with FhirClient(sekmet_url, timeout=30) as c:
        yield c


async def test_capabilities_parsed_from_real_server(client: FhirClient) -> None:
    cap = await client.capabilities()
    assert cap.fhir_version == "4.0.1"
    assert cap.transaction
    assert cap.can_create("CarePlan") and cap.supports("Observation", "search-type")
    assert cap.conditional_create("ServiceRequest")
    assert cap.conditional_create("Goal")  # only true because the Goal identifier parameter was patched in
    assert client.requests_sent == 1
    await client.capabilities()
    assert client.requests_sent == 1  # cached


async def test_paging_over_1200_observations_is_bounded(client: FhirClient) -> None:
    pid = (await client.create(data.patient())).id
    ref = f"Patient/{pid}"
    relevant = [("718-7", 12.5, "g/dL"), ("777-3", 180.0, "10*3/uL"), ("64098-7", 420.0, "m")]
    await _load(client, data.observations_for(ref, 1200, relevant, data.NOW))

    before = client.requests_sent
    everything = await client.search("Observation", {"patient": pid, "_count": 500}, max_pages=10)
    assert everything.total == 1200 and len(everything.resources) == 1200
    assert len({r["id"] for r in everything.resources}) == 1200
    assert everything.pages == 3 and client.requests_sent - before == 3 and not everything.truncated

    before = client.requests_sent
    capped = await client.search("Observation", {"patient": pid, "_count": 100}, max_pages=4)
    assert capped.truncated and capped.pages == 4 and len(capped.resources) == 400
    assert client.requests_sent - before == 4

    before = client.requests_sent
    codes = ",".join(f"http://loinc.org|{c}" for c, _, _ in relevant)
    filtered = await client.search("Observation", {"patient": pid, "code": codes, "_sort": "-date", "_count": 200})
    assert client.requests_sent - before == 1
    assert sorted(r["code"]["coding"][0]["code"] for r in filtered.resources) == ["64098-7", "718-7", "777-3"]


async def test_read_create_conditional_and_transaction(client: FhirClient) -> None:
    pid = (await client.create(data.patient())).id
    read = await client.read("Patient", pid)
    assert read["id"] == pid and read["resourceType"] == "Patient"

    ident = f"cond-{uuid.uuid4()}"
    sr = data.service_request(ident, f"Patient/{pid}")
    query = f"identifier=https://fhir.onco-exercise.org/identifier/prescription|{ident}"
    first = await client.create(sr, if_none_exist=query)
    second = await client.create(sr, if_none_exist=query)
    assert first.created and first.status == 201
    assert not second.created and second.status == 200 and second.id == first.id

    out = await client.transaction(data.transaction(data.post_entries([data.condition(f"Patient/{pid}")])))
    assert out["type"] == "transaction-response"
    assert out["entry"][0]["response"]["status"].startswith("201")


async def test_concurrent_searches(client: FhirClient) -> None:
    pid = (await client.create(data.patient())).id
    await _load(client, [data.condition(f"Patient/{pid}")])
    results = await client.search_concurrently({
        "conditions": ("Condition", {"patient": pid}),
        "observations": ("Observation", {"patient": pid}),
        "bad": ("Observation", {"date": "not-a-date"}),
    })
    assert len(results["conditions"].resources) == 1  # type: ignore[union-attr]
    assert results["observations"].resources == []  # type: ignore[union-attr]
    assert isinstance(results["bad"], FhirError) and results["bad"].status == 400


async def test_real_operation_outcome_surfaced(client: FhirClient) -> None:
    with pytest.raises(FhirError) as missing:
        await client.read("Patient", "does-not-exist")
    assert missing.value.status == 404
    assert "not found" in missing.value.message
    assert missing.value.outcome and missing.value.outcome["resourceType"] == "OperationOutcome"

    with pytest.raises(FhirError) as invalid:
        await client.create({"resourceType": "Observation", "status": "final",
                             "code": {"text": "x"}, "notAnElement": 1})
    assert invalid.value.status == 400 and invalid.value.kind == "http"
    assert invalid.value.message  # the server's diagnostics, not a bare status


async def test_failed_transaction_writes_nothing(client: FhirClient) -> None:
    pid = (await client.create(data.patient())).id
    good = data.condition(f"Patient/{pid}")
    bad = data.observation(f"Patient/{pid}", "718-7", 1.0, "g/dL", data.NOW)
    bad["subject"] = {"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"}  # unresolvable
    with pytest.raises(FhirError) as err:
        await client.transaction(data.transaction(data.post_entries([good, bad])))
    assert err.value.status == 400 and "rolled back" in err.value.message
    assert await client.search_all("Condition", {"patient": pid}) == []


async def test_many_concurrent_reads(client: FhirClient) -> None:
    pid = (await client.create(data.patient())).id
    reads = await asyncio.gather(*(client.read("Patient", pid) for _ in range(20)))
    assert {r["id"] for r in reads} == {pid}
