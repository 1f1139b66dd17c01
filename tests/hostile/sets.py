"""Reading back what sign & send wrote: the prescription sets on the FHIR server, grouped by signing key."""

from __future__ import annotations

import re
from typing import Any

import httpx

from service import canonical

TYPES = ("CarePlan", "Goal", "ServiceRequest", "Task", "DocumentReference")
KEY_LEN = 40  # service.smart.api.signing_key: 40 hex characters
SIGNED = re.compile(r"^[0-9a-f]{40}-")  # the cohort's own referrals ("sandbox-onc-14-...") are not ours


def prescription_sets(fhir: httpx.Client, patient: str) -> dict[str, dict[str, set[str]]]:
    """signing key -> {resourceType: {ids}} for every resource carrying our prescription identifier."""
    sets: dict[str, dict[str, set[str]]] = {}
    for rtype in TYPES:
        resp = fhir.get(f"/{rtype}", params={"patient": patient, "_count": 500})
        assert resp.status_code == 200, (rtype, resp.text[:300])
        for e in resp.json().get("entry") or []:
            res = e["resource"]
            for ident in res.get("identifier") or []:
                if ident.get("system") == canonical.ID_PRESCRIPTION and SIGNED.match(ident.get("value", "")):
                    key = ident["value"][:KEY_LEN]
                    sets.setdefault(key, {}).setdefault(rtype, set()).add(res["id"])
    for key, found in sets.items():
        tag = f"{canonical.ID_PRESCRIPTION}|{key}-provenance"
        resp = fhir.get("/Provenance", params={"_tag": tag})
        assert resp.status_code == 200, resp.text[:300]
        ids = {e["resource"]["id"] for e in resp.json().get("entry") or []}
        if ids:
            found["Provenance"] = ids
    return sets


def written_set(answer: dict[str, Any]) -> dict[str, set[str]]:
    """The sign answer's `written` list in the same shape: the new set, without the open referral's resources it
    retired (they belong to the set that wrote them). The CarePlan revised in place carries both sets'
    identifiers, so it counts in both."""
    out: dict[str, set[str]] = {}
    for w in answer.get("written") or []:
        if w.get("status") != "updated" or w["resourceType"] == "CarePlan":
            out.setdefault(w["resourceType"], set()).add(w["id"])
    return out

