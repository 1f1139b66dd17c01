"""`onco-exercise check-config`: load the settings, reach every configured server, say what would happen.

It prints one line per finding (ok / info / warning / problem) and exits non-zero when any problem was
found, so it can gate a deployment. It reuses the service's own FHIR client, SMART discovery and write-back
strategy choice, so what it reports is what `serve` would do — not a second opinion.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.config import Settings

WRITE_TYPES = ("CarePlan", "Goal", "ServiceRequest", "Task", "Provenance", "DocumentReference")


@dataclass
class Report:
    findings: list[tuple[str, str]] = field(default_factory=list)

    def add(self, level: str, message: str) -> None:
        self.findings.append((level, message))

    @property
    def problems(self) -> list[str]:
        return [m for lvl, m in self.findings if lvl == "problem"]

    def print(self, out: TextIO) -> None:
        for level, message in self.findings:
            print(f"{level:<8} {message}", file=out)
        n = len(self.problems)
        print(f"{n} problem{'s' if n != 1 else ''} found." if n else "no problems found.", file=out)


def safe_url(url: str) -> str:
    """A URL with any password replaced, for printing (storage URLs may carry credentials)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _check_store(settings: Settings, report: Report) -> None:
    from service.storage import open_store

    url = settings.resolved_storage_url()
    try:
        store = open_store(url)
    except Exception as exc:  # noqa: BLE001 - every failure is a finding
        report.add("problem", f"storage {safe_url(url)}: cannot open ({_error(exc)})")
        return
    try:
        if await asyncio.wait_for(store.ping(), timeout=settings.fhir_timeout_seconds):
            report.add("ok", f"storage {safe_url(url)} reachable")
            await _check_eviction(store, url, report)
        else:
            report.add("problem", f"storage {safe_url(url)}: not reachable")
    except Exception as exc:  # noqa: BLE001
        report.add("problem", f"storage {safe_url(url)}: {_error(exc)}")
    finally:
        await store.close()


async def _check_eviction(store: object, url: str, report: Report) -> None:
    """Redis must never evict: an evicted signing lease, session or audit intent breaks exactly-once signing."""
    policy_of = getattr(store, "eviction_policy", None)
    if policy_of is None:
        return
    policy = await policy_of()
    if policy is None:
        report.add("warning", f"storage {safe_url(url)}: cannot read maxmemory-policy (CONFIG disabled?); it must "
                              "be noeviction")
    elif policy != "noeviction":
        report.add("problem", f"storage {safe_url(url)}: maxmemory-policy is {policy}: Redis may evict sessions, "
                              "signing leases and audit records under memory pressure (set noeviction)")
    else:
        report.add("ok", f"storage {safe_url(url)}: maxmemory-policy noeviction")


def registration(settings: Settings) -> list[str]:
    """What the EHR's administrator registers for this service (SMART app and CDS service)."""
    from service.patient.scopes import patient_scopes

    base = settings.public_url
    lines = [f"SMART client id: {settings.smart_client_id} ({settings.smart_client_auth})",
             f"SMART redirect URI: {base}/smart/callback",
             f"SMART launch URL: {base}/smart/launch",
             f"Patient companion (patient-facing app, same client and redirect URI; patient-level scopes: "
             f"{' '.join(patient_scopes())}): {base}/patient/launch",
             f"CDS Hooks discovery URL: {base}/cds-services"]
    if settings.smart_client_auth == "private_key_jwt":
        lines.insert(2, f"SMART JWKS URL (private_key_jwt): {base}/.well-known/jwks.json")
    return lines


async def _capability(settings: Settings, base: str, report: Report) -> tuple[dict[str, Any] | None, Any]:
    """(raw CapabilityStatement, parsed Capability) or (None, None) after reporting the problem."""
    from service.fhir.capability import parse_capability
    from service.fhir.client import FhirClient

    try:
        async with FhirClient(base, timeout=settings.fhir_timeout_seconds, retries=0) as client:
            statement = await client.capability_statement()
        cap = parse_capability(statement)
    except Exception as exc:  # noqa: BLE001
        report.add("problem", f"FHIR {base}: cannot read its CapabilityStatement ({_error(exc)})")
        return None, None
    version = cap.fhir_version or "unknown"
    software = f" ({cap.software})" if cap.software else ""
    level = "ok" if version.startswith("4.0") else "problem"
    report.add(level, f"FHIR {base}: FHIR {version}{software}"
                      + ("" if level == "ok" else " — onco-exercise speaks FHIR R4 (4.0.x)"))
    creatable = [t for t in WRITE_TYPES if cap.can_create(t)]
    report.add("info", f"FHIR {base}: transaction {'yes' if cap.transaction else 'no'}; can create "
                       f"{', '.join(creatable) or 'nothing we write'}")
    return statement, cap


