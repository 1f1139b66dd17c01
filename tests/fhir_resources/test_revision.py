"""What was written reads back: open referrals found in a server's resources, and the revision that retires
them (pure parts; tests/smart/test_clearance_flow.py runs the same against the sandbox FHIR server)."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

from service.clinical.model import Clearance
from service.clinical.snapshot import build_snapshot
from service.fhir import resources as R
from service.fhir.open_referrals import open_referrals
from service.fhir.revision import revise
from service.fhir.validate import validate_bundle
from service.fhir.writeback import rewrite_references
from tests.fhir_resources import factories as F

AT = datetime(2026, 3, 3, 9, 0, tzinfo=timezone.utc)
AUTHOR = {"reference": "Practitioner/sandbox-clinician", "display": "Dr Ada Example"}


def _as_stored(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries as a server holds them: ids given, urn:uuid references resolved, version 1."""
    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/x{i}" for i, e in enumerate(entries)}
    out = []
    for e in entries:
        r = copy.deepcopy(e["resource"])
        r["id"] = ids[e["fullUrl"]].split("/")[1]
        r.setdefault("meta", {})["versionId"] = "1"
        rewrite_references(r, ids)
        out.append(r)
    return out


def _deferred() -> list[dict[str, Any]]:
    p = F.prescription(setting="defer", clearance_required=True, components=(),
                       to_resolve=("Repeat the platelet count.",))
    return _as_stored(R.build_prescription_resources(p, F.snapshot(), F.signing()))


def test_a_deferred_set_reads_back_pending_clearance() -> None:
    stored = _deferred()
    [o] = open_referrals(stored)
    assert o.ours and o.pending_clearance and o.state() == "pending-clearance"
    assert o.summary()["toResolve"] == ["Repeat the platelet count."] and o.careplan_ref == "CarePlan/x0"
    assert [t["status"] for t in o.tasks] == ["draft"]
    snap = build_snapshot({"resourceType": "Bundle", "type": "collection",
                           "entry": [{"resource": r} for r in stored]}, AT)
    [ref] = [r for r in snap.referrals if r.status == "on-hold"]
    assert ref.pending_clearance and ref.to_resolve == ("Repeat the platelet count.",)


def test_not_ours_closed_and_plain_requests_are_left_alone() -> None:
    stored = _deferred()
    referral = next(r for r in stored if r["resourceType"] == "ServiceRequest")
    other = copy.deepcopy(referral) | {"id": "theirs", "identifier": [{"system": "urn:x", "value": "1"}]}
    closed = copy.deepcopy(referral) | {"id": "old", "status": "revoked"}
    found = open_referrals([*stored, other, closed])
    assert [(o.ref, o.ours) for o in found] == [("ServiceRequest/x2", True), ("ServiceRequest/theirs", False)]
    new = R.build_prescription_resources(F.prescription(), F.snapshot(), F.signing(key="k2"))
    revised = revise(new, [found[1]], {r["resourceType"] + "/" + r["id"]: r for r in [*stored, other]},
                     signed_at="2026-03-03T09:00:00Z", author=AUTHOR)
    assert revised == new  # never touches a referral it did not write


def test_release_after_clearance_completes_the_clinicians_task_and_revokes_the_hold() -> None:
    stored = _deferred()
    current = {f"{r['resourceType']}/{r['id']}": r for r in stored}
    existing = open_referrals(stored)
    c = Clearance(by="Practitioner/dr-2", by_display="Dr Two", at=AT, rules=("HEME-PLT-20",),
                  reviewed=("Repeat the platelet count.",), note="Platelets 64.")
    new = R.build_prescription_resources(F.prescription(setting="supervised", clearance=c), F.snapshot(),
                                         F.signing(key="k2"))
    out = revise(new, existing, current, signed_at="2026-03-03T09:00:00Z", author=AUTHOR)
    updates = {e["url"]: e for e in out if e.get("method") == "PUT"}
    assert updates["ServiceRequest/x2"]["resource"]["status"] == "revoked"
    assert updates["Task/x3"]["resource"]["status"] == "cancelled"
    assert updates["Task/x3"]["resource"]["statusReason"]["text"].startswith("Replaced by a revised referral")
    clearance = updates["Task/x4"]["resource"]
    assert clearance["status"] == "completed" and clearance["owner"]["reference"] == "Practitioner/dr-2"
    assert clearance["output"][0]["valueString"] == "Repeat the platelet count."
    assert updates["Goal/x1"]["resource"]["lifecycleStatus"] == "cancelled"
    assert all(e["ifMatch"] == 'W/"1"' for e in updates.values())
    # one clearance record: the new set holds no second clearance Task
    assert sum(1 for e in out if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "approve") == 1
    plan = updates["CarePlan/x0"]
    assert plan["resource"]["id"] == "x0" and plan["resource"]["status"] == "active" and plan["check"] is True
    assert len(plan["resource"]["identifier"]) == 2
    referral = next(e["resource"] for e in out if e.get("method") is None
                    and e["resource"]["resourceType"] == "ServiceRequest" and "replaces" in e["resource"])
    assert referral["replaces"] == [{"reference": "ServiceRequest/x2"}]
    assert referral["basedOn"] == [{"reference": "CarePlan/x0"}]
    assert not any(e["fullUrl"] == plan["fullUrl"] for e in out if e.get("method") is None)
    new_only = [e for e in out if e.get("method") is None or e.get("check")]
    assert validate_bundle(R.transaction_bundle([{**e, "ifNoneExist": e.get("ifNoneExist") or ""}
                                                 for e in new_only if e.get("method") is None])) == []


def test_re_deferred_cancels_the_old_clearance_and_asks_again() -> None:
    stored = _deferred()
    current = {f"{r['resourceType']}/{r['id']}": r for r in stored}
    again = R.build_prescription_resources(
        F.prescription(setting="defer", clearance_required=True, components=(), to_resolve=("Repeat it.",)),
        F.snapshot(), F.signing(key="k3"))
    out = revise(again, open_referrals(stored), current, signed_at="2026-03-03T09:00:00Z", author=AUTHOR)
    old = next(e["resource"] for e in out if e.get("url") == "Task/x4")
    assert old["status"] == "cancelled" and "deferred again" in old["statusReason"]["text"]
    assert any(e.get("method") is None and e["resource"].get("status") == "requested"
               and e["resource"]["code"]["coding"][0]["code"] == "approve" for e in out)


def test_a_task_the_service_closed_meanwhile_is_not_reopened() -> None:
    stored = _deferred()
    current = {f"{r['resourceType']}/{r['id']}": copy.deepcopy(r) for r in stored}
    current["Task/x3"]["status"] = "rejected"
    del current["ServiceRequest/x2"]  # deleted on the server: nothing to update
    new = R.build_prescription_resources(F.prescription(), F.snapshot(), F.signing(key="k4"))
    out = revise(new, open_referrals(stored), current, signed_at="2026-03-03T09:00:00Z", author=AUTHOR)
    urls = {e.get("url") for e in out if e.get("method") == "PUT"}
    assert "Task/x3" not in urls and "ServiceRequest/x2" not in urls


def test_a_referral_this_signing_already_wrote_is_not_an_older_one() -> None:
    """After an interrupted attempt committed the set, the retry finds it by identifier; it must not revise it."""
    entries = R.build_prescription_resources(F.prescription(), F.snapshot(), F.signing(key="k1"))
    [o] = open_referrals(_as_stored(entries))
    assert o.written_by(entries)
    assert not o.written_by(R.build_prescription_resources(F.prescription(), F.snapshot(), F.signing(key="k2")))
