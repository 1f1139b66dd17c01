"""Prescription -> the FHIR R4 resources we write (the one place that builds each of them).

Every written resource declares our profile (profiles/) and the HL7 Physical Activity IG profile it derives
from, carries a business identifier derived from the signing key (so signing twice never writes twice), and
travels as a transaction entry `{fullUrl: urn:uuid, resource, ifNoneExist}` whose references to its siblings
use those urn:uuids. urn:uuids are uuid5 of the identifier: the same signing gives the same bundle.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable

from service import canonical
from service.clinical.model import CodedFact, Component, PatientSnapshot, Prescription
from service.fhir.phases import PLAN_WEEKS, Phase, phase_text, plan_phases
from service.clinical.prescribe import target_heart_rate
from service.clinical.units import human_unit
from service.fhir import narrative
from service.fhir.signing import Signing

# --- codes used by the builders (systems from service.canonical; displays from terminology/ when loaded) ---
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
CARE_PLAN_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
DOC_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PERTAINS_TO_GOAL = "http://hl7.org/fhir/StructureDefinition/resource-pertainsToGoal"
RULESET_SYSTEM = canonical.RULESET

CODES: dict[str, tuple[str, str, str]] = {
    # key: (system, code, fallback display)
    "pa-category": (canonical.PA_TEMPORARY_CODES, "PhysicalActivity", "Physical Activity"),
    "sr-category": (canonical.SNOMED, "91251008", "Physical therapy procedure"),
    "exercise-therapy": (canonical.SNOMED, "229065009", "Exercise therapy"),
    "referral": (canonical.SNOMED, "390893007", "Referral to physical activity program"),
    "assess-plan": (CARE_PLAN_CATEGORY, "assess-plan", "Assessment and Plan of Treatment"),
    "fulfill": (TASK_CODE, "fulfill", "Fulfill the focal request"),
    "approve": (TASK_CODE, "approve", "Activate/approve the focal resource"),
    "aerobic-min-week": (canonical.LOINC, "82290-8", "Frequency of moderate to vigorous aerobic physical activity"),
    "heart-rate": (canonical.LOINC, "8867-4", "Heart rate"),
    "rpe-6-20": (canonical.CS_LOCAL_OBSERVATION, "rpe-6-20", "Borg rating of perceived exertion, 6-20 scale"),
    "strength-days-week": (canonical.LOINC, "82291-6", "Frequency of muscle-strengthening physical activity"),
    "plan-of-care-note": (canonical.LOINC, "18776-5", "Plan of care note"),
    "clinical-note": (DOC_CATEGORY, "clinical-note", "Clinical Note"),
    "author": (PROVENANCE_PARTICIPANT, "author", "Author"),
    "create": (DATA_OPERATION, "CREATE", "create"),
}

PROFILE_IDS: dict[str, tuple[str, str | None]] = {
    # our profile id -> PA IG profile it derives from (None: derived from a base resource)
    "onco-exercise-careplan": ("onco-exercise-careplan", "pa-careplan"),
    "onco-exercise-goal": ("onco-exercise-goal", "pa-goal"),
    "onco-exercise-prescription": ("onco-exercise-prescription", "pa-servicerequest"),
    "onco-exercise-referral": ("onco-exercise-referral", "pa-servicerequest"),
    "onco-exercise-task": ("onco-exercise-task", "pa-task-for-referral-management"),
    "onco-exercise-clearance-task": ("onco-exercise-clearance-task", None),
    "onco-exercise-provenance": ("onco-exercise-provenance", None),
    "onco-exercise-documentreference": ("onco-exercise-documentreference", None),
    "onco-exercise-programme-observation": ("onco-exercise-programme-observation", None),
    "onco-exercise-programme-report": ("onco-exercise-programme-report", "pa-diagnosticreport"),
}

GUIDELINE_AEROBIC_MIN_WEEK, GUIDELINE_STRENGTH_DAYS_WEEK = 150, 2  # fallback goals (ACSM 2019 / PAG 2018)
STOP_RULES_HEADING = "Stop and seek advice:"
CLINICIAN_NOTE_PREFIX = "Clinician note: "


_UUID_NS = uuid.uuid5(uuid.NAMESPACE_URL, canonical.ID_PRESCRIPTION)

Entry = dict[str, Any]


# ---------------------------------------------------------------------------------------------------------
# Public builders
# ---------------------------------------------------------------------------------------------------------


def is_pending_clearance(prescription: Prescription) -> bool:
    """A deferred plan is written *pending clearance*: nothing asks the exercise service to start."""
    return prescription.eligible and prescription.setting == "defer"


def build_prescription_resources(prescription: Prescription, snapshot: PatientSnapshot,
                                 signing: Signing) -> list[Entry]:
    """The `full` strategy: CarePlan, Goals, one ServiceRequest per component, referral, Task, Provenance.

    A deferred plan is written on hold: CarePlan, Goal and referral `on-hold`, the exercise service's Task a
    `draft` (not yet actionable), and a clearance Task for the clinician naming what must be resolved. A plan
    generated under a clearance also carries that clearance as a completed Task (who, when, what was reviewed).
    """
    ctx = _Context(prescription, snapshot, signing)
    goals = _goals(ctx)
    rx = [_component_request(ctx, role, ph, goals) for role, ph in _phased_components(ctx)]
    referral = _referral(ctx, [e["fullUrl"] for e in rx], goals, careplan=True, status=ctx.request_status)
    careplan = _careplan(ctx, goals, rx + [referral])
    for e in rx + [referral]:
        e["resource"]["basedOn"] = [{"reference": careplan["fullUrl"]}]
    entries = [careplan, *goals, *rx, referral, _task(ctx, referral), *_clearance_tasks(ctx, referral)]
    return entries + [_provenance(ctx, entries)]


def build_service_request_only(prescription: Prescription, snapshot: PatientSnapshot,
                               signing: Signing) -> list[Entry]:
    """The `service-request-only` strategy (no CarePlan/Goal create): the plan travels in the exercise
    ServiceRequests (patientInstruction, note) and the referral's note, plus the printable DocumentReference.
    A deferred plan's referral is `on-hold` (there is no Task to hold back with this strategy)."""
    ctx = _Context(prescription, snapshot, signing)
    rx = [_component_request(ctx, role, ph, []) for role, ph in _phased_components(ctx)]
    referral = _referral(ctx, [e["fullUrl"] for e in rx], [], careplan=False, status=ctx.request_status)
    doc = build_document_reference(prescription, snapshot, signing, [e["fullUrl"] for e in rx + [referral]])
    return [*rx, referral, doc]


