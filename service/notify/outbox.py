"""Delivering notifications to exercise services: at least once on the wire, once per notification id.

A notification is stored before the first attempt (namespace `notify-outbox`, kept 30 days: the record of what
was sent, when, how often, and the outcome) and listed as due (`notify-due`) until it is delivered or given
up. Each attempt takes a short lock on the id (so two replicas or a retry loop never send it at once), signs a
fresh JWT (service.notify.jwt) and POSTs the same body. 2xx = delivered; network errors, 5xx, 408 and 429 are
retried after `notify_retry_seconds`, doubled each time (at most 15 minutes), up to `notify_max_attempts`;
other 4xx answers are final (the receiver refuses it: retrying cannot help). The endpoint is looked up in the
configuration at every attempt, by service reference: nothing read from FHIR data is ever contacted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx

from service import metrics
from service.audit import record_notification
from service.exercise_services import service_for
from service.notify import jwt as notify_jwt
from service.storage import Store

log = logging.getLogger("service.notify")

NS = "notify-outbox"
NS_DUE = "notify-due"
NS_LOCK = "notify-lock"
NS_SEQ = "notify-seq"
KEEP_SECONDS = 30 * 86400.0
MAX_DELAY = 900.0
LOCK_SECONDS = 60.0
RETRYABLE = frozenset({408, 425, 429})
MAX_RESPONSE_NOTE = 200


def backoff(first: float, attempts: int) -> float:
    """Seconds to wait after `attempts` failed attempts."""
    return min(first * (2 ** max(attempts - 1, 0)), MAX_DELAY)


async def next_event_numbers(store: Store, service_ref: str, count: int) -> int:
    """The first of `count` new event numbers for the service's stream (claimed atomically, one by one)."""
    last = await store.get(NS_SEQ, service_ref)
    n = int((last or {}).get("last", 0))
    first = None
    claimed = 0
    while claimed < count:
        n += 1
        if await store.add(NS_SEQ, f"{service_ref}#{n:012d}", {}, ttl=KEEP_SECONDS):
            first = n if first is None else first
            claimed += 1
    await store.put(NS_SEQ, service_ref, {"last": n})
    return first if first is not None else n


async def enqueue(store: Store, *, nid: str, service_ref: str, body: dict[str, Any], tasks: list[str]) -> bool:
    """Store the notification as due; False when this id is already known (a duplicate is never sent)."""
    record = {"id": nid, "service": service_ref, "body": json.dumps(body, separators=(",", ":")),
              "tasks": tasks, "status": "pending", "attempts": 0, "createdAt": time.time(),
              "nextAt": time.time(), "lastError": None, "deliveredAt": None}
    if not await store.add(NS, nid, record, ttl=KEEP_SECONDS):
        metrics.NOTIFICATIONS.labels("direct", "duplicate").inc()
        return False
    await store.put(NS_DUE, nid, {"at": record["nextAt"]}, ttl=KEEP_SECONDS)
    metrics.NOTIFICATIONS.labels("direct", "queued").inc()
    return True


