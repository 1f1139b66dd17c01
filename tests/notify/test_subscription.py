"""The Subscription path against a FHIR server that offers it: sekmet-fhir runs R4 topic-based (backport)
rest-hook Subscriptions. With the PA IG's Task topic defined there, its CapabilityStatement lists the topic;
onco-exercise then creates one Subscription per full service (Tasks it owns, id-only) and the server notifies
the service of every later change; the write that came before the Subscription is notified by us, signed."""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.config import Settings
from service.fhir.client import FhirClient
from service.notify.bundle import TASK_TOPIC, focus_references
from service.notify.dispatch import notify_after_write
from service.notify.jwt import verify
from service.smart.keys import load_or_create_keys
from service.storage import SQLiteStore
from tests.fhir_client.sekmet_server import close_ctx, sekmet_app
from tests.support.live import free_port, serve

OWNER = "Organization/community-exercise-programme"


def _receiver() -> tuple[FastAPI, list[dict[str, Any]]]:
    got: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> JSONResponse:
        body = await request.body()
        got.append({"auth": request.headers.get("authorization"), "raw": body, "json": json.loads(body)})
        return JSONResponse({"resourceType": "OperationOutcome", "issue": []})

    return app, got


def _task_topic() -> dict[str, Any]:
    """The SDOH Clinical Care Task topic as sekmet stores topics (an R4 Basic with the R5 topic extensions)."""
    from sekmet.subscriptions.backport import ST, topic_basic

    basic = topic_basic("sdoh-task", "Task", "Any change to a Task", "Task", "true", [("owner", "Task")])
    for ext in basic["extension"]:
        if ext["url"] == f"{ST}.url":
            ext["valueUri"] = TASK_TOPIC
    return basic


def _task(status: str, n: int) -> dict[str, Any]:
    return {"resourceType": "Task", "status": status, "intent": "order",
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
            "focus": {"reference": f"ServiceRequest/ref-{n}"}, "for": {"reference": "Patient/p1"},
            "authoredOn": "2026-01-01", "requester": {"reference": "Practitioner/dr"}, "owner": {"reference": OWNER}}


