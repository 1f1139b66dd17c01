"""Opaque launch parameters are bounded generously: real EHRs send long self-contained JWTs as `code` and
`launch` (the reference launcher's codes are ~2,200 characters), and those must reach the token endpoint."""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qs, urlsplit

from tests.smart.conftest import Sandbox, callback_url

LAUNCHER_CODE_LENGTH = 2197  # a code the reference launcher issued with an inline JWKS (issue 14)


def _with_code(cb: str, code: str) -> str:
    return re.sub(r"code=[^&]+", f"code={code}", cb)


def test_a_launcher_length_code_reaches_the_token_endpoint(sandbox: Sandbox):
    with sandbox.browser() as b:
        cb = callback_url(b, sandbox)
        long_code = secrets.token_urlsafe(LAUNCHER_CODE_LENGTH)[:LAUNCHER_CODE_LENGTH]
        r = b.get(_with_code(cb, long_code))
        # The sandbox does not know this code: the refusal comes from its token endpoint, not from our bound.
        assert r.status_code == 400 and "The EHR refused the sign-in" in r.text and "invalid_grant" in r.text
        assert "carries no authorization code" not in r.text


def test_a_code_beyond_any_real_one_gets_a_readable_refusal(sandbox: Sandbox):
    with sandbox.browser() as b:
        cb = callback_url(b, sandbox)
        r = b.get(_with_code(cb, "a" * 10_001))
        assert r.status_code == 400 and "longer than this app accepts" in r.text and "10,001" in r.text


def test_a_long_launch_token_is_passed_on_to_the_authorization_server(sandbox: Sandbox):
    launch = secrets.token_urlsafe(3000)
    with sandbox.browser() as b:
        r = b.get("/smart/launch", params={"iss": sandbox.iss, "launch": launch})
        assert r.status_code == 302, r.text[:300]
        assert parse_qs(urlsplit(r.headers["location"]).query)["launch"] == [launch]
        r = b.get("/smart/launch", params={"iss": sandbox.iss, "launch": "x" * 10_001})
        assert r.status_code == 400 and "location" not in r.headers
