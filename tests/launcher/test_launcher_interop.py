"""Interoperability with the reference SMART launcher (written elsewhere) in front of a stock sekmet-fhir: each
scenario drives headless Chromium through a real launch, signs, and checks what the FHIR server holds, read
from sekmet directly (not through the launcher). Scenarios and results: docs/launcher-interop.md."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from service import canonical
from service.smart.scopes import UPDATE_TYPES
from tests.launcher.conftest import PRACTITIONER, App, Launcher, running_app

pytestmark = [pytest.mark.browser, pytest.mark.launcher]

# Stock sekmet's CapabilityStatement lists no Goal resource, so the strategy the app picks there (as for an
# EHR that cannot take CarePlans) is service-request-only; `full` is exercised with the strategy forced.
SR_ONLY_WRITES = ("ServiceRequest", "DocumentReference")
FULL_WRITES = ("CarePlan", "Goal", "ServiceRequest", "Task", "Provenance")


def _open(page: Any, url: str) -> str:
    """Follow a launch to the app; the session id of the page."""
    page.goto(url)
    page.wait_for_url(re.compile(r"/smart/app\?s="))
    return parse_qs(urlsplit(page.url).query)["s"][0]


def _ready(view: Any) -> None:
    expect(view.locator("#status")).to_have_text("Ready.")


def _sign(view: Any) -> list[tuple[str, str]]:
    """Press Sign & send; (resourceType, id) of what the page says was written."""
    expect(view.locator("#sign-button")).to_be_enabled()
    view.locator("#sign-button").click()
    expect(view.locator("#sign-status")).to_contain_text("Sent.")
    rows = view.locator("#written tbody tr")
    expect(rows.first).to_be_visible()
    return [(r.locator("td").nth(0).inner_text(), r.locator("td").nth(1).inner_text()) for r in rows.all()]


def _subject(resource: dict[str, Any]) -> str | None:
    for key in ("subject", "for", "patient"):
        if isinstance(resource.get(key), dict):
            return resource[key].get("reference")
    return None


def _held_by_sekmet(sekmet: str, written: list[tuple[str, str]], patient: str,
                    expect_types: tuple[str, ...] = SR_ONLY_WRITES) -> Counter:
    """Read every written resource back from sekmet itself and check it is this patient's signed referral."""
    kinds: Counter = Counter()
    with httpx.Client(base_url=sekmet, timeout=30, headers={"Accept": "application/fhir+json"}) as fhir:
        for rtype, rid in written:
            r = fhir.get(f"{rtype}/{rid}")
            assert r.status_code == 200, f"{rtype}/{rid} is not on the FHIR server: {r.status_code}"
            res = r.json()
            assert res["resourceType"] == rtype and res["id"] == rid
            kinds[rtype] += 1
            if rtype == "Provenance":
                assert any(t.get("reference", "").startswith("CarePlan/") for t in res["target"])
                assert res["agent"][0]["who"]["reference"] == f"Practitioner/{PRACTITIONER}"
                continue
            assert _subject(res) == f"Patient/{patient}", f"{rtype}/{rid} is about {_subject(res)}"
            if rtype == "ServiceRequest":
                assert res["requester"]["reference"] == f"Practitioner/{PRACTITIONER}"
                assert any(i.get("system") == canonical.ID_PRESCRIPTION for i in res.get("identifier", []))
        plans = fhir.get("CarePlan", params={"subject": f"Patient/{patient}"}).json()
    assert set(kinds) == set(expect_types), kinds
    if "CarePlan" in expect_types:
        assert len(plans.get("entry", [])) == 1, "exactly one CarePlan for the patient"
    return kinds


# -- EHR launch, standalone launch -----------------------------------------------------------------------------


