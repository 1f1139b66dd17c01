"""Benchmark: requests and time to fetch a patient's data and build the snapshot, by Observation count.

Runs the sandbox's FHIR server (sekmet-fhir, file database, as `onco-exercise sandbox` does) on a free
loopback port, loads patients with 100, 1,000 and 10,000 Observations (a constant set of relevant ones —
codes the rules read — and the rest irrelevant chemistry codes) through transaction Bundles of 500, then
times `fetch_patient_data` + `build_snapshot`. For contrast it also counts the requests of a naive
unfiltered `Observation?patient=` read. The claim under test: the fetch's request count does not grow with
the number of irrelevant Observations.

    .venv/bin/python benchmarks/snapshot_fetch.py [--sizes 100,1000,10000] [--repeat 3]

Prints a table and writes benchmarks/results/snapshot_fetch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402

from service.fhir.client import FhirClient  # noqa: E402
from service.fhir.patient_data import fetch_patient_data  # noqa: E402
from service.fhir.queries import patient_queries  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "snapshot_fetch.json"
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
BATCH = 500
IRRELEVANT = ["2345-7", "2160-0", "2951-2", "2823-3", "1742-6", "1920-8", "17861-6", "2075-0"]
# (LOINC, value, UCUM unit): measures the rules read, repeated over time to give them a history
RELEVANT = [("718-7", 12.4, "g/dL"), ("777-3", 210.0, "10*3/uL"), ("751-8", 3.1, "10*3/uL"),
            ("64098-7", 455.0, "m"), ("29463-7", 71.0, "kg"), ("39156-5", 24.8, "kg/m2"),
            ("40443-4", 72.0, "/min"), ("8480-6", 128.0, "mm[Hg]"), ("8310-5", 36.8, "Cel"),
            ("82290-8", 60.0, "min/wk")]
RELEVANT_REPEATS = 3  # 30 relevant Observations per patient, whatever its total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread on 127.0.0.1 (stops by itself when the benchmark ends)."""

    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("FHIR server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_fhir(port: int, data_dir: Path) -> tuple[Any, str, str]:
    """(ASGI app, FHIR base URL, which server) — the sandbox's mount when available."""
    public = f"http://127.0.0.1:{port}"
    try:
        from service.sandbox.fhir_server import open_fhir

        fhir = open_fhir(public, data_dir)
        return fhir.asgi, fhir.base_url, "sandbox sekmet mount (file DB)"
    except ImportError:
        from fastapi import FastAPI
        from sekmet.config import Settings
        from sekmet.context import AppContext
        from sekmet.fhir.router import build_router

        base = f"{public}/fhir"
        ctx = AppContext(Settings(base_url=base, host="127.0.0.1", db_path=str(data_dir / "fhir.db"),
                                  simulator={"enabled": False}, log_inbound=False))
        app = FastAPI()
        app.include_router(build_router(lambda: ctx))
        return app, base, "sekmet router (file DB)"


def observation(ref: str, code: str, value: float, unit: str, when: datetime) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": ref}, "effectiveDateTime": when.isoformat(),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def patient_resources(ref: str, n_obs: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                           "code": "confirmed"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C50.911"}]},
        "subject": {"reference": ref}, "onsetDateTime": "2026-03-01"}]
    relevant = [(c, v, u, NOW - timedelta(days=20 * r + i)) for r in range(RELEVANT_REPEATS)
                for i, (c, v, u) in enumerate(RELEVANT)]
    for i in range(n_obs):
        if i < len(relevant):
            c, v, u, when = relevant[i]
        else:
            c, v, u, when = IRRELEVANT[i % len(IRRELEVANT)], float(i % 113), "mg/dL", NOW - timedelta(hours=3 * i)
        out.append(observation(ref, c, v, u, when))
    return out