def build_document_reference(prescription: Prescription, snapshot: PatientSnapshot, signing: Signing,
                             related_refs: Iterable[str]) -> Entry:
    """The human-readable prescription as an HTML attachment (entry dict, like the other builders).

    `related_refs` are references (relative or urn:uuid) to what was written alongside, for `context.related`.
    """
    ctx = _Context(prescription, snapshot, signing)
    html = narrative.prescription_document_html(
        prescription, snapshot, signed_by=signing.practitioner_display or signing.practitioner_ref,
        signed_at=ctx.signed_at)
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "meta": _meta("onco-exercise-documentreference"),
        "identifier": [ctx.identifier("document")],
        "status": "current",
        "docStatus": "final",
        "type": _cc("plan-of-care-note", text="Exercise prescription"),
        "category": [_cc("clinical-note"), _cc("pa-category")],
        "subject": {"reference": ctx.patient_ref},
        "date": ctx.signed_at,
        "author": [ctx.practitioner],
        "authenticator": ctx.practitioner,
        "description": f"Exercise prescription ({narrative.setting_label(prescription.setting)})",
        "content": [{
            "attachment": {
                "contentType": "text/html",
                "language": "en",
                "data": base64.b64encode(html.encode("utf-8")).decode("ascii"),
                "hash": base64.b64encode(hashlib.sha1(html.encode("utf-8")).digest()).decode("ascii"),
                "title": "Exercise prescription",
                "creation": ctx.signed_at,
            },
        }],
        "context": {"period": ctx.period},
    }
    related = [{"reference": r} for r in related_refs]
    if related:
        doc["context"]["related"] = related
    if signing.encounter_ref:
        doc["context"]["encounter"] = [{"reference": signing.encounter_ref}]
    return ctx.entry("document", doc)


def build_draft_referral(prescription: Prescription, snapshot: PatientSnapshot, exercise_service_ref: str,
                         practitioner_ref: str) -> dict[str, Any]:
    """A draft referral ServiceRequest (a resource, not an entry) for a CDS card suggestion.

    No signing yet: the identifier derives from the patient, rule set and generation time, so the same
    card offers the same draft. The requester is the clinician using the EHR (a Practitioner or
    PractitionerRole reference: the only requesters the PA IG allows), so a card shown to anyone else offers
    no draft. A PractitionerRole cannot author notes under the IG: its draft carries none (the card says it all).
    """
    seed = f"{prescription.patient_ref or snapshot.patient_ref}|{prescription.ruleset_version}|" \
           f"{_instant(prescription.generated_at)}"
    key = "draft-" + hashlib.sha256(seed.encode()).hexdigest()[:20]
    signing = Signing(key=key, practitioner_ref=practitioner_ref, signed_at=prescription.generated_at,
                      exercise_service_ref=exercise_service_ref)
    ctx = _Context(prescription, snapshot, signing)
    entry = _referral(ctx, [], [], careplan=False, status="draft")  # no CarePlan: the plan travels in its notes
    return entry["resource"]


