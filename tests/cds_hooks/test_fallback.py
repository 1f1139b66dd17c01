"""Fallback reads: the sandbox FHIR server (sekmet) over HTTP, the SSRF guard, the time budget, server failures."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.app import create_app
from service.cds_hooks.discovery import ENCOUNTER_START_ID
from tests.cds_hooks import patients
from tests.cds_hooks.conftest import Ehr, assert_clean, hook_body, make_settings
from tests.support.live import free_port, serve

ES = f"/cds-services/{ENCOUNTER_START_ID}"
BUDGET = 0.6
TOKEN = "hook-access-token-123"


def _auth() -> dict[str, Any]:
    return {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.rs",
            "subject": "onco-exercise"}


@dataclass
class FakeFhir:
    """A FHIR server we control: slow or failing on demand; records every request and its Authorization."""

    url: str = ""
    mode: dict[str, str] = field(default_factory=dict)  # resource type -> "slow" | "deny" | "ok"
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    patient: patients.PatientBuilder = field(default_factory=lambda: patients.bone_metastases("slow-p"))

    @property
    def base(self) -> str:
        return f"{self.url}/fhir"


def _fake_app(fake: FakeFhir) -> FastAPI:
    app = FastAPI()

    @app.api_route("/fhir/{path:path}", methods=["GET", "POST"])
    async def fhir(path: str, request: Request) -> JSONResponse:
        fake.seen.append((path, request.headers.get("authorization")))
        rtype = path.split("/", 1)[0]
        mode = fake.mode.get(rtype, fake.mode.get("*", "ok"))
        if mode == "deny":
            return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "security", "diagnostics": "token refused"}]}, status_code=401)
        if mode == "slow":
            for _ in range(100):  # ~5 s, unless the caller gives up first
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.05)
        if rtype == "Patient":
            return JSONResponse(fake.patient.patient, media_type="application/fhir+json")
        key = patients.KEY_OF_TYPE.get(rtype)
        resources = fake.patient.by_key.get(key, []) if key else []
        return JSONResponse(patients.searchset(resources, fake.base), media_type="application/fhir+json")

    return app


@pytest.fixture(scope="module")
def sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The sandbox's FHIR server (sekmet-fhir, as the sandbox mounts it) with three patients; its base URL."""
    from service.sandbox.fhir_server import open_fhir

    port = free_port()
    fhir = open_fhir(f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("fhir"))
    with serve(fhir.asgi, port):
        base = fhir.base_url
        entries = []
        for builder in (patients.bone_metastases("fb-bone"), patients.existing_referral("fb-ref"),
                        patients.non_oncology("fb-none")):
            for r in builder.resources():
                entries.append({"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}})
        resp = httpx.post(base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                          headers={"Content-Type": "application/fhir+json"}, timeout=30)
        assert resp.status_code == 200, resp.text[:500]
        yield base
    fhir.close()


def _running_fake() -> Iterator[FakeFhir]:
    f = FakeFhir()
    with serve(_fake_app(f), free_port()) as url:
        f.url = url
        yield f


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeFhir]:
    yield from _running_fake()


@pytest.fixture(scope="module")
def stranger() -> Iterator[FakeFhir]:
    """A server that is NOT allowlisted: it must never see a request."""
    yield from _running_fake()


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any], sekmet: str,
        fake: FakeFhir) -> Iterator[Ehr]:
    port = free_port()
    settings = make_settings(port, tmp_path_factory.mktemp("fallback"), keys, None,
                             fhir_servers=[sekmet, fake.base], hook_budget_seconds=BUDGET)
    with serve(create_app(settings), port) as url:
        yield Ehr(url, keys["es"])


def _call(svc: Ehr, pid: str, server: str, prefetch: dict[str, Any] | None = None,
          auth: dict[str, Any] | None = None) -> httpx.Response:
    body = hook_body(ENCOUNTER_START_ID, prefetch, pid, fhirServer=server, fhirAuthorization=auth or _auth())
    resp = svc.post(ES, body)
    assert_clean(resp)
    return resp


def test_no_prefetch_reads_everything_from_the_fhir_server(svc: Ehr, sekmet: str) -> None:
    resp = _call(svc, "fb-bone", sekmet)
    assert resp.status_code == 200, resp.text
    [card] = resp.json()["cards"]
    assert card["indicator"] == "info" and "supervised" in card["summary"]
    assert card["suggestions"][0]["actions"][0]["resource"]["status"] == "draft"
    follow = _call(svc, "fb-ref", sekmet).json()["cards"]
    assert follow[0]["summary"].startswith("Exercise referral: Task in-progress")
    assert _call(svc, "fb-none", sekmet).json() == {"cards": []}


