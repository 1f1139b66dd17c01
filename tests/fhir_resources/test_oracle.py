"""Every resource we write, for every sandbox cohort patient (real prescribe + write-back builders of every
strategy, and the CDS card drafts), passes our own `validate` (PA IG profiles + R4 core invariants) and an
independent validator we did not write (Medplum's `validateResource`, installed from npm by tests/oracle)."""

from __future__ import annotations

import collections

import pytest

from service.fhir.validate import validate_resource
from tests.fhir_resources.written import cohort_written
from tests.oracle import medplum


def test_the_corpus_covers_every_strategy_and_resource_type():
    written = cohort_written()
    origins = collections.Counter(w.origin for w in written)
    assert set(origins) == {"full", "service-request-only", "document", "cds-draft"}, origins
    types = {w.resource["resourceType"] for w in written}
    assert types == {"CarePlan", "Goal", "ServiceRequest", "Task", "Provenance", "DocumentReference"}
    assert len({w.patient for w in written}) >= 30


def test_our_validator_finds_no_error_on_anything_we_write():
    found = [f"{w.label}: {i}" for w in cohort_written() for i in validate_resource(w.resource)
             if i.severity == "error"]
    assert found == [], "\n".join(found[:20])


def test_medplum_finds_no_error_on_anything_we_write(capsys: pytest.CaptureFixture[str]):
    written = cohort_written()
    results = medplum.validate(w.resource for w in written)
    assert len(results) == len(written)
    found = [f"{w.label}: {i}" for w, issues in zip(written, results) for i in issues if i.severity in ("error",
                                                                                                       "fatal")]
    with capsys.disabled():
        print(f"\nMedplum validateResource: {len(written)} resources, {len(found)} error(s), "
              f"{sum(len(r) for r in results)} issue(s) of any severity")
    assert found == [], "\n".join(found[:20])


def test_medplum_is_a_real_oracle():
    """It does reject what is wrong (so a green run means something): Task inv-1, a missing subject."""
    bad_task = {"resourceType": "Task", "status": "requested", "intent": "order",
                "authoredOn": "2026-03-02T09:30:00Z", "lastModified": "2026-03-01T00:00:00Z"}
    bad_status = {"resourceType": "ServiceRequest", "status": "active", "intent": "order"}  # subject is 1..1
    [task_issues, sr_issues] = medplum.validate([bad_task, bad_status])
    assert any("inv-1" in i.text for i in task_issues), task_issues
    assert any(i.severity == "error" for i in sr_issues), sr_issues