def note_author(signing: Signing) -> dict[str, Any] | None:
    """Who authors the written notes: the signer when a Practitioner, else `Signing.note_author_ref` (the
    Practitioner or Organization behind a PractitionerRole signer); None when no author the PA IG allows for a
    ServiceRequest/Task note (Practitioner or Organization) is known: the notes are then left out."""
    if signing.practitioner_ref and _ref_type(signing.practitioner_ref) == "Practitioner":
        return {"reference": signing.practitioner_ref,
                **({"display": signing.practitioner_display} if signing.practitioner_display else {})}
    if signing.note_author_ref and _ref_type(signing.note_author_ref) in ("Practitioner", "Organization"):
        return {"reference": signing.note_author_ref}
    return None


def stop_rules_text(stop_rules: Iterable[str]) -> str:
    """The stop rules as one patientInstruction: a heading and one rule per line (each a full sentence)."""
    return "\n".join([STOP_RULES_HEADING, *(f"- {r.strip()}" for r in stop_rules if r.strip())])


def transaction_bundle(entries: Iterable[Entry]) -> dict[str, Any]:
    """A transaction Bundle: each entry POSTed with `ifNoneExist` (conditional create) when it has one."""
    out = []
    for e in entries:
        request: dict[str, Any] = {"method": "POST", "url": e["resource"]["resourceType"]}
        if e.get("ifNoneExist"):
            request["ifNoneExist"] = e["ifNoneExist"]
        out.append({"fullUrl": e["fullUrl"], "resource": e["resource"], "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}


def identifier_value(signing_key: str, role: str) -> str:
    """Business identifier value of one written resource: `<signing key>-<role>`."""
    return f"{signing_key}-{role}"


def full_url(system: str, value: str) -> str:
    """Deterministic urn:uuid for a business identifier."""
    return f"urn:uuid:{uuid.uuid5(_UUID_NS, f'{system}|{value}')}"


def profile_urls(profile_id: str) -> list[str]:
    """`meta.profile` for one of our profiles: ours first, then the PA IG profile it derives from."""
    ours, pa = PROFILE_IDS[profile_id]
    return [canonical.sd_url(ours)] + ([canonical.pa_sd_url(pa)] if pa else [])


# ---------------------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------------------


class _Context:
    """What every builder needs, computed once: references, dates, identifiers."""

    def __init__(self, prescription: Prescription, snapshot: PatientSnapshot, signing: Signing) -> None:
        patient_ref = snapshot.patient_ref or prescription.patient_ref
        if not patient_ref:
            raise ValueError("the prescription has no patient reference: nothing to write")
        if not signing.key:
            raise ValueError("the signing has no key: identifiers could not be stable")
        self.p = prescription
        self.snapshot = snapshot
        self.signing = signing
        self.patient_ref = patient_ref
        self.signed_at = _instant(signing.signed_at)
        start = _utc(signing.signed_at).date()
        self.start = start
        self.period = {"start": start.isoformat(), "end": (start + timedelta(weeks=PLAN_WEEKS)).isoformat()}
        if not signing.practitioner_ref:  # PA IG (PA-ident-1): the requester is a reference, never a bare name
            raise ValueError("the signing names no clinician: a Practitioner or PractitionerRole reference is needed")
        self.practitioner: dict[str, Any] = {"reference": signing.practitioner_ref}
        if signing.practitioner_display:
            self.practitioner["display"] = signing.practitioner_display
        self.note_author = note_author(signing)
        self.service = {"reference": signing.exercise_service_ref, "display": signing.exercise_service_name}
        self.ruleset = signing.ruleset_version or prescription.ruleset_version
        self.pending = is_pending_clearance(prescription)
        self.request_status = "on-hold" if self.pending else "active"
        self.shown: dict[str, str] = {}  # reference -> display of what this signing writes (for supportingInfo)

    def identifier(self, role: str) -> dict[str, str]:
        return {"system": canonical.ID_PRESCRIPTION, "value": identifier_value(self.signing.key, role)}

    def entry(self, role: str, resource: dict[str, Any]) -> Entry:
        value = identifier_value(self.signing.key, role)
        if resource["resourceType"] == "Provenance":  # Provenance has no identifier: search by tag
            search = f"_tag={canonical.ID_PRESCRIPTION}|{value}"
        else:
            search = f"identifier={canonical.ID_PRESCRIPTION}|{value}"
        return {"fullUrl": full_url(canonical.ID_PRESCRIPTION, value), "resource": resource, "ifNoneExist": search}

    def notes(self, texts: Iterable[str]) -> list[dict[str, Any]]:
        """Annotations authored by the signer at signing time (the PA IG requires author and time); none when
        no IG-allowed author is known (a PractitionerRole signer without its Practitioner)."""
        if self.note_author is None:
            return []
        return [{"authorReference": dict(self.note_author), "time": self.signed_at, "text": t}
                for t in texts if t.strip()]

    def reasons(self) -> dict[str, Any]:
        """The diagnosis both ways: reasonCode (codes and name, readable without access to the EHR) and
        reasonReference (with its name) to the cancer Condition(s) when known."""
        facts = self.facts()
        refs = [{"reference": r, **({"display": facts[r].display} if r in facts else {})} for r in self.p.cancer_refs]
        coded = [facts[r] for r in self.p.cancer_refs if r in facts] or list(self.snapshot.cancers)
        codes = [{"coding": [{"system": c.system, "code": c.code, "display": c.display}], "text": c.display}
                 for c in coded if c.code]
        out: dict[str, Any] = {"reasonCode": codes or [{"text": "Cancer (exercise oncology)"}]}
        if refs:
            out["reasonReference"] = refs
        return out

    def facts(self) -> dict[str, CodedFact]:
        s = self.snapshot
        groups = [s.cancers, s.metastases, s.bone_metastases, s.brain_metastases, s.regional_nodes,
                  s.cancer_history, *s.comorbidities.values()]
        return {f.ref: f for g in groups for f in g}

    def supporting(self) -> list[dict[str, str]]:
        """References to the data the plan used, each with a display saying what and when."""
        wanted = set(self.p.supporting_refs)
        shown = {**_data_displays(self.snapshot, wanted), **{r: f.display for r, f in self.facts().items()}}
        return [{"reference": r, **({"display": shown[r]} if r in shown else {})} for r in self.p.supporting_refs]


def _goals(ctx: _Context) -> list[Entry]:
    """Goals are the long-term targets the clinical core computed (Prescription.targets), not the starting dose
    (which lives in each ServiceRequest's timing). A prescription without targets (stored before targets
    existed) falls back to the guideline: 150 min/week aerobic (or more if the plan already starts higher) and
    strength on at least 2 days."""
    comps = ctx.p.components
    targets = {t.measure: t for t in ctx.p.targets}
    goals: list[Entry] = []
    aerobic = sum(c.frequency_per_week * c.minutes_per_session for c in comps if c.type == "aerobic")
    if "aerobic-minutes-per-week" in targets:
        t = targets["aerobic-minutes-per-week"]
        goals.append(_goal(ctx, "goal-aerobic", "aerobic-min-week", t.value, "min/wk", t.text))
    elif aerobic:
        value = max(GUIDELINE_AEROBIC_MIN_WEEK, aerobic)
        goals.append(_goal(ctx, "goal-aerobic", "aerobic-min-week", value, "min/wk",
                           f"Build up to {value} minutes of aerobic activity per week"))
    strength = max((c.frequency_per_week for c in comps if c.type == "resistance"), default=0)
    if "strength-days-per-week" in targets:
        t = targets["strength-days-per-week"]
        goals.append(_goal(ctx, "goal-strength", "strength-days-week", t.value, "d/wk", t.text))
    elif strength:
        value = max(GUIDELINE_STRENGTH_DAYS_WEEK, strength)
        goals.append(_goal(ctx, "goal-strength", "strength-days-week", value, "d/wk",
                           f"Muscle-strengthening exercise on {value} days per week"))
    goals += _intensity_goals(ctx)
    if not goals:
        text = ("Obtain medical clearance, then start a gentle exercise programme" if ctx.p.clearance_required
                or ctx.p.setting == "defer" else "Stay active within the limits of the exercise plan")
        goals.append(_goal(ctx, "goal-general", None, 0, "", text))
    return goals


def _goal(ctx: _Context, role: str, measure: str | None, value: int, unit: str, text: str) -> Entry:
    goal: dict[str, Any] = {
        "resourceType": "Goal",
        "meta": _meta("onco-exercise-goal"),
        "identifier": [ctx.identifier(role)],
        "lifecycleStatus": "on-hold" if ctx.pending else "active",
        "category": [_cc("pa-category")],
        "description": {"text": text},
        "subject": {"reference": ctx.patient_ref},
        "startDate": ctx.period["start"],
        "expressedBy": ctx.practitioner,
    }
    if not ctx.pending:
        goal["achievementStatus"] = _cc_raw("http://terminology.hl7.org/CodeSystem/goal-achievement",
                                            "in-progress", "In Progress")
    if measure:
        goal["target"] = [{
            "measure": _cc(measure),
            # `unit` is for people, `code` is UCUM (the value travels as UCUM; displays need not decode it)
            "detailQuantity": {"value": value, "unit": human_unit(unit), "system": canonical.UCUM, "code": unit},
            "dueDate": ctx.period["end"],
        }]
    if ctx.p.cancer_refs:
        goal["addresses"] = [{"reference": r} for r in ctx.p.cancer_refs]
    return ctx.entry(role, goal)


def _intensity_goals(ctx: _Context) -> list[Entry]:
    """In-session intensity of the aerobic component as Goal targets the service can measure against:
    heart rate (LOINC 8867-4, beats/min, from the heart-rate-reserve band when resting HR and age are known)
    and perceived exertion (Borg 6-20). Each range is two targets (>= low, <= high): the PA Goal profile wants
    a Quantity target."""
    c = next((c for c in ctx.p.components if c.type == "aerobic" and c.frequency_per_week > 0), None)
    if c is None:
        return []
    targets: list[tuple[str, float, float, str]] = []
    if c.intensity.low is not None and c.intensity.high is not None and "6-20" in c.intensity.scale:
        targets.append(("rpe-6-20", c.intensity.low, c.intensity.high, "{score}"))
    bpm = target_heart_rate(c.intensity, ctx.snapshot)
    if bpm:
        targets.append(("heart-rate", bpm[0], bpm[1], "/min"))
    if not targets:
        return []
    text = f"During aerobic sessions: {narrative.intensity_text(c.intensity)}"
    if bpm:
        text += f"; heart rate {bpm[0]}-{bpm[1]} beats/min (RPE takes precedence)"
    goal = _goal(ctx, "goal-aerobic-intensity", None, 0, "", text)
    goal["resource"]["target"] = [
        {"measure": _cc(key),
         "detailQuantity": {"value": value, "comparator": comparator, "unit": human_unit(unit) or "score",
                            "system": canonical.UCUM, "code": unit},
         "dueDate": ctx.period["end"]}
        for key, low, high, unit in targets for value, comparator in ((_num(low), ">="), (_num(high), "<="))]
    return [goal]


def _phased_components(ctx: _Context) -> list[tuple[str, Phase]]:
    """(role, phase) for every phase of every component: role `rx-<type>` for the first phase (suffixed with a
    counter when a type occurs twice) and `rx-<type>-phase-<n>` for the later ones."""
    seen: dict[str, int] = {}
    out = []
    for c, phases in zip(ctx.p.components, plan_phases(ctx.p)):
        if c.frequency_per_week <= 0:  # nothing to schedule (and Timing.frequency must be positive)
            continue
        n = seen.get(c.type, 0) + 1
        seen[c.type] = n
        role = f"rx-{c.type}" + (f"-{n}" if n > 1 else "")
        for ph in phases:
            out.append((role if ph.number == 1 else f"{role}-phase-{ph.number}", ph))
    return out


def phase_text_for(ph: Phase) -> str:
    """A phase in words, with the component's name: "Aerobic, phase 2 of 3 (weeks 3-8): build up: ..."."""
    return f"{narrative.COMPONENT_LABELS.get(ph.component.type, ph.component.type)}: {phase_text(ph)}"


def _component_request(ctx: _Context, role: str, ph: Phase, goals: list[Entry]) -> Entry:
    c = ph.component
    notes = list(c.notes)  # the component's own (e.g. its heart-rate band); the plan's advice is in the referral
    start = ctx.start + timedelta(weeks=ph.first_week - 1)
    end = min(ctx.start + timedelta(weeks=ph.last_week), date.fromisoformat(ctx.period["end"]))
    repeat: dict[str, Any] = {"boundsPeriod": {"start": start.isoformat(), "end": end.isoformat()},
                              "frequency": ph.frequency, "period": 1, "periodUnit": "wk",
                              "duration": ph.minutes, "durationUnit": "min"}
    if ph.frequency_max:
        repeat["frequencyMax"] = ph.frequency_max
    if ph.minutes_max:
        repeat["durationMax"] = ph.minutes_max
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "meta": _meta("onco-exercise-prescription"),
        "identifier": [ctx.identifier(role)],
        "status": "active",
        "intent": "order",
        "category": [_cc("pa-category"), _cc("sr-category")],
        "priority": "routine",
        "code": _cc("exercise-therapy", text=f"{narrative.COMPONENT_LABELS.get(c.type, c.type)} exercise"
                    + (f", phase {ph.number} of {ph.of} ({ph.weeks})" if ph.of > 1 else "")),
        "orderDetail": _order_details(ctx, c),
        "subject": {"reference": ctx.patient_ref},
        "occurrenceTiming": {"repeat": repeat},
        "authoredOn": ctx.signed_at,
        "requester": ctx.practitioner,
        "performer": [{"reference": ctx.patient_ref}],
        **ctx.reasons(),
        "patientInstruction": phase_instruction(ph),  # stop rules: once, in the referral
    }
    if goals:
        sr["extension"] = _pertains_to(goals)
    if ctx.signing.encounter_ref:
        sr["encounter"] = {"reference": ctx.signing.encounter_ref}
    if ctx.p.supporting_refs:
        sr["supportingInfo"] = ctx.supporting()
    if ctx.notes(notes):
        sr["note"] = ctx.notes(notes)
    entry = ctx.entry(role, _ordered(sr))
    ctx.shown[entry["fullUrl"]] = f"Exercise prescription: {phase_text_for(ph)}"
    return entry


def phase_instruction(ph: Phase) -> str:
    """The patient's instruction for one phase: its dose, intensity and activities ("Aerobic: Phase 2 of 3 (weeks
    3-6): build up: 3 to 5 days/week, 30 min per session; moderate (...): walking"); the whole FITT line when the
    component has one phase."""
    c = ph.component
    if ph.of == 1:
        return narrative.component_summary(c)
    text = f"{phase_text_for(ph)}; {narrative.intensity_text(c.intensity)}"
    return text + (": " + ", ".join(c.activities) if c.activities else "")


def _pertains_to(goals: list[Entry]) -> list[dict[str, Any]]:
    """pertainsToGoal extensions, each reference with the goal's description as its display."""
    return [{"url": PERTAINS_TO_GOAL,
             "valueReference": {"reference": g["fullUrl"], "display": g["resource"]["description"]["text"]}}
            for g in goals]


def _order_details(ctx: _Context, c: Component | None) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = []
    if c is not None:
        details.append({"text": f"Intensity: {narrative.intensity_text(c.intensity)}"})
    for x in ctx.p.precautions:
        details.append({"coding": [_coding(canonical.CS_PRECAUTION, x.code, None)], "text": x.text})
    return details


def _referral(ctx: _Context, rx_refs: list[str], goals: list[Entry], *, careplan: bool,
              status: str = "active") -> Entry:
    p = ctx.p
    setting = {"coding": [_coding(canonical.CS_SETTING, p.setting, narrative.setting_label(p.setting))],
               "text": f"Setting: {narrative.setting_label(p.setting)}"}
    notes = [f"Requested setting: {narrative.setting_label(p.setting)}."]
    if ctx.pending:
        notes.append("Pending medical clearance: do not start. The referral is released (status active, with "
                     "a requested Task) once a clinician has cleared the red flags.")
    elif p.clearance is not None:
        who = p.clearance.by_display or p.clearance.by
        notes.append(f"Medical clearance given by {who} on {p.clearance.at.date().isoformat()}.")
    if p.clearance_required and not ctx.pending:
        notes.append("Medical clearance is required before starting.")
    if not careplan:  # the plan has no CarePlan to live in: it travels here
        notes += [narrative.component_summary(c) for c in p.components]
        notes += [phase_text_for(ph) for _, ph in _phased_components(ctx) if ph.of > 1]
    notes += list(p.progression)  # the advice on progressing, once (the phases are in the prescriptions)
    notes += [n for n in p.notes if not n.startswith(CLINICIAN_NOTE_PREFIX)]
    notes += [f"Missing data: {m.text} {m.recommendation}".strip() for m in p.missing_data]
    # the clinician's own words first, then what the service adds: all authored by the signer, who signs them
    # (PA IG), so the prefix is what tells the filler which words are the clinician's own
    own = [n.strip() for n in p.notes
           if n.startswith(CLINICIAN_NOTE_PREFIX) and n[len(CLINICIAN_NOTE_PREFIX):].strip()]
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "meta": _meta("onco-exercise-referral"),
        "identifier": [ctx.identifier("referral")],
        "status": status,
        "intent": "order",
        "category": [_cc("pa-category"), _cc("sr-category")],
        "priority": "routine",
        "code": _cc("referral", text="Referral to exercise oncology service"),
        "orderDetail": [setting] + _order_details(ctx, None),
        "subject": {"reference": ctx.patient_ref},
        "occurrencePeriod": dict(ctx.period),
        "authoredOn": ctx.signed_at,
        "requester": ctx.practitioner,
        "performer": [ctx.service],
        **ctx.reasons(),
    }
    if ctx.notes(own + notes):
        sr["note"] = ctx.notes(own + notes)
    if p.stop_rules:
        sr["patientInstruction"] = stop_rules_text(p.stop_rules)
    supporting = [{"reference": r, **({"display": ctx.shown[r]} if r in ctx.shown else {})} for r in rx_refs]
    supporting += ctx.supporting()
    if supporting:
        sr["supportingInfo"] = supporting
    if goals:
        sr["extension"] = _pertains_to(goals)
    if ctx.signing.encounter_ref:
        sr["encounter"] = {"reference": ctx.signing.encounter_ref}
    return ctx.entry("referral", _ordered(sr))


