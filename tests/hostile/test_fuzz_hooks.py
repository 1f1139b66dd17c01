"""Hypothesis strategies for CDS Hooks request bodies, valid-ish and broken, against the running rig.

Bodies start from real patients (the clinical fixtures in tests/fixtures/bundles, spread over the prefetch
keys the service declares) so they reach the snapshot builder and the rules, then get broken: wrong types,
nulls, NaN/Infinity and huge numbers, huge strings, deep nesting, junk entries and resources in the prefetch
Bundles, keys omitted. Properties: never a 5xx, an answer within 10 s, no stack trace or Python exception
name, errors are OperationOutcomes, 200s are `{"cards": [...]}`. Deterministic (derandomize=True).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.fhir.queries import patient_queries
from tests.hostile.conftest import ES, PV, Rig, assert_no_trace
from tests.smart.conftest import Launched, ehr_launch

BUNDLES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles"
KEY_OF_TYPE = {q.resource_type: q.key for q in patient_queries()}
SEARCH_KEYS = [k for k in KEY_OF_TYPE.values() if k != "patient"]
FUZZ = settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))


def _patients() -> list[dict[str, list[dict[str, Any]]]]:
    """Each fixture bundle as {prefetch key: [resources]}."""
    out = []
    for path in sorted(BUNDLES.glob("*.json"))[:40]:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for e in json.loads(path.read_text()).get("entry", []):
            res = e["resource"]
            key = KEY_OF_TYPE.get(res.get("resourceType"))
            if key:
                by_key.setdefault(key, []).append(res)
        if by_key.get("patient"):
            out.append(by_key)
    return out


PATIENTS = _patients()

scalars = (st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["", "2024-02-30", "9999-12-31T25:61:00Z", "-1", "Patient/", "../../etc",
                              "http://loinc.org", "\u0000", "\ud7ff" * 3]))
junk = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                    max_leaves=15)
huge_string = st.integers(min_value=10_000, max_value=300_000).map(lambda n: "x" * n)
deep = st.integers(min_value=20, max_value=200).map(lambda n: _nest(n))
hostile = junk | huge_string | deep


def _nest(n: int) -> Any:
    value: Any = "bottom"
    for i in range(n):
        value = {"a": value} if i % 2 else [value]
    return value


@st.composite
def broken_resource(draw: Any, res: dict[str, Any]) -> dict[str, Any]:
    """A copy of `res` with one field (top level or one below) replaced, removed or given a junk twin."""
    res = json.loads(json.dumps(res))
    target = res
    keys = [k for k in res if k != "resourceType"]
    if keys and draw(st.booleans()):
        k = draw(st.sampled_from(keys))
        if isinstance(res[k], dict) and res[k]:
            target = res[k]
        elif isinstance(res[k], list) and res[k] and isinstance(res[k][0], dict):
            target = res[k][0]
    keys = list(target) or ["x"]
    k = draw(st.sampled_from(keys + ["resourceType", "id"]))
    how = draw(st.sampled_from(["replace", "delete", "add"]))
    if how == "replace":
        target[k] = draw(hostile)
    elif how == "delete":
        target.pop(k, None)
    else:
        target[draw(st.text(min_size=1, max_size=12))] = draw(hostile)
    return res


@st.composite
def prefetch_bundle(draw: Any, resources: list[dict[str, Any]]) -> Any:
    entries: list[Any] = []
    for res in resources:
        choice = draw(st.integers(0, 9))
        if choice < 6:
            entries.append({"resource": res, "search": {"mode": "match"}})
        elif choice < 9:
            entries.append({"resource": draw(broken_resource(res))})
        else:
            entries.append(draw(junk))
    if draw(st.integers(0, 4)) == 0:  # junk resources of random types
        entries += [{"resource": {"resourceType": draw(st.sampled_from(["Observation", "Condition", "Nonsense",
                                                                        "Bundle", "OperationOutcome", ""])),
                                  **draw(st.dictionaries(st.text(max_size=8), junk, max_size=3))}}
                    for _ in range(draw(st.integers(1, 3)))]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": draw(st.sampled_from(["searchset", "collection",
                                                                                      "searchset", "x"])),
                              "entry": entries}
    if draw(st.integers(0, 6)) == 0:
        bundle[draw(st.sampled_from(["entry", "type", "total", "link"]))] = draw(hostile)
    return bundle


@st.composite
def hook_bodies(draw: Any, service_id: str) -> dict[str, Any]:
    patient = draw(st.sampled_from(PATIENTS))
    pid = patient["patient"][0].get("id", "p1")
    context: dict[str, Any] = {"userId": "Practitioner/sandbox-clinician", "patientId": pid}
    if service_id == ES:
        context["encounterId"] = "enc-1"
    prefetch: dict[str, Any] = {"patient": patient["patient"][0]}
    if draw(st.integers(0, 5)) == 0:
        prefetch["patient"] = draw(broken_resource(patient["patient"][0]))
    for key in SEARCH_KEYS:
        choice = draw(st.integers(0, 39))
        if choice == 0:
            continue  # omitted (rarely): the service would need fhirServer
        if choice <= 4:
            prefetch[key] = None  # "no data"
        else:
            prefetch[key] = draw(prefetch_bundle(patient.get(key, [])))
    body: dict[str, Any] = {"hook": "encounter-start" if service_id == ES else "patient-view",
                            "hookInstance": str(uuid.UUID(int=draw(st.integers(0, 2 ** 128 - 1)))),
                            "context": context, "prefetch": prefetch}
    n = draw(st.integers(0, 3))
    for _ in range(n if draw(st.integers(0, 2)) == 0 else 0):  # a third of the bodies: broken at the top too
        where = draw(st.sampled_from(["hook", "hookInstance", "context", "prefetch", "fhirServer",
                                      "fhirAuthorization", "context.patientId", "context.userId",
                                      "context.encounterId", "extra"]))
        value = draw(hostile)
        if where.startswith("context.") and isinstance(body["context"], dict):
            body["context"][where.split(".", 1)[1]] = value
        elif where == "extra":
            body[draw(st.text(max_size=10))] = value
        else:
            body[where] = value
    return body


def check(resp: httpx.Response) -> None:
    assert resp.status_code in (200, 400, 412), f"{resp.status_code}: {resp.text[:500]}"
    assert_no_trace(resp.text)
    body = resp.json()
    if resp.status_code == 200:
        assert isinstance(body.get("cards"), list) and len(body["cards"]) <= 1
    else:
        assert body["resourceType"] == "OperationOutcome" and body["issue"], resp.text[:300]


def _post(rig: Rig, service_id: str, body: Any) -> httpx.Response:
    raw = json.dumps(body, allow_nan=True).encode()  # NaN and Infinity too: Python's json would accept them
    return rig.hook(service_id, None, raw=raw, timeout=10)


def test_the_bodies_reach_the_rules(rig: Rig) -> None:
    """The seed patients are real enough to get cards: the fuzz below starts from meaningful requests."""
    answered = 0
    for patient in PATIENTS[:10]:
        prefetch = {"patient": patient["patient"][0],
                    **{k: {"resourceType": "Bundle", "type": "searchset",
                           "entry": [{"resource": r} for r in patient.get(k, [])]} for k in SEARCH_KEYS}}
        body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                "context": {"userId": "Practitioner/x", "patientId": patient["patient"][0]["id"]},
                "prefetch": prefetch}
        resp = _post(rig, PV, body)
        assert resp.status_code == 200, resp.text[:300]
        answered += bool(resp.json()["cards"])
    assert answered >= 3


@FUZZ
@given(body=hook_bodies(ES))
def test_encounter_start_bodies(rig: Rig, body: dict[str, Any]) -> None:
    check(_post(rig, ES, body))


@FUZZ
@given(body=hook_bodies(PV))
def test_patient_view_bodies(rig: Rig, body: dict[str, Any]) -> None:
    check(_post(rig, PV, body))


@pytest.mark.parametrize("depth", [500, 5_000, 100_000])
def test_deeply_nested_prefetch(rig: Rig, depth: int) -> None:
    """Nesting beyond the JSON parser's recursion limit, inside an otherwise valid call."""
    nested = "[" * depth + "1" + "]" * depth
    raw = ('{"hook":"patient-view","hookInstance":"%s","context":{"userId":"Practitioner/x","patientId":"p1"},'
           '"prefetch":{"patient":{"resourceType":"Patient","id":"p1","extension":%s}}}'
           % (uuid.uuid4(), nested)).encode()
    resp = rig.hook(PV, None, raw=raw, timeout=10)
    check(resp)


