"""The sandbox "EHR" screen at /sandbox/: a patient list and a chart that fires CDS hooks like a real EHR.

Server-rendered (jinja2), usable without JavaScript. Opening a patient's encounter fires `encounter-start` and
`patient-view` at every service found by discovery of the configured CDS service URLs (default: this server's
own `/cds-services`), then renders the cards. Accepting a suggestion applies its actions to the sandbox FHIR
server as one transaction and sends `accepted` feedback; overriding sends `overridden` with the chosen reason;
a smart link creates a launch (bound to patient, encounter, practitioner and the card's appContext) and opens
the app with `iss` + `launch`. Cards shown are kept server-side (app store, 2 h) so a form post only names them
by position, never carries their content. Every state-changing form carries a CSRF token (double-submit cookie).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import html
import inspect
import json
import logging
import re
import secrets
from datetime import date, datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from markdown_it import MarkdownIt
from fastapi import APIRouter, HTTPException, Path as PathParam, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChainableUndefined
from markupsafe import Markup

from service.cds_hooks.models import FHIR_ID_PATTERN as FHIR_ID
from service.sandbox import cohort
from service.webfiles import static_path
from service.sandbox.cds_client import CdsClient, CdsService, HookCall, valid_http_url

log = logging.getLogger("onco.sandbox.ehr")

router = APIRouter(prefix="/sandbox", include_in_schema=False)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.undefined = ChainableUndefined  # FHIR data is sparse: a missing element renders as nothing

CSRF_COOKIE = "sandbox_csrf"
STORE_NS_SERVICES = "sandbox-ehr"
STORE_NS_VIEWS = "sandbox-ehr-view"
VIEW_TTL = 7200
CLINICIAN = "Practitioner/sandbox-clinician"
HOOK_TIMEOUT = 10.0
MAX_SERVICE_URLS = 10

# ---------------------------------------------------------------------------------------------------------
# Safe HTML: markdown from CDS services and narratives from FHIR servers are untrusted
# ---------------------------------------------------------------------------------------------------------

_ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "b", "em", "i", "u", "code", "pre", "blockquote", "ul", "ol", "li", "h1", "h2",
    "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption", "a", "span", "div",
    "sub", "sup", "dl", "dt", "dd", "small",
}
_VOID = {"br", "hr"}
_DROP_CONTENT = {"script", "style", "iframe", "object", "embed", "template", "noscript", "textarea", "title"}


class _Sanitiser(HTMLParser):
    """Allowlist HTML sanitiser: known tags only, no attributes except http(s)/mailto hrefs on links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP_CONTENT:
            self.skip += 1
            return
        if self.skip or tag not in _ALLOWED_TAGS:
            return
        extra = ""
        if tag == "a":
            href = dict(attrs).get("href") or ""
            if urlsplit(href).scheme in ("http", "https", "mailto"):
                extra = f' href="{html.escape(href, quote=True)}" rel="noopener noreferrer" target="_blank"'
        if tag in ("th", "td"):
            span = dict(attrs)
            for name in ("colspan", "rowspan"):
                if (span.get(name) or "").isdigit():
                    extra += f' {name}="{span[name]}"'
        self.out.append(f"<{tag}{extra}>")
        if tag not in _VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID and not self.skip:
            self.out.append(f"<{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_CONTENT:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip or tag not in self.open:
            return
        while self.open:
            t = self.open.pop()
            self.out.append(f"</{t}>")
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(html.escape(data, quote=False))

    def result(self) -> str:
        self.close()
        return "".join(self.out) + "".join(f"</{t}>" for t in reversed(self.open))


def sanitise_html(text: str) -> Markup:
    parser = _Sanitiser()
    parser.feed(text or "")
    return Markup(parser.result())


# CDS Hooks card details are GitHub-flavoured markdown: rendered as GFM (CommonMark + tables, strikethrough,
# autolinks, raw HTML) the way a permissive EHR does, then sanitised: only harmless markup survives.
_GFM = MarkdownIt("gfm-like", {"linkify": True, "html": True}).enable("linkify")


def render_markdown(text: str | None) -> Markup:
    """Card markdown -> sanitised HTML."""
    if not text:
        return Markup("")
    return sanitise_html(_GFM.render(text))


templates.env.filters["markdown"] = render_markdown
templates.env.filters["safe_html"] = sanitise_html

# ---------------------------------------------------------------------------------------------------------
# Wiring to the running sandbox (runtime from setup.py)
# ---------------------------------------------------------------------------------------------------------


def runtime(request: Request) -> Any:
    rt = getattr(request.app.state, "sandbox", None)
    if rt is None:
        raise HTTPException(503, "the sandbox is not running")
    return rt


def fhir_client(request: Request) -> httpx.AsyncClient:
    """The EHR's own trusted, in-process client for its FHIR server."""
    from service.sandbox.fhir_server import sandbox_fhir_client

    return sandbox_fhir_client(request.app)


def _signing_key(rt: Any) -> Any:
    keys = getattr(rt, "keys", None)
    if keys is not None and getattr(keys, "cds", None) is not None:
        return keys.cds
    from service.sandbox import keys as keys_module  # the brief's name, if H4 provides it

    return keys_module.cds_client_key()  # type: ignore[attr-defined]


def _token_minter(rt: Any) -> Any:
    """Access tokens for `fhirAuthorization`, minted by the sandbox authorization server.

    The token is issued to the CDS service's client id (what `fhirAuthorization.subject` names), on behalf of
    the signed-in clinician (its fhirUser)."""
    auth = getattr(rt, "auth", None)
    if auth is None or not hasattr(auth, "mint_access_token"):
        return None

    def mint(scope: str, patient: str | None, client_id: str, lifetime: int) -> str:
        return auth.mint_access_token(scope, patient, CLINICIAN, lifetime, client_id=client_id)

    return mint


def cds_client(request: Request, fhir: httpx.AsyncClient, http: httpx.AsyncClient | None = None) -> CdsClient:
    rt = runtime(request)
    settings = request.app.state.settings
    return CdsClient(public_url=settings.public_url, fhir_base=settings.sandbox_fhir_base,
                     signing_key=_signing_key(rt), fhir=fhir, http=http, token_minter=_token_minter(rt),
                     timeout=HOOK_TIMEOUT, token_lifetime=int(settings.sandbox_access_token_seconds),
                     own_client_id=settings.smart_client_id)


def store(request: Request) -> Any:
    return request.app.state.store


# ---------------------------------------------------------------------------------------------------------
# CSRF (double-submit cookie) and page helpers
# ---------------------------------------------------------------------------------------------------------


class PageError(Exception):
    """A problem shown to the user as a page (status, title, message), never as JSON or a traceback."""

    def __init__(self, status: int, title: str, message: str, back: str = "/sandbox/") -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.back = status, title, message, back


def html_errors(fn: Any) -> Any:
    """Route decorator: PageError -> an HTML error page."""

    @functools.wraps(fn)
    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return await fn(request, *args, **kwargs)
        except PageError as e:
            return error_page(request, e.title, e.message, e.status, e.back)

    return wrapper


def _browser_nonce(request: Request) -> str:
    """The random value in this browser's CSRF cookie (a new one when it has none)."""
    token = request.cookies.get(CSRF_COOKIE)
    if not token or not 20 <= len(token) <= 100:
        token = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(24)
        request.state.new_csrf = token
    return token


def sandbox_secret(request: Request) -> bytes:
    """A per-process secret that signs CSRF tokens and inbox sign-ins (a restart asks for a reload)."""
    secret = getattr(request.app.state, "sandbox_secret", None)
    if secret is None:
        secret = request.app.state.sandbox_secret = secrets.token_bytes(32)
    return secret


def csrf_token(request: Request) -> str:
    """The form token: an HMAC of the cookie's random value, so a cookie planted by another site or port
    (cookies are shared by every port of 127.0.0.1) and a form value it chose never match."""
    nonce = _browser_nonce(request)
    return hmac.new(sandbox_secret(request), f"csrf:{nonce}".encode(), "sha256").hexdigest()


async def check_csrf(request: Request) -> dict[str, str]:
    """The posted form, after checking its csrf field against the signed cookie; 403 otherwise."""
    form = await request.form()
    data = {k: v for k, v in form.items() if isinstance(v, str)}
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    sent = data.get("csrf") or ""
    expected = hmac.new(sandbox_secret(request), f"csrf:{cookie}".encode(), "sha256").hexdigest()
    if not cookie or not sent or not hmac.compare_digest(expected, sent):
        raise PageError(403, "Form expired", "The form's security token is missing or stale. Reload the page and "
                        "try again.")
    return data


def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    token = csrf_token(request)
    ctx = {"request": request, "csrf": token, **context}
    resp = templates.TemplateResponse(request, name, ctx, status_code=status)
    if request.cookies.get(CSRF_COOKIE) != _browser_nonce(request):
        secure = request.app.state.settings.public_url.startswith("https://")
        resp.set_cookie(CSRF_COOKIE, _browser_nonce(request), httponly=True, samesite="strict", secure=secure,
                        path="/sandbox")
    return resp


def error_page(request: Request, title: str, message: str, status: int, back: str = "/sandbox/") -> HTMLResponse:
    return page(request, "ehr/message.html", {"title": title, "message": message, "ok": False, "back": back},
                status)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    path = static_path(STATIC_DIR, name)
    if path is None:
        raise HTTPException(404)
    return FileResponse(path, headers={"Cache-Control": "max-age=300"})


# ---------------------------------------------------------------------------------------------------------
# Configured CDS services
# ---------------------------------------------------------------------------------------------------------


def default_service_url(request: Request) -> str:
    return f"{request.app.state.settings.public_url}/cds-services"


async def service_urls(request: Request) -> list[str]:
    saved = await store(request).get(STORE_NS_SERVICES, "discovery-urls")
    if saved is None:
        return [default_service_url(request)]
    return [u for u in saved.get("urls", []) if isinstance(u, str)]


async def save_service_urls(request: Request, urls: list[str]) -> None:
    await store(request).put(STORE_NS_SERVICES, "discovery-urls", {"urls": urls})


@router.get("/", response_class=HTMLResponse)
async def patient_list(request: Request) -> HTMLResponse:
    patients = cohort.load_index()
    oncology = [p for p in patients if "non-oncology" not in p["tags"]]
    others = [p for p in patients if "non-oncology" in p["tags"]]
    return page(request, "ehr/index.html", {
        "oncology": oncology, "others": others, "urls": await service_urls(request),
        "default_url": default_service_url(request), "fhir_base": request.app.state.settings.sandbox_fhir_base,
        "notice": request.query_params.get("notice"),
    })


@router.post("/services")
@html_errors
async def add_service(request: Request) -> Response:
    form = await check_csrf(request)
    urls = await service_urls(request)
    if form.get("action") == "remove":
        urls = [u for u in urls if u != form.get("url")]
        await save_service_urls(request, urls)
        return RedirectResponse("/sandbox/?" + urlencode({"notice": "Service removed."}), 303)
    if form.get("action") == "default":
        await save_service_urls(request, [default_service_url(request)])
        return RedirectResponse("/sandbox/?" + urlencode({"notice": "Restored the default service."}), 303)
    url = (form.get("url") or "").strip().rstrip("/")
    if not valid_http_url(url):
        return error_page(request, "Not a CDS service URL",
                          "Enter an http(s) URL of a CDS Hooks discovery endpoint, e.g. "
                          "https://example.org/cds-services.", 400)
    if not url.endswith("/cds-services"):
        url += "/cds-services"
    if url not in urls:
        if len(urls) >= MAX_SERVICE_URLS:
            return error_page(request, "Too many services", f"At most {MAX_SERVICE_URLS} discovery URLs.", 400)
        urls.append(url)
    await save_service_urls(request, urls)
    return RedirectResponse("/sandbox/?" + urlencode({"notice": f"Added {url}."}), 303)


# ---------------------------------------------------------------------------------------------------------
# Chart: data + hooks
# ---------------------------------------------------------------------------------------------------------


def _index_entry(pid: str) -> dict[str, Any] | None:
    return next((p for p in cohort.load_index() if p["id"] == pid), None)


def _codeable_text(cc: dict[str, Any] | None) -> str:
    if not cc:
        return ""
    if cc.get("text"):
        return str(cc["text"])
    for c in cc.get("coding") or []:
        if c.get("display"):
            return str(c["display"])
    c = (cc.get("coding") or [{}])[0]
    return f"{c.get('system', '')}|{c.get('code', '')}"


def _codes(cc: dict[str, Any] | None) -> str:
    return ", ".join(f"{_system_label(c.get('system'))} {c.get('code')}" for c in (cc or {}).get("coding") or [])


def _system_label(system: str | None) -> str:
    return {"http://snomed.info/sct": "SNOMED", "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
            "http://loinc.org": "LOINC", "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
            "http://www.whocc.no/atc": "ATC"}.get(system or "", system or "")


def _unit(q: dict[str, Any]) -> str:
    """The unit as people read it: UCUM codes ("Cel", "10*3/uL", "{score}") shown as "°C", "×10³/µL", nothing."""
    from service.clinical.units import human_unit

    if q.get("system") == "http://unitsofmeasure.org" and q.get("code"):
        return human_unit(q["code"])
    unit = q.get("unit") or q.get("code") or ""
    return human_unit(unit) if unit.startswith("{") or "*" in unit or unit in ("Cel", "mm[Hg]") else unit


def _value(obs: dict[str, Any]) -> str:
    if "valueQuantity" in obs:
        q = obs["valueQuantity"]
        return f"{q.get('value')} {_unit(q)}".strip()
    for key in ("valueInteger", "valueString", "valueBoolean"):
        if key in obs:
            return str(obs[key])
    if "valueCodeableConcept" in obs:
        return _codeable_text(obs["valueCodeableConcept"])
    if obs.get("component"):
        parts = [str(c.get("valueQuantity", {}).get("value", "?")) for c in obs["component"]]
        unit = _unit(obs["component"][0].get("valueQuantity", {}))
        return "/".join(parts) + (f" {unit}" if unit else "")
    return ""


def _when(value: str | None) -> str:
    if not value:
        return ""
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return t.strftime("%d %b %Y %H:%M") if "T" in value else t.strftime("%d %b %Y")


def _day(value: str | None) -> str:
    return _when((value or "")[:10]) if value else ""


templates.env.filters["when"] = _when
templates.env.filters["day"] = _day
templates.env.filters["cc"] = _codeable_text
templates.env.filters["codes"] = _codes


def _age(birth: str | None) -> int | None:
    try:
        b = date.fromisoformat(birth or "")
    except ValueError:
        return None
    today = datetime.now(timezone.utc).date()
    return today.year - b.year - ((today.month, today.day) < (b.month, b.day))


async def _search(fhir: httpx.AsyncClient, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        r = await fhir.get(path, params=params)
        if r.status_code != 200:
            return []
        return [e["resource"] for e in r.json().get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
    except (httpx.HTTPError, ValueError, KeyError):
        return []


async def chart_data(fhir: httpx.AsyncClient, pid: str) -> dict[str, Any] | None:
    r = await fhir.get(f"Patient/{pid}")
    if r.status_code != 200:
        return None
    patient = r.json()
    conds, meds, obs, srs, tasks, procs = await asyncio.gather(
        _search(fhir, "Condition", {"patient": pid, "_count": 100}),
        _search(fhir, "MedicationRequest", {"patient": pid, "_count": 100}),
        _search(fhir, "Observation", {"patient": pid, "_sort": "-date", "_count": 500}),
        _search(fhir, "ServiceRequest", {"patient": pid, "_count": 50}),
        _search(fhir, "Task", {"patient": pid, "_count": 50}),
        _search(fhir, "Procedure", {"patient": pid, "_count": 100}),
    )
    latest: dict[str, dict[str, Any]] = {}
    history: dict[str, int] = {}
    for o in obs:
        key = _codeable_text(o.get("code"))
        history[key] = history.get(key, 0) + 1
        if key not in latest:
            latest[key] = o
    name = (patient.get("name") or [{}])[0]
    return {
        "patient": patient,
        "name": " ".join([*name.get("given", []), name.get("family", "")]).strip() or pid,
        "age": _age(patient.get("birthDate")),
        "mrn": next((i.get("value") for i in patient.get("identifier", [])), ""),
        "conditions": conds,
        "medications": [m for m in meds if m.get("status") == "active"],
        "past_medications": [m for m in meds if m.get("status") != "active"],
        "procedures": sorted(procs, key=lambda p: p.get("performedDateTime") or p.get("performedPeriod", {}).get(
            "start", ""), reverse=True)[:8],
        "observations": [{"name": k, "value": _value(o), "when": o.get("effectiveDateTime"), "count": history[k]}
                         for k, o in latest.items()],
        "service_requests": srs,
        "tasks": tasks,
        "value": _value,
    }


async def fire_hooks(client: CdsClient, urls: list[str], pid: str, encounter: str | None
                     ) -> tuple[list[HookCall], list[dict[str, Any]]]:
    """Discover every URL, then call each service whose hook applies; returns (calls, discovery problems)."""
    discoveries = await asyncio.gather(*(client.discover(u) for u in urls))
    problems = [{"url": d.discovery_url, "error": d.error, "status": d.status, "elapsed_ms": d.elapsed_ms}
                for d in discoveries if d.error]
    base_ctx = {"userId": CLINICIAN, "patientId": pid}
    jobs = []
    for d in discoveries:
        for svc in d.services:
            if svc.hook == "encounter-start" and encounter:
                jobs.append(client.call(svc, {**base_ctx, "encounterId": encounter}))
            elif svc.hook == "patient-view":
                ctx = {**base_ctx, **({"encounterId": encounter} if encounter else {})}
                jobs.append(client.call(svc, ctx))
    calls = list(await asyncio.gather(*jobs))
    return calls, problems


def _service_to_json(s: CdsService) -> dict[str, Any]:
    return {"base": s.base, "id": s.id, "hook": s.hook, "title": s.title, "description": s.description,
            "prefetch": s.prefetch, "usage_requirements": s.usage_requirements}


def _service_from_json(d: dict[str, Any]) -> CdsService:
    return CdsService(**d)


@router.get("/patients/{pid}", response_class=HTMLResponse)
async def chart(request: Request, pid: str = PathParam(pattern=FHIR_ID)) -> HTMLResponse:
    encounter = request.query_params.get("encounter") or None
    if encounter is not None and not re.fullmatch(FHIR_ID, encounter):
        return error_page(request, "Encounter not found", "That is not an encounter id.", 404,
                          back=f"/sandbox/patients/{pid}")
    urls = await service_urls(request)
    async with fhir_client(request) as fhir:
        data = await chart_data(fhir, pid)
        if data is None:
            return error_page(request, "Patient not found", f"There is no patient {pid!r} on the sandbox FHIR "
                              "server.", 404)
        if encounter:
            r = await fhir.get(f"Encounter/{encounter}")
            if r.status_code != 200 or r.json().get("subject", {}).get("reference") != f"Patient/{pid}":
                return error_page(request, "Encounter not found", "That encounter does not belong to this "
                                  "patient.", 404, back=f"/sandbox/patients/{pid}")
            data["encounter"] = r.json()
        async with cds_client(request, fhir) as client:
            calls, problems = await fire_hooks(client, urls, pid, encounter)
    view_id = secrets.token_urlsafe(12)
    await store(request).put(STORE_NS_VIEWS, view_id, {
        "patient": pid, "encounter": encounter,
        "calls": [{"service": _service_to_json(c.service), "hook": c.service.hook, "hookInstance": c.hook_instance,
                   "cards": c.cards} for c in calls],
    }, ttl=VIEW_TTL)
    entry = _index_entry(pid)
    return page(request, "ehr/chart.html", {
        **data, "pid": pid, "scenario": entry, "encounter_id": encounter, "calls": calls, "problems": problems,
        "view_id": view_id, "urls": urls, "notice": request.query_params.get("notice"),
        "card_count": sum(len(c.cards) for c in calls),
    })


# ---------------------------------------------------------------------------------------------------------
# Card interactions
# ---------------------------------------------------------------------------------------------------------


async def _card_from_form(request: Request, form: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any],
                                                                          dict[str, Any]]:
    """(view, call, card) named by the form; HTTPException when stale or out of range."""
    view = await store(request).get(STORE_NS_VIEWS, form.get("view", ""))
    if view is None:
        raise PageError(409, "Cards expired", "These cards are no longer current. Reopen the chart to fetch fresh "
                        "cards.")
    try:
        call = view["calls"][int(form.get("call", ""))]
        card = call["cards"][int(form.get("card", ""))]
    except (ValueError, IndexError, KeyError):
        raise PageError(400, "No such card", "That card does not exist.", _chart_url(view)) from None
    return view, call, card


def _chart_url(view: dict[str, Any], notice: str | None = None) -> str:
    q: dict[str, str] = {}
    if view.get("encounter"):
        q["encounter"] = view["encounter"]
    if notice:
        q["notice"] = notice
    return f"/sandbox/patients/{view['patient']}" + (f"?{urlencode(q)}" if q else "")


@router.post("/cards/accept", response_class=HTMLResponse)
@html_errors
async def accept(request: Request) -> HTMLResponse:
    form = await check_csrf(request)
    view, call, card = await _card_from_form(request, form)
    try:
        suggestion = (card.get("suggestions") or [])[int(form.get("suggestion", ""))]
    except (ValueError, IndexError):
        raise PageError(400, "No such suggestion", "That suggestion does not exist.", _chart_url(view)) from None
    service = _service_from_json(call["service"])
    async with fhir_client(request) as fhir:
        async with cds_client(request, fhir) as client:
            applied = await client.apply_actions(suggestion.get("actions") or [])
            feedback = None
            if applied.ok and card.get("uuid"):
                ids = [suggestion["uuid"]] if suggestion.get("uuid") else []
                feedback = await client.feedback(service, card["uuid"], "accepted", accepted_suggestions=ids)
    lines = [applied.message]
    if feedback is not None:
        lines.append(feedback.message)
    elif applied.ok:
        lines.append("no feedback sent: the card has no uuid")
    return page(request, "ehr/message.html", {
        "title": "Suggestion applied" if applied.ok else "Suggestion not applied",
        "message": " · ".join(lines), "ok": applied.ok, "back": _chart_url(view),
        "detail": suggestion.get("label"),
    }, 200 if applied.ok else 502)


@router.post("/cards/override", response_class=HTMLResponse)
@html_errors
async def override(request: Request) -> HTMLResponse:
    form = await check_csrf(request)
    view, call, card = await _card_from_form(request, form)
    if not card.get("uuid"):
        return error_page(request, "Cannot send feedback", "This card has no uuid, so the service cannot be told.",
                          400, back=_chart_url(view))
    reasons = card.get("overrideReasons") or []
    reason = None
    if form.get("reason", "") != "":
        try:
            reason = reasons[int(form["reason"])]
        except (ValueError, IndexError):
            raise PageError(400, "Unknown reason", "That override reason is not one the card offers.",
                            _chart_url(view)) from None
    service = _service_from_json(call["service"])
    async with fhir_client(request) as fhir:
        async with cds_client(request, fhir) as client:
            result = await client.feedback(service, card["uuid"], "overridden", override_reason=reason,
                                           user_comment=(form.get("comment") or "")[:500])
    return page(request, "ehr/message.html", {
        "title": "Card dismissed" if result.ok else "Feedback not delivered",
        "message": result.message, "ok": result.ok, "back": _chart_url(view),
        "detail": (reason or {}).get("display"),
    }, 200 if result.ok else 502)


async def _create_launch(rt: Any, patient: str, encounter: str | None, practitioner: str,
                         app_context: Any) -> str:
    """A launch id from the sandbox authorization server (bound to the context and the card's appContext)."""
    fn = getattr(getattr(rt, "auth", None), "create_launch", None)
    if fn is None:
        from service.sandbox import auth_server

        fn = getattr(auth_server, "create_launch")
    result = fn(patient=patient, encounter=encounter, practitioner=practitioner, app_context=app_context)
    if inspect.isawaitable(result):
        result = await result
    return str(result)


@router.post("/cards/launch")
@html_errors
async def launch(request: Request) -> Response:
    form = await check_csrf(request)
    view, call, card = await _card_from_form(request, form)
    try:
        link = (card.get("links") or [])[int(form.get("link", ""))]
    except (ValueError, IndexError):
        raise PageError(400, "No such link", "That link does not exist.", _chart_url(view)) from None
    url = str(link.get("url") or "")
    if link.get("type") != "smart" or not valid_http_url(url):
        return error_page(request, "Not a SMART link", "Only smart links with an http(s) URL can be launched.",
                          400, back=_chart_url(view))
    try:
        launch_id = await _create_launch(runtime(request), view["patient"], view.get("encounter"), CLINICIAN,
                                         link.get("appContext"))
    except Exception as exc:  # noqa: BLE001 - shown to the user, never a traceback
        log.warning("sandbox EHR: launch creation failed (%s)", type(exc).__name__)
        return error_page(request, "Launch failed", "The sandbox authorization server could not create a "
                          "launch.", 502, back=_chart_url(view))
    iss = request.app.state.settings.sandbox_fhir_base
    sep = "&" if urlsplit(url).query else "?"
    return RedirectResponse(f"{url}{sep}{urlencode({'iss': iss, 'launch': launch_id})}", 303)


def card_json(card: dict[str, Any]) -> str:
    return json.dumps(card, indent=2, ensure_ascii=False)


templates.env.filters["card_json"] = card_json