def _careplan(ctx: _Context, goals: list[Entry], requests: list[Entry]) -> Entry:
    p = ctx.p
    cp: dict[str, Any] = {
        "resourceType": "CarePlan",
        "meta": _meta("onco-exercise-careplan"),
        "identifier": [ctx.identifier("careplan")],
        "text": {"status": "generated", "div": narrative.prescription_html(p, ctx.snapshot)},
        "status": ctx.request_status,
        "intent": "plan",
        "category": [_cc("pa-category"), _cc("assess-plan")],
        "title": "Exercise prescription",
        "description": f"Personalised exercise prescription: {narrative.setting_label(p.setting)}",
        "subject": {"reference": ctx.patient_ref},
        "period": dict(ctx.period),
        "created": ctx.signed_at,
        "author": ctx.practitioner,
        "goal": [{"reference": g["fullUrl"]} for g in goals],
        "activity": [{"reference": {"reference": r["fullUrl"]}} for r in requests],
    }
    if ctx.signing.encounter_ref:
        cp["encounter"] = {"reference": ctx.signing.encounter_ref}
    if p.cancer_refs:
        cp["addresses"] = [{"reference": r} for r in p.cancer_refs]
    if p.supporting_refs:
        cp["supportingInfo"] = ctx.supporting()
    return ctx.entry("careplan", _ordered(cp))


