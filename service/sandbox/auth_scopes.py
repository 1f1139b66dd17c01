"""SMART scopes (v1 and v2): parsing, narrowing, and "does this scope set allow that interaction".

v2: `(patient|user|system)/(Type|*).[c][r][u][d][s][?param=value&...]`; v1: `.read` = rs, `.write` = cud,
`.*` = cruds. A scope with a `?query` (granular scope) allows a search only when the request carries every one
of its parameters with the same value; it never allows reads by id (the server cannot check the constraint
without loading the resource) nor writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import parse_qsl

V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}
_V2_RE = re.compile(r"^c?r?u?d?s?$")
_SCOPE_RE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([A-Za-z*]+)(\?.*)?$")
CONTEXT_SCOPES = {"launch", "launch/patient", "launch/encounter", "openid", "fhirUser", "profile",
                  "offline_access", "online_access"}


@dataclass(frozen=True)
class Scope:
    context: str  # patient | user | system
    rtype: str  # a resource type or "*"
    perms: frozenset[str]  # subset of c r u d s
    query: tuple[tuple[str, str], ...] = ()

    def covers(self, rtype: str, perm: str) -> bool:
        return self.rtype in ("*", rtype) and perm in self.perms


def parse_scope(text: str) -> Scope | None:
    m = _SCOPE_RE.match(text)
    if not m:
        return None
    ctx, rtype, perm, query = m.groups()
    if perm in V1_PERMS:
        perms = V1_PERMS[perm]
    elif perm and _V2_RE.match(perm):
        perms = perm
    else:
        return None
    q = tuple(parse_qsl(query[1:], keep_blank_values=True)) if query else ()
    return Scope(ctx, rtype, frozenset(perms), q)


def parse_scopes(scope: str | Iterable[str] | None) -> list[Scope]:
    items = scope.split() if isinstance(scope, str) else list(scope or [])
    return [s for s in (parse_scope(x) for x in items) if s is not None]


def known_scope(text: str) -> bool:
    return text in CONTEXT_SCOPES or parse_scope(text) is not None


def _render(ctx: str, rtype: str, perms: str, v1: bool) -> str:
    if v1:
        return f"{ctx}/{rtype}.read"
    return f"{ctx}/{rtype}.{''.join(p for p in 'cruds' if p in perms)}"


def narrow_scope(requested: str, *, read_only_types: Iterable[str] = (), allow_system: bool = False) -> str:
    """The scope the server grants for a user launch: known scopes only, `system/` dropped (no user there),
    and write permissions removed for `read_only_types` (a sandbox option to exercise degraded write-back).
    A `*` resource scope with write permissions becomes read-only when any type is read-only (a wildcard
    cannot express "all but one")."""
    ro = set(read_only_types)
    out: list[str] = []
    for item in requested.split():
        if item in CONTEXT_SCOPES:
            out.append(item)
            continue
        s = parse_scope(item)
        if s is None or (s.context == "system" and not allow_system):
            continue
        if ro and (s.rtype in ro or s.rtype == "*") and s.perms & set("cud"):
            keep = "".join(p for p in "rs" if p in s.perms)
            if not keep:
                continue
            v1 = item.split("?", 1)[0].rsplit(".", 1)[1] in V1_PERMS
            rendered = _render(s.context, s.rtype, keep, v1)
            if "?" in item:
                rendered += "?" + item.split("?", 1)[1]
            out.append(rendered)
            continue
        out.append(item)
    seen: set[str] = set()
    return " ".join(x for x in out if not (x in seen or seen.add(x)))


def allows(scopes: list[Scope], rtype: str, perm: str, params: list[tuple[str, str]] | None = None,
           contexts: Iterable[str] = ("patient", "user", "system")) -> bool:
    """True when some scope of one of `contexts` grants `perm` (one letter of cruds) on `rtype`."""
    ctxs = set(contexts)
    have = set(params or [])
    for s in scopes:
        if s.context not in ctxs or not s.covers(rtype, perm):
            continue
        if s.query:
            if perm != "s" or not all(q in have for q in s.query):
                continue
        return True
    return False
