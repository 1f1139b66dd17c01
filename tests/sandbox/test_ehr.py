"""The sandbox EHR screen, end to end over HTTP: a real sandbox (sekmet FHIR, SMART auth, cohort) and a fake
conformant CDS service that verifies the EHR's JWTs against the JWKS fetched from the `jku`."""

from __future__ import annotations

import re
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import running_sandbox
from tests.sandbox.test_cds_client import FakeCds
from tests.support.live import free_port, serve


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    with running_sandbox(tmp_path_factory.mktemp("ehr")) as running:
        yield running


@pytest.fixture(scope="module")
def fake(sandbox: tuple[str, Any]) -> Iterator[FakeCds]:
    f = FakeCds(issuer=f"{sandbox[0]}/sandbox", fetch_jwks=True)
    port = free_port()
    with serve(f.app(), port) as url:
        f.base = url
        yield f


@pytest.fixture(scope="module")
def browser(sandbox: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox[0], timeout=60, follow_redirects=False) as c:
        yield c


def fhir(sandbox: tuple[str, Any]) -> httpx.Client:
    """A FHIR client with a real access token from the sandbox authorization server."""
    url, app = sandbox
    token = app.state.sandbox.auth.mint_access_token("user/*.cruds", None, "Practitioner/sandbox-clinician", 600)
    return httpx.Client(base_url=f"{url}/sandbox/fhir", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def csrf(browser: httpx.Client) -> str:
    """The form token the EHR screen embeds (an HMAC of the browser's CSRF cookie, not the cookie itself)."""
    return hidden(browser.get("/sandbox/").text, "csrf")


def hidden(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, name
    return m.group(1)


def use_only(browser: httpx.Client, url: str) -> None:
    """Configure the EHR to call exactly one discovery URL."""
    page = browser.get("/sandbox/").text
    for u in re.findall(r'name="url" value="([^"]+)"', page):
        r = browser.post("/sandbox/services", data={"csrf": csrf(browser), "action": "remove", "url": u})
        assert r.status_code == 303
    r = browser.post("/sandbox/services", data={"csrf": csrf(browser), "action": "add", "url": url})
    assert r.status_code == 303


def test_patient_list(browser: httpx.Client, sandbox: tuple[str, Any]) -> None:
    r = browser.get("/sandbox/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text.count("Open encounter") >= 28
    for text in ("Margaret Okafor", "Breast cancer, adjuvant AC chemotherapy", "non-oncology control",
                 f"{sandbox[0]}/cds-services", "/sandbox/.well-known/jwks.json", 'lang="en"'):
        assert text in r.text
    assert "sandbox_csrf" in r.cookies
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    assert browser.get("/sandbox/static/ehr.css").status_code == 200
    assert browser.get("/sandbox/static/..%2Fehr.py").status_code == 404


def test_service_list_form(browser: httpx.Client, fake: FakeCds, sandbox: tuple[str, Any]) -> None:
    r = browser.post("/sandbox/services", data={"action": "add", "url": fake.base})
    assert r.status_code == 403 and "security token" in r.text
    r = browser.post("/sandbox/services", data={"csrf": "x" * 32, "action": "add", "url": fake.base})
    assert r.status_code == 403
    r = browser.post("/sandbox/services", data={"csrf": csrf(browser), "action": "add", "url": "javascript:alert(1)"})
    assert r.status_code == 400 and "http(s) URL" in r.text
    r = browser.post("/sandbox/services", data={"csrf": csrf(browser), "action": "add", "url": fake.base})
    assert r.status_code == 303
    page = browser.get("/sandbox/").text
    assert f"{fake.base}/cds-services" in page and f"{sandbox[0]}/cds-services" in page
    r = browser.post("/sandbox/services", data={"csrf": csrf(browser), "action": "default"})
    assert r.status_code == 303
    page = browser.get("/sandbox/").text
    assert f"{fake.base}/cds-services" not in page


def test_opening_an_encounter_fires_hooks_and_renders_cards(browser: httpx.Client, fake: FakeCds,
                                                            sandbox: tuple[str, Any]) -> None:
    use_only(browser, fake.base)
    before = len(fake.calls)
    r = browser.get("/sandbox/patients/onc-01", params={"encounter": "enc-onc-01"})
    assert r.status_code == 200, r.text[:500]
    body = fake.calls[before]
    assert body["hook"] == "encounter-start"
    assert body["context"] == {"userId": "Practitioner/sandbox-clinician", "patientId": "onc-01",
                               "encounterId": "enc-onc-01"}
    assert body["fhirServer"] == f"{sandbox[0]}/sandbox/fhir"
    assert body["prefetch"]["patient"]["id"] == "onc-01" and body["prefetch"]["ghost"] is None
    # the fhirAuthorization token is real: it reads this patient's data and nothing else
    auth = body["fhirAuthorization"]
    assert auth["patient"] == "onc-01" and auth["scope"] == "patient/Observation.rs patient/Condition.rs"
    with httpx.Client(base_url=body["fhirServer"], headers={"Authorization": f"Bearer {auth['access_token']}"},
                      timeout=30) as svc_fhir:
        assert svc_fhir.get("Observation", params={"patient": "onc-01"}).status_code == 200
        assert svc_fhir.get("Observation", params={"patient": "onc-02"}).status_code == 403
    assert fake.jwt_errors == []  # every JWT verified against the JWKS at its jku

    html = r.text
    assert "Consider an exercise referral" in html and 'class="card warning"' in html
    assert "<strong>Supervised</strong>" in html and "<li>ANC low</li>" in html  # markdown rendered
    assert "<script>alert" not in html and 'href="javascript' not in html  # ... and sanitised (the text stays)
    assert 'href="https://guideline.example.org/ex"' in html and "Fake guideline" in html
    assert "Accept: Create draft referral" in html and "Patient declined" in html
    assert "Fake chart service" in html and "HTTP 500: fake outage" in html  # patient-view call failed: shown
    assert "card 2 ignored" in html  # the invalid card is reported, not rendered
    assert "Margaret Okafor" in html and "Neutrophils" in html  # the chart itself


def test_accepting_a_suggestion_applies_it_and_sends_feedback(browser: httpx.Client, fake: FakeCds,
                                                              sandbox: tuple[str, Any]) -> None:
    use_only(browser, fake.base)
    html = browser.get("/sandbox/patients/onc-02", params={"encounter": "enc-onc-02"}).text
    with fhir(sandbox) as f:
        before = f.get("ServiceRequest", params={"patient": "onc-02", "status": "draft"}).json()["total"]
        r = browser.post("/sandbox/cards/accept", data={
            "csrf": csrf(browser), "view": hidden(html, "view"), "call": "0", "card": "0", "suggestion": "0"})
        assert r.status_code == 200, r.text[:500]
        assert "Suggestion applied" in r.text and "ServiceRequest/" in r.text and "feedback sent" in r.text
        after = f.get("ServiceRequest", params={"patient": "onc-02", "status": "draft"}).json()
        assert after["total"] == before + 1
        sr_id = after["entry"][0]["resource"]["id"]
        assert f.get("Task", params={"focus": f"ServiceRequest/{sr_id}"}).json()["total"] == 1
    item = fake.feedback[-1]
    assert item["outcome"] == "accepted" and item["card"] == "6f1d3f8e-1b54-4d8e-9d37-4b0b0c3a5e10"
    assert item["acceptedSuggestions"] == [{"id": "a5a0c0de-0000-4000-8000-000000000001"}]
    assert 'href="/sandbox/patients/onc-02?encounter=enc-onc-02"' in r.text


def test_overriding_a_card_sends_the_chosen_reason(browser: httpx.Client, fake: FakeCds) -> None:
    use_only(browser, fake.base)
    html = browser.get("/sandbox/patients/onc-03", params={"encounter": "enc-onc-03"}).text
    r = browser.post("/sandbox/cards/override", data={
        "csrf": csrf(browser), "view": hidden(html, "view"), "call": "0", "card": "0", "reason": "1",
        "comment": "walks every day"})
    assert r.status_code == 200 and "Card dismissed" in r.text
    item = fake.feedback[-1]
    assert item["outcome"] == "overridden"
    assert item["overrideReason"]["reason"]["code"] == "already-active"
    assert item["overrideReason"]["userComment"] == "walks every day"
    bad = browser.post("/sandbox/cards/override", data={
        "csrf": csrf(browser), "view": hidden(html, "view"), "call": "0", "card": "0", "reason": "9"})
    assert bad.status_code == 400 and "not one the card offers" in bad.text


def test_smart_link_creates_a_launch_and_redirects(browser: httpx.Client, fake: FakeCds,
                                                   sandbox: tuple[str, Any]) -> None:
    use_only(browser, fake.base)
    html = browser.get("/sandbox/patients/onc-01", params={"encounter": "enc-onc-01"}).text
    r = browser.post("/sandbox/cards/launch", data={
        "csrf": csrf(browser), "view": hidden(html, "view"), "call": "0", "card": "0", "link": "0"})
    assert r.status_code == 303
    loc = urlsplit(r.headers["location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == "https://app.example.org/launch"
    q = parse_qs(loc.query)
    assert q["iss"] == [f"{sandbox[0]}/sandbox/fhir"] and len(q["launch"][0]) >= 16
    # the absolute link is a plain link; it cannot be "launched"
    assert 'href="https://guideline.example.org/ex" target="_blank"' in html
    r = browser.post("/sandbox/cards/launch", data={
        "csrf": csrf(browser), "view": hidden(html, "view"), "call": "0", "card": "0", "link": "1"})
    assert r.status_code == 400 and "Not a SMART link" in r.text


def test_stale_or_forged_card_posts_are_refused(browser: httpx.Client) -> None:
    r = browser.post("/sandbox/cards/accept", data={"csrf": csrf(browser), "view": "nope", "call": "0", "card": "0",
                                                    "suggestion": "0"})
    assert r.status_code == 409 and "no longer current" in r.text
    r = browser.post("/sandbox/cards/accept", data={"view": "nope", "call": "0", "card": "0", "suggestion": "0"})
    assert r.status_code == 403


def test_unknown_patient_and_foreign_encounter(browser: httpx.Client) -> None:
    r = browser.get("/sandbox/patients/no-such-patient")
    assert r.status_code == 404 and "Patient not found" in r.text
    r = browser.get("/sandbox/patients/onc-01", params={"encounter": "enc-onc-02"})
    assert r.status_code == 404 and "does not belong" in r.text


def test_unreachable_service_is_shown_not_fatal(browser: httpx.Client) -> None:
    use_only(browser, f"http://127.0.0.1:{free_port()}/cds-services")
    r = browser.get("/sandbox/patients/onc-04")
    assert r.status_code == 200 and "Discovery failed" in r.text and "could not reach" in r.text


def test_with_this_servers_own_cds_service(browser: httpx.Client, sandbox: tuple[str, Any]) -> None:
    """The default configuration: the EHR calls the product's own /cds-services (whatever it answers)."""
    r = browser.post("/sandbox/services", data={"csrf": csrf(browser), "action": "default"})
    assert r.status_code == 303
    r = browser.get("/sandbox/patients/onc-17", params={"encounter": "enc-onc-17"})
    assert r.status_code == 200
    assert f"{sandbox[0]}/cds-services/" in r.text  # at least one of its services was called and reported
    assert "Discovery failed" not in r.text


# -- untrusted markup ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source,absent,present", [
    ("<script>alert(1)</script>hi", ["<script", "alert(1)"], ["hi"]),
    ("<style>body{}</style>x", ["<style", "body{}"], ["x"]),
    ('<img src=x onerror="alert(1)">', ["<img", "onerror"], []),
    ("[a](javascript:alert(1))", ["href", "<a"], ["[a](javascript:alert(1))"]),  # not a link: plain text
    ('<a href="https://ok.example/x" onclick="evil()">ok</a>', ["onclick", "evil"],
     ['<a href="https://ok.example/x" rel="noopener noreferrer" target="_blank">ok</a>']),
    ('<p style="color:red" class="x">t</p>', ["style=", "class="], ["<p>t</p>"]),
    ("<b>open", [], ["<b>open</b>"]),
    ("**Plan**\n- aerobic\n- resistance", [], ["<strong>Plan</strong>", "<li>aerobic</li>"]),
    ("```\n<script>x</script>\n```", ["<script>"], ["&lt;script&gt;"]),
])
def test_markdown_is_rendered_and_sanitised(source: str, absent: list[str], present: list[str]) -> None:
    from service.sandbox.ehr import render_markdown, sanitise_html

    out = str(render_markdown(source))
    for a in absent:
        assert a not in out, out
    for p in present:
        assert p in out, out
    assert str(sanitise_html('<div xmlns="http://www.w3.org/1999/xhtml"><table><tr><td colspan="2">'
                             'a</td></tr></table></div>')) == '<div><table><tr><td colspan="2">a</td></tr></table></div>'
