"""Loading the committed scenario Bundles (tests/fixtures/bundles) and running the clinical core on them."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from service.clinical.model import PatientSnapshot, Preferences, Prescription
from service.clinical.prescribe import prescribe
from service.clinical.serialize import preferences_from_json
from service.clinical.snapshot import build_snapshot_report

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
BUNDLES = FIXTURES / "bundles"
PREFERENCES = FIXTURES / "preferences"
# The fixtures are dated relative to 2026-11-20; the CLI's --now 2026-11-20 means the end of that day.
NOW = datetime(2026, 11, 20, 23, 59, 59, tzinfo=timezone.utc)


def bundle(name: str) -> dict[str, Any]:
    return json.loads((BUNDLES / f"{name}.json").read_text(encoding="utf-8"))


def preferences(name: str) -> Preferences | None:
    path = PREFERENCES / f"{name}.json"
    return preferences_from_json(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None


def run(name: str, prefs: Preferences | None = None,
        now: datetime = NOW) -> tuple[PatientSnapshot, Prescription, tuple[str, ...]]:
    snapshot, issues = build_snapshot_report(bundle(name), now)
    return snapshot, prescribe(snapshot, now, prefs if prefs is not None else preferences(name)), issues


def fired(p: Prescription) -> set[str]:
    return {r.rule for r in p.rationale}


def scenario_names() -> list[str]:
    return sorted(p.stem for p in BUNDLES.glob("*.json"))
