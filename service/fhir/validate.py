"""Validate FHIR R4 JSON: official R4 JSON Schema, fhir.resources R4B models, and our profiles/ constraints.

Three layers because each catches what the others miss: the schema knows every element name and primitive
format; the model layer catches type problems the schema's loose unions let through; our profiles (selected
by `meta.profile`) add cardinality, fixed/pattern values, required bindings and FHIRPath invariants (the PA IG's
pa-sr-1, pa-goal-1, pa-taskrm-1 and ours). The service validates everything it writes, so one resource must
cost a few milliseconds: the schema, models, profiles and FHIRPath expressions are compiled once, lazily.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Literal

from service import canonical
from service.paths import PROFILES_DIR

log = logging.getLogger(__name__)

Severity = Literal["error", "warning", "information"]
SCHEMA_PATH = Path(__file__).with_name("r4-schema") / "fhir.schema.json.gz"
IG_DIR = PROFILES_DIR / "ig"  # the PA IG and US Core layers our profiles derive from (profiles/build.py)


@dataclass(frozen=True)
class Issue:
    """One problem: `path` is FHIRPath-like (`ServiceRequest.category[0].coding[0].code`)."""

    severity: Severity
    path: str
    message: str
    source: str = ""  # "schema", "model", "bundle" or "<profile id>[:<constraint key>]"

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


class ValidationFailed(Exception):
    """Raised by assert_valid; `issues` holds every problem found (errors and the rest)."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        errors = [i for i in issues if i.severity == "error"]
        shown = "; ".join(str(i) for i in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} validation error(s): {shown}{more}")


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


def validate_resource(resource: Any) -> list[Issue]:
    """All issues of one resource (a Bundle is validated entry by entry, see validate_bundle)."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return [Issue("error", "(root)", "not a FHIR resource: a JSON object with a resourceType is expected",
                      "schema")]
    if resource["resourceType"] == "Bundle":
        return validate_bundle(resource)
    return _validate_one(resource)


def validate_bundle(bundle: dict[str, Any]) -> list[Issue]:
    """The Bundle itself, then each entry's resource with paths prefixed `Bundle.entry[i].resource`."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return [Issue("error", "(root)", "not a Bundle", "schema")]
    issues = _schema_issues(bundle)
    entries = bundle.get("entry") if isinstance(bundle.get("entry"), list) else []
    shell = {**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                                 for e in entries]} if entries else bundle
    issues += _dedupe(issues, _model_issues(shell))
    full_urls: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        fu = entry.get("fullUrl")
        if isinstance(fu, str):
            if fu in full_urls:
                issues.append(Issue("error", f"Bundle.entry[{i}].fullUrl", f"duplicate fullUrl {fu}", "bundle"))
            full_urls.add(fu)
        if bundle.get("type") in ("transaction", "batch") and "request" not in entry:
            issues.append(Issue("error", f"Bundle.entry[{i}].request",
                                f"a {bundle.get('type')} entry needs a request", "bundle"))
        res = entry.get("resource")
        if isinstance(res, dict):
            issues += [_prefixed(x, f"Bundle.entry[{i}].resource", res.get("resourceType"))
                       for x in validate_resource(res)]
    for path, ref in _references(bundle, "Bundle"):
        if ref.startswith("urn:uuid:") and ref not in full_urls:
            issues.append(Issue("error", path, f"reference {ref} does not resolve within the Bundle", "bundle"))
    return issues


