"""Benchmark: the CDS Hooks encounter-start call driven by wrk, beside the framework floor and HealthChain.

The companion of `benchmarks/cds_hooks.py` (whose servers, bodies and JWT signing it reuses): the load comes from
wrk (a C load generator, Debian's `wrk`), so the client takes little of the 2 cores and does not compress the
ratios the way a Python client does.

Targets (each its own process with one uvicorn worker, all up at once, sent calls in turns):
1. **floor**: bare FastAPI, receives the body, parses it (`await request.json()`), returns a fixed card.
2. **healthchain**: HealthChain (from PyPI, in its own venv made here under ~/.cache/onco-exercise) with one
   CDS Hooks service that returns a fixed card: its request model is validated, no JWT is verified, no work.
3. **service**: `onco-exercise serve` as deployed (client-JWT verification on, SQLite store, ops middleware).
   Every call carries its own pre-signed ES384 JWT (unique jti) and a new patient id (the Lua script
   `cds_hooks_wrk.lua` fills the body template per call), so the replay cache and the card claim do real work
   and every call answers the referral card with its draft ServiceRequest (a call that does not is counted).
4. `--inline` adds **service-inline**: the same service with `ONCO_EXERCISE_CDS_SIGNATURE_PROCESS=off`, so the
   client JWT's signature is checked on the event loop instead of in the worker's signature process.
5. `--baseline REF` adds **service@REF**: the same, run from `git archive REF` (before/after in one run; use the
   commit a change started from, e.g. `git merge-base main HEAD`, not a moving branch).

Method: per concurrency level, `--rounds` rounds; in each round every target gets one wrk run of `--duration`
seconds (the order rotates per round). Throughput, wrk's p50 and server CPU per call (user+system of the
server process and of the processes it started, i.e. the signature process, from /proc; the helper's share is
also given on its own) are the median over the rounds; each run starts fresh processes; `--runs` runs, and
the table reports the median of the runs. The 1-minute load average is recorded per level. After the runs:
per-worker RSS (VmRSS and peak VmHWM of each process after the runs) and, with `--two-workers`, two processes
of each target (the service on a shared Redis, as replicas are deployed) loaded by two wrk processes at once.

    .venv/bin/python benchmarks/cds_hooks_wrk.py [--runs 3] [--rounds 3] [--duration 4] [--levels 1,8,32]
        [--inline] [--baseline REF] [--two-workers 32] [--max-load 1.5] [--wait 600] [--alg ES384|RS384] [--out FILE]

`--alg RS384` signs the client JWTs with a 2048-bit RSA key instead (the other algorithm CDS Hooks clients use).
Prints a table and writes benchmarks/results/cds_hooks_wrk.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "cds_hooks_wrk.json"
LUA = HERE / "cds_hooks_wrk.lua"
HEALTHCHAIN = "healthchain==0.16.1"
HC_VENV = Path.home() / ".cache" / "onco-exercise" / "healthchain-venv"
HC_PATH = "/cds/cds-services/onco-exercise-encounter-start"
FIXED = {"summary": "Exercise referral suggested: home-based programme, 2 precautions", "indicator": "info",
         "source": {"label": "healthchain"}}


def serve_healthchain(port: int) -> None:
    """HealthChain's CDS Hooks gateway with one hook that answers a fixed card (runs in HealthChain's venv)."""
    import uvicorn
    from healthchain.gateway import CDSHooksService, HealthChainAPI
    from healthchain.gateway.cds import CDSHooksConfig
    from healthchain.models import CDSRequest, CDSResponse
    from healthchain.models.responses import Card

    app = HealthChainAPI()
    cds = CDSHooksService(config=CDSHooksConfig(allowed_hooks=["encounter-start", "patient-view"]))

    @cds.hook("encounter-start", id="onco-exercise-encounter-start")
    def encounter_start(request: CDSRequest) -> CDSResponse:
        return CDSResponse(cards=[Card(**FIXED)])

    app.register_service(cds) if hasattr(app, "register_service") else app.register_gateway(cds)
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, access_log=False, log_level="warning")


def healthchain_python() -> Path:
    """HealthChain's own venv (made once, from PyPI with pip): it pins its own FastAPI and pydantic."""
    py = HC_VENV / "bin" / "python"
    stamp = HC_VENV / f".installed-{HEALTHCHAIN}"
    if not stamp.exists():
        print(f"installing {HEALTHCHAIN} into {HC_VENV} ...", flush=True)
        HC_VENV.parent.mkdir(parents=True, exist_ok=True)
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(HC_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", HEALTHCHAIN],
                       check=True)
        stamp.touch()
    return py


