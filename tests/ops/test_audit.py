"""Every write-back leaves an audit record: in the dedicated log and in the store's `audit` namespace."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest

from service.audit import AUDIT_LOGGER, AUDIT_NS, record_writeback, recent_writebacks
from service.logs import JsonFormatter
from service.storage import open_store

NOW = datetime(2026, 1, 22, 9, 30, tzinfo=timezone.utc)


async def test_record_is_logged_and_stored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    written = [
        "CarePlan/cp-1",
        {"response": {"location": "Goal/g-1/_history/1", "status": "201 Created"}},
        {"resource": {"resourceType": "ServiceRequest", "id": "sr-1", "note": [{"text": "PHI text"}]}},
        {"resourceType": "Task", "id": "t-1", "description": "more PHI"},
    ]
    try:
        rec = await record_writeback(store, practitioner="Practitioner/dr-a", patient_ref="Patient/p-9",
                                     strategy="full", written=written, failed=["Provenance: 400 invalid"],
                                     request_id="rid-7", now=NOW)
        assert rec == {
            "event": "writeback", "at": "2026-01-22T09:30:00Z", "practitioner": "Practitioner/dr-a",
            "patient": "Patient/p-9", "strategy": "full", "outcome": "partial",
            "written": ["CarePlan/cp-1", "Goal/g-1/_history/1", "ServiceRequest/sr-1", "Task/t-1"],
            "failed": ["Provenance: 400 invalid"], "requestId": "rid-7",
        }
        logged = [r for r in caplog.records if r.name == AUDIT_LOGGER]
        assert len(logged) == 1
        line = json.loads(JsonFormatter().format(logged[0]))
        # structured: the record's fields are the line's fields (not a JSON string inside msg)
        assert {k: line[k] for k in rec} == rec and line["msg"] == "writeback partial"
        assert "PHI text" not in json.dumps(line)  # references only, never contents
        stored = await store.scan(AUDIT_NS)
        assert len(stored) == 1 and stored[0][0].startswith("20260122T093000") and stored[0][1] == rec
        await record_writeback(store, practitioner=None, patient_ref="Patient/p-9", strategy="document",
                               written=[], failed=["DocumentReference: 503"], request_id=None, now=NOW)
        records = await recent_writebacks(store, "20260122")
        assert sorted(r["outcome"] for r in records) == ["failed", "partial"]  # same second: any order
    finally:
        await store.close()


async def test_store_failure_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenStore:
        async def put(self, *args: object, **kwargs: object) -> None:
            raise ConnectionError("redis down")

    caplog.set_level(logging.INFO)
    rec = await record_writeback(BrokenStore(), practitioner="Practitioner/x",  # type: ignore[arg-type]
                                 patient_ref="Patient/1", strategy="full", written=["CarePlan/1"], failed=[],
                                 request_id="r", now=NOW)
    assert rec["outcome"] == "success"
    assert any(r.name == AUDIT_LOGGER for r in caplog.records)  # the log record still went out
    assert any("could not store audit record" in r.getMessage() for r in caplog.records)
