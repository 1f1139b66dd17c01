"""The patient companion: a SMART standalone patient launch, the patient's own page and its JSON API."""
