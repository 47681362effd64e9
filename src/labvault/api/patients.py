"""``/api/v1/patients``: register, read, search (blind indexes), update, erase.

Responses carry only the categories the gate opened for the caller (minimal data).
Another laboratory's patient id answers 404, exactly like an id that does not exist.
There is no endpoint listing patients: search needs an identifying criterion and
returns at most ``MAX_RESULTS`` candidates.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel, Field

from labvault.api.deps import LV, CurrentActor, blocking
from labvault.api.instants import EXAMPLE, Instant
from labvault.domain.actors import Actor
from labvault.domain.categories import Category
from labvault.errors import AccessDenied

router = APIRouter(prefix="/api/v1/patients", tags=["patients"])

MAX_RESULTS = 20
MINIMAL = ("birth_name", "used_name", "first_names", "birth_date", "sex")

PATIENT_EXAMPLE = {
    "external_id": "LEG-000123", "birth_name": "Martin", "first_names": ["Jeanne", "Marie"],
    "birth_date": "1984-03-02", "sex": "F", "phone": "+33612345678",
    "email": "jeanne.martin@example.fr",
}


class BreakGlassIn(BaseModel):
    reason: str = Field(min_length=10, max_length=2000,
                        description="why this record must be opened (audited, alerted)")
    password: str = Field(max_length=1024)
    totp: str | None = Field(default=None, max_length=32)


def _tenant(actor: Actor) -> str:
    if actor.tenant_id is None or actor.kind != "staff":
        raise AccessDenied("not allowed", "patient records are handled by laboratory staff")
    return actor.tenant_id


@router.post("", status_code=201)
def register_patient(actor: CurrentActor, lv: LV,
                     body: dict[str, Any] = Body(..., examples=[PATIENT_EXAMPLE],
                                                 description="one import line (docs/formats.md)")
                     ) -> dict[str, str]:
    """Register one patient (same JSON as one line of the Foundation import)."""
    return {"id": lv.patients.register(actor, _tenant(actor), body)}


@router.get("")
def search_patients(actor: CurrentActor, lv: LV,
                    nir: str | None = Query(None, max_length=30),
                    email: str | None = Query(None, max_length=320),
                    phone: str | None = Query(None, max_length=30),
                    birth_name: str | None = Query(None, max_length=100),
                    first_name: str | None = Query(None, max_length=100),
                    birth_date: str | None = Query(None, max_length=10),
                    limit: int = Query(MAX_RESULTS, ge=1, le=MAX_RESULTS)) -> dict[str, Any]:
    """Find a patient by NIR, e-mail, phone, or birth name + first name + birth date.
    Returns minimal identity of at most ``limit`` candidates."""
    tenant = _tenant(actor)
    ids = lv.patients.find(actor, tenant, nir=nir, email=email, phone=phone,
                           birth_name=birth_name, first_name=first_name, birth_date=birth_date)
    results: list[dict[str, Any]] = []
    for pid in ids[:limit]:
        try:
            rec = lv.patients.show(actor, pid, categories=[Category.IDENTITY])
        except AccessDenied:
            results.append({"id": pid})
            continue
        results.append({"id": pid, **{k: rec[k] for k in MINIMAL if rec.get(k) is not None}})
    return {"results": results, "truncated": len(ids) > limit}


@router.get("/{patient_id}", response_model=dict[str, Any])
async def get_patient(patient_id: str, actor: CurrentActor, lv: LV) -> Response:
    """The record, restricted to the categories the caller may read."""
    # The hot path of the API: one hand-off at most, and the body serialised once
    # (the record is already plain JSON types: no per-field encoder walk).
    record = await blocking(lv, lv.patients.show, actor, patient_id)
    return Response(json.dumps(record, ensure_ascii=False, separators=(",", ":")),
                    media_type="application/json")


@router.put("/{patient_id}", status_code=204)
def update_patient(patient_id: str, actor: CurrentActor, lv: LV,
                   body: dict[str, Any] = Body(..., examples=[PATIENT_EXAMPLE])) -> Response:
    """Replace the record (same shape as registration)."""
    lv.patients.update(actor, patient_id, body)
    return Response(status_code=204)


@router.delete("/{patient_id}")
def erase_patient(patient_id: str, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    """Erase by crypto-shredding (the data key is destroyed)."""
    return lv.patients.erase(actor, patient_id)


@router.post("/{patient_id}/break-glass")
def break_glass(patient_id: str, body: BreakGlassIn, actor: CurrentActor,
                lv: LV) -> dict[str, Any]:
    """Open a record outside normal scope (biologist, DPO): re-authentication and a written
    reason are required; the access is audited and raises an alert."""
    lv.accounts.reauthenticate(actor, body.password, body.totp)
    return lv.patients.show(actor, patient_id, purpose="break-glass", reason=body.reason)


@router.get("/{patient_id}/results")
def results_history(patient_id: str, actor: CurrentActor, lv: LV,
                    code: str | None = Query(None, max_length=40,
                                             description="one test's LOINC code"),
                    since: Instant | None = Query(None, description=(
                        "results dated from then on (ISO 8601 with its UTC offset; default: "
                        "732 days before until)"), examples=[EXAMPLE]),
                    until: Instant | None = Query(None, description=(
                        "results dated before then (default: now)"), examples=[EXAMPLE])
                    ) -> dict[str, Any]:
    """The patient's validated results over time, newest first (docs/lab.md, "A
    patient's results over time"): the roles the policy lets read reports, one audited
    read of the patient's reports. A period longer than 1830 days, or ending before it
    starts: 422. Another laboratory's patient answers 404 like an absent one."""
    return lv.lab.results_history(actor, _tenant(actor), patient_id, code=code or None,
                                  since=since, until=until).as_json()


class MergeIn(BaseModel):
    duplicate_id: str = Field(max_length=40, description="the duplicate record, merged into "
                                                         "the one in the path")
    reason: str = Field(min_length=5, max_length=2000,
                        description="why the two records are the same person (audited, sealed)")
    force: bool = Field(default=False, description="merge even though the birth date, sex, "
                                                   "NIR or INS differ")


@router.post("/{patient_id}/merge")
def merge_patient(patient_id: str, body: MergeIn, actor: CurrentActor,
                  lv: LV) -> dict[str, Any]:
    """Identity vigilance (lab administrator): merge ``duplicate_id`` into this record.
    Everything the duplicate holds moves here; it stays as a tombstone pointing here. 409
    when refused (two different people, an erased or merged record, a honeytoken): nothing
    was changed. Another laboratory's record answers 404 like an absent one."""
    return lv.patients.merge(actor, patient_id, body.duplicate_id, body.reason,
                             force=body.force)
