"""The functional core: FHIR JSON -> PatientSnapshot -> Prescription. No I/O, no web, no FHIR client."""
