"""Load: the running service on loopback, a realistic mix of hook calls, SMART launches and signs.

What runs: `onco-exercise sandbox --port <free> --data-dir <tmp>` in a subprocess (the service and its
embedded EHR: sekmet FHIR server, SMART authorization server, cohort of 30 oncology patients; one uvicorn
worker, SQLite store), driven by an asyncio/httpx client in this process at increasing concurrency
(default 1, 4, 16 callers, `--seconds` each, default 60). Every caller loops until its level's deadline,
picking one operation per iteration (weights below); all calls go over real loopback HTTP:

- `hook-prefetch` (45%): encounter-start / patient-view with the full prefetch an EHR would send (filled once
  per patient at start from the sandbox FHIR server, with the service's own prefetch templates) and a fresh
  ES384 client JWT signed with the sandbox CDS client's key (`service/sandbox/cds_client.py`: kid, jku, aud =
  exact URL, unique jti) — the service verifies it against the sandbox JWKS like any EHR's;
- `hook-fallback` (20%): the same without prefetch, `fhirServer` + `fhirAuthorization` (a real sandbox access
  token): the service reads the patient from the FHIR server within its hook budget;
- `launch` (25%): a whole SMART EHR launch as a browser does it: `POST /sandbox/auth/launch`, `GET
  /smart/launch` (discovery, PKCE, redirect), the authorization endpoint, the callback (token exchange,
  id_token check), the app page, then `GET /smart/api/prescription` (waits for the patient's data);
- `sign` (10%): sign & send of a session launched earlier (the full write-back transaction to FHIR).

Each operation must succeed (200 with the expected shape); anything else is an error (target: 0). Reported
per level: operations and throughput, latency p50/p95/p99 overall and per operation, error count, and the
server process's memory (VmHWM = peak RSS so far, VmRSS now, from /proc/<pid>/status). The load generator
shares the 2 cores with the server: the figures are a floor for a real deployment, not a ceiling.

    .venv/bin/python benchmarks/load.py [--seconds 60] [--levels 1,4,16] [--out benchmarks/results/load.json]

Prints a table and writes the JSON. Bounded: every loop stops at its deadline; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "load.json"
ES = "onco-exercise-encounter-start"
PV = "onco-exercise-patient-view"
PATIENTS = [f"onc-{i:02d}" for i in range(1, 31)]
WEIGHTS = {"hook-prefetch": 45, "hook-fallback": 20, "launch": 25, "sign": 10}
OP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_memory(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS in KiB, from /proc."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


# ---------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------


class Sandbox:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.port, self.data_dir = port, data_dir
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONCO_EXERCISE_")}
        env.update(ONCO_EXERCISE_LOG_LEVEL="WARNING", ONCO_EXERCISE_COOKIE_SECURE="false")
        self.log = open(data_dir / "server.log", "wb")
        exe = str(Path(sys.executable).parent / "onco-exercise")
        self.proc = subprocess.Popen([exe, "sandbox", "--port", str(port), "--data-dir", str(data_dir)],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sandbox exited {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("sandbox did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        return (self.data_dir / "server.log").read_text(errors="replace")


# ---------------------------------------------------------------------------------------------------------
# The EHR side: real JWTs, real tokens, prefetch
# ---------------------------------------------------------------------------------------------------------


class Ehr:
    def __init__(self, url: str, data_dir: Path) -> None:
        from service.sandbox.cds_client import CdsClient
        from service.sandbox.keys import load_keys

        self.url = url
        self.fhir_base = f"{url}/sandbox/fhir"
        self.keys = load_keys(data_dir / "sandbox")  # the sandbox wrote them at start; we only read
        self.rt = SimpleNamespace(settings=SimpleNamespace(sandbox_access_token_seconds=3600), keys=self.keys,
                                  issuer=f"{url}/sandbox/auth", fhir_base=self.fhir_base)
        admin = self.access_token("user/*.rs", None)
        self.fhir = httpx.AsyncClient(base_url=self.fhir_base + "/", timeout=60,
                                      headers={"Authorization": f"Bearer {admin}"})
        self.cds = CdsClient(public_url=url, fhir_base=self.fhir_base, signing_key=self.keys.cds, fhir=self.fhir)
        self.prefetch: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}

    def access_token(self, scope: str, patient: str | None) -> str:
        from service.sandbox.auth_tokens import issue_access_token

        token, _ = issue_access_token(self.rt, scope=scope, client_id="onco-exercise", patient=patient,
                                      fhir_user="Practitioner/sandbox-clinician", lifetime=3600)
        return token

    async def prepare(self) -> None:
        disc = await self.cds.discover(self.url)
        if disc.error:
            raise RuntimeError(f"discovery failed: {disc.error}")
        service = next(s for s in disc.services if s.id == ES)
        for pid in PATIENTS:
            ctx = {"userId": "Practitioner/sandbox-clinician", "patientId": pid, "encounterId": f"enc-{pid}"}
            self.prefetch[pid] = await self.cds.fill_prefetch(service, ctx)
            self.tokens[pid] = self.access_token("patient/*.rs", pid)

    def hook_request(self, service_id: str, pid: str, prefetch: bool) -> tuple[str, bytes, dict[str, str]]:
        context: dict[str, Any] = {"userId": "Practitioner/sandbox-clinician", "patientId": pid}
        if service_id == ES:
            context["encounterId"] = f"enc-{pid}"
        body: dict[str, Any] = {"hook": "encounter-start" if service_id == ES else "patient-view",
                                "hookInstance": str(uuid.uuid4()), "context": context,
                                "fhirServer": self.fhir_base,
                                "fhirAuthorization": {"access_token": self.tokens[pid], "token_type": "Bearer",
                                                      "expires_in": 3600, "scope": "patient/*.rs",
                                                      "subject": "onco-exercise", "patient": pid}}
        if prefetch:
            body["prefetch"] = self.prefetch[pid]
        url = f"{self.url}/cds-services/{service_id}"
        headers = {"Authorization": f"Bearer {self.cds.sign_jwt(url)}", "Content-Type": "application/json"}
        return url, json.dumps(body).encode(), headers


# ---------------------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Session:
    sid: str
    csrf: str
    client: httpx.AsyncClient


@dataclass
class Level:
    concurrency: int
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def record(self, op: str, seconds: float) -> None:
        self.latencies.setdefault(op, []).append(seconds)


class OpError(Exception):
    pass


async def op_hook(ehr: Ehr, http: httpx.AsyncClient, prefetch: bool) -> None:
    url, body, headers = ehr.hook_request(random.choice([ES, PV]), random.choice(PATIENTS), prefetch)
    r = await http.post(url, content=body, headers=headers, timeout=OP_TIMEOUT)
    if r.status_code != 200 or not isinstance(r.json().get("cards"), list):
        raise OpError(f"hook {r.status_code}: {r.text[:200]}")


async def op_launch(base: str) -> Session:
    client = httpx.AsyncClient(base_url=base, timeout=OP_TIMEOUT, follow_redirects=True)
    try:
        r = await client.post("/sandbox/auth/launch", json={"patient": random.choice(PATIENTS),
                                                            "practitioner": "sandbox-clinician"})
        if r.status_code != 201:
            raise OpError(f"launch create {r.status_code}: {r.text[:200]}")
        r = await client.get("/smart/launch", params={"iss": r.json()["iss"], "launch": r.json()["launch"]})
        if r.status_code != 200 or r.url.path != "/smart/app":
            raise OpError(f"launch {r.status_code} at {r.url.path}: {r.text[:200]}")
        sid = r.url.params["s"]
        m = re.search(r'name="csrf-token" content="([^"]+)"', r.text)
        if not m:
            raise OpError("app page without CSRF token")
        v = await client.get("/smart/api/prescription", params={"s": sid})
        if v.status_code != 200:
            raise OpError(f"app API {v.status_code}: {v.text[:200]}")
        return Session(sid, m.group(1), client)
    except BaseException:
        await client.aclose()
        raise


async def op_sign(s: Session) -> None:
    try:
        r = await s.client.post("/smart/api/prescription/sign", params={"s": s.sid},
                                headers={"X-CSRF-Token": s.csrf}, json={"draftVersion": 0})
        if r.status_code != 200 or r.json().get("status") != "sent":
            raise OpError(f"sign {r.status_code}: {r.text[:200]}")
    finally:
        await s.client.aclose()


async def run_level(ehr: Ehr, base: str, concurrency: int, seconds: float, seed: int) -> Level:
    level = Level(concurrency)
    deadline = time.monotonic() + seconds
    pending: list[Session] = []  # launched, waiting to be signed
    ops, weights = list(WEIGHTS), list(WEIGHTS.values())
    rng = random.Random(seed)

    async def worker(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            op = rng.choices(ops, weights)[0]
            if op == "sign" and not pending:
                op = "launch"
            start = time.perf_counter()
            try:
                if op == "hook-prefetch":
                    await op_hook(ehr, http, True)
                elif op == "hook-fallback":
                    await op_hook(ehr, http, False)
                elif op == "launch":
                    pending.append(await op_launch(base))
                else:
                    await op_sign(pending.pop(0))
                level.record(op, time.perf_counter() - start)
            except (OpError, httpx.HTTPError, ValueError, KeyError) as exc:
                level.errors.append(f"{op}: {type(exc).__name__}: {str(exc)[:200]}")
                level.record(op + " (error)", time.perf_counter() - start)

    async with httpx.AsyncClient(timeout=OP_TIMEOUT, limits=httpx.Limits(max_connections=concurrency * 2)) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    for s in pending:
        await s.client.aclose()
    return level


def summarise(level: Level, seconds: float, memory: dict[str, int]) -> dict[str, Any]:
    ok = {k: v for k, v in level.latencies.items() if not k.endswith("(error)")}
    every = [x for v in ok.values() for x in v]
    n = len(every) + len(level.errors)
    return {
        "concurrency": level.concurrency,
        "seconds": seconds,
        "operations": n,
        "throughput_per_s": round(n / seconds, 2),
        "errors": len(level.errors),
        "error_samples": level.errors[:5],
        "latency_ms": {"p50": round(pct(every, 50) * 1000, 1), "p95": round(pct(every, 95) * 1000, 1),
                       "p99": round(pct(every, 99) * 1000, 1)},
        "by_operation": {op: {"count": len(v), "p50_ms": round(pct(v, 50) * 1000, 1),
                              "p95_ms": round(pct(v, 95) * 1000, 1), "p99_ms": round(pct(v, 99) * 1000, 1)}
                         for op, v in sorted(ok.items())},
        "server_peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1),
        "server_rss_mib": round(memory.get("VmRSS", 0) / 1024, 1),
    }


def table(levels: list[dict[str, Any]]) -> str:
    head = (f"{'clients':>7} {'ops':>6} {'ops/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
            f"{'peak RSS MiB':>12}")
    lines = [head, "-" * len(head)]
    for lv in levels:
        lat = lv["latency_ms"]
        lines.append(f"{lv['concurrency']:>7} {lv['operations']:>6} {lv['throughput_per_s']:>7} {lat['p50']:>8} "
                     f"{lat['p95']:>8} {lat['p99']:>8} {lv['errors']:>6} {lv['server_peak_rss_mib']:>12}")
    lines.append("")
    lines.append(f"{'clients':>7} {'operation':<14} {'count':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for lv in levels:
        for op, v in lv["by_operation"].items():
            lines.append(f"{lv['concurrency']:>7} {op:<14} {v['count']:>6} {v['p50_ms']:>8} {v['p95_ms']:>8} "
                         f"{v['p99_ms']:>8}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="onco-load-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    server = Sandbox(data_dir, port)
    levels: list[dict[str, Any]] = []
    try:
        server.wait_ready()
        ehr = Ehr(server.url, data_dir)
        await ehr.prepare()
        # warm-up (not measured): first JWKS fetch, imports, validator, first launch
        await run_level(ehr, server.url, 2, min(5.0, args.seconds), seed=0)
        startup = proc_memory(server.proc.pid)
        for i, c in enumerate(args.levels):
            lv = await run_level(ehr, server.url, c, args.seconds, seed=i + 1)
            levels.append(summarise(lv, args.seconds, proc_memory(server.proc.pid)))
            print(f"  {c} clients: {levels[-1]['operations']} ops, {levels[-1]['errors']} errors", flush=True)
        await ehr.fhir.aclose()
        await ehr.cds.aclose()
    finally:
        server.stop()
    return {
        "benchmark": "load",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "server": "onco-exercise sandbox (one uvicorn worker, SQLite store, embedded sekmet FHIR + auth server)",
        "mix_weights": WEIGHTS,
        "seconds_per_level": args.seconds,
        "server_startup_rss_mib": round(startup.get("VmRSS", 0) / 1024, 1),
        "levels": levels,
        "total_errors": sum(lv["errors"] for lv in levels),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="duration of each concurrency level (default 60)")
    ap.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    ap.add_argument("--port", type=int, default=0, help="loopback port for the sandbox (default: a free one)")
    ap.add_argument("--data-dir", default=None, help="the sandbox's data dir (default: a new temp dir)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.seconds <= 0 or any(c < 1 or c > 256 for c in args.levels):
        ap.error("--seconds must be positive and each level between 1 and 256")
    print(f"load: levels {args.levels}, {args.seconds:g} s each", flush=True)
    result = asyncio.run(main_async(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["levels"]))
    print(f"\nwrote {out}; total errors: {result['total_errors']}")
    return 1 if result["total_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
