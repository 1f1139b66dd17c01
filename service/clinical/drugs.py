"""What a medication is, however the EHR coded it: RxNorm ingredient, clinical or branded drug or pack, ATC,
HCPCS, a Medication resource (contained or referenced) with ingredients, or only a name.

A drug is classified by the first class whose value set holds one of its codings (immunotherapy before
targeted before endocrine before chemotherapy: a checkpoint inhibitor is also "L01"); when no coding is known,
by an ingredient name in its text ("Doxorubicin HCl 2 mg/mL inj"). Supportive care given for cancer
(antiemetics, growth factors, bone agents ...) is recognised as such, so its cancer reasonCode does not make it
chemotherapy; a drug we cannot identify at all, ordered for a cancer, is still counted as treatment
(mCODE cancer-related medication: screening on the safe side). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.clinical.model import TreatmentKind
from service.terminology import Terminology

# Classification order: the more specific classes first (value sets overlap on purpose, e.g. ATC L01).
CLASS_ORDER: tuple[tuple[TreatmentKind, str], ...] = (
    ("immunotherapy", "treatment-immunotherapy"),
    ("targeted", "treatment-targeted"),
    ("endocrine", "treatment-endocrine"),
    ("chemotherapy", "treatment-chemotherapy"),
)
SUPPORTIVE = "supportive-cancer-care"
CARDIOTOXIC = "cardiotoxic-therapy"
# Non-cancer drug classes the rules read, by snapshot key.
OTHER_CLASSES: tuple[tuple[str, str], ...] = (("beta-blocker", "beta-blocker"), ("anticoagulant", "anticoagulant"))


@dataclass(frozen=True)
class Drug:
    """A medication resource reduced to what the rules need."""

    concepts: tuple[dict[str, Any], ...]  # the CodeableConcepts that describe it (drug code, ingredients)
    kinds: tuple[TreatmentKind, ...]  # anticancer classes (a pack or combination may hold two), or ()
    other: str | None  # "beta-blocker", "anticoagulant", "supportive" ... when not anticancer
    display: str
    cardiotoxic: bool = False
    by_name: bool = False  # recognised from its text, not its code


def _display(cc: dict[str, Any], coding: dict[str, Any] | None, term: Terminology) -> str:
    if coding and isinstance(coding.get("display"), str):
        return coding["display"]
    if isinstance(cc.get("text"), str):
        return cc["text"]
    for c in cc.get("coding") or ():
        if isinstance(c, dict) and isinstance(c.get("display"), str):
            return c["display"]
    if coding and isinstance(coding.get("system"), str) and isinstance(coding.get("code"), str):
        return term.display(coding["system"], coding["code"]) or coding["code"]
    return ""


def _texts(cc: dict[str, Any]) -> list[str]:
    out = [cc["text"]] if isinstance(cc.get("text"), str) else []
    out += [c["display"] for c in cc.get("coding") or () if isinstance(c, dict) and isinstance(c.get("display"), str)]
    return out


def concepts(res: dict[str, Any], medications: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The CodeableConcepts naming a Medication* resource's drug: inline code, or the contained/referenced
    Medication's code and its ingredients' codes; a bare reference display becomes a text-only concept."""
    cc = res.get("medicationCodeableConcept")
    if isinstance(cc, dict):
        return (cc,)
    mref = res.get("medicationReference")
    if not isinstance(mref, dict):
        return ()
    med = None
    ref = mref.get("reference")
    if isinstance(ref, str):
        if ref.startswith("#"):
            med = next((c for c in res.get("contained") or ()
                        if isinstance(c, dict) and c.get("resourceType") == "Medication" and c.get("id") == ref[1:]),
                       None)
        else:
            med = medications.get(ref) or medications.get(ref.rsplit("/_history", 1)[0])
    out: list[dict[str, Any]] = []
    if isinstance(med, dict):
        if isinstance(med.get("code"), dict):
            out.append(med["code"])
        for ing in med.get("ingredient") or ():
            if isinstance(ing, dict) and isinstance(ing.get("itemCodeableConcept"), dict):
                out.append(ing["itemCodeableConcept"])
            elif isinstance(ing, dict) and isinstance(ing.get("itemReference"), dict):
                inner = medications.get(ing["itemReference"].get("reference") or "")
                if isinstance(inner, dict) and isinstance(inner.get("code"), dict):
                    out.append(inner["code"])
    if not out and isinstance(mref.get("display"), str):
        out.append({"text": mref["display"]})
    return tuple(out)


def classify(ccs: tuple[dict[str, Any], ...], term: Terminology, cancer_reason: bool) -> Drug:
    """Classify a drug described by `ccs`; `cancer_reason` says whether it was given for a cancer.

    Every anticancer class a coding belongs to is kept (a letrozole + ribociclib pack is endocrine *and*
    targeted therapy); the display is the first matching coding's."""
    cardiotoxic = any(term.match(CARDIOTOXIC, cc) is not None for cc in ccs)
    kinds: list[TreatmentKind] = []
    display = ""
    for kind, vs in CLASS_ORDER:
        for cc in ccs:
            coding = term.match(vs, cc)
            if coding is not None:
                kinds.append(kind)
                display = display or _display(cc, coding, term)
                break
    if kinds:
        return Drug(ccs, tuple(kinds), None, display, cardiotoxic)
    for other, vs in ((SUPPORTIVE, SUPPORTIVE), *((k, v) for k, v in OTHER_CLASSES)):
        for cc in ccs:
            coding = term.match(vs, cc)
            if coding is not None:
                return Drug(ccs, (), other, _display(cc, coding, term))
    # No coding we know: look for an ingredient name in the text (RxNorm names are "ingredient strength form").
    for cc in ccs:
        for text in _texts(cc):
            named = tuple(kind for kind, vs in CLASS_ORDER if term.name_in_text(vs, text))
            if named:
                return Drug(ccs, named, None, text, cardiotoxic or bool(term.name_in_text(CARDIOTOXIC, text)),
                            by_name=True)
            for other, vs in ((SUPPORTIVE, SUPPORTIVE), *((k, v) for k, v in OTHER_CLASSES)):
                if term.name_in_text(vs, text):
                    return Drug(ccs, (), other, text, by_name=True)
    display = next((d for cc in ccs if (d := _display(cc, None, term))), "")
    if cancer_reason:
        # mCODE cancer-related medication we cannot identify: count it as anticancer treatment (safe side).
        return Drug(ccs, ("chemotherapy",), None, display or "unidentified anticancer medication")
    return Drug(ccs, (), None, display)
