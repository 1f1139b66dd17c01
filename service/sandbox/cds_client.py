"""The sandbox EHR's CDS Hooks client: discovery, prefetch, signed hook calls, feedback, applying suggestions.

It behaves like a conformant EHR towards *any* CDS service URL, not only ours: every request carries a fresh
ES384 JWT (kid, jku -> the sandbox JWKS, aud = the exact URL called, exp = iat + 5 min, unique jti); prefetch is
filled from the service's own templates against the sandbox FHIR server (keys it cannot satisfy are omitted;
a read that finds nothing is null, which the spec defines as "no data"); the hook call also offers
`fhirServer` + `fhirAuthorization` so the service can read more. Failures never raise out of the public calls:
they come back as `error` strings with the HTTP status and elapsed time, so a page can show them.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

JWT_ALG = "ES384"
JWT_LIFETIME = 300
MAX_PREFETCH_PAGES = 10
TOKEN_RE = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
SCOPE_RE = re.compile(r"\b(?:patient|user)/(?:[A-Z][A-Za-z]+|\*)\.(?:read|write|\*|[cruds]+)\b")
PREFETCH_CONTEXT_TOKENS = ("patientId", "encounterId", "userId")

# (scope, patient, subject, lifetime) -> token string, (token, expires_in) or a token-response dict
TokenMinter = Callable[[str, str | None, str, int], Any]


@dataclass(frozen=True)
class CdsService:
    """One service from a discovery response; `url` is the exact endpoint (`{base}/cds-services/{id}`)."""

    base: str
    id: str
    hook: str
    title: str
    description: str
    prefetch: dict[str, str] = field(default_factory=dict)
    usage_requirements: str | None = None

    @property
    def url(self) -> str:
        return f"{self.base}/cds-services/{self.id}"

    @property
    def feedback_url(self) -> str:
        return f"{self.url}/feedback"


@dataclass
class Discovery:
    discovery_url: str
    services: list[CdsService] = field(default_factory=list)
    status: int | None = None
    elapsed_ms: int = 0
    error: str | None = None


@dataclass
class HookCall:
    """The result of one hook call: cards (as received, minus invalid ones) or an error."""

    service: CdsService
    hook_instance: str
    status: int | None = None
    elapsed_ms: int = 0
    cards: list[dict[str, Any]] = field(default_factory=list)
    system_actions: list[dict[str, Any]] = field(default_factory=list)
    prefetch_keys: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Outcome:
    ok: bool
    status: int | None = None
    message: str = ""
    body: Any = None


def base_from_discovery_url(url: str) -> str:
    """`https://h/x/cds-services` -> `https://h/x` (a base URL given without the suffix is kept)."""
    url = url.strip().rstrip("/")
    return url[: -len("/cds-services")] if url.endswith("/cds-services") else url


def valid_http_url(url: str) -> bool:
    parts = urlsplit(url.strip())
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.fragment


def _elapsed(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


def _list_answer(resp: httpx.Response, key: str, what: str) -> tuple[dict[str, Any], list[Any]] | str:
    """A 200 answer's JSON object and its list under `key`, or a sentence saying what is wrong with it."""
    if resp.status_code != 200:
        return _describe_error(resp)
    try:
        body = resp.json()
        items = body[key]
    except (ValueError, KeyError, TypeError):
        items = None
    if not isinstance(items, list):
        return f'{what} is not {{"{key}": [...]}}'
    return body, items


def _describe_error(resp: httpx.Response) -> str:
    """Short, safe description of an error response (OperationOutcome diagnostics or the start of the body)."""
    text = ""
    try:
        body = resp.json()
        if isinstance(body, dict):
            issues = body.get("issue") or []
            text = "; ".join(str(i.get("diagnostics") or i.get("details", {}).get("text") or "") for i in issues
                             if isinstance(i, dict))
            text = text or str(body.get("error_description") or body.get("message") or body.get("detail") or "")
    except ValueError:
        text = resp.text[:200]
    return f"HTTP {resp.status_code}" + (f": {text[:300]}" if text.strip() else "")


