"""Structured logs with a request id, and a redaction layer that keeps credentials out of every log line.

Redaction is installed as the process's LogRecord factory, so it applies to every record from every logger
(ours, uvicorn's, httpx's, third-party) before any handler or formatter sees it — including handlers that
tests or operators attach later. Message, arguments, exception text and stack text are scrubbed of bearer
tokens, JWTs and OAuth parameters (`access_token`, `code_verifier`, `client_assertion`, ...).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from contextvars import ContextVar
from typing import Any

REDACTED = "[REDACTED]"

request_id_var: ContextVar[str | None] = ContextVar("onco_request_id", default=None)

_SECRET_KEYS = (
    "access_token|refresh_token|id_token|code_verifier|client_assertion|client_secret|assertion|password"
    "|subject_token|actor_token"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization header values: "Bearer <token>", "Basic <b64 user:password>"
    (re.compile(r"(?i)\b(bearer)(\s+|%20|\+)[A-Za-z0-9\-._~+/]+=*"), r"\1\2" + REDACTED),
    (re.compile(r"(?i)\b(basic)(\s+|%20|\+)[A-Za-z0-9+/]{12,}=*"), r"\1\2" + REDACTED),
    # Compact JWS/JWE anywhere (header always starts with base64url('{"') = "eyJ")
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){1,4}"), REDACTED),
    # key=value / "key": "value" / 'key': 'value' / key: value for OAuth secrets
    (re.compile(r"(?i)(\b(?:" + _SECRET_KEYS + r")\b[\"']?\s*(?:=|:)\s*[\"']?)(?!\[REDACTED\])"
                r"[^\"'&\s,;}\]]+"), r"\1" + REDACTED),
    # one-time OAuth values in query strings (authorization code, state, launch)
    (re.compile(r"([?&](?:code|state|launch)=)(?!\[REDACTED\])[^&\s\"']+"), r"\1" + REDACTED),
)
# Cheap pre-check on the lower-cased text (faster than running every case-insensitive pattern).
_QUICK = re.compile(r"bearer|basic|eyj|token|verifier|assertion|secret|password|code=|state=|launch=")


def scrub(text: str) -> str:
    """Text with every credential-looking substring replaced by [REDACTED]."""
    if not _QUICK.search(text.lower()):  # the common case: nothing that could be a secret
        return text
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _scrub_arg(arg: Any) -> Any:
    if isinstance(arg, (int, float, bool)) or arg is None:
        return arg
    if isinstance(arg, str):
        return scrub(arg)
    try:
        text = str(arg)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break logging
        return "<unprintable>"
    cleaned = scrub(text)
    return arg if cleaned == text else cleaned


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Scrub a record in place (message, args, exception and stack text); returns it.

    Clean messages (the common case) cost one check. Otherwise arguments are scrubbed one by one first,
    which keeps the args tuple's shape (uvicorn's access formatter unpacks it); when a secret only shows in
    the formatted message (`"access_token=%s", tok`, or a dict argument), the record is replaced by its
    scrubbed, pre-formatted message.
    """
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed call is logging's to report, not ours
        message = None
    if message is not None and scrub(message) != message:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_scrub_arg(a) for a in record.args)
            message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    elif record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    if not hasattr(record, "request_id"):
        record.request_id = request_id_var.get()
    return record


_installed_factory: Any = None


def install_redaction() -> None:
    """Make every LogRecord in this process pass through `scrub_record` (idempotent)."""
    global _installed_factory
    current = logging.getLogRecordFactory()
    if current is _installed_factory and current is not None:
        return
    base = current

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return scrub_record(base(*args, **kwargs))

    _installed_factory = factory
    logging.setLogRecordFactory(factory)


class RedactionFilter(logging.Filter):
    """The same scrubbing as a filter, for handlers in processes where the record factory was replaced.

    Our own handler needs none: the factory scrubs records and our formatters scrub their output."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "request_id", "taskName", "color_message"
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = _jsonable(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        # scrubbing the serialised line covers extras too ("access_token": "..." inside a dict)
        return scrub(json.dumps(out, ensure_ascii=False, default=str))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = None
        return scrub(super().format(record))


_HANDLER_MARK = "_onco_exercise_handler"
# Libraries whose INFO lines carry full URLs (FHIR search strings hold patient ids): warnings only.
_QUIET = ("httpx", "httpcore", "hpack", "multipart", "sekmet")


def configure_logging(level: str = "INFO", json_output: bool = True, stream: Any = None) -> None:
    """Set up the root logger once per process (calling again replaces our handler, nothing else)."""
    install_redaction()
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stdout)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if json_output else
                         _PlainFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