def test_ehr_launch_public_client(page: Any, app: App, launcher: Launcher, sekmet: str, shot: Any):
    sid = _open(page, launcher.launch_url(app.url, patient="onc-01", encounter="enc-onc-01",
                                          redirect_uris=f"{app.url}/smart/callback"))
    _ready(page)
    expect(page.locator("#patient-banner")).to_be_visible()  # the launcher asks for one outside its EHR frame
    expect(page.locator("#requester")).to_contain_text(f"Dr Alex Morgan (Practitioner/{PRACTITIONER})")
    expect(page.locator("#strategy")).to_contain_text("Write-back: service-request-only")
    shot(page, "ehr-launch-ready")
    written = _sign(page)
    kinds = _held_by_sekmet(sekmet, written, "onc-01")
    assert kinds["ServiceRequest"] >= 2 and kinds["DocumentReference"] == 1
    shot(page, "ehr-launch-signed")
    tokens = app.stored("smart-token", sid)
    granted = tokens["scope"].split()  # create rights follow the strategy: none on CarePlan, Goal or Task
    assert "offline_access" in granted and "patient/ServiceRequest.crus" in granted
    assert not {"patient/CarePlan.crus", "patient/Goal.crus", "patient/Task.crus"} & set(granted)
    assert tokens["lifetime"] == launcher.token_seconds


def test_a_forced_full_strategy_the_server_cannot_take_writes_nothing(page: Any, launcher: Launcher, sekmet: str,
                                                                     tmp_path: Path):
    """ONCO_EXERCISE_WRITEBACK_STRATEGY=full against a server whose CapabilityStatement has no Goal: refused
    before anything is sent, with the reason; nothing lands on the FHIR server."""
    before = _patient_resources(sekmet, "onc-05")
    with running_app(tmp_path / "app", launcher, writeback_strategy="full") as app:
        _open(page, launcher.launch_url(app.url, patient="onc-05", encounter="enc-onc-05"))
        _ready(page)
        expect(page.locator("#strategy")).to_contain_text("Write-back: full")
        page.locator("#sign-button").click()
        expect(page.locator("#sign-status")).to_contain_text("Not sent.")
        expect(page.locator("#sign-failed")).to_contain_text("does not support creating Goal")
    assert _patient_resources(sekmet, "onc-05") == before


def _patient_resources(sekmet: str, patient: str) -> dict[str, int]:
    """How many of each written type the server holds for the patient (the cohort has its own referrals)."""
    with httpx.Client(base_url=sekmet, timeout=30) as fhir:
        return {t: len(fhir.get(t, params={"subject": f"Patient/{patient}", "_count": 200}).json().get("entry", []))
                for t in ("CarePlan", "ServiceRequest", "DocumentReference")}


def test_standalone_launch_with_the_launchers_approval_page(page: Any, app: App, launcher: Launcher,
                                                            sekmet: str, shot: Any):
    iss = launcher.standalone_iss(patient="onc-02", redirect_uris=f"{app.url}/smart/callback")
    app.settings.fhir_servers.append(iss)  # each standalone option set is its own FHIR base: allow-list it
    try:
        page.goto(f"{app.url}/smart/launch?iss={quote(iss, safe='')}")
        expect(page.locator("#approve")).to_be_visible()  # the launcher's own React authorization page
        shot(page, "launcher-approval")
        page.locator("#approve").click()
        page.wait_for_url(re.compile(r"/smart/app\?s="))
        _ready(page)
        expect(page.locator("#banner-name")).not_to_be_empty()
        written = _sign(page)
        _held_by_sekmet(sekmet, written, "onc-02")
    finally:
        app.settings.fhir_servers.remove(iss)


def test_patient_companion_with_the_launchers_patient_standalone_launch(page: Any, app: App, launcher: Launcher,
                                                                        sekmet: str, shot: Any):
    """The companion's /patient/launch against the launcher's patient-standalone launch: the patient's own
    token (fhirUser Patient/...) reads the plan and writes an entry; sekmet holds the PA IG observations."""
    patient = "onc-03"  # the cohort holds an open referral of ours for her
    iss = launcher.standalone_iss("patient-standalone", patient=patient, redirect_uris=f"{app.url}/smart/callback")
    app.settings.fhir_servers.append(iss)
    try:
        page.goto(f"{app.url}/patient/launch?iss={quote(iss, safe='')}")
        approve = page.locator("#approve")
        expect(approve).to_be_visible()
        shot(page, "launcher-patient-approval")
        approve.click()
        page.wait_for_url(re.compile(r"/patient/app\?s="))
        expect(page.locator("#plan-state")).not_to_be_empty()
        shot(page, "companion-via-launcher")
        page.locator("#minutes").fill("21")
        page.locator("#log-form input[name=effort][value=moderate]").check()
        page.locator("#log-form button[type=submit]").click()
        expect(page.locator("#answer")).to_contain_text("Saved")
    finally:
        app.settings.fhir_servers.remove(iss)
    with httpx.Client(base_url=sekmet, timeout=30, headers={"Accept": "application/fhir+json"}) as fhir:
        found = fhir.get("Observation", params={"subject": f"Patient/{patient}", "code": "http://loinc.org|55411-3",
                                                "_count": 200}).json().get("entry", [])
    assert [e["resource"]["valueQuantity"]["value"] for e in found
            if e["resource"].get("performer", [{}])[0].get("reference") == f"Patient/{patient}"] == [21]


