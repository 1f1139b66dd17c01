"""The one place that talks HTTP to FHIR servers: an async R4 client with the failure handling EHRs need.

- `Accept: application/fhir+json` on every call; bodies sent as `application/fhir+json`.
- Bearer auth from an async `token_provider`; on a 401 the `on_unauthorized` hook is awaited once (it
  refreshes and returns the new token, or None) and the request is retried once with the new token.
- Per-request timeouts; retries with exponential backoff for idempotent reads only (GET, on timeouts,
  connection errors, 429 and 5xx). POSTs (create, transaction) are never retried: a lost response may
  hide a committed write.
- Search follows `next` links up to `max_pages`, and only within the base URL's origin: a foreign `next`
  link is refused (the bearer token is never sent to another host).
- Errors are `FhirError(status, message, outcome)`: an OperationOutcome's diagnostics become the message;
  non-JSON bodies and wrong resource types are errors too, never silently accepted.
- Logs carry the interaction, resource type, resource id and status only: never tokens, bodies, or query
  strings (a query may hold a patient identifier).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence
from urllib.parse import urljoin, urlsplit

import httpx

from service import metrics
from service.fhir.capability import Capability, parse_capability
from service.fhir.errors import STATUS_BAD_GATEWAY, STATUS_GATEWAY_TIMEOUT, FhirError, outcome_message

log = logging.getLogger("service.fhir.client")
# httpx logs every request URL at INFO, query string included (a search may carry a patient identifier):
# keep it at WARNING unless someone deliberately configured it (service.logs does the same at start-up).
for _name in ("httpx", "httpcore"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

FHIR_JSON = "application/fhir+json"
TokenProvider = Callable[[], Awaitable[str | None]]
Params = Mapping[str, str | int | Sequence[str]] | Sequence[tuple[str, str]] | None

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_MAX_PAGES = 10
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # one page of a patient's data is a few MB at most
MAX_RETRY_AFTER = 5.0


@dataclass
class SearchResult:
    """All pages of one search. `resources` = matches then includes (deduplicated, server order)."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    total: int | None = None
    pages: int = 0
    truncated: bool = False  # stopped at max_pages while the server still offered a next link
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # search.mode=outcome (e.g. ignored params)


@dataclass
class CreateResult:
    resource: dict[str, Any]
    created: bool  # False when If-None-Exist matched an existing resource (200)
    status: int
    location: str | None = None

    @property
    def id(self) -> str:
        return str(self.resource.get("id"))


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def _norm_params(params: Params) -> list[tuple[str, str]]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        out: list[tuple[str, str]] = []
        for k, v in params.items():
            if isinstance(v, (list, tuple)):
                out.extend((k, str(x)) for x in v)
            else:
                out.append((k, str(v)))
        return out
    return [(str(k), str(v)) for k, v in params]


def _static_token(token: str) -> TokenProvider:
    async def provider() -> str | None:
        return token

    return provider


