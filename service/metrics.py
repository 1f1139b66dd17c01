"""Prometheus metrics shared by every layer; one registry so /metrics shows the whole service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter("onco_http_requests_total", "HTTP requests by route and status",
                        ["method", "route", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram("onco_http_request_seconds", "HTTP request latency by route",
                         ["method", "route"], registry=REGISTRY,
                         buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CARDS = Counter("onco_cds_cards_total", "CDS cards returned by service and kind", ["service", "kind"],
                registry=REGISTRY)
FEEDBACK = Counter("onco_cds_feedback_total", "CDS feedback by outcome and override reason",
                   ["service", "outcome", "reason"], registry=REGISTRY)
WRITEBACK = Counter("onco_writeback_total", "Write-backs by strategy and result", ["strategy", "result"],
                    registry=REGISTRY)
FHIR_CALLS = Histogram("onco_fhir_call_seconds", "Outbound FHIR call latency by interaction and outcome",
                       ["interaction", "outcome"], registry=REGISTRY,
                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
FHIR_ERRORS = Counter("onco_fhir_errors_total", "Outbound FHIR call errors by kind", ["interaction", "kind"],
                      registry=REGISTRY)
NOTIFICATIONS = Counter("onco_exercise_notifications_total",
                        "Exercise-service notifications by channel (direct, subscription, inbox) and result "
                        "(queued, delivered, retry, failed, duplicate, subscribed, fallback)",
                        ["channel", "result"], registry=REGISTRY)
