"""Every resource we write, for every sandbox cohort patient (real prescribe + write-back builders of every
strategy, and the CDS card drafts), passes our own `validate` (PA IG profiles + R4 core invariants) and an
independent validator we did not write (Medplum's `validateResource`, installed from npm by tests/oracle)."""

from __future__ import annotations

import collections
import copy
import re
from typing import Any, Callable

import pytest

from service.fhir.validate import validate_resource
from tests.fhir_resources.written import Written, cohort_written, prescribe_bundles
from tests.oracle import medplum


def test_the_corpus_covers_every_strategy_and_resource_type():
    written = cohort_written()
    origins = collections.Counter(w.origin for w in written)
    assert set(origins) == {"prescribe", "full", "service-request-only", "document", "revision", "cds-draft"}, origins
    types = {w.resource["resourceType"] for w in written}
    assert types == {"CarePlan", "Goal", "ServiceRequest", "Task", "Provenance", "DocumentReference"}
    assert len({w.patient for w in written}) >= 30
    revised = [w.resource for w in written if w.origin == "revision"]
    statuses = collections.Counter((r["resourceType"], r.get("status") or r.get("lifecycleStatus")) for r in revised)
    assert {("ServiceRequest", "revoked"), ("Task", "cancelled"), ("Task", "completed"), ("Goal", "cancelled")} \
        <= set(statuses), statuses  # the updates of a revision, and a clearance completed


def test_our_validator_finds_no_error_on_anything_we_write():
    found = [f"{w.label}: {i}" for w in cohort_written() for i in validate_resource(w.resource)
             if i.severity == "error"]
    assert found == [], "\n".join(found[:20])


def medplum_errors(written: list[Written] | tuple[Written, ...]) -> tuple[list[str], int]:
    """Medplum's error/fatal findings on `written` (one line each, with where it came from), and the number of
    issues of any severity. The one check both the green run and the broken-resource run below use."""
    results = medplum.validate(w.resource for w in written)
    assert len(results) == len(written)
    found = [f"{w.label}: {i}" for w, issues in zip(written, results) for i in issues
             if i.severity in ("error", "fatal")]
    return found, sum(len(r) for r in results)


def test_medplum_finds_no_error_on_anything_we_write(capsys: pytest.CaptureFixture[str]):
    written = cohort_written()
    found, issues = medplum_errors(written)
    with capsys.disabled():
        print(f"\nMedplum validateResource: {len(written)} resources, {len(found)} error(s), "
              f"{issues} issue(s) of any severity")
    assert found == [], "\n".join(found[:20])


def _broken(w: Written, change: Callable[[dict[str, Any]], None]) -> Written:
    resource = copy.deepcopy(w.resource)
    change(resource)
    return Written(w.patient, "broken", resource)


BREAKS: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    # resource type -> (what breaks, how, what Medplum must say)
    "Task": ("lastModified before authoredOn", lambda r: r.update(lastModified="2020-01-01T00:00:00Z"), "inv-1"),
    "ServiceRequest": ("a negative session duration",
                       lambda r: r.get("occurrenceTiming", {}).get("repeat", {}).update(duration=-30)
                       if "occurrenceTiming" in r else r.update(occurrencePeriod={"start": "2026-05-01",
                                                                                   "end": "2026-03-01"}),
                       "tim-4|per-1"),
    "CarePlan": ("no subject", lambda r: r.pop("subject"), "subject"),
    "Goal": ("no description (core 1..1)", lambda r: r.pop("description"), "description"),
}
# Not in the list: a code outside a required value set (e.g. Goal.lifecycleStatus "done"). Medplum's
# validateResource does not check bindings without a terminology server (checked here: no issue at all); our
# validator does (JSON Schema enums and required bindings), see test_validate.py.


def test_the_same_check_fails_on_deliberately_broken_resources():
    """Real written resources, each broken in one way, among the real corpus: the check above names each
    broken one (and only those), and so does our own validator."""
    written = list(cohort_written())
    broken = [_broken(next(w for w in written if w.resource["resourceType"] == rtype and
                           (rtype != "ServiceRequest" or "occurrenceTiming" in w.resource)), change)
              for rtype, (_, change, _) in BREAKS.items()]
    found, _ = medplum_errors(written[:200] + broken)
    assert found and all(":broken/" in f or "/broken/" in f for f in found), found
    for w in broken:
        what, _, said = BREAKS[w.resource["resourceType"]]
        lines = [f for f in found if f.startswith(w.label + ":")]
        assert lines and any(re.search(said, f) for f in lines), (what, found)
        assert any(i.severity == "error" for i in validate_resource(w.resource)), what


def test_medplum_is_a_real_oracle():
    """It does reject what is wrong (so a green run means something): Task inv-1, a missing subject."""
    bad_task = {"resourceType": "Task", "status": "requested", "intent": "order",
                "authoredOn": "2026-03-02T09:30:00Z", "lastModified": "2026-03-01T00:00:00Z"}
    bad_status = {"resourceType": "ServiceRequest", "status": "active", "intent": "order"}  # subject is 1..1
    [task_issues, sr_issues] = medplum.validate([bad_task, bad_status])
    assert any("inv-1" in i.text for i in task_issues), task_issues
    assert any(i.severity == "error" for i in sr_issues), sr_issues


URN_WARNING = re.compile(r'^Invalid reference: got "(urn:uuid:[0-9a-f-]{36})", expected (.+)$')


def test_medplum_on_the_transaction_bundles_as_prescribe_prints_them():
    """The untouched Bundles (urn:uuid references between entries): Medplum's only findings are its
    "Invalid reference" warnings on urn:uuid references it cannot type-check; each must point at an entry of
    the Bundle whose type is one Medplum expects there (so the reference is right after the server resolves it)."""
    bundles = prescribe_bundles()
    results = medplum.validate(tx for _, tx in bundles)
    checked = 0
    for (pid, tx), issues in zip(bundles, results):
        types = {e["fullUrl"]: e["resource"]["resourceType"] for e in tx["entry"]}
        for issue in issues:
            m = URN_WARNING.match(issue.text)
            assert issue.severity == "warning" and m, f"{pid}: {issue}"
            urn, expected = m.groups()
            assert urn in types, f"{pid}: {urn} resolves to no entry ({issue})"
            assert f"/StructureDefinition/{types[urn]}\"" in expected, f"{pid}: {types[urn]} not expected ({issue})"
            checked += 1
    assert checked > len(bundles)  # the warnings are there to be checked (Medplum still reports them)
