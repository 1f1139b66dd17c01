"""onco-exercise: safe, personalised exercise referral for people with cancer, over CDS Hooks and SMART on FHIR."""

__version__ = "0.1.0"
