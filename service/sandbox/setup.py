"""Sandbox wiring (placeholder until implemented)."""

from fastapi import FastAPI

from service.config import Settings


def prepare_settings(settings: Settings) -> None:
    if settings.sandbox_fhir_base not in settings.fhir_servers:
        settings.fhir_servers.append(settings.sandbox_fhir_base)


def install(app: FastAPI, settings: Settings) -> None:
    return None
