"""Request dependencies shared by every router: the core, and the authenticated actor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from labvault.domain.actors import Actor
from labvault.errors import AuthenticationFailed
from labvault.services.app import Labvault

T = TypeVar("T")
SESSION_COOKIE = "labvault_session"
_bearer = HTTPBearer(auto_error=False, description="Session token from POST /api/v1/auth/login")


async def get_lv(request: Request) -> Labvault:
    return lv_of(request)


def lv_of(request: Request) -> Labvault:
    lv: Labvault = request.app.state.lv
    return lv


async def blocking(lv: Labvault, fn: Callable[..., T], *args: Any) -> T:
    """Run a core call from async code. On SQLite the call runs in this thread: the database
    is a library call that holds the GIL, so a worker thread adds a hand-off (~50 µs) and
    no parallelism. On PostgreSQL it goes to the thread pool: the event loop must not wait
    on the network."""
    if lv.settings.is_sqlite:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _token(request: Request, creds: HTTPAuthorizationCredentials | None) -> str:
    if creds is not None and creds.scheme.lower() == "bearer" and creds.credentials:
        return creds.credentials
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        # Cookie sessions (browsers): SameSite=Strict, and a state-changing request from
        # another origin is refused (defence in depth against CSRF).
        origin = request.headers.get("origin")
        if (request.method not in ("GET", "HEAD", "OPTIONS") and origin is not None
                and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}"):
            raise AuthenticationFailed("cross-origin request with a session cookie",
                                       "send the token as Authorization: Bearer")
        return cookie
    raise AuthenticationFailed("authentication required", "log in at /api/v1/auth/login")


async def current_actor(request: Request,
                        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                        ) -> Actor:
    """The authenticated actor behind the bearer token or the session cookie; its roles
    are read from the account at each request."""
    return await blocking(lv_of(request), resolve_actor, request, creds)


def resolve_actor(request: Request, creds: HTTPAuthorizationCredentials | None) -> Actor:
    """``current_actor`` for synchronous callers (the web pages' own dependency)."""
    return lv_of(request).accounts.resolve(_token(request, creds), client_address(request))


def enrolling_actor(request: Request,
                    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                    ) -> Actor:
    """Like ``current_actor``, also accepting a session limited to MFA enrolment."""
    lv = lv_of(request)
    return lv.accounts.resolve(_token(request, creds), client_address(request),
                               scopes=("full", "mfa-enrol"))


LV = Annotated[Labvault, Depends(get_lv)]
CurrentActor = Annotated[Actor, Depends(current_actor)]
EnrollingActor = Annotated[Actor, Depends(enrolling_actor)]