# -- confidential asymmetric client: private_key_jwt with a JWKS URL, and long codes ----------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_private_key_jwt_with_a_jwks_url(page: Any, launcher: Launcher, sekmet: str, tmp_path: Path, alg: str):
    patient = {"ES384": "onc-03", "RS384": "onc-04"}[alg]
    with running_app(tmp_path / "app", launcher, smart_client_auth="private_key_jwt", smart_alg=alg) as app:
        _open(page, launcher.launch_url(app.url, patient=patient, client_type="confidential-asymmetric",
                                        jwks_url=f"{app.url}/.well-known/jwks.json"))
        _ready(page)
        _held_by_sekmet(sekmet, _sign(page), patient)


def test_private_key_jwt_against_a_jwks_without_our_key_is_refused(page: Any, launcher: Launcher, tmp_path: Path):
    """The control: the launcher really checks the assertion (its own /keys holds none of our keys)."""
    with running_app(tmp_path / "app", launcher, smart_client_auth="private_key_jwt", smart_alg="RS384") as app:
        page.goto(launcher.launch_url(app.url, patient="onc-10", client_type="confidential-asymmetric",
                                      jwks_url=f"{launcher.url}/keys"))
        expect(page.locator("h1")).to_contain_text("The EHR refused the sign-in")
        expect(page.locator("body")).to_contain_text("invalid_client")


def test_long_authorization_codes(page: Any, launcher: Launcher, sekmet: str, tmp_path: Path):
    """With the JWKS registered inline the launcher's code (a self-contained JWT) carries it: > 2,048 chars."""
    lengths: list[int] = []
    page.on("request", lambda r: lengths.append(len(parse_qs(urlsplit(r.url).query)["code"][0]))
            if "/smart/callback" in r.url and "code=" in r.url else None)  # the length only, never the code
    with running_app(tmp_path / "app", launcher, smart_client_auth="private_key_jwt", smart_alg="ES384") as app:
        jwks = json.dumps(httpx.get(f"{app.url}/.well-known/jwks.json", timeout=30).json())
        _open(page, launcher.launch_url(app.url, patient="onc-06", client_type="confidential-asymmetric",
                                        jwks=jwks))
        _ready(page)
        assert lengths and lengths[0] > 2048, lengths
        _held_by_sekmet(sekmet, _sign(page), "onc-06")


# -- token lifetimes: refresh when due; a refused refresh -------------------------------------------------------


def test_refused_refresh_keeps_the_still_valid_token(page: Any, app: App, launcher: Launcher, sekmet: str):
    """The launcher refuses every refresh of this launch (`token_expired_refresh_token`): while the 60 s token
    is still valid, a due refresh that fails must not end the session."""
    sid = _open(page, launcher.launch_url(app.url, patient="onc-07", auth_error="token_expired_refresh_token"))
    _ready(page)
    app.change("smart-token", sid, expires_at=time.time() + 8)  # due (last fifth of its life), still valid
    _held_by_sekmet(sekmet, _sign(page), "onc-07")
    tokens = app.stored("smart-token", sid)
    assert tokens["refresh_refused"] and tokens["refresh_attempts"] == 1 and tokens["refreshed"] == 0
    assert not tokens.get("refresh_failed")


