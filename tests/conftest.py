"""Shared fixtures: a real sandbox (service + embedded EHR) on a loopback port, in a temporary data dir."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from fastapi import FastAPI

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


@contextmanager
def running_sandbox(data_dir: Path, **overrides: object) -> Iterator[tuple[str, FastAPI]]:
    """A sandbox app served on a free loopback port: (base URL, app)."""
    port = free_port()
    app = create_app(sandbox_settings(port, data_dir, **overrides))
    with serve(app, port) as url:
        yield url, app


@pytest.fixture(scope="session")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of one sandbox shared by the whole session (FHIR at {url}/sandbox/fhir)."""
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as (url, _):
        yield url