def errors(issues: Iterable[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "error"]


def assert_valid(resource_or_bundle: dict[str, Any]) -> None:
    """Raise ValidationFailed when there is any error (warnings and information pass)."""
    issues = validate_resource(resource_or_bundle)
    if errors(issues):
        raise ValidationFailed(issues)


def warm_up() -> None:
    """Load and compile everything now (start-up), so the first request pays nothing."""
    _schema_defs()
    _validator_for("ServiceRequest")
    _profiles()
    _core_invariants()
    _model_class("ServiceRequest")


@asynccontextmanager
async def warm_up_lifespan(app: Any) -> AsyncIterator[None]:
    """A lifespan part (`app.state.lifespan_parts.append(warm_up_lifespan)`): compiles the validator in a
    worker thread during start-up so the first signing does not pay ~0.5 s."""
    import asyncio

    await asyncio.to_thread(warm_up)
    yield


def known_profiles() -> dict[str, str]:
    """Canonical URL -> resource type of the profiles this validator enforces."""
    return {url: p.type for url, p in _profiles().items()}


def binding_checks_available() -> bool:
    """False while service.terminology cannot be imported: bindings to our value sets are then skipped."""
    return _terminology() is not None


# ---------------------------------------------------------------------------------------------------------
# Layer 1: official R4 JSON Schema
# ---------------------------------------------------------------------------------------------------------

_lock = threading.Lock()


@lru_cache(maxsize=1)
def _schema_defs() -> dict[str, Any]:
    with gzip.open(SCHEMA_PATH, "rt", encoding="utf-8") as fh:
        schema = json.load(fh)
    defs = schema["definitions"]
    # Resources nested in a resource (Bundle.entry.resource, contained) are validated one by one by this
    # module, each against its own definition: cheaper than a 146-way oneOf and gives precise paths.
    defs["ResourceList"] = {"type": "object", "required": ["resourceType"]}
    # Erratum of the published schema (see r4-schema/ORIGIN.md): the FHIRVersion enums stop at 4.0.0.
    for definition in defs.values():
        for prop in definition.get("properties", {}).values():
            if "4.0.0" in prop.get("enum", ()) and "4.0.1" not in prop["enum"]:
                prop["enum"] = [*prop["enum"], "4.0.1"]
    return defs


@lru_cache(maxsize=None)
def _validator_for(resource_type: str):  # -> jsonschema.Draft6Validator | None
    import jsonschema

    defs = _schema_defs()
    if resource_type not in defs or "resourceType" not in defs[resource_type].get("properties", {}):
        return None
    with _lock:
        return jsonschema.Draft6Validator({"definitions": defs, "$ref": f"#/definitions/{resource_type}"})


def _schema_issues(resource: dict[str, Any]) -> list[Issue]:
    rt = resource["resourceType"]
    validator = _validator_for(rt)
    if validator is None:
        return [Issue("error", "resourceType", f"unknown FHIR R4 resource type {rt!r}", "schema")]
    issues = []
    for err in validator.iter_errors(resource):
        path = _join(rt, err.absolute_path)
        message = err.message
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = set(err.schema.get("properties", {}))
            for extra in sorted(k for k in err.instance if k not in known):
                issues.append(Issue("error", f"{path}.{extra}", f"unknown element {extra!r}", "schema"))
            continue
        if err.validator == "required":
            m = re.match(r"'([^']+)' is a required property", message)
            if m:
                issues.append(Issue("error", f"{path}.{m.group(1)}", f"missing required element {m.group(1)!r}",
                                    "schema"))
                continue
        if err.validator == "enum":
            message = f"{err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
        issues.append(Issue("error", path, _short(message), "schema"))
    return issues


# ---------------------------------------------------------------------------------------------------------
# Layer 2: fhir.resources R4B models
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _model_class(resource_type: str):
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None


def _model_issues(resource: dict[str, Any]) -> list[Issue]:
    from pydantic import ValidationError

    rt = resource["resourceType"]
    cls = _model_class(rt)
    if cls is None:
        return []
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        return [Issue("error", _join(rt, [p for p in e["loc"] if isinstance(p, (int, str))]), _short(e["msg"]),
                      "model") for e in exc.errors()]
    except Exception as exc:  # the model library raising something else is a finding, not a crash
        return [Issue("error", rt, _short(f"R4B model rejected the resource: {exc}"), "model")]
    return []


# ---------------------------------------------------------------------------------------------------------
# Layer 3: our profiles (StructureDefinition differentials)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Element:
    id: str
    segments: list[tuple[str, str | None]]  # (name, slice name)
    definition: dict[str, Any]
    constraints: list[tuple[dict[str, Any], Callable[[Any], list[Any]]]]
    undecidable: bool = False  # a slice discriminated by profile/type: membership is not checked


@dataclass(eq=False)
class _Profile:
    id: str
    url: str
    type: str
    elements: list[_Element]
    by_id: dict[str, _Element]
    base: str | None = None


@lru_cache(maxsize=1)
def _profiles() -> dict[str, _Profile]:
    import fhirpathpy
    from fhirpathpy.models import models

    out: dict[str, _Profile] = {}
    files = sorted(PROFILES_DIR.glob("StructureDefinition-*.json")) + sorted(IG_DIR.glob("StructureDefinition-*.json"))
    for f in files:
        sd = json.loads(f.read_text(encoding="utf-8"))
        elements = []
        for d in sd.get("differential", {}).get("element", []):
            segs = []
            for seg in d["id"].split(".")[1:]:
                name, _, sl = seg.partition(":")
                segs.append((name, sl or None))
            compiled = [(c, _compile(c["expression"], fhirpathpy, models["r4"]))
                        for c in d.get("constraint", []) if c.get("expression")]
            elements.append(_Element(d["id"], segs, d, compiled))
        out[sd["url"]] = _Profile(sd["id"], sd["url"], sd["type"], elements, {e.id: e for e in elements},
                                  sd.get("baseDefinition"))
    for prof in out.values():  # slices whose membership needs resolve() or a type test cannot be decided here
        for el in prof.elements:
            base = prof.by_id.get(el.id.rsplit(":", 1)[0]) if ":" in el.id.rsplit(".", 1)[-1] else None
            kinds = {d.get("type") for d in (base.definition.get("slicing", {}).get("discriminator", [])
                                             if base else [])}
            el.undecidable = bool(kinds & {"profile", "type"})
        for el in prof.elements:  # ... nor the rules inside such a slice
            el.undecidable = el.undecidable or any(o.undecidable and el.id.startswith(o.id + ".")
                                                   for o in prof.elements)
    return out


def _chain(url: str) -> list[_Profile]:
    """The profile and the profiles it derives from (ours -> PA IG -> US Core), as far as they are known."""
    out: list[_Profile] = []
    prof = _profiles().get(url)
    while prof is not None and prof not in out:
        out.append(prof)
        prof = _profiles().get(prof.base or "")
    return out


_compiled: dict[str, Callable[[Any], list[Any]]] = {}


def _compile(expression: str, fhirpathpy: Any, model: Any) -> Callable[[Any], list[Any]]:
    if expression not in _compiled:
        _compiled[expression] = fhirpathpy.compile(expression, model)
    return _compiled[expression]


@lru_cache(maxsize=1)
def _local_valuesets() -> dict[str, set[tuple[str, str]]]:
    """Small PA IG / core value sets copied into profiles/valuesets/ so validation works offline."""
    out: dict[str, set[tuple[str, str]]] = {}
    for f in sorted((PROFILES_DIR / "valuesets").glob("ValueSet-*.json")):
        vs = json.loads(f.read_text(encoding="utf-8"))
        codes = {(inc.get("system", ""), c["code"]) for inc in vs.get("compose", {}).get("include", [])
                 for c in inc.get("concept", [])}
        out[vs["url"]] = codes
    return out


_terminology_state: dict[str, Any] = {}


def _terminology():  # -> Terminology | None
    if "t" not in _terminology_state:
        try:
            from service.terminology import get_terminology

            _terminology_state["t"] = get_terminology()
        except Exception as exc:  # noqa: BLE001 - missing or half-written terminology must not stop validation
            log.warning("terminology unavailable (%s): bindings to our value sets are not checked", type(exc).__name__)
            _terminology_state["t"] = None
    return _terminology_state["t"]


def _in_valueset(url: str, system: str | None, code: str | None) -> bool | None:
    """True/False when the value set is known here, None when it cannot be checked."""
    if code is None:
        return False
    base = url.split("|", 1)[0]
    local = _local_valuesets().get(base)
    if local is not None:
        return any(c == code and (system is None or s == system) for s, c in local)
    if base.startswith(canonical.BASE):
        term = _terminology()
        if term is None:
            return None
        try:
            if not term.in_valueset(base, system, code):
                return False
            if system and system.startswith(canonical.BASE):
                # Our CodeSystems are complete: a value set including all of one must not admit unknown codes.
                known = term.code_system_codes(system)
                return not known or code in known
            return True
        except Exception:  # noqa: BLE001
            return None
    return None


def _profile_issues(resource: dict[str, Any]) -> list[Issue]:
    profiles = _profiles()
    claimed = resource.get("meta", {}).get("profile", []) if isinstance(resource.get("meta"), dict) else []
    issues: list[Issue] = []
    rt = resource["resourceType"]
    seen: set[str] = set()
    for url in claimed if isinstance(claimed, list) else []:
        prof = profiles.get(url.split("|", 1)[0]) if isinstance(url, str) else None
        if prof is None:
            continue
        if prof.type != rt:
            issues.append(Issue("error", f"{rt}.meta.profile", f"profile {prof.id} is for {prof.type}, not {rt}",
                                prof.id))
            continue
        for layer in _chain(prof.url):  # a profile's rules include its base profiles' rules
            if layer.url in seen:
                continue
            seen.add(layer.url)
            for el in layer.elements:
                issues += _check_element(resource, rt, layer, el)
    return issues


def _check_element(resource: dict[str, Any], rt: str, prof: _Profile, el: _Element) -> list[Issue]:
    d = el.definition
    issues: list[Issue] = []
    if el.undecidable:
        return issues
    if not el.segments:  # the resource itself: invariants only
        for c, fn in el.constraints:
            if not _holds(fn, resource, resource):
                issues.append(Issue(c.get("severity", "error"), rt, f"{c['key']}: {c.get('human', '')}",
                                    f"{prof.id}:{c['key']}"))
        return issues
    parents = _resolve(resource, rt, prof, el.segments[:-1], el.id.rsplit(".", 1)[0])
    name, slice_name = el.segments[-1]
    card_min, card_max = d.get("min"), d.get("max")
    label = f"slice {slice_name!r} of {name}" if slice_name else name
    for ppath, parent in parents:
        items = _children(ppath, parent, name)
        if slice_name:
            items = [(p, v) for p, v in items if _member(d, v)]
        if card_min and len(items) < card_min:
            if slice_name:
                msg = f"{label}: expected at least {card_min}, found {len(items)} {_describe(d)}".rstrip()
            elif card_min == 1:
                msg = f"missing required element {name!r}"
            else:
                msg = f"{name!r}: expected at least {card_min}, found {len(items)}"
            issues.append(Issue("error", f"{ppath}.{name}", msg, prof.id))
        if card_max not in (None, "*") and len(items) > int(card_max):
            where = items[int(card_max)][0] if int(card_max) > 0 else items[0][0]
            msg = (f"{name!r} is not allowed" if card_max == "0"
                   else f"{label}: at most {card_max} allowed, found {len(items)}")
            issues.append(Issue("error", where, msg, prof.id))
        for path, value in items:
            issues += _check_value(path, value, name, d, prof)
            for c, fn in el.constraints:
                if not _holds(fn, value, resource):
                    issues.append(Issue(c.get("severity", "error"), path, f"{c['key']}: {c.get('human', '')}",
                                        f"{prof.id}:{c['key']}"))
    return issues


def _check_value(path: str, value: Any, name: str, d: dict[str, Any], prof: _Profile) -> list[Issue]:
    issues: list[Issue] = []
    for key, expected in d.items():
        if key.startswith("fixed") and value != expected:
            issues.append(Issue("error", path, f"must be exactly {json.dumps(expected)} (found {json.dumps(value)})",
                                prof.id))
        elif key.startswith("pattern") and not d.get("sliceName") and not matches_pattern(expected, value):
            issues.append(Issue("error", path, f"must match pattern {json.dumps(expected)}", prof.id))
    types = d.get("type") or []
    if name.endswith("[x]") and types:
        suffix = path.rsplit(".", 1)[-1].split("[")[0][len(name) - 3:]
        allowed = [t["code"][:1].upper() + t["code"][1:] for t in types]
        if suffix not in allowed:
            issues.append(Issue("error", path, f"type {suffix} not allowed here (allowed: {', '.join(allowed)})",
                                prof.id))
    targets = [tp for t in types if t.get("code") == "Reference" for tp in t.get("targetProfile", [])]
    if targets and isinstance(value, dict) and isinstance(value.get("reference"), str):
        ref_type = _reference_type(value["reference"])
        allowed_types = {_profile_type(tp) for tp in targets} - {None}
        if ref_type and allowed_types and ref_type not in allowed_types:
            issues.append(Issue("error", f"{path}.reference",
                                f"must reference {' or '.join(sorted(allowed_types))}, not {ref_type}", prof.id))
    if isinstance(value, dict) and not any("not allowed here" in i.message for i in issues):
        for url in (u for t in types for u in t.get("profile", []) if t.get("code") != "Extension"):
            issues += _datatype_issues(path, value, url)
    binding = d.get("binding")
    if binding and binding.get("strength") == "required" and binding.get("valueSet"):
        issues += _check_binding(path, value, binding["valueSet"], prof)
    return issues


def _datatype_issues(path: str, value: Any, url: str) -> list[Issue]:
    """A data type profile (e.g. the PA IG's reference-rest) applied to one value at `path`."""
    issues: list[Issue] = []
    for layer in _chain(url):
        for el in layer.elements:
            issues += _check_element(value, path, layer, el)
    return issues


def _check_binding(path: str, value: Any, vs: str, prof: _Profile) -> list[Issue]:
    vs_name = vs.split("|", 1)[0].rsplit("/", 1)[-1]
    if isinstance(value, str):
        ok = _in_valueset(vs, None, value)
        return [] if ok is not False else [Issue("error", path, f"code {value!r} is not in value set {vs_name}",
                                                 prof.id)]
    if not isinstance(value, dict):
        return []
    codings = value.get("coding") if "coding" in value or "text" in value else [value]
    codings = codings if isinstance(codings, list) else []
    results = [_in_valueset(vs, c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)]
    if any(r is True for r in results) or (results and all(r is None for r in results)):
        return []
    if not codings:
        return [Issue("error", path, f"no coding: a code from value set {vs_name} is required", prof.id)]
    bad = [i for i, r in enumerate(results) if r is False]
    at = f"{path}.coding[{bad[0]}].code" if "coding" in value and len(bad) == 1 else (
        f"{path}.code" if "coding" not in value else path)
    shown = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings if isinstance(c, dict))
    return [Issue("error", at, f"{shown} is not in required value set {vs_name}", prof.id)]


