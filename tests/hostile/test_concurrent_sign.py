"""Two clinicians signing at once.

What "the same draft" means (service/smart/api.py `signing_key`): launched from a CDS card, the draft is that
card's referral for that patient, shared by every clinician who opened the card — two clinicians signing it at
once write one set. Launched without a card, a draft is one version of one session's prescription: two
sessions on the same patient are two drafts and give exactly two sets, each complete and valid, none
interleaved with the other, and double clicks add nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from service.fhir.validate import validate_resource
from tests.hostile.conftest import Rig
from tests.hostile.sets import prescription_sets, written_set
from tests.smart.conftest import Launched, ehr_launch

PATIENT = "onc-24"


def _launch(rig: Rig, practitioner: str = "sandbox-clinician") -> tuple[Launched, dict[str, str]]:
    with rig.browser() as b:
        got = ehr_launch(b, patient=PATIENT, practitioner=practitioner)
        assert b.get("/smart/api/prescription", params={"s": got.sid}).status_code == 200
        return got, dict(b.cookies)


async def test_two_sessions_same_patient_sign_at_once(rig: Rig) -> None:
    (a, cookies_a), (b, cookies_b) = _launch(rig), _launch(rig)
    assert a.sid != b.sid and cookies_a != cookies_b

    async def press(client: httpx.AsyncClient, got: Launched) -> httpx.Response:
        return await client.post("/smart/api/prescription/sign", params={"s": got.sid},
                                 headers={"X-CSRF-Token": got.csrf}, json={"draftVersion": 0})

    async with httpx.AsyncClient(base_url=rig.url, cookies=cookies_a, timeout=90) as ca, \
            httpx.AsyncClient(base_url=rig.url, cookies=cookies_b, timeout=90) as cb:
        # each clinician double-clicks; all four requests race
        responses = await asyncio.gather(press(ca, a), press(cb, b), press(ca, a), press(cb, b))
    for r in responses:
        assert r.status_code == 200, r.text[:500]
    ra1, rb1, ra2, rb2 = (r.json() for r in responses)
    assert ra1["key"] == ra2["key"] and rb1["key"] == rb2["key"] and ra1["key"] != rb1["key"]
    assert sorted([bool(ra1.get("replayed")), bool(ra2.get("replayed"))]) == [False, True]
    assert sorted([bool(rb1.get("replayed")), bool(rb2.get("replayed"))]) == [False, True]

    with rig.fhir() as fhir:
        sets = prescription_sets(fhir, PATIENT)
        assert set(sets) == {ra1["key"], rb1["key"]}, sorted(sets)  # two sessions, two sets, no more
        for answer, other in ((ra1, rb1), (rb1, ra1)):
            mine = sets[answer["key"]]
            assert mine == written_set(answer)  # complete: exactly what the answer says, nothing of the other
            assert {"CarePlan", "Goal", "ServiceRequest", "Task", "Provenance"} <= set(mine)
            for rtype, ids in mine.items():
                for rid in ids:
                    res = fhir.get(f"/{rtype}/{rid}").json()
                    errors = [i for i in validate_resource(res) if getattr(i, "severity", "error") == "error"]
                    assert not errors, (rtype, rid, errors[:3])
                    _refs_stay_inside(res, other)


def _refs_stay_inside(res: dict[str, Any], other: dict[str, Any]) -> None:
    """No resource of one set refers to a resource the other signing wrote (no interleaved sets)."""
    theirs = {w["reference"] for w in other["written"]} | {w["url"] for w in other["written"]}
    for ref in _references(res):
        assert ref.split("/_history")[0] not in theirs, f"{res['resourceType']}/{res['id']} refers to {ref}"


def _references(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                out.append(v)
            else:
                out += _references(v)
    elif isinstance(node, list):
        for x in node:
            out += _references(x)
    return out


async def test_many_concurrent_launches_do_not_starve_the_thread_pool(rig: Rig) -> None:
    """16 browsers launching at once (authorize + token exchange in the sandbox's authlib worker threads, each
    calling back into the store, whose SQLite calls also need a worker thread). Regression: with authlib on
    the default executor (6 threads on 2 cores) this deadlocked until a 30 s timeout and answered 502."""
    import re
    import time

    async def one(i: int) -> str:
        async with httpx.AsyncClient(base_url=rig.direct, timeout=60, follow_redirects=True) as c:
            r = await c.post("/sandbox/auth/launch", json={"patient": f"onc-{1 + i % 30:02d}",
                                                            "practitioner": "sandbox-clinician"})
            assert r.status_code == 201, r.text[:200]
            r = await c.get("/smart/launch", params={"iss": r.json()["iss"], "launch": r.json()["launch"]})
            assert r.status_code == 200 and r.url.path == "/smart/app", (r.status_code, r.url.path, r.text[:200])
            assert re.search(r'name="csrf-token"', r.text)
            return r.url.params["s"]

    start = time.monotonic()
    sids = await asyncio.gather(*(one(i) for i in range(16)))
    assert len(set(sids)) == 16
    assert time.monotonic() - start < 25, f"{time.monotonic() - start:.1f} s for 16 launches"


async def test_two_clinicians_signing_the_same_card_draft_at_once_write_one_set(rig: Rig) -> None:
    """Two clinicians open the app from the same CDS card (same appContext.cardUuid, same patient) and press
    Sign & send at the same moment: one set of resources is written; both see it, the second as a replay."""
    card = {"cardUuid": "card-shared-draft", "kind": "new-referral", "encounterId": f"enc-{PATIENT}"}

    def launch(practitioner: str) -> tuple[Launched, dict[str, str]]:
        with rig.browser() as b:
            got = ehr_launch(b, patient=PATIENT, practitioner=practitioner, appContext=card)
            assert b.get("/smart/api/prescription", params={"s": got.sid}).status_code == 200
            return got, dict(b.cookies)

    (a, cookies_a), (b, cookies_b) = launch("sandbox-clinician"), launch("exercise-physiologist")
    assert a.sid != b.sid
    with rig.fhir() as fhir:
        before = set(prescription_sets(fhir, PATIENT))

    async def press(cookies: dict[str, str], got: Launched) -> httpx.Response:
        async with httpx.AsyncClient(base_url=rig.url, cookies=cookies, timeout=90) as c:
            return await c.post("/smart/api/prescription/sign", params={"s": got.sid},
                                headers={"X-CSRF-Token": got.csrf}, json={"draftVersion": 0})

    ra, rb = await asyncio.gather(press(cookies_a, a), press(cookies_b, b))
    assert ra.status_code == 200 and rb.status_code == 200, (ra.text[:300], rb.text[:300])
    ja, jb = ra.json(), rb.json()
    assert ja["key"] == jb["key"]
    assert sorted([bool(ja.get("replayed")), bool(jb.get("replayed"))]) == [False, True]
    assert written_set(ja) == written_set(jb)
    with rig.fhir() as fhir:
        sets = prescription_sets(fhir, PATIENT)
    assert set(sets) - before == {ja["key"]}  # one new set, not one per clinician
    assert sets[ja["key"]] == written_set(ja)
    assert len(sets[ja["key"]]["Task"]) == 1  # one referral Task for the exercise service