class FhirClient:
    """Async FHIR R4 client bound to one server base URL. Use as `async with FhirClient(...) as c:`."""

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider | str | None = None,
        *,
        on_unauthorized: TokenProvider | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.25,
        max_pages: int = DEFAULT_MAX_PAGES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token_provider = _static_token(token_provider) if isinstance(token_provider, str) else token_provider
        self._on_unauthorized = on_unauthorized
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_pages = max(1, max_pages)
        self.max_response_bytes = max_response_bytes
        self.requests_sent = 0  # HTTP requests actually sent (retries included): benchmarks read it
        self._capability: Capability | None = None
        base_headers = {"Accept": FHIR_JSON, **(headers or {})}
        self._http = httpx.AsyncClient(headers=base_headers, transport=transport, follow_redirects=False,
                                       timeout=timeout)

    async def __aenter__(self) -> "FhirClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- public interactions ---------------------------------------------------------------------------------

    async def read(self, resource_type: str, resource_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """GET [base]/Type/id; the answer must be that resource type."""
        resp = await self._send("GET", f"{self.base_url}/{resource_type}/{resource_id}", interaction="read",
                                rtype=resource_type, timeout=timeout)
        return self._body(resp, "read", expect=resource_type)

    async def search(self, resource_type: str, params: Params = None, *, max_pages: int | None = None,
                     timeout: float | None = None) -> SearchResult:
        """GET [base]/Type?params, following same-origin `next` links up to max_pages pages."""
        limit = max(1, max_pages or self.max_pages)
        result = SearchResult()
        seen_ids: set[tuple[str, str]] = set()
        seen_urls: set[str] = set()
        url: str | None = f"{self.base_url}/{resource_type}"
        query: list[tuple[str, str]] | None = _norm_params(params)
        while url is not None:
            if result.pages >= limit:
                result.truncated = True
                log.warning("fhir search %s stopped after %d pages (more available)", resource_type, limit)
                break
            resp = await self._send("GET", url, interaction="search", rtype=resource_type, params=query,
                                    timeout=timeout)
            bundle = self._body(resp, "search", expect="Bundle")
            if bundle.get("type") not in (None, "searchset"):
                raise self._malformed("search", f"expected a searchset Bundle, got type {bundle.get('type')!r}")
            result.pages += 1
            if result.total is None and isinstance(bundle.get("total"), int):
                result.total = bundle["total"]
            self._collect(bundle, result, seen_ids)
            url = self._next_link(bundle, resource_type)
            query = None  # the next link carries the whole query
            if url is not None:
                if url in seen_urls:
                    break  # a server repeating its own next link would loop forever
                seen_urls.add(url)
        return result

    async def search_all(self, resource_type: str, params: Params = None, *, max_pages: int | None = None,
                         timeout: float | None = None) -> list[dict[str, Any]]:
        """The resources of all pages (see `search`)."""
        return (await self.search(resource_type, params, max_pages=max_pages, timeout=timeout)).resources

    async def search_concurrently(
        self, searches: Mapping[str, tuple[str, Params]], *, max_pages: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, SearchResult | FhirError]:
        """Run independent searches at once; each key maps to its SearchResult or the FhirError it raised."""
        keys = list(searches)
        outs = await asyncio.gather(
            *(self.search(searches[k][0], searches[k][1], max_pages=max_pages, timeout=timeout) for k in keys),
            return_exceptions=True)
        result: dict[str, SearchResult | FhirError] = {}
        for k, o in zip(keys, outs):
            if isinstance(o, BaseException) and not isinstance(o, FhirError):
                raise o
            result[k] = o  # type: ignore[assignment]
        return result

    async def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None,
                     timeout: float | None = None) -> CreateResult:
        """POST [base]/Type (never retried). With if_none_exist the server returns the match instead (200)."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            raise ValueError("resource has no resourceType")
        resp = await self._send("POST", f"{self.base_url}/{rtype}", interaction="create", rtype=rtype,
                                content=json.dumps(resource).encode(),
                                headers=_write_headers("If-None-Exist", if_none_exist), timeout=timeout)
        location = resp.headers.get("location") or resp.headers.get("content-location")
        if resp.status_code < 400 and not resp.content.strip():
            # the server ignored Prefer: return=representation; read what it created
            rid = _id_from_location(location, rtype)
            if rid is None:
                raise self._malformed("create", "empty response without a usable Location header")
            body = await self.read(rtype, rid, timeout=timeout)
        else:
            body = self._body(resp, "create", expect=rtype)
        if not body.get("id"):
            raise self._malformed("create", f"created {rtype} has no id")
        return CreateResult(resource=body, created=resp.status_code == 201, status=resp.status_code,
                            location=location)

    async def update(self, resource: dict[str, Any], *, if_match: str | None = None,
                     timeout: float | None = None) -> dict[str, Any]:
        """PUT [base]/Type/id (never retried); `if_match` (W/"n") makes a concurrent change a 412, not a loss."""
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not rtype or not isinstance(rid, str) or not rid:
            raise ValueError("update needs a resource with resourceType and id")
        resp = await self._send("PUT", f"{self.base_url}/{rtype}/{rid}", interaction="update", rtype=rtype,
                                content=json.dumps(resource).encode(), headers=_write_headers("If-Match", if_match),
                                timeout=timeout)
        if resp.status_code < 400 and not resp.content.strip():
            return await self.read(rtype, rid, timeout=timeout)
        return self._body(resp, "update", expect=rtype)

    async def transaction(self, bundle: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """POST a transaction Bundle (never retried); returns the transaction-response Bundle."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise ValueError("transaction() needs a Bundle of type transaction")
        resp = await self._send("POST", self.base_url, interaction="transaction", rtype="Bundle",
                                content=json.dumps(bundle).encode(), headers={"Content-Type": FHIR_JSON},
                                timeout=timeout)
        out = self._body(resp, "transaction", expect="Bundle")
        if out.get("type") != "transaction-response":
            raise self._malformed("transaction", f"expected a transaction-response, got {out.get('type')!r}")
        sent, got = len(bundle.get("entry") or []), len(out.get("entry") or [])
        if sent != got:
            raise self._malformed("transaction", f"response has {got} entries for {sent} requests")
        for e in out.get("entry") or []:
            if not isinstance(e, dict) or not isinstance(e.get("response"), dict):
                raise self._malformed("transaction", "response entry without a response element")
        return out

    async def capability_statement(self, *, timeout: float | None = None) -> dict[str, Any]:
        resp = await self._send("GET", f"{self.base_url}/metadata", interaction="capabilities",
                                rtype="CapabilityStatement", timeout=timeout)
        return self._body(resp, "capabilities", expect="CapabilityStatement")

    async def capabilities(self, *, refresh: bool = False, timeout: float | None = None) -> Capability:
        """The server's parsed CapabilityStatement (fetched once per client)."""
        if self._capability is None or refresh:
            self._capability = parse_capability(await self.capability_statement(timeout=timeout))
        return self._capability

    # -- internals -------------------------------------------------------------------------------------------

    def _collect(self, bundle: dict[str, Any], result: SearchResult, seen: set[tuple[str, str]]) -> None:
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise self._malformed("search", "Bundle.entry is not a list")
        matches: list[dict[str, Any]] = []
        includes: list[dict[str, Any]] = []
        for e in entries:
            res = e.get("resource") if isinstance(e, dict) else None
            if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
                raise self._malformed("search", "Bundle entry without a resource")
            mode = (e.get("search") or {}).get("mode") if isinstance(e.get("search"), dict) else None
            if mode == "outcome" or (res["resourceType"] == "OperationOutcome" and mode != "match"):
                result.outcomes.append(res)
                continue
            key = (res["resourceType"], str(res.get("id")))
            if res.get("id") is not None and key in seen:
                continue
            seen.add(key)
            (includes if mode == "include" else matches).append(res)
        result.resources.extend(matches)
        result.resources.extend(includes)

    def _next_link(self, bundle: dict[str, Any], rtype: str) -> str | None:
        links = bundle.get("link") or []
        nxt = next((lk.get("url") for lk in links if isinstance(lk, dict) and lk.get("relation") == "next"), None)
        if not nxt:
            return None
        if not isinstance(nxt, str):
            raise self._malformed("search", "next link is not a string")
        url = urljoin(self.base_url + "/", nxt)
        if _origin(url) != _origin(self.base_url):
            metrics.FHIR_ERRORS.labels("search", "foreign-link").inc()
            log.warning("fhir search %s: refused a next link to another origin", rtype)
            raise FhirError(STATUS_BAD_GATEWAY, "the server's next-page link points to another origin; refused",
                            kind="foreign-link", interaction="search")
        return url

    def _malformed(self, interaction: str, why: str) -> FhirError:
        metrics.FHIR_ERRORS.labels(interaction, "malformed").inc()
        return FhirError(STATUS_BAD_GATEWAY, f"malformed response from the FHIR server: {why}",
                         kind="malformed", interaction=interaction)

    def _body(self, resp: httpx.Response, interaction: str, expect: str) -> dict[str, Any]:
        if resp.status_code >= 400:
            raise self._http_error(resp, interaction)
        try:
            body = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise self._malformed(interaction, "body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise self._malformed(interaction, "body is not a FHIR resource")
        if body["resourceType"] != expect:
            if body["resourceType"] == "OperationOutcome":
                err = self._http_error(resp, interaction, body)
                err.status = STATUS_BAD_GATEWAY
                raise err
            raise self._malformed(interaction, f"expected {expect}, got {body['resourceType']}")
        return body

    def _http_error(self, resp: httpx.Response, interaction: str, body: Any = None) -> FhirError:
        if body is None:
            try:
                body = resp.json()
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
                body = None
        outcome = body if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None
        default = f"HTTP {resp.status_code} {resp.reason_phrase or ''}".strip()
        message = outcome_message(outcome, default)
        kind = "auth" if resp.status_code in (401, 403) else "http"
        metrics.FHIR_ERRORS.labels(interaction, f"http_{resp.status_code}").inc()
        return FhirError(resp.status_code, message, outcome, kind=kind, interaction=interaction)

    async def _auth_header(self) -> dict[str, str]:
        if self._token_provider is None:
            return {}
        token = await self._token_provider()
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _send(self, method: str, url: str, *, interaction: str, rtype: str,
                    params: list[tuple[str, str]] | None = None, content: bytes | None = None,
                    headers: Mapping[str, str] | None = None, timeout: float | None = None) -> httpx.Response:
        """One logical call: auth, retries for GET, one refresh-and-retry on 401, metrics."""
        idempotent = method == "GET"
        attempts = 1 + (self.retries if idempotent else 0)
        t = httpx.Timeout(timeout if timeout is not None else self.timeout)
        auth = await self._auth_header()
        refreshed = False
        attempt = 0
        start = time.perf_counter()
        try:
            while True:
                attempt += 1
                try:
                    self.requests_sent += 1
                    resp = await self._fetch(method, url, params, content, {**(headers or {}), **auth}, t)
                except httpx.TimeoutException:
                    if attempt < attempts:
                        await self._sleep(attempt, None)
                        continue
                    metrics.FHIR_ERRORS.labels(interaction, "timeout").inc()
                    raise FhirError(STATUS_GATEWAY_TIMEOUT, "the FHIR server did not answer in time",
                                    kind="timeout", interaction=interaction) from None
                except httpx.TransportError as exc:
                    if attempt < attempts:
                        await self._sleep(attempt, None)
                        continue
                    metrics.FHIR_ERRORS.labels(interaction, "transport").inc()
                    raise FhirError(STATUS_BAD_GATEWAY, f"could not reach the FHIR server ({type(exc).__name__})",
                                    kind="transport", interaction=interaction) from None
                if resp.status_code == 401 and not refreshed and self._on_unauthorized is not None:
                    refreshed = True
                    log.info("fhir %s %s: 401, refreshing the access token once", interaction, rtype)
                    try:
                        token = await self._on_unauthorized()
                    except Exception as exc:  # noqa: BLE001 - a failed refresh is reported as the 401 it was
                        log.warning("fhir %s %s: token refresh failed (%s)", interaction, rtype, type(exc).__name__)
                        token = None
                    if token:
                        auth = {"Authorization": f"Bearer {token}"}
                        attempt -= 1  # the refresh retry does not use up a transient-error retry
                        continue
                if resp.status_code in RETRY_STATUSES and attempt < attempts:
                    log.info("fhir %s %s: %d, retrying", interaction, rtype, resp.status_code)
                    await self._sleep(attempt, resp.headers.get("retry-after"))
                    continue
                level = logging.DEBUG if resp.status_code < 400 else logging.WARNING
                log.log(level, "fhir %s %s -> %d (%.0f ms, %d attempt(s))", interaction, rtype, resp.status_code,
                        (time.perf_counter() - start) * 1000, attempt)
                metrics.FHIR_CALLS.labels(interaction, "ok" if resp.status_code < 400 else "error").observe(
                    time.perf_counter() - start)
                return resp
        except FhirError:
            log.warning("fhir %s %s failed after %d attempt(s)", interaction, rtype, attempt)
            metrics.FHIR_CALLS.labels(interaction, "error").observe(time.perf_counter() - start)
            raise

    async def _fetch(self, method: str, url: str, params: list[tuple[str, str]] | None, content: bytes | None,
                     headers: dict[str, str], timeout: httpx.Timeout) -> httpx.Response:
        """Send and read the body, refusing one larger than `max_response_bytes` (decoded) before it is all in
        memory: a hostile or broken server must not exhaust the service's memory."""
        request = self._http.build_request(method, url, params=params or None, content=content, headers=headers,
                                           timeout=timeout)
        resp = await self._http.send(request, stream=True)
        try:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                raise self._too_large()
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise self._too_large()
                chunks.append(chunk)
        finally:
            await resp.aclose()
        resp._content = b"".join(chunks)  # what `aread()` would have stored; the stream is consumed and closed
        return resp

    def _too_large(self) -> FhirError:
        metrics.FHIR_ERRORS.labels("read", "too-large").inc()
        return FhirError(STATUS_BAD_GATEWAY, f"the FHIR server's answer is larger than "
                         f"{self.max_response_bytes} bytes; refused", kind="too-large")

    async def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
            except ValueError:
                pass
        await asyncio.sleep(delay)


def _write_headers(condition: str, value: str | None) -> dict[str, str]:
    """Headers of a create or update: FHIR JSON, the resource back, and its condition (If-None-Exist, If-Match)."""
    headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
    if value:
        headers[condition] = value
    return headers


def _id_from_location(location: str | None, rtype: str) -> str | None:
    """'.../Type/id/_history/1' or 'Type/id' -> id."""
    if not location:
        return None
    segs = [s for s in urlsplit(location).path.split("/") if s]
    for i, s in enumerate(segs[:-1]):
        if s == rtype:
            return segs[i + 1]
    return None


def id_from_location(location: str | None, rtype: str) -> str | None:
    """Public form of the Location parser (write-back reads transaction responses with it)."""
    return _id_from_location(location, rtype)


def resources_of(bundles: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten Bundle entries into resources (for callers holding raw Bundles, e.g. CDS prefetch)."""
    out: list[dict[str, Any]] = []
    for b in bundles:
        for e in b.get("entry") or []:
            if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                out.append(e["resource"])
    return out
