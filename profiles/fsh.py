"""A small reader for the subset of FHIR Shorthand (FSH) that profiles use: Profile, Invariant, Alias, ValueSet.

Why our own: SUSHI needs the FHIR package registry (US Core, SDOH, SDC ...) to compile, which is not reachable
here. The PA IG's profiles only use a handful of rule kinds, so reading them directly keeps our profiles tied to
the IG *as published*: cardinality, `=` (pattern), `from` (binding), `only` (types and reference targets),
`obeys` (invariants), `contains` (slices), and the caret rules that change validation (slicing, type profiles,
fixed values). Documentation carets (^short, ^comment, ^definition, ^condition, ...) and MS are kept only as flags.
Instances and RuleSets are read the same way (rules with their full paths); profiles/instances.py turns the
IG's example Instances into JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ENTITY = re.compile(r"^(Alias|Profile|Extension|Invariant|ValueSet|CodeSystem|Instance|RuleSet|Mapping|Logical|"
                    r"Resource|Parent|Id|Title|Description|Expression|Severity|XPath|InstanceOf|Usage)\s*:\s*(.*)$")
CARD = re.compile(r"^(\d*)\.\.(\d+|\*)?$")


@dataclass
class Rule:
    """One `* path ...` rule with its full path (indentation resolved) and the text after the path."""

    path: str
    text: str
    line: int
    why: str = ""  # the `// why:` comment right above the rule (our own FSH only)


@dataclass
class Entity:
    kind: str
    name: str
    fields: dict[str, str] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)


@dataclass
class FshSource:
    """Every entity read from a set of FSH files, by name, plus the aliases."""

    aliases: dict[str, str] = field(default_factory=dict)
    entities: dict[str, Entity] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind]


def read(paths: list[Path]) -> FshSource:
    """Parse FSH files (order does not matter: names are resolved after reading)."""
    src = FshSource()
    for path in paths:
        _read_one(path.read_text(encoding="utf-8"), src)
    return src


def _strip_comment(line: str) -> tuple[str, str]:
    """(code, comment): `//` outside double quotes starts a comment."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "/" and not quoted and line[i:i + 2] == "//" and (i == 0 or line[i - 1] != ":"):
            return line[:i].rstrip(), line[i + 2:].strip()
    return line.rstrip(), ""


def _read_one(text: str, src: FshSource) -> None:
    current: Entity | None = None
    stack: list[tuple[int, str]] = []  # (indent, path) of the enclosing rules
    why: list[str] = []
    in_block_comment = False
    for n, raw in enumerate(text.splitlines(), 1):
        if in_block_comment:
            in_block_comment = "*/" not in raw
            continue
        if raw.lstrip().startswith("/*"):
            in_block_comment = "*/" not in raw
            continue
        line, comment = _strip_comment(raw)
        if not line.strip():
            if comment.lower().startswith("why:"):
                why.append(comment[4:].strip())
            elif comment and why:
                why.append(comment)
            continue
        m = ENTITY.match(line)
        if m:
            key, value = m.group(1), m.group(2).strip()
            if key == "Alias":
                name, _, url = value.partition("=")
                src.aliases[name.strip()] = url.strip()
            elif key in ("Profile", "Invariant", "ValueSet", "CodeSystem", "Extension", "Instance", "RuleSet",
                         "Mapping", "Logical", "Resource"):
                current = Entity(key, value)
                src.entities[value] = current
                stack = []
            elif current is not None:
                current.fields[key] = value.strip('"')
            continue
        stripped = line.lstrip()
        if not stripped.startswith("*") or current is None:
            if current is not None and current.rules and not stripped.startswith("*"):
                current.rules[-1].text += " " + stripped  # a rule continued on the next line (contains ... and)
            continue
        indent = len(line) - len(stripped)
        body = stripped[1:].strip()
        path, rest = _split_path(body)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else "."
        if path == ".":
            full = parent if body.startswith(("^", "obeys ")) else "."  # a nested caret/obeys applies to its parent
        else:
            # a soft index `[+]` of the enclosing rule was taken by that rule: its children use that item (`[=]`)
            full = path if parent == "." else f"{parent.replace('[+]', '[=]')}.{path}"
        stack.append((indent, full))
        current.rules.append(Rule(full, rest, n, " ".join(why)))
        why = []


def _split_path(body: str) -> tuple[str, str]:
    """`category[PA] = X` -> ("category[PA]", "= X"); `^slicing.rules = #open` -> (".", "^slicing...")."""
    if body.startswith("^") or body.startswith(("obeys ", "insert ")):
        return ".", body
    head, *rest = body.split(None, 1)  # any white space (the IG's FSH has tabs)
    return head, rest[0].strip() if rest else ""


def cardinality(token: str) -> tuple[int | None, str | None] | None:
    """`1..1` -> (1, "1"); `..0` -> (None, "0"); `1..` -> (1, None); None when not a cardinality."""
    m = CARD.match(token)
    if not m:
        return None
    return (int(m.group(1)) if m.group(1) else None, m.group(2))
