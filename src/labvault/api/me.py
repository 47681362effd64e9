"""``/api/v1/me``: the caller's own account and, for a patient, its own record."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from labvault.api.deps import LV, CurrentActor

router = APIRouter(prefix="/api/v1/me", tags=["me"])


@router.get("")
def me(actor: CurrentActor, lv: LV) -> dict[str, Any]:
    """Who I am (account id, kind, roles, laboratory) and, for a patient, my record."""
    out: dict[str, Any] = {"id": actor.id, "kind": actor.kind, "tenant_id": actor.tenant_id,
                           "roles": sorted(actor.roles)}
    if actor.kind == "patient" and actor.patient_id:
        out["record"] = lv.patients.show(actor, actor.patient_id)
    return out
