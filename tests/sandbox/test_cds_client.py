"""The sandbox CDS Hooks client against a small conformant fake CDS service over real HTTP.

The fake verifies every JWT it receives (signature with the client's public JWK — fetched from the `jku` when
asked —, alg, typ, kid, iss, aud = the exact URL called, exp - iat = 300 s, unique jti) and records what it got.
The EHR side uses the real sekmet FHIR server with part of the cohort loaded.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from service.sandbox import cohort
from service.sandbox.cds_client import CdsClient, CdsService, actions_to_transaction, card_problem
from tests.support.live import free_port, serve

CLIENT_PUBLIC_URL = "http://ehr.test"
DRAFT_SR_ID = "0b6c5e2a-8f0e-4c51-9a39-3f6f3f0c2a11"


@dataclass
class FakeCds:
    """A conformant CDS service that checks the client's JWTs; `public_key` or `fetch_jwks` decides how."""

    issuer: str
    public_key: ECKey | None = None
    fetch_jwks: bool = False
    jwt_errors: list[str] = field(default_factory=list)
    jtis: list[str] = field(default_factory=list)
    headers: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    base: str = ""
    slow_seconds: float = 0.0

    def verify(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            self.jwt_errors.append("no bearer")
            return False
        token = auth[7:]
        try:
            header = json.loads(jwt_header_json(token))
            key: Any = self.public_key
            if self.fetch_jwks:
                key = KeySet.import_key_set(httpx.get(header["jku"], timeout=5).json())
            decoded = jwt.decode(token, key, algorithms=["ES384"])
        except Exception as exc:  # noqa: BLE001
            self.jwt_errors.append(f"bad signature: {exc!r}")
            return False
        c, h = decoded.claims, decoded.header
        url = str(request.url)
        problems = []
        if h.get("alg") != "ES384" or h.get("typ") != "JWT" or not h.get("kid"):
            problems.append(f"header {h}")
        if h.get("jku") != f"{self.issuer}/.well-known/jwks.json":
            problems.append(f"jku {h.get('jku')}")
        if c.get("iss") != self.issuer:
            problems.append(f"iss {c.get('iss')}")
        if c.get("aud") != url:
            problems.append(f"aud {c.get('aud')} != {url}")
        if c.get("exp", 0) - c.get("iat", 0) != 300 or abs(c.get("iat", 0) - time.time()) > 30:
            problems.append("exp/iat")
        if not c.get("jti") or c["jti"] in self.jtis:
            problems.append("jti reused or missing")
        self.jtis.append(c.get("jti"))
        self.headers.append(dict(h))
        self.claims.append(dict(c))
        if problems:
            self.jwt_errors += problems
            return False
        return True

    def app(self) -> FastAPI:
        app = FastAPI()
        fake = self

        @app.get("/cds-services")
        async def discovery(request: Request) -> Any:
            if not fake.verify(request):
                return JSONResponse({}, 401)
            return {"services": [
                {"id": "exercise", "hook": "encounter-start", "title": "Fake exercise service",
                 "description": "Cards for tests",
                 "usageRequirements": "Needs patient/Observation.rs and patient/Condition.rs",
                 "prefetch": {
                     "patient": "Patient/{{context.patientId}}",
                     "anc": "Observation?patient={{context.patientId}}&code=http://loinc.org|751-8&_count=2",
                     "conditions": "Condition?patient={{context.patientId}}",
                     "user": "Practitioner/{{userPractitionerId}}",
                     "role": "PractitionerRole/{{userPractitionerRoleId}}",
                     "ghost": "Patient/does-not-exist",
                     "bad": "NoSuchType?x=1",
                 }},
                {"id": "chart", "hook": "patient-view", "title": "Fake chart service", "description": "Always 500"},
                {"id": "slow", "hook": "order-select", "title": "Slow", "description": "sleeps"},
                {"description": "no id: ignored"},
            ]}

        @app.post("/cds-services/exercise")
        async def exercise(request: Request) -> Any:
            if not fake.verify(request):
                return JSONResponse({}, 401)
            body = await request.json()
            fake.calls.append(body)
            if fake.slow_seconds:
                await asyncio.sleep(fake.slow_seconds)
            return {"cards": [card(body["context"]["patientId"]),
                              {"summary": "broken", "indicator": "purple", "source": {"label": "x"}}]}

        @app.post("/cds-services/chart")
        async def chart(request: Request) -> Any:
            fake.verify(request)
            return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "exception", "diagnostics": "fake outage"}]}, 500)

        @app.post("/cds-services/{sid}/feedback")
        async def feedback(sid: str, request: Request) -> Any:
            if not fake.verify(request):
                return JSONResponse({}, 401)
            if sid not in ("exercise", "chart"):
                return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "not-found", "diagnostics": "unknown service"}]}, 404)
            body = await request.json()
            fake.feedback += [{"service": sid, **item} for item in body["feedback"]]
            return JSONResponse({}, 200)

        return app