async def attempt(store: Store, settings: Any, keys: Any, nid: str, *,
                  transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any] | None:
    """One delivery attempt if the notification is due and not being sent elsewhere; the updated record."""
    if not await store.add(NS_LOCK, nid, {"at": time.time()}, ttl=LOCK_SECONDS):
        return None
    try:
        rec = await store.get(NS, nid)
        if rec is None or rec.get("status") != "pending" or float(rec.get("nextAt", 0)) > time.time():
            if rec is None or rec.get("status") != "pending":
                await store.delete(NS_DUE, nid)
            return rec
        service = service_for(settings.exercise_service_list(), rec["service"])
        if service is None or not service.endpoint:
            return await _finish(store, settings, rec, "failed", "no endpoint configured for this service")
        body = rec["body"].encode("utf-8")
        alg = settings.smart_alg
        token = notify_jwt.sign(keys.signing_key(alg), alg, issuer=settings.public_url, audience=service.endpoint,
                                nid=nid, body=body)
        rec["attempts"] = int(rec.get("attempts", 0)) + 1
        error, final = await _post(service.endpoint, body, token, settings.fhir_timeout_seconds, transport)
        if error is None:
            return await _finish(store, settings, rec, "delivered", None)
        rec["lastError"] = error
        if final or rec["attempts"] >= settings.notify_max_attempts:
            return await _finish(store, settings, rec, "failed", error)
        rec["nextAt"] = time.time() + backoff(settings.notify_retry_seconds, rec["attempts"])
        await store.put(NS, nid, rec, ttl=KEEP_SECONDS)
        await store.put(NS_DUE, nid, {"at": rec["nextAt"]}, ttl=KEEP_SECONDS)
        metrics.NOTIFICATIONS.labels("direct", "retry").inc()
        log.warning("notification %s to %s: attempt %d failed (%s); retrying in %.0f s", nid, rec["service"],
                    rec["attempts"], error, rec["nextAt"] - time.time())
        return rec
    finally:
        await store.delete(NS_LOCK, nid)


async def _post(endpoint: str, body: bytes, token: str, timeout: float,
                transport: httpx.AsyncBaseTransport | None) -> tuple[str | None, bool]:
    """(error or None, whether the error is final)."""
    headers = {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False) as client:
            r = await client.post(endpoint, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"no answer ({type(exc).__name__})", False
    if 200 <= r.status_code < 300:
        return None, False
    final = 400 <= r.status_code < 500 and r.status_code not in RETRYABLE
    return f"HTTP {r.status_code}", final


async def _finish(store: Store, settings: Any, rec: dict[str, Any], status: str,
                  error: str | None) -> dict[str, Any]:
    rec["status"] = status
    rec["lastError"] = error
    if status == "delivered":
        rec["deliveredAt"] = time.time()
    await store.put(NS, rec["id"], rec, ttl=KEEP_SECONDS)
    await store.delete(NS_DUE, rec["id"])
    metrics.NOTIFICATIONS.labels("direct", status).inc()
    await record_notification(store, service=rec["service"], channel="direct", outcome=status,
                              notification_id=rec["id"], tasks=rec.get("tasks") or [],
                              attempts=int(rec.get("attempts", 0)), detail=error,
                              retention_days=settings.audit_retention_days)
    log.log(logging.INFO if status == "delivered" else logging.ERROR, "notification %s to %s: %s after %d "
            "attempt(s)%s", rec["id"], rec["service"], status, rec.get("attempts", 0), f" ({error})" if error else "")
    return rec


async def deliver_due(store: Store, settings: Any, keys: Any, *,
                      transport: httpx.AsyncBaseTransport | None = None) -> int:
    """Attempt every due notification once; returns how many were attempted."""
    now = time.time()
    due = [nid for nid, v in await store.scan(NS_DUE) if float(v.get("at", 0)) <= now]
    for nid in due:
        try:
            await attempt(store, settings, keys, nid, transport=transport)
        except Exception:  # noqa: BLE001 - one bad record must not stop the others
            log.exception("notification %s: delivery attempt crashed", nid)
    return len(due)


def send_soon(store: Store, settings: Any, keys: Any, nid: str) -> None:
    """The first attempt now, in the background (the clinician's signing does not wait for the receiver)."""
    task = asyncio.get_running_loop().create_task(attempt(store, settings, keys, nid))
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task[Any]] = set()


@asynccontextmanager
async def retry_lifespan(app: Any) -> AsyncIterator[None]:
    """A loop that retries due notifications (also those left over from before a restart)."""
    from service.smart.runtime import runtime

    settings = app.state.settings
    tick = min(1.0, settings.notify_retry_seconds / 2)

    async def loop() -> None:
        while True:
            await asyncio.sleep(tick)
            try:
                await deliver_due(app.state.store, settings, runtime(app).keys)
            except Exception:  # noqa: BLE001 - keep retrying on the next tick
                log.exception("notification retry loop")

    task = asyncio.get_running_loop().create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        for t in list(_BACKGROUND):
            t.cancel()
