"""What the patient companion asks for: read the patient's own plan, write what they report (PA IG observations,
Flags and Communications for the care team). Patient-level scopes only; never user/ or system/."""

from __future__ import annotations

READS = ("Patient", "CarePlan", "Goal", "ServiceRequest", "Task")
WRITES = ("Observation", "Flag", "Communication")


def patient_scopes(*, v1: bool = False, refresh: str | None = "offline_access") -> list[str]:
    """The authorize request's scopes (SMART v2 `.rs`/`.crs`, or v1 `.read`/`.write` for v1-only servers)."""
    scopes = ["openid", "fhirUser", "launch/patient"] + ([refresh] if refresh else [])
    for t in READS:
        scopes.append(f"patient/{t}.read" if v1 else f"patient/{t}.rs")
    for t in WRITES:
        scopes += [f"patient/{t}.read", f"patient/{t}.write"] if v1 else [f"patient/{t}.crs"]
    return scopes