async def load(client: FhirClient, n_obs: int) -> tuple[str, float]:
    start = time.perf_counter()
    pid = (await client.create({"resourceType": "Patient", "gender": "female", "birthDate": "1966-05-04"})).id
    resources = patient_resources(f"Patient/{pid}", n_obs)
    for i in range(0, len(resources), BATCH):
        entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r,
                    "request": {"method": "POST", "url": r["resourceType"]}} for r in resources[i:i + BATCH]]
        await client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries}, timeout=300)
    return pid, time.perf_counter() - start


def snapshot_builder() -> Any:
    try:
        from service.clinical.snapshot import build_snapshot
    except ImportError:
        return None
    return build_snapshot


async def measure(base: str, pid: str, repeat: int) -> dict[str, Any]:
    build = snapshot_builder()
    fetch_s: list[float] = []
    build_s: list[float] = []
    requests = set()
    n_resources = 0
    latest = 0
    for _ in range(repeat):
        async with FhirClient(base, timeout=60) as client:
            t0 = time.perf_counter()
            got = await fetch_patient_data(client, pid, NOW)
            t1 = time.perf_counter()
            if not got.complete:
                raise RuntimeError(f"fetch incomplete: {got.failures}")
            requests.add(got.requests)
            n_resources = len(got.resources)
            if build is not None:
                snap = build(got.bundle(), NOW)
                latest = len(snap.latest)
                build_s.append(time.perf_counter() - t1)
            fetch_s.append(t1 - t0)
    async with FhirClient(base, timeout=120) as naive:
        start = time.perf_counter()
        res = await naive.search("Observation", {"patient": pid, "_count": "200"}, max_pages=1000)
        naive_s = time.perf_counter() - start
    return {
        "fetch_requests": sorted(requests),
        "fetch_seconds_median": round(statistics.median(fetch_s), 4),
        "build_seconds_median": round(statistics.median(build_s), 4) if build_s else None,
        "resources_fetched": n_resources,
        "snapshot_measures": latest if build is not None else None,
        "naive_unfiltered_requests": naive.requests_sent,
        "naive_unfiltered_seconds": round(naive_s, 3),
        "naive_unfiltered_resources": len(res.resources),
    }


async def run(sizes: list[int], repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="snapshot-fetch-") as tmp:
        port = free_port()
        app, base, kind = start_fhir(port, Path(tmp))
        with Server(app, port):
            rows = []
            for n in sizes:
                async with FhirClient(base, timeout=300) as loader:
                    pid, load_s = await load(loader, n)
                row = {"observations": n, "relevant_observations": min(n, len(RELEVANT) * RELEVANT_REPEATS),
                       "load_seconds": round(load_s, 2), **await measure(base, pid, repeat)}
                rows.append(row)
                print(f"  {n:>6} obs: loaded in {row['load_seconds']:>6.2f} s; fetch {row['fetch_requests']} requests, "
                      f"{row['fetch_seconds_median'] * 1000:7.1f} ms; build "
                      + (f"{row['build_seconds_median'] * 1000:6.1f} ms" if row["build_seconds_median"] is not None
                         else "skipped (build_snapshot not importable)")
                      + f"; naive unfiltered read: {row['naive_unfiltered_requests']} requests, "
                        f"{row['naive_unfiltered_seconds']:.2f} s", flush=True)
    counts = {tuple(r["fetch_requests"]) for r in rows}
    return {
        "benchmark": "snapshot_fetch",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "server": kind,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "queries": [q.key for q in patient_queries()],
        "repeat": repeat,
        "rows": rows,
        "requests_constant": len(counts) == 1 and all(len(c) == 1 for c in counts),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"snapshot fetch benchmark: sizes {sizes}, {args.repeat} runs each")
    result = asyncio.run(run(sizes, args.repeat))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"requests constant across sizes: {'yes' if result['requests_constant'] else 'NO'}")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0 if result["requests_constant"] else 1


if __name__ == "__main__":
    sys.exit(main())
