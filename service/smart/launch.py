"""Launch: SMART discovery (with the CapabilityStatement fallback), scopes, PKCE S256 and the authorize URL.

The `state` (256 bits) is stored server-side with the PKCE verifier and bound to the browser's opaque cookie;
the callback pops it, so it is single use and expires after STATE_TTL seconds.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from service.smart._authlib import AsyncOAuth2Client

from service.smart.scopes import CONFIGURED, STRATEGY_WRITES, requested_scopes

STATE_NS = "smart-state"
STATE_TTL = 600
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
_DISCOVERY_CACHE_TTL = 300.0
_discovery_cache: dict[str, tuple[float, "Discovery"]] = {}


class LaunchError(Exception):
    """A launch that cannot proceed; `message` is shown to the user as is (no secrets in it)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Discovery:
    authorization_endpoint: str
    token_endpoint: str
    capabilities: list[str] = field(default_factory=list)
    issuer: str | None = None
    jwks_uri: str | None = None
    code_challenge_methods: list[str] | None = None
    source: str = "smart-configuration"

    @property
    def v1_only(self) -> bool:
        caps = set(self.capabilities)
        return "permission-v1" in caps and "permission-v2" not in caps

    @property
    def refresh_scope(self) -> str:
        """`online_access` when offered (renewal while the user stays signed in: all an in-EHR session needs,
        and what Oracle Health grants provider apps), else `offline_access`."""
        return "online_access" if "permission-online" in self.capabilities else "offline_access"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _capability_oauth_uris(capability: dict[str, Any]) -> tuple[str | None, str | None]:
    for rest in capability.get("rest") or []:
        for ext in ((rest.get("security") or {}).get("extension") or []):
            if ext.get("url") == OAUTH_URIS:
                uris = {e.get("url"): e.get("valueUri") for e in ext.get("extension") or []}
                return uris.get("authorize"), uris.get("token")
    return None, None


async def fetch_capability(http: httpx.AsyncClient, iss: str) -> dict[str, Any] | None:
    """The server's CapabilityStatement (unauthenticated /metadata), or None when it cannot be had."""
    try:
        r = await http.get(f"{iss}/metadata", headers={"Accept": "application/fhir+json"})
        if r.status_code == 200:
            data = r.json()
            if isinstance(data, dict) and data.get("resourceType") == "CapabilityStatement":
                return data
    except (httpx.HTTPError, ValueError):
        pass
    return None


async def discover(http: httpx.AsyncClient, iss: str, capability: dict[str, Any] | None = None) -> Discovery:
    """`{iss}/.well-known/smart-configuration`, else the CapabilityStatement's oauth-uris extension."""
    cached = _discovery_cache.get(iss)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    disc: Discovery | None = None
    reached = True
    try:
        r = await http.get(f"{iss}/.well-known/smart-configuration", headers={"Accept": "application/json"})
        if r.status_code == 200:
            doc = r.json()
            if isinstance(doc, dict) and doc.get("token_endpoint") and doc.get("authorization_endpoint"):
                disc = Discovery(
                    authorization_endpoint=doc["authorization_endpoint"],
                    token_endpoint=doc["token_endpoint"],
                    capabilities=[c for c in doc.get("capabilities") or [] if isinstance(c, str)],
                    issuer=doc.get("issuer"),
                    jwks_uri=doc.get("jwks_uri"),
                    code_challenge_methods=doc.get("code_challenge_methods_supported"),
                )
    except httpx.HTTPError:
        reached = False
    except ValueError:
        disc = None
    if disc is None and not reached:
        raise LaunchError("The EHR's FHIR server could not be reached; try again in a moment.", 502)
    if disc is None:
        if capability is None:
            capability = await fetch_capability(http, iss)
        authorize, token = _capability_oauth_uris(capability or {})
        if not authorize or not token:
            raise LaunchError("The EHR's FHIR server does not publish its SMART authorization endpoints "
                              "(no .well-known/smart-configuration and no oauth-uris in its "
                              "CapabilityStatement).", 502)
        disc = Discovery(authorization_endpoint=authorize, token_endpoint=token, source="capability-statement")
    methods = disc.code_challenge_methods
    if methods is not None and "S256" not in methods:
        raise LaunchError("The EHR's authorization server does not support PKCE S256, which this app "
                          "requires.", 502)
    _discovery_cache[iss] = (time.monotonic() + _DISCOVERY_CACHE_TTL, disc)
    return disc


def planned_writes(capability: dict[str, Any] | None, override: str = "auto",
                   care_coordination: bool = False) -> list[str]:
    """Types to ask create rights on: those written by the strategy this server's CapabilityStatement allows
    (`service.fhir.writeback.choose_strategy`, or the configured one), that the server can create. None at all
    when nothing can be written. Unknown capabilities: the full set."""
    from service.fhir.capability import parse_capability
    from service.fhir.writeback import WritebackError, choose_strategy

    cap = None
    if capability is not None:
        try:
            cap = parse_capability(capability)
        except ValueError:
            cap = None
    try:
        strategy = choose_strategy(cap, override, None, care_coordination_available=care_coordination)
    except WritebackError:
        return []
    wanted = STRATEGY_WRITES.get(strategy, ())
    return [t for t in wanted if cap is None or cap.can_create(t)]


def new_pkce_verifier() -> str:
    """RFC 7636 verifier: 86 characters from the unreserved set (512 bits of entropy)."""
    return secrets.token_urlsafe(64)


def new_state() -> str:
    return secrets.token_urlsafe(32)


def authorize_url(disc: Discovery, *, client_id: str, redirect_uri: str, scopes: list[str], state: str,
                  verifier: str, aud: str, launch: str | None) -> str:
    """The authorize redirect: response_type=code, S256 challenge, aud = iss, launch when EHR-launched."""
    client = AsyncOAuth2Client(client_id=client_id, redirect_uri=redirect_uri, scope=" ".join(scopes),
                               code_challenge_method="S256")
    extra: dict[str, str] = {"aud": aud}
    if launch:
        extra["launch"] = launch
    url, _ = client.create_authorization_url(disc.authorization_endpoint, state=state, code_verifier=verifier,
                                             **extra)
    return url


def build_scopes(disc: Discovery, writes: list[str], *, ehr_launch: bool, tier: str = "full",
                 configured: str = "") -> list[str]:
    """The scopes of one request tier (`service.smart.scopes`) with create rights on `writes`
    (`planned_writes`); `configured` (ONCO_EXERCISE_SMART_SCOPES) is the list of the `configured` tier."""
    if tier == CONFIGURED:
        return configured.replace(",", " ").split()
    return requested_scopes(ehr_launch=ehr_launch, v1=disc.v1_only, refresh=disc.refresh_scope, tier=tier,
                            write_types=writes)
