"""Hostile strings in every field a card can quote stay text: rendered by a GFM renderer written elsewhere
(markdown-it-py, GFM-like with autolinks and - as the most permissive EHR would - raw HTML allowed) and by the
sandbox EHR's renderer (the same library, then its HTML sanitiser), they make no link, image, HTML element,
heading or table (issue 12)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from markdown_it import MarkdownIt

from service.cds_hooks.cards import CardContext, decide
from service.cds_hooks.mdtext import md
from service.clinical.prescribe import prescribe
from service.clinical.snapshot import build_snapshot
from service.sandbox.ehr import render_markdown

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click me](http://evil.example/phish)",
    "![pixel](http://evil.example/p.png)",
    "http://evil.example/autolink and www.evil.example",
    "**bold** _em_ `code` ~~del~~",
    "line one\n# heading\n- list item\n| a | b |\n|---|---|",
    "&lt;b&gt; &amp; &#x3C;",
    "javascript:alert(1)",
]
GFM = MarkdownIt("gfm-like", {"linkify": True, "html": True}).enable("linkify")  # raw HTML on: the worst case
# What a hostile string must never become once a markdown renderer has read the card.
FORBIDDEN = ("<a ", "<img", "<script", "<h1", "<table", "<del", "<s>", "<strong>bold</strong>", "<em>em</em>",
             "<code>code</code>", "<li>list item")
RENDERERS = {"markdown-it (GFM-like, linkify, raw HTML on)": GFM.render,
             "sandbox EHR (GFM, raw HTML on, sanitised)": lambda text: str(render_markdown(text))}


def _cc(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def hostile_patient(s: str) -> dict[str, Any]:
    """A patient whose every quotable field carries `s`: diagnosis, comorbidity, drug, result text and unit."""
    t = (NOW - timedelta(hours=3)).isoformat()
    subject = {"reference": "Patient/p1"}
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "gender": "female"},
        {"resourceType": "Condition", "id": "c1", "subject": subject,
         "code": _cc("http://hl7.org/fhir/sid/icd-10-cm", "C50.911", s)},
        {"resourceType": "Condition", "id": "c2", "subject": subject,
         "code": _cc("http://hl7.org/fhir/sid/icd-10-cm", "G62.0", s)},
        {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order", "subject": subject,
         "authoredOn": t, "medicationCodeableConcept": _cc("http://www.nlm.nih.gov/research/umls/rxnorm", "1191138", s)},
        {"resourceType": "Observation", "id": "o1", "status": "final", "subject": subject, "effectiveDateTime": t,
         "code": _cc("http://loinc.org", "777-3", s), "valueString": s},
        {"resourceType": "Observation", "id": "o2", "status": "final", "subject": subject, "effectiveDateTime": t,
         "code": _cc("http://loinc.org", "10230-1", s), "valueQuantity": {"value": 55.0, "unit": s}},
    ]]}


def _ctx() -> CardContext:
    return CardContext(service_id="onco-exercise-encounter-start", public_url="https://onco.example",
                       exercise_service_ref="Organization/x", user_ref="Practitioner/dr-1", hook_instance="h1")


def _cards(s: str) -> list[dict[str, Any]]:
    """The warning card (an unreadable platelet result quoting `s`) and the referral card (the rest)."""
    out = []
    bundle = hostile_patient(s)
    snapshot = build_snapshot(bundle, NOW)
    out.append(decide(prescribe(snapshot, NOW), snapshot, _ctx()).card)
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["id"] != "o1"]
    snapshot = build_snapshot(bundle, NOW)
    out.append(decide(prescribe(snapshot, NOW), snapshot, _ctx()).card)
    return out


@pytest.mark.parametrize("s", HOSTILE)
def test_hostile_text_in_every_quotable_field_stays_text(s: str) -> None:
    warning, referral = _cards(s)
    assert warning["indicator"] == "warning" and referral["indicator"] == "info"
    for card in (warning, referral):
        assert "\n#" not in card["summary"] and "\n" not in card["summary"]  # the summary is one plain line
        for name, render in RENDERERS.items():
            html = render(card["detail"])
            for bad in FORBIDDEN:
                assert bad not in html, (name, bad, html)
            assert "evil.example" not in "".join(html.split("href=")[1:]), (name, html)


@pytest.mark.parametrize("s", HOSTILE)
def test_md_makes_any_string_inert_and_keeps_it_readable(s: str) -> None:
    html = GFM.render(md(s))
    assert html.startswith("<p>") and html.count("<p>") == 1  # one paragraph: no new block
    for bad in FORBIDDEN:
        assert bad not in html, (s, html)
    assert "evil" not in s or "evil" in html  # escaped, not dropped
