"""Request dependencies shared by every router: the core, and the authenticated actor."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from labvault.domain.actors import Actor
from labvault.errors import AuthenticationFailed
from labvault.services.app import Labvault

SESSION_COOKIE = "labvault_session"
_bearer = HTTPBearer(auto_error=False, description="Session token from POST /api/v1/auth/login")


def get_lv(request: Request) -> Labvault:
    lv: Labvault = request.app.state.lv
    return lv


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


def current_actor(request: Request,
                  creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                  ) -> Actor:
    """The authenticated actor behind the bearer token or the session cookie; its roles
    are read from the account at each request."""
    lv = get_lv(request)
    return lv.accounts.resolve(_token(request, creds), client_address(request))


def enrolling_actor(request: Request,
                    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                    ) -> Actor:
    """Like ``current_actor``, also accepting a session limited to MFA enrolment."""
    lv = get_lv(request)
    return lv.accounts.resolve(_token(request, creds), client_address(request),
                               scopes=("full", "mfa-enrol"))


LV = Annotated[Labvault, Depends(get_lv)]
CurrentActor = Annotated[Actor, Depends(current_actor)]
EnrollingActor = Annotated[Actor, Depends(enrolling_actor)]
