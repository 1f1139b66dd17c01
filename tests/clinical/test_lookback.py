"""The hook's lookback (issue 17) reads less history and must change nothing the rules, the card or its draft
referral say.

Every scenario Bundle, every real-world case (tests/fixtures/realworld, coded as EHRs send data) and the
benchmark's two-year patient is spread over time: each Observation is copied at eight ages from 20 days to 800
days back, its value scaled to 0.4x or 1.6x so that a copy read by mistake moves a rule (a low platelet count,
a heavier weight six months ago, a fever). The snapshot with the hook's lookback must give the same current
and stale values, the same unreadable results, the same prescription and the same card as the full snapshot.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timedelta
from typing import Any, Mapping

import pytest

from service.clinical import lookback as lb
from service.clinical.prescribe import prescribe
from service.clinical.snapshot import build_snapshot, parse_datetime
from service.cds_hooks.cards import CardContext, decide
from service.terminology import get_terminology
from tests.clinical.support import NOW, bundle, preferences, scenario_names
from tests.clinical.test_realworld import MANIFEST, REALWORLD

AGES_DAYS = (20, 45, 100, 170, 200, 300, 380, 800)
CTX = CardContext(service_id="onco-exercise-encounter-start", public_url="https://onco.example",
                  exercise_service_ref="Organization/exercise-service", user_ref="Practitioner/onc-1",
                  hook_instance="d3b0c1a2-0000-4000-8000-000000000001", encounter_id="enc-1")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _scaled(holder: dict[str, Any], factor: float) -> None:
    q = holder.get("valueQuantity")
    if isinstance(q, dict) and isinstance(q.get("value"), (int, float)) and not isinstance(q.get("value"), bool):
        q["value"] = round(q["value"] * factor, 3)
    for comp in holder.get("component") or ():
        if isinstance(comp, dict):
            _scaled(comp, factor)


def spread(data: dict[str, Any], first: bool = False, periods: bool = True) -> dict[str, Any]:
    """`data` with every dated Observation also copied at AGES_DAYS before its own time, values scaled; every
    third copy dated by effectivePeriod instead (never set aside unread). `first`: the copies come before the
    originals in the Bundle (the order EHRs send is not ours to choose). `periods=False`: all by dateTime."""
    out = copy.deepcopy(data)
    extra = []
    for entry in out.get("entry") or ():
        res = entry.get("resource") or {}
        when = parse_datetime(res.get("effectiveDateTime")) if res.get("resourceType") == "Observation" else None
        if when is None:
            continue
        for i, days in enumerate(AGES_DAYS):
            old = copy.deepcopy(res)
            old["id"] = f"{res.get('id', 'obs')}-older-{days}"
            at = (when - timedelta(days=days)).isoformat()
            if periods and i % 3 == 2:
                del old["effectiveDateTime"]
                old["effectivePeriod"] = {"start": at, "end": at}
            else:
                old["effectiveDateTime"] = at
            _scaled(old, 0.4 if i % 2 else 1.6)
            extra.append({"fullUrl": f"urn:uuid:{old['id']}", "resource": old})
    entries = list(out.get("entry") or [])
    out["entry"] = [*extra, *entries] if first else [*entries, *extra]
    return out


def _card(prescription: Any, snapshot: Any) -> Any:
    plan = decide(prescription, snapshot, CTX, complete=True, missing=[], budget=5.0)
    return plan.kind, json.loads(UUID.sub("U", json.dumps(plan.card, sort_keys=True))) if plan.card else None


def outcome(data: dict[str, Any], lookback: Mapping[str, int] | None, prefs: Any = None) -> dict[str, Any]:
    s = build_snapshot(data, NOW, lookback=lookback)
    p = prescribe(s, NOW, prefs)
    return {"latest": s.latest, "stale": s.stale, "unreadable": s.unreadable, "prescription": p,
            "card": _card(p, s)}


def cases() -> list[tuple[str, dict[str, Any], Any]]:
    from tests.cds_hooks import patients

    out = [(f"scenario/{n}", bundle(n), preferences(n)) for n in scenario_names()]
    out += [(f"realworld/{n}", json.loads((REALWORLD / f"{n}.json").read_text(encoding="utf-8")), None)
            for n in sorted(MANIFEST)]
    bulky = patients.bulky("bench-patient", months=27).resources()
    out.append(("bench/bulky", {"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in bulky]}, None))
    return out


CASES = cases()


@pytest.mark.parametrize("name,data,prefs", CASES, ids=[c[0] for c in CASES])
def test_the_lookback_changes_nothing_the_rules_or_card_say(name: str, data: dict[str, Any], prefs: Any) -> None:
    for first in (False, True):
        spread_data = spread(data, first)
        assert outcome(spread_data, lb.hook_lookback(), prefs) == outcome(spread_data, None, prefs), (name, first)


def test_the_lookback_reads_less() -> None:
    data = spread(bundle("baseline_breast"), periods=False)
    full = build_snapshot(data, NOW)
    short = build_snapshot(data, NOW, lookback=lb.hook_lookback())
    for key in ("platelets", "hemoglobin"):
        assert len(full.history[key]) == 1 + len(AGES_DAYS) and len(short.history[key]) == 1, key
    # the rules' measures only: the follow-up card's functional tests and the companion's logs stay whole
    assert not lb.CURRENT_VALUE_MEASURES & {"six-minute-walk", "sit-to-stand", "tug", "grip-right", "grip-left",
                                            "evs-minutes-per-week", "exercise-minutes", "sessions-attended"}


def test_every_lookback_covers_the_max_age_and_the_windows() -> None:
    infos = get_terminology().measures()
    days = lb.hook_lookback()
    assert set(days) == lb.CURRENT_VALUE_MEASURES & set(infos)
    assert set(days) == lb.CURRENT_VALUE_MEASURES, "a lookback measure missing from terminology/"
    for key, n in days.items():
        assert n >= infos[key].max_age_days + lb.MARGIN_DAYS, key
    assert days["weight"] >= 2 * 182 and days["platelets"] >= 14 + 3


def test_a_stale_value_is_still_the_newest_older_one() -> None:
    """With nothing inside the lookback, the newest older result is read (and shown as stale)."""
    data = bundle("baseline_breast")
    for e in data["entry"]:
        r = e["resource"]
        if r.get("resourceType") == "Observation" and r.get("effectiveDateTime"):
            r["effectiveDateTime"] = (parse_datetime(r["effectiveDateTime"]) - timedelta(days=400)).isoformat()
    spread_data = spread(data, periods=False)
    short = build_snapshot(spread_data, NOW, lookback=lb.hook_lookback())
    full = build_snapshot(spread_data, NOW)
    assert short.stale and short.stale == full.stale and not short.latest
    assert all(len(v) <= 2 for k, v in short.history.items() if k in lb.CURRENT_VALUE_MEASURES)


def test_a_too_short_lookback_is_caught() -> None:
    """The equivalence check above can fail: a lookback shorter than the rules' windows changes outcomes."""
    short = {k: 3 for k in lb.hook_lookback()}
    differs = [name for name, data, prefs in CASES
               if outcome(spread(data), short, prefs) != outcome(spread(data), None, prefs)]
    assert len(differs) > 10


