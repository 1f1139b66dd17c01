"""Two `onco-exercise serve` replicas behind one public URL share SMART sessions through Redis.

The sandbox plays the hospital's EHR (FHIR + SMART authorization server); the launch completes on replica A
(the callback), and the app's API is then served by replica B with the same browser cookie, as a load
balancer without sticky sessions would do.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.ops.procs import ServeProcess, onco_env, shared_state_keys
from tests.smart.conftest import finish
from tests.support.live import free_port

CLIENT_ID = "onco-replicas"


def test_a_session_started_on_one_replica_is_served_by_the_other(redis_url: str, sandbox_url: str, start_serve,
                                                                  tmp_path: Path) -> None:
    iss = f"{sandbox_url}/sandbox/fhir"
    port_a = free_port()
    public = f"http://127.0.0.1:{port_a}"
    r = httpx.post(f"{sandbox_url}/sandbox/auth/register", json={
        "client_id": CLIENT_ID, "redirect_uris": [f"{public}/smart/callback"], "client_name": "replica test"})
    assert r.status_code == 201, r.text
    def env(name: str) -> dict[str, str]:  # separate data dirs: Redis is the only thing the replicas share
        (tmp_path / name).mkdir()
        return onco_env(tmp_path / name, storage_url=redis_url, fhir_servers=iss, public_url=public,
                        smart_client_id=CLIENT_ID, allow_no_cds_clients="true",
                        state_keys=shared_state_keys())

    a = ServeProcess(env("a"), tmp_path / "a.log", port=port_a)
    a.wait_ready()
    try:
        b = start_serve(env("b"))
        with httpx.Client(timeout=60) as browser:
            launch = browser.post(f"{sandbox_url}/sandbox/auth/launch",
                                  json={"patient": "onc-01", "practitioner": "sandbox-clinician"}).json()["launch"]
            done = finish(browser.get(f"{a.url}/smart/launch", params={"iss": iss, "launch": launch},
                                      follow_redirects=True))
            on_a = browser.get(f"{a.url}/smart/api/prescription", params={"s": done.sid})
            on_b = browser.get(f"{b.url}/smart/api/prescription", params={"s": done.sid})
            assert on_a.status_code == 200, on_a.text[:300]
            assert on_b.status_code == 200, on_b.text[:300]
            assert on_b.json()["patient"] == on_a.json()["patient"]
            # and without the cookie, replica B knows nothing: the session is the cookie's, not the URL's
            stranger = httpx.get(f"{b.url}/smart/api/prescription", params={"s": done.sid}, timeout=30)
            assert stranger.status_code in (401, 403)
    finally:
        a.stop()
