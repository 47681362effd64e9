"""``/api/v1/alerts``: the lab's alerts -- every alert for its DPO and lab administrators,
the clinical ones (panic values) for its biologists (``services.alerts.reach``).

The router's lifespan also starts the guard's scheduled purge (expired exports,
retention) for the lifetime of the served application.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import JSONResponse

from labvault.api.deps import LV, CurrentActor
from labvault.errors import UserError


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    lv = getattr(app.state, "lv", None)
    stop = lv.guard.start_purge_job() if lv is not None else None
    try:
        yield
    finally:
        if stop is not None:
            stop()


router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"], lifespan=lifespan)


def problem(exc: UserError) -> JSONResponse:
    """RFC 9457 problem details for a user error."""
    return JSONResponse({"type": f"urn:labvault:problem:{exc.code}", "title": exc.message,
                         "status": exc.http_status, "detail": exc.hint},
                        status_code=exc.http_status, media_type="application/problem+json")


@router.get("", summary="Alerts of the caller's laboratory it may read, newest first")
def list_alerts(lv: LV, actor: CurrentActor,
                status: str | None = Query(None, pattern="^(open|acked)$"),
                limit: int = Query(100, ge=1, le=1000)) -> Any:
    try:
        return {"alerts": lv.guard.alerts.list(actor, actor.tenant_id, status, limit)}
    except UserError as exc:
        return problem(exc)


@router.post("/{alert_id}/ack", summary="Acknowledge an alert")
def ack_alert(alert_id: str, lv: LV, actor: CurrentActor) -> Any:
    try:
        return lv.guard.alerts.ack(actor, alert_id)
    except UserError as exc:
        return problem(exc)
