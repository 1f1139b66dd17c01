"""The hook's direct route (issue 17, `service/cds_hooks/direct.py`): the hook call skips FastAPI's router and
endpoint wrapper, and must answer exactly as it did through them, inside the same ops middleware and CORS.

Two live servers with the same settings, one without the direct route, get the same calls; their answers
(status, headers that matter, body) must agree. A third check makes FastAPI's route handler fail: the hook
still answers (so the direct route really is what serves it) while feedback, which goes through FastAPI, fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from fastapi.routing import APIRoute

from service.app import create_app
from service.cds_hooks.direct import DirectHookRoute
from service.cds_hooks.discovery import ENCOUNTER_START_ID, PATIENT_VIEW_ID
from tests.cds_hooks import patients
from tests.cds_hooks.conftest import Ehr, make_settings
from tests.support.live import free_port, serve

ES = f"/cds-services/{ENCOUNTER_START_ID}"
PV = f"/cds-services/{PATIENT_VIEW_ID}"
ORIGIN = "https://sandbox.cds-hooks.org"
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SAME_HEADERS = ("content-type", "cache-control", "x-content-type-options", "referrer-policy",
                "access-control-allow-origin", "www-authenticate")


def _server(tmp: Path, keys: dict[str, Any], direct: bool) -> Iterator[Ehr]:
    port = free_port()
    app = create_app(make_settings(port, tmp, keys, None))
    if not direct:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not DirectHookRoute]
    with serve(app, port) as url:
        yield Ehr(url, keys["es"])


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> Iterator[Ehr]:
    yield from _server(tmp_path_factory.mktemp("direct"), keys, True)


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> Iterator[Ehr]:
    yield from _server(tmp_path_factory.mktemp("routed"), keys, False)


def _body(service_id: str, prefetch: Any, pid: str) -> dict[str, Any]:
    hook = "encounter-start" if service_id == ENCOUNTER_START_ID else "patient-view"
    context = {"userId": "Practitioner/onc-1", "patientId": pid, **({"encounterId": "enc-1"}
                                                                   if hook == "encounter-start" else {})}
    return {"hook": hook, "hookInstance": "0b1e4b9e-7f52-4b2a-9d3c-2f1d6a1f6e01", "context": context,
            "prefetch": prefetch}


def _calls() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, path, how): the hook's answers of every kind."""
    bone = patients.bone_metastases("direct-bone")
    fever = patients.neutropenic_fever("direct-fever") if hasattr(patients, "neutropenic_fever") else bone
    none = patients.non_oncology("direct-none")
    return [
        ("referral card", ES, {"json": _body(ENCOUNTER_START_ID, bone.prefetch(), bone.pid)}),
        ("patient-view", PV, {"json": _body(PATIENT_VIEW_ID, fever.prefetch(), fever.pid)}),
        ("no card", ES, {"json": _body(ENCOUNTER_START_ID, none.prefetch(), none.pid)}),
        ("not JSON", ES, {"raw": b"{not json"}),
        ("wrong hook", ES, {"json": {**_body(ENCOUNTER_START_ID, {}, "p1"), "hook": "order-sign"}}),
        ("no token", ES, {"json": _body(ENCOUNTER_START_ID, bone.prefetch(), bone.pid), "token": None}),
        ("bad token", ES, {"json": _body(ENCOUNTER_START_ID, bone.prefetch(), bone.pid), "token": "x.y.z"}),
        ("too large", ES, {"raw": b"{" + b" " * (3 * 1024 * 1024) + b"}"}),
        ("unknown service", "/cds-services/nope", {"json": _body(ENCOUNTER_START_ID, {}, "p1")}),
        ("trailing slash", ES + "/", {"json": _body(ENCOUNTER_START_ID, {}, "p1")}),
        ("no data", ES, {"json": {**_body(ENCOUNTER_START_ID, None, "p1")}}),
    ]


def _answer(ehr: Ehr, path: str, how: dict[str, Any]) -> tuple[int, dict[str, str | None], Any]:
    headers = {"Origin": ORIGIN}
    token = how.get("token", "auto")
    if "raw" in how:
        resp = ehr.post(path, None, token=token, raw=how["raw"], headers=headers)
    else:
        body = {k: v for k, v in how["json"].items() if v is not None}
        resp = ehr.post(path, body, token=token, headers=headers)
    assert resp.headers.get("x-request-id"), path
    content = UUID.sub(b"U", resp.content.replace(ehr.base.encode(), b"BASE"))
    return resp.status_code, {h: resp.headers.get(h) for h in SAME_HEADERS}, json.loads(content) if content else None


@pytest.mark.parametrize("name,path,how", _calls(), ids=[c[0] for c in _calls()])
def test_the_direct_route_answers_as_the_router_did(direct: Ehr, routed: Ehr, name: str, path: str,
                                                     how: dict[str, Any]) -> None:
    a, b = _answer(direct, path, how), _answer(routed, path, how)
    assert a == b, name
    if name == "referral card":
        assert a[0] == 200 and a[2]["cards"], "the comparison must include a real card"


def test_the_hook_is_counted_under_its_route_template(direct: Ehr) -> None:
    p = patients.bone_metastases("direct-metrics")
    assert direct.post(ES, _body(ENCOUNTER_START_ID, p.prefetch(), p.pid)).status_code == 200
    metrics = httpx.get(f"{direct.base}/metrics").text
    assert re.search(r'onco_http_requests_total\{method="POST",route="/cds-services/\{service_id\}",status="200"\} '
                     r'[1-9]', metrics)
    assert ENCOUNTER_START_ID not in re.findall(r'route="([^"]*)"', metrics).__str__()


def test_the_hook_really_bypasses_the_router(direct: Ehr, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: APIRoute, scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("the router was used")

    monkeypatch.setattr(APIRoute, "handle", broken)
    p = patients.bone_metastases("direct-bypass")
    resp = direct.post(ES, _body(ENCOUNTER_START_ID, p.prefetch(), p.pid))
    assert resp.status_code == 200 and resp.json()["cards"]
    assert direct.post(f"{ES}/feedback", {"feedback": []}).status_code == 500  # FastAPI's route: broken here
