"""Fixtures for the FHIR client tests: one real sekmet-fhir server over loopback HTTP for the session."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.fhir_client.sekmet_server import running_sekmet


@pytest.fixture(scope="session")
def sekmet_url() -> Iterator[str]:
    """FHIR base URL of a real sekmet-fhir server on a free loopback port (shared by the session)."""
    with running_sekmet() as base:
        yield base
