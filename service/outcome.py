"""OperationOutcome bodies for every non-2xx answer: one builder, so every layer says errors the same way."""

from __future__ import annotations

from typing import Any

# HTTP status -> OperationOutcome issue code (http://hl7.org/fhir/R4/valueset-issue-type.html)
ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
               409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly", 415: "not-supported",
               422: "invalid", 429: "throttled", 500: "exception", 502: "transient", 503: "transient",
               504: "timeout"}


def operation_outcome(message: str | None, *, status: int = 400, code: str | None = None,
                      location: str | None = None) -> dict[str, Any]:
    """A one-issue OperationOutcome; the issue code follows the HTTP status unless given. `message` may be
    None where saying why would help an attacker (e.g. a refused client JWT)."""
    issue: dict[str, Any] = {
        "severity": "error" if status < 500 else "fatal",
        "code": code or ISSUE_CODES.get(status, "processing"),
    }
    if message:
        issue["diagnostics"] = message
    if location:
        issue["expression"] = [location]
    return {"resourceType": "OperationOutcome", "issue": [issue]}