def jwt_header_json(token: str) -> str:
    import base64

    part = token.split(".")[0]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def card(patient_id: str, app_url: str = "https://app.example.org/launch") -> dict[str, Any]:
    return {
        "uuid": "6f1d3f8e-1b54-4d8e-9d37-4b0b0c3a5e10",
        "summary": "Consider an exercise referral",
        "indicator": "warning",
        "detail": "**Supervised** programme\n- ANC low\n<script>alert('x')</script>\n[bad](javascript:alert(1))",
        "source": {"label": "Fake guideline", "url": "https://guideline.example.org/ex"},
        "selectionBehavior": "at-most-one",
        "suggestions": [{
            "label": "Create draft referral", "uuid": "a5a0c0de-0000-4000-8000-000000000001", "isRecommended": True,
            "actions": [
                {"type": "create", "description": "Draft exercise referral", "resource": {
                    "resourceType": "ServiceRequest", "id": DRAFT_SR_ID, "status": "draft", "intent": "order",
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "390893007"}]},
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "requester": {"reference": "Practitioner/sandbox-clinician"}}},
                {"type": "create", "description": "Note on the draft", "resource": {
                    "resourceType": "Task", "status": "draft", "intent": "order",
                    "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
                    "focus": {"reference": f"urn:uuid:{DRAFT_SR_ID}"},
                    "for": {"reference": f"Patient/{patient_id}"}}},
            ]}],
        "overrideReasons": [
            {"system": "https://fake.example.org/reasons", "code": "patient-declined", "display": "Patient declined"},
            {"system": "https://fake.example.org/reasons", "code": "already-active", "display": "Already exercising"},
        ],
        "links": [
            {"label": "Open the exercise app", "url": app_url, "type": "smart", "appContext": "{\"draft\":\"d1\"}"},
            {"label": "Guideline", "url": "https://guideline.example.org/ex", "type": "absolute"},
        ],
    }


@pytest.fixture(scope="module")
def key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"alg": "ES384", "use": "sig"}, private=True, auto_kid=True)


@pytest.fixture(scope="module")
def fake(key: ECKey) -> Iterator[FakeCds]:
    f = FakeCds(issuer=f"{CLIENT_PUBLIC_URL}/sandbox", public_key=ECKey.import_key(key.as_dict(private=False)))
    port = free_port()
    with serve(f.app(), port) as url:
        f.base = url
        yield f


@pytest.fixture(scope="module")
def fhir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from service.sandbox.fhir_server import open_fhir

    server = open_fhir("http://127.0.0.1:9", tmp_path_factory.mktemp("fhir"))

    async def load() -> None:
        async with fhir_http(server) as c:
            for name in ("shared.json", "onc-01.json"):
                bundle, _, _ = cohort.prepare_bundle(json.loads((cohort.COHORT_DIR / name).read_text()),
                                                     cohort.ANCHOR)
                assert (await c.post("", json=bundle)).status_code == 200

    asyncio.run(load())
    yield server
    server.close()


def fhir_http(server: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=server.asgi), base_url=server.base_url, timeout=30)


minted: list[tuple[Any, ...]] = []


def minter(scope: str, patient: str | None, subject: str, lifetime: int) -> tuple[str, int]:
    minted.append((scope, patient, subject, lifetime))
    return "opaque-test-token", lifetime


