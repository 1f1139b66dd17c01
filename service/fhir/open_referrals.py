"""The exercise referrals already open for a patient, so that signing revises them instead of adding another.

"Ours" means written by this service (a business identifier in our prescription system): the signed sets and
the CDS card's draft once the EHR has saved it. Only those are revised; an exercise referral placed some other
way is shown to the clinician but never changed. Open means draft, active or on-hold. Pure: works on the
resources the app loaded (ServiceRequests and Tasks of the patient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from service import canonical
from service.clinical.snapshot import TASK_OPEN, concept_text

OPEN_REQUEST = ("draft", "active", "on-hold")
OPEN_TASK = tuple(sorted(TASK_OPEN))
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
REFERRAL_CODE = (canonical.SNOMED, "390893007")
CARD_DRAFT_PREFIX = "draft-"  # identifier values of the CDS card's draft referral (resources.build_draft_referral)


@dataclass(frozen=True)
class OpenReferral:
    """One open referral with what hangs off it: its fulfil and clearance Tasks and exercise prescriptions."""

    referral: dict[str, Any]
    tasks: tuple[dict[str, Any], ...] = ()  # open fulfil Tasks (the exercise service's)
    clearances: tuple[dict[str, Any], ...] = ()  # open clearance Tasks (the clinician's)
    prescriptions: tuple[dict[str, Any], ...] = ()  # open exercise ServiceRequests it carries
    ours: bool = True

    @property
    def ref(self) -> str:
        return f"ServiceRequest/{self.referral.get('id')}"

    @property
    def status(self) -> str:
        return str(self.referral.get("status"))

    @property
    def pending_clearance(self) -> bool:
        return self.status == "on-hold" and bool(self.clearances)

    @property
    def from_card(self) -> bool:
        return any(str(i.get("value", "")).startswith(CARD_DRAFT_PREFIX) for i in our_identifiers(self.referral))

    def written_by(self, entries: list[dict[str, Any]]) -> bool:
        """This referral is one the given entries write (an interrupted attempt at the same signing committed
        it): it is to be found again by identifier, not revised as an older referral."""
        ours = {i["value"] for i in our_identifiers(self.referral)}
        return any(i["value"] in ours for e in entries for i in our_identifiers(e.get("resource") or {}))

    @property
    def careplan_ref(self) -> str | None:
        for b in self.referral.get("basedOn") or ():
            ref = b.get("reference") if isinstance(b, dict) else None
            if isinstance(ref, str) and ref.startswith("CarePlan/"):
                return ref
        return None

    def summary(self) -> dict[str, Any]:
        """What the app shows about it (no patient identifiers: references and statuses only)."""
        task = self.tasks[-1] if self.tasks else None
        return {
            "reference": self.ref,
            "status": self.status,
            "state": self.state(),
            "authoredOn": self.referral.get("authoredOn"),
            "requester": (self.referral.get("requester") or {}).get("display"),
            "ours": self.ours,
            "fromCard": self.from_card,
            "task": None if task is None else {
                "reference": f"Task/{task.get('id')}", "status": task.get("status"),
                "businessStatus": concept_text(task.get("businessStatus"))},
            "toResolve": [str(i.get("valueString")) for c in self.clearances for i in c.get("input") or ()
                          if isinstance(i, dict) and isinstance(i.get("valueString"), str)],
            "carePlan": self.careplan_ref,
        }

    def state(self) -> str:
        """One word for the workflow step: pending-clearance, draft, sent, in-progress or on-hold."""
        if self.pending_clearance:
            return "pending-clearance"
        if self.status == "draft":
            return "draft"
        task = self.tasks[-1] if self.tasks else None
        if self.status == "on-hold" or (task is not None and task.get("status") == "on-hold"):
            return "on-hold"
        if task is not None and task.get("status") in ("accepted", "in-progress"):
            return "in-progress"
        return "sent"


def open_referrals(resources: Iterable[dict[str, Any]]) -> list[OpenReferral]:
    """The patient's open exercise referrals, ours first, oldest first within each group."""
    resources = [r for r in resources if isinstance(r, dict)]
    requests = [r for r in resources if r.get("resourceType") == "ServiceRequest" and isinstance(r.get("id"), str)]
    tasks = [r for r in resources if r.get("resourceType") == "Task" and r.get("status") in OPEN_TASK]
    out: list[OpenReferral] = []
    for sr in requests:
        if sr.get("status") not in OPEN_REQUEST or not has_code(sr.get("code"), *REFERRAL_CODE):
            continue
        ref = f"ServiceRequest/{sr['id']}"
        mine = [t for t in tasks if _points_at(t.get("focus"), ref)]
        carried = {s.get("reference") for s in sr.get("supportingInfo") or () if isinstance(s, dict)}
        rx = tuple(r for r in requests if f"ServiceRequest/{r['id']}" in carried and r.get("status") in OPEN_REQUEST
                   and our_identifiers(r))
        out.append(OpenReferral(
            referral=sr,
            tasks=tuple(t for t in mine if has_code(t.get("code"), TASK_CODE, "fulfill")),
            clearances=tuple(t for t in mine if has_code(t.get("code"), TASK_CODE, "approve")),
            prescriptions=rx,
            ours=bool(our_identifiers(sr)),
        ))
    out.sort(key=lambda o: (not o.ours, str(o.referral.get("authoredOn") or ""), o.ref))
    return out


def our_identifiers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The business identifiers onco-exercise gave a resource it wrote (none: written by someone else)."""
    return [i for i in resource.get("identifier") or () if isinstance(i, dict)
            and i.get("system") == canonical.ID_PRESCRIPTION and isinstance(i.get("value"), str)]


def has_code(cc: Any, system: str, code: str) -> bool:
    """The CodeableConcept holds system|code."""
    return isinstance(cc, dict) and any(isinstance(c, dict) and c.get("system") == system and c.get("code") == code
                                        for c in cc.get("coding") or ())


def _points_at(reference: Any, ref: str) -> bool:
    value = reference.get("reference") if isinstance(reference, dict) else None
    return isinstance(value, str) and (value == ref or value.endswith("/" + ref))
