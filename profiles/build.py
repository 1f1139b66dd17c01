"""Build profiles/ from FSH: the PA IG's profiles as published, their US Core parents, and our additions.

    python -m profiles.build            # write profiles/ig/*.json and our StructureDefinitions
    python -m profiles.build --check    # exit 1 when a committed file differs from what the FSH gives

Three layers, each a differential whose baseDefinition is the layer below (the validator walks the chain):
- `profiles/source/onco-exercise.fsh` — our profiles: Parent is a PA IG profile; every rule carries a
  `// why:` comment (listed in docs/profiles.md), so what we add is deliberate and explained;
- the PA IG (../shared/vendor/physical-activity-ig/input/fsh, unmodified) -> `profiles/ig/` with the IG's own
  canonical URLs;
- `profiles/source/us-core-3.1.1.fsh` — the US Core 3.1.1 rules that the PA CarePlan and Goal inherit (US Core
  is not vendored here; this file restates only those parents' constraints).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from profiles import fsh

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IG_DIR = HERE / "ig"
SOURCE_DIR = HERE / "source"
SCHEMA = REPO / "service" / "fhir" / "r4-schema" / "fhir.schema.json.gz"

PA = "http://hl7.org/fhir/us/physical-activity"
US_CORE = "http://hl7.org/fhir/us/core"
OURS = "https://fhir.onco-exercise.org"
CORE = "http://hl7.org/fhir/StructureDefinition"

# The PA IG profiles our resources claim, and the Reference profiles they use.
PA_PROFILES = ("PACarePlan", "PAGoal", "PAServiceRequest", "PATaskForReferralManagement", "ReferenceRest",
               "PAObservationBase", "PAObservationActivityMeasure", "PAObservationActivityGroup",
               "PAObservationTimeMeasure", "PAObservationEVS", "PAObservationEVSDaysPerWeek",
               "PAObservationEVSMinutesPerDay", "PAObservationEVSMinutesPerWeek",
               "ReferenceRestOrLogical")
# US Core 3.1.1 names the PA IG refers to but does not define (profile -> resource type; value sets by URL).
US_CORE_NAMES: dict[str, tuple[str, str]] = {
    "USCorePatientProfile": ("us-core-patient", "Patient"),
    "USCorePractitionerProfile": ("us-core-practitioner", "Practitioner"),
    "USCorePractitionerRoleProfile": ("us-core-practitionerrole", "PractitionerRole"),
    "USCoreOrganizationProfile": ("us-core-organization", "Organization"),
    "USCoreCondition": ("us-core-condition", "Condition"),
    "USCoreCarePlanProfile": ("us-core-careplan", "CarePlan"),
    "USCoreGoalProfile": ("us-core-goal", "Goal"),
    "USCoreDiagnosticReportProfileNoteExchange": ("us-core-diagnosticreport-note", "DiagnosticReport"),
    "USCoreLaboratoryResultObservationProfile": ("us-core-observation-lab", "Observation"),
}
US_CORE_VALUESETS = {"USCoreConditionCode": "us-core-condition-code", "USCoreNarrativeStatus": "us-core-narrative-status"}
OUR_NAMES = ("OncoExerciseCarePlan", "OncoExerciseGoal", "OncoExercisePrescription", "OncoExerciseReferral",
             "OncoExerciseTask", "OncoExerciseClearanceTask")


def ig_fsh_dir() -> Path:
    """The vendored PA IG FSH: ONCO_EXERCISE_PA_IG_SRC, else ../shared/vendor next to the repository."""
    env = os.environ.get("ONCO_EXERCISE_PA_IG_SRC")
    root = Path(env) if env else REPO.parent / "shared" / "vendor" / "physical-activity-ig"
    return root / "input" / "fsh"


def sources() -> dict[str, fsh.FshSource]:
    """The three layers, read."""
    return {
        "ig": fsh.read(sorted(ig_fsh_dir().glob("*.fsh"))),
        "us-core": fsh.read([SOURCE_DIR / "us-core-3.1.1.fsh"]),
        "ours": fsh.read([SOURCE_DIR / "onco-exercise.fsh"]),
    }


# ---------------------------------------------------------------------------------------------------------
# Names -> canonical URLs
# ---------------------------------------------------------------------------------------------------------


class Names:
    """Resolves FSH names (profiles, value sets, code systems, aliases) across the three layers."""

    def __init__(self, layers: dict[str, fsh.FshSource]) -> None:
        self.aliases: dict[str, str] = {}
        self.profiles: dict[str, tuple[str, str]] = {}  # name -> (url, resource type)
        self.valuesets: dict[str, str] = {}
        self.codesystems: dict[str, str] = {}
        for name, (pid, rtype) in US_CORE_NAMES.items():
            self.profiles[name] = (f"{US_CORE}/StructureDefinition/{pid}", rtype)
        for name, vid in US_CORE_VALUESETS.items():
            self.valuesets[name] = f"{US_CORE}/ValueSet/{vid}"
        for layer, src in layers.items():
            base = {"ig": PA, "us-core": US_CORE, "ours": OURS}[layer]
            self.aliases.update(src.aliases)
            for e in src.of_kind("ValueSet"):
                self.valuesets[e.name] = f"{base}/ValueSet/{e.fields['Id']}"
            for e in src.of_kind("CodeSystem"):
                self.codesystems[e.name] = f"{base}/CodeSystem/{e.fields['Id']}"
        for layer, src in layers.items():  # profile types need the parents: resolve after all are known
            base = {"ig": PA, "us-core": US_CORE, "ours": OURS}[layer]
            pending = src.of_kind("Profile")
            for _ in range(5):
                for e in pending:
                    parent = e.fields["Parent"]
                    rtype = self.profiles[parent][1] if parent in self.profiles else parent
                    self.profiles[e.name] = (f"{base}/StructureDefinition/{e.fields['Id']}", rtype)

    def profile(self, name: str) -> str:
        name = self.aliases.get(name, name)
        if name in self.profiles:
            return self.profiles[name][0]
        if name.startswith("http"):
            return name
        by_id = [url for url, _ in self.profiles.values() if url.rsplit("/", 1)[-1] == name]
        if by_id:  # FSH also accepts a profile's id (the PA IG writes `Reference(us-core-patient)`)
            return by_id[0]
        return f"{CORE}/{name}"  # a core resource or type (Resource, Patient, Reference ...)

    def valueset(self, name: str) -> str:
        name = self.aliases.get(name, name)
        return self.valuesets.get(name, name)

    def system(self, name: str) -> str:
        name = self.aliases.get(name, name)
        return self.codesystems.get(name, name)

    def types(self) -> dict[str, str]:
        return {url: rtype for url, rtype in self.profiles.values()}


# ---------------------------------------------------------------------------------------------------------
# Element types (from the official R4 JSON Schema) — decide patternCode vs patternCodeableConcept etc.
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _defs() -> dict[str, Any]:
    with gzip.open(SCHEMA, "rt", encoding="utf-8") as fh:
        return json.load(fh)["definitions"]


def element_type(resource_type: str, path: str) -> str | None:
    """FHIR type of `path` (FSH path, slices ignored) in `resource_type`, e.g. ("Task", "code") -> "CodeableConcept"."""
    current = resource_type
    for seg in path.split("."):
        name = seg.split("[", 1)[0]
        if seg.endswith("[x]"):
            return None
        prop = _defs().get(current, {}).get("properties", {}).get(name)
        if prop is None:
            return None
        prop = prop.get("items", prop)
        if "enum" in prop:
            current = "code"
            continue
        ref = prop.get("$ref", "")
        current = ref.rsplit("/", 1)[-1] if ref else "string"
    return current


# ---------------------------------------------------------------------------------------------------------
# Compiling one Profile into a differential
# ---------------------------------------------------------------------------------------------------------


def element_id(resource_type: str, path: str) -> str:
    """FSH path -> ElementDefinition id: `category[PA]` -> `ServiceRequest.category:PA`."""
    if path == ".":
        return resource_type
    out = []
    for seg in path.split("."):
        if "[" in seg and not seg.endswith("[x]"):
            name, _, sl = seg.partition("[")
            out.append(f"{name}:{sl.rstrip(']')}")
        else:
            out.append(seg)
    return f"{resource_type}." + ".".join(out)


def compile_profile(entity: fsh.Entity, layer_base: str, names: Names, invariants: dict[str, fsh.Entity],
                    ) -> dict[str, Any]:
    """One Profile -> a StructureDefinition with a differential (element order: first mention)."""
    url, rtype = names.profiles[entity.name]
    elements: dict[str, dict[str, Any]] = {}
    why: list[dict[str, str]] = []

    def el(path: str) -> dict[str, Any]:
        eid = element_id(rtype, path)
        if eid not in elements:
            elements[eid] = {"id": eid, "path": eid if ":" not in eid else
                             ".".join(s.split(":", 1)[0] for s in eid.split("."))}
            last = eid.rsplit(".", 1)[-1]
            if ":" in last:
                elements[eid]["sliceName"] = last.split(":", 1)[1]
        return elements[eid]

    for rule in entity.rules:
        e = el(rule.path)
        _apply(rule, e, rtype, names, invariants, url, el)
        if rule.why:
            why.append({"element": e["id"], "rule": rule.text or "slicing", "why": rule.why})
    sd: dict[str, Any] = {
        "resourceType": "StructureDefinition",
        "id": entity.fields["Id"],
        "url": url,
        "name": entity.name,
        "title": entity.fields.get("Title", entity.name),
        "status": "active",
        "fhirVersion": "4.0.1",
        "kind": "complex-type" if rtype[0].isupper() and rtype in ("Reference", "Extension") else "resource",
        "abstract": False,
        "type": rtype,
        "baseDefinition": names.profile(entity.fields["Parent"]),
        "derivation": "constraint",
    }
    if entity.fields.get("Description"):
        sd["description"] = entity.fields["Description"]
    kept = [v for v in elements.values() if len(v) > 2 or v["id"] == rtype]
    kept.sort(key=lambda v: v["id"] != rtype)  # the root element first (R4 sdf-8a)
    sd["differential"] = {"element": kept}
    if why:
        sd["extension"] = [{"url": f"{OURS}/StructureDefinition/rule-reason",
                            "extension": [{"url": k, "valueString": v} for k, v in w.items()]} for w in why]
    return sd


def _apply(rule: fsh.Rule, e: dict[str, Any], rtype: str, names: Names, invariants: dict[str, fsh.Entity],
           url: str, el: Any) -> None:
    text = rule.text.strip()
    if text.startswith("^"):
        _caret(text, e, rtype, rule.path, names)
        return
    if text.startswith("obeys "):
        for key in (k.strip() for k in text[6:].split(" and ")):
            inv = invariants[key]
            e.setdefault("constraint", []).append({
                "key": key, "severity": inv.fields.get("Severity", "#error").lstrip("#"),
                "human": inv.fields.get("Description", ""), "expression": inv.fields["Expression"], "source": url})
        return
    if text.startswith("only "):
        e["type"] = _types(text[5:], names)
        return
    if text.startswith("from "):
        vs, _, strength = text[5:].partition("(")
        e["binding"] = {"strength": strength.rstrip(") ").strip() or "required", "valueSet": names.valueset(vs.strip())}
        return
    if text.startswith("= "):
        value = text[2:].strip()
        exactly = value.endswith("(exactly)")
        value = value.removesuffix("(exactly)").strip()
        ftype = element_type(rtype, rule.path) or "string"
        prefix = "fixed" if exactly else "pattern"
        e[prefix + ftype[0].upper() + ftype[1:]] = _value(value, ftype, names)
        return
    if text.startswith("contains "):
        for part in (p.strip() for p in text[9:].split(" and ")):
            words = part.split()
            if len(words) >= 3 and words[1] == "named":  # extension: $url named name card
                s = el(f"{rule.path}[{words[2]}]")
                s["type"] = [{"code": "Extension", "profile": [names.profile(words[0])]}]
                card = fsh.cardinality(words[3]) if len(words) > 3 else None
            else:
                s = el(f"{rule.path}[{words[0]}]")
                card = fsh.cardinality(words[1]) if len(words) > 1 else None
            if card:
                _card(s, card)
            if "MS" in words:
                s["mustSupport"] = True
        return
    words = text.split()
    if words:
        card = fsh.cardinality(words[0])
        if card:
            _card(e, card)
            words = words[1:]
    if "MS" in words:
        e["mustSupport"] = True


def _card(e: dict[str, Any], card: tuple[int | None, str | None]) -> None:
    if card[0] is not None:
        e["min"] = card[0]
    if card[1] is not None:
        e["max"] = card[1]


def _types(spec: str, names: Names) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    spec = spec.strip()
    if spec.startswith("Reference("):
        inner = spec[len("Reference("):].rstrip(")")
        out.append({"code": "Reference", "targetProfile": [names.profile(n.strip()) for n in inner.split(" or ")]})
        return out
    for t in (t.strip() for t in spec.split(" or ")):
        out.append({"code": t})
    return out


def _caret(text: str, e: dict[str, Any], rtype: str, path: str, names: Names) -> None:
    key, _, raw = text[1:].partition(" = ")  # not "=": `discriminator[=]` holds one
    key, raw = key.strip(), raw.strip()
    value = raw.strip('"')
    if key.startswith("slicing.discriminator"):
        disc = e.setdefault("slicing", {}).setdefault("discriminator", [])
        field_name = key.rsplit(".", 1)[-1]
        if "[+]" in key or not disc or field_name in disc[-1]:
            disc.append({})
        disc[-1][field_name] = value.lstrip("#")
    elif key == "slicing.rules":
        e.setdefault("slicing", {})["rules"] = value.lstrip("#")
    elif key.startswith("type[") and key.endswith(".profile[0]"):
        index = int(key[5:key.index("]")])
        types = e.setdefault("type", [{"code": element_type(rtype, path) or "Reference"}])
        while len(types) <= index:
            types.append({"code": "Reference"})
        types[index]["profile"] = [value]
    elif key.startswith(("fixed", "pattern")):
        _set(e, key, value)
    # ^short, ^comment, ^definition, ^requirements, ^condition and type-must-support extensions: documentation


def _set(target: dict[str, Any], dotted: str, value: Any) -> None:
    """`patternCodeableConcept.coding[0].system` = v -> nested dicts and lists."""
    node: Any = target
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        name, _, idx = part.partition("[")
        last = i == len(parts) - 1
        if idx:
            n = int(idx.rstrip("]"))
            items = node.setdefault(name, [])
            while len(items) <= n:
                items.append({})
            if last:
                items[n] = value
            node = items[n]
        elif last:
            node[name] = value
        else:
            node = node.setdefault(name, {})


def _value(value: str, ftype: str, names: Names) -> Any:
    if value.startswith('"'):
        return value.strip('"')
    if value in ("true", "false"):
        return value == "true"
    system, hash_, rest = value.partition("#")
    if not hash_:
        return value
    code = rest.split(" ", 1)[0].strip('"')
    if ftype == "code":
        return code
    coding = {"system": names.system(system), "code": code} if system else {"code": code}
    return coding if ftype == "Coding" else {"coding": [coding]}


# ---------------------------------------------------------------------------------------------------------
# Building and checking the files
# ---------------------------------------------------------------------------------------------------------


def build() -> dict[Path, dict[str, Any]]:
    """Every generated file: path -> JSON content."""
    layers = sources()
    names = Names(layers)
    invariants = {k: v for src in layers.values() for k, v in src.entities.items() if v.kind == "Invariant"}
    out: dict[Path, dict[str, Any]] = {}
    for name in PA_PROFILES:
        sd = compile_profile(layers["ig"].entities[name], PA, names, invariants)
        out[IG_DIR / f"StructureDefinition-{sd['id']}.json"] = sd
    for e in layers["us-core"].of_kind("Profile"):
        sd = compile_profile(e, US_CORE, names, invariants)
        out[IG_DIR / f"StructureDefinition-{sd['id']}.json"] = sd
    for name in OUR_NAMES:
        sd = compile_profile(layers["ours"].entities[name], OURS, names, invariants)
        sd.update({"version": "0.2.0", "publisher": "onco-exercise", "experimental": False})
        out[HERE / f"StructureDefinition-{sd['id']}.json"] = sd
    out[IG_DIR / "profile-types.json"] = dict(sorted(names.types().items()))
    return out


def dump(content: dict[str, Any]) -> str:
    return json.dumps(content, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    files = build()
    stale = [p for p, c in files.items() if not p.is_file() or p.read_text(encoding="utf-8") != dump(c)]
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(REPO)} (run: python -m profiles.build)", file=sys.stderr)
        return 1 if stale else 0
    IG_DIR.mkdir(exist_ok=True)
    for p in stale:
        p.write_text(dump(files[p]), encoding="utf-8")
        print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
