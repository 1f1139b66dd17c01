"""Loads terminology/ (FHIR JSON ValueSets, CodeSystems, ConceptMaps) once and answers membership questions.

The rules never spell codes: they ask this module whether a coding is in a value set. Value sets are composed
of enumerated concepts, whole code systems, and `regex` / `is-a` filters (ICD-10-CM ranges such as C00-C76 are
regex filters). Lookups are precomputed into dicts/compiled patterns so the hot path (every CDS hook call)
does a few dict probes per coding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from service.canonical import ATC, BASE, ICD10CM, LOINC, RXNORM
from service.paths import TERMINOLOGY_DIR

VS_PREFIX = f"{BASE}/ValueSet/"
CS_OBSERVATION_MEASURE = f"{BASE}/CodeSystem/observation-measure"
CM_ANSWER_SCORE = f"{BASE}/ConceptMap/loinc-answer-score"
CM_UNIT_SYNONYMS = f"{BASE}/ConceptMap/unit-synonyms"


NAME_SYSTEMS = frozenset({RXNORM, ATC})
ICD10_SYSTEMS = frozenset({ICD10CM, "http://hl7.org/fhir/sid/icd-10"})
MAX_MEMBERSHIP_MEMO = 100_000  # distinct codings remembered (bounded: hostile input cannot grow it forever)
MIN_NAME = 4  # shorter names ("ara", "5fu") match too much free text
MAX_NAME_WORDS = 4
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class TerminologyError(Exception):
    """terminology/ is missing or malformed: a deployment problem, reported at start-up."""


def normalise_code(system: str, code: str) -> str:
    """ICD-10 codes (CM and WHO) arrive as 'C50.911', 'c50911' or ' C50.911 ': compare in dotted upper case."""
    code = code.strip()
    if system in ICD10_SYSTEMS:
        code = code.upper()
        if "." not in code and len(code) > 3:
            code = f"{code[:3]}.{code[3:]}"
    return code


@dataclass
class _Include:
    system: str
    codes: frozenset[str] | None = None  # enumerated concepts
    patterns: tuple[re.Pattern[str], ...] = ()  # regex filters (all must match)
    prefixes: tuple[str, ...] = ()  # is-a filters on hierarchical code systems (ICD-10-CM)
    whole_system: bool = False

    def contains(self, system: str, code: str) -> bool:
        if system != self.system:
            return False
        if self.codes is not None:
            return code in self.codes
        if self.whole_system:
            return True
        if self.patterns and not all(p.search(code) for p in self.patterns):
            return False
        if self.prefixes and not any(code.startswith(p) for p in self.prefixes):
            return False
        return bool(self.patterns or self.prefixes)


@dataclass
class _ValueSet:
    id: str
    url: str
    include: list[_Include] = field(default_factory=list)
    exclude: list[_Include] = field(default_factory=list)
    enumerable: bool = True

    def contains(self, system: str, code: str) -> bool:
        return any(i.contains(system, code) for i in self.include) and not any(
            e.contains(system, code) for e in self.exclude
        )


@dataclass(frozen=True)
class MeasureInfo:
    """One row of the observation table: the measure key, its canonical UCUM unit and max age in days.

    `danger` says which side of the range is dangerous ("low" for platelets, "high" for temperature, "none"):
    comparators ("<20") and conflicting results are read toward it. `unreadable` says what a present but
    unreadable value requires: "defer" (a measure whose bad value is a red flag), "clearance", or "note"
    (not safety-relevant). `plausible` holds, per UCUM unit, the range a real result can take in that unit:
    values outside it are implausible, and a value without a unit is read only when exactly one unit fits.
    """

    key: str
    display: str
    unit: str
    max_age_days: int
    codes: tuple[tuple[str, str], ...]
    danger: str = "none"
    unreadable: str = "note"
    plausible: tuple[tuple[str, float, float], ...] = ()
    molar_mass: float | None = None
    valence: int | None = None

    @property
    def canonical_range(self) -> tuple[float, float] | None:
        return _canonical_range(self)


@lru_cache(maxsize=512)
def _canonical_range(info: MeasureInfo) -> tuple[float, float] | None:
    return next(((lo, hi) for u, lo, hi in info.plausible if u == info.unit), None)


class Terminology:
    """Answers: is (system, code) in value set X; which measure is this observation code; display names."""

    def __init__(self, resources: Iterable[dict[str, Any]]) -> None:
        self._code_systems: dict[str, dict[str, dict[str, Any]]] = {}
        self._valuesets: dict[str, _ValueSet] = {}
        self._displays: dict[tuple[str, str], str] = {}
        self._measures: dict[str, MeasureInfo] = {}
        self._measure_by_code: dict[tuple[str, str], str] = {}
        self._answer_scores: dict[tuple[str | None, str, str], float] = {}  # (measure, system, code) -> score
        self._unit_synonyms: dict[str, tuple[str, ...]] = {}
        self._names: dict[str, frozenset[str]] = {}
        self._members: dict[tuple[str, str], frozenset[str]] = {}
        self._unique: list[_ValueSet] | None = None
        self._aliases: dict[str, str] = {}  # another identifier of a code system -> its FHIR URI
        pending_vs: list[dict[str, Any]] = []
        for res in resources:
            kind = res.get("resourceType")
            if kind == "CodeSystem":
                self._load_code_system(res)
            elif kind == "ValueSet":
                pending_vs.append(res)
            elif kind == "ConceptMap":
                self._load_concept_map(res)
            elif kind == "NamingSystem":
                self._load_naming_system(res)
        for res in pending_vs:
            self._load_value_set(res)
        # Observation codes sent under another identifier of their code system (urn:oid:2.16.840.1.113883.6.1
        # for LOINC) are found in the same dict probe as the preferred URI.
        for alias, uri in self._aliases.items():
            for (system, code), key in list(self._measure_by_code.items()):
                if system == uri:
                    self._measure_by_code[(alias, code)] = key
            for (measure, system, code), score in list(self._answer_scores.items()):
                if system == uri:
                    self._answer_scores[(measure, alias, code)] = score

    # ---------------------------------------------------------------- loading
    def _load_naming_system(self, res: dict[str, Any]) -> None:
        ids = res.get("uniqueId", [])
        preferred = next((u["value"] for u in ids if u.get("type") == "uri" and u.get("preferred")), None)
        if preferred is None:
            raise TerminologyError(f"NamingSystem {res.get('id')!r} has no preferred uri")
        for u in ids:
            value = u["value"]
            alias = f"urn:oid:{value}" if u.get("type") == "oid" else value
            if alias != preferred:
                self._aliases[alias] = preferred

    def canonical_system(self, system: str) -> str:
        """The FHIR URI of a code system however it was named (URI variant or urn:oid:)."""
        return self._aliases.get(system, system)

    def _load_code_system(self, res: dict[str, Any]) -> None:
        url = res["url"]
        concepts: dict[str, dict[str, Any]] = {}
        for c in res.get("concept", []):
            concepts[c["code"]] = c
            if c.get("display"):
                self._displays[(url, c["code"])] = c["display"]
        self._code_systems[url] = concepts
        if url == CS_OBSERVATION_MEASURE:
            for key, c in concepts.items():
                self._load_measure(key, c)

    def _load_measure(self, key: str, c: dict[str, Any]) -> None:
        props = c.get("property", [])

        def one(name: str, field_: str, default: Any = None) -> Any:
            return next((p[field_] for p in props if p["code"] == name), default)

        codes = tuple((p["valueCoding"]["system"], p["valueCoding"]["code"]) for p in props if p["code"] == "code")
        plausible = []
        for p in props:
            if p["code"] == "plausible":
                unit, lo, hi = p["valueString"].rsplit(" ", 2)
                plausible.append((unit, float(lo), float(hi)))
        info = MeasureInfo(key, c.get("display", key), one("unit", "valueCode"), one("maxAgeDays", "valueInteger"),
                           codes, one("danger", "valueCode", "none"), one("unreadable", "valueCode", "note"),
                           tuple(plausible), one("molarMass", "valueDecimal"), one("valence", "valueInteger"))
        if info.unit is None or info.max_age_days is None:
            raise TerminologyError(f"measure {key!r} needs a unit and maxAgeDays")
        self._measures[key] = info
        for sc in codes:
            if sc in self._measure_by_code and self._measure_by_code[sc] != key:
                raise TerminologyError(f"observation code {sc[1]} is listed under two measures")
            self._measure_by_code[sc] = key
        for p in props:
            if p["code"] == "code" and p["valueCoding"].get("display"):
                self._displays.setdefault((p["valueCoding"]["system"], p["valueCoding"]["code"]),
                                          p["valueCoding"]["display"])

    def _load_concept_map(self, res: dict[str, Any]) -> None:
        if res.get("url") == CM_UNIT_SYNONYMS:
            for group in res.get("group", []):
                for el in group.get("element", []):
                    targets = tuple(t["code"] for t in el.get("target", []))
                    key = el["code"].strip().lower()
                    self._unit_synonyms[key] = tuple(dict.fromkeys(self._unit_synonyms.get(key, ()) + targets))
            return
        if res.get("url") != CM_ANSWER_SCORE:
            return
        for group in res.get("group", []):
            for el in group.get("element", []):
                for t in el.get("target", []):
                    measure = next((d.get("value") for d in t.get("dependsOn", []) if d.get("property") == CS_OBSERVATION_MEASURE),
                                   None)
                    self._answer_scores[(measure, group["source"], el["code"])] = float(t["code"])

    def _parse_include(self, inc: dict[str, Any]) -> tuple[_Include, bool]:
        system = inc["system"]
        if "concept" in inc:
            codes = frozenset(normalise_code(system, c["code"]) for c in inc["concept"])
            for c in inc["concept"]:
                if c.get("display"):
                    self._displays.setdefault((system, normalise_code(system, c["code"])), c["display"])
            return _Include(system, codes=codes), True
        filters = inc.get("filter", [])
        if not filters:
            if system in self._code_systems:  # one of ours: complete, so membership is exact
                return _Include(system, codes=frozenset(self._code_systems[system])), True
            return _Include(system, whole_system=True), False
        patterns: list[re.Pattern[str]] = []
        prefixes: list[str] = []
        for f in filters:
            op = f.get("op")
            if op == "regex":
                patterns.append(re.compile(f["value"]))
            elif op in ("is-a", "descendent-of"):
                prefixes.append(normalise_code(system, f["value"]))
            else:
                raise TerminologyError(f"unsupported ValueSet filter op {op!r} for {system}")
        return _Include(system, patterns=tuple(patterns), prefixes=tuple(prefixes)), False

    def _load_value_set(self, res: dict[str, Any]) -> None:
        vs = _ValueSet(res["id"], res["url"])
        compose = res.get("compose", {})
        for inc in compose.get("include", []):
            parsed, enumerable = self._parse_include(inc)
            vs.include.append(parsed)
            vs.enumerable = vs.enumerable and enumerable
        for exc in compose.get("exclude", []):
            vs.exclude.append(self._parse_include(exc)[0])
        self._valuesets[vs.id] = vs
        self._valuesets[vs.url] = vs

    # ---------------------------------------------------------------- queries
    def _vs(self, vs_id_or_url: str) -> _ValueSet:
        try:
            return self._valuesets[vs_id_or_url]
        except KeyError:
            raise KeyError(f"unknown value set {vs_id_or_url!r}") from None

    def valueset_ids(self) -> list[str]:
        return sorted({vs.id for vs in self._valuesets.values()})

    def in_valueset(self, vs_id_or_url: str, system: str | None, code: str | None) -> bool:
        if not system or not code or not isinstance(code, str):
            return False
        uri = self.canonical_system(system)
        return self._vs(vs_id_or_url).contains(uri, normalise_code(uri, code))

    def match(self, vs_id_or_url: str, codeable_concept: dict[str, Any] | None) -> dict[str, Any] | None:
        """The first coding of a CodeableConcept that is in the value set (any coding counts), else None."""
        if not isinstance(codeable_concept, dict):
            return None
        vs_id = self._vs(vs_id_or_url).id
        codings = codeable_concept.get("coding")
        if not isinstance(codings, list):
            return None
        members = self._members
        for coding in codings:
            if not isinstance(coding, dict):
                continue
            key = (coding.get("system"), coding.get("code"))
            found = members.get(key)  # type: ignore[arg-type]
            if found is None:
                found = self._memberships(*key)
            if vs_id in found:
                return coding
        return None

    def _memberships(self, system: Any, code: Any) -> frozenset[str]:
        """Every value set holding (system, code), computed once per coding and remembered: a record holds the
        same few hundred codes on every call, and there are dozens of value sets to ask."""
        found: frozenset[str] = frozenset()
        if isinstance(system, str) and isinstance(code, str):
            uri = self.canonical_system(system.strip())
            norm = normalise_code(uri, code)
            found = frozenset(vs.id for vs in self._unique_valuesets() if vs.contains(uri, norm))
            if len(self._members) < MAX_MEMBERSHIP_MEMO:
                self._members[(system, code)] = found
        return found

    def _unique_valuesets(self) -> list[_ValueSet]:
        if self._unique is None:
            self._unique = list({id(vs): vs for vs in self._valuesets.values()}.values())
        return self._unique

    def display(self, system: str, code: str) -> str | None:
        return self._displays.get((system, normalise_code(system, code)))

    def definition(self, system: str, code: str) -> str | None:
        """The definition text of a concept in one of our CodeSystems (precaution texts live there)."""
        concept = self._code_systems.get(system, {}).get(code)
        return concept.get("definition") if concept else None

    def designation(self, system: str, code: str, use: str) -> str | None:
        """A concept's designation for `use` (a code of our designation-use CodeSystem, e.g. "patient")."""
        concept = self._code_systems.get(system, {}).get(code) or {}
        for d in concept.get("designation") or ():
            if isinstance(d, dict) and (d.get("use") or {}).get("code") == use and isinstance(d.get("value"), str):
                return d["value"]
        return None

    def code_system_codes(self, url: str) -> list[str]:
        return list(self._code_systems.get(url, {}))

    def codes(self, vs_id: str) -> list[tuple[str, str]]:
        """All (system, code) pairs of an enumerable value set (concept lists and our own whole CodeSystems)."""
        vs = self._vs(vs_id)
        if not vs.enumerable:
            raise ValueError(f"value set {vs_id!r} uses filters and cannot be enumerated")
        out: list[tuple[str, str]] = []
        for inc in vs.include:
            concepts = self._code_systems.get(inc.system, {})
            if inc.codes is not None and set(inc.codes) == set(concepts):
                out.extend((inc.system, c) for c in concepts)  # a whole CodeSystem of ours: its own order
            elif inc.codes is not None:
                out.extend((inc.system, c) for c in sorted(inc.codes))
        return out

    # ---------------------------------------------------------------- observations
    def measures(self) -> dict[str, MeasureInfo]:
        return dict(self._measures)

    def measures_by_key(self) -> dict[str, MeasureInfo]:
        """The measure table itself (read-only by contract): no copy, for per-call lookups."""
        return self._measures

    def measure_index(self) -> dict[tuple[str, str], str]:
        """(system, code) -> measure key, shared (read-only) for the snapshot's hot loop."""
        return self._measure_by_code

    def measure(self, key: str) -> MeasureInfo:
        return self._measures[key]

    def measure_for(self, system: str | None, code: str | None) -> str | None:
        if not system or not code:
            return None
        return self._measure_by_code.get((system, code))

    def observation_codes(self, measure: str | None = None) -> list[tuple[str, str]]:
        """Observation codes the rules read (LOINC first), for FHIR search filters such as `code=`."""
        if measure is not None:
            return list(self._measures[measure].codes)
        out = [sc for m in self._measures.values() for sc in m.codes]
        return sorted(out, key=lambda sc: (sc[0] != LOINC, sc[0], sc[1]))

    def answer_score(self, system: str | None, code: str | None, measure: str | None = None) -> float | None:
        """Numeric score of an answer code for a measure (LA9623-5 -> ECOG 1; LA15173-0 -> pregnant 1)."""
        if not system or not code:
            return None
        scores = self._answer_scores
        found = scores.get((measure, system, code))
        return found if found is not None else scores.get((None, system, code))

    def names(self, vs_id: str) -> frozenset[str]:
        """Lower-case drug/ingredient names of a value set: the displays of its RxNorm ingredient and brand
        concepts (no digits: not a clinical drug) and ATC substances, for codings we do not know by code."""
        cached = self._names.get(vs_id)
        if cached is not None:
            return cached
        vs = self._vs(vs_id)
        out: set[str] = set()
        for inc in vs.include:
            if inc.system not in NAME_SYSTEMS or inc.codes is None:
                continue
            for code in inc.codes:
                if inc.system == ATC and len(code) != 7:
                    continue
                display = self._displays.get((inc.system, code), "")
                name = " ".join(_words(display))
                if len(name) >= MIN_NAME and not any(ch.isdigit() for ch in name):
                    out.add(name)
        self._names[vs_id] = frozenset(out)
        return self._names[vs_id]

    def name_in_text(self, vs_id: str, text: str) -> str | None:
        """The first name of value set `vs_id` that occurs as whole words in `text`, else None."""
        names = self.names(vs_id)
        if not names or not text:
            return None
        whole = _words(text)
        # Biologics carry a suffix ("trastuzumab-dkst", "tremelimumab-actl"): also try the words split at hyphens.
        split = [part for w in whole for part in w.split("-")]
        for words in (whole, split):
            for n in range(min(MAX_NAME_WORDS, len(words)), 0, -1):
                for i in range(len(words) - n + 1):
                    phrase = " ".join(words[i:i + n])
                    if phrase in names:
                        return phrase
        return None

    def unit_synonyms(self) -> dict[str, tuple[str, ...]]:
        """Lower-case real-world unit spelling -> the UCUM codes it may stand for (ConceptMap unit-synonyms)."""
        return self._unit_synonyms


def load_terminology(directory: Path) -> Terminology:
    """Read every *.json file in `directory`; raises TerminologyError naming the broken file."""
    resources: list[dict[str, Any]] = []
    if not directory.is_dir():
        raise TerminologyError(f"terminology folder not found: {directory}")
    for path in sorted(directory.glob("*.json")):
        try:
            resources.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise TerminologyError(f"cannot read {path.name}: {exc}") from exc
    try:
        return Terminology(resources)
    except (KeyError, TypeError, ValueError, re.error, StopIteration) as exc:
        raise TerminologyError(f"malformed terminology resource: {exc!r}") from exc


@lru_cache(maxsize=1)
def get_terminology() -> Terminology:
    """The process-wide Terminology, loaded once from TERMINOLOGY_DIR."""
    return load_terminology(TERMINOLOGY_DIR)


def setting_name(setting: str) -> str:
    """The one name of a setting that card, app, handout, inbox and FHIR text use (the setting CodeSystem's
    display), or the code itself when it is not one of ours."""
    from service import canonical

    return get_terminology().display(canonical.CS_SETTING, setting) or setting
