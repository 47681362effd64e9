"""The HTTP door: FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from labvault.api.routers import me_access
from labvault.config import Settings
from labvault.services.app import Labvault
from labvault.services.wiring import open_labvault


def create_app(lv: Labvault) -> FastAPI:
    app = FastAPI(title="labvault", version="0.1.0")
    app.state.lv = lv
    app.include_router(me_access.router)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def create_app_from_env() -> FastAPI:
    return create_app(open_labvault(Settings.from_env()))
