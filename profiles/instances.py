"""The PA IG's own examples (FSH `Instance`s) as FHIR JSON: outside test data for our validator and profiles.

    python -m profiles.instances [NAME...]   # print the examples (all of the profiles we derive from)

SUSHI cannot run here (see profiles/fsh.py), so this exports the subset of FSH instance rules the IG's examples
of its CarePlan, Goal, ServiceRequest and Task profiles use, the way SUSHI does:
- `* path = value` with codes (`$sct#123 "display"`), quantities (`100 'min/wk' "unit"`), `Reference(X) "shown"`
  (X an instance name -> `Type/X`, or a literal reference), strings, dates, numbers, booleans;
- nested (indented) rules, soft indexes `[+]`/`[=]`, named slices (`category[PA]`, `extension[pertainsToGoal]`,
  `output[PerformedActivityReference]`), `insert RuleSet(args)` with `{param}` substitution and `[[...]]` args;
- the values SUSHI adds on its own: `meta.profile` = the InstanceOf profile, `id` = the instance name, and the
  fixed/pattern values of required elements and slices of the profile and its parents (e.g. the PhysicalActivity
  category, US Core's assess-plan category, the Task's `intent = order`).
Anything else (caret rules, contained resources, other resource types) is not needed for these examples.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from functools import lru_cache
from typing import Any

from profiles import build, fsh
from service.fhir.validate import matches_pattern

# the IG profiles our profiles derive from: their examples are the ones we can express and check
EXAMPLE_PROFILES = ("PACarePlan", "PAGoal", "PAServiceRequest", "PATaskForReferralManagement")
PRIMITIVE_NUMBERS = {"decimal", "integer", "positiveInt", "unsignedInt"}
UCUM = "http://unitsofmeasure.org"


class FshInstanceError(ValueError):
    """A rule this exporter cannot express (the message names the instance and the rule)."""


@lru_cache(maxsize=1)
def _context() -> tuple[fsh.FshSource, build.Names, dict[str, dict[str, Any]]]:
    layers = build.sources()
    names = build.Names(layers)
    profiles = {sd["url"]: sd for sd in build.build().values() if isinstance(sd, dict) and "url" in sd}
    return layers["ig"], names, profiles


def example_names() -> list[str]:
    """The IG's instances of the profiles our profiles derive from, in source order."""
    src, _, _ = _context()
    return [e.name for e in src.of_kind("Instance") if e.fields.get("InstanceOf") in EXAMPLE_PROFILES]


def _instance(name: str) -> tuple[fsh.Entity, str | None, str]:
    """(the Instance, the URL of its InstanceOf profile or None for a core type, its resource type)."""
    src, names, _ = _context()
    entity = src.entities.get(name)
    if entity is None or entity.kind != "Instance":
        raise FshInstanceError(f"no Instance {name!r} in the IG's FSH")
    of = entity.fields["InstanceOf"]
    url, rtype = names.profiles.get(of, (None, of))
    return entity, url, rtype


def export(name: str) -> dict[str, Any]:
    """One IG instance as FHIR JSON (what SUSHI would write to the IG's package)."""
    src, names, profiles = _context()
    entity, url, rtype = _instance(name)
    chain = _chain(url, profiles)
    resource: dict[str, Any] = {"resourceType": rtype, "id": name}
    if url:
        resource["meta"] = {"profile": [url]}
    writer = _Writer(name, rtype, resource, chain, names)
    for path, value in _expand(entity.rules, src):
        writer.rule(path, value)
    writer.implied()
    return _ordered(resource)


def examples() -> dict[str, dict[str, Any]]:
    return {n: export(n) for n in example_names()}


# ---------------------------------------------------------------------------------------------------------
# Rules: RuleSet expansion
# ---------------------------------------------------------------------------------------------------------


def _expand(rules: list[fsh.Rule], src: fsh.FshSource, depth: int = 0) -> list[tuple[str, str | None]]:
    """(path, value text or None for a path-only rule) with every `insert` replaced by its RuleSet's rules."""
    if depth > 10:
        raise FshInstanceError("RuleSets insert each other too deeply")
    out: list[tuple[str, str | None]] = []
    for rule in rules:
        text = rule.text.strip()
        if text.startswith("insert "):
            name, args = _call(text[len("insert "):])
            ruleset = next((e for e in src.of_kind("RuleSet") if e.name.split("(", 1)[0].strip() == name), None)
            if ruleset is None:
                raise FshInstanceError(f"unknown RuleSet {name!r}")
            params = _params(ruleset.name)
            if len(params) != len(args):
                raise FshInstanceError(f"RuleSet {name} takes {len(params)} arguments, got {len(args)}")
            bound = [fsh.Rule(_bind(r.path, params, args), _bind(r.text, params, args), r.line)
                     for r in ruleset.rules]
            prefix = "" if rule.path == "." else rule.path.replace("[+]", "[=]") + "."
            out += [(p if p == "." else prefix + p, v) for p, v in _expand(bound, src, depth + 1)]
        elif text.startswith("^") or text.startswith("obeys "):
            continue
        elif text.startswith("= "):
            out.append((rule.path, text[2:].strip()))
        elif not text:
            out.append((rule.path, None))
        else:
            raise FshInstanceError(f"rule not understood: * {rule.path} {text}")
    return out


