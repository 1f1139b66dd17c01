"""Everything that speaks FHIR: the HTTP client, resource builders, validation and write-back."""
