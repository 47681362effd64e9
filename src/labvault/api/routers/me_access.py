"""``GET /api/v1/me/access-log``: the patient's "who saw my record".

Staff appear by role and laboratory only; the patient sees when, what categories and
for what purpose. Reading this list is itself audited (purpose ``access-log``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from labvault.api.deps import LV, CurrentActor
from labvault.api.instants import EXAMPLE, Instant
from labvault.errors import AccessDenied
from labvault.services.audit import audit_of

router = APIRouter(prefix="/api/v1/me", tags=["me"])


class AccessLogItem(BaseModel):
    at: str
    who: str
    role: list[str]
    lab: str | None
    action: str
    categories: list[str]
    purpose: str | None
    break_glass: bool


class AccessLog(BaseModel):
    patient_id: str
    items: list[AccessLogItem]


@router.get("/access-log", response_model=AccessLog)
def access_log(lv: LV, actor: CurrentActor,
               since: Instant | None = Query(None, description=(
                   "Only accesses from then on (ISO 8601 with its UTC offset)"),
                   examples=[EXAMPLE])
               ) -> dict[str, Any]:
    if actor.kind != "patient" or not actor.patient_id:
        raise AccessDenied("only a patient account has an access log",
                           "staff use the DPO report (`labvault audit report`)")
    rows = audit_of(lv).access_log(actor, actor.patient_id, since=since)
    return {"patient_id": actor.patient_id,
            "items": [{k: r[k] for k in AccessLogItem.model_fields} for r in rows]}
