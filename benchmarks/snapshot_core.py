"""Time the CDS hot path's clinical core: build_snapshot + prescribe on a realistic 200-resource prefetch.

    .venv/bin/python benchmarks/snapshot_core.py [--runs 300] [--recognition]

`--recognition` also reports what the real-world recognition work costs inside the core: the time spent in
value-set matching and displays (`Terminology.match`/`display`), reading values in the units and shapes EHRs send
(`ValueReader.read`: UCUM, unit text, °F, numeric strings, coded answers) and drug recognition (`drugs.concepts`,
`drugs.classify`), on the realistic prefetch and on the 256 real-world Bundles in tests/fixtures/realworld
(coded the way EHRs code them). Each entry point is wrapped with a timer (outermost call only); the wrapper's
own cost, measured first, is subtracted.

Target: well under 5 ms per call (the snapshot sits on every CDS hook call). Prints the figures and writes
benchmarks/results/snapshot_core.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.clinical.lookback import hook_lookback  # noqa: E402
from service.clinical.prescribe import prescribe  # noqa: E402
from service.clinical.snapshot import build_snapshot  # noqa: E402
from tests.fixtures.build_fixtures import (  # noqa: E402
    ATC, ICD, bp, breast_cancer, condition, ecog, evs_week, med_admin, med_request, obs, patient,
    procedure, six_mwt,
)

NOW = datetime(2026, 11, 20, 23, 59, 59, tzinfo=timezone.utc)


def realistic_bundle(target: int = 200) -> dict[str, Any]:
    """A patient on chemotherapy with a year of labs, vitals and activity data: about `target` resources."""
    res: list[dict[str, Any]] = [
        patient("1959-06-02", "female"), breast_cancer(),
        condition("bone", "C79.51", ICD, "Secondary malignant neoplasm of bone"),
        condition("htn", "I10", ICD, "Essential hypertension"), condition("dm", "E11.9", ICD, "Type 2 diabetes"),
        condition("cipn", "G62.0", ICD, "Drug-induced polyneuropathy"),
        condition("knee", "M17.11", ICD, "Primary osteoarthritis, right knee"),
        med_request("tax", "56946", display="paclitaxel"), med_request("letro", "72965", display="letrozole"),
        med_request("meto", "6918", display="metoprolol"), med_request("met", "6809", display="metformin"),
        procedure("lump", "392021009", "Lumpectomy of breast", days=200),
        procedure("rt", "33195004", "External beam radiation therapy", start_days=160, end_days=120),
    ]
    for i in range(8):
        res.append(med_admin(f"cape-{i}", "L01BC06", ATC, "capecitabine", days=7 + 21 * i))
    day, i = 1, 0
    while len(res) < target - 6:
        res += [obs(f"plt-{i}", "777-3", 120 + i, "10*9/L", day), obs(f"hb-{i}", "718-7", 112 + i, "g/L", day),
                obs(f"anc-{i}", "751-8", 1800 + 10 * i, "/uL", day), obs(f"wbc-{i}", "6690-2", 4.5, "10*3/uL", day),
                obs(f"temp-{i}", "8310-5", 98.2, "[degF]", day, category="vital-signs"),
                obs(f"wt-{i}", "29463-7", 70.2, "kg", day, category="vital-signs"),
                bp(f"bp-{i}", 132, 84, day), obs(f"rhr-{i}", "40443-4", 72, "/min", day, category="vital-signs")]
        day += 7
        i += 1
    res += [ecog(1), six_mwt(430), evs_week(45), obs("tug", "89423-8", 10.5, "s", 30, category="exam"),
            obs("pain", "72514-3", 3, "{score}", 3, category="survey"), obs("grip", "83174-3", 21, "kg", 30)]
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"fullUrl": f"urn:uuid:{n}", "resource": r} for n, r in enumerate(res[:target])]}


def recognition_cost(bundles: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Time inside the recognition entry points while build_snapshot + prescribe run over `bundles`."""
    import service.clinical.snapshot as snapshot_module
    from service.clinical import drugs
    from service.clinical.values import ValueReader
    from service.terminology import Terminology

    spent = [0.0]
    calls = [0]
    depth = [0]
    by_part: dict[str, list[float]] = {}  # part -> [seconds, calls]
    clock = time.perf_counter

    def timed(fn: Any, part: str = "probe") -> Any:
        mine = by_part.setdefault(part, [0.0, 0])

        def wrapper(*a: Any, **k: Any) -> Any:
            if depth[0]:
                return fn(*a, **k)
            depth[0] += 1
            calls[0] += 1
            t0 = clock()
            try:
                return fn(*a, **k)
            finally:
                dt = clock() - t0
                spent[0] += dt
                mine[0] += dt
                mine[1] += 1
                depth[0] -= 1
        return wrapper

    # the wrapper's own cost per call (subtracted below)
    probe = timed(lambda: None)
    t0 = clock()
    for _ in range(100_000):
        probe()
    overhead = (clock() - t0) / 100_000 - spent[0] / 100_000
    spent[0] = 0.0
    calls[0] = 0

    patched = [(Terminology, "match", "codes: value sets"), (Terminology, "display", "codes: value sets"),
               (ValueReader, "read", "values: units and shapes"), (snapshot_module, "classify_drug", "drugs"),
               (snapshot_module, "drug_concepts", "drugs"), (drugs, "classify", "drugs"), (drugs, "concepts", "drugs")]
    saved = [(owner, name, part, getattr(owner, name)) for owner, name, part in patched]
    out: dict[str, Any] = {}
    try:
        for owner, name, part, fn in saved:
            setattr(owner, name, timed(fn, part))
        for label, items in bundles.items():
            for data in items:  # warm the memos (units, memberships), as a running service has them
                prescribe(build_snapshot(data, NOW), NOW)
            totals, inside, n_calls = [], [], []
            parts: dict[str, list[float]] = {}
            for _ in range(rounds):
                spent[0], calls[0] = 0.0, 0
                for v in by_part.values():
                    v[0] = v[1] = 0
                t0 = clock()
                for data in items:
                    prescribe(build_snapshot(data, NOW), NOW)
                total = clock() - t0 - calls[0] * overhead
                totals.append(total)
                inside.append(max(0.0, spent[0] - calls[0] * overhead))
                n_calls.append(calls[0])
                for part, (sec, n) in by_part.items():
                    parts.setdefault(part, []).append(max(0.0, sec - n * overhead))
            total, rec = statistics.median(totals), statistics.median(inside)
            out[label] = {"bundles": len(items), "core_ms_per_bundle": round(1000 * total / len(items), 3),
                          "recognition_ms_per_bundle": round(1000 * rec / len(items), 3),
                          "recognition_share": round(rec / total, 3),
                          "recognition_calls_per_bundle": round(statistics.median(n_calls) / len(items), 1),
                          "ms_per_bundle_by_part": {part: round(1000 * statistics.median(v) / len(items), 3)
                                                    for part, v in parts.items() if part != "probe"}}
    finally:
        for owner, name, _, fn in saved:
            setattr(owner, name, fn)
    out["timer_overhead_us_per_call_subtracted"] = round(overhead * 1e6, 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--recognition", action="store_true", help="also measure the recognition work's cost")
    args = parser.parse_args()
    data = realistic_bundle()
    n_resources = len(data["entry"])
    for _ in range(20):  # warm-up (terminology load, caches)
        prescribe(build_snapshot(data, NOW), NOW)
    snap_t, total_t, cpu_t = [], [], []
    for _ in range(args.runs):
        c0 = time.process_time()
        t0 = time.perf_counter()
        snapshot = build_snapshot(data, NOW)
        t1 = time.perf_counter()
        prescribe(snapshot, NOW)
        t2 = time.perf_counter()
        c1 = time.process_time()
        snap_t.append((t1 - t0) * 1000)
        total_t.append((t2 - t0) * 1000)
        cpu_t.append((c1 - c0) * 1000)

    # The CDS hook's snapshot reads each lab and vital sign only as far back as a rule looks (issue 17):
    # on this Bundle and on the wrk benchmark's patient (27 months of monthly labs and vitals).
    from tests.cds_hooks.patients import bulky

    two_years = {"resourceType": "Bundle", "type": "collection",
                 "entry": [{"resource": r} for r in bulky("bench-patient", months=27).resources()]}
    lookback: dict[str, dict[str, list[float]]] = {}
    for label, bundle in (("this bundle", data), ("27 months", two_years)):
        times: dict[str, list[float]] = {"full": [], "hook": []}
        for _ in range(args.runs):
            for kind, lb in (("full", None), ("hook", hook_lookback())):
                t0 = time.perf_counter()
                build_snapshot(bundle, NOW, lookback=lb)
                times[kind].append((time.perf_counter() - t0) * 1000)
        lookback[label] = times

    def stats(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"median_ms": round(statistics.median(xs), 3), "p95_ms": round(xs[int(len(xs) * 0.95) - 1], 3),
                "min_ms": round(xs[0], 3), "max_ms": round(xs[-1], 3)}

    result = {
        "benchmark": "snapshot_core", "resources": n_resources, "runs": args.runs,
        "build_snapshot": stats(snap_t), "build_snapshot_plus_prescribe": stats(total_t),
        "build_snapshot_plus_prescribe_cpu": stats(cpu_t),
        "hook_lookback": {label: {"resources": len((data if label == "this bundle" else two_years)["entry"]),
                                  "full_history": stats(t["full"]), "hook": stats(t["hook"])}
                          for label, t in lookback.items()},
        "target_ms": 5.0, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if args.recognition:
        realworld = ROOT / "tests" / "fixtures" / "realworld"
        cases = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(realworld.glob("*.json"))
                 if p.name != "cases.json"]
        result["recognition"] = recognition_cost({"realistic prefetch": [data], "real-world bundles": cases},
                                                 rounds=max(5, args.runs // 20))
        for label, r in result["recognition"].items():
            if isinstance(r, dict):
                print(f"recognition, {label} ({r['bundles']} bundles): {r['recognition_ms_per_bundle']:.3f} ms of "
                      f"{r['core_ms_per_bundle']:.3f} ms per bundle ({100 * r['recognition_share']:.0f}%), "
                      f"{r['recognition_calls_per_bundle']} calls; by part (ms): {r['ms_per_bundle_by_part']}")
    out = ROOT / "benchmarks" / "results" / "snapshot_core.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{n_resources} resources, {args.runs} runs")
    print(f"build_snapshot:             median {result['build_snapshot']['median_ms']:.3f} ms, "
          f"p95 {result['build_snapshot']['p95_ms']:.3f} ms")
    print(f"build_snapshot + prescribe: median {result['build_snapshot_plus_prescribe']['median_ms']:.3f} ms, "
          f"p95 {result['build_snapshot_plus_prescribe']['p95_ms']:.3f} ms (target < 5 ms)")
    print(f"CPU time (excludes waiting for a core): median "
          f"{result['build_snapshot_plus_prescribe_cpu']['median_ms']:.3f} ms, "
          f"p95 {result['build_snapshot_plus_prescribe_cpu']['p95_ms']:.3f} ms")
    for label, r in result["hook_lookback"].items():
        print(f"build_snapshot, {label} ({r['resources']} resources): full history median "
              f"{r['full_history']['median_ms']:.3f} ms, the hook's lookback {r['hook']['median_ms']:.3f} ms")
    print(f"(load average {result['load_average_1m']} on {result['cpus']} CPUs: p95 includes scheduling noise)")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
