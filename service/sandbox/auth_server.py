"""The sandbox SMART authorization server at `{public_url}/sandbox/auth/...` (FastAPI glue over auth_oauth).

Endpoints: `authorize` (GET and POST; EHR launch issues the code at once, standalone launch shows a patient
picker and a practitioner "login"), `token` (authorization_code with PKCE S256, refresh_token), `launch`
(POST JSON: bind a launch id to patient/encounter/practitioner/appContext), `register` (POST JSON: add a client
at run time, RFC 7591 subset), `jwks`, `.well-known/openid-configuration`, `smart-style.json`.
Discovery lives with the FHIR server: `/sandbox/fhir/.well-known/smart-configuration` (served by auth_guard).

Python API for other sandbox parts: `create_launch`, `mint_access_token`, `cds_client_key`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlencode, urlsplit, urlunsplit

from authlib.common.security import is_secure_transport
from authlib.oauth2.rfc6749.errors import OAuth2Error
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from joserfc import jwk

from service.sandbox.auth_oauth import (DEFAULT_PRACTITIONER, LAUNCH_SECONDS, NS_CLIENT, NS_LAUNCH, NS_PENDING,
                                        FormRequest, SandboxClient, SandboxOAuthServer, new_launch_id,
                                        run_authlib)
from service.sandbox.auth_scopes import known_scope
from service.sandbox.auth_tokens import issue_access_token

log = logging.getLogger("onco.sandbox.auth")

TEMPLATES = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                        autoescape=select_autoescape(["html"]))
PENDING_SECONDS = 600
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

SCOPES_SUPPORTED = [
    "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter", "offline_access",
    "online_access", "patient/*.rs", "patient/*.cruds", "user/*.rs", "user/*.cruds", "patient/*.read",
    "patient/*.write", "user/*.read", "user/*.write", "patient/*.*", "user/*.*",
]
CAPABILITIES = [
    "launch-ehr", "launch-standalone", "client-public", "client-confidential-asymmetric", "context-ehr-patient",
    "context-ehr-encounter", "context-standalone-patient",
    "context-banner", "context-style", "permission-v1", "permission-v2", "permission-offline",
    "permission-online", "permission-patient", "permission-user", "sso-openid-connect", "authorize-post",
]


class SandboxAuthServer:
    """Per-app auth state: the authlib server and the built-in clients."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.oauth = SandboxOAuthServer(runtime)

    def builtin_clients(self) -> dict[str, SandboxClient]:
        s = self.runtime.settings
        redirect = f"{s.public_url}/smart/callback"
        jwks_uri = f"{s.public_url}/.well-known/jwks.json"
        main = SandboxClient(client_id=s.smart_client_id, redirect_uris=[redirect], name="onco-exercise",
                             auth_method="private_key_jwt" if s.smart_client_auth == "private_key_jwt" else "none",
                             jwks_uri=jwks_uri)
        conf = SandboxClient(client_id=f"{s.smart_client_id}-confidential", redirect_uris=[redirect],
                             name="onco-exercise (confidential, private_key_jwt)", auth_method="private_key_jwt",
                             jwks_uri=jwks_uri)
        pub = SandboxClient(client_id=f"{s.smart_client_id}-public", redirect_uris=[redirect],
                            name="onco-exercise (public)", auth_method="none")
        return {c.client_id: c for c in (main, conf, pub)}

    async def create_launch(self, patient: str, encounter: str | None = None,
                            practitioner: str | None = DEFAULT_PRACTITIONER,
                            app_context: str | dict[str, Any] | None = None, **options: Any) -> str:
        """`create_launch` bound to this sandbox (see the module function)."""
        return await create_launch(patient, encounter, practitioner, app_context, runtime=self.runtime, **options)

    def mint_access_token(self, scope: str, patient: str | None = None, subject: str | None = None,
                          lifetime: int | None = None, **options: Any) -> str:
        """`mint_access_token` bound to this sandbox (see the module function)."""
        return mint_access_token(scope, patient, subject, lifetime, runtime=self.runtime, **options)


# -- Python API -----------------------------------------------------------------------------------------------


def _runtime(app: Any = None) -> Any:
    from service.sandbox.setup import runtime_for

    return runtime_for(app)