PENDING_TASK_TEXT = ("Pending medical clearance: nothing to start yet. Do not contact the patient about this "
                     "referral until this task is released (status requested).")
DELIVER_TASK_TEXT = "Please contact the patient and deliver the exercise oncology referral."


def _task(ctx: _Context, referral: Entry) -> Entry:
    task = {
        "resourceType": "Task",
        "meta": _meta("onco-exercise-task"),
        "identifier": [ctx.identifier("task")],
        "basedOn": [{"reference": referral["fullUrl"]}],
        "status": "draft" if ctx.pending else "requested",
        "intent": "order",
        "priority": "routine",
        "code": _cc("fulfill"),
        "description": PENDING_TASK_TEXT if ctx.pending else DELIVER_TASK_TEXT,
        "focus": {"reference": referral["fullUrl"]},
        "for": {"reference": ctx.patient_ref},
        "authoredOn": ctx.signed_at,
        "lastModified": ctx.signed_at,
        "requester": ctx.practitioner,
        "owner": ctx.service,
    }
    if ctx.signing.encounter_ref:
        task["encounter"] = {"reference": ctx.signing.encounter_ref}
    return ctx.entry("task", task)


def _clearance_tasks(ctx: _Context, referral: Entry) -> list[Entry]:
    """The clinician's clearance Task: `requested` (what to resolve) for a deferred plan, `completed` (who,
    when, what was reviewed, their note) for a plan generated under a clearance; none otherwise."""
    c = ctx.p.clearance
    if ctx.pending:
        lines, owner, status = ctx.p.to_resolve or ("Review the red flags in the record.",), ctx.practitioner, \
            "requested"
    elif c is not None:
        lines, owner, status = c.reviewed, _person(c.by, c.by_display), "completed"
    else:
        return []
    task: dict[str, Any] = {
        "resourceType": "Task",
        "meta": _meta("onco-exercise-clearance-task"),
        "identifier": [ctx.identifier("clearance")],
        "status": status,
        "intent": "order",
        "priority": "routine",
        "code": _cc("approve"),
        "description": "Medical clearance before exercise: " + " ".join(lines),
        "focus": {"reference": referral["fullUrl"]},
        "for": {"reference": ctx.patient_ref},
        "authoredOn": ctx.signed_at,
        "lastModified": ctx.signed_at,
        "requester": ctx.practitioner,
        "owner": owner,
        "input": [{"type": {"text": "To resolve"}, "valueString": line} for line in lines],
    }
    if status == "completed" and c is not None:
        task["executionPeriod"] = {"end": _instant(c.at)}
        task["output"] = [{"type": {"text": "Reviewed"}, "valueString": line} for line in c.reviewed]
        task["note"] = [_annotation(owner, c.note, _instant(c.at))]
    if ctx.signing.encounter_ref:
        task["encounter"] = {"reference": ctx.signing.encounter_ref}
    return [ctx.entry("clearance", task)]


