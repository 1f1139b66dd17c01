"""Benchmark: machine instructions per CDS hook call (valgrind's callgrind), and which code runs them.

Why instructions: a wall-clock A/B of a small change is not reliable on this machine. Two processes of the same
code differ by up to ~5% in-process (hash seed, memory layout), more than most single changes are worth. The
instructions one call executes repeat to within ~0.2%. They are not time (cache misses and SIMD are not
weighed), so a change is confirmed under load with `cds_hooks_wrk.py`. This script only attributes.

What runs: `onco-exercise serve`'s app in-process (`create_app` with the settings `serve` reads, the SQLite
store, every middleware), driven through raw ASGI: no uvicorn and no sockets. Each call is the wrk benchmark's
encounter-start body (199 resources, 132 KB) with a new patient id and its own pre-signed ES384 JWT (unique
jti), and each call answers the referral card with its draft. Only the calls are counted (callgrind counts
inside `sys.call_tracing` only, which runs them). Reported per call: all
instructions, and each shared object's own instructions (cryptography's OpenSSL: the ES384 check and sealing;
orjson: parsing and dumps; the Python interpreter: our code, FastAPI, freeing objects; SQLite; ...).

    .venv/bin/python benchmarks/hook_instructions.py [--calls 150] [--ref REF ...] [--repeat 1] [--parts]

`--parts` also counts the stages of a call one by one, each repeated on one parsed body of the same patient:
parsing the body and freeing it, screening the prefetch, the snapshot (with the hook's lookback), the rules,
the card with its draft, and writing the answer.

`--ref REF` measures the service at REF too, from `git archive` (as `cds_hooks_wrk.py --baseline`). Targets run
two at a time (valgrind is single-threaded; about a minute each). Needs valgrind (`apt-get install valgrind`).
Prints a table and writes benchmarks/results/hook_instructions.json.

The window also holds the outbox's retry tick (~55 K instructions a second): compare runs with the same
`--calls`.

What instructions miss: callgrind counts user-space instructions only. Time in the kernel (the SQLite store's
WAL writes, socket I/O under uvicorn) and cache misses are not in the count. `--wall` times the same calls
without valgrind (CPU seconds, 3 rounds, medians), once with the file store `serve` uses and once with SQLite in
memory: the difference is what the store's three writes per call cost, kernel time included.
"""

from __future__ import annotations

import argparse
import atexit
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "hook_instructions.json"
WARMUP = 30
# Shared objects by what they hold (first match wins); anything else is reported under its file name.
GROUPS = (
    ("cryptography (OpenSSL: ES384 check, sealing)", re.compile(r"cryptography/.*_rust")),
    ("orjson (parse, dumps)", re.compile(r"orjson")),
    ("Python interpreter (our code, frameworks, freeing)", re.compile(r"libpython3|/bin/python3")),
    ("SQLite", re.compile(r"libsqlite3|_sqlite3")),
    ("uvloop", re.compile(r"uvloop")),
    ("libc (memory copies, malloc)", re.compile(r"libc\.so")),
)


# -- the child: the app under callgrind ------------------------------------------------------------------------

