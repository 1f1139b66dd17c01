"""authlib's OAuth 2.0 server components bound to the sandbox: clients, grants, PKCE (S256 only), SMART launch
checks, private_key_jwt client authentication and token generation.

authlib's server side is synchronous (it ships glue for Flask and Django only). The FastAPI glue in
auth_server runs each authlib call in a worker thread; the few storage calls authlib makes from there
(`query_client`, `save_authorization_code`, ...) are sent back to the event loop with
`run_coroutine_threadsafe`, so the async store (SQLite or Redis) is used unchanged and the loop never blocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import contextvars
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, TypeVar

import httpx
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from joserfc import jwk, jws, jwt
from joserfc.errors import JoseError

from service.sandbox.auth_scopes import narrow_scope
from service.sandbox.auth_tokens import issue_access_token, issue_id_token

log = logging.getLogger("onco.sandbox.auth")
T = TypeVar("T")

NS_CLIENT = "sandbox-client"
NS_CODE = "sandbox-code"
NS_REFRESH = "sandbox-refresh"


def secret_key(value: str) -> str:
    """Store key for a credential (code, refresh token): its SHA-256, so the store never holds it in the clear
    (values are sealed; keys are not)."""
    return hashlib.sha256(value.encode()).hexdigest()
NS_LAUNCH = "sandbox-launch"
NS_JTI = "sandbox-jti"
NS_PENDING = "sandbox-authz"

CODE_SECONDS = 60
LAUNCH_SECONDS = 3600
OFFLINE_SECONDS = 30 * 24 * 3600
ONLINE_SECONDS = 8 * 3600
ASSERTION_MAX_SECONDS = 300
ASSERTION_ALGS = ["RS384", "ES384"]
DEFAULT_PRACTITIONER = "sandbox-clinician"

_LOOP: contextvars.ContextVar[asyncio.AbstractEventLoop] = contextvars.ContextVar("sandbox_auth_loop")


def on_loop(coro: Awaitable[T]) -> T:
    """Run an async store call from an authlib worker thread on the request's event loop."""
    loop = _LOOP.get()
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)  # type: ignore[arg-type]


# authlib calls get their own threads. On the default executor (min(32, cpus + 4) threads: 6 on 2 cores) a
# few concurrent sign-ins would fill every thread with an authlib call waiting in on_loop for a store call —
# which itself needs a default-executor thread (SQLiteStore runs in one): a deadlock until on_loop's timeout.
_AUTHLIB_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sandbox-authlib")


async def run_authlib(fn: Any, *args: Any) -> Any:
    """Run a synchronous authlib call in a worker thread that can reach the store (see on_loop)."""
    loop = asyncio.get_running_loop()
    _LOOP.set(loop)
    ctx = contextvars.copy_context()  # carries _LOOP (and the request id) into the thread, as to_thread does
    return await loop.run_in_executor(_AUTHLIB_THREADS, lambda: ctx.run(fn, *args))


# -- requests -------------------------------------------------------------------------------------------------


class FormRequest(OAuth2Request):
    """An OAuth2Request built from already-parsed query/form pairs (our FastAPI glue reads the body)."""

    def __init__(self, method: str, uri: str, headers: dict[str, str], pairs: list[tuple[str, str]],
                 query: list[tuple[str, str]] | None = None) -> None:
        super().__init__(method, uri, headers=headers)
        data: dict[str, str] = {}
        datalist: dict[str, list[str]] = {}
        for k, v in pairs:
            data.setdefault(k, v)
            datalist.setdefault(k, []).append(v)
        self.payload = BasicOAuth2Payload(data)
        self.payload._datalist = datalist  # authlib checks for repeated parameters through datalist
        self._form = data
        self._args = dict(query or [])

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


# -- clients --------------------------------------------------------------------------------------------------


