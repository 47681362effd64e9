"""The web door: server-rendered patient portal and staff console (docs/web.md).

``install(app)`` adds the pages and the one stylesheet to the FastAPI application.
"""

from __future__ import annotations

import inspect
from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def install(app: FastAPI) -> None:
    from labvault.services.portal import PortalService
    from labvault.web.desk import router as desk
    from labvault.web.dpo import router as dpo
    from labvault.web.history import router as history
    from labvault.web.queue import router as queue
    from labvault.web.routes import router
    app.state.portal = PortalService(app.state.lv)
    app.include_router(router)
    app.include_router(desk)          # the reception desk's pages
    app.include_router(queue)         # the import-issues queue ("Messages d'automate")
    app.include_router(history)       # a patient's results over time
    app.include_router(dpo)           # the DPO's pages (audit trail)
    static = resources.files("labvault.web").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    _page_for_unknown_paths(app)


# Paths under the pages' own prefixes: a mistyped or stale address there is read by a
# person in a browser, who gets a page in French (the API keeps its problem+json).
PAGE_PREFIXES = ("/portail", "/console")


def _page_for_unknown_paths(app: FastAPI) -> None:
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response

    from labvault.web.render import error_page
    api_handler = app.exception_handlers[HTTPException]

    async def handler(request: Request, exc: Exception) -> Response:
        if (isinstance(exc, HTTPException) and exc.status_code in (404, 405)
                and request.url.path.startswith(PAGE_PREFIXES)):
            return error_page(404, "cette page n'existe pas",
                              "revenez à l'accueil et suivez les liens du menu")
        out = api_handler(request, exc)
        return await out if inspect.isawaitable(out) else out

    app.add_exception_handler(HTTPException, handler)
