"""The HTTP door: FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from labvault.config import Settings
from labvault.services.app import Labvault
from labvault.services.wiring import open_labvault


def create_app(lv: Labvault) -> FastAPI:
    app = FastAPI(title="labvault", version="0.1.0")
    app.state.lv = lv

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    from labvault.api.fhir import router as fhir_router
    app.include_router(fhir_router)

    return app


def create_app_from_env() -> FastAPI:
    return create_app(open_labvault(Settings.from_env()))
