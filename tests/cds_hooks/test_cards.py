"""Card building from hand-built clinical results (independent of the rule table) and the suppression rules."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

from service.cds_hooks import followup
from service.cds_hooks.cards import SUMMARY_MAX, CardContext, CardPlan, decide, prune, shorten
from service.clinical.model import (CodedFact, Component, Intensity, Measurement, MissingData, PatientSnapshot,
                                    Precaution, Prescription, Reason, Referral)
from tests.cds_hooks.conftest import find_empty

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)
CTX = CardContext(service_id="onco-exercise-encounter-start", public_url="https://onco.example.org",
                  exercise_service_ref="Organization/exercise-oncology-service", user_ref="Practitioner/onc-1",
                  hook_instance=str(uuid.uuid4()), encounter_id="enc-1")
CANCER = CodedFact(ref="Condition/c1", system="http://snomed.info/sct", code="254837009",
                   display="Malignant neoplasm of breast", onset=date(2025, 10, 1))


def snap(**changes: object) -> PatientSnapshot:
    s = PatientSnapshot(as_of=NOW, patient_ref="Patient/p1", birth_date=date(1970, 5, 17), sex="female",
                        cancers=(CANCER,))
    return replace(s, **changes) if changes else s  # type: ignore[arg-type]


def rx(**changes: object) -> Prescription:
    p = Prescription(
        eligible=True, setting="home-based", clearance_required=False,
        components=(Component("aerobic", 3, 20, Intensity("moderate", "RPE 6-20", 12, 13)),
                    Component("resistance", 2, 20, Intensity("light", "RPE 6-20", 10, 11), sets=2,
                              repetitions="10-12")),
        precautions=(Precaution("bone-metastases", "Bone metastases: no high-impact or loaded spinal flexion",
                                "bone.mets", "IBMEWG 2022"),
                     Precaution("active-treatment", "On chemotherapy: lower volume after infusions", "tx.chemo",
                                "Campbell 2019")),
        missing_data=(MissingData("six-minute-walk", "No 6-minute walk test in 6 months",
                                  "baseline 6MWT recommended"),),
        rationale=(Reason("bone.mets", "Bone metastases (Condition/c2)", "supervised start, no impact", "IBMEWG"),),
        progression=("+5 min every 2 weeks",), stop_rules=("chest pain",), red_flags=(),
        ruleset_version="2026.11.0", generated_at=NOW, patient_ref="Patient/p1", cancer_refs=("Condition/c1",))
    return replace(p, **changes) if changes else p  # type: ignore[arg-type]


def test_no_cancer_no_card() -> None:
    assert decide(rx(eligible=False), snap(cancers=()), CTX).card is None
    assert decide(None, snap(cancers=()), CTX).card is None
    assert decide(rx(eligible=False), snap(), CTX).card is None


def test_referral_card_contents() -> None:
    plan = decide(rx(), snap(), CTX)
    card = plan.card
    assert plan.kind == "referral" and card is not None
    assert find_empty(card) == []
    assert card["summary"] == "Exercise referral suggested: self-managed at home, 2 precautions"
    assert len(card["summary"]) < 140
    assert card["indicator"] == "info"
    uuid.UUID(card["uuid"])
    assert "**Precautions**" in card["detail"] and "Bone metastases" in card["detail"]
    assert "No 6-minute walk test in 6 months — baseline 6MWT recommended" in card["detail"]
    assert card["source"]["label"] and card["source"]["url"].startswith("https://")
    assert card["source"]["topic"]["code"] == "390893007"
    [s] = card["suggestions"]
    uuid.UUID(s["uuid"])
    assert plan.suggestion_ids == (s["uuid"],)
    assert card["selectionBehavior"] == "at-most-one"
    [action] = s["actions"]
    assert action["type"] == "create" and action["description"]
    sr = action["resource"]
    assert sr["resourceType"] == "ServiceRequest" and sr["status"] == "draft"
    assert sr["subject"]["reference"] == "Patient/p1"
    [link] = card["links"]
    assert link["type"] == "smart" and link["url"] == "https://onco.example.org/smart/launch"
    ctx = json.loads(link["appContext"])
    assert ctx["cardUuid"] == card["uuid"] and ctx["setting"] == "home-based" and ctx["encounterId"] == "enc-1"
    codes = {c["code"] for c in card["overrideReasons"]}
    assert codes == {"patient-declined", "already-exercising", "not-appropriate-now", "discuss-next-visit"}
    assert all(c["display"] and c["system"].endswith("/CodeSystem/override-reason") for c in card["overrideReasons"])


def test_draft_referral_is_valid_against_our_profiles() -> None:
    from service.fhir.validate import errors, validate_resource

    card = decide(rx(), snap(), CTX).card
    assert card is not None
    sr = card["suggestions"][0]["actions"][0]["resource"]
    assert errors(validate_resource(sr)) == []


def test_a_draft_order_needs_a_clinician_user() -> None:
    """PA IG: a ServiceRequest's requester is a Practitioner or PractitionerRole reference, never a bare name;
    a card shown to a patient (patient-view) still links to the app but suggests no draft order."""
    for user in ("Practitioner/onc-1", "PractitionerRole/onc-role-1"):
        card = decide(rx(), snap(), replace(CTX, user_ref=user)).card
        assert card is not None
        assert card["suggestions"][0]["actions"][0]["resource"]["requester"] == {"reference": user}
    card = decide(rx(), snap(), replace(CTX, user_ref="Patient/p1")).card
    assert card is not None and "suggestions" not in card and card["links"]


def test_defer_and_clearance_summaries() -> None:
    deferred = decide(rx(setting="defer", clearance_required=True), snap(), CTX).card
    assert deferred is not None and "suggestions" not in deferred and "selectionBehavior" not in deferred
    assert deferred["summary"].startswith("Exercise referral: medical clearance needed first")
    supervised = decide(rx(setting="supervised", clearance_required=True), snap(), CTX).card
    assert supervised is not None
    assert supervised["summary"] == "Exercise referral suggested: clinically supervised, 2 precautions, clearance first"


def test_warning_card_for_red_flags_has_no_suggestion() -> None:
    flags = (Reason("fever", "Temperature 38.7 °C today", "hold exercise until fever-free 24-48 h", "common practice"),
             Reason("anc", "Neutrophils 0.3 x10^9/L", "no exercise in public spaces", "Maltser 2017"))
    plan = decide(rx(red_flags=flags, setting="defer"), snap(), CTX)
    card = plan.card
    assert plan.kind == "warning" and card is not None
    assert card["indicator"] == "warning"
    assert card["summary"] == "Hold exercise today: Temperature 38.7 °C today (+1 more)"
    assert "suggestions" not in card and "Neutrophils 0.3" in card["detail"]
    assert find_empty(card) == []


def test_follow_up_card_with_task_status_and_evs_trend() -> None:
    ref = Referral("ServiceRequest/sr1", "active", NOW - timedelta(days=40), "Task/t1", "in-progress")
    evs = (Measurement("evs-minutes-per-week", 60, "min/wk", NOW - timedelta(days=30), "Observation/e1", "82290-8"),
           Measurement("evs-minutes-per-week", 95, "min/wk", NOW - timedelta(days=2), "Observation/e2", "82290-8"))
    s = snap(referrals=(ref,), latest={"evs-minutes-per-week": evs[1]}, history={"evs-minutes-per-week": evs})
    plan = decide(rx(), s, CTX)
    card = plan.card
    assert plan.kind == "follow-up" and card is not None
    assert card["summary"] == "Exercise referral: Task in-progress; 95 min/week (up from 60)"
    assert "suggestions" not in card
    assert "below the 150 min/week guideline" in card["detail"]
    # a rejected referral is not "in place": the referral card comes back
    gone = snap(referrals=(replace(ref, task_status="rejected"),))
    assert decide(rx(), gone, CTX).kind == "referral"


def test_a_referral_pending_clearance_is_said_on_the_warning_and_then_asked_for() -> None:
    """Card, app, handout and inbox say the same: on hold, pending medical clearance, nothing to start."""
    held = Referral("ServiceRequest/sr9", "on-hold", NOW - timedelta(days=3), "Task/t9", "draft",
                    to_resolve=("Repeat the platelet count.",))
    assert held.pending_clearance and not replace(held, to_resolve=()).pending_clearance
    fever = Reason("FEVER-38", "Temperature 38.7 °C today", "defer", "ACSM 2019")
    deferred = rx(setting="defer", components=(), red_flags=(fever,), to_resolve=("Repeat the temperature.",))
    plan = decide(deferred, snap(referrals=(held,)), CTX)
    assert plan.kind == "warning" and plan.card is not None
    assert "on hold, pending medical clearance" in plan.card["detail"]
    assert "Repeat the temperature." in plan.card["detail"] and "suggestions" not in plan.card
    # without a held referral the warning says what signing would do
    alone = decide(deferred, snap(), CTX).card
    assert alone is not None and "records it pending medical clearance" in alone["detail"]
    # red flags gone from the record: ask for the clearance, never offer a second referral
    plan = decide(rx(), snap(referrals=(held,)), CTX)
    assert plan.kind == "pending" and plan.card is not None
    assert plan.card["summary"] == "Exercise referral pending medical clearance: record the clearance to release it"
    assert "- Repeat the platelet count." in plan.card["detail"] and "suggestions" not in plan.card
    assert json.loads(plan.card["links"][0]["appContext"])["referral"] == "ServiceRequest/sr9"
    # once released (active, Task requested) it is an ordinary follow-up
    released = replace(held, status="active", task_status="requested", to_resolve=())
    assert decide(rx(), snap(referrals=(released,)), CTX).kind == "follow-up"


def test_incomplete_data_card_has_no_one_click_referral() -> None:
    plan = decide(rx(), snap(), CTX, complete=False, missing=["observations (Observation): not read in time"],
                  budget=2.0)
    assert plan.kind == "incomplete" and plan.card is not None
    assert "suggestions" not in plan.card and "observations" in plan.card["detail"]


def test_prune_and_shorten() -> None:
    assert prune({"a": "", "b": [], "c": {}, "d": None, "e": [{"x": ""}, 1], "f": 0}) == {"e": [1], "f": 0}
    s = shorten("x" * 300)
    assert len(s) == SUMMARY_MAX and s.endswith("…")


def test_quiet_periods_and_claim_keys() -> None:
    assert followup.quiet_period("overridden", "patient-declined") == 90 * followup.DAY
    assert followup.quiet_period("overridden", "already-exercising") == 90 * followup.DAY
    assert followup.quiet_period("overridden", "not-appropriate-now") == 14 * followup.DAY
    assert followup.quiet_period("overridden", "discuss-next-visit") == followup.REPEAT_WINDOW  # next visit
    assert followup.quiet_period("overridden", None) == followup.OVERRIDE_QUIET_DEFAULT
    assert followup.quiet_period("overridden", "x-local") == followup.OVERRIDE_QUIET_DEFAULT
    assert followup.quiet_period("accepted", None) == followup.ACCEPTED_QUIET
    # the claim is per patient and fingerprint, whoever asks; a warning's is per clinician too
    pkey = followup.patient_key("https://ehr/fhir/", "p1")
    assert pkey == followup.patient_key("https://ehr/fhir", "p1") != followup.patient_key("https://ehr/fhir", "p2")
    assert "p1" not in pkey
    assert followup.shown_key(pkey, "referral", "fp1", "Practitioner/a") == \
        followup.shown_key(pkey, "referral", "fp1", "Practitioner/b") != followup.shown_key(pkey, "referral", "fp2")
    assert followup.shown_key(pkey, "warning", "fp1", "Practitioner/a") != \
        followup.shown_key(pkey, "warning", "fp1", "Practitioner/b")
    assert "Practitioner" not in followup.shown_key(pkey, "warning", "fp1", "Practitioner/a")