def child(src: str, calls: int, timed: bool = False) -> None:
    """Drive `calls` hook calls through the serve app, counted by callgrind (or, `timed`, by CPU seconds)."""
    sys.path[:0] = [src, str(HERE)]  # the service at `src`; the bench body and signer from this checkout
    from joserfc import jwt
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-384", parameters={"kid": "bench-1"})
    base = "http://127.0.0.1:8765"
    data = tempfile.mkdtemp(prefix="hook-instr-")
    atexit.register(shutil.rmtree, data, True)  # it holds the state keys
    os.environ.update({
        "ONCO_EXERCISE_PUBLIC_URL": base, "ONCO_EXERCISE_DATA_DIR": f"{data}/service",
        "ONCO_EXERCISE_FHIR_SERVERS": "http://127.0.0.1:9/fhir", "ONCO_EXERCISE_LOG_LEVEL": "WARNING",
        "ONCO_EXERCISE_HOOK_BUDGET_SECONDS": "2", "ONCO_EXERCISE_COOKIE_SECURE": "false",
        # the whole call in this one process, the signature check included (as counted before the signature
        # process existed; `cds_hooks_wrk.py` measures the worker with its helper)
        "ONCO_EXERCISE_CDS_SIGNATURE_PROCESS": "off",
        "ONCO_EXERCISE_CDS_CLIENTS": json.dumps([{"iss": "bench", "jwks": {"keys": [key.as_dict(private=False)]}}]),
    })
    from cds_hooks import PATH, hook_template, make_bodies

    from service.app import create_app
    from service.cli import _load_settings
    from service.logs import configure_logging

    configure_logging("WARNING", False)
    app = create_app(_load_settings(mode="serve"))
    _, template = hook_template(27)
    total = calls + WARMUP
    bodies = make_bodies(template, total)
    now = int(time.time())
    tokens = [jwt.encode({"alg": "ES384", "kid": "bench-1", "typ": "JWT"},
                         {"iss": "bench", "aud": f"{base}{PATH}", "exp": now + 300, "iat": now,
                          "jti": os.urandom(12).hex()}, key, algorithms=["ES384"]) for _ in range(total)]

    async def call(body: bytes, token: str) -> None:
        chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]  # as uvicorn hands a large body over
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "query_string": b"", "root_path": "",
                 "server": ("127.0.0.1", 8765), "client": ("127.0.0.1", 50000),
                 "headers": [(b"host", b"127.0.0.1:8765"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode()),
                             (b"authorization", f"Bearer {token}".encode())]}
        pending = iter(chunks)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            chunk = next(pending, None)
            if chunk is None:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunk, "more_body": chunk is not chunks[-1]}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        answer = b"".join(m.get("body", b"") for m in sent[1:])
        if sent[0]["status"] != 200 or b'"type":"create"' not in answer:
            raise SystemExit(f"not a referral card: {sent[0]['status']} {answer[:300]!r}")

    async def warm() -> None:
        for i in range(WARMUP):
            await call(bodies[calls + i], tokens[calls + i])
        await asyncio.sleep(0.05)  # background card records written before counting starts

    async def counted() -> None:
        for i in range(calls):
            await call(bodies[i], tokens[i])
            await asyncio.sleep(0)  # the background write of each call's card record runs now, counted

    import uvloop

    loop = uvloop.new_event_loop()
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    loop.run_until_complete(warm())
    if timed:
        began = time.process_time()
        loop.run_until_complete(counted())
        print(json.dumps({"cpu_ms_per_call": (time.process_time() - began) / calls * 1000}))
    else:
        counting(loop.run_until_complete, counted())
    loop.run_until_complete(lifespan.__aexit__(None, None, None))


PARTS = ("parse and free", "screen", "snapshot", "rules", "card and draft", "answer bytes")


