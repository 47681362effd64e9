"""``/api/v1/deliveries``: the laboratory's outbox to the prescribers' systems (HL7
ORU^R01 over MLLP, docs/hl7.md "Outbound") -- where each message stands, and a failed one
sent again once its cause is fixed. For the lab's biologists and lab administrators
(policy resource ``delivery``); destinations stay the CLI operator's (``labvault delivery
add``). Through ``lv.delivery`` (``services/delivery.py``): gate, audit; problem+json
errors like every route. The message itself is never returned.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from labvault.api.deps import LV, CurrentActor
from labvault.api.routers.lab import laboratory_account

router = APIRouter(prefix="/api/v1/deliveries", tags=["delivery"],
                   dependencies=[Depends(laboratory_account)])


class ResendIn(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description=(
        "why it is sent again (kept, sealed, in the audit log)"),
        examples=["patiente créée dans le logiciel du cabinet"])


@router.get("", summary="The laboratory's outbox, newest first: ids, status, attempts, "
                        "times, the destination's name and the receiver's error (never the "
                        "message)")
def list_deliveries(actor: CurrentActor, lv: LV,
                    status: Literal["failed", "pending", "delivered", "all"] = Query(
                        "all", description="which messages (`all`: every status)"),
                    limit: int = Query(100, ge=1, le=500)) -> dict[str, Any]:
    assert actor.tenant_id is not None          # laboratory_account
    rows = lv.delivery.status(actor, actor.tenant_id, () if status == "all" else (status,),
                              limit=limit, newest_first=True)
    return {"deliveries": rows}


@router.post("/{outbox_id}/resend",
             summary="Send a failed message again (back to pending, due now); its open "
                     "delivery-failed alert is acknowledged")
def resend_delivery(outbox_id: str, body: ResendIn, actor: CurrentActor,
                    lv: LV) -> dict[str, Any]:
    return lv.delivery.resend(actor, actor.tenant_id, outbox_id, body.reason)
