"""Short-lived tokens from the real sandbox authorization server: a page load refreshes at most once."""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from tests.smart.conftest import Sandbox, _sandbox, api, ehr_launch, forget_loaded, stored_tokens


@pytest.fixture(scope="module")
def short_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """The sandbox issuing 60-second access tokens (the issue's case: 11 refreshes for one page load)."""
    yield from _sandbox(tmp_path_factory.mktemp("smart-60s"), sandbox_access_token_seconds=60)


async def test_a_page_load_with_sixty_second_tokens_does_not_refresh(short_tokens: Sandbox):
    with short_tokens.browser() as b:
        got = ehr_launch(b, patient="onc-01")
        view = api(b, got.sid)
        assert view.status_code == 200 and view.json()["data"]["measurements"]
        rec = await stored_tokens(short_tokens, got.sid)
    assert rec["refreshed"] == 0 and rec["refresh_attempts"] == 0
    assert rec["lifetime"] == 60 and rec["expires_at"] > time.time()


async def test_a_load_with_a_token_due_for_refresh_refreshes_once(short_tokens: Sandbox):
    """Due at the start of the load: one refresh for all of the load's requests (about ten)."""
    with short_tokens.browser() as b:
        got = ehr_launch(b, patient="onc-02")
        assert api(b, got.sid).status_code == 200
        await forget_loaded(short_tokens, got.sid, expires_at=time.time() + 5)
        assert api(b, got.sid).status_code == 200
        rec = await stored_tokens(short_tokens, got.sid)
    assert rec["refreshed"] == 1 and rec["refresh_attempts"] == 1 and rec["expires_at"] > time.time() + 50