def child_part(src: str, part: str, calls: int) -> None:
    """Count one stage of the hook call, repeated `calls` times on one body."""
    sys.path[:0] = [src, str(HERE)]
    from datetime import datetime, timezone

    import orjson
    from cds_hooks import hook_template, make_bodies

    from service.cds_hooks.cards import CardContext, decide
    from service.cds_hooks.models import parse_hook_request
    from service.cds_hooks.prefetch import screen
    from service.clinical.lookback import hook_lookback
    from service.clinical.prescribe import prescribe
    from service.clinical.snapshot import build_snapshot

    _, template = hook_template(27)
    body = make_bodies(template, 1)[0]
    now = datetime.now(timezone.utc)
    req = parse_hook_request(body, "encounter-start")
    items = screen(req)[0]
    snapshot = build_snapshot(items, now, lookback=hook_lookback())
    rx = prescribe(snapshot, now)
    ctx = CardContext(service_id="onco-exercise-encounter-start", public_url="http://127.0.0.1:8765",
                      exercise_service_ref="Organization/exercise-service", user_ref=req.user_id,
                      hook_instance=req.hook_instance, encounter_id=req.encounter_id)
    plan = decide(rx, snapshot, ctx, complete=True, missing=(), budget=2.0)
    stage = {
        "parse and free": lambda: parse_hook_request(body, "encounter-start"),
        "screen": lambda: screen(req),
        "snapshot": lambda: build_snapshot(items, now, lookback=hook_lookback()),
        "rules": lambda: prescribe(snapshot, now),
        "card and draft": lambda: decide(rx, snapshot, ctx, complete=True, missing=(), budget=2.0),
        "answer bytes": lambda: orjson.dumps({"cards": [plan.card]}),
    }[part]
    for _ in range(5):
        stage()
    from service.ops import freeze_heap

    freeze_heap()  # as `serve` does after start-up: the collector does not walk what is loaded

    def repeated() -> None:
        for _ in range(calls):
            stage()  # each result freed inside the window, as a call frees its body

    counting(repeated)


def counting(fn: Any, *args: Any) -> None:
    """Run fn(*args) with callgrind counting: it counts only inside `sys.call_tracing` (`--toggle-collect`), a C
    function nothing else here calls."""
    sys.call_tracing(fn, args)


# -- the parent: run targets, read the dumps -------------------------------------------------------------------

def self_by_object(path: Path) -> tuple[int, dict[str, int]]:
    """(the dump's total, each shared object's own instructions) from a callgrind output file."""
    names: dict[str, str] = {}
    own: dict[str, int] = defaultdict(int)
    current = "?"
    skip_next = False
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("ob=", "cob=")):  # an object's name is given once, where it first appears
            ident, _, name = line.partition("=")[2].partition(" ")
            if name:
                names[ident] = name
            if line.startswith("ob="):
                current = names.get(ident, ident)
        elif line.startswith("calls="):
            skip_next = True  # the next cost line is the call's inclusive cost, not this function's own
        elif line.startswith("summary:") or line.startswith("totals:"):
            total = int(line.split()[1])
        elif line and (line[0].isdigit() or line[0] in "+-*"):
            if skip_next:
                skip_next = False
                continue
            parts = line.split()
            if len(parts) > 1:
                own[current] += int(parts[1])
    return total, dict(own)


def grouped(own: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for name, n in own.items():
        label = next((g for g, pattern in GROUPS if pattern.search(name)), None)
        out[label or Path(name).name] += n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def measure(src: Path, calls: int, work: Path, tag: str, part: str | None = None) -> dict[str, Any]:
    out = work / f"callgrind.{tag}"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=no",
           "--toggle-collect=sys_call_tracing", sys.executable, str(Path(__file__)),
           "--child", str(src), "--calls", str(calls), *(["--part", part] if part else [])]
    began = time.monotonic()
    # a fixed hash seed: with a random one, dict and set probing alone moves the count by up to ~1%
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"{tag}: valgrind run failed:\n{done.stderr[-2000:]}")
    total, own = self_by_object(out)
    return {"instructions_per_call": total / calls, "own_per_call": {k: v / calls for k, v in grouped(own).items()},
            "accounted": sum(own.values()) / total if total else 0.0, "seconds": round(time.monotonic() - began)}


