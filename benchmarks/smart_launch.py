"""Benchmark: how soon after the SMART callback is the app usable, for a patient with N Observations?

Run: `./dev bench smart_launch [N ...]` (default 100 1000). Starts a sandbox on a free
port in a temp dir, adds a patient with N Observations (a realistic mix: a third are labs/vitals the rules read,
two years of history; the rest are codes the rules ignore), then times, over real HTTP:
  callback -> app page (HTML) -> the page's API call answered (the page is usable).
Prints the figures and writes benchmarks/results/smart_launch.json when that directory exists. Not a pytest
test (speed targets are never asserted in unit tests).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from service.app import create_app
from tests.conftest import sandbox_settings
from tests.support.live import free_port, serve

RELEVANT = [("718-7", "g/dL", 12.0), ("777-3", "10*3/uL", 220.0), ("751-8", "10*3/uL", 3.5),
            ("8867-4", "/min", 72.0), ("29463-7", "kg", 70.0)]
IRRELEVANT = [("2345-7", "mg/dL", 95.0), ("2160-0", "mg/dL", 0.9), ("1742-6", "U/L", 25.0),
              ("2951-2", "mmol/L", 140.0), ("6298-4", "mmol/L", 4.1)]


def _patient_bundle(pid: str, n: int) -> dict:
    now = datetime.now(timezone.utc)
    entries = [
        {"resource": {"resourceType": "Patient", "id": pid, "name": [{"family": "Bench", "given": ["Mark"]}],
                      "gender": "male", "birthDate": "1960-01-01"},
         "request": {"method": "PUT", "url": f"Patient/{pid}"}},
        {"resource": {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                      "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                     "code": "active"}]},
                      "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                                         "code": "confirmed"}]},
                      "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C50.911"}]}},
         "request": {"method": "POST", "url": "Condition"}},
    ]
    for i in range(n):
        code, unit, value = (RELEVANT if i % 3 == 0 else IRRELEVANT)[i % 5]
        when = now - timedelta(hours=i * 17)
        entries.append({"resource": {
            "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "effectiveDateTime": when.isoformat(),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}},
            "request": {"method": "POST", "url": "Observation"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _one_launch(c: httpx.Client, pid: str) -> dict[str, float]:
    r = c.post("/sandbox/auth/launch", json={"patient": pid, "practitioner": "sandbox-clinician"})
    launch, iss = r.json()["launch"], r.json()["iss"]
    r = c.get("/smart/launch", params={"iss": iss, "launch": launch})
    r = c.get(r.headers["location"])  # the sandbox issues the code at once for an EHR launch
    callback = r.headers["location"]
    t0 = time.perf_counter()
    r = c.get(callback)
    t_callback = time.perf_counter() - t0
    app_url = r.headers["location"]
    r = c.get(app_url)
    t_page = time.perf_counter() - t0
    sid = httpx.URL(str(r.url)).params["s"]
    r = c.get("/smart/api/prescription", params={"s": sid})
    assert r.status_code == 200, r.text[:300]
    t_usable = time.perf_counter() - t0
    return {"callback_s": t_callback, "page_s": t_page, "usable_s": t_usable}




def main(sizes: list[int]) -> dict:
    port = free_port()
    results: dict = {"measured_at": datetime.now(timezone.utc).isoformat(), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(sandbox_settings(port, Path(tmp)))
        with serve(app, port) as url:
            from service.sandbox.auth_server import mint_access_token

            token = mint_access_token("user/*.cruds", app=app)
            with httpx.Client(base_url=url, timeout=120) as c:
                for n in sizes:
                    pid = f"bench-{n}-{uuid.uuid4().hex[:6]}"
                    r = c.post("/sandbox/fhir", json=_patient_bundle(pid, n),
                               headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
                    assert r.status_code == 200, r.text[:300]
                    runs = [_one_launch(c, pid) for _ in range(3)]
                    summary = {k: round(statistics.median(run[k] for run in runs), 3) for k in runs[0]}
                    results["sizes"][str(n)] = summary
                    print(f"{n:>6} Observations: callback {summary['callback_s']:.3f} s, page {summary['page_s']:.3f} s, "
                          f"usable {summary['usable_s']:.3f} s (median of 3; target: usable < 1 s)")
    out = Path("benchmarks/results")
    if out.is_dir():
        (out / "smart_launch.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1000])
