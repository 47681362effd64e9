"""Request dependencies shared by every router: the core, and the authenticated actor."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from labvault.domain.actors import Actor
from labvault.errors import AuthenticationFailed
from labvault.services.app import Labvault


def get_lv(request: Request) -> Labvault:
    lv: Labvault = request.app.state.lv
    return lv


def current_actor(request: Request) -> Actor:
    """The authenticated actor behind the bearer token or session cookie.

    Filled in by the access module (sessions); until a session service is wired,
    nothing but the public routes can be reached (default deny).
    """
    raise AuthenticationFailed("authentication required", "log in at /api/v1/auth/login")


LV = Annotated[Labvault, Depends(get_lv)]
CurrentActor = Annotated[Actor, Depends(current_actor)]
