"""Shared fixtures: a real sandbox (service + embedded EHR) on a loopback port, in a temporary data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from service.app import create_app
from service.config import Settings
from tests.support.live import free_port, serve


def sandbox_settings(port: int, data_dir: Path, **overrides: object) -> Settings:
    """Settings for a sandbox on 127.0.0.1:port; tests speak plain http, so cookies are not Secure-only."""
    values: dict[str, object] = dict(
        mode="sandbox",
        public_url=f"http://127.0.0.1:{port}",
        data_dir=data_dir,
        cookie_secure=False,
        log_json=False,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of one sandbox shared by the whole session (FHIR at {url}/sandbox/fhir)."""
    port = free_port()
    settings = sandbox_settings(port, tmp_path_factory.mktemp("sandbox"))
    with serve(create_app(settings), port) as url:
        yield url
