"""Shared test helpers: a policy that lets staff and patients in, synthetic people."""

from __future__ import annotations

import random
from typing import Any

from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.services.gate import Access, Decision
from labvault.synthetic import make_finess, people


class LabPolicy:
    """Operator: all. Staff: their own lab, except role ``intern`` (denied).
    Patients: their own access log."""

    def decide(self, access: Access) -> Decision:
        a = access.actor
        if a.kind in ("operator", "system"):
            return Decision(True, access.categories, rule="operator")
        if a.kind == "staff" and a.tenant_id == access.tenant_id and "intern" not in a.roles:
            return Decision(True, access.categories, rule="staff-own-lab")
        if (a.kind == "patient" and access.resource == "audit"
                and access.patient_ids == (a.patient_id,)):
            return Decision(True, frozenset(), rule="patient-own-access-log")
        return Decision(False, rule="default-deny")


def person(i: int = 0) -> dict[str, Any]:
    return {k: v for k, v in next(people(1, seed=11, start=i)).items() if v is not None}


def new_lab(lv: Labvault, name: str = "Lab") -> str:
    return lv.tenants.add(Actor.operator(), name, make_finess(random.Random())).tenant_id


def staff(tenant_id: str, role: str = "biologist", ident: str = "acct_bio",
          client: str | None = "10.0.0.7") -> Actor:
    return Actor(kind="staff", id=ident, tenant_id=tenant_id, roles=frozenset({role}),
                 client=client, request_id="req_1")