def test_the_lookback_is_measured_from_now() -> None:
    data = spread(bundle("baseline_breast"), periods=False)
    later = NOW + timedelta(days=30)
    s = build_snapshot(data, later, lookback=lb.hook_lookback())
    cut = later - timedelta(days=lb.hook_lookback()["hemoglobin"])
    hist = s.history.get("hemoglobin", ())
    assert all(m.effective >= cut for m in hist) or len(hist) == 1
    assert isinstance(cut, datetime)


@pytest.mark.parametrize("mangle", [
    lambda r: r.update(code={"coding": [{"system": "http://loinc.org", "code": ["718-7"]}]}),
    lambda r: r.update(code={"coding": {"system": "http://loinc.org"}}),
    lambda r: r.update(code="718-7"),
    lambda r: r.update(effectiveDateTime="last spring"),
    lambda r: r.update(effectiveDateTime=20240101),
    lambda r: r.update(subject={"reference": "Patient/someone-else"}),
    lambda r: r.update(status="entered-in-error"),
    lambda r: r.update(status=["final"]),
    lambda r: r.update(status={"code": "final"}),
    lambda r: r.update(effectiveDateTime="0001-01-01T00:00:00+01:00"),
    lambda r: r.pop("id"),
], ids=["unhashable code", "coding not a list", "code a string", "date words", "date a number", "other patient",
        "entered in error", "status a list", "status an object", "date before year 1 in UTC", "no id"])
def test_malformed_old_results_are_handled_as_without_the_lookback(mangle: Any) -> None:
    """An odd old result never breaks the hook's snapshot, and reads the same as without the lookback."""
    data = spread(bundle("hb_7_g_dl"))
    for e in data["entry"]:
        if "-older-" in e["resource"].get("id", ""):
            mangle(e["resource"])
    assert outcome(data, lb.hook_lookback()) == outcome(data, None)


# -- found by an independent review of the lookback (each differed, or raised, before it was fixed) ---------

LOINC = "http://loinc.org"
RECENT = "2026-11-19T09:30:00Z"  # a day before NOW


