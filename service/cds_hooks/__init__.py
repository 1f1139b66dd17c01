"""CDS Hooks 2.0 service: discovery, hook calls, cards, feedback, client-JWT verification."""
