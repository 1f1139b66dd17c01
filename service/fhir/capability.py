"""What a FHIR server says it can do (its CapabilityStatement), reduced to the questions we ask of it.

Write-back picks its strategy from this: which resource types accept `create`, whether conditional create
(`If-None-Exist`) is honoured, whether `transaction` Bundles are accepted, and which search parameters
exist (a server that ignores an unknown `identifier` parameter would make search-then-create unsafe).
The SMART `oauth-uris` extension is parsed for servers too old for `.well-known/smart-configuration`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
# Subscriptions backport IG: the topics a server can notify about, listed on its Subscription resource entry
TOPIC_CANONICAL = ("http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                   "capabilitystatement-subscriptiontopic-canonical")


@dataclass(frozen=True)
class ResourceCapability:
    type: str
    interactions: frozenset[str] = frozenset()
    conditional_create: bool = False
    search_params: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Capability:
    """A parsed server CapabilityStatement (`rest` mode server)."""

    fhir_version: str | None = None
    resources: dict[str, ResourceCapability] = field(default_factory=dict)
    system_interactions: frozenset[str] = frozenset()
    oauth_uris: dict[str, str] = field(default_factory=dict)
    software: str | None = None
    subscription_topics: frozenset[str] = frozenset()

    def supports_topic(self, topic: str) -> bool:
        """The server creates topic-based (backport) Subscriptions on `topic` (a notification path)."""
        return topic in self.subscription_topics and self.can_create("Subscription")

    def supports(self, resource_type: str, interaction: str) -> bool:
        r = self.resources.get(resource_type)
        return r is not None and interaction in r.interactions

    def can_create(self, resource_type: str) -> bool:
        return self.supports(resource_type, "create")

    def can_update(self, resource_type: str) -> bool:
        return self.supports(resource_type, "update")

    def conditional_create(self, resource_type: str) -> bool:
        """True when `If-None-Exist` on the identifier is safe: conditional create and identifier search."""
        r = self.resources.get(resource_type)
        return r is not None and r.conditional_create and self.searchable_by(resource_type, "identifier")

    def searchable_by(self, resource_type: str, param: str) -> bool:
        r = self.resources.get(resource_type)
        return r is not None and "search-type" in r.interactions and param in r.search_params

    @property
    def transaction(self) -> bool:
        return "transaction" in self.system_interactions

    def to_json(self) -> dict[str, Any]:
        """A compact summary (for logs, the app's diagnostics and tests)."""
        return {
            "fhirVersion": self.fhir_version,
            "transaction": self.transaction,
            "resources": {
                t: {"interactions": sorted(r.interactions), "conditionalCreate": r.conditional_create}
                for t, r in sorted(self.resources.items())
            },
            "oauthUris": dict(self.oauth_uris),
        }


def parse_capability(statement: dict[str, Any]) -> Capability:
    """CapabilityStatement JSON -> Capability. Raises ValueError when it is not a CapabilityStatement."""
    if not isinstance(statement, dict) or statement.get("resourceType") != "CapabilityStatement":
        raise ValueError("not a CapabilityStatement")
    rests = [r for r in statement.get("rest") or [] if isinstance(r, dict)]
    rest = next((r for r in rests if r.get("mode") == "server"), rests[0] if rests else {})
    resources: dict[str, ResourceCapability] = {}
    topics: set[str] = set()
    for res in rest.get("resource") or []:
        if not isinstance(res, dict) or not isinstance(res.get("type"), str):
            continue
        interactions = frozenset(i.get("code") for i in res.get("interaction") or []
                                 if isinstance(i, dict) and isinstance(i.get("code"), str))
        params = frozenset(p.get("name") for p in res.get("searchParam") or []
                           if isinstance(p, dict) and isinstance(p.get("name"), str))
        if res["type"] == "Subscription":
            topics |= {e["valueCanonical"] for e in res.get("extension") or [] if isinstance(e, dict)
                       and e.get("url") == TOPIC_CANONICAL and isinstance(e.get("valueCanonical"), str)}
        resources[res["type"]] = ResourceCapability(
            type=res["type"], interactions=interactions,
            conditional_create=res.get("conditionalCreate") is True, search_params=params)
    system = frozenset(i.get("code") for i in rest.get("interaction") or []
                       if isinstance(i, dict) and isinstance(i.get("code"), str))
    oauth: dict[str, str] = {}
    for ext in (rest.get("security") or {}).get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == OAUTH_URIS:
            for sub in ext.get("extension") or []:
                if isinstance(sub, dict) and isinstance(sub.get("url"), str) and isinstance(sub.get("valueUri"), str):
                    oauth[sub["url"]] = sub["valueUri"]
    software = (statement.get("software") or {}).get("name") if isinstance(statement.get("software"), dict) else None
    return Capability(fhir_version=statement.get("fhirVersion"), resources=resources,
                      system_interactions=system, oauth_uris=oauth, software=software,
                      subscription_topics=frozenset(topics))