def _person(ref: str, display: str | None) -> dict[str, Any]:
    return {"reference": ref, **({"display": display} if display else {})}


def _annotation(author: dict[str, Any], text: str, time: str) -> dict[str, Any]:
    """An Annotation by `author` (a Reference: the PA IG allows no name-only author) at `time`."""
    return {"authorReference": dict(author), "time": time, "text": text}


def _provenance(ctx: _Context, entries: list[Entry]) -> Entry:
    value = identifier_value(ctx.signing.key, "provenance")
    prov = {
        "resourceType": "Provenance",
        "meta": {**_meta("onco-exercise-provenance"),
                 "tag": [{"system": canonical.ID_PRESCRIPTION, "code": value}]},
        "target": [{"reference": e["fullUrl"]} for e in entries],
        "occurredDateTime": ctx.signed_at,
        "recorded": ctx.signed_at,
        "policy": [f"{RULESET_SYSTEM}/{ctx.ruleset}"],
        "activity": _cc("create"),
        "agent": [{"type": _cc("author"), "who": ctx.practitioner}],
        "entity": [{
            "role": "source",
            "what": {"identifier": {"system": RULESET_SYSTEM, "value": ctx.ruleset},
                     "display": f"onco-exercise rule set {ctx.ruleset}"},
        }],
    }
    return ctx.entry("provenance", prov)


