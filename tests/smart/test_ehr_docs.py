"""The scope lists the EHR pages tell hospital IT to register are the ones the app derives (no drift)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.smart.launch import Discovery, build_scopes

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ehr"


@pytest.mark.parametrize("page,capabilities,writes", [
    ("epic.md", ["permission-v1", "permission-v2"], ["ServiceRequest", "DocumentReference"]),
    ("oracle-health.md", ["permission-v1", "permission-online"], ["DocumentReference"]),
    ("hapi.md", ["permission-v2", "permission-offline"], ["CarePlan", "Goal", "ServiceRequest", "Task", "Provenance"]),
])
def test_documented_first_request_is_what_the_app_asks(page: str, capabilities: list[str], writes: list[str]):
    text = re.sub(r"\s+", " ", (DOCS / page).read_text())
    scopes = build_scopes(Discovery("a", "t", capabilities=capabilities), writes, ehr_launch=True)
    assert " ".join(scopes) in text
