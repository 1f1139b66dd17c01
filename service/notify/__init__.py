"""Telling exercise services about their referrals without polling (issue 16).

- `events`: which written Tasks are news for which service (pure);
- `bundle`: the Subscriptions backport notification Bundle the PA IG uses (id-only payload);
- `jwt`: the signed JWT that travels with it, and its verification (for receivers);
- `outbox`: delivery with retries and backoff, exactly once per notification id, recorded;
- `subscription`: the FHIR Subscription on the EHR's server, when its CapabilityStatement offers the topic;
- `dispatch`: after a write-back, per service: inbox, Subscription, or our own signed notification.
"""