# --- small helpers ---------------------------------------------------------------------------------------


def _ref_type(reference: str) -> str | None:
    """Resource type of a relative or absolute reference ("Practitioner/1", "https://x/fhir/PractitionerRole/2")."""
    parts = reference.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else None


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _data_displays(snapshot: PatientSnapshot, wanted: set[str]) -> dict[str, str]:
    """reference -> "Platelets 42 x10^3/uL (2026-03-02)" for the `wanted` measurements (a card's draft is built
    on every hook call: only what the referral cites is worded)."""
    out: dict[str, str] = {}
    groups = [snapshot.latest.values(), snapshot.stale.values(), *snapshot.history.values()]
    # A count derived from parts (ANC from white cells x neutrophil %) carries its first part's reference: that
    # resource is worded as what it holds, the derived count only when nothing else has the reference.
    measured = (m for g in groups for m in g if not m.derived_from)
    derived = (m for g in groups for m in g if m.derived_from)
    for m in (m for part in (measured, derived) for m in part) if wanted else ():
        if m.ref in wanted and m.ref not in out:
            out[m.ref] = " ".join(x for x in (_measure_label(m.measure), f"{_num(round(m.value, 2))}",
                                              human_unit(m.unit), f"({_utc(m.effective).date().isoformat()})") if x)
            if len(out) == len(wanted):
                break  # everything cited is worded: the rest of the history is not read
    for t in snapshot.treatments:
        if t.ref in wanted:
            out.setdefault(t.ref, t.display)
    return out


