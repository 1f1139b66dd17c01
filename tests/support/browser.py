"""Headless Debian Chromium through Playwright (never `playwright install`), and screenshots, for every
browser test: the e2e suite, the iframe test and the reference-launcher interop suite."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Blocks unpartitioned third-party cookies, as browsers increasingly do by default.
BLOCK_THIRD_PARTY_COOKIES = "--test-third-party-cookie-phaseout"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# The machine is shared and slow: every wait is on a condition, with room to spare.
WAIT_MS = 30_000


def need_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (./dev test does)")


@contextmanager
def chromium_page(profile: Path, *, extra_args: tuple[str, ...] = (), width: int = 1280,
                  height: int = 900) -> Iterator[Any]:
    """A page in a fresh persistent Chromium profile, every wait bounded by WAIT_MS."""
    need_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra_args], headless=True,
            viewport={"width": width, "height": height}, locale="en-GB", timezone_id="UTC")
        context.set_default_timeout(WAIT_MS)
        context.set_default_navigation_timeout(WAIT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def screenshot_taker(suite: str, test_name: str) -> Callable[[Any, str], Path]:
    """take(page, "step") saves a full-page PNG as tests/artifacts/<suite>/<test>/<NN>-<step>.png."""
    folder = ARTIFACTS / suite / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    counter = iter(range(1, 100))

    def take(page: Any, step: str) -> Path:
        path = folder / f"{next(counter):02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def inbox_sign_in(page: Any) -> None:
    """The exercise-service inbox asks who you are first (service.sandbox.staff): sign in as the default."""
    if "/sign-in" in page.url:
        page.get_by_role("button", name="Sign in").click()
