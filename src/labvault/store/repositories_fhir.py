"""Repository functions for the practitioner directory (``tables_fhir``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from labvault.store.engine import for_update
from labvault.store.tables_fhir import practitioners as P


def insert_practitioner(conn: Connection, tenant_id: str, practitioner_id: str,
                        rpps_digest: bytes | None, sealed: bytes, at: datetime) -> None:
    conn.execute(P.insert().values(tenant_id=tenant_id, practitioner_id=practitioner_id,
                                   rpps_digest=rpps_digest, data_sealed=sealed,
                                   created_at=at, updated_at=at))


def update_practitioner(conn: Connection, tenant_id: str, practitioner_id: str,
                        rpps_digest: bytes | None, sealed: bytes, at: datetime) -> bool:
    res = conn.execute(update(P).where(P.c.tenant_id == tenant_id,
                                       P.c.practitioner_id == practitioner_id)
                       .values(rpps_digest=rpps_digest, data_sealed=sealed, updated_at=at))
    return bool(res.rowcount)


def get_practitioner(conn: Connection, tenant_id: str, practitioner_id: str,
                     lock: bool = False) -> dict[str, Any] | None:
    """``lock``: the row locked until the end of the transaction (``engine.for_update``)."""
    q = select(P).where(P.c.tenant_id == tenant_id, P.c.practitioner_id == practitioner_id)
    if lock and for_update(conn):
        q = q.with_for_update()
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def practitioners_by_rpps(conn: Connection, tenant_id: str, digest: bytes) -> list[str]:
    return list(conn.execute(select(P.c.practitioner_id).where(
        P.c.tenant_id == tenant_id, P.c.rpps_digest == digest)
        .order_by(P.c.practitioner_id)).scalars())


def list_practitioners(conn: Connection, tenant_id: str, offset: int, limit: int
                       ) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(
        select(P).where(P.c.tenant_id == tenant_id).order_by(P.c.practitioner_id)
        .offset(offset).limit(limit)).mappings()]


def practitioners_by_ids(conn: Connection, tenant_id: str, ids: Sequence[str]
                         ) -> list[dict[str, Any]]:
    if not ids:
        return []
    rows = {r["practitioner_id"]: dict(r) for r in conn.execute(
        select(P).where(P.c.tenant_id == tenant_id, P.c.practitioner_id.in_(list(ids))))
        .mappings()}
    return [rows[i] for i in ids if i in rows]


def count_practitioners(conn: Connection, tenant_id: str) -> int:
    return int(conn.execute(select(func.count()).select_from(P)
                            .where(P.c.tenant_id == tenant_id)).scalar_one())
