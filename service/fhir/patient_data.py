"""Fetch everything the rules need about one patient, concurrently and within a time budget.

Used when a CDS Hooks call brings no (or partial) prefetch, and by the SMART app. All queries of
`service.fhir.queries` run at once; with `budget_seconds` whatever has not arrived when the budget runs out
is abandoned and named in `failures`, so the caller can still answer on time (complete=False) and say what
is missing. A query that fails (403 for a scope the server did not grant, 5xx, malformed answer) is named
the same way; the others still count.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from service.fhir.client import FhirClient, SearchResult
from service.fhir.errors import FhirError
from service.fhir.queries import PatientQuery, patient_queries

log = logging.getLogger("service.fhir.patient_data")


@dataclass
class PatientData:
    """What was fetched. `failures` has one readable line per query that did not complete."""

    resources: list[dict[str, Any]]
    complete: bool
    failures: list[str]
    truncated: list[str] = field(default_factory=list)  # queries stopped at their page limit (oldest omitted)
    requests: int = 0  # HTTP requests sent for this fetch

    def bundle(self) -> dict[str, Any]:
        """The resources as a collection Bundle (what `build_snapshot` accepts)."""
        return {"resourceType": "Bundle", "type": "collection",
                "entry": [{"resource": r} for r in self.resources]}


async def _run(client: FhirClient, q: PatientQuery, patient_id: str, now: datetime) -> list[dict[str, Any]] | SearchResult:
    target, params = q.concrete(patient_id, now)
    if q.read:
        rtype, _, rid = target.partition("/")
        return [await client.read(rtype, rid)]
    return await client.search(target, params, max_pages=q.max_pages)


async def fetch_patient_data(client: FhirClient, patient_id: str, now: datetime,
                             budget_seconds: float | None = None, *,
                             keys: Iterable[str] | None = None) -> PatientData:
    """Run the patient queries concurrently (only `keys`, when given: e.g. those prefetch did not satisfy)."""
    wanted = set(keys) if keys is not None else None
    queries = [q for q in patient_queries() if wanted is None or q.key in wanted]
    sent_before = client.requests_sent
    tasks = {asyncio.create_task(_run(client, q, patient_id, now), name=f"fhir-{q.key}"): q for q in queries}
    failures: list[str] = []
    truncated: list[str] = []
    seen: set[tuple[str, str]] = set()
    resources: list[dict[str, Any]] = []
    if not tasks:
        return PatientData([], True, [], [], 0)
    done, pending = await asyncio.wait(tasks, timeout=budget_seconds)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for task, q in tasks.items():  # in query order, so the result does not depend on timing
        label = f"{q.key} ({q.resource_type})"
        if task in pending:
            failures.append(f"{label}: not fetched within the {budget_seconds:g} s budget")
            continue
        exc = task.exception()  # retrieved for every task: none is left "never retrieved"
        if isinstance(exc, FhirError):
            failures.append(f"{label}: {exc.status} {exc.message}")
            continue
        if exc is not None:  # e.g. a URL the HTTP client refuses: one failure per query, not a crash
            log.warning("patient query %s failed: %s", q.key, type(exc).__name__)
            failures.append(f"{label}: request failed ({type(exc).__name__})")
            continue
        out = task.result()
        found = out.resources if isinstance(out, SearchResult) else out
        if isinstance(out, SearchResult) and out.truncated:
            truncated.append(f"{label}: stopped after {out.pages} pages")
        for r in found:
            key = (str(r.get("resourceType")), str(r.get("id")))
            if r.get("id") is not None and key in seen:
                continue
            seen.add(key)
            resources.append(r)
    if failures:
        log.info("patient data incomplete: %d of %d queries failed or timed out", len(failures), len(tasks))
    return PatientData(resources=resources, complete=not failures, failures=failures, truncated=truncated,
                       requests=client.requests_sent - sent_before)
