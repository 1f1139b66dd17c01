"""Write a signed prescription back as FHIR, in the way the target server can take it, exactly once.

Strategies (`choose_strategy` picks one from the CapabilityStatement, the configured override and the
scopes the EHR granted):
- `full`: CarePlan + Goals + ServiceRequests + Task + Provenance in one transaction (needs transaction
  and create on CarePlan, Goal, ServiceRequest and Task).
- `care-coordination`: the full set to the hospital's separate care-coordination FHIR server (one
  transaction there), then a DocumentReference in the EHR linking to it. Chosen automatically when the EHR
  cannot take the full set and a care-coordination server is configured.
- `service-request-only` (Epic-like: no CarePlan create): the ServiceRequests and a DocumentReference.
- `document` (no ServiceRequest create): only the DocumentReference with the readable prescription.

Use: `await write_back(ehr, entries, document, strategy=..., store=..., signing_key=..., care_coordination=...)`
- `entries`: transaction entries `{fullUrl (urn:uuid), resource, ifNoneExist}` as built by
  `service.fhir.resources` (`build_prescription_resources` for full / care-coordination,
  `build_service_request_only` for service-request-only). Entries of types the strategy does not write
  are dropped and references to them pruned.
- `document`: the DocumentReference (an entry, a bare resource, or a callable `(related_refs: list[str]) ->
  entry | resource` so that it can link to what was written: urn:uuids of the same transaction, or absolute
  URLs on the care-coordination server). None when the strategy needs none (full) or entries carry it.
- `capability` / `cc_capability`: parsed CapabilityStatements; fetched from the servers when omitted.

Exactly once: every resource is validated (`service.fhir.validate.assert_valid`) before anything is sent;
each signing holds a lock in the shared Store (`Store.add` on the signing key), so concurrent identical
signings wait for the first and get its result; the finished result is kept under the signing key and a
second signing returns it (`replayed=True`). On the wire, conditional create (`ifNoneExist`) is used where
the server advertises it (and the search parameter it needs), otherwise each resource is looked up by its
business identifier first and only the missing ones are created. A transaction is all-or-nothing; for the
multi-step care-coordination strategy and for servers without transactions, `WriteResult` (or the
`WritebackError.result` raised) says what was written where and what failed — signing again completes the
set without duplicates.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Union
from urllib.parse import parse_qsl

from service import metrics
from service.fhir.capability import Capability
from service.fhir.client import FhirClient, id_from_location
from service.fhir.errors import FhirError
from service.storage import Store

log = logging.getLogger("service.fhir.writeback")

Strategy = Literal["full", "service-request-only", "document", "care-coordination"]
STRATEGIES: tuple[str, ...] = ("full", "service-request-only", "document", "care-coordination")
FULL_TYPES = ("CarePlan", "Goal", "ServiceRequest", "Task")
OPTIONAL_TYPES = ("Provenance", "DocumentReference")  # dropped (with a note) when the server cannot create them
STRATEGY_TYPES: dict[str, tuple[str, ...] | None] = {
    "full": None,  # everything
    "service-request-only": ("ServiceRequest", "DocumentReference"),
    "document": ("DocumentReference",),
    "care-coordination": None,
}

NS_LOCK = "writeback-lock"
NS_RESULT = "writeback-result"
RESULT_TTL = 180 * 24 * 3600.0

Entry = dict[str, Any]
DocumentArg = Union[Entry, Callable[[list[str]], Entry], None]


# ---------------------------------------------------------------------------------------------------------
# Results and errors
# ---------------------------------------------------------------------------------------------------------


@dataclass
class WriteResult:
    """What was written. Each `written` item: resourceType, id, reference (Type/id), url, server, status
    (`created` | `existing`). `failed` names secondary steps that failed; `notes` what was skipped and why."""

    strategy: str
    written: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "written": self.written, "failed": self.failed, "notes": self.notes}

    @classmethod
    def from_json(cls, d: dict[str, Any], replayed: bool = False) -> "WriteResult":
        return cls(strategy=d["strategy"], written=list(d.get("written") or []), failed=list(d.get("failed") or []),
                   notes=list(d.get("notes") or []), replayed=replayed)

    def references(self, resource_type: str | None = None) -> list[str]:
        return [w["reference"] for w in self.written if resource_type in (None, w["resourceType"])]


class WritebackError(Exception):
    """Nothing (or, per `result`, only part) was written. `status` maps to the caller's HTTP answer:
    422 invalid resources, 409 another signing still in progress, 403 no write path, else the FHIR status."""

    def __init__(self, message: str, *, status: int = 502, result: WriteResult | None = None,
                 outcome: dict[str, Any] | None = None, issues: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.result = result
        self.outcome = outcome
        self.issues = issues or []


# ---------------------------------------------------------------------------------------------------------
# Choosing the strategy
# ---------------------------------------------------------------------------------------------------------

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Za-z]+)\.([a-z*]+)(\?.*)?$")


def scopes_allow_create(granted_scopes: Iterable[str] | str | None, resource_type: str) -> bool:
    """SMART v1 (`.write`, `.*`) or v2 (`.c...`) create permission on the type or `*`; None = unknown = yes."""
    if granted_scopes is None:
        return True
    scopes = granted_scopes.split() if isinstance(granted_scopes, str) else list(granted_scopes)
    for s in scopes:
        m = _SCOPE.match(s)
        if not m or m.group(2) not in ("*", resource_type):
            continue
        perm = m.group(3)
        if perm in ("write", "*") or (perm not in ("read",) and "c" in perm and set(perm) <= set("cruds")):
            return True
    return False


def choose_strategy(capability: Capability | None, override: str | None = None,
                    granted_scopes: Iterable[str] | str | None = None, *,
                    care_coordination_available: bool = False) -> str:
    """The strategy to use. An explicit override (not `auto`) wins: hospital IT knows its EHR best.

    Otherwise: `full` when the server takes transactions and creates on CarePlan, Goal, ServiceRequest and
    Task (and the token allows those creates); else `care-coordination` when such a server is configured;
    else `service-request-only` when ServiceRequest create is possible; else `document`. Raises
    WritebackError (403) when not even a DocumentReference can be written.
    """
    if override and override != "auto":
        if override not in STRATEGIES:
            raise ValueError(f"unknown write-back strategy {override!r} (use auto or one of {', '.join(STRATEGIES)})")
        return override
    if capability is None:
        return "full"

    def can(t: str) -> bool:
        return capability.can_create(t) and scopes_allow_create(granted_scopes, t)

    if capability.transaction and all(can(t) for t in FULL_TYPES):
        return "full"
    if care_coordination_available:
        return "care-coordination"
    if can("ServiceRequest"):
        return "service-request-only"
    if can("DocumentReference"):
        return "document"
    missing = [t for t in ("ServiceRequest", "DocumentReference") if not capability.can_create(t)]
    why = (f"the server does not support create on {', '.join(missing)}" if missing
           else "the access token does not grant create on ServiceRequest or DocumentReference")
    raise WritebackError(f"no way to write the prescription back: {why}", status=403)


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


async def write_back(ehr: FhirClient, entries: list[Entry], document: DocumentArg = None, *, strategy: str,
                     store: Store, signing_key: str, care_coordination: FhirClient | None = None,
                     capability: Capability | None = None, cc_capability: Capability | None = None,
                     lock_ttl: float = 15.0, wait_seconds: float = 60.0, resume: bool = False) -> WriteResult:
    """Write per `strategy` (see the module docstring); idempotent per `signing_key`.

    The per-signing lock is a lease (service.lease) renewed while this call runs, so a worker killed mid-write
    blocks the signing for `lock_ttl` seconds, not longer. `resume=True` (an earlier attempt was interrupted)
    first reads the server for every resource by its business identifier, so what the dead attempt wrote is
    found and reported as `existing`, and only the rest is created."""
    from service.lease import Lease

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown write-back strategy {strategy!r}")
    if strategy == "care-coordination" and care_coordination is None:
        raise WritebackError("the care-coordination strategy needs a care-coordination FHIR server", status=500)
    if not signing_key:
        raise ValueError("signing_key is required (it makes the write idempotent)")

    done = await store.get(NS_RESULT, signing_key)
    lease = Lease(store, NS_LOCK, signing_key, lock_ttl)
    if done is None:
        done = await _acquire(store, lease, wait_seconds)
    if done is not None:
        metrics.WRITEBACK.labels(done.get("strategy", strategy), "replayed").inc()
        log.info("write-back of this signing already done: returning the first result")
        return WriteResult.from_json(done, replayed=True)
    async with lease.held():
        try:
            result = await _write(ehr, entries, document, strategy, care_coordination, capability, cc_capability,
                                  resume)
        except WritebackError:
            metrics.WRITEBACK.labels(strategy, "error").inc()
            raise
        except FhirError as exc:  # e.g. the CapabilityStatement fetch failed
            metrics.WRITEBACK.labels(strategy, "error").inc()
            raise WritebackError(f"write-back failed: {exc.message}", status=exc.status, outcome=exc.outcome) from exc
        if result.failed:
            metrics.WRITEBACK.labels(strategy, "partial").inc()
        else:
            try:  # the replay cache only saves a later call some reads: losing it (store down) loses nothing
                await store.put(NS_RESULT, signing_key, result.to_json(), ttl=RESULT_TTL)
            except Exception as exc:  # noqa: BLE001
                log.warning("write-back result not cached (%s); the write itself is done", type(exc).__name__)
            found = any(w.get("status") == "existing" for w in result.written)
            metrics.WRITEBACK.labels(strategy, "resumed" if resume and found else "ok").inc()
        log.info("write-back %s: %d resources (%d created)", strategy, len(result.written),
                 sum(1 for w in result.written if w.get("status") == "created"))
        return result


async def _acquire(store: Store, lease: Any, wait_seconds: float) -> dict[str, Any] | None:
    """Take the per-signing lease (returns None), or wait for the holder and return its stored result."""
    deadline = time.monotonic() + wait_seconds
    while True:
        if await lease.acquire():
            done = await store.get(NS_RESULT, lease.key)  # finished between our first look and the lease
            if done is not None:
                await lease.release()
            return done
        done = await store.get(NS_RESULT, lease.key)
        if done is not None:
            return done
        if time.monotonic() > deadline:
            raise WritebackError("this prescription is still being written by another request; try again shortly",
                                 status=409)
        await asyncio.sleep(0.05)


async def _write(ehr: FhirClient, entries: list[Entry], document: DocumentArg, strategy: str,
                 cc: FhirClient | None, capability: Capability | None,
                 cc_capability: Capability | None, resume: bool = False) -> WriteResult:
    result = WriteResult(strategy=strategy)
    entries = [_normalise_entry(e) for e in entries]
    if strategy == "care-coordination":
        assert cc is not None
        cc_cap = cc_capability or await cc.capabilities()
        cc_set = _select(entries, None, result)
        if not cc_set:
            raise WritebackError("nothing to write to the care-coordination server", status=500)
        result.written += await _write_set(cc, cc_cap, cc_set, result, strategy, resume=resume)
        if document is None:
            result.notes.append("no DocumentReference given: nothing linked in the EHR")
            return result
        links = [w["url"] for w in result.written if w["resourceType"] != "Provenance"]
        doc = _document_entry(document, links)
        try:
            ehr_cap = capability or await ehr.capabilities()
            result.written += await _write_set(ehr, ehr_cap, [doc], result, strategy, optional=(), resume=resume)
        except (WritebackError, FhirError) as exc:
            msg = exc.message
            result.failed.append(f"DocumentReference in the EHR ({ehr.base_url}) was not written: {msg}; "
                                 f"the full set is on {cc.base_url}")
        return result

    cap = capability or await ehr.capabilities()
    if strategy == "document":
        docs = [e for e in entries if e["resource"]["resourceType"] == "DocumentReference"]
        if document is not None:
            docs = [_document_entry(document, [])]
        if not docs:
            raise WritebackError("the document strategy needs a DocumentReference", status=500)
        result.written += await _write_set(ehr, cap, docs[:1], result, strategy, optional=(), resume=resume)
        return result

    selected = _select(entries, STRATEGY_TYPES[strategy], result)
    if document is not None and not any(e["resource"]["resourceType"] == "DocumentReference" for e in selected):
        selected.append(_document_entry(document, [e["fullUrl"] for e in selected]))
    if not selected:
        raise WritebackError(f"nothing to write with the {strategy} strategy", status=500)
    result.written += await _write_set(ehr, cap, selected, result, strategy, resume=resume)
    return result


def _normalise_entry(e: Entry) -> Entry:
    """Accept `{fullUrl, resource, ifNoneExist}` or a bare resource; derive ifNoneExist from the identifier.
    An update entry (`service.fhir.revision`) is `{fullUrl, resource, method: PUT, url: Type/id, ifMatch,
    check}` and keeps those keys."""
    if "resource" not in e and isinstance(e.get("resourceType"), str):
        e = {"resource": e}
    resource = copy.deepcopy(e["resource"])
    full = e.get("fullUrl") or f"urn:uuid:{_uuid()}"
    if e.get("method") == "PUT":
        return {"fullUrl": full, "resource": resource, "ifNoneExist": None, "method": "PUT", "url": e["url"],
                "ifMatch": e.get("ifMatch"), "check": e.get("check", True)}
    ine = e.get("ifNoneExist")
    if not ine:
        ident = next((i for i in resource.get("identifier") or [] if i.get("system") and i.get("value")), None)
        if ident:
            ine = f"identifier={ident['system']}|{ident['value']}"
    return {"fullUrl": full, "resource": resource, "ifNoneExist": ine}


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def _document_entry(document: DocumentArg, related: list[str]) -> Entry:
    doc = document(related) if callable(document) else document
    if not isinstance(doc, dict):
        raise WritebackError("the document builder returned no DocumentReference", status=500)
    entry = _normalise_entry(doc)
    if entry["resource"].get("resourceType") != "DocumentReference":
        raise WritebackError("the document is not a DocumentReference", status=500)
    return entry


def _select(entries: list[Entry], types: tuple[str, ...] | None, result: WriteResult) -> list[Entry]:
    """Keep the entries of `types` (all when None) and prune references to the dropped ones."""
    if types is None:
        return entries
    kept = [e for e in entries if e["resource"]["resourceType"] in types]
    dropped = {e["fullUrl"] for e in entries if e["resource"]["resourceType"] not in types}
    if dropped:
        kinds = sorted({e["resource"]["resourceType"] for e in entries if e["fullUrl"] in dropped})
        result.notes.append(f"not written with this strategy: {', '.join(kinds)}")
        for e in kept:
            _prune_refs(e["resource"], dropped)
    return kept


def _prune_refs(node: Any, dropped: set[str]) -> None:
    """Remove Reference elements pointing at dropped entries (and extensions left without a value)."""
    if isinstance(node, dict):
        for k in list(node):
            v = node[k]
            if isinstance(v, dict) and v.get("reference") in dropped:
                del node[k]
            elif isinstance(v, dict) and isinstance(v.get("reference"), dict) and v["reference"].get("reference") in dropped:
                del node[k]  # e.g. CarePlan.activity.reference
            else:
                _prune_refs(v, dropped)
                if isinstance(v, list):
                    node[k] = [x for x in v if not _is_dangling(x, dropped)]
                    if k == "extension":
                        node[k] = [x for x in node[k] if not (isinstance(x, dict) and _empty_extension(x))]
                    if not node[k]:
                        del node[k]
    elif isinstance(node, list):
        for x in node:
            _prune_refs(x, dropped)


def _is_dangling(x: Any, dropped: set[str]) -> bool:
    return isinstance(x, dict) and (x.get("reference") in dropped or
                                    (isinstance(x.get("reference"), dict) and x["reference"].get("reference") in dropped)
                                    or x == {})


def _empty_extension(ext: dict[str, Any]) -> bool:
    return not ext.get("extension") and not any(k.startswith("value") for k in ext)


# -- one set of resources to one server -----------------------------------------------------------------------


def _validator() -> Callable[[dict[str, Any]], None]:
    try:
        from service.fhir.validate import assert_valid
    except ImportError:  # validate.py not there yet: at least the R4 models must accept the resource
        from fhir.resources.R4B import get_fhir_model_class

        def assert_valid(resource: dict[str, Any]) -> None:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)

    return assert_valid  # type: ignore[return-value]


def _is_update(e: Entry) -> bool:
    return e.get("method") == "PUT"


def _validate(entries: list[Entry]) -> None:
    """Every new resource, and every update whose content we built (not a status change of one read back)."""
    check = _validator()
    for e in entries:
        if e.get("check") is False:
            continue
        res = e["resource"]
        try:
            check(res)
        except Exception as exc:  # ValidationFailed, pydantic errors: all mean "do not send"
            issues = list(getattr(exc, "issues", []) or [])
            detail = "; ".join(f"{getattr(i, 'path', '')}: {getattr(i, 'message', i)}" for i in issues[:5]) or str(exc)[:500]
            raise WritebackError(f"{res.get('resourceType')} failed validation, nothing was written: {detail}",
                                 status=422, issues=issues) from None


def _params_of(query: str) -> list[str]:
    return [k.split(":")[0] for k, _ in parse_qsl(query, keep_blank_values=True)]


def _conditional_ok(cap: Capability, e: Entry) -> bool:
    rtype = e["resource"]["resourceType"]
    r = cap.resources.get(rtype)
    if r is None or not r.conditional_create or not e["ifNoneExist"]:
        return False
    return not r.search_params or all(p in r.search_params for p in _params_of(e["ifNoneExist"]))


def _lookup_ok(cap: Capability, e: Entry) -> bool:
    rtype = e["resource"]["resourceType"]
    r = cap.resources.get(rtype)
    if r is None or "search-type" not in r.interactions or not e["ifNoneExist"]:
        return False
    return not r.search_params or all(p in r.search_params for p in _params_of(e["ifNoneExist"]))


def _patient_of(res: dict[str, Any]) -> str | None:
    return next((res[k].get("reference") for k in ("subject", "for", "patient")
                 if isinstance(res.get(k), dict)), None)


def _lookup_params(cap: Capability, e: Entry, set_patient: str | None = None) -> list[tuple[str, str]]:
    """The identifier search, narrowed to the patient when the resource names one (or, for a Provenance, the
    set's patient): servers that enforce SMART `patient/` scopes refuse searches that do not name the launch
    patient (403)."""
    params = parse_qsl(e["ifNoneExist"], keep_blank_values=True)
    res = e["resource"]
    ref = _patient_of(res) or set_patient
    r = cap.resources.get(res["resourceType"])
    if isinstance(ref, str) and ref.startswith("Patient/") and r is not None and "patient" in r.search_params:
        params.append(("patient", ref))
    return params


def _matches(candidate: dict[str, Any], query: str) -> bool:
    """Client-side check of a lookup hit: servers may ignore an unknown parameter and return everything."""
    for k, v in parse_qsl(query, keep_blank_values=True):
        system, _, value = v.partition("|") if "|" in v else ("", "", v)
        if k == "identifier":
            pool = candidate.get("identifier") or []
        elif k == "_tag":
            pool = (candidate.get("meta") or {}).get("tag") or []
        else:
            continue
        ok = any(isinstance(i, dict) and (i.get("value", i.get("code")) == value)
                 and (not system or i.get("system") == system) for i in pool)
        if not ok:
            return False
    return True


def _written(client: FhirClient, rtype: str, rid: str, status: str) -> dict[str, Any]:
    return {"resourceType": rtype, "id": rid, "reference": f"{rtype}/{rid}",
            "url": f"{client.base_url}/{rtype}/{rid}", "server": client.base_url, "status": status}


def rewrite_references(node: Any, mapping: dict[str, str]) -> None:
    """Replace every Reference.reference found in `mapping` (urn:uuid -> Type/id), in place."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in mapping:
                node[k] = mapping[v]
            else:
                rewrite_references(v, mapping)
    elif isinstance(node, list):
        for x in node:
            rewrite_references(x, mapping)


async def _write_set(client: FhirClient, cap: Capability, entries: list[Entry], result: WriteResult,
                     strategy: str, optional: tuple[str, ...] = OPTIONAL_TYPES,
                     resume: bool = False) -> list[dict[str, Any]]:
    """Validate, then write `entries` to one server; returns the written items in entry order.

    With `resume`, every entry the server can search is looked up by its identifier first (even those it
    could create conditionally): the interrupted attempt's writes are read back, not assumed.

    Entries of `optional` types the server cannot create are dropped with a note; any other type it cannot
    create fails the whole set before anything is sent."""
    entries = [copy.deepcopy(e) for e in entries]
    cannot_update = sorted({e["resource"]["resourceType"] for e in entries
                            if _is_update(e) and not cap.can_update(e["resource"]["resourceType"])})
    if cannot_update:
        raise WritebackError(f"{client.base_url} does not support updating {', '.join(cannot_update)}, so the "
                             f"open referral cannot be replaced by this one; nothing was written. Cancel the open "
                             f"referral in the EHR, then sign again.", status=409)
    for e in list(entries):
        rtype = e["resource"]["resourceType"]
        if _is_update(e):
            continue
        if not cap.can_create(rtype):
            if rtype in optional:
                entries.remove(e)
                result.notes.append(f"{rtype} not written: {client.base_url} does not support creating it")
                _prune_refs_all(entries, {e["fullUrl"]})
            else:
                raise WritebackError(f"{client.base_url} does not support creating {rtype} "
                                     f"(needed by the {strategy} strategy); nothing was written", status=409)
    if not entries:
        return []
    _validate(entries)

    by_url: dict[str, dict[str, Any]] = {}
    mapping: dict[str, str] = {e["fullUrl"]: e["url"] for e in entries if _is_update(e) and e["fullUrl"] != e["url"]}
    set_patient = next((r for e in entries if (r := _patient_of(e["resource"])) and r.startswith("Patient/")), None)
    # 1. Look up, by business identifier, what the server cannot create conditionally (everything, on resume);
    #    updates name their resource already.
    for e in entries:
        if _is_update(e) or (_conditional_ok(cap, e) and not resume) or not _lookup_ok(cap, e):
            continue
        rtype = e["resource"]["resourceType"]
        found = await client.search(rtype, _lookup_params(cap, e, set_patient), max_pages=1)
        hit = next((r for r in found.resources if r.get("resourceType") == rtype and _matches(r, e["ifNoneExist"])),
                   None)
        if hit is not None:
            by_url[e["fullUrl"]] = _written(client, rtype, hit["id"], "existing")
            mapping[e["fullUrl"]] = f"{rtype}/{hit['id']}"
    todo = [e for e in entries if e["fullUrl"] not in by_url]
    for e in todo:
        rewrite_references(e["resource"], mapping)

    # 2. Create the rest: one transaction when possible, else one by one in reference order.
    if todo and (cap.transaction and len(todo) > 1):
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [_transaction_entry(client, cap, e)
                                                                           for e in todo]}
        try:
            response = await client.transaction(bundle)
        except FhirError as exc:
            # A 5xx or no answer at all may hide a committed transaction (a lost response): say so, never
            # "nothing was written"; signing again finds what was committed (ifNoneExist), so no duplicates.
            lost = exc.status >= 500 or exc.kind in ("timeout", "transport")
            what = ("it may or may not have been written; signing again completes it without duplicates" if lost
                    else "nothing was written")
            raise WritebackError(f"the transaction to {client.base_url} failed, {what}: {exc.message}",
                                 status=exc.status, outcome=exc.outcome,
                                 result=_partial(result, by_url, entries)) from exc
        for e, r in zip(todo, response.get("entry") or []):
            rtype = e["resource"]["resourceType"]
            resp = r.get("response") or {}
            rid = id_from_location(resp.get("location"), rtype) or (r.get("resource") or {}).get("id")
            if not rid:
                raise WritebackError(f"the server's transaction response names no id for {rtype}", status=502,
                                     result=_partial(result, by_url, entries))
            status = "created" if str(resp.get("status", "")).startswith("201") else "existing"
            by_url[e["fullUrl"]] = _written(client, rtype, rid, "updated" if _is_update(e) else status)
    elif todo:
        for e in _reference_order(todo):
            rewrite_references(e["resource"], mapping)
            rtype = e["resource"]["resourceType"]
            try:
                if _is_update(e):
                    updated = await client.update(e["resource"], if_match=e.get("ifMatch"))
                    by_url[e["fullUrl"]] = _written(client, rtype, str(updated.get("id")), "updated")
                    continue
                created = await client.create(e["resource"],
                                              if_none_exist=e["ifNoneExist"] if _conditional_ok(cap, e) else None)
            except FhirError as exc:
                done = _partial(result, by_url, entries)
                where = f"; already written: {', '.join(w['reference'] for w in done.written)}" if by_url else ""
                raise WritebackError(f"creating {rtype} on {client.base_url} failed: {exc.message}{where}. "
                                     f"Signing again completes the set without duplicates.",
                                     status=exc.status, outcome=exc.outcome, result=done) from exc
            by_url[e["fullUrl"]] = _written(client, rtype, created.id, "created" if created.created else "existing")
            mapping[e["fullUrl"]] = f"{rtype}/{created.id}"
    return [by_url[e["fullUrl"]] for e in entries if e["fullUrl"] in by_url]


