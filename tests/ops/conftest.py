"""Fixtures for the ops tests: a real FHIR server on loopback and `onco-exercise serve` subprocesses."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.ops.procs import ServeProcess, fhir_app
from tests.support.live import free_port, serve


@pytest.fixture(scope="session")
def fhir_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real FHIR R4 server on loopback (…/fhir); its root also serves /jwks.json."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    db = tmp_path_factory.mktemp("fhir") / "fhir.db"
    with serve(fhir_app(base, str(db)), port):
        yield base


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator:
    """Factory: start_serve(env) -> a running ServeProcess; every one is stopped at the end of the test."""
    procs: list[ServeProcess] = []

    def start(env: dict[str, str]) -> ServeProcess:
        p = ServeProcess(env, tmp_path / f"serve-{len(procs)}.log")
        procs.append(p)
        p.wait_ready()
        return p

    yield start
    for p in procs:
        p.stop()
