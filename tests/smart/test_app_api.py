"""The app page, its JSON API (edits, CSRF, sign & send) and the handout, against the real sandbox."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.smart.conftest import Sandbox, api, ehr_launch, fhir_reader


def _post(b: httpx.Client, sid: str, path: str = "", csrf: str | None = None, **kw) -> httpx.Response:
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    return b.post(f"/smart/api/prescription{path}", params={"s": sid}, headers=headers, **kw)


def test_app_page_is_accessible_and_locked_down(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-11")
        api(b, got.sid)  # loaded: the page now embeds the view
        page = b.get("/smart/app", params={"s": got.sid})
        html = page.text
        for element_id in ("patient-banner", "prescription-form", "sign-button", "update-button", "data-used",
                           "decision", "missing-data", "strategy-why", "sign-result", "handout-link", "status",
                           "initial-data", "pref-setting", "pref-activities", "pref-equipment", "notes"):
            assert f'id="{element_id}"' in html, element_id
        for field in ("pref-setting", "pref-activities", "pref-equipment", "notes", "edit-setting"):
            assert f'<label for="{field}"' in html, field
        assert '<html lang="en">' in html and 'name="viewport"' in html
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in html  # no inline script: the CSP would block it
        js = b.get("/smart/static/app.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "innerHTML" not in js.text
        assert b.get("/smart/static/app.css").status_code == 200
        assert b.get("/smart/static/..%2Froutes.py").status_code == 404
        assert b.get("/smart/static/nothing.js").status_code == 404


def test_view_explains_data_decision_and_strategy(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-12")
        v = api(b, got.sid).json()
        for m in v["data"]["measurements"]:
            assert m["value"] is not None and m["date"] and m["source"] and m["label"]
        rx = v["prescription"]
        assert {"eligible", "setting", "clearanceRequired", "components", "precautions", "missingData",
                "rationale", "stopRules"} <= set(rx)
        assert all(r["rule"] and r["source"] for r in rx["rationale"])
        assert v["writeBack"]["why"] and v["draftVersion"] == 0 and v["signed"] is None
        # the clinical override reasons (not the card-dismissal ones)
        assert {r["code"] for r in v["overrideReasons"]} >= {"specialist-cleared", "other"}
        assert all(r["system"].endswith("/CodeSystem/clinical-override-reason") for r in v["overrideReasons"])


def test_edits_need_csrf(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-13")
        assert _post(b, got.sid, json={"preferences": {}}).status_code == 403
        assert _post(b, got.sid, csrf="wrong", json={"preferences": {}}).status_code == 403
        r = b.post("/smart/api/prescription", params={"s": got.sid},
                   headers={"X-CSRF-Token": got.csrf, "Origin": "https://evil.example"}, json={})
        assert r.status_code == 403
        assert r.json()["resourceType"] == "OperationOutcome"


def test_unsafe_edit_needs_an_override_reason(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-01")
        v = api(b, got.sid).json()
        code = v["prescription"]["precautions"][0]["code"]
        r = _post(b, got.sid, csrf=got.csrf, json={"edits": {"removePrecautions": [code]}, "draftVersion": 0})
        assert r.status_code == 422
        body = r.json()
        assert body["resourceType"] == "OperationOutcome"
        assert body["problems"][0]["path"] == f"precautions.{code}"
        assert body["problems"][0]["override"] is True  # the app offers the clinical reasons here
        assert body["issue"][0]["expression"] == [f"precautions.{code}"]
        assert api(b, got.sid).json()["draftVersion"] == 0  # nothing applied
        r = _post(b, got.sid, csrf=got.csrf, json={
            "edits": {"removePrecautions": [code], "overrideReasons": {f"precautions.{code}": {
                "code": "informed-choice", "text": "discussed with patient"}}},
            "preferences": {"preferredSetting": "home-based", "activities": ["walking"], "daysAvailable": ["mon"],
                            "equipment": ["resistance bands"]},
            "draftVersion": 0})
        assert r.status_code == 200, r.text
        v = r.json()
        assert v["draftVersion"] == 1
        assert code not in {p["code"] for p in v["prescription"]["precautions"]}
        assert any(x["rule"] == "CLINICIAN-OVERRIDE" for x in v["prescription"]["rationale"])
        assert v["preferences"]["equipment"] == ["resistance bands"]
        assert api(b, got.sid).json()["draftVersion"] == 1
        stale = _post(b, got.sid, csrf=got.csrf, json={"edits": {}, "draftVersion": 0})
        assert stale.status_code == 409


def test_bad_preferences_and_bounds_come_back_with_paths(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-14")
        r = _post(b, got.sid, csrf=got.csrf, json={"preferences": {"preferredSetting": "the moon"}})
        assert r.status_code == 422 and r.json()["problems"][0]["path"] == "preferences"
        comps = api(b, got.sid).json()["prescription"]["components"]
        if comps:
            r = _post(b, got.sid, csrf=got.csrf, json={"edits": {"components": [
                {"type": comps[0]["type"], "frequencyPerWeek": 30}]}})
            assert r.status_code == 422
            assert r.json()["problems"][0]["path"] == "components[0].frequencyPerWeek"
        bad = b.post("/smart/api/prescription", params={"s": got.sid}, content=b"{not json",
                     headers={"X-CSRF-Token": got.csrf, "Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["issue"][0]["code"] == "structure"


async def test_double_sign_writes_one_set_and_returns_the_first_result(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-10")
        api(b, got.sid)
        assert _post(b, got.sid, "/sign", json={}).status_code == 403  # no CSRF header
        cookies = dict(b.cookies)
    async with httpx.AsyncClient(base_url=sandbox.url, cookies=cookies, timeout=60) as ab:
        r1, r2 = await asyncio.gather(*(ab.post("/smart/api/prescription/sign", params={"s": got.sid},
                                                headers={"X-CSRF-Token": got.csrf}, json={"draftVersion": 0})
                                        for _ in range(2)))
        r3 = await ab.post("/smart/api/prescription/sign", params={"s": got.sid},
                           headers={"X-CSRF-Token": got.csrf}, json={"draftVersion": 0})
    assert r1.status_code == r2.status_code == r3.status_code == 200, (r1.text, r2.text)
    a, b2, c = r1.json(), r2.json(), r3.json()
    ids = {w["reference"] for w in a["written"]}
    assert ids and ids == {w["reference"] for w in b2["written"]} == {w["reference"] for w in c["written"]}
    assert sorted([bool(a.get("replayed")), bool(b2.get("replayed"))]) == [False, True] and c["replayed"]
    assert a["strategy"] == "full" and a["status"] == "sent" and not a["failed"]
    assert {w["resourceType"] for w in a["written"]} >= {"CarePlan", "ServiceRequest", "Task"}
    with fhir_reader(sandbox) as fhir:
        plans = fhir.get("/CarePlan", params={"subject": "Patient/onc-10"}).json().get("entry", [])
        assert len(plans) == 1
        from service.fhir.validate import validate_resource

        for w in a["written"]:
            res = fhir.get(f"/{w['reference']}").json()
            errors = [i for i in validate_resource(res) if getattr(i, "severity", "error") == "error"]
            assert not errors, (w["reference"], errors)
    with sandbox.browser() as b:
        b.cookies.update(cookies)
        v = api(b, got.sid).json()
        assert v["signed"]["key"] == a["key"] and v["writeBack"]["canSign"] is False
        r = _post(b, got.sid, csrf=got.csrf, json={"edits": {}})
        assert r.status_code == 409


def test_handout_is_plain_language_and_printable(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-15")
        r = b.get("/smart/handout", params={"s": got.sid})
        assert r.status_code == 200
        html = r.text
        assert 'class="handout"' in html and 'id="handout-stop"' in html and "Stop and get help" in html
        assert 'id="handout-help"' in html and "Where to get help" in html
        # the companion on paper: a weekly log with the same questions, and the companion's address
        assert 'id="handout-log"' in html and html.count("<th scope=\"row\">") == 7
        assert f"{sandbox.url}/patient/launch" in html and "chest pain, fainting" in html
        assert "@media print" in b.get("/smart/static/app.css").text
        assert b.get("/smart/static/print.js").status_code == 200


def test_jwks_is_public_only(sandbox: Sandbox):
    with sandbox.browser() as b:
        r = b.get("/.well-known/jwks.json")
        assert r.status_code == 200
        keys = r.json()["keys"]
        assert keys and all({"kid", "kty", "alg"} <= set(k) and "d" not in k for k in keys)


@pytest.mark.parametrize("path", ["/smart/api/prescription", "/smart/api/prescription/sign"])
def test_api_without_session_is_an_operation_outcome(sandbox: Sandbox, path: str):
    with sandbox.browser() as b:
        r = b.get(path, params={"s": "x"}) if path.endswith("prescription") else b.post(path, params={"s": "x"})
        assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"


async def test_sign_with_a_dead_session_writes_nothing_and_can_be_retried(sandbox: Sandbox):
    with sandbox.browser() as b:
        got = ehr_launch(b, patient="onc-17")
        assert api(b, got.sid).status_code == 200
        store = sandbox.store()
        try:
            from service.smart.sessions import TOKEN_NS

            rec = await store.get(TOKEN_NS, got.sid)
            rec.update(access_token="revoked", refresh_token="bogus", expires_at=0)
            await store.put(TOKEN_NS, got.sid, rec, ttl=600)
        finally:
            await store.close()
        for _ in range(2):  # nothing written: the guard is released, a second click tries again
            r = _post(b, got.sid, "/sign", csrf=got.csrf, json={})
            assert r.status_code == 401, r.text
            body = r.json()
            assert body["resourceType"] == "OperationOutcome" and body["written"] == [] and body["status"] == "failed"
            assert "launch the app again" in body["issue"][0]["diagnostics"]
        assert api(b, got.sid).json()["signed"] is None