# -- running wrk --------------------------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, url: str, procs: list[subprocess.Popen[bytes]], signer: Any = None) -> None:
        self.name, self.url, self.procs, self.signer = name, url, procs, signer
        self.rate = 1500.0  # the fastest calls/s seen so far (sizes the next token file: signing takes time)
        self.seen = False

    @property
    def pid(self) -> int:
        return self.procs[-1].pid


def wrk(url: str, clients: int, seconds: float, template: Path, tokens: Path, tag: str) -> dict[str, Any]:
    threads = 1 if clients == 1 else 2
    cmd = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(LUA),
           url, "--", str(template), str(tokens), tag, str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout} {done.stderr}")
    out = done.stdout
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    return json.loads(line[len("WRKJSON "):])


def write_tokens(path: Path, signer: Any, n: int) -> None:
    path.write_text("\n".join(signer.tokens(n)) + "\n" if signer else "none\n")


def measure(server: Server, clients: int, seconds: float, template: Path, tmp: Path, tag: str) -> dict[str, Any]:
    """One wrk run against one server: rate, latency, server CPU per call, bad answers."""
    from cds_hooks import cpu_since, tree_cpu

    tokens = tmp / f"tokens-{server.name}-{server.pid}.txt"
    write_tokens(tokens, server.signer, int(server.rate * 1.6 * seconds) + 300)
    live = [p.pid for p in server.procs if p.poll() is None]
    before = {pid: tree_cpu(pid) for pid in live}
    r = wrk(server.url, clients, seconds, template, tokens, tag)
    spent = [cpu_since(before[pid], pid) for pid in live]
    cpu, helper_cpu = sum(s[0] for s in spent), sum(s[1] for s in spent)
    bad = r["nocard"] + r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    if r["reused_tokens"] and server.signer:
        raise RuntimeError(f"{server.name}: {r['reused_tokens']} tokens reused: raise the token budget")
    # the fastest rate seen, not the last: one slow round must not leave the next one short of tokens
    rate = max(r["requests"] / (r["duration_us"] / 1e6), 100.0)
    server.rate, server.seen = (max(server.rate, rate) if server.seen else rate), True
    return {"rate": r["requests"] / (r["duration_us"] / 1e6), "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "cpu_ms": 1000 * cpu / max(1, r["requests"]),
            "helper_cpu_ms": 1000 * helper_cpu / max(1, r["requests"]), "bad": bad,
            "requests": r["requests"]}


