"""``/api/v1/users``: the laboratory administrator manages the accounts of its laboratory."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from labvault.api.deps import LV, CurrentActor
from labvault.errors import AccessDenied

router = APIRouter(prefix="/api/v1/users", tags=["users"])


class UserIn(BaseModel):
    roles: list[str] = Field(min_length=1, max_length=6)
    name: str = Field(max_length=200)
    email: str = Field(max_length=320)
    patient_id: str | None = Field(default=None, max_length=40)


class RolesIn(BaseModel):
    roles: list[str] = Field(min_length=1, max_length=6)


def _tenant(actor: CurrentActor) -> str:
    if actor.tenant_id is None:
        raise AccessDenied("not allowed", "laboratory accounts are managed by their laboratory")
    return actor.tenant_id


@router.post("", status_code=201)
def create_user(body: UserIn, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    """A named account in the administrator's laboratory; returns a one-time enrolment link."""
    out = lv.accounts.create(actor, _tenant(actor), body.roles, body.name, body.email,
                             password=None, patient_id=body.patient_id)
    return out


@router.get("")
def list_users(actor: CurrentActor, lv: LV, limit: int = Query(20, ge=1, le=100),
               offset: int = Query(0, ge=0, le=100_000)) -> dict[str, Any]:
    """The accounts of the caller's laboratory, one bounded page at a time."""
    items = lv.accounts.list_accounts(actor, _tenant(actor), limit, offset)
    return {"items": items, "limit": limit, "offset": offset}


@router.get("/{account_id}")
def get_user(account_id: str, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    return lv.accounts.get(actor, account_id)


@router.put("/{account_id}/roles")
def set_roles(account_id: str, body: RolesIn, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    """Applies to the user's live sessions at their next request."""
    return lv.accounts.set_roles(actor, account_id, body.roles)


@router.post("/{account_id}/disable")
def disable_user(account_id: str, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    return lv.accounts.disable(actor, account_id)


@router.post("/{account_id}/enable")
def enable_user(account_id: str, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    return lv.accounts.enable(actor, account_id)


@router.post("/{account_id}/unlock")
def unlock_user(account_id: str, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    return lv.accounts.unlock(actor, account_id)


@router.post("/{account_id}/reset-mfa")
def reset_mfa(account_id: str, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    return lv.accounts.reset_mfa(actor, account_id)


@router.post("/{account_id}/reissue-enrolment")
def reissue_enrolment(account_id: str, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    """A new one-time enrolment link for an account that has not finished enrolment; any
    earlier link stops working."""
    return lv.accounts.reissue_enrolment(actor, account_id)


@router.post("/{account_id}/reset-password")
def reset_password(account_id: str, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    """The password stops working and sessions end; returns a one-time link with which the
    holder chooses a new one (staff keep their TOTP)."""
    return lv.accounts.reset_password(actor, account_id)