@dataclass
class SandboxClient(ClientMixin):
    client_id: str
    redirect_uris: list[str]
    auth_method: str = "none"  # none | private_key_jwt
    jwks_uri: str | None = None
    jwks: dict[str, Any] | None = None
    name: str = ""
    grant_types: list[str] = field(default_factory=lambda: ["authorization_code", "refresh_token"])

    def to_json(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "redirect_uris": self.redirect_uris,
                "token_endpoint_auth_method": self.auth_method, "jwks_uri": self.jwks_uri, "jwks": self.jwks,
                "client_name": self.name, "grant_types": self.grant_types}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SandboxClient":
        return cls(client_id=d["client_id"], redirect_uris=list(d.get("redirect_uris") or []),
                   auth_method=d.get("token_endpoint_auth_method", "none"), jwks_uri=d.get("jwks_uri"),
                   jwks=d.get("jwks"), name=d.get("client_name", ""),
                   grant_types=list(d.get("grant_types") or ["authorization_code", "refresh_token"]))

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        granted = narrow_scope(scope or "")
        return granted or None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact match, no prefix or pattern matching

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


# -- stored grants --------------------------------------------------------------------------------------------


class CodeRecord:
    def __init__(self, code: str, data: dict[str, Any]) -> None:
        self.code = code
        self.data = data
        self.code_challenge = data.get("code_challenge")
        self.code_challenge_method = data.get("code_challenge_method")

    def get_redirect_uri(self) -> str:
        return self.data["redirect_uri"]

    def get_scope(self) -> str:
        return self.data["scope"]

    def get_nonce(self) -> str | None:
        return self.data.get("user", {}).get("nonce")

    def get_auth_time(self) -> int:
        return int(self.data.get("auth_time", time.time()))


class RefreshRecord:
    def __init__(self, token: str, data: dict[str, Any]) -> None:
        self.token = token
        self.data = data

    def check_client(self, client: SandboxClient) -> bool:
        return client.client_id == self.data.get("client_id")

    def get_scope(self) -> str:
        return self.data["scope"]

    def is_expired(self) -> bool:
        return False  # the store's TTL removes expired refresh tokens

    def is_revoked(self) -> bool:
        return False


# -- grants and extensions ------------------------------------------------------------------------------------


