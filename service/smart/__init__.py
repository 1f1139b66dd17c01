"""SMART on FHIR app: launch, callback, sessions, token refresh, UI and its JSON API."""