class CdsClient:
    """One EHR user's CDS Hooks client. `fhir` is a client for the EHR's own FHIR server (base = FHIR base)."""

    def __init__(self, *, public_url: str, fhir_base: str, signing_key: ECKey, fhir: httpx.AsyncClient,
                 http: httpx.AsyncClient | None = None, token_minter: TokenMinter | None = None,
                 timeout: float = 10.0, token_lifetime: int = 300, own_client_id: str = "onco-exercise") -> None:
        if not signing_key.is_private:
            raise ValueError("the CDS client signing key must be a private key")
        self.public_url = public_url.rstrip("/")
        self.fhir_base = fhir_base.rstrip("/")
        self.key = signing_key
        self.fhir = fhir
        self.http = http or httpx.AsyncClient(timeout=timeout)
        self._own_http = http is None
        self.token_minter = token_minter
        self.timeout = timeout
        self.token_lifetime = token_lifetime
        self.own_client_id = own_client_id

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    async def __aenter__(self) -> "CdsClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- JWT -----------------------------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"{self.public_url}/sandbox"

    @property
    def jku(self) -> str:
        return f"{self.public_url}/sandbox/.well-known/jwks.json"

    def sign_jwt(self, aud: str) -> str:
        """A fresh JWT for one request to `aud` (the exact URL called)."""
        now = int(time.time())
        header = {"alg": JWT_ALG, "typ": "JWT", "kid": self.key.kid, "jku": self.jku}
        claims = {"iss": self.issuer, "aud": aud, "iat": now, "exp": now + JWT_LIFETIME,
                  "jti": uuid.uuid4().hex}
        return jwt.encode(header, claims, self.key, algorithms=[JWT_ALG])

    def _headers(self, aud: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.sign_jwt(aud)}", "Accept": "application/json"}

    # -- discovery -----------------------------------------------------------------------------------------

    async def discover(self, discovery_url: str) -> Discovery:
        """GET `{base}/cds-services`; `discovery_url` may be the base or the full discovery URL."""
        base = base_from_discovery_url(discovery_url)
        url = f"{base}/cds-services"
        result = Discovery(discovery_url=url)
        if not valid_http_url(url):
            result.error = "not an http(s) URL"
            return result
        start = time.monotonic()
        try:
            resp = await self.http.get(url, headers=self._headers(url), timeout=self.timeout)
        except httpx.HTTPError as exc:
            result.elapsed_ms = _elapsed(start)
            result.error = f"{type(exc).__name__}: could not reach the service"
            return result
        result.elapsed_ms = _elapsed(start)
        result.status = resp.status_code
        answer = _list_answer(resp, "services", "discovery response")
        if isinstance(answer, str):
            result.error = answer
            return result
        _, items = answer
        for item in items:
            if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item.get(k)
                                                     for k in ("id", "hook")):
                continue
            prefetch = item.get("prefetch") if isinstance(item.get("prefetch"), dict) else {}
            result.services.append(CdsService(
                base=base, id=item["id"], hook=item["hook"], title=str(item.get("title") or item["id"]),
                description=str(item.get("description") or ""),
                prefetch={k: v for k, v in prefetch.items() if isinstance(v, str)},
                usage_requirements=item.get("usageRequirements") if isinstance(item.get("usageRequirements"),
                                                                                str) else None,
            ))
        return result

    # -- prefetch ------------------------------------------------------------------------------------------

    @staticmethod
    def render_template(template: str, context: dict[str, Any]) -> str | None:
        """Replace prefetch tokens from the hook context; None when a token cannot be satisfied."""
        values: dict[str, str] = {}
        for name in PREFETCH_CONTEXT_TOKENS:
            v = context.get(name)
            if isinstance(v, str) and v:
                values[f"context.{name}"] = v
        user = context.get("userId")
        if isinstance(user, str) and "/" in user:
            rtype, rid = user.split("/", 1)
            values[f"user{rtype}Id"] = rid  # userPractitionerId, userPractitionerRoleId, userPatientId, ...
        missing = False

        def sub(m: re.Match[str]) -> str:
            nonlocal missing
            if m.group(1) not in values:
                missing = True
                return ""
            return values[m.group(1)]

        out = TOKEN_RE.sub(sub, template)
        return None if missing else out

    async def _fetch(self, query: str) -> tuple[bool, Any]:
        """(satisfied, value): a read -> resource or None (404); a search -> a searchset Bundle (all pages)."""
        query = query.lstrip("/")
        resp = await self.fhir.get(query, timeout=self.timeout)
        is_read = "?" not in query and query.count("/") == 1
        if resp.status_code in (404, 410) and is_read:
            return True, None
        if resp.status_code != 200:
            return False, None
        body = resp.json()
        if body.get("resourceType") != "Bundle" or is_read:
            return True, body
        entries = list(body.get("entry") or [])
        pages = 1
        nxt = _next_link(body)
        while nxt and pages < MAX_PREFETCH_PAGES:
            page = await self.fhir.get(nxt, timeout=self.timeout)
            if page.status_code != 200:
                return False, None  # an incomplete search would mislead the service: omit the key instead
            pb = page.json()
            entries += pb.get("entry") or []
            nxt = _next_link(pb)
            pages += 1
        if nxt:
            return False, None
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
        if entries:
            bundle["entry"] = entries
        return True, bundle

    async def fill_prefetch(self, service: CdsService, context: dict[str, Any]) -> dict[str, Any]:
        """Prefetch values for the keys this client can satisfy (unsatisfied keys are omitted)."""
        rendered = {k: self.render_template(t, context) for k, t in service.prefetch.items()}
        keys = [k for k, q in rendered.items() if q is not None]

        async def one(key: str) -> tuple[str, bool, Any]:
            try:
                ok, value = await self._fetch(rendered[key])  # type: ignore[arg-type]
            except (httpx.HTTPError, ValueError):
                return key, False, None
            return key, ok, value

        results = await asyncio.gather(*(one(k) for k in keys))
        return {k: v for k, ok, v in results if ok}

    # -- authorization for the service ---------------------------------------------------------------------

    def requested_scopes(self, service: CdsService) -> str:
        """Scopes to grant the service: those its usageRequirements names, else read/search on its prefetch types."""
        found = SCOPE_RE.findall(service.usage_requirements or "")
        if found:
            return " ".join(dict.fromkeys(s.replace("user/", "patient/") for s in found))
        types = []
        for template in service.prefetch.values():
            head = template.lstrip("/").split("?", 1)[0].split("/", 1)[0]
            if head[:1].isupper():
                types.append(head)
        types = list(dict.fromkeys(types)) or ["*"]
        return " ".join(f"patient/{t}.rs" for t in types)

    def client_id_for(self, service: CdsService) -> str:
        """The OAuth client id the service would use with this EHR: ours for our own origin, else its host."""
        if service.base.startswith(self.public_url):
            return self.own_client_id
        return f"cds-service:{urlsplit(service.base).netloc}"

    def _authorization(self, service: CdsService, patient_id: str | None) -> dict[str, Any] | None:
        if self.token_minter is None:
            return None
        scope = self.requested_scopes(service)
        subject = self.client_id_for(service)
        minted = self.token_minter(scope, patient_id, subject, self.token_lifetime)
        expires_in = self.token_lifetime
        if isinstance(minted, dict):
            token = minted["access_token"]
            expires_in = int(minted.get("expires_in", expires_in))
            scope = minted.get("scope", scope)
        elif isinstance(minted, tuple):
            token, expires_in = minted[0], int(minted[1])
        else:
            token = str(minted)
        auth = {"access_token": token, "token_type": "Bearer", "expires_in": expires_in, "scope": scope,
                "subject": subject}
        if patient_id:
            auth["patient"] = patient_id
        return auth

    # -- hook call -----------------------------------------------------------------------------------------

    async def call(self, service: CdsService, context: dict[str, Any], hook: str | None = None,
                   hook_instance: str | None = None) -> HookCall:
        hook = hook or service.hook
        result = HookCall(service=service, hook_instance=hook_instance or str(uuid.uuid4()))
        start = time.monotonic()
        try:
            prefetch = await self.fill_prefetch(service, context)
            body: dict[str, Any] = {"hook": hook, "hookInstance": result.hook_instance,
                                    "fhirServer": self.fhir_base, "context": context}
            auth = self._authorization(service, context.get("patientId"))
            if auth:
                body["fhirAuthorization"] = auth
            if prefetch:
                body["prefetch"] = prefetch
            result.prefetch_keys = sorted(prefetch)
            resp = await self.http.post(service.url, json=body, headers=self._headers(service.url),
                                        timeout=self.timeout)
        except httpx.TimeoutException:
            result.elapsed_ms = _elapsed(start)
            result.error = f"timed out after {self.timeout:g} s"
            return result
        except httpx.HTTPError as exc:
            result.elapsed_ms = _elapsed(start)
            result.error = f"{type(exc).__name__}: could not reach the service"
            return result
        except Exception as exc:  # noqa: BLE001 - token minting or prefetch problems: shown, never a crash
            result.elapsed_ms = _elapsed(start)
            result.error = f"could not prepare the request ({type(exc).__name__})"
            return result
        result.elapsed_ms = _elapsed(start)
        result.status = resp.status_code
        answer = _list_answer(resp, "cards", "response")
        if isinstance(answer, str):
            result.error = answer
            return result
        data, cards = answer
        for i, card in enumerate(cards):
            problem = card_problem(card)
            if problem:
                result.warnings.append(f"card {i + 1} ignored: {problem}")
            else:
                result.cards.append(card)
        actions = data.get("systemActions")
        if isinstance(actions, list):
            result.system_actions = [a for a in actions if isinstance(a, dict)]
        return result

    # -- feedback ------------------------------------------------------------------------------------------

    async def feedback(self, service: CdsService, card_uuid: str, outcome: str,
                       accepted_suggestions: list[str] | None = None, override_reason: dict[str, Any] | None = None,
                       user_comment: str | None = None, when: datetime | None = None) -> Outcome:
        """POST one feedback item; `override_reason` is a Coding from the card's overrideReasons."""
        if outcome not in ("accepted", "overridden"):
            return Outcome(False, message=f"unknown outcome {outcome!r}")
        item: dict[str, Any] = {
            "card": card_uuid, "outcome": outcome,
            "outcomeTimestamp": (when or datetime.now(timezone.utc)).isoformat(timespec="seconds").replace(
                "+00:00", "Z"),
        }
        if outcome == "accepted":
            item["acceptedSuggestions"] = [{"id": s} for s in (accepted_suggestions or []) if s]
            if not item["acceptedSuggestions"]:
                del item["acceptedSuggestions"]
        else:
            reason: dict[str, Any] = {}
            if override_reason:
                reason["reason"] = override_reason
            if user_comment and user_comment.strip():
                reason["userComment"] = user_comment.strip()
            if reason:
                item["overrideReason"] = reason
        url = service.feedback_url
        try:
            resp = await self.http.post(url, json={"feedback": [item]}, headers=self._headers(url),
                                        timeout=self.timeout)
        except httpx.HTTPError as exc:
            return Outcome(False, message=f"feedback not delivered ({type(exc).__name__})")
        if resp.status_code >= 300:
            return Outcome(False, resp.status_code, f"feedback refused: {_describe_error(resp)}")
        return Outcome(True, resp.status_code, "feedback sent")

    # -- suggestions ---------------------------------------------------------------------------------------

    async def apply_actions(self, actions: list[dict[str, Any]]) -> Outcome:
        """Apply one suggestion's actions to the FHIR server as a single transaction (all or nothing)."""
        try:
            bundle = actions_to_transaction(actions)
        except ValueError as exc:
            return Outcome(False, message=str(exc))
        if not bundle["entry"]:
            return Outcome(True, message="the suggestion has no actions to apply")
        try:
            resp = await self.fhir.post("", json=bundle, headers={"Content-Type": "application/fhir+json"},
                                        timeout=self.timeout)
        except httpx.HTTPError as exc:
            return Outcome(False, message=f"the FHIR server could not be reached ({type(exc).__name__})")
        if resp.status_code >= 300:
            return Outcome(False, resp.status_code, f"the FHIR server refused the transaction: "
                                                    f"{_describe_error(resp)}")
        try:
            body = resp.json()
        except ValueError:
            body = None
        locations = [e.get("response", {}).get("location", "") for e in (body or {}).get("entry", [])]
        done = ", ".join(loc.split("/_history")[0].removeprefix(self.fhir_base + "/") for loc in locations if loc)
        done = done or "done"
        return Outcome(True, resp.status_code, f"applied: {done}", body)