def test_short_tokens_refresh_once_when_due_and_a_refused_one_asks_to_relaunch(
        page: Any, short_launcher: Launcher, sekmet: str, tmp_path: Path, shot: Any):
    """15-second tokens: a page load refreshes nothing; after expiry, signing refreshes once and writes. A
    launch whose refresh is refused asks for a relaunch after expiry and writes nothing."""
    before_refused = _patient_resources(sekmet, "onc-09")
    with running_app(tmp_path / "app", short_launcher) as app:
        sid = _open(page, short_launcher.launch_url(app.url, patient="onc-08"))
        _ready(page)
        refused_tab = page.context.new_page()
        refused_sid = _open(refused_tab, short_launcher.launch_url(app.url, patient="onc-09",
                                                                   auth_error="token_expired_refresh_token"))
        _ready(refused_tab)
        first = app.stored("smart-token", sid)
        assert first["lifetime"] == 15 and first["refresh_attempts"] == 0
        expires = max(first["expires_at"], app.stored("smart-token", refused_sid)["expires_at"])
        time.sleep(max(0.0, expires - time.time()) + 1)  # both tokens have expired at the launcher too

        _held_by_sekmet(sekmet, _sign(page), "onc-08")
        tokens = app.stored("smart-token", sid)
        assert tokens["refreshed"] == 1 and tokens["refresh_attempts"] == 1

        refused_tab.locator("#sign-button").click()
        expect(refused_tab.locator("#status")).to_contain_text("launch the app again from the EHR")
        expect(refused_tab.locator("#sign-button")).to_be_disabled()
        shot(refused_tab, "refused-refresh-after-expiry")
        assert app.stored("smart-token", refused_sid)["refresh_failed"]
    assert _patient_resources(sekmet, "onc-09") == before_refused


# -- an authorization server that refuses scopes ---------------------------------------------------------------


def test_scope_rejection_is_followed_by_the_essential_set(page: Any, app: App, launcher: Launcher, sekmet: str,
                                                          shot: Any):
    """Registered without offline_access or user/Practitioner.rs: the launcher refuses the first request
    (invalid_scope), the app asks again without them, signs, and says what that costs."""
    registered = "launch openid fhirUser patient/*.rs " + " ".join(
        f"patient/{t}.crus" if t in UPDATE_TYPES else f"patient/{t}.crs" for t in SR_ONLY_WRITES)
    sid = _open(page, launcher.launch_url(app.url, patient="onc-11", scope=registered))
    _ready(page)
    expect(page.locator("#notes-from-launch")).to_contain_text(
        "asked again without: offline_access user/Practitioner.rs")
    shot(page, "scope-fallback-note")
    _held_by_sekmet(sekmet, _sign(page), "onc-11")
    assert app.stored("smart-session", sid)["scope_fallback"]["tier"] == "essential"


def test_scope_rejection_down_to_the_minimum_is_view_only(page: Any, app: App, launcher: Launcher, shot: Any):
    _open(page, launcher.launch_url(app.url, patient="onc-12", scope="launch patient/*.rs"))
    _ready(page)
    expect(page.locator("#notes-from-launch")).to_contain_text("cannot be signed")
    expect(page.locator("#sign-button")).to_be_disabled()
    expect(page.locator("#strategy")).to_contain_text("not possible")
    expect(page.locator("#setting")).not_to_be_empty()  # the prescription is there to review and print
    shot(page, "scope-minimum-view-only")


# -- the app in the launcher's EHR frame (cross-site iframe) -----------------------------------------------------


def test_in_the_launchers_ehr_iframe(page: Any, app: App, launcher: Launcher, sekmet: str, shot: Any):
    page.goto(launcher.ehr_frame_url(app.url, patient="onc-13", encounter="enc-onc-13"))
    frame = page.frame_locator("#frame")
    _ready(frame)
    expect(frame.locator("#patient-banner")).to_be_hidden()  # need_patient_banner: false inside its EHR
    expect(page.locator(".ehr-header")).to_contain_text("Simulated EHR")
    shot(page, "app-in-launcher-ehr")
    _held_by_sekmet(sekmet, _sign(frame), "onc-13")
    shot(page, "signed-in-launcher-ehr")
