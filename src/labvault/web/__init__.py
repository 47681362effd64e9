"""The web door: server-rendered patient portal and staff console (docs/web.md).

``install(app)`` adds the pages and the one stylesheet to the FastAPI application.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def install(app: FastAPI) -> None:
    from labvault.services.portal import PortalService
    from labvault.web.routes import router
    app.state.portal = PortalService(app.state.lv)
    app.include_router(router)
    static = resources.files("labvault.web").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
