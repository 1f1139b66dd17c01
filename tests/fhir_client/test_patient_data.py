"""Patient-data queries (prefetch templates and fallback searches) and fetch_patient_data against sekmet."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from urllib.parse import parse_qsl

import httpx
import pytest

from service.fhir.client import FhirClient
from service.fhir.patient_data import fetch_patient_data
from service.fhir.queries import PATIENT_TOKEN, patient_queries, prefetch_templates, query_by_key
from tests.fhir_client import data
from service.terminology import get_terminology

SUBSET_PARAM = re.compile(r"^[a-z_][a-z\-]*(:in)?$")


def test_prefetch_templates_use_the_patient_token_within_the_subset() -> None:
    templates = prefetch_templates()
    assert templates["patient"] == f"Patient/{PATIENT_TOKEN}"
    for key, t in templates.items():
        assert "{{" not in t.replace(PATIENT_TOKEN, ""), key  # no other token
        if "?" not in t:
            continue
        rtype, _, query = t.partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        assert ("patient", PATIENT_TOKEN) in pairs, key
        for name, value in pairs:
            assert SUBSET_PARAM.match(name), (key, name)
            assert not value.startswith(("ge", "le", "gt", "lt")) or name == "_sort", (key, name)


def test_observation_query_filters_to_rule_codes_newest_first() -> None:
    q = query_by_key("observations")
    params = dict(q.params)
    wanted = {c for _, c in get_terminology().observation_codes()}  # codes only: a short URL
    assert set(params["code"].split(",")) == wanted
    assert params["_sort"] == "-date" and int(params["_count"]) >= 100
    rtype, concrete = q.concrete("p1", data.NOW)
    floor = dict(concrete)["date"]
    assert rtype == "Observation" and dict(concrete)["patient"] == "p1"
    assert floor == "ge" + (data.NOW - timedelta(days=730)).date().isoformat()


def test_every_query_has_a_unique_key() -> None:
    keys = [q.key for q in patient_queries()]
    assert len(keys) == len(set(keys))
    assert {"patient", "conditions", "observations", "medicationRequests", "procedures", "exerciseReferrals",
            "referralTasks"} <= set(keys)


async def _seed(client: FhirClient, n_obs: int) -> tuple[str, list[dict]]:
    pid = (await client.create(data.patient())).id
    ref = f"Patient/{pid}"
    relevant = [("718-7", 12.5, "g/dL"), ("777-3", 180.0, "10*3/uL"), ("64098-7", 420.0, "m"),
                ("89247-1", 1.0, "{score}")]
    obs = data.observations_for(ref, n_obs, relevant, data.NOW)
    old = data.observation(ref, "718-7", 9.0, "g/dL", data.NOW - timedelta(days=1000))  # below the date floor
    extra = [data.condition(ref), data.service_request(f"sr-{pid}", ref), old]
    resources = obs + extra
    for i in range(0, len(resources), 500):
        await client.transaction(data.transaction(data.post_entries(resources[i:i + 500])))
    return pid, relevant


async def test_fetch_costs_the_same_requests_whatever_the_irrelevant_observations(sekmet_url: str) -> None:
    async with FhirClient(sekmet_url, timeout=30) as client:
        small_pid, relevant = await _seed(client, 10)
        big_pid, _ = await _seed(client, 1500)
        small = await fetch_patient_data(client, small_pid, data.NOW)
        big = await fetch_patient_data(client, big_pid, data.NOW)
    assert small.complete and big.complete and not small.failures
    assert small.requests == big.requests == len(patient_queries())
    for got, pid in ((small, small_pid), (big, big_pid)):
        types = [r["resourceType"] for r in got.resources]
        assert types.count("Patient") == 1 and types.count("Condition") == 1
        assert types.count("ServiceRequest") == 1
        obs_codes = sorted(r["code"]["coding"][0]["code"] for r in got.resources if r["resourceType"] == "Observation")
        assert obs_codes == sorted(c for c, _, _ in relevant)  # the old one is below the date floor
        assert got.bundle()["entry"][0]["resource"]["id"] == pid


class SlowFor(httpx.AsyncBaseTransport):
    """Real HTTP, but requests for the given resource types hang for `delay` seconds first."""

    def __init__(self, types: set[str], delay: float) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.types = types
        self.delay = delay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if any(f"/{t}" in request.url.path for t in self.types):
            await asyncio.sleep(self.delay)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_budget_returns_what_arrived_and_names_the_rest(sekmet_url: str) -> None:
    async with FhirClient(sekmet_url) as seed:
        pid, _ = await _seed(seed, 5)
    transport = SlowFor({"Procedure", "MedicationStatement"}, delay=5.0)
    async with FhirClient(sekmet_url, transport=transport) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        got = await fetch_patient_data(client, pid, data.NOW, budget_seconds=0.5)
        elapsed = loop.time() - start
    assert elapsed < 2.0
    assert not got.complete
    assert len(got.failures) == 2
    assert any(f.startswith("procedures (Procedure)") and "budget" in f for f in got.failures)
    assert any(f.startswith("medicationStatements (MedicationStatement)") for f in got.failures)
    assert any(r["resourceType"] == "Patient" for r in got.resources)
    assert sum(r["resourceType"] == "Observation" for r in got.resources) == 4


async def test_failed_query_is_named_others_still_count(sekmet_url: str) -> None:
    async with FhirClient(sekmet_url) as client:
        got = await fetch_patient_data(client, "no-such-patient", data.NOW)
    assert not got.complete
    assert got.failures == [got.failures[0]] and got.failures[0].startswith("patient (Patient): 404")
    assert got.resources == []


async def test_only_the_keys_prefetch_missed(sekmet_url: str) -> None:
    async with FhirClient(sekmet_url) as client:
        pid, _ = await _seed(client, 3)
        got = await fetch_patient_data(client, pid, data.NOW, keys=["conditions", "observations"])
    assert got.requests == 2 and got.complete
    assert {r["resourceType"] for r in got.resources} == {"Condition", "Observation"}


@pytest.mark.parametrize("key", ["observations", "procedures", "medicationAdministrations"])
def test_fallback_date_floor_only_where_defined(key: str) -> None:
    q = query_by_key(key)
    _, params = q.concrete("p", data.NOW)
    assert any(v.startswith("ge") for _, v in params)
    assert "ge" not in q.template().split("?")[1].replace("_count", "")
