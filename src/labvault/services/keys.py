"""Key operations: KEK rotation (re-wrap data keys), index-key rotation (recompute the
blind indexes), root rotation (re-wrap tenant keys)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labvault.access.accounts import PLATFORM_TENANT
from labvault.crypto import WrappedDek
from labvault.domain.actors import Actor
from labvault.domain.categories import Action
from labvault.services.gate import Access
from labvault.store import repositories as repo

if TYPE_CHECKING:
    from labvault.services.app import Labvault


class KeyService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def rotate_tenant(self, actor: Actor, tenant_id: str) -> dict[str, Any]:
        """New KEK version; every DEK re-wrapped in the same transaction; old KEK destroyed.

        Sealed data is untouched (the DEKs do not change), so rotation costs one
        unwrap + one wrap per patient, not a re-encryption of the database.
        """
        lv = self.lv
        with lv.begin() as conn:
            lv.gate.check(conn, Access(actor, Action.WRITE, tenant_id, frozenset(),
                                       purpose="key-management", resource="keys"))
            lv.load_tenant_keys(conn, tenant_id)
            old = repo.current_key_version(conn, tenant_id, "kek")
            assert old is not None
            new = old + 1
            repo.insert_tenant_key(conn, lv.keyring.new_tenant_key(tenant_id, "kek", new))
            n = 0
            for batch in list(repo.dek_rows(conn, tenant_id)):
                for patient_id, kek_version, wrapped in batch:
                    w = lv.keyring.rewrap_dek(tenant_id, patient_id,
                                              WrappedDek(kek_version, wrapped), new)
                    repo.update_dek(conn, tenant_id, patient_id, w.kek_version, w.wrapped)
                    n += 1
            # A new data-key version too: new tenant-level values use it, old ones stay readable.
            dv = repo.current_key_version(conn, tenant_id, "data") or 0
            repo.insert_tenant_key(conn, lv.keyring.new_tenant_key(tenant_id, "data", dv + 1))
            for v in range(1, new):
                repo.set_key_status(conn, tenant_id, "kek", v, "destroyed")
        lv.keyring.forget(tenant_id, "kek")
        return {"tenant_id": tenant_id, "kek_version": new, "rewrapped_keys": n,
                "data_key_version": dv + 1}

    def rotate_index(self, actor: Actor, tenant_id: str,
                     control_key_of: Callable[[bytes], str]) -> dict[str, Any]:
        """New blind-index key version; every digest of the laboratory recomputed from its
        sealed plaintext in the same transaction; old index keys destroyed
        (``services/rekey.py`` says which digests, and from what). ``control_key_of``:
        the HL7 door's reader of an archived message's resend key."""
        from labvault.services.rekey import rotate_index
        return rotate_index(self.lv, actor, tenant_id, control_key_of)

    def rotate_index_all(self, actor: Actor,
                         control_key_of: Callable[[bytes], str]) -> list[dict[str, Any]]:
        """``rotate_index`` of every laboratory, one transaction each."""
        return [self.rotate_index(actor, t["id"], control_key_of)
                for t in self.lv.tenants.list() if t["id"] != PLATFORM_TENANT]

    def rotate_all(self, actor: Actor) -> list[dict[str, Any]]:
        return [self.rotate_tenant(actor, t["id"]) for t in self.lv.tenants.list()]

    def rotate_root(self, actor: Actor) -> dict[str, Any]:
        """New root key version in the provider; every tenant key re-wrapped under it."""
        lv = self.lv
        with lv.begin() as conn:
            lv.gate.check(conn, Access(actor, Action.WRITE, None, frozenset(),
                                       purpose="key-management", resource="keys"))
            records = repo.all_tenant_key_records(conn)
            for rec in records:
                lv.keyring.load(rec)
            new_root = lv.keyring.provider.rotate_root()
            for rec in records:
                repo.update_tenant_key_wrapping(conn, lv.keyring.rewrap_tenant_key(rec))
        return {"root_id": new_root, "rewrapped_tenant_keys": len(records)}
