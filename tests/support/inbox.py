"""Signing in to the sandbox exercise-service inbox over HTTP (service.sandbox.staff asks who you are first)."""

from __future__ import annotations

import re

import httpx

INBOX = "/sandbox/exercise-service/"


def form_token(html: str) -> str:
    """The HMAC form token an inbox page embeds (every inbox POST needs it)."""
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "the page embeds the form token"
    return m.group(1)


def sign_in(c: httpx.Client, user: str = "jordan-blake") -> httpx.Response:
    """Sign in as a member of the exercise-service staff; the redirect to the sign-in page is asserted."""
    r = c.get(INBOX, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith(f"{INBOX}sign-in")
    page = c.get(r.headers["location"])
    assert page.status_code == 200
    return c.post(f"{INBOX}sign-in", data={"csrf": form_token(page.text), "user": user, "next": INBOX},
                  follow_redirects=False)


def fresh_token(c: httpx.Client) -> str:
    """A form token for the signed-in browser (read from the sign-in page, which every session can open)."""
    return form_token(c.get(f"{INBOX}sign-in").text)