# --- navigation ------------------------------------------------------------------------------------------


def _resolve(resource: dict[str, Any], rt: str, prof: _Profile, segments: list[tuple[str, str | None]],
             element_id: str) -> list[tuple[str, Any]]:
    nodes: list[tuple[str, Any]] = [(rt, resource)]
    prefix = rt
    for name, sl in segments:
        prefix += f".{name}" + (f":{sl}" if sl else "")
        nxt: list[tuple[str, Any]] = []
        for p, v in nodes:
            nxt += _children(p, v, name)
        if sl and prefix in prof.by_id:
            nxt = [(p, v) for p, v in nxt if _member(prof.by_id[prefix].definition, v)]
        nodes = nxt
        if not nodes:
            break
    return nodes


def _children(path: str, node: Any, name: str) -> list[tuple[str, Any]]:
    if not isinstance(node, dict):
        return []
    if name.endswith("[x]"):
        base = name[:-3]
        keys = [k for k in node if k.startswith(base) and len(k) > len(base) and k[len(base)].isupper()]
    else:
        keys = [name] if name in node else []
    out: list[tuple[str, Any]] = []
    for k in keys:
        v = node[k]
        if isinstance(v, list):
            out += [(f"{path}.{k}[{i}]", item) for i, item in enumerate(v)]
        elif v is not None:
            out.append((f"{path}.{k}", v))
    return out


