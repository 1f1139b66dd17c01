"""`onco-exercise prescribe` fills `resources` with the transaction Bundle a signing would write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from service.fhir.validate import validate_resource

INVALID = {"junk_resources"}  # deliberately not parseable as R4: the CLI refuses it (test below)
BUNDLES = sorted(p for p in (Path(__file__).parents[1] / "fixtures" / "bundles").glob("*.json")
                 if p.stem not in INVALID)
CLI = Path(sys.executable).parent / "onco-exercise"


def _prescribe(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    code = main(["prescribe", str(path), "--now", "2026-11-01", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("path", BUNDLES, ids=lambda p: p.stem)
def test_every_eligible_fixture_yields_a_valid_transaction(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _prescribe(path, capsys)
    if not result["eligible"]:
        assert result["resources"] == []
        return
    [bundle] = result["resources"]
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    errors = [i for i in validate_resource(bundle) if i.severity == "error"]
    assert errors == []
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types[0] == "CarePlan" and "Task" in types and types[-1] == "Provenance"
    codes = {c["code"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
             for c in e["resource"]["code"]["coding"]}
    assert "390893007" in codes  # the referral to the exercise service is always part of a signing


def test_signer_and_identifiers_are_stable(capsys: pytest.CaptureFixture[str]) -> None:
    path = next(p for p in BUNDLES if p.stem == "baseline_breast")
    first = _prescribe(path, capsys, "--signer", "Practitioner/dr-a")
    again = _prescribe(path, capsys, "--signer", "Practitioner/dr-a")
    other = _prescribe(path, capsys, "--signer", "Practitioner/dr-b")
    assert first["resources"] == again["resources"]
    ids = lambda r: [e["request"].get("ifNoneExist") for e in r["resources"][0]["entry"]]  # noqa: E731
    assert ids(first) != ids(other)
    requesters = {e["resource"]["requester"]["reference"] for e in first["resources"][0]["entry"]
                  if "requester" in e["resource"]}
    assert requesters == {"Practitioner/dr-a"}


def test_cli_output_validates_with_the_validate_command(tmp_path: Path) -> None:
    path = next(p for p in BUNDLES if p.stem == "baseline_breast")
    out = subprocess.run([str(CLI), "prescribe", str(path), "--now", "2026-11-01"], capture_output=True,
                         text=True, check=True).stdout
    target = tmp_path / "tx.json"
    target.write_text(json.dumps(json.loads(out)["resources"][0]))
    done = subprocess.run([str(CLI), "validate", str(target)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_junk_fixture_is_refused_with_a_readable_message(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).parents[1] / "fixtures" / "bundles" / "junk_resources.json"
    assert main(["prescribe", str(path)]) == 2
    err = capsys.readouterr().err
    assert "does not parse as FHIR R4" in err and "Traceback" not in err