def test_partial_prefetch_reads_only_the_missing_keys(svc: Ehr, fake: FakeFhir) -> None:
    fake.mode.clear()
    fake.seen.clear()
    fake.patient = patients.bone_metastases(f"part-{uuid.uuid4().hex[:6]}")
    prefetch = fake.patient.prefetch()
    del prefetch["observations"], prefetch["procedures"]
    resp = _call(svc, fake.patient.pid, fake.base, prefetch)
    assert resp.status_code == 200 and len(resp.json()["cards"]) == 1
    assert sorted(p.split("?")[0] for p, _ in fake.seen) == ["Observation", "Procedure"]
    assert {a for _, a in fake.seen} == {f"Bearer {TOKEN}"}  # the hook's token, to the allowlisted server only


def test_full_prefetch_makes_no_outbound_call(svc: Ehr, fake: FakeFhir) -> None:
    fake.seen.clear()
    fake.patient = patients.bone_metastases(f"full-{uuid.uuid4().hex[:6]}")
    resp = _call(svc, fake.patient.pid, fake.base, fake.patient.prefetch())
    assert resp.status_code == 200
    assert fake.seen == []


def test_ssrf_guard_never_contacts_an_unknown_server(svc: Ehr, stranger: FakeFhir) -> None:
    for target in (stranger.base, f"{stranger.base}/", stranger.url, "http://169.254.169.254/latest/meta-data",
                   f"{stranger.base}/../fhir"):
        resp = _call(svc, "p1", target)
        assert resp.status_code == 412, resp.text
        assert resp.json()["resourceType"] == "OperationOutcome"
        partial = patients.bone_metastases("p1").prefetch()
        del partial["observations"]
        assert _call(svc, "p1", target, partial).status_code == 412
    assert stranger.seen == []  # not one request, so the token never left


def test_budget_honoured_with_incomplete_card(svc: Ehr, fake: FakeFhir) -> None:
    fake.mode.clear()
    fake.mode["Observation"] = "slow"
    fake.patient = patients.bone_metastases(f"slow-{uuid.uuid4().hex[:6]}")
    prefetch = fake.patient.prefetch()
    del prefetch["observations"]
    t0 = time.monotonic()
    resp = _call(svc, fake.patient.pid, fake.base, prefetch)
    elapsed = time.monotonic() - t0
    assert resp.status_code == 200, resp.text
    assert elapsed < BUDGET + 0.5, elapsed
    [card] = resp.json()["cards"]
    assert card["summary"] == "Exercise referral: data incomplete, review in onco-exercise"
    assert "suggestions" not in card  # no one-click referral on partial data
    assert "observations" in card["detail"]


def test_budget_honoured_without_eligibility_means_no_card(svc: Ehr, fake: FakeFhir) -> None:
    fake.mode.clear()
    fake.mode["*"] = "slow"
    fake.patient = patients.bone_metastases(f"allslow-{uuid.uuid4().hex[:6]}")
    t0 = time.monotonic()
    resp = _call(svc, fake.patient.pid, fake.base)
    assert time.monotonic() - t0 < BUDGET + 0.5
    assert resp.status_code == 200 and resp.json() == {"cards": []}
    fake.mode.clear()


def test_server_refusing_the_token_is_412(svc: Ehr, fake: FakeFhir) -> None:
    fake.mode.clear()
    fake.mode["*"] = "deny"
    resp = _call(svc, "deny-p", fake.base)
    assert resp.status_code == 412
    assert TOKEN not in resp.text
    fake.mode.clear()