def make_client(key: ECKey, fhir_client: httpx.AsyncClient, **kw: Any) -> CdsClient:
    return CdsClient(public_url=CLIENT_PUBLIC_URL, fhir_base="http://127.0.0.1:9/sandbox/fhir", signing_key=key,
                     fhir=fhir_client, token_minter=minter, **kw)


def test_jwt_verifies_with_the_public_jwk_and_has_exact_claims(key: ECKey) -> None:
    async def run() -> tuple[str, str]:
        async with make_client(key, httpx.AsyncClient()) as c:
            return c.sign_jwt("https://cds.example.org/cds-services/x"), c.sign_jwt("https://cds.example.org/a")

    t1, t2 = asyncio.run(run())
    public = ECKey.import_key(key.as_dict(private=False))
    d1, d2 = jwt.decode(t1, public, algorithms=["ES384"]), jwt.decode(t2, public, algorithms=["ES384"])
    assert d1.header == {"alg": "ES384", "typ": "JWT", "kid": key.kid,
                         "jku": f"{CLIENT_PUBLIC_URL}/sandbox/.well-known/jwks.json"}
    assert set(d1.claims) == {"iss", "aud", "iat", "exp", "jti"}
    assert d1.claims["iss"] == f"{CLIENT_PUBLIC_URL}/sandbox"
    assert d1.claims["aud"] == "https://cds.example.org/cds-services/x"
    assert d1.claims["exp"] - d1.claims["iat"] == 300 and abs(d1.claims["iat"] - time.time()) < 5
    assert d1.claims["jti"] != d2.claims["jti"]
    other = ECKey.generate_key("P-384", private=False)
    with pytest.raises(Exception):
        jwt.decode(t1, other, algorithms=["ES384"])


def test_public_key_is_refused_for_signing() -> None:
    public = ECKey.generate_key("P-384", private=False)
    with pytest.raises(ValueError):
        CdsClient(public_url="http://x", fhir_base="http://x/f", signing_key=public, fhir=httpx.AsyncClient())


def test_end_to_end_discovery_prefetch_call_feedback_accept(key: ECKey, fake: FakeCds, fhir: Any) -> None:
    async def run() -> None:
        async with fhir_http(fhir) as f, make_client(key, f) as client:
            disc = await client.discover(fake.base + "/cds-services/")
            assert disc.error is None and disc.status == 200
            assert [s.id for s in disc.services] == ["exercise", "chart", "slow"]
            svc = disc.services[0]
            assert svc.url == f"{fake.base}/cds-services/exercise"

            ctx = {"userId": "Practitioner/sandbox-clinician", "patientId": "onc-01", "encounterId": "enc-onc-01"}
            call = await client.call(svc, ctx)
            assert call.error is None and call.status == 200, call.error
            assert [c["summary"] for c in call.cards] == ["Consider an exercise referral"]
            assert call.warnings and "indicator" in call.warnings[0]

            body = fake.calls[-1]
            assert body["hook"] == "encounter-start" and str(uuid.UUID(body["hookInstance"])) == body["hookInstance"]
            assert body["context"] == ctx
            assert body["fhirServer"] == "http://127.0.0.1:9/sandbox/fhir"
            auth = body["fhirAuthorization"]
            assert auth == {"access_token": "opaque-test-token", "token_type": "Bearer", "expires_in": 300,
                            "scope": "patient/Observation.rs patient/Condition.rs",
                            "subject": f"cds-service:{fake.base.split('//')[1]}", "patient": "onc-01"}
            assert minted[-1][:3] == ("patient/Observation.rs patient/Condition.rs", "onc-01", auth["subject"])
            pre = body["prefetch"]
            # role (unsatisfiable token) and bad (server error) are omitted; ghost (no such patient) is null
            assert set(pre) == {"patient", "anc", "conditions", "user", "ghost"}
            assert pre["ghost"] is None
            assert pre["patient"]["resourceType"] == "Patient" and pre["patient"]["id"] == "onc-01"
            assert pre["user"]["id"] == "sandbox-clinician"
            # _count=2 pages are followed: every ANC result arrives, in one searchset Bundle
            assert pre["anc"]["type"] == "searchset"
            assert pre["anc"]["total"] == len(pre["anc"]["entry"]) == len(cohort.LAB_DAYS)
            assert {e["resource"]["code"]["coding"][0]["code"] for e in pre["anc"]["entry"]} == {"751-8"}
            assert call.prefetch_keys == sorted(pre)

            card_ = call.cards[0]
            applied = await client.apply_actions(card_["suggestions"][0]["actions"])
            assert applied.ok, applied.message
            sr = (await f.get("ServiceRequest", params={"patient": "onc-01", "status": "draft"})).json()
            assert sr["total"] == 1
            sr_id = sr["entry"][0]["resource"]["id"]
            task = (await f.get("Task", params={"focus": f"ServiceRequest/{sr_id}"})).json()
            assert task["total"] == 1  # urn:uuid reference between the two actions was resolved

            fb = await client.feedback(svc, card_["uuid"], "accepted",
                                       accepted_suggestions=[card_["suggestions"][0]["uuid"]])
            assert fb.ok, fb.message
            fb2 = await client.feedback(svc, card_["uuid"], "overridden", override_reason=card_["overrideReasons"][1],
                                        user_comment="  walks daily ")
            assert fb2.ok
            item, item2 = fake.feedback[-2:]
            assert item["card"] == card_["uuid"] and item["outcome"] == "accepted"
            assert item["acceptedSuggestions"] == [{"id": "a5a0c0de-0000-4000-8000-000000000001"}]
            assert item["outcomeTimestamp"].endswith("Z")
            assert item2["overrideReason"] == {"reason": card_["overrideReasons"][1], "userComment": "walks daily"}
            assert "acceptedSuggestions" not in item2

    asyncio.run(run())
    assert fake.jwt_errors == []
    assert len(set(fake.jtis)) == len(fake.jtis) >= 4
    auds = {c["aud"] for c in fake.claims}
    assert {f"{fake.base}/cds-services", f"{fake.base}/cds-services/exercise",
            f"{fake.base}/cds-services/exercise/feedback"} <= auds


