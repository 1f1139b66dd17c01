"""Real processes for the chaos suite: a restartable redis-server with durable storage and the real sandbox
(`onco-exercise sandbox`) as the hospital's EHR, which can be paused (SIGSTOP), resumed, killed and restarted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.ops.procs import ONCO, onco_env
from tests.storage.redis_server import REDIS_SERVER
from tests.support.live import free_port


def wait_until(predicate, timeout: float, what: str, step: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL if the process has not gone after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Redis:
    """redis-server on a fixed port with an fsync-always append-only file: a stop loses nothing."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction",
             "--logfile", str(self.dir / "redis.log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(pong, 10, "redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _terminate(self.proc, 10)
        self.proc = None


class Ehr:
    """The sandbox (FHIR server + SMART authorization server) in its own process, on a fixed port."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.iss = f"{self.url}/sandbox/fhir"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(tmp / "ehr.log", "ab")

    def start(self) -> None:
        env = onco_env(self.dir, log_json="false")
        self.proc = subprocess.Popen([ONCO, "sandbox", "--port", str(self.port), "--data-dir", str(self.dir)],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)

        def up() -> bool:
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 90, "the sandbox EHR", step=0.1)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            os.kill(self.proc.pid, signal.SIGCONT) if self.proc.poll() is None else None
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
            _terminate(self.proc, 15)
        self.proc = None

    def fhir(self) -> httpx.Client:
        """A reader on the EHR's FHIR server (a sandbox user token minted with its own keys)."""
        from types import SimpleNamespace

        from service.sandbox.auth_tokens import issue_access_token
        from service.sandbox.keys import load_keys

        keys = load_keys(self.dir / "sandbox")
        rt = SimpleNamespace(settings=SimpleNamespace(sandbox_access_token_seconds=600), keys=keys,
                             issuer=f"{self.url}/sandbox/auth", fhir_base=self.iss)
        token, _ = issue_access_token(rt, scope="user/*.rs", client_id="onco-exercise", patient=None)
        return httpx.Client(base_url=self.iss, timeout=30,
                            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
