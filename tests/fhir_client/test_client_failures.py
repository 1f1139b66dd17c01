"""Failure paths of remote FHIR servers (respx): timeouts, 5xx, 401, 412, malformed bodies, foreign links."""

from __future__ import annotations

import logging

import httpx
import pytest
import respx

from service import metrics
from service.fhir.client import FhirClient
from service.fhir.errors import FhirError

BASE = "https://ehr.example.org/fhir/r4"
TOKEN = "secret-access-token-value"


def oo(text: str, code: str = "processing") -> dict:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def bundle(resources: list[dict], next_url: str | None = None) -> dict:
    b: dict = {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
               "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}
    if next_url:
        b["link"] = [{"relation": "next", "url": next_url}]
    return b


def fhir(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body, headers={"Content-Type": "application/fhir+json"})


def new_client(**kw: object) -> FhirClient:
    kw.setdefault("backoff", 0.0)
    return FhirClient(BASE, **kw)  # type: ignore[arg-type]


def errors(interaction: str, kind: str) -> float:
    return metrics.REGISTRY.get_sample_value("onco_fhir_errors_total",
                                             {"interaction": interaction, "kind": kind}) or 0.0


@respx.mock
async def test_get_timeout_is_retried_then_reported() -> None:
    route = respx.get(f"{BASE}/Patient/1").mock(side_effect=httpx.ReadTimeout("slow"))
    before = errors("read", "timeout")
    async with new_client(retries=2) as c:
        with pytest.raises(FhirError) as err:
            await c.read("Patient", "1", timeout=0.5)
    assert route.call_count == 3
    assert err.value.status == 504 and err.value.kind == "timeout"
    assert errors("read", "timeout") == before + 1
    assert route.calls[0].request.extensions["timeout"]["read"] == 0.5  # the per-request timeout was used


@respx.mock
async def test_get_5xx_retried_then_succeeds() -> None:
    route = respx.get(f"{BASE}/Patient/1").mock(side_effect=[
        fhir(503, oo("maintenance")), httpx.ConnectError("reset"), fhir(200, {"resourceType": "Patient", "id": "1"})])
    async with new_client(retries=2) as c:
        assert (await c.read("Patient", "1"))["id"] == "1"
        assert c.requests_sent == 3
    assert route.call_count == 3
    assert route.calls[0].request.headers["accept"] == "application/fhir+json"


@respx.mock
async def test_5xx_after_retries_surfaces_outcome() -> None:
    respx.get(f"{BASE}/Patient/1").mock(return_value=fhir(500, oo("database on fire")))
    async with new_client(retries=1) as c:
        with pytest.raises(FhirError) as err:
            await c.read("Patient", "1")
    assert err.value.status == 500 and err.value.message == "database on fire"


@respx.mock
async def test_post_is_never_retried() -> None:
    create = respx.post(f"{BASE}/ServiceRequest").mock(return_value=fhir(503, oo("busy")))
    tx = respx.post(BASE).mock(side_effect=httpx.ReadTimeout("lost"))
    async with new_client(retries=3) as c:
        with pytest.raises(FhirError) as err:
            await c.create({"resourceType": "ServiceRequest"})
        assert err.value.status == 503
        with pytest.raises(FhirError) as err2:
            await c.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
        assert err2.value.kind == "timeout"
    assert create.call_count == 1 and tx.call_count == 1


@respx.mock
async def test_401_refreshes_once_and_retries() -> None:
    route = respx.get(f"{BASE}/Patient/1").mock(side_effect=[
        fhir(401, oo("token expired", "login")), fhir(200, {"resourceType": "Patient", "id": "1"})])
    tokens = {"current": "old-token"}
    refreshes = []

    async def provider() -> str:
        return tokens["current"]

    async def refresh() -> str:
        refreshes.append(1)
        tokens["current"] = "new-token"
        return "new-token"

    async with new_client(token_provider=provider, on_unauthorized=refresh, retries=0) as c:
        assert (await c.read("Patient", "1"))["id"] == "1"
    assert len(refreshes) == 1
    assert [call.request.headers["authorization"] for call in route.calls] == ["Bearer old-token", "Bearer new-token"]


@respx.mock
async def test_401_twice_refreshes_only_once_and_post_too() -> None:
    route = respx.post(f"{BASE}/Task").mock(return_value=fhir(401, oo("invalid token", "login")))
    refreshes = []

    async def refresh() -> str:
        refreshes.append(1)
        return "new-token"

    async with new_client(token_provider="old-token", on_unauthorized=refresh) as c:
        with pytest.raises(FhirError) as err:
            await c.create({"resourceType": "Task"})
    assert route.call_count == 2 and len(refreshes) == 1
    assert err.value.status == 401 and err.value.kind == "auth" and err.value.message == "invalid token"


@respx.mock
async def test_401_without_refresh_hook_or_token() -> None:
    route = respx.get(f"{BASE}/Patient/1").mock(return_value=httpx.Response(401))
    refreshed = []

    async def refresh() -> None:
        refreshed.append(1)
        return None  # cannot refresh

    async with new_client(token_provider="t", on_unauthorized=refresh) as c:
        with pytest.raises(FhirError) as err:
            await c.read("Patient", "1")
    assert err.value.status == 401 and err.value.message.startswith("HTTP 401")
    assert route.call_count == 1 and len(refreshed) == 1


@respx.mock
async def test_412_on_conditional_create() -> None:
    route = respx.post(f"{BASE}/Goal").mock(return_value=fhir(412, oo("Conditional create: criteria matched 2")))
    async with new_client() as c:
        with pytest.raises(FhirError) as err:
            await c.create({"resourceType": "Goal"}, if_none_exist="identifier=s|v")
    assert err.value.status == 412 and "matched 2" in err.value.message
    assert route.calls[0].request.headers["if-none-exist"] == "identifier=s|v"
    assert route.calls[0].request.headers["content-type"] == "application/fhir+json"


@pytest.mark.parametrize("response", [
    httpx.Response(200, text="<html>login page</html>", headers={"Content-Type": "text/html"}),
    fhir(200, {"resourceType": "Patient", "id": "x"}),
    fhir(200, {"resourceType": "Bundle", "type": "searchset", "entry": [{"fullUrl": "x"}]}),
    fhir(200, {"resourceType": "Bundle", "type": "history"}),
    fhir(200, ["not", "a", "resource"]),
    fhir(200, {"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next", "url": 7}]}),
], ids=["html", "wrong-type", "entry-without-resource", "wrong-bundle-type", "json-array", "bad-link"])
@respx.mock
async def test_malformed_search_responses(response: httpx.Response) -> None:
    respx.get(f"{BASE}/Observation").mock(return_value=response)
    async with new_client() as c:
        with pytest.raises(FhirError) as err:
            await c.search("Observation", {"patient": "1"})
    assert err.value.kind == "malformed" and err.value.status == 502


