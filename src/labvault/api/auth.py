"""``/api/v1/auth``: login, logout, password change, MFA enrolment, enrolment links."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, Field

from labvault.api.deps import LV, SESSION_COOKIE, CurrentActor, EnrollingActor, client_address

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    totp: str | None = Field(default=None, max_length=32,
                             description="6-digit authenticator code, or a recovery code")


class LoginOut(BaseModel):
    token: str
    expires_at: datetime
    scope: str = Field(description="full, or mfa-enrol (only /auth/mfa until enrolled)")


class PasswordIn(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)
    totp: str | None = Field(default=None, max_length=32)


class ReauthIn(BaseModel):
    password: str = Field(max_length=1024)
    totp: str | None = Field(default=None, max_length=32)


class CodeIn(BaseModel):
    totp: str = Field(max_length=32)


class EnrolIn(BaseModel):
    token: str = Field(max_length=200)
    password: str = Field(max_length=1024)


@router.post("/login", response_model=LoginOut)
def login(body: LoginIn, request: Request, response: Response, lv: LV) -> LoginOut:
    """Password and TOTP -> an opaque session token (also set as an HttpOnly cookie)."""
    res = lv.accounts.login(body.email, body.password, body.totp, client_address(request))
    response.set_cookie(SESSION_COOKIE, res.token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/",
                        max_age=int((res.expires_at - lv.now()).total_seconds()))
    return LoginOut(token=res.token, expires_at=res.expires_at, scope=res.scope)


@router.post("/logout", status_code=204)
def logout(actor: EnrollingActor, lv: LV, response: Response) -> Response:
    lv.accounts.logout(actor)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.status_code = 204
    return response


@router.post("/logout-all")
def logout_all(actor: CurrentActor, lv: LV) -> dict[str, int]:
    """Revoke every session of the account (this one included)."""
    return {"revoked": lv.accounts.revoke_all(actor)}


@router.post("/password", status_code=204)
def change_password(body: PasswordIn, actor: CurrentActor, lv: LV) -> Response:
    """Change one's own password; other sessions are revoked."""
    lv.accounts.change_password(actor, body.current_password, body.new_password, body.totp)
    return Response(status_code=204)


@router.post("/reauth", status_code=204)
def reauthenticate(body: ReauthIn, actor: CurrentActor, lv: LV) -> Response:
    """Fresh password + TOTP before a sensitive operation."""
    lv.accounts.reauthenticate(actor, body.password, body.totp)
    return Response(status_code=204)


@router.post("/mfa")
def mfa_enrol(actor: EnrollingActor, lv: LV) -> dict[str, str]:
    """Start TOTP enrolment: returns the otpauth URI (shown once)."""
    return lv.accounts.mfa_enrol(actor)


@router.post("/mfa/verify")
def mfa_verify(body: CodeIn, actor: EnrollingActor, lv: LV) -> dict[str, object]:
    """Confirm with a first code; returns one-time recovery codes; log in again after."""
    return lv.accounts.mfa_verify(actor, body.totp)


@router.post("/enrol")
def enrol(body: Annotated[EnrolIn, Body()], request: Request, lv: LV) -> dict[str, object]:
    """Complete a one-time enrolment link: choose a password (staff also get a TOTP secret)."""
    return lv.accounts.enrol(body.token, body.password, client_address(request))
