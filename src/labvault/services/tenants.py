"""Laboratories (tenants) and their keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labvault.domain.actors import Actor
from labvault.domain.categories import Action
from labvault.domain.tenant import Tenant
from labvault.errors import Conflict, NotFound
from labvault.services.gate import Access
from labvault.store import repositories as repo
from labvault.store.ids import new_id

if TYPE_CHECKING:
    from labvault.services.app import Labvault

TENANT_KEY_PURPOSES = ("kek", "index", "data", "guard")  # guard: honeytoken/export HMACs


class TenantService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def add(self, actor: Actor, name: str, finess: str) -> Tenant:
        name, finess = Tenant.validate(name, finess)
        tenant_id = new_id("lab")
        with self.lv.begin() as conn:
            self.lv.gate.check(conn, Access(actor, Action.WRITE, None, frozenset(),
                                            purpose="administration", resource="tenant"))
            if repo.tenant_by_finess(conn, finess):
                raise Conflict(f"a laboratory with FINESS {finess} already exists",
                               "use `labvault tenant list` to find its id")
            repo.insert_tenant(conn, tenant_id, name, finess)
            for purpose in TENANT_KEY_PURPOSES:
                repo.insert_tenant_key(conn, self.lv.keyring.new_tenant_key(tenant_id, purpose, 1))
        return Tenant(tenant_id, name, finess)

    def get(self, tenant_id: str) -> Tenant:
        with self.lv.begin() as conn:
            row = repo.get_tenant(conn, tenant_id)
        if not row:
            raise NotFound(f"no laboratory {tenant_id}", "use `labvault tenant list`")
        return Tenant(row["tenant_id"], row["name"], row["finess"])

    def list(self) -> list[dict[str, Any]]:
        with self.lv.begin() as conn:
            return [{"id": r["tenant_id"], "name": r["name"], "finess": r["finess"],
                     "status": r["status"],
                     "patients": self.lv.guard.patient_count(conn, r["tenant_id"])}
                    for r in repo.list_tenants(conn)]

    def ensure_key(self, tenant_id: str, purpose: str) -> int:
        """Create a tenant key for a module's own purpose (e.g. ``match``) if missing."""
        with self.lv.begin() as conn:
            v = repo.current_key_version(conn, tenant_id, purpose)
            if v is None:
                repo.insert_tenant_key(conn, self.lv.keyring.new_tenant_key(tenant_id, purpose, 1))
                v = 1
            return v