@respx.mock
async def test_malformed_transaction_response() -> None:
    respx.post(BASE).mock(return_value=fhir(200, {"resourceType": "Bundle", "type": "transaction-response",
                                                  "entry": []}))
    async with new_client() as c:
        with pytest.raises(FhirError) as err:
            await c.transaction({"resourceType": "Bundle", "type": "transaction",
                                 "entry": [{"resource": {"resourceType": "Basic"},
                                            "request": {"method": "POST", "url": "Basic"}}]})
    assert err.value.kind == "malformed" and "1 requests" in err.value.message


@respx.mock
async def test_foreign_origin_next_link_refused_token_never_sent() -> None:
    first = respx.get(f"{BASE}/Observation").mock(return_value=fhir(200, bundle(
        [{"resourceType": "Observation", "id": "1"}], next_url="https://evil.example.com/fhir/Observation?page=2")))
    evil = respx.get("https://evil.example.com/fhir/Observation").mock(return_value=fhir(200, bundle([])))
    async with new_client(token_provider=TOKEN) as c:
        with pytest.raises(FhirError) as err:
            await c.search("Observation", {"patient": "1"})
    assert err.value.kind == "foreign-link"
    assert first.call_count == 1 and evil.call_count == 0


@respx.mock
async def test_same_origin_relative_and_absolute_next_links_followed() -> None:
    pages = [
        fhir(200, bundle([{"resourceType": "Observation", "id": "1"}], next_url=f"{BASE}/Observation?page=2")),
        fhir(200, bundle([{"resourceType": "Observation", "id": "2"}], next_url="/fhir/r4?_getpages=abc&page=3")),
        fhir(200, bundle([{"resourceType": "Observation", "id": "2"}, {"resourceType": "Observation", "id": "3"}])),
    ]
    respx.get(f"{BASE}/Observation").mock(side_effect=pages[:2])
    respx.get(BASE).mock(return_value=pages[2])
    async with new_client() as c:
        res = await c.search("Observation", {"patient": "1"})
    assert [r["id"] for r in res.resources] == ["1", "2", "3"]  # duplicates across pages dropped
    assert res.pages == 3 and not res.truncated