FEEDBACK = settings(max_examples=20, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def feedback_bodies(draw: Any) -> Any:
    item: dict[str, Any] = {"card": str(uuid.uuid4()), "outcome": draw(st.sampled_from(["accepted", "overridden"])),
                            "outcomeTimestamp": "2026-01-01T10:00:00Z"}
    if item["outcome"] == "accepted":
        item["acceptedSuggestions"] = [{"id": str(uuid.uuid4())}]
    else:
        item["overrideReason"] = {"reason": {"system": "x", "code": "y"}, "userComment": "z"}
    for _ in range(draw(st.integers(0, 2))):
        item[draw(st.sampled_from(list(item) + ["extra"]))] = draw(hostile)
    return {"feedback": draw(st.lists(st.just(item) | junk, min_size=0, max_size=3))}


@FEEDBACK
@given(body=feedback_bodies())
def test_feedback_bodies(rig: Rig, body: Any) -> None:
    path = f"/cds-services/{ES}/feedback"
    resp = httpx.post(f"{rig.direct}{path}", content=json.dumps(body, allow_nan=True).encode(), timeout=10,
                      headers={"Authorization": f"Bearer {rig.cds_jwt(path)}", "Content-Type": "application/json"})
    assert resp.status_code in (200, 400), resp.text[:300]
    assert_no_trace(resp.text)
    if resp.status_code != 200:
        assert resp.json()["resourceType"] == "OperationOutcome"


# -- the SMART JSON API ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smart_session(rig: Rig) -> tuple[Launched, dict[str, str]]:
    with rig.browser() as b:
        got = ehr_launch(b, patient="onc-08")
        assert b.get("/smart/api/prescription", params={"s": got.sid}).status_code == 200
        return got, dict(b.cookies)


@st.composite
def smart_bodies(draw: Any) -> Any:
    comp = st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["aerobic", "resistance", "balance", "flexibility"]) | junk,
        "frequencyPerWeek": st.integers(-5, 40) | junk, "minutesPerSession": st.integers(-5, 500) | junk,
        "intensity": st.sampled_from(["light", "moderate", "vigorous"]) | junk,
        "activities": st.lists(st.text(max_size=20), max_size=3) | junk})
    edits = st.fixed_dictionaries({}, optional={
        "components": st.lists(comp, max_size=3) | junk, "setting": st.text(max_size=20) | junk,
        "notes": st.text(max_size=50) | huge_string.map(lambda s: s[:150_000]) | junk,
        "removePrecautions": st.lists(st.text(max_size=20), max_size=2) | junk,
        "overrideReasons": st.dictionaries(st.text(max_size=30), st.text(max_size=20) | junk, max_size=2) | junk})
    prefs = st.fixed_dictionaries({}, optional={
        "preferredSetting": st.sampled_from(["home-based", "community", "supervised"]) | junk,
        "activities": st.lists(st.text(max_size=20), max_size=3) | junk,
        "daysAvailable": st.lists(st.sampled_from(["mon", "tue", "sun", "x"]), max_size=3) | junk,
        "equipment": junk})
    return draw(st.fixed_dictionaries({}, optional={"edits": edits | junk, "preferences": prefs | junk}) | junk)


@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=smart_bodies())
def test_smart_update_bodies(rig: Rig, smart_session: tuple[Launched, dict[str, str]], body: Any) -> None:
    got, cookies = smart_session
    resp = httpx.post(f"{rig.direct}/smart/api/prescription", params={"s": got.sid}, cookies=cookies,
                      headers={"X-CSRF-Token": got.csrf, "Content-Type": "application/json"},
                      content=json.dumps(body, allow_nan=True).encode(), timeout=10)
    assert resp.status_code in (200, 400, 413, 422), f"{resp.status_code}: {resp.text[:500]}"
    assert_no_trace(resp.text)
    if resp.status_code != 200:
        out = resp.json()
        assert out["resourceType"] == "OperationOutcome" and out["issue"]