def _measure_label(measure: str) -> str:
    try:
        from service.terminology import get_terminology

        return get_terminology().measure(measure).display
    except Exception:  # an unknown measure still gets a readable name
        return measure.replace("-", " ").capitalize()


def _meta(profile_id: str) -> dict[str, Any]:
    return {"profile": profile_urls(profile_id)}


def _display(system: str, code: str, fallback: str | None) -> str | None:
    try:
        from service.terminology import get_terminology
    except ImportError:
        return fallback
    try:
        return get_terminology().display(system, code) or fallback
    except Exception:  # terminology content still being written: the fallback is correct, just not central
        return fallback


def _coding(system: str, code: str, display: str | None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    shown = _display(system, code, display)
    if shown:
        coding["display"] = shown
    return coding


def _cc(key: str, text: str | None = None) -> dict[str, Any]:
    system, code, display = CODES[key]
    cc: dict[str, Any] = {"coding": [_coding(system, code, display)]}
    if text:
        cc["text"] = text
    return cc


def _cc_raw(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def instant(dt: datetime | date) -> str:
    """FHIR instant (UTC, seconds): naive datetimes are taken as UTC."""
    if not isinstance(dt, datetime):
        dt = datetime(dt.year, dt.month, dt.day)
    return _utc(dt).replace(microsecond=0).isoformat().replace("+00:00", "Z")


_instant = instant


_ORDER = ("resourceType", "meta", "text", "extension", "identifier", "basedOn", "status", "intent", "category",
          "priority", "code", "orderDetail")


def _ordered(resource: dict[str, Any]) -> dict[str, Any]:
    """Conventional element order (readability of what lands in the EHR; JSON order carries no meaning)."""
    head = {k: resource[k] for k in _ORDER if k in resource}
    return {**head, **{k: v for k, v in resource.items() if k not in head}}
