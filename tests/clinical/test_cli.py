"""`onco-exercise prescribe` as a user runs it: real subprocess, real files, readable errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.clinical.support import BUNDLES, PREFERENCES, bundle

ROOT = Path(__file__).resolve().parents[2]
EXE = ROOT / ".venv" / "bin" / "onco-exercise"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "service.cli"]
    return subprocess.run([*cmd, "prescribe", *map(str, args)], capture_output=True, text=True, timeout=60, cwd=ROOT)


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_json_output_follows_the_contract() -> None:
    r = cli(BUNDLES / "multiple_precautions.json", "--now", "2026-11-20",
            "--preferences", PREFERENCES / "multiple_precautions.json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["eligible"] is True and d["setting"] == "supervised" and d["clearanceRequired"] is True
    assert [b["type"] for b in d["resources"]] == ["transaction"] and d["rulesetVersion"] and d["generatedAt"].startswith("2026-11-20")
    assert {c["type"] for c in d["components"]} == {"aerobic", "resistance", "flexibility", "balance"}
    assert {"bone-metastases", "neutropenia"} <= {p["code"] for p in d["precautions"]}
    assert all({"code", "text", "rule", "source"} == set(p) for p in d["precautions"])


def test_text_output_and_not_eligible() -> None:
    r = cli(BUNDLES / "non_oncology.json", "--now", "2026-11-20", "--format", "text")
    assert r.returncode == 0 and r.stdout.startswith("NOT ELIGIBLE")
    r = cli(BUNDLES / "fever_celsius.json", "--now", "2026-11-20", "--format", "text")
    assert r.returncode == 0 and "RED FLAGS" in r.stdout


def _r5_medication() -> dict[str, Any]:
    b = bundle("chemo_paclitaxel_active")
    for e in b["entry"]:
        if e["resource"]["resourceType"] == "MedicationRequest":
            e["resource"]["medication"] = {"concept": e["resource"].pop("medicationCodeableConcept")}
    return b


def _stu3_condition() -> dict[str, Any]:
    b = bundle("baseline_breast")
    cond = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Condition")
    cond["clinicalStatus"], cond["verificationStatus"] = "active", "confirmed"
    return b


def _bad_value() -> dict[str, Any]:
    b = bundle("baseline_breast")
    obs = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Observation")
    obs["valueQuantity"]["value"] = "lots"
    return b


def _two_patients() -> dict[str, Any]:
    b = bundle("baseline_breast")
    b["entry"].append({"resource": {"resourceType": "Patient", "id": "p2"}})
    return b


@pytest.mark.parametrize("content,expected", [
    ("{not json", "is not JSON"),
    ([1, 2], "not a FHIR Bundle"),
    ({"resourceType": "Patient", "id": "x"}, "not a FHIR Bundle (resourceType is 'Patient')"),
    (_stu3_condition(), "STU3"),
    ({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Transport"}}]}, "R5"),
    (_r5_medication(), "'medication' is FHIR R5"),
    ({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Nonsense"}}]},
     "not a FHIR R4 resource type"),
    (_bad_value(), "does not parse as FHIR R4: valueQuantity.value"),
    (_two_patients(), "2 different patients"),
])
def test_invalid_bundles_get_one_clear_message(tmp_path: Path, content: Any, expected: str) -> None:
    r = cli(write(tmp_path, "in.json", content), "--now", "2026-11-20")
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr and expected in r.stderr
    assert r.stderr.startswith("onco-exercise: ") and r.stderr.count("\n") == 1


def test_other_bad_arguments(tmp_path: Path) -> None:
    r = cli(tmp_path / "missing.json")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = cli(BUNDLES / "baseline_breast.json", "--now", "20-11-2026")
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr
    r = cli(BUNDLES / "baseline_breast.json", "--preferences", write(tmp_path, "p.json", {"preferredSetting": "gym"}))
    assert r.returncode == 2 and "preferredSetting" in r.stderr and "Traceback" not in r.stderr
