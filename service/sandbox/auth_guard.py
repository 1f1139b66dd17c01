"""The SMART guard in front of the sandbox FHIR server (pure ASGI middleware on the main app).

Open: `GET /metadata` (with the SMART `oauth-uris` extension added) and `/.well-known/smart-configuration`.
Everything else needs a Bearer access token from the sandbox authorization server: 401 + OperationOutcome +
`WWW-Authenticate` without a valid one, 403 + OperationOutcome when the granted scopes do not allow the request.

What is enforced (v1 and v2 scopes, see auth_scopes):
- interaction letter per request: read/vread/instance history = r, search (GET, `_search`, compartment search)
  = s, create = c, update/patch/conditional update = u, delete = d; transactions and batches: every entry.
- `patient/` scopes are limited to the token's `patient`: Patient reads/searches only that id; other searches
  must name it (`patient=`, `subject=Patient/..`, or `Patient/<id>/<Type>`) unless the type has no patient
  search parameter (Practitioner, Organization, ...); reads, updates, patches and deletes load the stored
  resource and refuse it when it points at another patient; created/updated bodies must not point at another
  patient. Resources with no patient field (Provenance, Practitioner, ...) are not restricted further.
- `_include`/`_revinclude` results of types the token may not read are removed from search Bundles.
- `$everything` needs a `*` read scope; `$export` and system `_history` need `user/` or `system/` `*` reads;
  `$validate` needs only a valid token.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.asgi import read_limited, replay as replay_body
from service.outcome import operation_outcome
from service.sandbox.auth_scopes import Scope as SmartScope, allows, parse_scopes
from service.sandbox.auth_tokens import TokenInvalid, verify_access_token
from service.sandbox.fhir_server import FHIR_PREFIX

log = logging.getLogger("onco.sandbox.guard")

PATIENT_FIELDS = ("subject", "patient", "for", "beneficiary")
MAX_BODY = 50_000_000
OO_CODES = {401: "login", 403: "forbidden", 404: "not-found", 413: "too-costly", 503: "transient"}


class Denied(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def outcome(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return operation_outcome(message, status=status, code=code or OO_CODES.get(status, "processing"))


@dataclass
class Grant:
    """What one access token allows, plus the result filters the request needs."""

    scopes: list[SmartScope]
    patient: str | None
    filter_types: bool = False  # drop search-result entries of types the token cannot read
    notes: list[str] = field(default_factory=list)

    def any(self, rtype: str, perm: str, params: list[tuple[str, str]] | None = None) -> bool:
        return allows(self.scopes, rtype, perm, params)

    def wide(self, rtype: str, perm: str, params: list[tuple[str, str]] | None = None) -> bool:
        """Allowed by a user/ or system/ scope (no compartment limit)."""
        return allows(self.scopes, rtype, perm, params, contexts=("user", "system"))

    def narrow(self, rtype: str, perm: str, params: list[tuple[str, str]] | None = None) -> bool:
        """Allowed only through a patient/ scope (compartment-limited); needs a launch patient."""
        return self.patient is not None and allows(self.scopes, rtype, perm, params, contexts=("patient",))


def _ref_points_to(ref: Any, base: str) -> str | None:
    """`Patient/<id>` (relative or absolute at our base) -> id, else None."""
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        return None
    value = ref["reference"]
    if value.startswith(base + "/"):
        value = value[len(base) + 1:]
    parts = value.split("/")
    if len(parts) >= 2 and parts[0] == "Patient":
        return parts[1]
    return None


def other_patient(resource: Any, patient: str, base: str) -> str | None:
    """The first patient other than `patient` the resource belongs to (None when it is ours or has none)."""
    if not isinstance(resource, dict):
        return None
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if rid and rid != patient else None
    for name in PATIENT_FIELDS:
        value = resource.get(name)
        for ref in value if isinstance(value, list) else [value]:
            pid = _ref_points_to(ref, base)
            if pid and pid != patient:
                return pid
    return None


def _patient_param(rtype: str) -> list[str]:
    from sekmet.fhir.search_params import params_for

    params = params_for(rtype)
    names = [n for n in ("patient", "subject", "beneficiary") if n in params]
    return names


class Authorizer:
    """Decides one request against one token's grant (raises Denied)."""

    def __init__(self, runtime: Any, grant: Grant) -> None:
        self.rt = runtime
        self.g = grant
        self.base = runtime.fhir_base

    # -- helpers ----------------------------------------------------------------------------------------------

    def _stored(self, rtype: str, rid: str) -> dict[str, Any] | None:
        try:
            return self.rt.fhir.ctx.store.read(rtype, rid)
        except Exception:  # noqa: BLE001 - unknown type etc.: sekmet answers the request itself
            return None

    def _need(self, rtype: str, perm: str, params: list[tuple[str, str]] | None = None) -> bool:
        """True when allowed widely; False when only a patient/ scope allows it; Denied otherwise."""
        if self.g.wide(rtype, perm, params):
            return True
        if self.g.narrow(rtype, perm, params):
            return False
        word = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}[perm]
        hint = " (patient/ scopes need a launch patient)" if self.g.patient is None and allows(
            self.g.scopes, rtype, perm, params, contexts=("patient",)) else ""
        raise Denied(f"the granted scopes do not allow {word} on {rtype}{hint}")

    def _check_stored(self, rtype: str, rid: str) -> None:
        if rtype == "Patient":
            if rid != self.g.patient:
                raise Denied("patient/ scopes allow only the launch patient")
            return
        stored = self._stored(rtype, rid)
        if stored is not None and other_patient(stored, self.g.patient or "", self.base):
            raise Denied(f"{rtype}/{rid} belongs to another patient than the launch patient")

    def _check_body(self, resource: Any) -> None:
        if other_patient(resource, self.g.patient or "", self.base):
            raise Denied("patient/ scopes cannot write resources of another patient")

    def _check_search_params(self, rtype: str, params: list[tuple[str, str]]) -> None:
        pid = self.g.patient
        if rtype == "Patient":
            ids = [v for k, v in params if k == "_id"]
            if not ids or any(x.split(",") != [pid] for x in ids):
                raise Denied(f"patient/ scopes: search Patient with _id={pid}")
            return
        names = _patient_param(rtype)
        if not names:
            return  # not a patient-compartment type
        ok_values = {pid, f"Patient/{pid}", f"{self.base}/Patient/{pid}"}
        given = [(k.split(":", 1)[0], v) for k, v in params if k.split(":", 1)[0] in names]
        if not given:
            raise Denied(f"patient/ scopes: a {rtype} search must name the launch patient (patient={pid})")
        for k, v in given:
            if any(x not in ok_values for x in v.split(",")):
                raise Denied(f"patient/ scopes: a {rtype} search may name only the launch patient")

    def _include_types(self, params: list[tuple[str, str]]) -> None:
        if any(k in ("_include", "_revinclude") for k, _ in params):
            self.g.filter_types = True

    # -- one interaction --------------------------------------------------------------------------------------

    def check(self, method: str, segs: list[str], params: list[tuple[str, str]], body: Any) -> None:
        n = len(segs)
        if method == "HEAD":
            method = "GET"
        if n == 0:
            if method == "POST" and isinstance(body, dict):
                self._check_bundle(body)
                return
            raise Denied("system-level interactions other than transaction/batch are not allowed")
        first = segs[0]
        if first == "_history":
            if not self.g.wide("*", "r"):
                raise Denied("system history needs a user/ or system/ read scope on *")
            return
        if first.startswith("$"):
            self._check_operation(None, None, first)
            return
        rtype = first
        if n == 1:
            if method == "GET":
                self._search(rtype, params)
            elif method == "POST":
                if not self._need(rtype, "c"):
                    self._check_body(body)
            elif method in ("PUT", "DELETE"):
                perm = "u" if method == "PUT" else "d"
                if not self._need(rtype, perm):
                    self._check_search_params(rtype, params)
                    if method == "PUT":
                        self._check_body(body)
            else:
                raise Denied(f"{method} on a resource type is not allowed")
            return
        second = segs[1]
        if n == 2:
            if second == "_search" and method == "POST":
                form = body if isinstance(body, list) else []
                self._search(rtype, [*params, *form])
                return
            if second == "_history":
                if not self._need(rtype, "r"):
                    raise Denied("type history is not available through patient/ scopes")
                return
            if second.startswith("$"):
                self._check_operation(rtype, None, second)
                return
            perm = {"GET": "r", "PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method)
            if perm is None:
                raise Denied(f"{method} on a resource instance is not allowed")
            if not self._need(rtype, perm):
                self._check_stored(rtype, second)
                if method == "PUT":
                    self._check_body(body)
            return
        rid, third = segs[1], segs[2]
        if third == "_history":
            if not self._need(rtype, "r"):
                self._check_stored(rtype, rid)
            return
        if third.startswith("$"):
            self._check_operation(rtype, rid, third)
            return
        if n == 3 and rtype == "Patient":  # compartment search Patient/<id>/<Type>
            if not self._need(third, "s", params):
                if rid != self.g.patient:
                    raise Denied("patient/ scopes allow only the launch patient's compartment")
            self._include_types(params)
            return
        raise Denied("unsupported request shape")

    def _search(self, rtype: str, params: list[tuple[str, str]]) -> None:
        if not self._need(rtype, "s", params):
            self._check_search_params(rtype, params)
        self._include_types(params)

    def _check_operation(self, rtype: str | None, rid: str | None, name: str) -> None:
        if name == "$validate":
            return
        if name == "$everything":
            if not self.g.wide("*", "r"):
                if not (self.g.narrow("*", "r") and rtype == "Patient" and rid == self.g.patient):
                    raise Denied("$everything needs a read scope on * (for the launch patient)")
            return
        if name == "$export":
            if not self.g.wide("*", "r"):
                raise Denied("$export needs a user/ or system/ read scope on *")
            return
        target = rtype or "*"
        if not self._need(target, "c") and rid is not None:
            self._check_stored(target, rid)

    def _check_bundle(self, bundle: dict[str, Any]) -> None:
        btype = bundle.get("type")
        if bundle.get("resourceType") != "Bundle" or btype not in ("transaction", "batch", "message"):
            raise Denied("only transaction, batch or message Bundles may be posted to the base")
        if btype == "message":
            if not self.g.wide("*", "c"):
                raise Denied("messages need a user/ or system/ create scope on *")
            return
        problems: list[str] = []
        for i, entry in enumerate(bundle.get("entry") or []):
            req = entry.get("request") if isinstance(entry, dict) else None
            if not isinstance(req, dict) or not isinstance(req.get("url"), str):
                continue  # sekmet rejects malformed entries itself
            method = str(req.get("method", "")).upper()
            url = urlsplit(req["url"])
            path = url.path
            if path.startswith(self.base):
                path = path[len(self.base):]
            segs = [s for s in path.split("/") if s]
            params = parse_qsl(url.query, keep_blank_values=True)
            try:
                if not segs:
                    raise Denied("nested bundles are not allowed")
                self.check(method, segs, params, entry.get("resource"))
            except Denied as exc:
                problems.append(f"entry {i} ({method} {'/'.join(segs[:2])}): {exc.message}")
        if problems:
            raise Denied("; ".join(problems[:10]))


def smart_configuration(runtime: Any) -> dict[str, Any]:
    from service.sandbox.auth_server import smart_configuration as conf

    return conf(runtime)


class FhirGuard:
    """ASGI middleware: routes `/sandbox/fhir...` through the SMART checks to sekmet; passes the rest on."""

    def __init__(self, app: ASGIApp, runtime: Any) -> None:
        self.app = app
        self.rt = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        if self.rt.fhir is None:
            await _send_json(send, 503, outcome(503, "the sandbox FHIR server is starting"))
            return
        method = scope["method"]
        segs = [s for s in path[len(FHIR_PREFIX):].split("/") if s]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        params = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)

        if segs == [".well-known", "smart-configuration"] and method in ("GET", "HEAD"):
            await _send_json(send, 200, smart_configuration(self.rt), media="application/json",
                             head=method == "HEAD")
            return
        if segs == ["metadata"] and method in ("GET", "HEAD"):
            fmt = dict(params).get("_format", "") + headers.get("accept", "")
            if "xml" not in fmt.lower():
                await _send_json(send, 200, self._capability(), head=method == "HEAD")
                return
            await self.rt.fhir.asgi(scope, receive, send)
            return
        if method == "OPTIONS":
            await self.rt.fhir.asgi(scope, receive, send)
            return

        auth = headers.get("authorization", "")
        kind, _, token = auth.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            await self._unauthorized(send, "a Bearer access token from the sandbox authorization server is "
                                           "required", "invalid_request" if auth else None)
            return
        try:
            claims = verify_access_token(self.rt, token.strip())
        except TokenInvalid as exc:
            await self._unauthorized(send, exc.message, "invalid_token", expired=exc.expired)
            return

        body_bytes = b""
        if method in ("POST", "PUT", "PATCH"):
            body_bytes, too_large = await read_limited(receive, MAX_BODY)
            if too_large:
                await _send_json(send, 413, outcome(413, "request body too large"))
                return
        body = _parse_body(body_bytes, headers.get("content-type", ""))
        grant = Grant(scopes=parse_scopes(claims.get("scope", "")), patient=claims.get("patient"))
        try:
            await asyncio.to_thread(Authorizer(self.rt, grant).check, method, segs, params, body)
        except Denied as exc:
            log.info("sandbox FHIR 403: %s %s (%s)", method, "/".join(segs[:1]), exc.message)
            await _send_json(send, 403, outcome(403, exc.message))
            return

        replay = replay_body(body_bytes, receive)
        if grant.filter_types and method in ("GET", "POST"):
            await self._filtered(scope, replay, send, grant)
        else:
            await self.rt.fhir.asgi(scope, replay, send)

    def _capability(self) -> dict[str, Any]:
        from sekmet.fhir.capability import capability_statement

        cap = capability_statement(self.rt.fhir.ctx.service)
        conf = smart_configuration(self.rt)
        rest = cap["rest"][0]
        rest["security"] = {
            "cors": True,
            "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                     "code": "SMART-on-FHIR"}], "text": "OAuth2 using SMART-on-FHIR profile"}],
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "authorize", "valueUri": conf["authorization_endpoint"]},
                    {"url": "token", "valueUri": conf["token_endpoint"]},
                    {"url": "register", "valueUri": conf["registration_endpoint"]},
                ],
            }],
            "description": "SMART App Launch 2.2: see .well-known/smart-configuration",
        }
        return cap

    async def _unauthorized(self, send: Send, message: str, error: str | None, expired: bool = False) -> None:
        challenge = f'Bearer realm="{self.rt.fhir_base}"'
        if error:
            safe = message.replace('"', "'")
            challenge += f', error="{error}", error_description="{safe}"'
        await _send_json(send, 401, outcome(401, message, "expired" if expired else "login"),
                         extra={"www-authenticate": challenge})

    async def _filtered(self, scope: Scope, receive: Receive, send: Send, grant: Grant) -> None:
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.rt.fhir.asgi(scope, receive, capture)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("resourceType") == "Bundle":
            kept = []
            for entry in body.get("entry") or []:
                res = entry.get("resource") or {}
                rtype = res.get("resourceType")
                mode = (entry.get("search") or {}).get("mode")
                if mode == "include" and rtype and rtype != "OperationOutcome":
                    if not grant.any(rtype, "r"):
                        continue
                    if not grant.wide(rtype, "r") and other_patient(res, grant.patient or "", self.rt.fhir_base):
                        continue
                kept.append(entry)
            if len(kept) != len(body.get("entry") or []):
                body["entry"] = kept
                raw = json.dumps(body, separators=(",", ":")).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await send({"type": "http.response.start", "status": start.get("status", 500), "headers": headers})
        await send({"type": "http.response.body", "body": raw})


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw.strip():
        return None
    if "x-www-form-urlencoded" in content_type.lower():
        return parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
    try:
        return json.loads(raw)
    except ValueError:
        return None  # sekmet answers with its own 400


async def _send_json(send: Send, status: int, body: dict[str, Any], media: str = "application/fhir+json",
                     extra: dict[str, str] | None = None, head: bool = False) -> None:
    raw = json.dumps(body, separators=(",", ":")).encode()
    headers = [(b"content-type", f"{media}; charset=utf-8".encode()), (b"content-length", str(len(raw)).encode()),
               (b"cache-control", b"no-store"), (b"access-control-allow-origin", b"*"),
               (b"access-control-expose-headers", b"WWW-Authenticate")]
    for k, v in (extra or {}).items():
        headers.append((k.encode("latin-1"), v.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else raw})