async def _write(fhir: FhirClient, status: str, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    task = _task(status, n)
    created = await fhir.create(task)
    written = [{"resourceType": "Task", "id": created.id, "reference": f"Task/{created.id}",
                "url": f"{fhir.base_url}/Task/{created.id}", "status": "created"}]
    return [{"fullUrl": f"urn:uuid:t{n}", "resource": task}], written


async def _until(check: Any, seconds: float = 15.0) -> Any:
    for _ in range(int(seconds * 20)):
        got = check()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_subscription_on_a_server_that_offers_the_task_topic(tmp_path: Path) -> None:
    fhir_port, hook_port = free_port(), free_port()
    base = f"http://127.0.0.1:{fhir_port}/fhir"
    fhir_app, ctx = sekmet_app(base)
    hook_app, got = _receiver()
    endpoint = f"http://127.0.0.1:{hook_port}/hook"
    settings = Settings(public_url="http://127.0.0.1:9", data_dir=tmp_path, notify_retry_seconds=0.2,
                        exercise_services=[{"reference": OWNER, "name": "Moving Forward", "endpoint": endpoint}])
    keys = load_or_create_keys(settings)
    with ExitStack() as stack:
        stack.callback(close_ctx, ctx)
        stack.enter_context(serve(fhir_app, fhir_port))
        stack.enter_context(serve(hook_app, hook_port))
        httpx.put(f"{base}/Basic/topic-sdoh-task", json=_task_topic(), timeout=10).raise_for_status()

        async def scenario() -> None:
            store = SQLiteStore(tmp_path / "state.db")
            fhir = FhirClient(base, timeout=10)
            try:
                cap = await fhir.capabilities()
                assert cap.supports_topic(TASK_TOPIC)
                # 1. the first referral: the Subscription is created, and this write is notified by us (signed)
                entries, written = await _write(fhir, "requested", 1)
                [s1] = await notify_after_write(settings=settings, store=store, keys=keys, entries=entries,
                                                written=written, previous_status={}, ehr=fhir, capability=cap)
                assert s1["channel"] == "direct" and s1["subscription"].startswith("Subscription/")
                ours = await _until(lambda: [g for g in got if g["auth"]])
                claims = verify(ours[0]["auth"][7:], ours[0]["raw"], keys.public_jwks(),
                                issuer=settings.public_url, audience=endpoint)
                assert claims["notification_id"] == ours[0]["json"]["id"]
                assert focus_references(ours[0]["json"]) == [written[0]["url"]]
                sub = await fhir.read("Subscription", s1["subscription"].split("/")[1])
                assert sub["status"] == "active" and sub["channel"]["endpoint"] == endpoint  # after the handshake
                # 2. the service moves its Task: the server tells it (id-only), nobody polls
                task = await fhir.read("Task", written[0]["id"])
                await fhir.update({**task, "status": "accepted", "businessStatus": {"text": "Booked"}})
                pings = await _until(lambda: [g for g in got if not g["auth"] and focus_references(g["json"])])
                assert focus_references(pings[0]["json"]) == [written[0]["url"]]
                # 3. the next referral: handed to the Subscription, not sent twice
                entries, written2 = await _write(fhir, "requested", 2)
                [s2] = await notify_after_write(settings=settings, store=store, keys=keys, entries=entries,
                                                written=written2, previous_status={}, ehr=fhir, capability=cap)
                assert (s2["channel"], s2["status"]) == ("subscription", "handed-over")
                await _until(lambda: [g for g in got if written2[0]["url"] in focus_references(g["json"])])
                await asyncio.sleep(0.5)
                assert len([g for g in got if g["auth"]]) == 1  # only the first write was sent by us
                subs = await fhir.search("Subscription", [("url", endpoint)])
                assert len(subs.resources) == 1
            finally:
                await fhir.aclose()
                await store.close()

        asyncio.run(scenario())


def test_a_server_that_refuses_the_subscription_falls_back_to_our_notification(tmp_path: Path) -> None:
    import respx

    from service.fhir.capability import TOPIC_CANONICAL, parse_capability

    base = "https://ehr.example/fhir"
    cap = parse_capability({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": [
        {"type": "Subscription", "interaction": [{"code": "create"}, {"code": "search-type"}],
         "extension": [{"url": TOPIC_CANONICAL, "valueCanonical": TASK_TOPIC}]}]}]})
    assert cap.supports_topic(TASK_TOPIC)
    settings = Settings(public_url="http://127.0.0.1:9", data_dir=tmp_path, exercise_services=[
        {"reference": OWNER, "name": "Moving Forward", "endpoint": "http://127.0.0.1:9/hook"}])
    task = _task("requested", 1)
    entries = [{"fullUrl": "urn:uuid:t1", "resource": task}]
    written = [{"resourceType": "Task", "id": "t1", "reference": "Task/t1", "url": f"{base}/Task/t1",
                "status": "created"}]

    async def scenario() -> dict[str, Any]:
        store = SQLiteStore(tmp_path / "state.db")
        fhir = FhirClient(base, timeout=5)
        try:
            with respx.mock(assert_all_called=False) as mock:
                mock.get(f"{base}/Subscription").respond(403, json={"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "forbidden"}]})
                [summary] = await notify_after_write(settings=settings, store=store,
                                                     keys=load_or_create_keys(settings), entries=entries,
                                                     written=written, previous_status={}, ehr=fhir, capability=cap)
            return summary
        finally:
            await fhir.aclose()
            await store.close()

    summary = asyncio.run(scenario())
    assert (summary["channel"], summary["status"]) == ("direct", "queued") and "403" in summary["note"]