def one_run(servers: list[Server], levels: list[int], rounds: int, seconds: float, template: Path, tmp: Path,
            run: int) -> dict[str, Any]:
    for s in servers:  # warm-up: imports, caches, connections, the allocator
        measure(s, 8, 2, template, tmp, f"w{run}")
    levels_out: dict[str, Any] = {}
    for c in levels:
        rows: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
        loads = [round(os.getloadavg()[0], 2)]
        for r in range(rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for s in order:
                rows[s.name].append(measure(s, c, seconds, template, tmp, f"{run}{c}{r}"))
        loads.append(round(os.getloadavg()[0], 2))
        level: dict[str, Any] = {"load_average_1min": loads}
        for name, rs in rows.items():
            level[name] = {
                "calls_per_s": round(statistics.median(x["rate"] for x in rs), 1),
                "p50_ms": round(statistics.median(x["p50_ms"] for x in rs), 3),
                "p99_ms": round(statistics.median(x["p99_ms"] for x in rs), 3),
                "server_cpu_ms_per_call": round(statistics.median(x["cpu_ms"] for x in rs), 3),
                "helper_cpu_ms_per_call": round(statistics.median(x["helper_cpu_ms"] for x in rs), 3),
                "bad_answers": sum(x["bad"] for x in rs), "calls": sum(x["requests"] for x in rs),
                "rounds": [round(x["rate"], 1) for x in rs]}
            v = level[name]
            print(f"run {run} c={c:3d} {name:18s} {v['calls_per_s']:7.1f}/s p50 {v['p50_ms']:6.2f} ms "
                  f"p99 {v['p99_ms']:7.2f} ms cpu/call {v['server_cpu_ms_per_call']:6.3f} ms "
                  f"(helper {v['helper_cpu_ms_per_call']:5.3f}) "
                  f"bad {v['bad_answers']} (load {loads})", flush=True)
        levels_out[str(c)] = level
    return levels_out


def _vm(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return out


def rss(pid: int) -> dict[str, float]:
    """The worker's RSS and peak, and (when it has one) its signature process's RSS."""
    own = _vm(pid)
    result = {"rss_mib": own.get("VmRSS", 0.0), "peak_rss_mib": own.get("VmHWM", 0.0)}
    from cds_hooks import descendants

    helpers = [_vm(h) for h in descendants(pid)]
    if helpers:
        result["helper_rss_mib"] = round(sum(h.get("VmRSS", 0.0) for h in helpers), 1)
    return result


# -- starting the targets -----------------------------------------------------------------------------------


def start_floor(py: str) -> Server:
    from cds_hooks import free_port, start

    port = free_port()
    proc = start([py, str(HERE / "cds_hooks.py"), "--serve", "floor", "--port", str(port)], port)
    return Server("floor", f"http://127.0.0.1:{port}/cds-services/onco-exercise-encounter-start", [proc])


def start_healthchain(hc_py: Path) -> Server:
    from cds_hooks import free_port, start

    port = free_port()
    proc = start([str(hc_py), str(Path(__file__).resolve()), "--serve", "healthchain", "--port", str(port)], port)
    return Server("healthchain", f"http://127.0.0.1:{port}{HC_PATH}", [proc])


def start_onco(name: str, tmp: Path, key: Any, env: dict[str, str] | None = None,
               storage: str = "sqlite") -> Server:
    from cds_hooks import PATH, Target, start_service

    base, procs = start_service(storage, str(tmp), key, "http://127.0.0.1:9/fhir", name=name, env_extra=env)
    alg = "ES384" if key.key_type == "EC" else "RS384"
    return Server(name, f"{base}{PATH}", procs, Target(name, base, procs[-1].pid, key, alg))


def check(server: Server, body: bytes) -> str:
    import httpx

    headers = {"Content-Type": "application/json"}
    if server.signer:
        headers["Authorization"] = f"Bearer {server.signer.tokens(1)[0]}"
    resp = httpx.post(server.url, content=body, headers=headers, timeout=30)
    assert resp.status_code == 200 and resp.json()["cards"], f"{server.name}: {resp.status_code} {resp.text[:300]}"
    return resp.json()["cards"][0]["summary"]


def checkout(ref: str, tmp: Path) -> Path:
    """`git archive REF` of this repository into tmp (the service as it was at REF)."""
    dest = tmp / f"src-{ref.replace('/', '_')}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "service", "terminology", "profiles"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def stop_all(servers: list[Server]) -> None:
    from cds_hooks import stop

    for s in servers:
        for p in reversed(s.procs):
            stop(p)


def two_workers(clients: int, seconds: float, rounds: int, template: Path, tmp: Path, key: Any, py: str,
                hc_py: Path) -> dict[str, Any]:
    """Two processes of each target, each loaded by its own wrk with half the connections, both at once."""
    from cds_hooks import free_port, start

    groups: list[list[Server]] = [[start_floor(py), start_floor(py)],
                                  [start_healthchain(hc_py), start_healthchain(hc_py)]]
    rport = free_port()
    redis = start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                  rport)
    env = {"ONCO_EXERCISE_STORAGE_URL": f"redis://127.0.0.1:{rport}/0",
           "ONCO_EXERCISE_DATA_DIR": str(tmp / "replicas")}  # replicas share the store and the key ring
    groups.append([start_onco("service", tmp, key, env), start_onco("service", tmp, key, env)])
    out: dict[str, Any] = {"clients": clients, "note": "service replicas share one Redis (as deployed)"}
    try:
        rates: dict[str, list[float]] = {g[0].name: [] for g in groups}
        bad: dict[str, int] = {g[0].name: 0 for g in groups}
        for g in groups:
            for i, s in enumerate(g):
                measure(s, 4, 2, template, tmp, f"x{i}")
        for r in range(rounds):
            for g in groups:
                with ThreadPoolExecutor(2) as pool:
                    res = list(pool.map(lambda a: measure(a[1], clients // 2, seconds, template, tmp,
                                                          f"y{r}{a[0]}"),
                                        enumerate(g)))
                rates[g[0].name].append(sum(x["rate"] for x in res))
                bad[g[0].name] += sum(x["bad"] for x in res)
        for name, rs in rates.items():
            out[name] = {"calls_per_s": round(statistics.median(rs), 1), "rounds": [round(x, 1) for x in rs],
                         "bad_answers": bad[name]}
            print(f"2 workers c={clients} {name:12s} {out[name]['calls_per_s']:7.1f}/s bad {bad[name]}", flush=True)
        out["rss_mib_per_worker"] = {g[0].name: [rss(s.pid) for s in g] for g in groups}
    finally:
        stop_all([s for g in groups for s in g])
        from cds_hooks import stop

        stop(redis)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--baseline", help="also run the service from this git ref (e.g. main)")
    parser.add_argument("--inline", action="store_true",
                        help="also run the service with its signature process off (checks in-process)")
    parser.add_argument("--two-workers", type=int, default=0, help="also measure 2 workers at this many clients")
    parser.add_argument("--no-healthchain", action="store_true")
    parser.add_argument("--months", type=int, default=27)
    parser.add_argument("--alg", default="ES384", choices=["ES384", "RS384"],
                        help="the client JWTs' algorithm (CDS Hooks: clients use ES384 or RS384)")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--wait", type=float, default=600)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve", choices=["healthchain"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "healthchain":
        serve_healthchain(args.port)
        return 0

    sys.path[:0] = [str(HERE), str(ROOT)]
    from joserfc.jwk import ECKey, RSAKey

    from cds_hooks import hook_template, make_bodies, wait_for_quiet

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    hc_py = None if args.no_healthchain else healthchain_python()
    levels = [int(x) for x in args.levels.split(",")]
    key = (ECKey.generate_key("P-384", parameters={"kid": "bench-1"}) if args.alg == "ES384"
           else RSAKey.generate_key(2048, parameters={"kid": "bench-1"}))
    patient, body = hook_template(args.months)
    waited = wait_for_quiet(args.max_load, args.wait)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "cpu": next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                                 if x.startswith("model name")), "?"),
                    "load_generator": wrk_version.strip()},
        "payload": {"resources": len(patient.resources()), "bytes": len(make_bodies(body, 1)[0]), "jwt_alg": args.alg},
        "method": {"runs": args.runs, "rounds": args.rounds, "seconds_per_wrk_run": args.duration,
                   "per_run": "median over rounds", "table": "median over runs"},
        "load_average_1min": {"waited": waited, "start": round(os.getloadavg()[0], 2)},
        "runs": [],
    }
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        template = tmp / "body.json"
        template.write_bytes(body)
        baseline_src = checkout(args.baseline, tmp) if args.baseline else None
        rss_seen: dict[str, list[dict[str, float]]] = {}
        for run in range(args.runs):
            servers = [start_floor(py)]
            if hc_py:
                servers.append(start_healthchain(hc_py))
            try:
                servers.append(start_onco("service", tmp / f"run{run}", key))
                if args.inline:
                    servers.append(start_onco("service-inline", tmp / f"run{run}", key,
                                              {"ONCO_EXERCISE_CDS_SIGNATURE_PROCESS": "off"}))
                if baseline_src:
                    servers.append(start_onco(f"service@{args.baseline}", tmp / f"run{run}", key,
                                              {"PYTHONPATH": str(baseline_src)}))
                filled = make_bodies(body, 1)[0]
                for s in servers:
                    summary = check(s, filled)
                    if s.name == "service":
                        result["card_checked"] = summary
                result["runs"].append(one_run(servers, levels, args.rounds, args.duration, template, tmp, run))
                for s in servers:
                    rss_seen.setdefault(s.name, []).append(rss(s.pid))
            finally:
                stop_all(servers)
        if args.two_workers:
            result["two_workers"] = two_workers(args.two_workers, args.duration, args.rounds, template, tmp, key,
                                                py, hc_py or Path(py))
    result["load_average_1min"]["end"] = round(os.getloadavg()[0], 2)
    result["rss_mib_after_runs"] = {
        name: {"rss_mib": statistics.median(x["rss_mib"] for x in v),
               "peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in v),
               **({"helper_rss_mib": statistics.median(x["helper_rss_mib"] for x in v)}
                  if all("helper_rss_mib" in x for x in v) else {})}
        for name, v in rss_seen.items()}

    # the table: per target and level, the median of the runs
    table: dict[str, Any] = {}
    names = list(result["runs"][0][str(levels[0])].keys() - {"load_average_1min"})
    for name in names:
        for c in levels:
            runs = [r[str(c)][name] for r in result["runs"]]
            table.setdefault(name, {})[str(c)] = {
                "calls_per_s": round(statistics.median(x["calls_per_s"] for x in runs), 1),
                "p50_ms": round(statistics.median(x["p50_ms"] for x in runs), 3),
                "server_cpu_ms_per_call": round(statistics.median(x["server_cpu_ms_per_call"] for x in runs), 3),
                "helper_cpu_ms_per_call": round(statistics.median(x["helper_cpu_ms_per_call"] for x in runs), 3),
                "per_run": [x["calls_per_s"] for x in runs], "bad_answers": sum(x["bad_answers"] for x in runs)}
    result["table"] = table
    summary: dict[str, Any] = {}
    for name in (n for n in names if n.startswith("service")):
        t = table[name]
        if "8" in t:
            summary[f"{name}: vs floor at 8 clients"] = round(t["8"]["calls_per_s"] / table["floor"]["8"]["calls_per_s"], 3)
        if "32" in t and "healthchain" in table:
            summary[f"{name}: vs healthchain at 32 clients"] = round(
                t["32"]["calls_per_s"] / table["healthchain"]["32"]["calls_per_s"], 3)
        if "8" in t and "healthchain" in table:
            summary[f"{name}: vs healthchain at 8 clients"] = round(
                t["8"]["calls_per_s"] / table["healthchain"]["8"]["calls_per_s"], 3)
        if "1" in t:
            summary[f"{name}: p50 at 1 client (ms)"] = t["1"]["p50_ms"]
    if "service" in table:
        s = table["service"]
        summary["targets"] = {
            ">= 0.55 of the floor at 8 clients": summary.get("service: vs floor at 8 clients", 0) >= 0.55,
            ">= 1.3x HealthChain at 32 clients": summary.get("service: vs healthchain at 32 clients", 0) >= 1.3,
            "p50 <= 2.5 ms at 1 client": "1" in s and s["1"]["p50_ms"] <= 2.5}
    result["summary"] = summary

    print()
    head = "| target | " + " | ".join(f"c={c}" for c in levels) + " |"
    print(head)
    print("|---" * (len(levels) + 1) + "|")
    for name in names:
        cells = [f"{table[name][str(c)]['calls_per_s']:.0f}/s" + (f", p50 {table[name][str(c)]['p50_ms']:.2f} ms"
                                                                  if c == 1 else "") for c in levels]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
