"""Request validation for hook calls and feedback, written from the CDS Hooks 2.0 text.

Plain checks over the parsed JSON rather than pydantic models: a hook call carries a ~100 KB prefetch that we
must not walk twice, and each rule below names the spec sentence it enforces so a 400 says exactly what is
wrong. Identifiers that later become parts of FHIR URLs (patientId, encounterId) are held to the FHIR `id`
grammar here, which is also what keeps them from smuggling paths or queries into fallback reads.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

FHIR_ID_PATTERN = r"^[A-Za-z0-9\-.]{1,64}$"
FHIR_ID = re.compile(FHIR_ID_PATTERN[1:-1])
REFERENCE = re.compile(r"([A-Za-z]{1,64})/([A-Za-z0-9\-.]{1,64})")

# Hook context definitions (HL7 cds-hooks-library): field -> (required, allowed reference types or None for an id)
USER_TYPES_ENCOUNTER = ("Practitioner", "PractitionerRole")
USER_TYPES_PATIENT_VIEW = ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")

HOOK_CONTEXTS: dict[str, dict[str, tuple[bool, tuple[str, ...] | None]]] = {
    "encounter-start": {
        "userId": (True, USER_TYPES_ENCOUNTER),
        "patientId": (True, None),
        "encounterId": (True, None),
    },
    "patient-view": {
        "userId": (True, USER_TYPES_PATIENT_VIEW),
        "patientId": (True, None),
        "encounterId": (False, None),
    },
}

FEEDBACK_OUTCOMES = ("accepted", "overridden")


class RequestInvalid(Exception):
    """A request the spec does not allow: answered with 400 and an OperationOutcome naming the problem."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


@dataclass(slots=True)
class FhirAuthorization:
    access_token: str
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None

    def __repr__(self) -> str:  # never let the token reach a log line through a repr
        return f"FhirAuthorization(subject={self.subject!r}, scope={self.scope!r})"


