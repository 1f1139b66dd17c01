"""SMART scopes: what the app asks for (v2, or v1 for permission-v1-only servers) and what it was granted.

What is asked follows from the write-back strategy the server's CapabilityStatement allows (create rights
only for the types that strategy writes), in three tiers tried in turn when an authorization server refuses
a request (`invalid_scope`) rather than trimming it:
- `full`: launch context, `openid fhirUser`, a refresh scope, the signer's Practitioner, reads and creates;
- `essential`: without the refresh scope and the Practitioner read (the two most often not registered);
- `minimum`: launch context and reads only: the prescription can be reviewed and printed, not signed.
Servers may also grant less than asked; `Grants` answers "may I read/create type X" for v1 and v2 scopes
alike so that the app degrades (another write-back strategy, a view-only mode) instead of looping on 403.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

# What the app reads to build the snapshot (the patient-data queries) and reads back after writing.
READ_TYPES: tuple[str, ...] = (
    "Patient", "Condition", "Observation", "MedicationRequest", "MedicationAdministration", "Procedure",
    "ServiceRequest", "Task",
)
# What each write-back strategy creates in the EHR (care-coordination writes the full set elsewhere and
# only a DocumentReference link into the EHR).
STRATEGY_WRITES: dict[str, tuple[str, ...]] = {
    "full": ("CarePlan", "Goal", "ServiceRequest", "Task", "Provenance"),
    "service-request-only": ("ServiceRequest", "DocumentReference"),
    "document": ("DocumentReference",),
    "care-coordination": ("DocumentReference",),
}
# Reading the signed-in clinician's own Practitioner resource (named by fhirUser) for their display name.
FHIR_USER_READ, FHIR_USER_READ_V1 = "user/Practitioner.rs", "user/Practitioner.read"
ALL_WRITE_TYPES: tuple[str, ...] = ("CarePlan", "Goal", "ServiceRequest", "Task", "Provenance", "DocumentReference")
# What signing again updates to retire the open referral (service.fhir.revision): create, read and update.
UPDATE_TYPES: tuple[str, ...] = ("CarePlan", "Goal", "ServiceRequest", "Task")

_V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE_RE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?$")


def read_types() -> tuple[str, ...]:
    """Types named by the shared patient-data queries (one list for CDS prefetch and the app), plus the
    static list as a floor when that module cannot be loaded."""
    try:
        from service.fhir.queries import patient_queries  # noqa: PLC0415 - loads the terminology once

        found = [q.resource_type for q in patient_queries()]
    except Exception:  # noqa: BLE001 - the static list is a safe superset for scopes
        return READ_TYPES
    return tuple(dict.fromkeys(["Patient", *found, "ServiceRequest", "Task"]))


TIERS: tuple[str, ...] = ("full", "essential", "minimum")
CONFIGURED = "configured"  # ONCO_EXERCISE_SMART_SCOPES, tried first; then `essential` and `minimum`


def next_tier(tier: str) -> str | None:
    """The tier to ask for after `tier` was refused (None: nothing smaller is useful)."""
    if tier == CONFIGURED:
        return "essential"
    i = TIERS.index(tier) if tier in TIERS else len(TIERS)
    return TIERS[i + 1] if i + 1 < len(TIERS) else None


def requested_scopes(*, ehr_launch: bool, v1: bool, write_types: Iterable[str],
                     refresh: str | None = "offline_access", types: Iterable[str] | None = None,
                     tier: str = "full") -> list[str]:
    """The scope list for the authorize request of one tier (see the module docstring), in a stable order."""
    context = "launch" if ehr_launch else "launch/patient"
    scopes = [context] if tier == "minimum" else ["openid", "fhirUser", context]
    if tier == "full":
        if refresh:
            scopes.append(refresh)
        scopes.append(FHIR_USER_READ_V1 if v1 else FHIR_USER_READ)  # the signer's name, read once at launch
    writes = [] if tier == "minimum" else [t for t in ALL_WRITE_TYPES if t in set(write_types)]
    reads = list(types or read_types())
    for t in reads:
        if t in writes:
            continue
        scopes.append(f"patient/{t}.read" if v1 else f"patient/{t}.rs")
    for t in writes:
        if v1:
            scopes += [f"patient/{t}.read", f"patient/{t}.write"]
        else:
            scopes.append(f"patient/{t}.crus" if t in UPDATE_TYPES else f"patient/{t}.crs")
    return scopes


@dataclass
class Grants:
    """Permissions per resource type from a granted scope string (patient/ and user/ both count)."""

    perms: dict[str, set[str]] = field(default_factory=dict)
    other: set[str] = field(default_factory=set)
    restricted: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, scope: str | None) -> "Grants":
        g = cls()
        for s in (scope or "").split():
            m = _SCOPE_RE.match(s)
            if not m:
                g.other.add(s)
                continue
            ctx, rtype, perm, query = m.groups()
            if ctx == "system":
                continue
            letters = _V1_PERMS.get(perm, perm if set(perm) <= set("cruds") else "")
            g.perms.setdefault(rtype, set()).update(letters)
            if query:
                g.restricted.add(rtype)
        return g

    def allows(self, rtype: str, letter: str) -> bool:
        return letter in self.perms.get(rtype, set()) or letter in self.perms.get("*", set())

    def can_read(self, rtype: str) -> bool:
        return self.allows(rtype, "r") or self.allows(rtype, "s")

    def can_create(self, rtype: str) -> bool:
        return self.allows(rtype, "c")


def missing(requested: Iterable[str], granted: str | None) -> list[str]:
    """Requested resource scopes (and openid/fhirUser/launch...) whose permissions were not granted."""
    g = Grants.parse(granted)
    out: list[str] = []
    for s in requested:
        if s in (FHIR_USER_READ, FHIR_USER_READ_V1):  # optional: only the signer's display name depends on it
            continue
        m = _SCOPE_RE.match(s)
        if not m:
            if s not in g.other and s not in ("launch", "launch/patient", "offline_access", "online_access"):
                out.append(s)
            continue
        _, rtype, perm, _ = m.groups()
        letters = _V1_PERMS.get(perm, perm)
        if not all(g.allows(rtype, ch) for ch in letters):
            out.append(s)
    return out


def _writes(scope: str) -> bool:
    m = _SCOPE_RE.match(scope)
    return bool(m) and bool(set(_V1_PERMS.get(m.group(3), m.group(3))) & set("cud"))


def fallback_notes(fallback: dict | None) -> list[str]:
    """What a clinician should know when the EHR refused the first scope request and a smaller set was granted:
    which permissions were dropped and what that costs."""
    if not fallback or not fallback.get("dropped"):
        return []
    dropped = list(fallback["dropped"])
    notes = [f"The EHR refused the permissions first asked for ({fallback.get('reason') or 'invalid_scope'}); the "
             f"app asked again without: {' '.join(dropped)}."]
    if {"offline_access", "online_access"} & set(dropped):
        notes.append("Without a refresh permission the session ends when the EHR's access token expires: then "
                     "launch the app again from the EHR.")
    if {"openid", "fhirUser"} & set(dropped):
        notes.append("Without openid fhirUser the EHR does not say who is signed in, so the referral cannot be "
                     "signed in this session.")
    if any(_writes(s) for s in dropped):
        notes.append("Without create permissions nothing can be written: the prescription can be reviewed and "
                     "printed only.")
    return notes