@respx.mock
async def test_outcome_entries_separated_from_matches() -> None:
    b = bundle([{"resourceType": "Observation", "id": "1"}])
    b["entry"].append({"resource": oo("Unknown search parameter 'foo'"), "search": {"mode": "outcome"}})
    respx.get(f"{BASE}/Observation").mock(return_value=fhir(200, b))
    async with new_client() as c:
        res = await c.search("Observation", {"foo": "1"})
    assert [r["id"] for r in res.resources] == ["1"] and len(res.outcomes) == 1


@respx.mock
async def test_operation_outcome_with_200_where_resource_expected() -> None:
    respx.get(f"{BASE}/Patient/1").mock(return_value=fhir(200, oo("consent forbids disclosure")))
    async with new_client() as c:
        with pytest.raises(FhirError) as err:
            await c.read("Patient", "1")
    assert err.value.message == "consent forbids disclosure" and err.value.outcome is not None


@respx.mock
async def test_create_with_return_minimal_reads_location() -> None:
    respx.post(f"{BASE}/Goal").mock(return_value=httpx.Response(
        201, headers={"Location": f"{BASE}/Goal/g1/_history/1"}))
    respx.get(f"{BASE}/Goal/g1").mock(return_value=fhir(200, {"resourceType": "Goal", "id": "g1"}))
    async with new_client() as c:
        created = await c.create({"resourceType": "Goal"})
    assert created.id == "g1" and created.created


@respx.mock
async def test_logs_never_carry_token_or_query(caplog: pytest.LogCaptureFixture) -> None:
    respx.get(f"{BASE}/Observation").mock(return_value=fhir(500, oo("boom")))
    caplog.set_level(logging.DEBUG)
    async with new_client(token_provider=TOKEN, retries=1) as c:
        with pytest.raises(FhirError):
            await c.search("Observation", {"identifier": "MRN|123456"})
    text = caplog.text
    assert "Observation" in text
    assert TOKEN not in text and "123456" not in text and "boom" not in text


@respx.mock
async def test_refresh_hook_that_raises_reports_the_401() -> None:
    route = respx.get(f"{BASE}/Patient/1").mock(return_value=fhir(401, oo("expired", "login")))

    async def refresh() -> str:
        raise RuntimeError("token endpoint down")

    async with new_client(token_provider="t", on_unauthorized=refresh) as c:
        with pytest.raises(FhirError) as err:
            await c.read("Patient", "1")
    assert err.value.status == 401 and route.call_count == 1


@respx.mock
async def test_an_oversized_answer_is_refused_without_being_kept() -> None:
    """A server answering with more than max_response_bytes (declared or streamed) gets a 502 FhirError."""
    huge = bundle([{"resourceType": "Observation", "id": f"o{i}", "status": "final"} for i in range(2000)])
    respx.get(f"{BASE}/Observation").mock(return_value=fhir(200, huge))
    async with new_client(max_response_bytes=10_000, retries=0) as c:
        with pytest.raises(FhirError) as info:
            await c.search("Observation", {"patient": "p1"})
    assert info.value.status == 502 and info.value.kind == "too-large"

    def chunked(request: httpx.Request) -> httpx.Response:  # no Content-Length: the cap applies while reading
        body = httpx.Response(200, json=huge).content
        return httpx.Response(200, headers={"Content-Type": "application/fhir+json"},
                              stream=httpx.ByteStream(body))  # type: ignore[arg-type]

    respx.get(f"{BASE}/Condition").mock(side_effect=chunked)
    async with new_client(max_response_bytes=10_000, retries=0) as c:
        with pytest.raises(FhirError) as info:
            await c.search("Condition", {"patient": "p1"})
    assert info.value.kind == "too-large"


@respx.mock
async def test_answers_within_the_cap_are_read_normally() -> None:
    respx.get(f"{BASE}/Patient/p1").mock(return_value=fhir(200, {"resourceType": "Patient", "id": "p1"}))
    async with new_client(max_response_bytes=10_000) as c:
        assert (await c.read("Patient", "p1"))["id"] == "p1"