async def create_launch(patient: str, encounter: str | None = None, practitioner: str | None = DEFAULT_PRACTITIONER,
                        app_context: str | dict[str, Any] | None = None, *, app: Any = None,
                        read_only_types: Iterable[str] = (), need_patient_banner: bool = True,
                        intent: str | None = None, runtime: Any = None) -> str:
    """A launch id for an EHR launch, bound to the context the app receives with its token.

    `patient`/`encounter`/`practitioner` are ids (a `Type/` prefix is accepted and dropped). `app_context`
    comes from the CDS card's smart link and is returned as `appContext` (a dict is sent as JSON text).
    `read_only_types` (sandbox option) strips write permissions on those types from the granted scope, to
    exercise the app's degraded write-back. `app` picks the sandbox (default: the one running in this process).
    """
    rt = runtime or _runtime(app)
    if isinstance(app_context, dict):
        app_context = json.dumps(app_context, separators=(",", ":"))
    launch = new_launch_id()
    record = {
        "launch": launch,
        "patient": _bare(patient),
        "encounter": _bare(encounter),
        "practitioner": _bare(practitioner) or DEFAULT_PRACTITIONER,
        "app_context": app_context,
        "read_only_types": list(read_only_types),
        "need_patient_banner": need_patient_banner,
        "intent": intent,
    }
    await rt.store.put(NS_LAUNCH, launch, record, ttl=LAUNCH_SECONDS)
    return launch


def mint_access_token(scope: str, patient: str | None = None, subject: str | None = None,
                      lifetime: int | None = None, *, app: Any = None, client_id: str = "sandbox-ehr",
                      runtime: Any = None) -> str:
    """An access token for the sandbox FHIR server, for internal sandbox use (e.g. the EHR screen's
    `fhirAuthorization` for CDS services). `subject` is a reference such as `Practitioner/sandbox-clinician`.
    Pass `app` (or a Request) when several sandboxes run in one process."""
    rt = runtime or _runtime(app)
    token, _ = issue_access_token(rt, scope=scope, client_id=client_id, patient=_bare(patient),
                                  fhir_user=subject if subject and "/" in subject else None,
                                  lifetime=lifetime)
    return token


def cds_client_key(app: Any = None) -> jwk.ECKey:
    """The sandbox CDS client's private ES384 key (kid set); its public half is at /sandbox/.well-known/jwks.json."""
    return _runtime(app).keys.cds


def _bare(ref: str | None) -> str | None:
    if not ref:
        return None
    return ref.rsplit("/", 1)[-1] if "/" in ref else ref


def smart_configuration(rt: Any) -> dict[str, Any]:
    issuer = rt.issuer
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/jwks",
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": rt.token_endpoint,
        "registration_endpoint": f"{issuer}/register",
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": SCOPES_SUPPORTED,
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


