"""Cohort patients coded the way real EHRs code them: what the generator's standard codings never show.

Each function adds one patient's real-world resources to the generator's builder (which has already written the
Patient, the encounter, routine labs, vitals and function tests with standard codes): clinical drugs as RxNorm
SCDs, a tympanic temperature in °F, a colectomy in CPT only, a cancer coded in WHO ICD-10 or as a personal
history, a metastasis in the mCODE pattern (secondary neoplasm + bodySite), a central line as a Device, a count
sent as text, an unreadable haemoglobin, an antiemetic given for cancer, an old open order. Every code comes
from terminology/ (whose value sets name their public sources) or the real-world scenario suite
(tests/fixtures/realworld/cases.json names its sources).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from service.sandbox.cohort import _PatientBuilder as Builder

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
WHO_ICD10 = "http://hl7.org/fhir/sid/icd-10"
CPT = "http://www.ama-assn.org/go/cpt"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"


def _cc(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    out: dict[str, Any] = {"coding": [coding]}
    if text:
        out["text"] = text
    return out


def condition(b: "Builder", code: dict[str, Any], days_ago: int, *, cancer: bool = False,
              body_site: dict[str, Any] | None = None, status: str = "active") -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition", "id": b.new_id("cancer" if cancer else "condition"),
        "clinicalStatus": _cc(COND_CLINICAL, status, status.capitalize()),
        "verificationStatus": _cc(COND_VER, "confirmed", "Confirmed"),
        "category": [_cc(COND_CAT, "problem-list-item", "Problem List Item")],
        "code": code, "subject": b.patient_ref,
        "onsetDateTime": b.when(days_ago, hour=10), "recordedDate": b.when(max(days_ago - 1, 0), hour=14),
    }
    if body_site:
        res["bodySite"] = [body_site]
    b.add(res)
    if cancer:
        b.cancer_ref = {"reference": f"Condition/{res['id']}", "display": code.get("text") or code["coding"][0]["display"]}
    return res


def observation(b: "Builder", code: dict[str, Any], days_ago: float, value: dict[str, Any], *, hour: int = 8,
                category: str = "laboratory") -> dict[str, Any]:
    return b.add({"resourceType": "Observation", "id": b.new_id("obs"), "status": "final",
                  "category": [_cc(OBS_CAT, category)], "code": code, "subject": b.patient_ref,
                  "effectiveDateTime": b.when(days_ago, hour=hour), **value})


def med_request(b: "Builder", code: dict[str, Any], days_ago: int, *, reason: bool = True) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "MedicationRequest", "id": b.new_id("medreq"), "status": "active",
                           "intent": "order", "medicationCodeableConcept": code, "subject": b.patient_ref,
                           "authoredOn": b.when(days_ago, hour=10),
                           "requester": {"reference": "Practitioner/sandbox-clinician"}}
    if reason and b.cancer_ref:
        res["reasonReference"] = [b.cancer_ref]
    return b.add(res)


def med_given(b: "Builder", code: dict[str, Any], days_ago: int, *, reason_code: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "MedicationAdministration", "id": b.new_id("medadmin"),
                           "status": "completed", "medicationCodeableConcept": code, "subject": b.patient_ref,
                           "effectiveDateTime": b.when(days_ago, hour=11)}
    if reason_code:
        res["reasonCode"] = [reason_code]
    return b.add(res)


def procedure(b: "Builder", code: dict[str, Any], days_ago: int) -> dict[str, Any]:
    return b.add({"resourceType": "Procedure", "id": b.new_id("procedure"), "status": "completed", "code": code,
                  "subject": b.patient_ref, "performedDateTime": b.when(days_ago, hour=8)})


def central_line(b: "Builder", days_ago: int, text: str) -> dict[str, Any]:
    return b.add({"resourceType": "Device", "id": b.new_id("device"), "status": "active",
                  "type": _cc(SNOMED, "52124006", "Central venous catheter", text), "patient": b.patient_ref,
                  "manufactureDate": b.when(days_ago + 30)})


# ---------------------------------------------------------------------------------------------------------
# The patients
# ---------------------------------------------------------------------------------------------------------


def ac_clinical_drugs_tympanic_fever(b: "Builder") -> None:
    """AC chemotherapy ordered and given as RxNorm clinical drugs; a tympanic temperature of 101.5 °F today."""
    med_request(b, _cc(RXNORM, "1790097", "5 ML doxorubicin hydrochloride 2 MG/ML Injection"), 6)
    med_given(b, _cc(RXNORM, "1790097", "5 ML doxorubicin hydrochloride 2 MG/ML Injection"), 6)
    med_given(b, _cc(RXNORM, "1734919", "cyclophosphamide 1000 MG Injection"), 6)
    observation(b, _cc(LOINC, "8333-7", "Tympanic membrane temperature"), 0,
                {"valueQuantity": {"value": 101.5, "unit": "°F", "system": UCUM, "code": "[degF]"}},
                hour=7, category="vital-signs")


def colectomy_cpt_who_icd10(b: "Builder") -> None:
    """Sigmoid cancer coded in WHO ICD-10 only; a partial colectomy ten days ago coded in CPT only."""
    condition(b, _cc(WHO_ICD10, "C18.7", "Malignant neoplasm: Sigmoid colon", "Sigmoid colon cancer"), 60,
              cancer=True)
    procedure(b, _cc(CPT, "44140", "Colectomy, partial; with anastomosis"), 10)
    observation(b, _cc(LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood"), 1,
                {"valueQuantity": {"value": 10.4, "unit": "gm/dL"}})


def hsct_line_manual_platelets(b: "Builder") -> None:
    """Allogeneic stem-cell transplant 60 days ago (CPT), a central line (Device), platelets by manual count as
    text."""
    procedure(b, _cc(CPT, "38240", "Hematopoietic progenitor cell (HPC); allogeneic transplantation"), 60)
    central_line(b, 70, "Tunnelled central venous catheter (Hickman)")
    observation(b, _cc(LOINC, "778-1", "Platelets [#/volume] in Blood by Manual count"), 1,
                {"valueString": "14 x10^9/L"})


def survivor_history_incidental_heart(b: "Builder") -> None:
    """Prostate cancer coded as a personal history (Z85.46); mitral valve prolapse and a right bundle-branch block,
    neither haemodynamically significant."""
    condition(b, _cc(ICD10CM, "Z85.46", "Personal history of malignant neoplasm of prostate"), 1500, cancer=True)
    condition(b, _cc(ICD10CM, "I34.1", "Nonrheumatic mitral (valve) prolapse"), 900)
    condition(b, _cc(ICD10CM, "I45.10", "Unspecified right bundle-branch block"), 600)


def pulmonary_embolism_on_apixaban(b: "Builder") -> None:
    """A pulmonary embolism three weeks ago, anticoagulated with apixaban (RxNorm clinical drug); SpO2 by pulse
    oximetry."""
    condition(b, _cc(ICD10CM, "I26.99", "Other pulmonary embolism without acute cor pulmonale"), 21)
    med_request(b, _cc(RXNORM, "1364445", "apixaban 5 MG Oral Tablet"), 20, reason=False)
    observation(b, _cc(LOINC, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"), 1,
                {"valueQuantity": {"value": 93, "unit": "%", "system": UCUM, "code": "%"}}, category="vital-signs")


def brain_metastasis_mcode_seizure(b: "Builder") -> None:
    """A brain metastasis in the mCODE pattern (secondary malignant neoplasm + bodySite brain), epilepsy, and
    pembrolizumab given as an RxNorm clinical drug."""
    condition(b, _cc(SNOMED, "128462008", "Metastatic malignant neoplasm", "Melanoma metastasis, brain"), 90,
              body_site=_cc(SNOMED, "12738006", "Brain structure"))
    condition(b, _cc(ICD10CM, "G40.909", "Epilepsy, unspecified, not intractable, without status epilepticus"), 80)
    med_given(b, _cc(RXNORM, "1657750", "4 ML pembrolizumab 25 MG/ML Injection"), 10)


def adolescent_osteosarcoma_port(b: "Builder") -> None:
    """A 16-year-old with osteosarcoma coded in WHO ICD-10, methotrexate coded in ATC (European data), a port."""
    condition(b, _cc(WHO_ICD10, "C40.2", "Malignant neoplasm: Long bones of lower limb", "Osteosarcoma of femur"),
              120, cancer=True)
    med_given(b, _cc(ATC, "L01BA01", "methotrexate"), 9)
    central_line(b, 110, "Implanted venous access port")


def ileostomy_unreadable_haemoglobin(b: "Builder") -> None:
    """An ileostomy; today's haemoglobin reported as text only; ondansetron given for the cancer (not
    chemotherapy)."""
    condition(b, _cc(ICD10CM, "Z93.2", "Ileostomy status"), 200)
    observation(b, _cc(LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood"), 0, {"valueString": "see comment"},
                hour=7)
    med_given(b, _cc(RXNORM, "26225", "ondansetron"), 2,
              reason_code=_cc(ICD10CM, "C20", "Malignant neoplasm of rectum"))


def regional_nodes_stale_order(b: "Builder") -> None:
    """Axillary lymph-node involvement (regional, not distant spread) and a capecitabine order still 'active' two
    years after it was written, with nothing given since."""
    condition(b, _cc(ICD10CM, "C77.3", "Secondary and unspecified malignant neoplasm of axilla and upper limb "
                                       "lymph nodes"), 800)
    med_request(b, _cc(RXNORM, "200328", "capecitabine 500 MG Oral Tablet"), 730)


def myeloma_calcium_fracture(b: "Builder") -> None:
    """Myeloma with calcium 12.8 mg/dL and albumin 3.2 g/dL (corrected 3.35 mmol/L), a pathological vertebral
    fracture, lenalidomide as an RxNorm clinical drug."""
    condition(b, _cc(ICD10CM, "M84.58XA", "Pathological fracture in neoplastic disease, other specified site, "
                                          "initial encounter for fracture"), 40)
    observation(b, _cc(LOINC, "17861-6", "Calcium [Mass/volume] in Serum or Plasma"), 1,
                {"valueQuantity": {"value": 12.8, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}})
    observation(b, _cc(LOINC, "1751-7", "Albumin [Mass/volume] in Serum or Plasma"), 1,
                {"valueQuantity": {"value": 3.2, "unit": "g/dL", "system": UCUM, "code": "g/dL"}})
    med_request(b, _cc(RXNORM, "602910", "lenalidomide 10 MG Oral Capsule"), 45)


REALWORLD: dict[str, Callable[["Builder"], None]] = {
    f.__name__: f for f in (
        ac_clinical_drugs_tympanic_fever, colectomy_cpt_who_icd10, hsct_line_manual_platelets,
        survivor_history_incidental_heart, pulmonary_embolism_on_apixaban, brain_metastasis_mcode_seizure,
        adolescent_osteosarcoma_port, ileostomy_unreadable_haemoglobin, regional_nodes_stale_order,
        myeloma_calcium_fracture,
    )
}
