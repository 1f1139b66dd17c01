"""Checking CDS client JWT signatures in a helper process, so the hook's event loop does not do the curve math.

Why: the ES384 check costs ~0.33 ms of CPU per hook call, and `cryptography` holds the GIL while it runs, so a
thread cannot take it off the event loop; a process can. The worker hands the check to its own child (one per
`serve` process) over a pipe (~0.02-0.04 ms of the worker's CPU) and serves other calls meanwhile.

The child runs exactly `signature.signature_valid`, the function the worker would otherwise run itself, and
answers valid / invalid / could not check. Nothing here relaxes a check: any doubt about the child (not
started yet, gone, slow, too many checks waiting, an answer it could not give) makes the worker check the
signature itself. The child gets no secrets: a minimal environment, public keys only, and it logs nothing.

Wire format, both ways: 4-byte little-endian length + JSON. Request `[id, header, alg, jwk, signing_input,
signature]`; answer `[id, 1 | 0 | 2]` (valid, invalid, could not check). The child first sends `[-1, 1]` once its
imports are done: until then (and whenever it is not running) the worker checks in-process.

`ONCO_EXERCISE_CDS_SIGNATURE_PROCESS`: `auto` (the default) uses the child when this process may run on two or
more CPUs (affinity and the cgroup's CPU quota), `on` always, `off` never.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import orjson

from .signature import public_key, signature_valid

log = logging.getLogger(__name__)

VALID, INVALID, UNCHECKED = 1, 0, 2
ANSWER_TIMEOUT_SECONDS = 0.5  # a check not answered by then (~1,000x its cost) is made in-process, and the
# child, stuck or starved, is replaced
# Checks in flight at the child; beyond this the worker checks in-process. Under load every call in flight may be
# waiting there at once (the worker reads each request's headers before any check is answered), and a lower bound
# (4) cost throughput: 588 against 661 calls/s at 8 clients. With a busy-loop on the second core, the child still
# kept ahead of checking in-process (560 against 512/s at 8 clients).
MAX_WAITING = 64
RESTART_AFTER_SECONDS = 5.0  # a child that exited is started again at most this often
MAX_EARLY_EXITS = 3  # children that exit before they are ready, in a row, before the worker stops starting them
GRACE_SECONDS = 0.05  # after the timeout, time for an answer already in the pipe (the worker's own loop may have
# stalled: its clock, not the child's, ran out)
# The child's environment: where Python finds the packages (the worker's own path) and how OpenSSL loads; nothing
# else (no settings, no state keys).
_PASSED_ENV = ("LD_LIBRARY_PATH", "OPENSSL_CONF", "OPENSSL_MODULES")
MAX_FRAME_BYTES = 64_000  # a token header + payload is far smaller; anything larger is checked in-process
_LENGTH = struct.Struct("<I")
_KEY_CACHE_SIZE = 64


class ChildUnavailable(Exception):
    """The child could not answer this check: the caller checks in-process."""


def available_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (containers)."""
    cpus = float(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else float(os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cpus


def wanted(setting: str, cpus: float) -> bool:
    """Whether to use the child under the setting (`auto`: only with two or more CPUs to spread over)."""
    return setting == "on" or (setting == "auto" and cpus >= 2)


class SignatureProcess:
    """The worker's side: one child, started on the first check, restarted (rate-limited) if it exits."""

    def __init__(self, *, timeout: float = ANSWER_TIMEOUT_SECONDS,
                 count: Callable[[str], None] = lambda where: None) -> None:
        self.timeout = timeout
        self._count = count  # told "helper" or "in_process" per check (the app's metric)
        self._child: asyncio.subprocess.Process | None = None  # the last child started
        self._proc: asyncio.subprocess.Process | None = None  # that child, once it said it is ready
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self._next_id = 0
        self._last_start = -1e9
        self._closed = False
        self._early_exits = 0
        self.checked_in_child = 0
        self.checked_in_process = 0

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def check(self, header: dict[str, Any], alg: str, key: Any, signing_input: bytes,
                    signature: str) -> bool:
        """The signature's verdict: from the child when it can answer, else computed here."""
        try:
            verdict = await self._ask(header, alg, key, signing_input, signature)
        except ChildUnavailable:
            self.checked_in_process += 1
            self._count("in_process")
            return signature_valid(header, alg, key, signing_input, signature)
        self.checked_in_child += 1
        self._count("helper")
        return verdict

    async def _ask(self, header: dict[str, Any], alg: str, key: Any, signing_input: bytes,
                   signature: str) -> bool:
        proc = self._ready()
        if proc is None or proc.stdin is None or len(self._waiting) >= MAX_WAITING:
            raise ChildUnavailable
        try:
            frame = orjson.dumps([self._next_id, header, alg, key.as_dict(private=False),
                                  signing_input.decode("ascii"), signature])
        except (TypeError, ValueError, AttributeError, orjson.JSONEncodeError):
            raise ChildUnavailable from None
        if len(frame) > MAX_FRAME_BYTES:
            raise ChildUnavailable
        request_id, self._next_id = self._next_id, self._next_id + 1
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            proc.stdin.write(_LENGTH.pack(len(frame)) + frame)  # a dead pipe drops it: the reader fails `answer`
            done, _ = await asyncio.wait({answer}, timeout=self.timeout)
            if not done:  # one more look: the answer may be in the pipe while this loop was busy
                done, _ = await asyncio.wait({answer}, timeout=GRACE_SECONDS)
            if not done:
                self._abandon(proc, "did not answer in time")
                raise ChildUnavailable
            code = answer.result()  # raises ChildUnavailable when the child went away
        finally:
            self._waiting.pop(request_id, None)
        if code == UNCHECKED:
            raise ChildUnavailable
        return code == VALID

    def _ready(self) -> asyncio.subprocess.Process | None:
        """The running child, or None (starting one in the background when it is time)."""
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        child_alive = self._child is not None and self._child.returncode is None  # starting, or being stopped
        if not self._closed and self._starting is None and not child_alive \
                and self._early_exits < MAX_EARLY_EXITS \
                and time.monotonic() - self._last_start >= RESTART_AFTER_SECONDS:
            self._last_start = time.monotonic()
            self._starting = asyncio.get_running_loop().create_task(self._start())
        return None

    async def _start(self) -> None:
        try:
            root = Path(__file__).resolve().parents[2]  # the folder holding the `service` package
            path = os.pathsep.join([str(root), *(p for p in sys.path if p)])
            env = {"PYTHONPATH": path, **{k: os.environ[k] for k in _PASSED_ENV if k in os.environ}}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-s", "-m", "service.cds_hooks.signature_process",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, env=env, cwd=str(root))
        except OSError as exc:
            log.warning("signature process could not start (%s): checking signatures in-process",
                        type(exc).__name__)
            return
        finally:
            self._starting = None
        if self._closed:
            await _stop(proc)
            return
        self._child = proc
        self._reader = asyncio.get_running_loop().create_task(self._read(proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                length = _LENGTH.unpack(await proc.stdout.readexactly(_LENGTH.size))[0]
                request_id, code = orjson.loads(await proc.stdout.readexactly(length))
                if request_id == -1 and self._proc is None and not self._closed:  # imports done: ready
                    self._proc = proc
                    self._early_exits = 0
                    log.info("checking CDS client signatures in a helper process (pid %d)", proc.pid)
                    continue
                answer = self._waiting.get(request_id)
                if answer is not None and not answer.done():
                    answer.set_result(code)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, TypeError, orjson.JSONDecodeError):
            pass
        finally:
            ready = self._proc is proc
            self._abandon(proc, "exited")
            await proc.wait()
            if not ready and not self._closed:
                self._early_exits += 1
                if self._early_exits >= MAX_EARLY_EXITS:
                    log.error("signature process exited before it was ready %d times in a row (code %s): no "
                              "more attempts; every signature is checked in-process", self._early_exits,
                              proc.returncode)
                else:
                    log.warning("signature process exited before it was ready (code %s): checking signatures "
                                "in-process; another start in %.0f s", proc.returncode, RESTART_AFTER_SECONDS)

    def _abandon(self, proc: asyncio.subprocess.Process, why: str) -> None:
        """Stop using this child: whatever is in flight is checked in-process; a new one starts later."""
        if self._proc is proc:
            self._proc = None
            if not self._closed:
                log.warning("signature process %s: checking signatures in-process until it is replaced", why)
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(ChildUnavailable())
        if proc.returncode is None:
            proc.kill()

    async def close(self) -> None:
        """Stop the child (it exits when its input closes; killed after 2 s)."""
        self._closed = True
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        self._proc = None
        if self._child is not None:
            await _stop(self._child)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 2.0)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


@asynccontextmanager
async def signature_process_lifespan(app: Any) -> AsyncIterator[None]:
    """Give the app a `SignatureProcess` when the setting wants one (the child starts on the first check) and
    stop its child on the way out."""
    from service.metrics import SIGNATURE_CHECKS  # the worker's side only: the child does not import it

    setting = getattr(app.state.settings, "cds_signature_process", "auto")
    count = {where: SIGNATURE_CHECKS.labels(where=where).inc for where in ("helper", "in_process")}
    checker = SignatureProcess(count=lambda where: count[where]()) if wanted(setting, available_cpus()) else None
    app.state.signature_process = checker
    try:
        yield
    finally:
        app.state.signature_process = None
        if checker is not None:
            await checker.close()


# -- the child -------------------------------------------------------------------------------------------------


def _answer(request: Any, keys: dict[bytes, Any]) -> list[int]:
    request_id = request[0] if isinstance(request, list) and request else -1
    try:
        _, header, alg, jwk, signing_input, signature = request
        cache_key = orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS)
        key = keys.get(cache_key)
        if key is None:
            if len(keys) >= _KEY_CACHE_SIZE:
                keys.clear()
            key = keys[cache_key] = public_key(jwk)
        valid = signature_valid(header, alg, key, signing_input.encode("ascii"), signature)
    except Exception:  # noqa: BLE001 - anything unexpected: the worker checks it itself
        return [request_id, UNCHECKED]
    return [request_id, VALID if valid else INVALID]


def child_main() -> int:
    """Answer checks from stdin until it closes. Ctrl+C in a terminal goes to the worker, not here."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl+C or a process-group SIGTERM is the
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # worker's to handle; this child exits when its input closes
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    keys: dict[bytes, Any] = {}
    hello = orjson.dumps([-1, VALID])
    sink.write(_LENGTH.pack(len(hello)) + hello)
    sink.flush()
    while True:
        head = source.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return 0
        length = _LENGTH.unpack(head)[0]
        if length > MAX_FRAME_BYTES:
            return 1
        body = source.read(length)
        if len(body) < length:
            return 0
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 1
        answer = orjson.dumps(_answer(request, keys))
        sink.write(_LENGTH.pack(len(answer)) + answer)
        sink.flush()


if __name__ == "__main__":
    raise SystemExit(child_main())
