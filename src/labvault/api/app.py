"""The HTTP door: FastAPI application factory.

Public without authentication: ``/health``, ``/api/v1/auth/login``,
``/api/v1/auth/enrol`` (one-time link token in the body), the OpenAPI document and
its viewer. Everything else depends on ``deps.current_actor``.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from labvault.api import auth, me, patients, problems, users
from labvault.api.routers import alerts as alerts_router
from labvault.api.routers import deliveries as deliveries_router
from labvault.api.routers import lab as lab_router
from labvault.api.routers import me_access
from labvault.api.security import SecurityMiddleware
from labvault.config import Settings
from labvault.services.app import Labvault
from labvault.services.wiring import open_labvault
from labvault.web import install as install_web

PUBLIC_PATHS = frozenset({"/health", "/api/v1/auth/login", "/api/v1/auth/enrol",
                          "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def create_app(lv: Labvault, owns_core: bool = False) -> FastAPI:
    """The API and web app over ``lv``. ``owns_core``: the app closes ``lv`` when the
    server stops (``labvault serve``) — queued audit entries are written then: uvicorn's
    worker processes end with ``os._exit``, which skips ``atexit``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_core:
            lv.close()

    # FastAPI's native OpenTelemetry off, whatever the environment says
    # (FASTAPI_OTEL_AUTO_CONFIGURE, a global provider): request spans, metrics and logs
    # carry paths and queries — patient ids, NIR searches — to whatever collector is
    # configured, outside the gate and its audit. Off, it also stops costing ~3 % of a
    # request's CPU in per-request provider checks.
    app = FastAPI(title="labvault", version="0.1.0", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False,
                             "operation_spans": False, "auto_configure": False})
    app.state.lv = lv
    # Routes are matched in order: the patient record, the hottest path, first.
    app.include_router(patients.router)
    app.include_router(alerts_router.router)
    problems.install(app)
    app.add_middleware(SecurityMiddleware,
                       max_body=int(lv.settings.get("LABVAULT_MAX_REQUEST_BYTES")))

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(auth.router)
    app.include_router(users.router)
    app.include_router(me.router)
    app.include_router(me_access.router)
    app.include_router(lab_router.router)
    app.include_router(deliveries_router.router)
    from labvault.api.fhir import router as fhir_router
    app.include_router(fhir_router)
    install_web(app)          # portal and console pages (docs/web.md)
    return app


def create_app_from_env() -> FastAPI:
    app = create_app(open_labvault(Settings.from_env()), owns_core=True)
    # Everything built so far (the app, routes, models, the core) lives as long as the
    # process: out of the collector's sight, a full collection no longer walks it, which
    # takes the collector's pauses out of the requests' tail latency.
    gc.collect()
    gc.freeze()
    return app