def test_unreachable_server_is_412_quickly(tmp_path: Any, keys: dict[str, Any]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/fhir"
    port = free_port()
    settings = make_settings(port, tmp_path, keys, None, fhir_servers=[dead], hook_budget_seconds=BUDGET)
    with serve(create_app(settings), port) as url:
        t0 = time.monotonic()
        resp = Ehr(url, keys["es"]).post(ES, hook_body(ENCOUNTER_START_ID, None, "p1", fhirServer=dead))
        assert resp.status_code == 412, resp.text
        assert time.monotonic() - t0 < BUDGET + 0.5


def test_refused_lab_read_blocks_the_one_click_referral(svc: Ehr, fake: FakeFhir) -> None:
    fake.mode.clear()
    fake.mode["Observation"] = "deny"
    fake.patient = patients.bone_metastases(f"nolabs-{uuid.uuid4().hex[:6]}")
    resp = _call(svc, fake.patient.pid, fake.base)
    [card] = resp.json()["cards"]
    assert card["summary"] == "Exercise referral: data incomplete, review in onco-exercise"
    assert "suggestions" not in card
    fake.mode.clear()


def test_other_gaps_are_named_but_do_not_block(svc: Ehr, fake: FakeFhir) -> None:
    fake.mode.clear()
    fake.mode["MedicationStatement"] = "deny"  # e.g. a scope the EHR did not grant
    fake.patient = patients.bone_metastases(f"nomeds-{uuid.uuid4().hex[:6]}")
    resp = _call(svc, fake.patient.pid, fake.base)
    [card] = resp.json()["cards"]
    assert card["summary"].startswith("Exercise referral suggested")
    assert card["suggestions"][0]["actions"][0]["resource"]["status"] == "draft"
    assert "**Not read from the EHR**" in card["detail"] and "medicationStatements" in card["detail"]
    fake.mode.clear()


def test_replayed_hook_call_is_refused_before_any_fhir_read(svc: Ehr, fake: FakeFhir) -> None:
    fake.mode.clear()
    fake.patient = patients.bone_metastases(f"replay-{uuid.uuid4().hex[:6]}")
    body = hook_body(ENCOUNTER_START_ID, None, fake.patient.pid, fhirServer=fake.base, fhirAuthorization=_auth())
    token = svc.token(ES)
    assert svc.post(ES, body, token=token).status_code == 200
    seen = len(fake.seen)
    replay = svc.post(ES, body, token=token)
    assert replay.status_code == 401
    assert len(fake.seen) == seen  # the replay cost the FHIR server nothing


# -- prefetch the service does not take at face value (issue 12) --------------------------------------------

ERROR_OUTCOME = {"resourceType": "OperationOutcome", "issue": [
    {"severity": "error", "code": "exception", "diagnostics": "query timed out"}]}


def _screened(fake: FakeFhir, tag: str, spoil: Any) -> tuple[dict[str, Any], str]:
    fake.mode.clear()
    fake.seen.clear()
    fake.patient = patients.bone_metastases(f"{tag}-{uuid.uuid4().hex[:6]}")
    prefetch = fake.patient.prefetch()
    spoil(prefetch)
    return prefetch, fake.patient.pid


@pytest.mark.parametrize("tag,spoil", [
    ("outcome", lambda p: p.update(observations=ERROR_OUTCOME)),
    ("bundle-error", lambda p: p["observations"].setdefault("entry", []).append(
        {"resource": ERROR_OUTCOME, "search": {"mode": "outcome"}})),
    ("wrong-type", lambda p: p.update(observations=p["conditions"])),
    ("paged", lambda p: p["observations"].setdefault("link", []).append(
        {"relation": "next", "url": "http://ehr.example/fhir/Observation?page=2"})),
    ("short-total", lambda p: p["observations"].update(total=len(p["observations"].get("entry", [])) + 40)),
])
def test_unusable_prefetch_is_read_again_from_the_fhir_server(svc: Ehr, fake: FakeFhir, tag: str, spoil: Any) -> None:
    prefetch, pid = _screened(fake, tag, spoil)
    resp = _call(svc, pid, fake.base, prefetch)
    assert resp.status_code == 200, resp.text
    assert [p.split("?")[0] for p, _ in fake.seen] == ["Observation"]  # only that key, from the allowlisted server
    [card] = resp.json()["cards"]
    assert card["indicator"] == "info" and "supervised" in card["summary"]  # the labs were read: a full card


@pytest.mark.parametrize("tag,spoil", [
    ("outcome", lambda p: p.update(observations=ERROR_OUTCOME)),
    ("paged", lambda p: p["observations"].setdefault("link", []).append(
        {"relation": "next", "url": "http://ehr.example/fhir/Observation?page=2"})),
])
def test_unusable_prefetch_without_a_server_gives_the_incomplete_card(svc: Ehr, fake: FakeFhir, tag: str,
                                                                      spoil: Any) -> None:
    prefetch, pid = _screened(fake, tag, spoil)
    resp = svc.post(ES, hook_body(ENCOUNTER_START_ID, prefetch, pid))
    assert resp.status_code == 200, resp.text
    [card] = resp.json()["cards"]
    assert "data incomplete" in card["summary"] and "observations" in card["detail"]
    assert "suggestions" not in card  # no one-click referral when the labs could not be read
    assert fake.seen == []


def test_an_informational_outcome_in_a_search_bundle_is_fine(svc: Ehr, fake: FakeFhir) -> None:
    prefetch, pid = _screened(fake, "info", lambda p: p["observations"].setdefault("entry", []).append(
        {"resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "informational", "diagnostics": "sorted by date"}]},
         "search": {"mode": "outcome"}}))
    resp = _call(svc, pid, fake.base, prefetch)
    assert resp.status_code == 200 and fake.seen == []


def test_an_unusable_patient_without_a_server_is_412(svc: Ehr, fake: FakeFhir) -> None:
    prefetch, pid = _screened(fake, "no-patient", lambda p: p.update(patient=ERROR_OUTCOME))
    resp = svc.post(ES, hook_body(ENCOUNTER_START_ID, prefetch, pid))
    assert resp.status_code == 412 and resp.json()["resourceType"] == "OperationOutcome"


def test_a_prefetched_patient_who_is_not_the_context_patient_is_400(svc: Ehr, fake: FakeFhir) -> None:
    prefetch, _ = _screened(fake, "other", lambda p: None)
    resp = svc.post(ES, hook_body(ENCOUNTER_START_ID, prefetch, "someone-else"))
    assert resp.status_code == 400
    assert resp.json()["issue"][0]["expression"] == ["prefetch.patient"]