def wall(src: Path, calls: int, store: str) -> float:
    """CPU milliseconds per call without valgrind, with the file store (`serve`'s) or SQLite in memory."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if store == "memory":
        env["ONCO_EXERCISE_STORAGE_URL"] = "sqlite:///:memory:"
    done = subprocess.run([sys.executable, str(Path(__file__)), "--child", str(src), "--calls", str(calls),
                           "--timed"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"timed run failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["cpu_ms_per_call"])


def wall_rounds(calls: int, rounds: int = 3) -> dict[str, Any]:
    """Alternate the two stores, one process at a time (nothing else should run), and take medians."""
    runs: dict[str, list[float]] = {"file": [], "memory": []}
    for _ in range(rounds):
        for store in runs:
            runs[store].append(wall(ROOT, calls, store))
    med = {store: statistics.median(v) for store, v in runs.items()}
    print(f"CPU per call, {calls} calls x {rounds} rounds: file store {med['file']:.3f} ms "
          f"({' / '.join(f'{v:.3f}' for v in runs['file'])}), in memory {med['memory']:.3f} ms "
          f"({' / '.join(f'{v:.3f}' for v in runs['memory'])}): the store's writes {med['file'] - med['memory']:.3f} ms")
    return {"calls": calls, "cpu_ms_per_call": runs, "median": med, "store_ms": med["file"] - med["memory"]}


def head() -> str:
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "service", "terminology", "profiles"],
                           capture_output=True, text=True).stdout.strip()
    return sha.stdout.strip() + ("+changes" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=150, help="hook calls counted per target")
    parser.add_argument("--ref", action="append", default=[], help="also measure the service at this git ref")
    parser.add_argument("--repeat", type=int, default=1, help="measure each target this many times")
    parser.add_argument("--parts", action="store_true", help="also count each stage of a call on its own")
    parser.add_argument("--wall", action="store_true",
                        help="instead, time calls without valgrind, with the file store and in memory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.part:
            child_part(args.child, args.part, args.calls)
        else:
            child(args.child, args.calls, args.timed)
        return 0
    if args.wall:
        return save_wall(wall_rounds(max(args.calls, 1000)))
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as t:
        work = Path(t)
        from cds_hooks_wrk import checkout  # git archive of REF, as its --baseline

        targets = [(head(), ROOT)] + [(ref, checkout(ref, work)) for ref in args.ref]
        jobs = [(name, src, i) for name, src in targets for i in range(args.repeat)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(pool.map(lambda j: (j[0], measure(j[1], args.calls, work, f"{j[0]}-{j[2]}")), jobs))
            stages = list(pool.map(lambda p: (p, measure(ROOT, 100, work, f"part-{PARTS.index(p)}", p)), PARTS)
                          if args.parts else ())
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, r in runs:
        results[name].append(r)
    for name, rs in results.items():
        counts = [r["instructions_per_call"] / 1e6 for r in rs]
        print(f"{name}: {' / '.join(f'{c:.3f}' for c in counts)} M instructions per call "
              f"({rs[0]['accounted']:.1%} of the dump attributed to an object)")
        for label, n in rs[0]["own_per_call"].items():
            if n / rs[0]["instructions_per_call"] >= 0.005:
                print(f"    {n / 1e6:7.3f} M  {n / rs[0]['instructions_per_call']:6.1%}  {label}")
    if stages:
        whole = results[targets[0][0]][0]["instructions_per_call"]
        print(f"stages of one call ({targets[0][0]}, each on its own):")
        for part, r in stages:
            n = r["instructions_per_call"]
            print(f"    {n / 1e6:7.3f} M  {n / whole:6.1%}  {part}")
    RESULTS.parent.mkdir(exist_ok=True)
    kept = json.loads(RESULTS.read_text()).get("wall") if RESULTS.exists() else None  # from --wall
    RESULTS.write_text(json.dumps({**({"wall": kept} if kept else {}),
        "benchmark": "hook_instructions", "calls": args.calls, "date": time.strftime("%Y-%m-%d"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True,
                                               text=True).stdout.strip()},
        "targets": results,
        "stages": {part: r["instructions_per_call"] for part, r in stages},
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


def save_wall(figures: dict[str, Any]) -> int:
    """Add the timed figures to the result file, beside the instruction counts."""
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": "hook_instructions"}
    saved["wall"] = {"date": time.strftime("%Y-%m-%d"), "commit": head(), **figures}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
