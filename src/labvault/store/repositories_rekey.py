"""Reads and writes of an index-key rotation (``services/rekey.py``; the caller owns the
transaction): a laboratory's rows that hold blind-index digests, read in pages by their
random id, and their digests replaced."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from labvault.store.schema import blind_index, patients
from labvault.store.tables_breach import breach_encodings
from labvault.store.tables_delivery import delivery_destinations, delivery_routes
from labvault.store.tables_guard import guard_export_decoys, guard_exports

PAGE = 2000


def pages(conn: Connection, table: Table, tenant_id: str, key: str, columns: Sequence[str],
          where: ColumnElement[bool] | None = None, batch: int = PAGE
          ) -> Iterator[list[tuple[Any, ...]]]:
    """(key, *columns) of the tenant's rows, ``batch`` at a time in key order (keyset
    paging: each page one indexed range read, whatever the table's size)."""
    last = ""
    cols = [table.c[key], *(table.c[c] for c in columns)]
    while True:
        q = select(*cols).where(table.c.tenant_id == tenant_id, table.c[key] > last)
        if where is not None:
            q = q.where(where)
        rows = [tuple(r) for r in conn.execute(q.order_by(table.c[key]).limit(batch))]
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def set_columns(conn: Connection, table: Table, tenant_id: str, key: str,
                rows: Sequence[Mapping[str, Any]]) -> None:
    """``UPDATE table SET <the rows' other columns> WHERE tenant_id, key`` for each row
    (one executemany; every row names the same columns)."""
    if not rows:
        return
    names = [c for c in rows[0] if c != key]
    stmt = update(table).where(table.c.tenant_id == bindparam("t_"),
                               table.c[key] == bindparam("k_")).values(
        {c: bindparam(f"{c}_") for c in names})
    conn.execute(stmt, [{"t_": tenant_id, "k_": r[key], **{f"{c}_": r[c] for c in names}}
                        for r in rows])


def replace_patient_indexes(conn: Connection, tenant_id: str, patient_ids: Sequence[str],
                            rows: Sequence[Mapping[str, Any]]) -> None:
    """The blind-index rows of some patients replaced by ``rows``."""
    for i in range(0, len(patient_ids), 500):
        conn.execute(delete(blind_index).where(
            blind_index.c.tenant_id == tenant_id,
            blind_index.c.patient_id.in_(patient_ids[i:i + 500])))
    if rows:
        conn.execute(insert(blind_index), list(rows))


def drop_inactive_indexes(conn: Connection, tenant_id: str) -> None:
    """Index rows of patients no longer active (none should be left: erasure and merge
    delete them): not recomputable, not kept under the old key either."""
    active = select(patients.c.patient_id).where(patients.c.tenant_id == tenant_id,
                                                 patients.c.status == "active")
    conn.execute(delete(blind_index).where(blind_index.c.tenant_id == tenant_id,
                                           blind_index.c.patient_id.not_in(active)))


def encoded_among(conn: Connection, tenant_id: str, patient_ids: Sequence[str]) -> set[str]:
    """Those of ``patient_ids`` that have a breach encoding."""
    out: set[str] = set()
    for i in range(0, len(patient_ids), 500):
        out.update(conn.execute(select(breach_encodings.c.patient_id).where(
            breach_encodings.c.tenant_id == tenant_id,
            breach_encodings.c.patient_id.in_(patient_ids[i:i + 500]))).scalars())
    return out


def drop_encodings_not_of(conn: Connection, tenant_id: str, key_version: int) -> None:
    """The tenant's encodings under another key version (those the rotation did not
    rewrite: patients no longer active)."""
    conn.execute(delete(breach_encodings).where(breach_encodings.c.tenant_id == tenant_id,
                                                breach_encodings.c.key_version != key_version))


def routed_destinations(conn: Connection, tenant_id: str
                        ) -> list[tuple[str, bytes | None, list[bytes]]]:
    """(destination id, sealed RPPS numbers or None, route digests) of each destination
    with routes."""
    routes: dict[str, list[bytes]] = {}
    for did, d in conn.execute(select(delivery_routes.c.destination_id,
                                      delivery_routes.c.rpps_digest).where(
            delivery_routes.c.tenant_id == tenant_id)):
        routes.setdefault(did, []).append(bytes(d))
    if not routes:
        return []
    sealed: dict[str, bytes | None] = {r[0]: r[1] for r in conn.execute(select(
        delivery_destinations.c.destination_id, delivery_destinations.c.prescribers_sealed).where(
        delivery_destinations.c.tenant_id == tenant_id,
        delivery_destinations.c.destination_id.in_(list(routes))))}
    return [(did, sealed.get(did), ds) for did, ds in sorted(routes.items())]


def replace_routes(conn: Connection, tenant_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
    conn.execute(delete(delivery_routes).where(delivery_routes.c.tenant_id == tenant_id))
    if rows:
        conn.execute(insert(delivery_routes), list(rows))


def decoy_exports(conn: Connection, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's exports that have decoy digests (with their sealed manifest)."""
    ids = select(guard_export_decoys.c.export_id).where(
        guard_export_decoys.c.tenant_id == tenant_id).distinct()
    return [dict(r) for r in conn.execute(select(guard_exports).where(
        guard_exports.c.tenant_id == tenant_id, guard_exports.c.export_id.in_(ids)).order_by(
        guard_exports.c.export_id)).mappings()]


def replace_decoys(conn: Connection, tenant_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
    conn.execute(delete(guard_export_decoys).where(guard_export_decoys.c.tenant_id == tenant_id))
    cols = ("tenant_id", "kind", "digest", "export_id")
    unique = dict.fromkeys(tuple(r[c] for c in cols) for r in rows)   # the primary key's
    if unique:
        conn.execute(insert(guard_export_decoys),
                     [dict(zip(cols, k, strict=True)) for k in unique])