def _call(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("(")
    body = rest[:rest.rindex(")")] if ")" in rest else rest
    args, depth, quoted, cur = [], 0, False, ""
    i = 0
    while i < len(body):
        ch = body[i]
        if body.startswith("[[", i) and not quoted:
            depth += 1
            cur += "[["
            i += 2
            continue
        if body.startswith("]]", i) and not quoted and depth:
            depth -= 1
            cur += "]]"
            i += 2
            continue
        if ch == '"' and not depth:
            quoted = not quoted
        if ch == "," and not depth and not quoted:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    if cur.strip() or args:
        args.append(cur.strip())
    return name.strip(), [a[2:-2] if a.startswith("[[") and a.endswith("]]") else a for a in args]


def _params(header: str) -> list[str]:
    inner = header.partition("(")[2].rstrip(") ")
    return [p.strip() for p in inner.split(",")] if inner.strip() else []


def _bind(text: str, params: list[str], args: list[str]) -> str:
    for p, a in zip(params, args):
        text = text.replace("{" + p + "}", a)
    return text


# ---------------------------------------------------------------------------------------------------------
# Writing values at paths
# ---------------------------------------------------------------------------------------------------------


def _chain(url: str | None, profiles: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while url in profiles and profiles[url] not in out:
        out.append(profiles[url])
        url = profiles[url].get("baseDefinition")
    return out


class _Writer:
    """Applies rules to one resource, keeping SUSHI's soft-index state per array."""

    def __init__(self, name: str, rtype: str, resource: dict[str, Any], chain: list[dict[str, Any]],
                 names: build.Names) -> None:
        self.name, self.rtype, self.resource, self.names = name, rtype, resource, names
        self.elements = {e["id"]: e for sd in reversed(chain) for e in sd["differential"]["element"]}
        self.last: dict[str, int] = {}  # concrete array path -> index last referred to

    def rule(self, path: str, value: str | None) -> None:
        if path == ".":
            raise FshInstanceError(f"{self.name}: a value for the whole resource is not supported")
        node, key, type_path = self._walk(path)
        if value is None:
            return
        ftype = build.element_type(self.rtype, type_path) or "string"
        if isinstance(node, list):
            node[key] = self._value(value, ftype, path)
        else:
            node[key] = self._value(value, ftype, path)

    def _walk(self, path: str) -> tuple[Any, Any, str]:
        """The container and key of the element at `path`, creating what is missing (the last step is left to
        the caller, except that an array item is created so a path-only rule such as `note[+]` takes its index)."""
        segs = _segments(path)
        node: Any = self.resource
        concrete, type_path, element_id = "", [], self.rtype
        for i, (name, index) in enumerate(segs):
            type_path.append(name)
            tp = ".".join(type_path)
            last = i == len(segs) - 1
            is_array = _is_array(self.rtype, tp)
            concrete = f"{concrete}.{name}" if concrete else name
            if not is_array:
                if index not in (None, "0"):
                    raise FshInstanceError(f"{self.name}: {name} is not a list ({path})")
                element_id += f".{name}"
                if last:
                    return node, name, tp
                node = node.setdefault(name, {})
                continue
            items = node.setdefault(name, [])
            if index is not None and not index.isdigit() and index not in ("+", "="):  # a named slice
                slice_id = f"{element_id}.{name}:{index}"
                at = self._slice_item(items, slice_id)
                element_id = slice_id
            else:
                at = self._index(concrete, index, len(items))
                element_id += f".{name}"
            while len(items) <= at:
                items.append({})
            concrete = f"{concrete}[{at}]"
            if last:
                return items, at, tp
            node = items[at]
        raise FshInstanceError(f"{self.name}: empty path")

    def _index(self, concrete: str, index: str | None, size: int) -> int:
        if index == "+":
            at = self.last.get(concrete, -1) + 1
        elif index == "=":
            at = self.last.get(concrete, 0)
        elif index is None:
            at = 0
        else:
            at = int(index)
        self.last[concrete] = at
        return at

    def _slice_item(self, items: list[Any], slice_id: str) -> int:
        """The item of a named slice: the one already matching the slice, else a new one with the slice's
        defining values (an extension's url; the pattern of the slice and of its children)."""
        definition = self.elements.get(slice_id)
        if definition is None:
            raise FshInstanceError(f"{self.name}: unknown slice {slice_id}")
        template = self._slice_template(slice_id, definition)
        for i, item in enumerate(items):
            if matches_pattern(template, item):
                return i
        items.append(copy.deepcopy(template))
        return len(items) - 1

    def _slice_template(self, slice_id: str, definition: dict[str, Any]) -> dict[str, Any]:
        template: dict[str, Any] = {}
        for t in definition.get("type") or []:
            if t.get("code") == "Extension" and t.get("profile"):
                template["url"] = t["profile"][0]
        template.update(_pattern(definition) or {})
        for eid, el in self.elements.items():  # children of the slice with a pattern (e.g. output.type)
            if eid.startswith(slice_id + ".") and "." not in eid[len(slice_id) + 1:]:
                value = _pattern(el)
                if value is not None:
                    template[eid.rsplit(".", 1)[1]] = value
        return template

    def _value(self, text: str, ftype: str, path: str) -> Any:
        text = text.strip()
        if text.startswith("Reference("):
            inner, _, rest = text[len("Reference("):].partition(")")
            ref: dict[str, Any] = {"reference": self._reference(inner.strip())}
            shown = _string(rest.strip()) if rest.strip() else None
            if shown:
                ref["display"] = shown
            return ref
        if text.startswith('"'):
            return _string(text)
        m = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s+'([^']+)'(?:\s+(\".*\"))?", text)
        if m:
            q: dict[str, Any] = {"value": _number(m.group(1)), "system": UCUM, "code": m.group(2)}
            if m.group(3):
                q["unit"] = _string(m.group(3))
            return q
        m = re.fullmatch(r"(\S*)#(\"[^\"]+\"|\S+)(?:\s+(\".*\"))?", text)
        if m:
            code = m.group(2).strip('"')
            if ftype == "code":
                return code
            coding: dict[str, Any] = {"code": code}
            if m.group(1):
                coding = {"system": self.names.system(m.group(1)), **coding}
            shown = _string(m.group(3)) if m.group(3) else ""
            if shown:
                coding["display"] = shown
            return coding if ftype == "Coding" else {"coding": [coding]}
        if text in ("true", "false"):
            return text == "true"
        if ftype in PRIMITIVE_NUMBERS and re.fullmatch(r"-?\d+(\.\d+)?", text):
            return _number(text)
        if re.fullmatch(r"\d{4}(-\d{2}(-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?", text):
            return text
        raise FshInstanceError(f"{self.name}: value not understood at {path}: {text}")

    def _reference(self, target: str) -> str:
        if "/" in target or ":" in target:
            return target  # literal: "Goal/ExampleGoal", "http://example.org/fhir/Patient/1"
        try:
            entity, _, rtype = _instance(target)
        except FshInstanceError:
            raise FshInstanceError(f"{self.name}: Reference({target}) names no instance") from None
        if "resourceType" not in build._defs().get(rtype, {}).get("properties", {}):
            raise FshInstanceError(f"{self.name}: Reference({target}): the resource type of "
                                   f"{entity.fields['InstanceOf']} is not known here")
        return f"{rtype}/{target}"

    def implied(self) -> None:
        """What SUSHI assigns without a rule: fixed/pattern values of required top-level elements and required
        slices of the profile chain (core requiredness from the fhir.resources R4B models)."""
        for eid, el in self.elements.items():
            parts = eid.split(".")[1:]
            if len(parts) != 1:
                continue
            name, _, slice_name = parts[0].partition(":")
            value = _pattern(el)
            if slice_name:
                if (el.get("min") or 0) >= 1:
                    items = self.resource.setdefault(name, [])
                    self._slice_item(items, eid)
                continue
            if value is not None and name not in self.resource and (el.get("min", 0) >= 1 or
                                                                    _core_required(self.rtype, name)):
                self.resource[name] = [value] if _is_array(self.rtype, name) else value


