"""Signing again revises the open referral (FHIR workflow "replaces"), so a patient never has two open.

Given the new set (`service.fhir.resources`) and the patient's open referrals of ours, as read from the server
just before writing (`current`), the revision adds update entries to the same write:
- the new referral `replaces` each old one, which becomes `revoked` (with a note saying why and when);
- the old exercise ServiceRequests become `revoked`; the old fulfil Tasks `cancelled`, with a statusReason;
- an old clearance Task is completed by the clearance the new plan carries (who, when, what was reviewed) and
  the new set then holds no second one; without a clearance it is cancelled (re-deferred, or no longer needed);
- the CarePlan is updated in place (a new version of the same resource) rather than a second one created.
Every update carries If-Match with the version read, so a change by the exercise service in between makes the
write fail (the clinician reloads) instead of being overwritten. Pure.
"""

from __future__ import annotations

import copy
from typing import Any

from service.fhir.open_referrals import OPEN_REQUEST, OPEN_TASK, REFERRAL_CODE, TASK_CODE, OpenReferral, has_code
from service.fhir.writeback import rewrite_references

Entry = dict[str, Any]
REPLACED = "Replaced by a revised referral"
OPEN_GOAL = ("proposed", "planned", "accepted", "active", "on-hold")


def revise(entries: list[Entry], existing: list[OpenReferral], current: dict[str, dict[str, Any]], *,
           signed_at: str, author: dict[str, Any]) -> list[Entry]:
    """`entries` plus the updates that retire `existing` (see the module docstring). `current` maps
    "Type/id" to the resource as just read (a reference missing there was deleted: nothing to do)."""
    entries = [copy.deepcopy(e) for e in entries]
    ours = [o for o in existing if o.ours]
    if not ours:
        return entries
    referral = next((e for e in entries if _is_referral(e["resource"])), None)
    if referral is not None:
        referral["resource"]["replaces"] = [{"reference": o.ref} for o in ours]
    new_clearance = next((e for e in entries if _is_clearance(e["resource"])), None)
    when = signed_at[:10]
    updates: list[Entry] = []
    used_clearance = False
    for o in ours:
        sr = current.get(o.ref)
        if sr is not None and sr.get("status") in OPEN_REQUEST:
            note = {"text": f"{REPLACED} on {when}.", "time": signed_at, **_author(author)}
            updates.append(_update(sr, status="revoked", note=[*(sr.get("note") or []), note]))
        for rx in o.prescriptions:
            cur = current.get(f"ServiceRequest/{rx.get('id')}")
            if cur is not None and cur.get("status") in OPEN_REQUEST:
                updates.append(_update(cur, status="revoked"))
        for t in o.tasks:
            cur = current.get(f"Task/{t.get('id')}")
            if cur is not None and cur.get("status") in OPEN_TASK:
                updates.append(_update(cur, status="cancelled", statusReason={"text": f"{REPLACED} on {when}."},
                                       lastModified=signed_at))
        for t in o.clearances:
            cur = current.get(f"Task/{t.get('id')}")
            if cur is None or cur.get("status") not in OPEN_TASK:
                continue
            done = new_clearance["resource"] if new_clearance is not None else None
            if done is not None and done.get("status") == "completed" and not used_clearance:
                used_clearance = True
                updates.append(_update(cur, status="completed", owner=done["owner"], lastModified=signed_at,
                                       executionPeriod=done.get("executionPeriod"), output=done.get("output"),
                                       note=[*(cur.get("note") or []), *(done.get("note") or [])]))
            else:
                why = ("the plan was deferred again" if done is not None else
                       "the red flags are no longer in the record")
                updates.append(_update(cur, status="cancelled", lastModified=signed_at,
                                       statusReason={"text": f"{REPLACED} on {when}: {why}."}))
    if used_clearance and new_clearance is not None:
        entries = [e for e in entries if e is not new_clearance]
        _drop_refs(entries, new_clearance["fullUrl"])
    entries = _careplan_in_place(entries, ours, current)
    for goal in _old_goals(ours, current):
        note = {"text": f"Replaced by the goals of the revised plan on {when}.", "time": signed_at, **_author(author)}
        updates.append(_update(goal, lifecycleStatus="cancelled", note=[*(goal.get("note") or []), note]))
    return entries + updates


