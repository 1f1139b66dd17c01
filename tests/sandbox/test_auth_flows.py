"""The sandbox SMART authorization server and the FHIR guard, over real HTTP with real keys.

One sandbox for the module (its own data dir; the cohort loader is skipped: these tests write the few resources
they need). Browsers are simulated with httpx: follow the authorize redirect, pick patient/practitioner, get code.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
import uuid
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwk, jwt

from service.sandbox import setup as sandbox_setup
from service.sandbox.auth_tokens import issue_access_token, issue_id_token
from tests.conftest import running_sandbox

PATIENT = "auth-p1"
OTHER = "auth-p2"


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        async def no_cohort(*_: Any) -> None:
            return None

        mp.setattr(sandbox_setup, "_load_cohort", no_cohort)
        with running_sandbox(tmp_path_factory.mktemp("sandbox-auth")) as (url, app):
            rt = app.state.sandbox
            admin, _ = issue_access_token(rt, scope="user/*.cruds", client_id="test-admin")
            with httpx.Client(base_url=url, timeout=20, headers={"Authorization": f"Bearer {admin}"}) as c:
                _seed(c)
            yield {"url": url, "app": app, "rt": rt, "fhir": f"{url}/sandbox/fhir",
                   "redirect": f"{url}/smart/callback", "admin": admin}


def _seed(c: httpx.Client) -> None:
    def put(res: dict[str, Any]) -> None:
        r = c.put(f"/sandbox/fhir/{res['resourceType']}/{res['id']}", json=res)
        assert r.status_code in (200, 201), r.text

    put({"resourceType": "Practitioner", "id": "sandbox-clinician", "name": [{"family": "Clinician", "given": ["Sam"]}]})
    put({"resourceType": "Practitioner", "id": "dr-two", "name": [{"family": "Second", "given": ["Dana"]}]})
    for pid, family in ((PATIENT, "Alpha"), (OTHER, "Beta")):
        put({"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": ["Test"]}],
             "gender": "female", "birthDate": "1960-01-01"})
        put({"resourceType": "Encounter", "id": f"enc-{pid}", "status": "in-progress",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "subject": {"reference": f"Patient/{pid}"}})
        put({"resourceType": "Observation", "id": f"obs-{pid}", "status": "final",
             "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
             "subject": {"reference": f"Patient/{pid}"}, "performer": [{"reference": "Practitioner/dr-two"}],
             "valueQuantity": {"value": 70, "unit": "/min"}})
        put({"resourceType": "Condition", "id": f"cond-{pid}",
             "code": {"text": "Breast cancer"}, "subject": {"reference": f"Patient/{pid}"}})


# -- helpers ------------------------------------------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def client(sb: dict[str, Any]) -> httpx.Client:
    return httpx.Client(base_url=sb["url"], timeout=20, follow_redirects=False)


def authorize_params(sb: dict[str, Any], challenge: str | None, scope: str, launch: str | None = None,
                     client_id: str = "onco-exercise", **extra: str) -> dict[str, str]:
    p = {"response_type": "code", "client_id": client_id, "redirect_uri": sb["redirect"], "scope": scope,
         "state": secrets.token_urlsafe(16), "aud": sb["fhir"]}
    if challenge is not None:
        p.update(code_challenge=challenge, code_challenge_method="S256")
    if launch:
        p["launch"] = launch
    p.update(extra)
    return p


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def new_launch(c: httpx.Client, **body: Any) -> str:
    r = c.post("/sandbox/auth/launch", json={"patient": PATIENT, "encounter": f"enc-{PATIENT}", **body})
    assert r.status_code == 201, r.text
    return r.json()["launch"]


def ehr_code(sb: dict[str, Any], c: httpx.Client, scope: str, **launch_body: Any) -> tuple[str, str]:
    """(code, verifier) from an EHR launch."""
    verifier, challenge = pkce()
    launch = new_launch(c, **launch_body)
    params = authorize_params(sb, challenge, scope, launch)
    r = c.get("/sandbox/auth/authorize", params=params)
    assert r.status_code == 302, r.text
    q = query_of(r.headers["location"])
    assert r.headers["location"].startswith(sb["redirect"] + "?")
    assert q["state"] == params["state"]
    return q["code"], verifier


def exchange(sb: dict[str, Any], c: httpx.Client, code: str, verifier: str | None, client_id: str = "onco-exercise",
             redirect_uri: str | None = None, **extra: str) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri or sb["redirect"],
            "client_id": client_id, **extra}
    if verifier is not None:
        data["code_verifier"] = verifier
    return c.post("/sandbox/auth/token", data=data)


def ehr_token(sb: dict[str, Any], scope: str, **launch_body: Any) -> dict[str, Any]:
    with client(sb) as c:
        code, verifier = ehr_code(sb, c, scope, **launch_body)
        r = exchange(sb, c, code, verifier)
        assert r.status_code == 200, r.text
        return r.json()


def fhir_get(sb: dict[str, Any], token: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{sb['fhir']}/{path}", params=params, headers={"Authorization": f"Bearer {token}"},
                     timeout=20)


def assertion(sb: dict[str, Any], key: jwk.Key, alg: str, client_id: str, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": sb["rt"].token_endpoint, "iat": now, "exp": now + 240,
              "jti": str(uuid.uuid4())}
    claims.update(overrides.pop("claims", {}))
    header = {"alg": alg, "kid": key.kid, "typ": "JWT", **overrides}
    return jwt.encode(header, claims, key, algorithms=[alg])


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


# -- discovery ----------------------------------------------------------------------------------------------


def test_smart_configuration_and_openid_discovery(sb: dict[str, Any]) -> None:
    r = httpx.get(f"{sb['fhir']}/.well-known/smart-configuration")
    assert r.status_code == 200
    conf = r.json()
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert conf["authorization_endpoint"] == f"{sb['url']}/sandbox/auth/authorize"
    assert conf["token_endpoint"] == f"{sb['url']}/sandbox/auth/token"
    assert {"authorization_code", "refresh_token"} <= set(conf["grant_types_supported"])
    for cap in ("launch-ehr", "launch-standalone", "client-public", "client-confidential-asymmetric",
                "context-ehr-patient", "context-ehr-encounter", "context-standalone-patient", "permission-v1",
                "permission-v2", "permission-offline", "sso-openid-connect", "authorize-post"):
        assert cap in conf["capabilities"]
    oidc = httpx.get(f"{conf['issuer']}/.well-known/openid-configuration").json()
    assert oidc["issuer"] == conf["issuer"] and oidc["jwks_uri"] == conf["jwks_uri"]
    assert "RS256" in oidc["id_token_signing_alg_values_supported"]
    keys = httpx.get(conf["jwks_uri"]).json()["keys"]
    assert keys and all("d" not in k for k in keys)

    cap = httpx.get(f"{sb['fhir']}/metadata").json()  # open, with the oauth-uris extension
    ext = cap["rest"][0]["security"]["extension"][0]
    uris = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert uris["authorize"] == conf["authorization_endpoint"] and uris["token"] == conf["token_endpoint"]
    assert any(r["type"] == "Goal" for r in cap["rest"][0]["resource"])


# -- EHR and standalone launch ------------------------------------------------------------------------------


def test_ehr_launch_full_flow_with_context_and_id_token(sb: dict[str, Any]) -> None:
    tok = ehr_token(sb, "launch openid fhirUser patient/*.rs offline_access",
                    appContext='{"prescriptionDraft":"d-1"}', practitioner="Practitioner/dr-two")
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == 300
    assert tok["patient"] == PATIENT and tok["encounter"] == f"enc-{PATIENT}"
    assert tok["appContext"] == '{"prescriptionDraft":"d-1"}'
    assert tok["need_patient_banner"] is True
    assert tok["scope"].split() == ["launch", "openid", "fhirUser", "patient/*.rs", "offline_access"]
    assert tok["refresh_token"]

    conf = httpx.get(f"{sb['fhir']}/.well-known/smart-configuration").json()
    keyset = jwk.KeySet.import_key_set(httpx.get(conf["jwks_uri"]).json())
    idt = jwt.decode(tok["id_token"], keyset, algorithms=["RS256"])
    assert idt.header["alg"] == "RS256"
    jwt.JWTClaimsRegistry(iss={"essential": True, "value": conf["issuer"]},
                          aud={"essential": True, "value": "onco-exercise"},
                          exp={"essential": True}).validate(idt.claims)
    assert idt.claims["fhirUser"] == f"{sb['fhir']}/Practitioner/dr-two"

    r = fhir_get(sb, tok["access_token"], f"Patient/{PATIENT}")
    assert r.status_code == 200 and r.json()["id"] == PATIENT
    r = fhir_get(sb, tok["access_token"], "Observation", patient=PATIENT)
    assert r.status_code == 200 and r.json()["total"] == 1


def test_standalone_launch_picker_and_authorize_post(sb: dict[str, Any]) -> None:
    verifier, challenge = pkce()
    params = authorize_params(sb, challenge, "launch/patient openid fhirUser patient/*.rs")
    with client(sb) as c:
        r = c.post("/sandbox/auth/authorize", data=params)  # authorize-post
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert f'value="{OTHER}"' in r.text and 'value="dr-two"' in r.text
        txn = re.search(r'name="txn" value="([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
        r = c.post("/sandbox/auth/authorize/decision",
                   data={"txn": txn, "patient": OTHER, "practitioner": "dr-two", "action": "approve"})
        assert r.status_code == 302, r.text
        q = query_of(r.headers["location"])
        assert q["state"] == params["state"]
        tok = exchange(sb, c, q["code"], verifier).json()
        assert tok["patient"] == OTHER and "encounter" not in tok and "appContext" not in tok
        assert "refresh_token" not in tok  # neither offline_access nor online_access asked
        claims = jwt.decode(tok["id_token"], jwk.KeySet.import_key_set(sb["rt"].keys.auth_jwks()),
                            algorithms=["RS256"]).claims
        assert claims["fhirUser"].endswith("/Practitioner/dr-two")
        # the picker's transaction is single use
        r = c.post("/sandbox/auth/authorize/decision", data={"txn": txn, "patient": OTHER, "action": "approve"})
        assert r.status_code == 400 and "location" not in r.headers


def test_standalone_deny_redirects_access_denied(sb: dict[str, Any]) -> None:
    _, challenge = pkce()
    params = authorize_params(sb, challenge, "launch/patient patient/*.rs")
    with client(sb) as c:
        r = c.get("/sandbox/auth/authorize", params=params)
        txn = re.search(r'name="txn" value="([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
        r = c.post("/sandbox/auth/authorize/decision", data={"txn": txn, "action": "deny"})
        q = query_of(r.headers["location"])
        assert r.status_code == 302 and q["error"] == "access_denied" and q["state"] == params["state"]


# -- refusals at the authorization endpoint ------------------------------------------------------------------


@pytest.mark.parametrize("pkce_params, needle", [
    ({}, "PKCE is required"),
    ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "S256"),
    ({"code_challenge": "x" * 43}, "S256"),
])
def test_authorize_refuses_missing_or_plain_pkce(sb: dict[str, Any], pkce_params: dict[str, str],
                                                 needle: str) -> None:
    with client(sb) as c:
        params = authorize_params(sb, None, "launch patient/*.rs", new_launch(c), **pkce_params)
        r = c.get("/sandbox/auth/authorize", params=params)
        assert r.status_code == 302
        q = query_of(r.headers["location"])
        assert q["error"] == "invalid_request" and needle in q["error_description"]
        assert q["state"] == params["state"] and "code" not in q


def test_authorize_refuses_wrong_aud_and_unknown_launch(sb: dict[str, Any]) -> None:
    _, challenge = pkce()
    with client(sb) as c:
        params = authorize_params(sb, challenge, "launch patient/*.rs", new_launch(c),
                                  aud="https://elsewhere.example/fhir")
        q = query_of(c.get("/sandbox/auth/authorize", params=params).headers["location"])
        assert q["error"] == "invalid_request" and "aud" in q["error_description"]
        params = authorize_params(sb, challenge, "launch patient/*.rs", "not-a-launch")
        q = query_of(c.get("/sandbox/auth/authorize", params=params).headers["location"])
        assert q["error"] == "invalid_request" and "launch" in q["error_description"]


def test_authorize_never_redirects_to_unregistered_uri_or_for_unknown_client(sb: dict[str, Any]) -> None:
    _, challenge = pkce()
    with client(sb) as c:
        launch = new_launch(c)
        for params in (
            authorize_params(sb, challenge, "launch patient/*.rs", launch, redirect_uri="https://evil.example/cb"),
            authorize_params(sb, challenge, "launch patient/*.rs", launch,
                             redirect_uri=sb["redirect"] + "/extra"),  # exact match only
            authorize_params(sb, challenge, "launch patient/*.rs", launch, client_id="nobody"),
        ):
            r = c.get("/sandbox/auth/authorize", params=params)
            assert r.status_code == 400 and "location" not in r.headers
            assert "text/html" in r.headers["content-type"]


# -- refusals at the token endpoint --------------------------------------------------------------------------


def test_token_refuses_wrong_or_missing_verifier(sb: dict[str, Any]) -> None:
    with client(sb) as c:
        code, _ = ehr_code(sb, c, "launch patient/*.rs")
        r = exchange(sb, c, code, pkce()[0])
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        assert r.json()["error_description"]
        code, _ = ehr_code(sb, c, "launch patient/*.rs")
        r = exchange(sb, c, code, None)
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_code_is_single_use_and_bound_to_redirect_uri(sb: dict[str, Any]) -> None:
    with client(sb) as c:
        code, verifier = ehr_code(sb, c, "launch patient/*.rs")
        assert exchange(sb, c, code, verifier).status_code == 200
        r = exchange(sb, c, code, verifier)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        code, verifier = ehr_code(sb, c, "launch patient/*.rs")
        r = exchange(sb, c, code, verifier, redirect_uri=sb["url"] + "/other/callback")
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_token_refuses_other_client_and_bad_grant_type(sb: dict[str, Any]) -> None:
    with client(sb) as c:
        code, verifier = ehr_code(sb, c, "launch patient/*.rs")
        r = exchange(sb, c, code, verifier, client_id="onco-exercise-public")  # a code is bound to its client
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        r = c.post("/sandbox/auth/token", data={"grant_type": "password", "username": "a", "password": "b"})
        assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
        r = c.post("/sandbox/auth/token", json={"grant_type": "authorization_code"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"


# -- refresh ------------------------------------------------------------------------------------------------


def test_refresh_token_grant(sb: dict[str, Any]) -> None:
    tok = ehr_token(sb, "launch openid fhirUser patient/*.rs online_access")
    with client(sb) as c:
        r = c.post("/sandbox/auth/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"],
                                                "client_id": "onco-exercise"})
        assert r.status_code == 200, r.text
        new = r.json()
        assert new["access_token"] != tok["access_token"] and new["patient"] == PATIENT
        assert new["scope"] == tok["scope"] and "refresh_token" not in new  # keep using the old one
        assert fhir_get(sb, new["access_token"], f"Patient/{PATIENT}").status_code == 200
        # narrower scope allowed, wider refused
        r = c.post("/sandbox/auth/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"],
                                                "client_id": "onco-exercise", "scope": "launch patient/*.rs"})
        assert r.status_code == 200 and r.json()["scope"] == "launch patient/*.rs"
        r = c.post("/sandbox/auth/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"],
                                                "client_id": "onco-exercise", "scope": "user/*.cruds"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
        r = c.post("/sandbox/auth/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"],
                                                "client_id": "onco-exercise-public"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        r = c.post("/sandbox/auth/token", data={"grant_type": "refresh_token", "refresh_token": "nope",
                                                "client_id": "onco-exercise"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


# -- the FHIR guard -----------------------------------------------------------------------------------------


def test_fhir_requires_a_valid_token(sb: dict[str, Any]) -> None:
    rt = sb["rt"]
    r = httpx.get(f"{sb['fhir']}/Patient/{PATIENT}")
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["www-authenticate"].startswith("Bearer")
    expired, _ = issue_access_token(rt, scope="user/*.rs", client_id="x", lifetime=-60)
    r = fhir_get(sb, expired, f"Patient/{PATIENT}")
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r.json()["issue"][0]["code"] == "expired"
    id_token = issue_id_token(rt, client_id="onco-exercise", fhir_user="Practitioner/dr-two")
    assert fhir_get(sb, id_token, f"Patient/{PATIENT}").status_code == 401  # an id_token is not an access token
    foreign = jwk.RSAKey.generate_key(2048, parameters={"kid": rt.keys.auth.kid})
    forged = jwt.encode({"alg": "RS256", "kid": rt.keys.auth.kid, "typ": "at+jwt"},
                        {"iss": rt.issuer, "aud": rt.fhir_base, "exp": int(time.time()) + 60, "scope": "user/*.rs"},
                        foreign, algorithms=["RS256"])
    assert fhir_get(sb, forged, f"Patient/{PATIENT}").status_code == 401
    assert fhir_get(sb, "garbage", f"Patient/{PATIENT}").status_code == 401


def test_fhir_refuses_requests_outside_the_granted_scopes(sb: dict[str, Any]) -> None:
    tok = ehr_token(sb, "launch patient/Observation.rs patient/Patient.r")["access_token"]
    assert fhir_get(sb, tok, "Observation", patient=PATIENT).status_code == 200
    assert fhir_get(sb, tok, f"Patient/{PATIENT}").status_code == 200
    for path, params in (("Condition", {"patient": PATIENT}),          # type not granted
                         ("Observation", {"patient": OTHER}),          # another patient
                         ("Observation", {}),                          # search not limited to the patient
                         (f"Patient/{OTHER}", {}),                     # another patient's record
                         (f"Observation/obs-{OTHER}", {}),             # read of another patient's data
                         ("Patient", {"_id": PATIENT})):               # Patient search not granted (only .r)
        r = fhir_get(sb, tok, path, **params)
        assert r.status_code == 403, (path, params, r.text)
        assert r.json()["resourceType"] == "OperationOutcome" and r.json()["issue"][0]["code"] == "forbidden"
    r = httpx.post(f"{sb['fhir']}/Observation", headers={"Authorization": f"Bearer {tok}"},
                   json={"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "subject": {"reference": f"Patient/{PATIENT}"}})
    assert r.status_code == 403


def test_patient_scope_compartment_on_reads_and_writes(sb: dict[str, Any]) -> None:
    tok = ehr_token(sb, "launch patient/*.cruds")["access_token"]
    h = {"Authorization": f"Bearer {tok}"}
    assert fhir_get(sb, tok, f"Observation/obs-{PATIENT}").status_code == 200
    assert fhir_get(sb, tok, f"Observation/obs-{OTHER}").status_code == 403
    assert fhir_get(sb, tok, "Practitioner/dr-two").status_code == 200  # outside any patient's compartment
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": f"Patient/{OTHER}"}}
    assert httpx.post(f"{sb['fhir']}/Observation", headers=h, json=obs).status_code == 403
    obs["subject"]["reference"] = f"Patient/{PATIENT}"
    assert httpx.post(f"{sb['fhir']}/Observation", headers=h, json=obs).status_code == 201
    assert httpx.delete(f"{sb['fhir']}/Condition/cond-{OTHER}", headers=h).status_code == 403


def test_transaction_entries_are_checked_one_by_one(sb: dict[str, Any]) -> None:
    tok = ehr_token(sb, "launch patient/*.rs patient/ServiceRequest.cu patient/CarePlan.cu",
                    readOnlyTypes=["CarePlan"])
    assert tok["scope"].split() == ["launch", "patient/*.rs", "patient/ServiceRequest.cu"]  # CarePlan.cu dropped
    ident = f"urn:test:{uuid.uuid4()}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:sr", "resource": {
            "resourceType": "ServiceRequest", "status": "draft", "intent": "order", "code": {"text": "exercise"},
            "identifier": [{"system": ident, "value": "1"}], "subject": {"reference": f"Patient/{PATIENT}"}},
         "request": {"method": "POST", "url": "ServiceRequest"}},
        {"fullUrl": "urn:uuid:cp", "resource": {
            "resourceType": "CarePlan", "status": "draft", "intent": "plan",
            "subject": {"reference": f"Patient/{PATIENT}"}}, "request": {"method": "POST", "url": "CarePlan"}},
    ]}
    h = {"Authorization": f"Bearer {tok['access_token']}"}
    r = httpx.post(sb["fhir"], headers=h, json=bundle)
    assert r.status_code == 403 and "entry 1" in r.json()["issue"][0]["diagnostics"]
    found = fhir_get(sb, sb["admin"], "ServiceRequest", identifier=f"{ident}|1").json()
    assert found["total"] == 0  # nothing half-written
    bundle["entry"] = bundle["entry"][:1]
    assert httpx.post(sb["fhir"], headers=h, json=bundle).status_code == 200


def test_includes_of_types_not_granted_are_removed(sb: dict[str, Any]) -> None:
    tok = ehr_token(sb, "launch patient/Observation.rs")["access_token"]
    r = fhir_get(sb, tok, "Observation", patient=PATIENT, _include="Observation:performer")
    assert r.status_code == 200
    types = [e["resource"]["resourceType"] for e in r.json()["entry"]]
    assert set(types) == {"Observation"}
    r = fhir_get(sb, sb["admin"], "Observation", patient=PATIENT, _include="Observation:performer")
    assert "Practitioner" in [e["resource"]["resourceType"] for e in r.json()["entry"]]


def test_internal_tokens_from_mint_access_token(sb: dict[str, Any]) -> None:
    from service.sandbox.auth_server import mint_access_token

    tok = mint_access_token("patient/*.read", patient=PATIENT, subject="Practitioner/sandbox-clinician",
                            lifetime=60, app=sb["app"])
    assert fhir_get(sb, tok, "Condition", patient=PATIENT).status_code == 200
    assert fhir_get(sb, tok, "Condition", patient=OTHER).status_code == 403
    assert sb["rt"].auth.mint_access_token("user/Patient.rs")  # bound variant used by the EHR screen


# -- confidential clients (private_key_jwt) -------------------------------------------------------------------


def register(sb: dict[str, Any], **body: Any) -> str:
    r = httpx.post(f"{sb['url']}/sandbox/auth/register",
                   json={"redirect_uris": [sb["redirect"]], "token_endpoint_auth_method": "private_key_jwt", **body})
    assert r.status_code == 201, r.text
    return r.json()["client_id"]


def test_private_key_jwt_rs384_inline_jwks(sb: dict[str, Any]) -> None:
    key = jwk.RSAKey.generate_key(2048, auto_kid=True)  # no "alg" in the JWK: the server must refuse RS256
    cid = register(sb, jwks={"keys": [key.as_dict(private=False)]})
    with client(sb) as c:
        verifier, challenge = pkce()
        r = c.get("/sandbox/auth/authorize", params=authorize_params(sb, challenge, "launch patient/*.rs",
                                                                      new_launch(c), client_id=cid))
        code = query_of(r.headers["location"])["code"]
        good = assertion(sb, key, "RS384", cid)
        r = exchange(sb, c, code, verifier, client_id=cid, client_assertion_type=ASSERTION_TYPE,
                     client_assertion=good)
        assert r.status_code == 200, r.text
        # the same assertion again: jti replay
        code, verifier = _code_for(sb, c, cid)
        r = exchange(sb, c, code, verifier, client_id=cid, client_assertion_type=ASSERTION_TYPE, client_assertion=good)
        assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"
        bad_cases = [
            assertion(sb, key, "RS384", cid, claims={"exp": int(time.time()) + 3600}),       # exp > 5 min
            assertion(sb, key, "RS384", cid, claims={"aud": sb["fhir"]}),                    # wrong aud
            assertion(sb, jwk.RSAKey.generate_key(2048, parameters={"kid": key.kid}), "RS384", cid),  # wrong key
            assertion(sb, key, "RS256", cid),                                                # alg not allowed
            assertion(sb, key, "RS384", cid, jku="https://evil.example/jwks.json"),          # unregistered jku
        ]
        for bad in bad_cases:
            code, verifier = _code_for(sb, c, cid)
            r = exchange(sb, c, code, verifier, client_id=cid, client_assertion_type=ASSERTION_TYPE,
                         client_assertion=bad)
            assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client", r.text
        code, verifier = _code_for(sb, c, cid)
        r = exchange(sb, c, code, verifier, client_id=cid)  # no assertion at all
        assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"


def _code_for(sb: dict[str, Any], c: httpx.Client, cid: str) -> tuple[str, str]:
    verifier, challenge = pkce()
    r = c.get("/sandbox/auth/authorize", params=authorize_params(sb, challenge, "launch patient/*.rs",
                                                                  new_launch(c), client_id=cid))
    return query_of(r.headers["location"])["code"], verifier


def test_private_key_jwt_es384_via_jwks_uri(sb: dict[str, Any]) -> None:
    # the client's keys are fetched from a JWKS URL: the sandbox CDS client's (we hold its private key here)
    key = sb["rt"].keys.cds
    jwks_uri = f"{sb['url']}/sandbox/.well-known/jwks.json"
    cid = register(sb, jwks_uri=jwks_uri)
    with client(sb) as c:
        code, verifier = _code_for(sb, c, cid)
        r = exchange(sb, c, code, verifier, client_id=cid, client_assertion_type=ASSERTION_TYPE,
                     client_assertion=assertion(sb, key, "ES384", cid, jku=jwks_uri))
        assert r.status_code == 200, r.text


def test_registration_refuses_bad_metadata(sb: dict[str, Any]) -> None:
    for body in ({"redirect_uris": []}, {"redirect_uris": ["not a url"]},
                 {"redirect_uris": [sb["redirect"]], "token_endpoint_auth_method": "private_key_jwt"},
                 {"redirect_uris": [sb["redirect"]], "token_endpoint_auth_method": "client_secret_basic"},
                 {"redirect_uris": [sb["redirect"]], "client_id": "onco-exercise"}):
        r = httpx.post(f"{sb['url']}/sandbox/auth/register", json=body)
        assert r.status_code == 400 and r.json()["error"] == "invalid_client_metadata"


def test_launch_endpoint_validates_input(sb: dict[str, Any]) -> None:
    for body in ({}, {"patient": ""}, {"patient": PATIENT, "readOnlyTypes": "CarePlan"}):
        r = httpx.post(f"{sb['url']}/sandbox/auth/launch", json=body)
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"
