"""Fixtures for the FHIR client tests: one real sekmet-fhir server over loopback HTTP for the session."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.fhir_client.sekmet_server import close_ctx, sekmet_app
from tests.support.live import free_port, serve

# The LOINC codes of fhir-content.md: used only while service.terminology is not importable yet.
_STUB_OBSERVATION_CODES = [
    ("http://loinc.org", c) for c in (
        "64098-7", "83174-3", "83173-5", "94122-9", "66247-8", "89423-8", "40443-4", "8867-4", "85354-9",
        "8480-6", "8462-4", "39156-5", "29463-7", "718-7", "777-3", "26515-7", "751-8", "6690-2", "8310-5",
        "72514-3", "82289-0", "89247-1", "89243-0", "89574-8", "89555-7", "68516-4", "82290-8", "82291-6")
]
_STUB_EXERCISE_SR_CODES = [("http://snomed.info/sct", c) for c in (
    "390893007", "229065009", "819961005", "398636004", "435551000124105", "426866005", "229095001")]


class _StubTerminology:
    def observation_codes(self, measure: str | None = None) -> list[tuple[str, str]]:
        return list(_STUB_OBSERVATION_CODES)

    def codes(self, vs_id: str) -> list[tuple[str, str]]:
        if vs_id == "exercise-servicerequest-code":
            return list(_STUB_EXERCISE_SR_CODES)
        raise KeyError(vs_id)


def terminology() -> Any:
    """The real terminology when it exists, else the stub (tests ask it which codes are relevant)."""
    try:
        from service.terminology import get_terminology

        return get_terminology()
    except ImportError:
        return _StubTerminology()


@pytest.fixture(autouse=True)
def _terminology(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.fhir.queries as queries

    monkeypatch.setattr(queries, "_terminology", terminology)


@pytest.fixture(scope="session")
def sekmet_url() -> Iterator[str]:
    """FHIR base URL of a real sekmet-fhir server on a free loopback port (shared by the session)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    app, ctx = sekmet_app(base)
    with serve(app, port):
        yield base
    close_ctx(ctx)
