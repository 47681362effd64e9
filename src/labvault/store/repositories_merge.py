"""Rows of a merged duplicate patient record (services/merge.py): found by patient,
rewritten one by one (same row id, the survivor's patient id, values sealed again), and
the duplicate's own rows (data key, search indexes) dropped for its tombstone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from labvault.store.engine import for_update
from labvault.store.schema import blind_index, metadata, patient_keys, patients


def patient_state(conn: Connection, patient_id: str, lock: bool = False
                  ) -> dict[str, Any] | None:
    """(tenant_id, status, merged_into) of a patient row whatever its status; ``lock``:
    the row locked until the end of the transaction."""
    q = select(patients.c.tenant_id, patients.c.status, patients.c.merged_into).where(
        patients.c.patient_id == patient_id)
    if lock and for_update(conn):
        q = q.with_for_update()
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def rows_of_patient(conn: Connection, table: str, tenant_id: str, patient_id: str,
                    key: str, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of ``table`` that belong to the patient: their id (``key``) and ``columns``."""
    t = metadata.tables[table]
    q = select(t.c[key], *(t.c[c] for c in columns)).where(
        t.c.tenant_id == tenant_id, t.c.patient_id == patient_id).order_by(t.c[key])
    return [dict(r) for r in conn.execute(q).mappings()]


def move_row(conn: Connection, table: str, tenant_id: str, key: str, record_id: str,
             patient_id: str, values: Mapping[str, Any]) -> None:
    """Give one row a new patient (and its ``values`` sealed again)."""
    t = metadata.tables[table]
    done = conn.execute(update(t).where(t.c.tenant_id == tenant_id, t.c[key] == record_id)
                        .values(patient_id=patient_id, **values)).rowcount
    if done != 1:
        raise RuntimeError(f"{table} row {record_id} changed during the merge")


def tombstone(conn: Connection, tenant_id: str, patient_id: str, survivor_id: str,
              at: datetime) -> None:
    """The duplicate's row emptied, pointing at the survivor; its data key and its search
    index rows deleted. No shred-log line: a merge is not an erasure."""
    conn.execute(delete(patient_keys).where(patient_keys.c.tenant_id == tenant_id,
                                            patient_keys.c.patient_id == patient_id))
    conn.execute(delete(blind_index).where(blind_index.c.tenant_id == tenant_id,
                                           blind_index.c.patient_id == patient_id))
    conn.execute(update(patients).where(
        patients.c.tenant_id == tenant_id, patients.c.patient_id == patient_id).values(
        status="merged", merged_into=survivor_id, updated_at=at, identity=None, contact=None,
        coverage=None, clinical=None))


def merged_into(conn: Connection, tenant_id: str, patient_id: str) -> list[str]:
    """The records merged into ``patient_id``, and those merged into them, and so on (their
    tombstones point at it): whose audit entries are now this record's history too."""
    out: list[str] = []
    todo = [patient_id]
    while todo and len(out) < 10_000:
        found = list(conn.execute(select(patients.c.patient_id).where(
            patients.c.tenant_id == tenant_id, patients.c.status == "merged",
            patients.c.merged_into.in_(todo))).scalars())
        found = [f for f in found if f not in out and f != patient_id]
        out.extend(found)
        todo = found
    return out