def _old_goals(ours: list[OpenReferral], current: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The open Goals of the open CarePlan: the revised CarePlan points at new ones."""
    out = []
    for ref in dict.fromkeys(o.careplan_ref for o in ours if o.careplan_ref):
        for g in (current.get(ref) or {}).get("goal") or []:
            goal = current.get(g.get("reference", "")) if isinstance(g, dict) else None
            if goal is not None and goal.get("lifecycleStatus") in OPEN_GOAL and goal not in out:
                out.append(goal)
    return out


def _careplan_in_place(entries: list[Entry], ours: list[OpenReferral],
                       current: dict[str, dict[str, Any]]) -> list[Entry]:
    """The new CarePlan becomes a new version of the open one (same id, both identifiers, first `created`)."""
    new = next((e for e in entries if e["resource"]["resourceType"] == "CarePlan"), None)
    old = next((current[r] for r in (o.careplan_ref for o in ours) if r and r in current
                and current[r].get("status") in OPEN_REQUEST), None)
    if new is None or old is None:
        return entries
    ref = f"CarePlan/{old['id']}"
    resource = new["resource"]
    resource["id"] = old["id"]
    idents = list(old.get("identifier") or [])
    resource["identifier"] = idents + [i for i in resource.get("identifier") or [] if i not in idents]
    if old.get("created"):
        resource["created"] = old["created"]
    replaced = {"fullUrl": new["fullUrl"], "resource": resource, "method": "PUT", "url": ref,
                "ifMatch": _if_match(old), "check": True}
    out = [replaced if e is new else e for e in entries]
    for e in out:
        rewrite_references(e["resource"], {new["fullUrl"]: ref})
    return out


def _update(resource: dict[str, Any], **changes: Any) -> Entry:
    """An update entry: the resource as read, with `changes` (None values remove the element)."""
    r = copy.deepcopy(resource)
    for k, v in changes.items():
        if v is None:
            r.pop(k, None)
        else:
            r[k] = v
    r.get("meta", {}).pop("versionId", None)
    r.get("meta", {}).pop("lastUpdated", None)
    ref = f"{r['resourceType']}/{r['id']}"
    return {"fullUrl": ref, "resource": r, "method": "PUT", "url": ref, "ifMatch": _if_match(resource),
            "check": False}


def _if_match(resource: dict[str, Any]) -> str | None:
    vid = (resource.get("meta") or {}).get("versionId")
    return f'W/"{vid}"' if isinstance(vid, str) and vid else None


def _author(author: dict[str, Any]) -> dict[str, Any]:
    if author.get("reference"):
        return {"authorReference": dict(author)}
    return {"authorString": author.get("display", "Ordering clinician")}


def _is_referral(r: dict[str, Any]) -> bool:
    return r.get("resourceType") == "ServiceRequest" and has_code(r.get("code"), *REFERRAL_CODE)


def _is_clearance(r: dict[str, Any]) -> bool:
    return r.get("resourceType") == "Task" and has_code(r.get("code"), TASK_CODE, "approve")


def _drop_refs(entries: list[Entry], url: str) -> None:
    """Remove references to a dropped entry (Provenance.target lists every entry of the set)."""
    for e in entries:
        res = e["resource"]
        if res.get("resourceType") == "Provenance":
            res["target"] = [t for t in res.get("target") or [] if t.get("reference") != url]


async def read_current(client: Any, existing: list[OpenReferral]) -> dict[str, dict[str, Any]]:
    """Read again, just before writing, every resource the revision would change ("Type/id" -> resource):
    the exercise service may have moved its Task since the app loaded. Deleted ones (404/410) are left out;
    any other failure raises FhirError (nothing is written)."""
    import asyncio

    from service.fhir.errors import FhirError

    refs: list[str] = []
    for o in existing:
        if not o.ours:
            continue
        refs.append(o.ref)
        refs += [f"{r['resourceType']}/{r.get('id')}" for r in (*o.prescriptions, *o.tasks, *o.clearances)]
        if o.careplan_ref:
            refs.append(o.careplan_ref)
    refs = list(dict.fromkeys(refs))

    async def one(ref: str) -> dict[str, Any] | None:
        rtype, _, rid = ref.partition("/")
        try:
            return await client.read(rtype, rid)
        except FhirError as exc:
            if exc.status in (404, 410):
                return None
            raise

    found = await asyncio.gather(*(one(r) for r in refs))
    current = {ref: res for ref, res in zip(refs, found) if isinstance(res, dict)}
    goals = [g.get("reference") for o in existing if o.ours and o.careplan_ref
             for g in (current.get(o.careplan_ref) or {}).get("goal") or [] if isinstance(g, dict)]
    goals = [g for g in dict.fromkeys(goals) if isinstance(g, str) and g.startswith("Goal/")]
    found = await asyncio.gather(*(one(g) for g in goals))
    current.update({ref: res for ref, res in zip(goals, found) if isinstance(res, dict)})
    return current
