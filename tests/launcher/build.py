"""Build (once, cached) a runnable copy of the reference SMART launcher from ../shared/vendor.

The launcher is a test peer written elsewhere; its code never enters this repository. At test time we copy the
unmodified vendored folder into a cache directory, `npm ci` it from the registry and build its React pages
(login, patient picker, simulated EHR frame), exactly as its ORIGIN.md describes. The cache key is a hash of
every vendored file (package-lock.json included), so a changed copy is rebuilt and an unchanged one costs
nothing. Several processes may ask at once: a file lock makes one build and the others wait for it.

    python -m tests.launcher.build      # build (or find) it and print its folder
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
NPM_CI_TIMEOUT = 20 * 60
REACT_BUILD_TIMEOUT = 15 * 60
MIN_NODE_MAJOR = 16  # the launcher's package.json engines


class LauncherUnavailable(RuntimeError):
    """The launcher cannot be built here; the message says what is missing."""


def vendor_dir() -> Path:
    """The unmodified launcher: ONCO_EXERCISE_LAUNCHER_SRC, else ../shared/vendor next to the repository."""
    env = os.environ.get("ONCO_EXERCISE_LAUNCHER_SRC")
    path = Path(env) if env else REPO.parent / "shared" / "vendor" / "smart-launcher-v2"
    if not (path / "package-lock.json").is_file():
        raise LauncherUnavailable(f"the reference SMART launcher is not at {path} (expected the vendored copy "
                                  "with its package-lock.json; set ONCO_EXERCISE_LAUNCHER_SRC to its folder)")
    return path


def cache_root() -> Path:
    env = os.environ.get("ONCO_EXERCISE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onco-exercise"


def source_key(src: Path) -> str:
    """Hash of every vendored file (path and bytes): the package-lock decides the install, the rest the build."""
    h = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file() and "node_modules" not in p.parts):
        h.update(str(path.relative_to(src)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def node_major() -> int:
    try:
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        raise LauncherUnavailable("Node.js is not installed (the launcher needs node and npm)") from None
    return int(out.strip().lstrip("v").split(".")[0])


def _run(cmd: list[str], cwd: Path, log: Path, timeout: int, env: dict[str, str]) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=env, check=True)
        except subprocess.CalledProcessError as exc:
            raise LauncherUnavailable(f"{' '.join(cmd[:2])} failed (exit {exc.returncode}); log: {log}") from None
        except subprocess.TimeoutExpired:
            raise LauncherUnavailable(f"{' '.join(cmd[:2])} took longer than {timeout} s; log: {log}") from None


def _build_into(src: Path, work: Path, log: Path) -> None:
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("node_modules", "build"))
    env = {k: v for k, v in os.environ.items() if k != "NODE_ENV"}  # NODE_ENV=production would skip devDeps
    env.update({"CI": "false", "GENERATE_SOURCEMAP": "false", "BROWSERSLIST_IGNORE_OLD_DATA": "1",
                "npm_config_fund": "false", "npm_config_audit": "false", "npm_config_update_notifier": "false"})
    # Its React build type-checks against @types/* devDependencies: install everything, as ORIGIN.md does.
    _run(["npm", "ci", "--loglevel=error"], work, log, NPM_CI_TIMEOUT, env)
    (work / ".source_version").write_text("local\n")  # npm 11 skips the postinstall that writes it
    _run([str(work / "node_modules" / ".bin" / "react-scripts"), "build"], work, log, REACT_BUILD_TIMEOUT, env)
    if not (work / "build" / "index.html").is_file():
        raise LauncherUnavailable(f"the launcher's React build produced no build/index.html; log: {log}")


def build_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """`target`, filled by `fill(work_dir)` the first time only: another process may be filling the same
    target, so a file lock makes one do it and the others wait; a half-built copy is never left as `target`."""
    done = target / ".onco-exercise-built"
    if done.is_file():
        return target
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return target
        work = target.parent / f"{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        started = time.monotonic()
        try:
            fill(work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
        done.write_text(f"built in {time.monotonic() - started:.0f} s\n")
    return target


def ensure_built(verbose: bool = False) -> Path:
    """The folder of a built launcher (built now if this copy has not been built before)."""
    src = vendor_dir()
    if node_major() < MIN_NODE_MAJOR:
        raise LauncherUnavailable(f"the launcher needs Node.js >= {MIN_NODE_MAJOR}")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"smart-launcher-{source_key(src)}"
    log = root / f"{target.name}.log"

    def fill(work: Path) -> None:
        log.write_text(f"building the SMART launcher from {src}\n")
        if verbose:
            print(f"building the reference SMART launcher (log: {log}) ...", file=sys.stderr)
        _build_into(src, work, log)

    return build_once(target, fill)


if __name__ == "__main__":
    try:
        print(ensure_built(verbose=True))
    except LauncherUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