def _transaction_entry(client: FhirClient, cap: Capability, e: Entry) -> dict[str, Any]:
    if _is_update(e):
        return {"fullUrl": f"{client.base_url}/{e['url']}", "resource": e["resource"],
                "request": {"method": "PUT", "url": e["url"], **({"ifMatch": e["ifMatch"]} if e.get("ifMatch") else {})}}
    return {"fullUrl": e["fullUrl"], "resource": e["resource"],
            "request": {"method": "POST", "url": e["resource"]["resourceType"],
                        **({"ifNoneExist": e["ifNoneExist"]} if _conditional_ok(cap, e) else {})}}


def _prune_refs_all(entries: list[Entry], dropped: set[str]) -> None:
    for e in entries:
        _prune_refs(e["resource"], dropped)


def _partial(result: WriteResult, by_url: dict[str, dict[str, Any]], entries: list[Entry]) -> WriteResult:
    done = WriteResult(strategy=result.strategy, written=list(result.written), notes=list(result.notes))
    done.written += [by_url[e["fullUrl"]] for e in entries if e["fullUrl"] in by_url and
                     by_url[e["fullUrl"]]["status"] in ("created", "updated")]
    return done


def _refs(node: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                out.add(v)
            else:
                out |= _refs(v)
    elif isinstance(node, list):
        for x in node:
            out |= _refs(x)
    return out


def _reference_order(entries: list[Entry]) -> list[Entry]:
    """Referenced entries before the ones referring to them (servers without transactions)."""
    urls = {e["fullUrl"] for e in entries}
    deps = {e["fullUrl"]: _refs(e["resource"]) & urls - {e["fullUrl"]} for e in entries}
    ordered: list[Entry] = []
    placed: set[str] = set()
    while len(ordered) < len(entries):
        ready = [e for e in entries if e["fullUrl"] not in placed and deps[e["fullUrl"]] <= placed]
        if not ready:
            raise WritebackError("these resources refer to each other and the server takes no transactions: "
                                 "they cannot be written one by one", status=409)
        for e in ready:
            ordered.append(e)
            placed.add(e["fullUrl"])
    return ordered
