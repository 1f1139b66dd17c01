"""Fixtures for the storage tests: one real redis-server per session."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.ops.conftest import fhir_base, start_serve  # noqa: F401 - shared fixtures
from tests.storage.redis_server import redis_server


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
