"""The terminology coverage report (`onco-exercise terminology`): what terminology/ recognises, per code system.

For every value set: enumerated concepts per code system, the rules (regex / is-a filters) that cover whole
ranges, and the sources its codes came from; for the observation table: codes per measure; for units: the
number of real-world spellings. Read from the FHIR JSON files themselves, so the report shows what ships.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.canonical import ATC, ICD10CM, LOINC, RXNORM, SNOMED
from service.terminology import CM_UNIT_SYNONYMS, CS_OBSERVATION_MEASURE

SYSTEM_LABELS = {
    SNOMED: "SNOMED CT", ICD10CM: "ICD-10-CM", "http://hl7.org/fhir/sid/icd-10": "ICD-10", RXNORM: "RxNorm",
    ATC: "ATC", "http://www.ama-assn.org/go/cpt": "CPT", "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets":
    "HCPCS", "http://www.cms.gov/Medicare/Coding/ICD10": "ICD-10-PCS", LOINC: "LOINC",
}


def _label(system: str) -> str:
    if system in SYSTEM_LABELS:
        return SYSTEM_LABELS[system]
    if "opcs" in system.lower():
        return "OPCS-4"
    return system.rsplit("/", 1)[-1]


def coverage(directory: Path) -> dict[str, Any]:
    """{valueSets: [{id, title, systems: {label: {concepts, filters}}, sources}], measures: {...}, units: n}."""
    value_sets: list[dict[str, Any]] = []
    measures: dict[str, int] = {}
    units = 0
    for path in sorted(directory.glob("*.json")):
        res = json.loads(path.read_text(encoding="utf-8"))
        kind = res.get("resourceType")
        if kind == "ValueSet":
            systems: dict[str, dict[str, Any]] = {}
            for inc in res.get("compose", {}).get("include", []):
                row = systems.setdefault(_label(inc["system"]), {"concepts": 0, "filters": []})
                row["concepts"] += len(inc.get("concept", []))
                row["filters"] += [f"{f['op']} {f['value']}" for f in inc.get("filter", [])]
                if "concept" not in inc and "filter" not in inc:
                    row["filters"].append("whole code system")
            value_sets.append({"id": res["id"], "title": res.get("title", res["id"]), "systems": systems,
                               "sources": res.get("purpose", "")})
        elif kind == "CodeSystem" and res.get("url") == CS_OBSERVATION_MEASURE:
            for c in res.get("concept", []):
                measures[c["code"]] = sum(1 for p in c.get("property", []) if p["code"] == "code")
        elif kind == "ConceptMap" and res.get("url") == CM_UNIT_SYNONYMS:
            units = sum(len(g.get("element", [])) for g in res.get("group", []))
    return {"valueSets": value_sets, "measures": measures, "unitSpellings": units}


def render(report: dict[str, Any]) -> str:
    """A plain-text table: value sets x code systems (counts; 'rule' where a filter covers a range)."""
    labels = sorted({lbl for vs in report["valueSets"] for lbl in vs["systems"]},
                    key=lambda x: (list(SYSTEM_LABELS.values()) + [x]).index(x))
    width = max(len(vs["id"]) for vs in report["valueSets"]) + 2
    cols = [max(len(lbl), 6) + 2 for lbl in labels]
    lines = ["Terminology coverage: concepts per value set and code system ('+rule': a filter covers a range)", ""]
    lines.append("value set".ljust(width) + "".join(lbl.rjust(w) for lbl, w in zip(labels, cols)))
    totals = dict.fromkeys(labels, 0)
    for vs in report["valueSets"]:
        cells = []
        for lbl, w in zip(labels, cols):
            row = vs["systems"].get(lbl)
            if row is None:
                cells.append("".rjust(w))
                continue
            totals[lbl] += row["concepts"]
            text = (str(row["concepts"]) if row["concepts"] else "") + ("+rule" if row["filters"] else "")
            cells.append(text.rjust(w))
        lines.append(vs["id"].ljust(width) + "".join(cells))
    lines.append("total".ljust(width) + "".join(str(totals[lbl]).rjust(w) for lbl, w in zip(labels, cols)))
    m = report["measures"]
    lines += ["", f"Observation measures: {len(m)} measures, {sum(m.values())} codes "
              f"({', '.join(f'{k} {v}' for k, v in sorted(m.items()))})",
              f"Unit spellings mapped to UCUM: {report['unitSpellings']} (UCUM codes themselves are parsed)", "",
              "Rules (filters):"]
    for vs in report["valueSets"]:
        for lbl, row in vs["systems"].items():
            for f in row["filters"]:
                lines.append(f"  {vs['id']}: {lbl} {f}")
    lines += ["", "Sources:"]
    lines += [f"  {vs['id']}: {vs['sources'] or '(none given)'}" for vs in report["valueSets"]]
    return "\n".join(lines)