# --- small helpers ---------------------------------------------------------------------------------------


def _segments(path: str) -> list[tuple[str, str | None]]:
    out = []
    for seg in path.split("."):
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)(?:\[([^\]]+)\])?", seg)
        if not m:
            raise FshInstanceError(f"path segment not understood: {seg!r} in {path}")
        out.append((m.group(1), m.group(2)))
    return out


def _is_array(rtype: str, type_path: str) -> bool:
    parent, _, name = type_path.rpartition(".")
    owner = build.element_type(rtype, parent) if parent else rtype
    prop = build._defs().get(owner or "", {}).get("properties", {}).get(name, {})
    return prop.get("type") == "array"


def _core_required(rtype: str, name: str) -> bool:
    from fhir.resources.R4B import get_fhir_model_class

    field = get_fhir_model_class(rtype).model_fields.get(name)
    return bool(field and (field.is_required() or (field.json_schema_extra or {}).get("element_required")))


def _pattern(el: dict[str, Any]) -> Any:
    for key, value in el.items():
        if key.startswith(("pattern", "fixed")):
            return copy.deepcopy(value)
    return None


def _string(text: str) -> str:
    if text.startswith('"""') and text.endswith('"""'):
        return text[3:-3]
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return json.loads(text) if "\\" in text else text[1:-1]
    raise FshInstanceError(f"not a string: {text}")


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


_ORDER = ("resourceType", "id", "meta", "text", "extension")


def _ordered(resource: dict[str, Any]) -> dict[str, Any]:
    head = {k: resource[k] for k in _ORDER if k in resource}
    return {**head, **{k: v for k, v in resource.items() if k not in head}}


if __name__ == "__main__":
    wanted = sys.argv[1:] or example_names()
    print(json.dumps([export(n) for n in wanted], indent=2, ensure_ascii=False))
