"""Prometheus metrics shared by every layer; one registry so /metrics shows the whole service."""

from __future__ import annotations

import platform

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector,
                               ProcessCollector)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds ...
PlatformCollector(registry=REGISTRY)  # python_info

HTTP_REQUESTS = Counter("onco_http_requests_total", "HTTP requests by route and status",
                        ["method", "route", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram("onco_http_request_seconds", "HTTP request latency by route",
                         ["method", "route"], registry=REGISTRY,
                         buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
HTTP_CLIENT_GONE = Counter("onco_http_client_disconnects_total", "Requests whose client went away mid-request "
                           "or was cut off by a limit (header/body timeout, size)", ["reason"], registry=REGISTRY)
CARDS = Counter("onco_cds_cards_total", "CDS cards returned by service and kind", ["service", "kind"],
                registry=REGISTRY)
HOOK_CALLS = Counter("onco_cds_hook_calls_total", "CDS hook calls by service and HTTP status",
                     ["service", "status"], registry=REGISTRY)
HOOK_LATENCY = Histogram("onco_cds_hook_seconds", "CDS hook call latency by service", ["service"],
                         registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5))
HOOK_BUDGET_EXHAUSTED = Counter("onco_cds_hook_budget_exhausted_total", "Hook calls that answered with what "
                                "they had when the time budget ran out", ["service"], registry=REGISTRY)
JWT_REFUSALS = Counter("onco_cds_jwt_refusals_total", "CDS client JWTs refused, by reason", ["reason"],
                       registry=REGISTRY)
SIGNATURE_CHECKS = Counter("onco_cds_signature_checks_total", "CDS client JWT signatures checked while the "
                           "signature process is on, by where: helper, or in_process when it could not answer",
                           ["where"], registry=REGISTRY)
FEEDBACK = Counter("onco_cds_feedback_total", "CDS feedback by outcome and override reason",
                   ["service", "outcome", "reason"], registry=REGISTRY)
WRITEBACK = Counter("onco_writeback_total", "Write-backs by strategy and result", ["strategy", "result"],
                    registry=REGISTRY)
SIGN_RESUMED = Counter("onco_sign_resumed_total", "Signings resumed after an interrupted attempt, and audit "
                       "intents reconciled without one, by how", ["how"], registry=REGISTRY)
TOKEN_REFRESH = Counter("onco_smart_token_refresh_total", "SMART access-token refreshes by outcome", ["outcome"],
                        registry=REGISTRY)
STORE_ERRORS = Counter("onco_store_errors_total", "State store failures by operation and error",
                       ["op", "error"], registry=REGISTRY)
STORE_UP = Gauge("onco_store_up", "1 while the state store answers, 0 during an outage", registry=REGISTRY)
FHIR_CALLS = Histogram("onco_fhir_call_seconds", "Outbound FHIR call latency by interaction and outcome",
                       ["interaction", "outcome"], registry=REGISTRY,
                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
FHIR_ERRORS = Counter("onco_fhir_errors_total", "Outbound FHIR call errors by kind", ["interaction", "kind"],
                      registry=REGISTRY)
NOTIFICATIONS = Counter("onco_exercise_notifications_total",
                        "Exercise-service notifications by channel (direct, subscription, inbox) and result "
                        "(queued, delivered, retry, failed, duplicate, subscribed, fallback)",
                        ["channel", "result"], registry=REGISTRY)
BUILD = Info("onco_build", "Version of the service, its rule set and Python", registry=REGISTRY)


def set_build_info(version: str, ruleset: str) -> None:
    BUILD.info({"version": version, "ruleset": ruleset, "python": platform.python_version()})
