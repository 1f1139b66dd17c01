"""Which Tasks a write-back made news for an exercise service (pure).

A fulfil Task written `requested` is news (a new referral, one released after clearance, or the revised one);
an open Task the write cancelled is news (the referral was replaced or withdrawn) unless the service never saw
it (it was a `draft`, pending clearance). A `draft` Task is never news: there is nothing to start.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
NEWS_STATUSES = ("requested", "cancelled")


@dataclass(frozen=True)
class TaskEvent:
    """One Task the service should look at: `kind` is `requested` or `cancelled`; references are absolute."""

    kind: str
    task: str
    referral: str | None
    owner: str


def _is_fulfil(resource: dict[str, Any]) -> bool:
    code = resource.get("code") if isinstance(resource.get("code"), dict) else {}
    return resource.get("resourceType") == "Task" and any(
        isinstance(c, dict) and c.get("system") == TASK_CODE and c.get("code") == "fulfill"
        for c in code.get("coding") or ())


def written_urls(entries: list[dict[str, Any]], written: list[dict[str, Any]]) -> dict[str, str]:
    """Entry fullUrl -> the absolute URL it was written at. Updates carry their URL; creates are matched to
    the written items of the same type in order (write-back reports them in entry order)."""
    out: dict[str, str] = {}
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for w in written:
        if w.get("status") != "updated":
            by_type[str(w.get("resourceType"))].append(w)
    updated = {w.get("reference"): w for w in written if w.get("status") == "updated"}
    for e in entries:
        rtype = e["resource"]["resourceType"]
        if e.get("method") == "PUT":
            w = updated.get(e.get("url"))
            if w is not None:
                out[e["fullUrl"]] = str(w.get("url"))
            continue
        if by_type[rtype]:
            out[e["fullUrl"]] = str(by_type[rtype].pop(0).get("url"))
    return out


def task_events(entries: list[dict[str, Any]], written: list[dict[str, Any]],
                previous_status: dict[str, str]) -> list[TaskEvent]:
    """The news in one write. `previous_status` maps "Task/id" to the status the Task had before (so that a
    cancelled draft, which the service never saw, is not news)."""
    urls = written_urls(entries, written)
    out: list[TaskEvent] = []
    for e in entries:
        task = e["resource"]
        url = urls.get(e["fullUrl"])
        if not _is_fulfil(task) or url is None or task.get("status") not in NEWS_STATUSES:
            continue
        if task.get("status") == "cancelled" and previous_status.get(str(e.get("url"))) in (None, "draft"):
            continue
        owner = (task.get("owner") or {}).get("reference")
        if not isinstance(owner, str):
            continue
        focus = (task.get("focus") or {}).get("reference")
        referral = urls.get(focus, focus) if isinstance(focus, str) else None
        if isinstance(referral, str) and not referral.startswith(("http://", "https://")):
            base = url.rsplit("/Task/", 1)[0]
            referral = f"{base}/{referral}" if not referral.startswith("urn:") else None
        out.append(TaskEvent(task["status"], url, referral, owner))
    return sorted(out, key=lambda ev: ev.kind != "cancelled")  # what ended, then what replaces it


def by_owner(events: Iterable[TaskEvent]) -> dict[str, list[TaskEvent]]:
    """Events grouped per service (one notification each), in order."""
    out: dict[str, list[TaskEvent]] = defaultdict(list)
    for ev in events:
        out[ev.owner].append(ev)
    return dict(out)