@dataclass(slots=True)
class HookRequest:
    hook: str
    hook_instance: str
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    fhir_server: str | None = None
    fhir_authorization: FhirAuthorization | None = None

    @property
    def patient_id(self) -> str:
        return self.context["patientId"]

    @property
    def encounter_id(self) -> str | None:
        return self.context.get("encounterId")

    @property
    def user_id(self) -> str:
        return self.context["userId"]


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise RequestInvalid("the request body is empty; a JSON object is required")
    try:
        data = orjson.loads(body)  # ~3x faster than json on a 120 KB prefetch; the body is parsed only here
    except (ValueError, RecursionError):  # JSONDecodeError (bad UTF-8, NaN, nesting > 1024) is a ValueError
        raise RequestInvalid("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestInvalid("the request body must be a JSON object")
    return data


def _str(data: dict[str, Any], key: str, path: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise RequestInvalid(f"'{path}' is required", path)
        return None
    if not isinstance(value, str) or not value:
        raise RequestInvalid(f"'{path}' must be a non-empty string", path)
    return value


def _check_context(hook: str, context: Any) -> dict[str, Any]:
    if not isinstance(context, dict):
        raise RequestInvalid("'context' must be a JSON object", "context")
    for name, (required, ref_types) in HOOK_CONTEXTS[hook].items():
        value = _str(context, name, f"context.{name}", required)
        if value is None:
            continue
        if ref_types is None:
            if not FHIR_ID.fullmatch(value):
                raise RequestInvalid(f"'context.{name}' must be a FHIR resource id", f"context.{name}")
        else:
            m = REFERENCE.fullmatch(value)
            if not m or m.group(1) not in ref_types:
                raise RequestInvalid(
                    f"'context.{name}' must be a reference 'Type/id' with Type one of {', '.join(ref_types)}",
                    f"context.{name}",
                )
    return context


def _check_prefetch(prefetch: Any) -> dict[str, Any] | None:
    if prefetch is None:
        return None
    if not isinstance(prefetch, dict):
        raise RequestInvalid("'prefetch' must be a JSON object", "prefetch")
    for key, value in prefetch.items():
        if value is None:  # the client has no data for this key
            continue
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise RequestInvalid(f"'prefetch.{key}' must be a FHIR resource (or null)", f"prefetch.{key}")
    return prefetch


def _check_server(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RequestInvalid("'fhirServer' must be a non-empty string", "fhirServer")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestInvalid("'fhirServer' must be an http(s) URL", "fhirServer")
    return value


def _check_authorization(value: Any) -> FhirAuthorization | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestInvalid("'fhirAuthorization' must be a JSON object", "fhirAuthorization")
    token = _str(value, "access_token", "fhirAuthorization.access_token")
    token_type = _str(value, "token_type", "fhirAuthorization.token_type")
    if token_type.lower() != "bearer":  # type: ignore[union-attr]
        raise RequestInvalid("'fhirAuthorization.token_type' must be 'Bearer'", "fhirAuthorization.token_type")
    expires_in = value.get("expires_in")
    if not isinstance(expires_in, int) or isinstance(expires_in, bool):
        raise RequestInvalid("'fhirAuthorization.expires_in' must be an integer", "fhirAuthorization.expires_in")
    scope = _str(value, "scope", "fhirAuthorization.scope")
    subject = _str(value, "subject", "fhirAuthorization.subject")
    patient = _str(value, "patient", "fhirAuthorization.patient", required=False)
    if patient is not None and not FHIR_ID.fullmatch(patient):
        raise RequestInvalid("'fhirAuthorization.patient' must be a FHIR resource id", "fhirAuthorization.patient")
    return FhirAuthorization(token, token_type, expires_in, scope, subject, patient)  # type: ignore[arg-type]


def parse_hook_request(body: bytes, expected_hook: str) -> HookRequest:
    """Validate a hook call for a service that answers `expected_hook`; raise RequestInvalid on any problem."""
    data = parse_json_object(body)
    hook = _str(data, "hook", "hook")
    if hook != expected_hook:
        raise RequestInvalid(f"this service answers the '{expected_hook}' hook, not '{hook}'", "hook")
    instance = _str(data, "hookInstance", "hookInstance")
    try:
        uuid.UUID(instance)  # type: ignore[arg-type]
    except ValueError:
        raise RequestInvalid("'hookInstance' must be a UUID", "hookInstance") from None
    if "context" not in data:
        raise RequestInvalid("'context' is required", "context")
    context = _check_context(expected_hook, data["context"])
    prefetch = _check_prefetch(data.get("prefetch"))
    server = _check_server(data.get("fhirServer"))
    auth = _check_authorization(data.get("fhirAuthorization"))
    if auth is not None and server is None:
        raise RequestInvalid("'fhirServer' is required when 'fhirAuthorization' is sent", "fhirServer")
    if auth is not None and auth.patient is not None and auth.patient != context["patientId"]:
        raise RequestInvalid("'fhirAuthorization.patient' does not match 'context.patientId'",
                             "fhirAuthorization.patient")
    patient = (prefetch or {}).get("patient")
    if isinstance(patient, dict) and patient.get("resourceType") == "Patient" and patient.get("id") != context["patientId"]:
        # Data about someone else must never become this patient's plan.
        raise RequestInvalid("'prefetch.patient' is not the Patient named in 'context.patientId'", "prefetch.patient")
    return HookRequest(hook, instance, context, prefetch, server, auth)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Feedback
# ---------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Feedback:
    card: str
    outcome: str
    outcome_timestamp: datetime
    accepted_suggestions: tuple[str, ...] = ()
    reason_system: str | None = None
    reason_code: str | None = None
    user_comment: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_timestamp(value: Any, path: str) -> datetime:
    if not isinstance(value, str) or "T" not in value:
        raise RequestInvalid(f"'{path}' must be an RFC 3339 date-time", path)
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise RequestInvalid(f"'{path}' must be an RFC 3339 date-time", path) from None
    if ts.tzinfo is None:
        raise RequestInvalid(f"'{path}' must carry a time zone offset (RFC 3339)", path)
    return ts


def _parse_feedback_item(item: Any, i: int) -> Feedback:
    p = f"feedback[{i}]"
    if not isinstance(item, dict):
        raise RequestInvalid(f"'{p}' must be a JSON object", p)
    card = _str(item, "card", f"{p}.card")
    outcome = _str(item, "outcome", f"{p}.outcome")
    if outcome not in FEEDBACK_OUTCOMES:
        raise RequestInvalid(f"'{p}.outcome' must be 'accepted' or 'overridden'", f"{p}.outcome")
    ts = _parse_timestamp(item.get("outcomeTimestamp"), f"{p}.outcomeTimestamp")
    accepted: list[str] = []
    raw_accepted = item.get("acceptedSuggestions")
    if outcome == "accepted":
        if not isinstance(raw_accepted, list) or not raw_accepted:
            raise RequestInvalid(f"'{p}.acceptedSuggestions' is required when the outcome is 'accepted'",
                                 f"{p}.acceptedSuggestions")
        for j, s in enumerate(raw_accepted):
            if not isinstance(s, dict):
                raise RequestInvalid(f"'{p}.acceptedSuggestions[{j}]' must be an object with 'id'",
                                     f"{p}.acceptedSuggestions[{j}]")
            accepted.append(_str(s, "id", f"{p}.acceptedSuggestions[{j}].id"))  # type: ignore[arg-type]
    elif raw_accepted is not None:
        raise RequestInvalid(f"'{p}.acceptedSuggestions' is only allowed when the outcome is 'accepted'",
                             f"{p}.acceptedSuggestions")
    system = code = comment = None
    raw_reason = item.get("overrideReason")
    if raw_reason is not None:
        if outcome != "overridden":
            raise RequestInvalid(f"'{p}.overrideReason' is only allowed when the outcome is 'overridden'",
                                 f"{p}.overrideReason")
        if not isinstance(raw_reason, dict):
            raise RequestInvalid(f"'{p}.overrideReason' must be an object", f"{p}.overrideReason")
        reason = raw_reason.get("reason")
        if reason is not None:
            if not isinstance(reason, dict):
                raise RequestInvalid(f"'{p}.overrideReason.reason' must be a Coding", f"{p}.overrideReason.reason")
            code = _str(reason, "code", f"{p}.overrideReason.reason.code")
            system = _str(reason, "system", f"{p}.overrideReason.reason.system", required=False)
        comment = _str(raw_reason, "userComment", f"{p}.overrideReason.userComment", required=False)
        if reason is None and comment is None:
            raise RequestInvalid(f"'{p}.overrideReason' needs a 'reason' or a 'userComment'", f"{p}.overrideReason")
    return Feedback(card, outcome, ts, tuple(accepted), system, code, comment)  # type: ignore[arg-type]


def parse_feedback(body: bytes) -> list[Feedback]:
    data = parse_json_object(body)
    items = data.get("feedback")
    if not isinstance(items, list) or not items:
        raise RequestInvalid("'feedback' must be a non-empty array", "feedback")
    return [_parse_feedback_item(item, i) for i, item in enumerate(items)]