def test_service_errors_are_reported_not_raised(key: ECKey, fake: FakeCds, fhir: Any) -> None:
    async def run() -> None:
        async with fhir_http(fhir) as f, make_client(key, f, timeout=0.5) as client:
            chart = CdsService(base=fake.base, id="chart", hook="patient-view", title="c", description="")
            res = await client.call(chart, {"userId": "Practitioner/sandbox-clinician", "patientId": "onc-01"})
            assert res.status == 500 and res.error == "HTTP 500: fake outage" and res.cards == []
            assert res.elapsed_ms >= 0

            missing = CdsService(base=fake.base, id="nope", hook="patient-view", title="n", description="")
            res = await client.call(missing, {"userId": "Practitioner/x", "patientId": "onc-01"})
            assert res.status == 404 and res.error.startswith("HTTP 404")

            gone = CdsService(base=f"http://127.0.0.1:{free_port()}", id="x", hook="patient-view", title="g",
                              description="")
            res = await client.call(gone, {"userId": "Practitioner/x", "patientId": "onc-01"})
            assert res.status is None and "could not reach" in res.error

            disc = await client.discover(f"http://127.0.0.1:{free_port()}")
            assert disc.services == [] and "could not reach" in disc.error
            disc = await client.discover("ftp://example.org/cds-services")
            assert disc.error == "not an http(s) URL"

            fake.slow_seconds = 2
            try:
                svc = (await client.discover(fake.base)).services[0]
                res = await client.call(svc, {"userId": "Practitioner/x", "patientId": "onc-01", "encounterId": "e"})
                assert res.error == "timed out after 0.5 s" and res.cards == []
            finally:
                fake.slow_seconds = 0

            fb = await client.feedback(missing, "card-1", "accepted")
            assert not fb.ok and "404" in fb.message
            assert not (await client.feedback(chart, "c", "maybe")).ok

    asyncio.run(run())


