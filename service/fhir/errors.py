"""The one error type every outbound FHIR call raises, carrying the server's own explanation.

Callers (CDS hooks, the SMART app, write-back) need three things from a failure: an HTTP-ish status to map
to their own response, a readable message (the server's OperationOutcome diagnostics when it sent one) and
the OperationOutcome itself to pass on. `kind` says what went wrong without parsing the message.
"""

from __future__ import annotations

from typing import Any, Literal

ErrorKind = Literal["http", "timeout", "transport", "malformed", "foreign-link", "auth", "too-many-pages", "too-large"]

# Status used when no usable HTTP status came back (the upstream server is the one at fault).
STATUS_BAD_GATEWAY = 502
STATUS_GATEWAY_TIMEOUT = 504


class FhirError(Exception):
    """A FHIR call failed.

    status: the server's HTTP status for error responses; 502 for unusable responses (malformed body, foreign
    paging link, connection failure) and 504 for timeouts, so callers can map it straight to their own answer.
    outcome: the server's OperationOutcome (dict) when it sent one.
    """

    def __init__(self, status: int, message: str, outcome: dict[str, Any] | None = None, *,
                 kind: ErrorKind = "http", interaction: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome
        self.kind = kind
        self.interaction = interaction

    def __str__(self) -> str:
        return f"FHIR {self.interaction or 'call'} failed ({self.status}): {self.message}"

    def __repr__(self) -> str:
        return f"FhirError(status={self.status}, kind={self.kind!r}, message={self.message!r})"


def outcome_message(outcome: Any, default: str = "") -> str:
    """The human-readable part of an OperationOutcome: diagnostics / details.text of its issues, errors first."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return default
    issues = [i for i in outcome.get("issue") or [] if isinstance(i, dict)]
    issues.sort(key=lambda i: 0 if i.get("severity") in ("fatal", "error") else 1)
    parts: list[str] = []
    for i in issues:
        text = i.get("diagnostics") or (i.get("details") or {}).get("text") or ""
        if not text:
            codings = (i.get("details") or {}).get("coding") or []
            text = next((c.get("display") or c.get("code") for c in codings if isinstance(c, dict)), "") or ""
        text = text or i.get("code") or ""
        if text and text not in parts:
            parts.append(str(text))
    msg = "; ".join(parts)
    if len(msg) > 1000:
        msg = msg[:997] + "..."
    return msg or default
