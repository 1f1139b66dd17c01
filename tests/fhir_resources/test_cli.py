"""`onco-exercise validate FILE...`: exit codes and what is printed, through the installed command."""

import json
import subprocess
import sys
from pathlib import Path

from service.fhir import resources as R
from service.paths import PROFILES_DIR
from tests.fhir_resources import factories as F

CLI = Path(sys.prefix) / "bin" / "onco-exercise"
EXAMPLES = sorted(str(p) for p in (PROFILES_DIR / "examples").glob("*.json"))


def run(*files):
    return subprocess.run([str(CLI), "validate", *map(str, files)], capture_output=True, text=True, timeout=60)


def test_valid_files_and_bundles_exit_0(tmp_path):
    bundle = tmp_path / "bundle.json"
    entries = R.build_prescription_resources(F.prescription(), F.snapshot(), F.signing())
    bundle.write_text(json.dumps(R.transaction_bundle(entries)))
    out = run(*EXAMPLES, bundle)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(EXAMPLES) + 1} file(s) checked: 0 error(s)" in out.stdout
    assert "Traceback" not in out.stderr


def test_errors_exit_1_with_file_and_path(tmp_path):
    entries = R.build_prescription_resources(F.prescription(), F.snapshot(), F.signing())
    task = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Task")
    task["status"] = "rejected"  # without statusReason: pa-taskrm-1
    bad = tmp_path / "task.json"
    bad.write_text(json.dumps(task))
    bundle = tmp_path / "bundle.json"
    sr = next(i for i, e in enumerate(entries) if e["resource"]["resourceType"] == "ServiceRequest")
    del entries[sr]["resource"]["subject"]
    bundle.write_text(json.dumps(R.transaction_bundle(entries)))
    out = run(EXAMPLES[0], bad, bundle)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{bad}: error: Task: pa-taskrm-1" in out.stdout
    assert f"{bundle}: error: Bundle.entry[{sr}].resource.subject: missing required element" in out.stdout
    assert "3 file(s) checked:" in out.stdout.splitlines()[-1]


def test_unreadable_or_not_json_exit_2_without_traceback(tmp_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    out = run(EXAMPLES[0], garbage, tmp_path / "missing.json")
    assert out.returncode == 2
    assert f"{garbage}: not valid JSON" in out.stderr and "missing.json: cannot read file" in out.stderr
    assert "Traceback" not in out.stderr and "2 unreadable" in out.stdout


def test_json_that_is_not_a_resource_is_an_error(tmp_path):
    f = tmp_path / "list.json"
    f.write_text("[1, 2]")
    out = run(f)
    assert out.returncode == 1 and "not a FHIR resource" in out.stdout