def test_a_refused_transaction_changes_nothing(key: ECKey, fhir: Any) -> None:
    async def run() -> None:
        async with fhir_http(fhir) as f, make_client(key, f) as client:
            before = (await f.get("ServiceRequest", params={"patient": "onc-02"})).json()["total"]
            actions = [
                {"type": "create", "description": "ok", "resource": {
                    "resourceType": "ServiceRequest", "status": "draft", "intent": "order",
                    "subject": {"reference": "Patient/onc-02"}}},
                {"type": "create", "description": "invalid", "resource": {
                    "resourceType": "Observation", "status": "final", "code": {"text": "x"}, "bogus": 1}},
            ]
            res = await client.apply_actions(actions)
            assert not res.ok and res.status and res.status >= 400
            assert "refused" in res.message
            assert (await f.get("ServiceRequest", params={"patient": "onc-02"})).json()["total"] == before
            bad = await client.apply_actions([{"type": "explode", "description": "?"}])
            assert not bad.ok and "unknown type" in bad.message

    asyncio.run(run())


def test_actions_to_transaction() -> None:
    b = actions_to_transaction([
        {"type": "create", "description": "c", "resource": {"resourceType": "Goal", "id": DRAFT_SR_ID}},
        {"type": "create", "description": "c", "resource": {"resourceType": "Goal", "id": "not-a-uuid"}},
        {"type": "update", "description": "u", "resource": {"resourceType": "Task", "id": "t1", "status": "x"}},
        {"type": "delete", "description": "d", "resourceId": ["ServiceRequest/1", "Task/2"]},
    ])
    e = b["entry"]
    assert e[0]["fullUrl"] == f"urn:uuid:{DRAFT_SR_ID}" and "id" not in e[0]["resource"]
    assert e[0]["request"] == {"method": "POST", "url": "Goal"}
    assert e[1]["fullUrl"].startswith("urn:uuid:") and e[1]["fullUrl"] != "urn:uuid:not-a-uuid"
    assert e[2]["request"] == {"method": "PUT", "url": "Task/t1"}
    assert [x["request"] for x in e[3:]] == [{"method": "DELETE", "url": "ServiceRequest/1"},
                                              {"method": "DELETE", "url": "Task/2"}]
    for bad in ([{"type": "update", "description": "u", "resource": {"resourceType": "Task"}}],
                [{"type": "delete", "description": "d", "resourceId": 7}],
                [{"type": "create", "description": "c"}]):
        with pytest.raises(ValueError):
            actions_to_transaction(bad)


def test_prefetch_templates_and_scopes() -> None:
    ctx = {"userId": "PractitionerRole/r1", "patientId": "p1", "encounterId": "e1"}
    r = CdsClient.render_template
    assert r("Observation?patient={{context.patientId}}&encounter={{ context.encounterId }}", ctx) == \
        "Observation?patient=p1&encounter=e1"
    assert r("PractitionerRole/{{userPractitionerRoleId}}", ctx) == "PractitionerRole/r1"
    assert r("Practitioner/{{userPractitionerId}}", ctx) is None
    assert r("Patient/{{context.unknown}}", ctx) is None
    assert r("Patient/{{context.patientId}}", {"patientId": "p1"}) == "Patient/p1"

    client = CdsClient(public_url="http://ehr", fhir_base="http://ehr/sandbox/fhir",
                       signing_key=ECKey.generate_key("P-384", private=True), fhir=httpx.AsyncClient())
    svc = CdsService(base="http://ehr", id="s", hook="patient-view", title="", description="",
                     prefetch={"a": "Patient/{{context.patientId}}", "b": "Observation?patient=x",
                               "c": "Observation?code=y"})
    assert client.requested_scopes(svc) == "patient/Patient.rs patient/Observation.rs"
    assert client.client_id_for(svc) == "onco-exercise"
    bare = CdsService(base="http://other", id="s", hook="patient-view", title="", description="")
    assert client.requested_scopes(bare) == "patient/*.rs"
    assert client.client_id_for(bare) == "cds-service:other"
    v1 = CdsService(base="http://o", id="s", hook="h", title="", description="",
                    usage_requirements="Grant user/Observation.read and patient/Condition.read please")
    assert client.requested_scopes(v1) == "patient/Observation.read patient/Condition.read"


def test_card_problem() -> None:
    good = card("p1")
    assert card_problem(good) is None
    assert card_problem({**good, "summary": ""}) == "no summary"
    assert card_problem({**good, "indicator": "hard-stop"})
    assert card_problem({**good, "source": {}}) == "no source.label"
    assert card_problem({**good, "links": {}}) == "links is not a list"
    assert card_problem("x") == "not an object"
