"""The HTTP server we run (uvicorn with httptools), with the limits uvicorn does not have on its own.

Why: uvicorn accepts a request head of any size (a 128 MB header was read into memory), any number of
header fields, and waits forever for a connection that sends nothing or sends its head a byte at a time.
`LimitedHttpToolsProtocol` adds, per connection:
- a head-size limit (request line + headers, `max_header_bytes`): 431, or 414 when the URL alone passes it;
- a header-count limit (`max_headers`): 431;
- a head timeout (`header_timeout_seconds`) from the connection's start or the previous response: a
  connection that has not delivered a complete request head by then is answered 408 (or just closed when it
  sent nothing) - half-open and slowloris clients;
and `server_config` sets uvicorn's keep-alive timeout and graceful-shutdown time. Slow bodies are the ASGI
layer's job (service.ops: `body_timeout_seconds` between two pieces of a body, then 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import metrics

_REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus head size / count / time limits (class attributes set by `limited_protocol`)."""

    max_header_bytes = 16384
    max_headers = 100
    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._reject: int | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._await_head()

    # -- state -------------------------------------------------------------------------------------------

    def _await_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._cancel_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()  # type: ignore[union-attr]
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        metrics.HTTP_CLIENT_GONE.labels("header-timeout").inc()
        if self._head_bytes:
            self._send_status(408, "the request head did not arrive in time")
        else:
            self.transport.close()

    def _send_status(self, status: int, message: str) -> None:
        body = ('{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"'
                + ("timeout" if status == 408 else "too-long") + '","diagnostics":"' + message + '"}]}').encode()
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/fhir+json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body)))
        self._cancel_timer()
        self._in_head = False
        if not self.transport.is_closing():
            self.transport.write(head + body)
            self.transport.close()

    # -- uvicorn hooks -----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._in_head and self._head_bytes + len(data) > self.max_header_bytes:
            room = max(0, self.max_header_bytes - self._head_bytes)
            self._head_bytes += room
            super().data_received(data[:room])
            if self._in_head and not self.transport.is_closing():  # no end of head within the limit
                metrics.HTTP_CLIENT_GONE.labels("header-too-large").inc()
                self._send_status(414 if len(getattr(self, "url", b"")) > self.max_header_bytes // 2 else 431,
                                  f"the request head is larger than {self.max_header_bytes} bytes")
                return
            if data[room:] and not self.transport.is_closing():
                super().data_received(data[room:])
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if self._reject is not None:  # our own limit stopped the parser: answer with its status
            status, self._reject = self._reject, None
            self._send_status(status, f"more than {self.max_headers} header fields")
            return
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:
            self._in_head, self._head_bytes, self._header_count = True, 0, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            metrics.HTTP_CLIENT_GONE.labels("too-many-headers").inc()
            self._reject = 431
            raise ValueError("too many header fields")  # stops the parser; send_400_response answers 431
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)


def limited_protocol(settings: Any) -> type[LimitedHttpToolsProtocol]:
    """The protocol class with this configuration's limits."""
    return type("ConfiguredHttpToolsProtocol", (LimitedHttpToolsProtocol,), {
        "max_header_bytes": int(settings.max_header_bytes), "max_headers": int(settings.max_headers),
        "header_timeout": float(settings.header_timeout_seconds)})


def server_config(app: Any, settings: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn.Config for `serve` and `sandbox`: our protocol, keep-alive timeout, no server header, our logs."""
    options.setdefault("timeout_graceful_shutdown", 10)
    return uvicorn.Config(app, host=host, port=port, http=limited_protocol(settings),
                          timeout_keep_alive=max(1, int(settings.keepalive_seconds)), log_config=None,
                          access_log=False, server_header=False, lifespan="on", **options)
