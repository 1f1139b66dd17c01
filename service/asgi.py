"""Small pure-ASGI helpers shared by the middlewares that must look at a request body before the app does."""

from __future__ import annotations

from starlette.types import Message, Receive


async def read_limited(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """Read a body of unknown length; stop as soon as it passes `limit` (True = too large)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body to the app once, then defers to the real one."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