def _member(d: dict[str, Any], value: Any) -> bool:
    """Slice membership: an extension's url, the slice's pattern (discriminator type pattern), else its value set
    binding."""
    ext = [u for t in d.get("type") or [] if t.get("code") == "Extension" for u in t.get("profile", [])]
    if ext:
        return isinstance(value, dict) and value.get("url") in ext
    for key, pattern in d.items():
        if key.startswith("pattern") or key.startswith("fixed"):
            return matches_pattern(pattern, value)
    binding = d.get("binding")
    if binding and binding.get("valueSet") and isinstance(value, dict):
        codings = value.get("coding") if isinstance(value.get("coding"), list) else [value]
        return any(_in_valueset(binding["valueSet"], c.get("system"), c.get("code")) is not False
                   for c in codings if isinstance(c, dict))
    return True


def matches_pattern(pattern: Any, value: Any) -> bool:
    """FHIR pattern[x] semantics: every element the pattern has is in the value (lists: each pattern item
    matches some item of the value); what the pattern leaves out is free."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(matches_pattern(v, value.get(k)) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(matches_pattern(p, v) for v in value) for p in pattern)
    return pattern == value


def _holds(fn: Callable[..., list[Any]], value: Any, resource: dict[str, Any]) -> bool:
    try:
        result = fn(value, {"resource": resource, "rootResource": resource})
    except Exception:  # noqa: BLE001 - an expression that cannot evaluate on this data does not hold
        return False
    return result == [True]


def _fails(fn: Callable[..., list[Any]], value: Any, resource: dict[str, Any]) -> bool:
    """A core invariant fails only when it evaluates to false (empty: nothing to check, as in the spec's
    validators); an expression that cannot run here is not reported."""
    try:
        return fn(value, {"resource": resource, "rootResource": resource}) == [False]
    except Exception:  # noqa: BLE001
        return False


_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def _reference_type(reference: str) -> str | None:
    if reference.startswith(("urn:", "#")):
        return None
    m = _REF.search(reference)
    return m.group(1) if m else None


def _profile_type(url: str) -> str | None:
    if url.startswith("http://hl7.org/fhir/StructureDefinition/"):
        return url.rsplit("/", 1)[-1]
    prof = _profiles().get(url)
    return prof.type if prof else _profile_types().get(url)


@lru_cache(maxsize=1)
def _profile_types() -> dict[str, str]:
    """Resource type of every profile the IG names (US Core, PA IG), written by profiles/build.py."""
    path = IG_DIR / "profile-types.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _references(node: Any, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield f"{path}.reference", ref
        for k, v in node.items():
            if k != "reference":
                yield from _references(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _references(v, f"{path}[{i}]")


# ---------------------------------------------------------------------------------------------------------
# Orchestration and small helpers
# ---------------------------------------------------------------------------------------------------------


def _validate_one(resource: dict[str, Any]) -> list[Issue]:
    issues = _schema_issues(resource)
    issues += _dedupe(issues, _model_issues(resource))
    if not errors(issues):  # invariants assume a well-formed resource
        issues += _core_invariant_issues(resource)
    try:
        # one report per problem: a profile finding at a path the schema/model already flagged adds nothing
        flagged = {i.path for i in issues} - {resource["resourceType"]}
        issues += [i for i in _profile_issues(resource) if i.path not in flagged]
    except Exception as exc:  # noqa: BLE001 - odd shapes (already reported by the schema) must not crash
        if not errors(issues):
            issues.append(Issue("error", resource["resourceType"], f"profile check failed: {exc}", "profile"))
    text = resource.get("text")
    if isinstance(text, dict) and isinstance(text.get("div"), str):
        issues += _narrative_issues(text["div"], f"{resource['resourceType']}.text.div")
    contained = resource.get("contained")
    if isinstance(contained, list):
        for i, c in enumerate(contained):
            if isinstance(c, dict):
                issues += [_prefixed(x, f"{resource['resourceType']}.contained[{i}]", c.get("resourceType"))
                           for x in validate_resource(c)]
    return issues


# ---------------------------------------------------------------------------------------------------------
# Layer 4: FHIR R4 core invariants (tim-4, per-1, Task inv-1 ...) on every element of their type
# ---------------------------------------------------------------------------------------------------------

CORE_INVARIANTS_PATH = Path(__file__).with_name("r4-invariants.json")
_Check = tuple[str, str, Callable[[Any], list[Any]]]


@lru_cache(maxsize=1)
def _core_invariants() -> dict[str, list[tuple[list[str], list[_Check]]]]:
    """type -> [(element path below the type, [(key, human, compiled expression)])], from r4-invariants.json
    (extracted from the R4 core StructureDefinitions by profiles/core_invariants.py)."""
    import fhirpathpy
    from fhirpathpy.models import models

    raw = json.loads(CORE_INVARIANTS_PATH.read_text(encoding="utf-8"))
    return {t: [(path.split(".")[1:], [(k, h, _compile(e, fhirpathpy, models["r4"])) for k, h, e in checks])
                for path, checks in paths.items()] for t, paths in raw.items()}


def _core_invariant_issues(resource: dict[str, Any]) -> list[Issue]:
    """Walk the resource with the JSON Schema's types; evaluate each type's invariants where it occurs."""
    table, defs = _core_invariants(), _schema_defs()
    issues: list[Issue] = []

    def visit(node: dict[str, Any], type_name: str, path: str) -> None:
        for segs, checks in table.get(type_name, ()):
            targets = [(path, node)]
            for seg in segs:
                targets = [c for p, v in targets for c in _children(p, v, seg)]
            for p, v in targets:
                for key, human, fn in checks:
                    if _fails(fn, v, resource):
                        issues.append(Issue("error", p, f"{key}: {human}", f"core:{key}"))
        props = defs.get(type_name, {}).get("properties", {})
        for name, value in node.items():
            prop = props.get(name)
            if prop is None or name in ("contained", "resource"):
                continue  # nested resources are validated on their own
            child = prop.get("items", prop).get("$ref", "").rsplit("/", 1)[-1]
            if child not in defs or "properties" not in defs[child]:
                continue
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    visit(item, child, f"{path}.{name}" + (f"[{i}]" if isinstance(value, list) else ""))

    visit(resource, resource["resourceType"], resource["resourceType"])
    return issues


_XHTML = "{http://www.w3.org/1999/xhtml}"
_FORBIDDEN = {"script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "form", "input",
              "button", "base", "link", "meta", "head", "body", "html", "title"}


def _narrative_issues(div: str, path: str) -> list[Issue]:
    """R4 core txt-1/txt-2: well-formed XHTML div, basic formatting only, not empty."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(div)
    except ET.ParseError as exc:
        return [Issue("error", path, f"txt-1: narrative is not well-formed XHTML ({exc})", "narrative")]
    if root.tag != f"{_XHTML}div":
        return [Issue("error", path, "txt-1: narrative must be a <div> in the XHTML namespace", "narrative")]
    for node in root.iter():
        tag = node.tag.replace(_XHTML, "") if isinstance(node.tag, str) else ""
        if tag in _FORBIDDEN or any(a.lower().startswith("on") for a in node.attrib):
            return [Issue("error", path, f"txt-1: <{tag}> or event attributes are not allowed in narrative",
                          "narrative")]
    if not "".join(root.itertext()).strip() and root.find(f".//{_XHTML}img") is None:
        return [Issue("error", path, "txt-2: narrative must have some non-whitespace content", "narrative")]
    return []


def _dedupe(existing: list[Issue], new: list[Issue]) -> list[Issue]:
    seen = [i.path for i in existing]
    return [i for i in new if not any(i.path == s or i.path.startswith(s + ".") or i.path.startswith(s + "[")
                                      or s.startswith(i.path + ".") for s in seen)]


def _prefixed(issue: Issue, prefix: str, resource_type: Any) -> Issue:
    path = issue.path
    if isinstance(resource_type, str) and (path == resource_type or path.startswith(resource_type + ".")
                                           or path.startswith(resource_type + "[")):
        path = prefix + path[len(resource_type):]
    elif path == "(root)":
        path = prefix
    else:
        path = f"{prefix}.{path}"
    return Issue(issue.severity, path, issue.message, issue.source)


def _join(root: str, parts: Iterable[Any]) -> str:
    out = root
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _short(message: str, limit: int = 240) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _describe(d: dict[str, Any]) -> str:
    for key, value in d.items():
        if key.startswith("pattern") or key.startswith("fixed"):
            return f"matching {json.dumps(value)}"
    binding = d.get("binding")
    return f"from value set {binding['valueSet'].rsplit('/', 1)[-1]}" if binding else ""