def _next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def card_problem(card: Any) -> str | None:
    """Why a card is not renderable per CDS Hooks 2.0 (None when it is)."""
    if not isinstance(card, dict):
        return "not an object"
    if not isinstance(card.get("summary"), str) or not card["summary"].strip():
        return "no summary"
    if card.get("indicator") not in ("info", "warning", "critical"):
        return "indicator must be info, warning or critical"
    src = card.get("source")
    if not isinstance(src, dict) or not isinstance(src.get("label"), str) or not src["label"]:
        return "no source.label"
    for key in ("suggestions", "links", "overrideReasons"):
        if key in card and not isinstance(card[key], list):
            return f"{key} is not a list"
    return None


_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def actions_to_transaction(actions: list[dict[str, Any]]) -> dict[str, Any]:
    """CDS suggestion actions -> FHIR transaction Bundle.

    create: POST (a UUID id becomes the entry's urn:uuid fullUrl, so actions may reference each other);
    update: PUT Type/id; delete: DELETE resourceId (one relative reference, or a list of them).
    """
    entries: list[dict[str, Any]] = []
    for i, action in enumerate(actions or []):
        if not isinstance(action, dict):
            raise ValueError(f"action {i + 1} is not an object")
        kind = action.get("type")
        resource = action.get("resource")
        if kind in ("create", "update"):
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                raise ValueError(f"action {i + 1} ({kind}) has no resource")
            rtype = resource["resourceType"]
            if kind == "create":
                res = dict(resource)
                rid = res.pop("id", None)
                full = f"urn:uuid:{rid}" if isinstance(rid, str) and _UUID_RE.match(rid) else f"urn:uuid:{uuid.uuid4()}"
                entries.append({"fullUrl": full, "resource": res, "request": {"method": "POST", "url": rtype}})
            else:
                rid = resource.get("id")
                if not isinstance(rid, str) or not rid:
                    raise ValueError(f"action {i + 1} (update) has a resource without an id")
                entries.append({"resource": resource, "request": {"method": "PUT", "url": f"{rtype}/{rid}"}})
        elif kind == "delete":
            targets = action.get("resourceId")
            targets = targets if isinstance(targets, list) else [targets]
            for target in targets:
                if not isinstance(target, str) or "/" not in target:
                    raise ValueError(f"action {i + 1} (delete) needs resourceId as Type/id")
                entries.append({"request": {"method": "DELETE", "url": target.strip("/")}})
        else:
            raise ValueError(f"action {i + 1} has unknown type {kind!r}")
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