class S256Required(CodeChallenge):
    """PKCE is mandatory for every client and only S256 is accepted (SMART 2.2; plain and missing refused)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": compare_s256_code_challenge}

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge and code_challenge_method=S256",
                                      redirect_uri=redirect_uri)
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 (plain is not accepted)",
                                      redirect_uri=redirect_uri)
        try:
            super().validate_code_challenge(grant, redirect_uri)
        except InvalidRequestError as exc:
            exc.redirect_uri = redirect_uri
            raise

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier' (PKCE is required)")
        super().validate_code_verifier(grant, result)


class SmartLaunchCheck:
    """`aud` must name our FHIR base; a `launch` value must be one we issued and not expired."""

    def __init__(self, server: "SandboxOAuthServer") -> None:
        self.server = server

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    def validate(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        aud = (data.get("aud") or "").rstrip("/")
        if aud != self.server.runtime.fhir_base:
            raise InvalidRequestError(f"aud must be the FHIR base URL {self.server.runtime.fhir_base}",
                                      redirect_uri=redirect_uri)
        launch = data.get("launch")
        if launch:
            if on_loop(self.server.store.get(NS_LAUNCH, launch)) is None:
                raise InvalidRequestError("unknown or expired launch", redirect_uri=redirect_uri)


class CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none", "private_key_jwt"]

    @property
    def sb(self) -> "SandboxOAuthServer":
        return self.server  # type: ignore[return-value]

    def save_authorization_code(self, code: str, request: Any) -> None:
        user: dict[str, Any] = dict(request.user)
        data = request.payload.data
        if data.get("nonce"):
            user["nonce"] = data["nonce"]
        scope = narrow_scope(request.scope or "", read_only_types=user.get("read_only_types") or ())
        record = {
            "client_id": request.client.client_id,
            "redirect_uri": data.get("redirect_uri") or request.client.get_default_redirect_uri(),
            "scope": scope,
            "user": user,
            "code_challenge": data.get("code_challenge"),
            "code_challenge_method": data.get("code_challenge_method"),
            "auth_time": int(time.time()),
        }
        on_loop(self.sb.store.put(NS_CODE, secret_key(code), record, ttl=CODE_SECONDS))

    def query_authorization_code(self, code: str, client: SandboxClient) -> CodeRecord | None:
        data = on_loop(self.sb.store.pop(NS_CODE, secret_key(code)))  # single use: consumed by the first attempt
        if data is None or data.get("client_id") != client.client_id:
            return None
        return CodeRecord(code, data)

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        return None  # already consumed by query_authorization_code

    def authenticate_user(self, authorization_code: CodeRecord) -> dict[str, Any]:
        return authorization_code.data["user"]


class RefreshGrant(RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none", "private_key_jwt"]
    INCLUDE_NEW_REFRESH_TOKEN = False  # the refresh token stays valid until it expires; clients keep it

    @property
    def sb(self) -> "SandboxOAuthServer":
        return self.server  # type: ignore[return-value]

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        data = on_loop(self.sb.store.get(NS_REFRESH, secret_key(refresh_token)))
        return RefreshRecord(refresh_token, data) if data else None

    def authenticate_user(self, refresh_token: RefreshRecord) -> dict[str, Any]:
        return refresh_token.data["user"]

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        return None


class PrivateKeyJwt(JWTBearerClientAssertion):
    """private_key_jwt (SMART client-confidential-asymmetric): RS384/ES384, aud = token endpoint,
    exp at most 5 minutes ahead, jti never seen before (replay cache in the store), jku = registered JWKS URL."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: "SandboxOAuthServer") -> None:
        super().__init__(validate_jti=True, leeway=5)
        self.server = server
        self._jwks_cache: dict[str, tuple[float, dict[str, Any]]] = {}

    def get_audiences(self) -> list[str]:
        return [self.server.runtime.token_endpoint]

    def __call__(self, query_client: Any, request: Any) -> Any:
        data = request.form
        if data.get("client_assertion_type") is None and data.get("client_assertion") is None:
            return None
        if data.get("client_assertion_type") != self.CLIENT_ASSERTION_TYPE:
            raise InvalidClientError(description="client_assertion_type must be "
                                                 "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        assertion = data.get("client_assertion") or ""
        headers, claims = self.extract_assertion(assertion)
        if headers.get("alg") not in ASSERTION_ALGS:
            raise InvalidClientError(description="client_assertion must be signed with RS384 or ES384")
        client_id = claims.get("sub")
        if not isinstance(client_id, str):
            raise InvalidClientError(description="Missing claim: 'sub'")
        client = query_client(client_id)
        if not client or client.auth_method != self.CLIENT_AUTH_METHOD:
            raise InvalidClientError(description="unknown client or not registered for private_key_jwt")
        jku = headers.get("jku")
        if jku and jku != client.jwks_uri:
            raise InvalidClientError(description="jku does not match the client's registered JWKS URL")
        keys = self._keys(client, refresh=False)
        try:
            self.process_assertion_claims(assertion, keys)
        except InvalidClientError:
            if client.jwks_uri and headers.get("kid") and not self._has_kid(keys, headers["kid"]):
                self.process_assertion_claims(assertion, self._keys(client, refresh=True))  # rotated keys
            else:
                raise
        request.client = client
        return self.authenticate_client(client)

    @staticmethod
    def _has_kid(keys: jwk.KeySet, kid: str) -> bool:
        return any(k.kid == kid for k in keys.keys)

    def _keys(self, client: SandboxClient, refresh: bool) -> jwk.KeySet:
        if client.jwks:
            return jwk.KeySet.import_key_set(client.jwks)
        if not client.jwks_uri:
            raise InvalidClientError(description="the client has no registered keys")
        cached = self._jwks_cache.get(client.jwks_uri)
        if cached and not refresh and cached[0] > time.monotonic():
            return jwk.KeySet.import_key_set(cached[1])
        try:
            resp = httpx.get(client.jwks_uri, timeout=5.0)
            resp.raise_for_status()
            doc = resp.json()
            keys = jwk.KeySet.import_key_set(doc)
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            raise InvalidClientError(description=f"cannot load the client's JWKS ({type(exc).__name__})") from None
        self._jwks_cache[client.jwks_uri] = (time.monotonic() + 60, doc)
        return keys

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description=f"client_assertion signature not valid ({type(exc).__name__})") \
                from None
        claims = token.claims
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp - time.time() > ASSERTION_MAX_SECONDS + self.leeway:
            raise InvalidClientError(description="client_assertion exp must be at most 5 minutes ahead")
        self.verify_claims(claims)
        return claims

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        ttl = max(float(claims.get("exp", time.time())) - time.time(), 0) + 60
        return bool(on_loop(self.server.store.add(NS_JTI, f"{claims['iss']}:{jti}", {}, ttl=ttl)))

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            jws.extract_compact(assertion.encode())
        except (JoseError, ValueError):
            raise InvalidClientError(description="client_assertion is not a compact JWS") from None
        return super().extract_assertion(assertion)