def _obs(rid: str, loinc: str, value: float | None, unit: str, when: str | None = None, **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Observation", "id": rid, "status": "final",
                           "code": {"coding": [{"system": LOINC, "code": loinc}]},
                           "subject": {"reference": "Patient/p1"}}
    if value is not None:
        res["valueQuantity"] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    if when:
        res["effectiveDateTime"] = when
    res.update(extra)
    return {"resource": res}


def _without(data: dict[str, Any], *ids: str) -> dict[str, Any]:
    return {**data, "entry": [e for e in data["entry"] if e["resource"].get("id") not in ids]}


def _same(data: dict[str, Any]) -> Any:
    short, full = outcome(data, lb.hook_lookback()), outcome(data, None)
    assert short == full
    return full


def test_an_older_result_dated_otherwise_does_not_hide_the_stale_one() -> None:
    """platelets 15 three weeks ago (stale) and an older 210 dated by a period, or only by `issued`: the stale
    value is still 15 (the dangerous one), as without the lookback."""
    for dated in ({"effectivePeriod": {"start": "2026-09-01T09:00:00Z", "end": "2026-09-01T09:30:00Z"}},
                  {"issued": "2026-09-01T09:30:00Z"}):
        data = copy.deepcopy(bundle("platelets_stale_on_chemo"))
        data["entry"].append(_obs("plt-other-date", "777-3", 210, "10*3/uL", **dated))
        assert _same(data)["stale"]["platelets"].value == 15


def test_a_panel_does_not_hide_a_newer_standalone_result() -> None:
    data = copy.deepcopy(bundle("platelets_stale_on_chemo"))
    panel = _obs("bp-panel", "85354-9", None, "mm[Hg]", "2026-05-01T09:30:00Z")
    panel["resource"]["component"] = [
        {"code": {"coding": [{"system": LOINC, "code": code}]},
         "valueQuantity": {"value": v, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        for code, v in (("8480-6", 120), ("8462-4", 80))]
    data["entry"] += [panel, _obs("sbp", "8480-6", 185, "mm[Hg]", "2026-08-01T09:30:00Z")]
    assert _same(data)["stale"]["bp-systolic"].value == 185


def test_the_first_copy_of_a_resource_counts_with_or_without_the_lookback() -> None:
    data = copy.deepcopy(bundle("platelets_stale_on_chemo"))
    data["entry"] += [_obs("dup", "718-7", 12.0, "g/dL", "2025-06-01T09:30:00Z"),
                      _obs("dup", "777-3", 12, "10*3/uL", RECENT)]
    _same(data)


def test_a_same_draw_conflict_derives_the_same_neutrophil_count() -> None:
    data = _without(copy.deepcopy(bundle("platelets_stale_on_chemo")), "plt", "hb", "anc")
    draw = "2026-10-25T09:30:00Z"  # 26 days ago: outside the blood count's lookback
    data["entry"] += [_obs("wbc-a", "6690-2", 2.0, "10*3/uL", draw), _obs("wbc-b", "6690-2", 4.0, "10*3/uL", draw),
                      _obs("neut-pct", "770-8", 50, "%", draw)]
    assert _same(data)["stale"]["anc"].derived_from


def test_findings_and_cited_data_do_not_depend_on_the_input_order() -> None:
    """Two flagged results and an old one first in the Bundle; a derived ANC that carries the white cells'
    reference: the card words each cited resource as what it holds."""
    ll = {"interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                          "code": "LL"}]}]}
    base = _without(copy.deepcopy(bundle("platelets_stale_on_chemo")), "plt", "hb", "anc")
    flagged = copy.deepcopy(base)
    flagged["entry"] += [_obs("plt-old", "777-3", 150, "10*3/uL", "2026-01-01T09:30:00Z"),
                         _obs("hb-now", "718-7", 12.5, "g/dL", RECENT, **ll),
                         _obs("plt-now", "777-3", 160, "10*3/uL", RECENT, **ll),
                         _obs("anc-now", "751-8", 3.0, "10*3/uL", RECENT)]
    _same(flagged)
    derived = copy.deepcopy(base)
    derived["entry"][2:2] = [_obs("anc-2024", "751-8", 3.0, "10*3/uL", "2024-11-01T09:30:00Z")]
    derived["entry"] += [_obs("plt-now", "777-3", 200, "10*3/uL", RECENT), _obs("hb-now", "718-7", 12.5, "g/dL", RECENT),
                         _obs("wbc-now", "6690-2", 4.0, "10*3/uL", RECENT), _obs("neut-now", "770-8", 40, "%", RECENT)]
    card = json.dumps(_same(derived)["card"])
    assert "White blood cells 4" in card and "Absolute neutrophil count 1.6" not in card
