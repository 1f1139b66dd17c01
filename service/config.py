"""Settings from ONCO_EXERCISE_* environment variables, validated once at start.

Every setting is documented in the README's configuration table; `tests/ops/test_config_table.py` keeps the
two in step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from service.exercise_services import ExerciseService

Mode = Literal["serve", "sandbox"]
Strategy = Literal["auto", "full", "service-request-only", "document", "care-coordination"]


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("onco-exercise"))


def _normalise_base(url: str) -> str:
    """FHIR base URLs compare without a trailing slash; only http(s) URLs with a host are accepted."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a base URL has no query or fragment: {url!r}")
    return url


def json_list(v: Any, setting: str, shape: str) -> Any:
    """A setting given as JSON text -> its value (empty text: []); it must be a list. Non-text passes through
    unchanged when it is a list (set in code)."""
    if isinstance(v, str):
        if not v.strip():
            return []
        try:
            v = json.loads(v)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{setting} is not valid JSON: {exc.msg}") from None
    if not isinstance(v, list):
        raise ValueError(f"{setting} must be a JSON list of {shape}")
    return v


class Settings(BaseSettings):
    """All configuration. Field names map to ONCO_EXERCISE_<NAME> (upper case)."""

    model_config = SettingsConfigDict(env_prefix="ONCO_EXERCISE_", extra="ignore", frozen=False)

    mode: Mode = "serve"
    public_url: str = "http://127.0.0.1:8000"
    fhir_servers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cds_clients: Annotated[list[dict[str, Any]], NoDecode] = Field(default_factory=list)

    storage_url: str = ""  # "" -> sqlite file in data_dir; "sqlite:///path.db"; "redis://host:6379/0"
    data_dir: Path = Field(default_factory=default_data_dir)
    state_keys: str = Field(default="", repr=False)  # "kid:base64url,..." (secret): seals the store's values
    state_key_file: Path | None = None  # JSON key ring; generated in data_dir when neither is set
    patient_cache_seconds: int = 900  # patient data kept for the app page, then read again from the EHR

    smart_client_id: str = "onco-exercise"
    smart_client_auth: Literal["public", "private_key_jwt"] = "public"
    smart_private_jwks_file: Path | None = None  # JWKS (private) for private_key_jwt; generated if absent
    smart_alg: Literal["RS384", "ES384"] = "ES384"
    smart_scopes: str = ""  # "" -> derived from the write-back strategy (service.smart.scopes)

    writeback_strategy: Strategy = "auto"
    care_coordination_fhir_url: str | None = None
    exercise_service_ref: str = "Organization/exercise-oncology-service"
    exercise_service_name: str = "Exercise oncology service"
    exercise_services: Annotated[list[dict[str, Any]], NoDecode] = Field(default_factory=list)
    notify_max_attempts: int = 8  # deliveries of one notification before it is given up (recorded as failed)
    notify_retry_seconds: float = 5.0  # first retry delay; doubled per attempt, at most 15 minutes
    exercise_service_contact: str = ""  # how patients reach it (phone, email), printed on the handout
    care_team_contact: str = ""  # how patients reach their cancer team, printed on the handout

    hook_budget_seconds: float = 2.0
    card_repeat_hours: float = 12.0  # a shown suggestion stays quiet this long (patient-view offers the app)
    cds_jwt_allow_sha256: bool = False  # also accept RS256/ES256 client JWTs (spec recommends RS384/ES384)
    cds_signature_process: Literal["auto", "on", "off"] = "auto"  # client JWT signatures checked in a helper
    fhir_timeout_seconds: float = 10.0
    max_body_bytes: int = 2_000_000
    session_ttl_seconds: int = 8 * 3600
    sign_lease_seconds: float = 15.0  # a signer's lease; a dead signer's patient is signable again after it
    sign_wait_seconds: float = 45.0  # a second signer of the same draft waits this long for the first
    max_header_bytes: int = 16384  # request line + headers
    max_headers: int = 100
    header_timeout_seconds: float = 10.0  # a connection must deliver a request's headers within this
    body_timeout_seconds: float = 15.0  # longest pause between two pieces of a request body
    keepalive_seconds: float = 5.0  # an idle keep-alive connection is closed after this
    cookie_secure: bool = True
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    log_level: str = "INFO"
    log_json: bool = True
    allow_no_cds_clients: bool = False  # serve mode refuses to start without trusted CDS clients unless set
    audit_retention_days: int = 400  # how long the store keeps audit records (the log sink keeps its own)

    # Sandbox only
    sandbox_access_token_seconds: int = 300
    sandbox_reset: bool = False

    @field_validator("fhir_servers", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("fhir_servers")
    @classmethod
    def _check_servers(cls, v: list[str]) -> list[str]:
        return [_normalise_base(u) for u in v]

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, v: str) -> str:
        return _normalise_base(v)

    @field_validator("cds_clients", mode="before")
    @classmethod
    def _parse_clients(cls, v: Any) -> Any:
        v = json_list(v, "ONCO_EXERCISE_CDS_CLIENTS", "{iss, jwks_url | jwks}")
        for i, c in enumerate(v):
            if not isinstance(c, dict) or not isinstance(c.get("iss"), str) or not c["iss"]:
                raise ValueError(f"CDS client #{i}: needs a non-empty string 'iss'")
            if ("jwks_url" in c) == ("jwks" in c):
                raise ValueError(f"CDS client {c['iss']!r}: give exactly one of 'jwks_url' or 'jwks'")
            if "jwks_url" in c:
                _normalise_base(c["jwks_url"])
            elif not isinstance(c["jwks"], dict) or not isinstance(c["jwks"].get("keys"), list):
                raise ValueError(f"CDS client {c['iss']!r}: 'jwks' must be a JWKS object with 'keys'")
            elif not c["jwks"]["keys"] or not all(isinstance(k, dict) and k.get("kty") for k in c["jwks"]["keys"]):
                raise ValueError(f"CDS client {c['iss']!r}: 'jwks' needs at least one key, each with 'kty'")
        return v

    @field_validator("exercise_services", mode="before")
    @classmethod
    def _parse_services(cls, v: Any) -> Any:
        from service.exercise_services import parse_services

        v = json_list(v, "ONCO_EXERCISE_EXERCISE_SERVICES", "{reference, name, endpoint}")
        try:
            return [{"reference": s.reference, "name": s.name, "endpoint": s.endpoint} for s in parse_services(v)]
        except ValueError as exc:
            raise ValueError(f"ONCO_EXERCISE_EXERCISE_SERVICES: {exc}") from None

    @field_validator("storage_url")
    @classmethod
    def _check_storage(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(("sqlite:///", "redis://", "rediss://", "unix://")):
            raise ValueError("use sqlite:///PATH, redis://HOST:PORT/DB, rediss://... or unix://PATH "
                             f"(got scheme {v.split(':', 1)[0]!r})")
        return v

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        v = v.strip().upper()
        if v not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
            raise ValueError("use one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return v

    @field_validator("max_body_bytes", "session_ttl_seconds", "audit_retention_days",
                     "sandbox_access_token_seconds", "notify_max_attempts", "patient_cache_seconds",
                     "max_header_bytes", "max_headers", "sign_lease_seconds", "sign_wait_seconds",
                     "header_timeout_seconds", "body_timeout_seconds", "keepalive_seconds")
    @classmethod
    def _check_positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be a positive number")
        return v

    @field_validator("exercise_service_contact", "care_team_contact")
    @classmethod
    def _check_contact(cls, v: str) -> str:
        v = " ".join(v.split())
        if len(v) > 200:
            raise ValueError("at most 200 characters (a phone number, an email address, opening hours)")
        return v

    @field_validator("care_coordination_fhir_url")
    @classmethod
    def _check_cc(cls, v: str | None) -> str | None:
        return _normalise_base(v) if v else None

    @model_validator(mode="after")
    def _check_combination(self) -> "Settings":
        if self.writeback_strategy == "care-coordination" and not self.care_coordination_fhir_url:
            raise ValueError("ONCO_EXERCISE_WRITEBACK_STRATEGY=care-coordination needs "
                             "ONCO_EXERCISE_CARE_COORDINATION_FHIR_URL")
        if self.hook_budget_seconds <= 0 or self.fhir_timeout_seconds <= 0:
            raise ValueError("time budgets must be positive")
        if not 0 < self.notify_retry_seconds <= 3600 or self.notify_max_attempts > 50:
            raise ValueError("ONCO_EXERCISE_NOTIFY_RETRY_SECONDS must be more than 0 and at most 3600, "
                             "ONCO_EXERCISE_NOTIFY_MAX_ATTEMPTS at most 50")
        if not 0 < self.card_repeat_hours <= 24 * 90:
            raise ValueError("ONCO_EXERCISE_CARD_REPEAT_HOURS must be more than 0 and at most 2160 (90 days)")
        if self.sign_wait_seconds <= self.sign_lease_seconds:
            raise ValueError("ONCO_EXERCISE_SIGN_WAIT_SECONDS must exceed ONCO_EXERCISE_SIGN_LEASE_SECONDS (a "
                             "second signer waits out a dead signer's lease)")
        if self.max_header_bytes < 4096:
            raise ValueError("ONCO_EXERCISE_MAX_HEADER_BYTES must be at least 4096 (EHR launch URLs are long)")
        return self

    # -- derived -------------------------------------------------------------------------------------------

    @property
    def sandbox_fhir_base(self) -> str:
        return f"{self.public_url}/sandbox/fhir"

    def fhir_allowed(self, url: str | None) -> bool:
        """True only for an allowlisted FHIR base (exact match, trailing slash ignored). Surrounding
        whitespace is refused, not stripped: the caller would contact the raw value, not the checked one."""
        if not url or not isinstance(url, str) or url != url.strip():
            return False
        try:
            return _normalise_base(url) in self.fhir_servers
        except ValueError:
            return False

    def exercise_service_list(self) -> "list[ExerciseService]":
        """The configured exercise services, the default (referrals go there unless the clinician picks
        another) first; the single-service settings make the list when ONCO_EXERCISE_EXERCISE_SERVICES is empty."""
        from service.exercise_services import ExerciseService, parse_services

        if self.exercise_services:
            return parse_services([{k: v for k, v in s.items() if v is not None} for s in self.exercise_services])
        return [ExerciseService(self.exercise_service_ref, self.exercise_service_name)]

    def resolved_storage_url(self) -> str:
        return self.storage_url or f"sqlite:///{self.data_dir / 'state.db'}"

    def serve_problems(self) -> tuple[list[str], list[str]]:
        """(errors, warnings) that only matter for `serve`: settings that parse but cannot work in production.

        Client-JWT verification is always on in serve mode, so an empty CDS client list would reject every hook
        call; it is refused unless ONCO_EXERCISE_ALLOW_NO_CDS_CLIENTS=true says "SMART app only" on purpose.
        """
        errors: list[str] = []
        warnings: list[str] = []
        if not self.fhir_servers:
            errors.append("ONCO_EXERCISE_FHIR_SERVERS is empty: no SMART launch or hook call could reach a FHIR "
                          "server (give a comma-separated list of FHIR base URLs)")
        if not self.cds_clients:
            msg = ("ONCO_EXERCISE_CDS_CLIENTS is empty: every CDS Hooks call would be rejected (client JWTs are "
                   "always verified)")
            if self.allow_no_cds_clients:
                warnings.append(msg + "; starting anyway because ONCO_EXERCISE_ALLOW_NO_CDS_CLIENTS is set")
            else:
                errors.append(msg + "; give a JSON list of {\"iss\", \"jwks_url\"} or set "
                              "ONCO_EXERCISE_ALLOW_NO_CDS_CLIENTS=true to run the SMART app only")
        host = urlsplit(self.public_url).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
            warnings.append(f"ONCO_EXERCISE_PUBLIC_URL is {self.public_url}: EHRs reach the service at its "
                            "external URL, and JWT audiences and redirect URIs are checked against it")
        if self.public_url.startswith("http://") and self.cookie_secure:
            errors.append("ONCO_EXERCISE_PUBLIC_URL is plain http but cookies are Secure-only: browsers would "
                          "drop the SMART session cookie and no app session could work (serve over https, or set "
                          "ONCO_EXERCISE_COOKIE_SECURE=false for a local trial)")
        for url in self.fhir_servers + [u for u in [self.care_coordination_fhir_url] if u]:
            if url.startswith("http://"):
                warnings.append(f"FHIR server {url} is plain http: access tokens and patient data would cross "
                                "the network unencrypted")
        for c in self.cds_clients:
            if str(c.get("jwks_url", "")).startswith("http://"):
                warnings.append(f"CDS client {c['iss']}: jwks_url {c['jwks_url']} is plain http: anyone on the "
                                "path could substitute keys and forge hook calls")
        if self.storage_url.startswith(("redis://", "rediss://", "unix://")) and not (self.state_keys or
                                                                                     self.state_key_file):
            warnings.append("the store is shared (Redis) but ONCO_EXERCISE_STATE_KEYS / _STATE_KEY_FILE is unset: "
                            "each replica uses the key file in its own data folder, so replicas must share that "
                            "folder (or one key ring) to read each other's sessions")
        if self.storage_url.startswith("redis://") and urlsplit(self.storage_url).hostname not in (
                "127.0.0.1", "localhost", "::1"):
            warnings.append("the Redis store is reached without TLS (redis://): use rediss:// when Redis is not on "
                            "a private network")
        errors += self.file_problems()
        return errors, warnings

    def file_problems(self) -> list[str]:
        """Keys and folders `serve` needs at start: checked here so a bad one is a message, not a traceback."""
        problems: list[str] = []
        from service.sealing import KeyRingError, load_key_ring  # local: config is imported by everything

        try:
            load_key_ring(self, create=False) if (self.state_keys or self.state_key_file) else None
        except KeyRingError as exc:
            problems.append(f"state encryption keys: {exc}")
        if self.smart_private_jwks_file is not None:
            from service.smart.keys import KeyConfigError, load_or_create_keys

            try:
                load_or_create_keys(self)
            except (KeyConfigError, OSError, ValueError) as exc:
                problems.append(f"ONCO_EXERCISE_SMART_PRIVATE_JWKS_FILE: {exc}")
        needs_folder = (not self.storage_url or self.storage_url.startswith("sqlite:///")
                        or not (self.state_keys or self.state_key_file) or self.smart_private_jwks_file is None)
        if needs_folder:
            folder = Path(self.data_dir)
            probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), folder)
            if not os.access(probe, os.W_OK | os.X_OK):
                problems.append(f"ONCO_EXERCISE_DATA_DIR {folder} is not writable by this user (it holds the "
                                "state file and generated keys)")
        return problems


def settings_problem(exc: Exception) -> str:
    """A readable one-paragraph message for a settings validation error (no traceback, no secret values)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        lines = []
        for e in errors():
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            names = [str(p) for p in e.get("loc", ()) if isinstance(p, str)]
            lines.append(f"ONCO_EXERCISE_{names[0].upper()}: {msg}" if names else msg)
        return "invalid configuration:\n  " + "\n  ".join(lines)
    return f"invalid configuration: {exc}"