def _strategy(settings: Settings, base: str, cap: Any, report: Report) -> None:
    try:
        from service.fhir.writeback import choose_strategy
    except ImportError:
        report.add("warning", f"FHIR {base}: write-back strategy unknown (service.fhir.writeback unavailable)")
        return
    try:
        strategy = choose_strategy(cap, settings.writeback_strategy, None,
                                   care_coordination_available=bool(settings.care_coordination_fhir_url))
    except Exception as exc:  # noqa: BLE001 - a server we cannot write to is a problem to report, not a crash
        report.add("problem", f"FHIR {base}: no usable write-back strategy ({_error(exc)})")
        return
    how = ("if the access token grants every create" if settings.writeback_strategy == "auto"
           else "forced by ONCO_EXERCISE_WRITEBACK_STRATEGY")
    report.add("info", f"FHIR {base}: write-back strategy {strategy} ({how})")


async def _smart(settings: Settings, base: str, statement: dict[str, Any] | None, http: httpx.AsyncClient,
                 report: Report) -> None:
    from service.smart.launch import LaunchError, discover

    try:
        disc = await discover(http, base, statement)
    except LaunchError as exc:
        report.add("problem", f"FHIR {base}: SMART — {exc.message}")
        return
    except Exception as exc:  # noqa: BLE001
        report.add("problem", f"FHIR {base}: SMART discovery failed ({_error(exc)})")
        return
    report.add("ok", f"FHIR {base}: SMART authorize {disc.authorization_endpoint}, token {disc.token_endpoint}"
                     f" (from {disc.source})")
    caps = set(disc.capabilities)
    if disc.source == "smart-configuration" and "launch-ehr" not in caps:
        report.add("warning", f"FHIR {base}: SMART configuration does not list 'launch-ehr' (EHR launch may "
                              "not work; standalone launch still can)")
    if disc.code_challenge_methods is None:
        report.add("warning", f"FHIR {base}: SMART configuration does not list code_challenge_methods_supported"
                              " (PKCE S256 is required by SMART v2 and always used by this app)")


async def _jwks(settings: Settings, http: httpx.AsyncClient, report: Report) -> None:
    for client in settings.cds_clients:
        iss = client["iss"]
        if "jwks" in client:
            n = len(client["jwks"].get("keys") or [])
            report.add("ok" if n else "problem", f"CDS client {iss}: inline JWKS with {n} key(s)")
            continue
        url = client["jwks_url"]
        try:
            r = await http.get(url, headers={"Accept": "application/json"})
            keys = r.json().get("keys") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            report.add("problem", f"CDS client {iss}: JWKS {url} unreachable ({_error(exc)})")
            continue
        if isinstance(keys, list) and keys:
            report.add("ok", f"CDS client {iss}: JWKS {url} has {len(keys)} key(s)")
        else:
            report.add("problem", f"CDS client {iss}: JWKS {url} answered {r.status_code} without keys")


async def run_checks(settings: Settings) -> Report:
    """Every check against live servers; never raises for a finding."""
    report = Report()
    report.add("info", f"mode {settings.mode}; public URL {settings.public_url}; "
                       f"{len(settings.fhir_servers)} FHIR server(s); {len(settings.cds_clients)} CDS client(s)")
    if settings.mode == "serve":
        errors, warnings = settings.serve_problems()
        for e in errors:
            report.add("problem", e)
        for w in warnings:
            report.add("warning", w)
    for line in registration(settings):
        report.add("register", line)
    await _check_store(settings, report)
    async with httpx.AsyncClient(timeout=settings.fhir_timeout_seconds, follow_redirects=False) as http:
        for base in settings.fhir_servers:
            statement, cap = await _capability(settings, base, report)
            if cap is not None:
                _strategy(settings, base, cap, report)
            await _smart(settings, base, statement, http, report)
        cc = settings.care_coordination_fhir_url
        if cc:
            _, cap = await _capability(settings, cc, report)
            if cap is not None and not (cap.can_create("Task") and cap.can_create("ServiceRequest")):
                report.add("problem", f"FHIR {cc}: the care-coordination server must accept ServiceRequest "
                                      "and Task creates")
        await _jwks(settings, http, report)
    return report


def check_config(out: TextIO | None = None) -> int:
    """Load settings from the environment, run every check, print the report; 0 = no problems."""
    from pydantic import ValidationError

    from service.config import settings_problem

    out = out or sys.stdout
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"problem  {settings_problem(exc)}", file=out)
        return 2
    report = asyncio.run(run_checks(settings))
    report.print(out)
    return 1 if report.problems else 0
