"""Canonical URLs and identifier systems that onco-exercise owns or uses; the one place they are spelled."""

BASE = "https://fhir.onco-exercise.org"

CS_PRECAUTION = f"{BASE}/CodeSystem/precaution"
CS_SETTING = f"{BASE}/CodeSystem/setting"
CS_LOCAL_OBSERVATION = f"{BASE}/CodeSystem/local-observation"
CS_OVERRIDE_REASON = f"{BASE}/CodeSystem/override-reason"  # dismissing a CDS card
CS_CLINICAL_OVERRIDE_REASON = f"{BASE}/CodeSystem/clinical-override-reason"  # signing beyond a safety limit
CS_COMPANION_ALERT = f"{BASE}/CodeSystem/companion-alert"  # what a patient reported that the care team must hear

ID_PRESCRIPTION = f"{BASE}/identifier/prescription"
RULESET = f"{BASE}/ruleset"  # names a rule-set version (Provenance policy/entity)

PA_BASE = "http://hl7.org/fhir/us/physical-activity"
PA_TEMPORARY_CODES = f"{PA_BASE}/CodeSystem/pa-temporary-codes"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"


def sd_url(profile_id: str) -> str:
    """Canonical URL of one of our StructureDefinitions."""
    return f"{BASE}/StructureDefinition/{profile_id}"


def pa_sd_url(profile_id: str) -> str:
    """Canonical URL of a Physical Activity IG StructureDefinition."""
    return f"{PA_BASE}/StructureDefinition/{profile_id}"