def openid_configuration(rt: Any) -> dict[str, Any]:
    conf = smart_configuration(rt)
    return {
        "issuer": rt.issuer,
        "authorization_endpoint": conf["authorization_endpoint"],
        "token_endpoint": conf["token_endpoint"],
        "jwks_uri": conf["jwks_uri"],
        "registration_endpoint": conf["registration_endpoint"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"],
        "token_endpoint_auth_methods_supported": conf["token_endpoint_auth_methods_supported"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": conf["grant_types_supported"],
    }


# -- glue -----------------------------------------------------------------------------------------------------


def _oauth_uri(request: Request) -> str:
    url = str(request.url)
    if is_secure_transport(url):
        return url
    parts = urlsplit(url)  # authlib refuses plain http off loopback; the sandbox may sit behind a proxy
    return urlunsplit(("https", parts.netloc, parts.path, parts.query, ""))


async def _pairs(request: Request) -> list[tuple[str, str]]:
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        ctype = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" not in ctype and "multipart/form-data" not in ctype:
            return pairs
        form = await request.form()
        pairs.extend((k, v) for k, v in form.multi_items() if isinstance(v, str))
    return pairs


def _to_response(result: tuple[int, Any, list[tuple[str, str]]]) -> Response:
    status, body, headers = result
    hdrs = dict(headers)
    if status in (301, 302, 303, 307) and "Location" in hdrs:
        return RedirectResponse(hdrs["Location"], status_code=302, headers=NO_STORE)
    hdrs.update(NO_STORE)
    hdrs.pop("Content-Type", None)
    if isinstance(body, str):
        try:
            body = json.loads(body) if body else {}
        except ValueError:
            body = {"error": "server_error", "error_description": body}
    return JSONResponse(body, status_code=status, headers=hdrs)


def _error_page(status: int, error: str, description: str) -> Response:
    html = TEMPLATES.get_template("auth/error.html").render(error=error, description=description)
    return HTMLResponse(html, status_code=status, headers=NO_STORE)


def _authorize_error(rt: Any, req: FormRequest, exc: OAuth2Error) -> Response:
    """RFC 6749 4.1.2.1: redirect the error only to a registered redirect_uri of a known client."""
    data = req.payload.data
    target = exc.redirect_uri
    if not target and exc.error not in ("invalid_client",):
        client = rt.auth.builtin_clients().get(data.get("client_id") or "")
        if client is None and data.get("client_id"):
            client = getattr(req, "client", None)
        if client is not None and data.get("redirect_uri") and client.check_redirect_uri(data["redirect_uri"]):
            target = data["redirect_uri"]
    if target:
        params = {"error": exc.error, "error_description": exc.description or exc.error}
        if data.get("state"):
            params["state"] = data["state"]
        sep = "&" if urlsplit(target).query else "?"
        return RedirectResponse(f"{target}{sep}{urlencode(params)}", status_code=302, headers=NO_STORE)
    return _error_page(400, exc.error, exc.description or exc.error)


async def _consent_grant(rt: Any, req: FormRequest) -> Any:
    return await run_authlib(rt.auth.oauth.get_consent_grant, req)


async def _issue_code(rt: Any, req: FormRequest, grant: Any, user: dict[str, Any]) -> Response:
    result = await run_authlib(rt.auth.oauth.create_authorization_response, req, user, grant)
    return _to_response(result)


async def _choices(request: Request) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Patients and practitioners from the sandbox FHIR server, for the standalone picker."""
    from service.sandbox.fhir_server import sandbox_fhir_client

    def name(res: dict[str, Any]) -> str:
        for n in res.get("name") or []:
            text = n.get("text") or " ".join([*(n.get("prefix") or []), *(n.get("given") or []), n.get("family", "")])
            if text.strip():
                return text.strip()
        return res.get("id", "")

    patients: list[dict[str, str]] = []
    practitioners: list[dict[str, str]] = []
    async with sandbox_fhir_client(request.app) as fhir:
        for rtype, out in (("Patient", patients), ("Practitioner", practitioners)):
            resp = await fhir.get(rtype, params={"_count": "500"})
            if resp.status_code != 200:
                continue
            for e in resp.json().get("entry") or []:
                res = e.get("resource") or {}
                extra = f"{res.get('gender', '')} {res.get('birthDate', '')}".strip() if rtype == "Patient" else ""
                out.append({"id": res.get("id", ""), "name": name(res), "extra": extra})
    patients.sort(key=lambda p: p["name"])
    practitioners.sort(key=lambda p: (p["id"] != DEFAULT_PRACTITIONER, p["name"]))
    if not any(p["id"] == DEFAULT_PRACTITIONER for p in practitioners):
        practitioners.insert(0, {"id": DEFAULT_PRACTITIONER, "name": "Sandbox clinician", "extra": ""})
    return patients, practitioners


PATIENT_LOGIN = "patient:self"  # the sign-in choice "I am the patient"


def build_router(rt: Any) -> APIRouter:
    router = APIRouter(prefix="/sandbox/auth", tags=["sandbox auth"], include_in_schema=False)

    @router.api_route("/authorize", methods=["GET", "POST"])
    async def authorize(request: Request) -> Response:
        pairs = await _pairs(request)
        req = FormRequest(request.method, _oauth_uri(request), dict(request.headers), pairs)
        try:
            grant = await _consent_grant(rt, req)
        except OAuth2Error as exc:
            return _authorize_error(rt, req, exc)
        data = req.payload.data
        launch_id = data.get("launch")
        if launch_id:
            launch = await rt.store.get(NS_LAUNCH, launch_id)
            if launch is None:  # expired between the check and now
                return _error_page(400, "invalid_request", "unknown or expired launch")
            return await _issue_code(rt, req, grant, {**launch, "launch": launch_id})
        txn = new_launch_id()
        await rt.store.put(NS_PENDING, txn, {"pairs": pairs, "method": request.method}, ttl=PENDING_SECONDS)
        scopes = (data.get("scope") or "").split()
        patients, practitioners = await _choices(request)
        client = req.client
        # a request with patient-level scopes only (no user/ or system/) is a patient-facing app: the patient
        # signs in as themself by default (the sandbox's "patient portal login")
        patient_app = "launch/patient" in scopes and not any(s.startswith(("user/", "system/")) for s in scopes)
        html = TEMPLATES.get_template("auth/authorize.html").render(
            txn=txn, client_name=client.name or client.client_id, client_id=client.client_id,
            patient_login=PATIENT_LOGIN, patient_app=patient_app,
            scopes=[s for s in scopes if known_scope(s)], need_patient="launch/patient" in scopes,
            patients=patients, practitioners=practitioners, action=f"{rt.issuer}/authorize/decision")
        return HTMLResponse(html, headers=NO_STORE)

    @router.post("/authorize/decision")
    async def decision(request: Request) -> Response:
        form = await request.form()
        txn = str(form.get("txn") or "")
        pending = await rt.store.pop(NS_PENDING, txn) if txn else None
        if pending is None:
            return _error_page(400, "invalid_request", "This sign-in page has expired or was already used; "
                                                      "start the launch again from the app.")
        pairs = [tuple(p) for p in pending["pairs"]]
        req = FormRequest(pending["method"], _oauth_uri(request), dict(request.headers), pairs)  # type: ignore[arg-type]
        try:
            grant = await _consent_grant(rt, req)
        except OAuth2Error as exc:
            return _authorize_error(rt, req, exc)
        if form.get("action") != "approve":
            return await _issue_code(rt, req, grant, {})  # authlib turns a missing user into access_denied
        scopes = (req.payload.data.get("scope") or "").split()
        patient = str(form.get("patient") or "") or None
        if "launch/patient" in scopes and not patient:
            return _error_page(400, "invalid_request", "Choose a patient.")
        who = str(form.get("practitioner") or "")
        if who == PATIENT_LOGIN:  # the patient signs in to their own record (a patient-facing app)
            if not patient:
                return _error_page(400, "invalid_request", "Choose who you are.")
            user = {"patient": _bare(patient), "as_patient": True, "need_patient_banner": False}
        else:
            user = {"practitioner": _bare(who) or DEFAULT_PRACTITIONER, "patient": _bare(patient),
                    "need_patient_banner": True}
        return await _issue_code(rt, req, grant, user)

    @router.post("/token")
    async def token(request: Request) -> Response:
        ctype = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" not in ctype:
            return JSONResponse({"error": "invalid_request", "error_description":
                                 "the token request must be application/x-www-form-urlencoded"},
                                status_code=400, headers=NO_STORE)
        pairs = await _pairs(request)
        req = FormRequest("POST", _oauth_uri(request), dict(request.headers), pairs)
        result = await run_authlib(rt.auth.oauth.create_token_response, req)
        return _to_response(result)

    @router.post("/launch")
    async def launch(request: Request) -> Response:
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("patient"), str) or not body["patient"]:
            return JSONResponse({"error": "invalid_request", "error_description":
                                 "JSON body with at least a 'patient' id is required"}, status_code=400)
        ro = body.get("readOnlyTypes") or body.get("read_only_types") or []
        if not isinstance(ro, list) or not all(isinstance(x, str) for x in ro):
            return JSONResponse({"error": "invalid_request", "error_description":
                                 "readOnlyTypes must be a list of resource types"}, status_code=400)
        launch_id = await create_launch(
            body["patient"], body.get("encounter"), body.get("practitioner") or DEFAULT_PRACTITIONER,
            body.get("appContext", body.get("app_context")), app=request.app, read_only_types=ro,
            need_patient_banner=bool(body.get("needPatientBanner", True)), intent=body.get("intent"))
        return JSONResponse({"launch": launch_id, "iss": rt.fhir_base}, status_code=201)

    @router.post("/register")
    async def register(request: Request) -> Response:
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            body = None
        problem = _registration_problem(body)
        if problem:
            return JSONResponse({"error": "invalid_client_metadata", "error_description": problem},
                                status_code=400)
        assert isinstance(body, dict)
        client_id = body.get("client_id") or f"sandbox-{new_launch_id()[:12]}"
        if client_id in rt.auth.builtin_clients():
            return JSONResponse({"error": "invalid_client_metadata",
                                 "error_description": "client_id is reserved"}, status_code=400)
        client = SandboxClient(client_id=client_id, redirect_uris=list(body["redirect_uris"]),
                               auth_method=body.get("token_endpoint_auth_method", "none"),
                               jwks_uri=body.get("jwks_uri"), jwks=body.get("jwks"),
                               name=str(body.get("client_name", "")))
        # Registration never overwrites: taking over a client id would redirect its codes elsewhere. The same
        # registration again is answered as it stands (tests and demos register on every start).
        if not await rt.store.add(NS_CLIENT, client_id, client.to_json()):
            existing = await rt.store.get(NS_CLIENT, client_id) or {}
            same = {k: existing.get(k) for k in ("redirect_uris", "auth_method", "jwks_uri", "jwks")} == \
                {k: client.to_json().get(k) for k in ("redirect_uris", "auth_method", "jwks_uri", "jwks")}
            if not same:
                return JSONResponse({"error": "invalid_client_metadata", "error_description":
                                     "client_id is already registered with other metadata"}, status_code=409)
            return JSONResponse(existing, status_code=200)
        return JSONResponse({**client.to_json(), "client_id_issued_at": int(time.time())}, status_code=201)

    @router.get("/jwks")
    async def jwks() -> JSONResponse:
        return JSONResponse(rt.keys.auth_jwks())

    @router.get("/.well-known/openid-configuration")
    async def openid() -> JSONResponse:
        return JSONResponse(openid_configuration(rt))

    @router.get("/smart-style.json")
    async def style() -> JSONResponse:
        return JSONResponse({"color_background": "#f6f8fa", "color_error": "#b00020", "color_highlight": "#1f6feb",
                             "color_modal_backdrop": "", "color_success": "#1a7f37", "color_text": "#1f2328",
                             "dim_border_radius": "6px", "dim_font_size": "14px", "dim_spacing_size": "16px",
                             "font_family_body": "system-ui, sans-serif", "font_family_heading": "system-ui, sans-serif"})

    return router


def _registration_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "a JSON object is required"
    uris = body.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) and u for u in uris):
        return "redirect_uris must be a non-empty list of URLs"
    for u in uris:
        p = urlsplit(u)
        if p.scheme not in ("http", "https") or not p.hostname or p.fragment:
            return f"not an absolute http(s) redirect URI without fragment: {u!r}"
    method = body.get("token_endpoint_auth_method", "none")
    if method not in ("none", "private_key_jwt"):
        return "token_endpoint_auth_method must be none or private_key_jwt"
    if method == "private_key_jwt":
        if ("jwks" in body) == ("jwks_uri" in body):
            return "private_key_jwt clients need exactly one of jwks or jwks_uri"
        if "jwks" in body:
            try:
                jwk.KeySet.import_key_set(body["jwks"])
            except Exception:  # noqa: BLE001 - any import failure is bad metadata
                return "jwks is not a valid JWK Set"
        elif not isinstance(body["jwks_uri"], str) or urlsplit(body["jwks_uri"]).scheme not in ("http", "https"):
            return "jwks_uri must be an http(s) URL"
    if "client_id" in body and (not isinstance(body["client_id"], str) or not body["client_id"].strip()):
        return "client_id must be a non-empty string"
    return None


def well_known_router(rt: Any) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/sandbox/.well-known/jwks.json")
    async def cds_jwks() -> JSONResponse:
        """The sandbox CDS client's public keys (CDS services verify the EHR screen's JWTs with them)."""
        return JSONResponse(rt.keys.cds_jwks(), headers={"Access-Control-Allow-Origin": "*"})

    return router