# -- the server -----------------------------------------------------------------------------------------------


class SandboxOAuthServer(AuthorizationServer):
    """authlib AuthorizationServer with sandbox storage; responses come back as (status, body, headers)."""

    def __init__(self, runtime: Any) -> None:
        super().__init__(scopes_supported=None)
        self.runtime = runtime
        self.register_token_generator("default", self._generate)
        self.register_client_auth_method(PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt(self))
        self.register_grant(CodeGrant, [S256Required(required=True), SmartLaunchCheck(self)])
        self.register_grant(RefreshGrant)

    @property
    def store(self) -> Any:
        return self.runtime.store

    # -- authlib hooks -------------------------------------------------------------------------------------------

    def query_client(self, client_id: str) -> SandboxClient | None:
        builtin = self.runtime.auth.builtin_clients().get(client_id)
        if builtin:
            return builtin
        data = on_loop(self.store.get(NS_CLIENT, client_id))
        return SandboxClient.from_json(data) if data else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        rt = token.get("refresh_token")
        if not rt:
            return
        scope = token.get("scope", "")
        ttl = OFFLINE_SECONDS if "offline_access" in scope.split() else ONLINE_SECONDS
        user = {k: v for k, v in dict(request.user).items() if k != "nonce"}
        on_loop(self.store.put(NS_REFRESH, secret_key(rt), {"client_id": request.client.client_id, "scope": scope,
                                                "user": user}, ttl=ttl))

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return request

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers or [])

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    # -- tokens --------------------------------------------------------------------------------------------------

    def _generate(self, grant_type: str, client: SandboxClient, user: dict[str, Any] | None = None,
                  scope: str | None = None, expires_in: int | None = None,
                  include_refresh_token: bool = True) -> dict[str, Any]:
        user = dict(user or {})
        scope = scope or ""
        scopes = scope.split()
        practitioner = user.get("practitioner")
        fhir_user = f"Patient/{user['patient']}" if user.get("as_patient") and user.get("patient") else \
            f"Practitioner/{practitioner}" if practitioner else None
        ehr = bool(user.get("launch"))
        patient = user.get("patient") if (("launch" in scopes and ehr) or "launch/patient" in scopes) else None
        encounter = user.get("encounter") if (("launch" in scopes and ehr) or "launch/encounter" in scopes) \
            else None
        access, life = issue_access_token(self.runtime, scope=scope, client_id=client.client_id, patient=patient,
                                          encounter=encounter, fhir_user=fhir_user)
        token: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": life,
                                 "scope": scope}
        if include_refresh_token and ({"offline_access", "online_access"} & set(scopes)):
            token["refresh_token"] = secrets.token_urlsafe(32)
        if "openid" in scopes and ({"fhirUser", "profile"} & set(scopes)) and fhir_user:
            token["id_token"] = issue_id_token(self.runtime, client_id=client.client_id, fhir_user=fhir_user,
                                               nonce=user.get("nonce"))
        if patient:
            token["patient"] = patient
            token["need_patient_banner"] = bool(user.get("need_patient_banner", True))
        if encounter:
            token["encounter"] = encounter
        if user.get("app_context") is not None and ehr:
            token["appContext"] = user["app_context"]
        if user.get("intent"):
            token["intent"] = user["intent"]
        token["smart_style_url"] = f"{self.runtime.public_url}/sandbox/auth/smart-style.json"
        return token


def new_launch_id() -> str:
    return secrets.token_urlsafe(16)
