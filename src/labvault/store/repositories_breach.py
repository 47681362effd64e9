"""Breach repositories: small functions over a Connection (the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from labvault.store.driver_sql import all_rows
from labvault.store.schema import patients
from labvault.store.tables_breach import (
    breach_cases,
    breach_encodings,
    breach_events,
)


# -- register --------------------------------------------------------------------------
def insert_case(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(breach_cases).values(**row))


def get_case(conn: Connection, tenant_id: str, case_id: str) -> dict[str, Any] | None:
    r = conn.execute(select(breach_cases).where(breach_cases.c.tenant_id == tenant_id,
                                                breach_cases.c.case_id == case_id)
                     ).mappings().first()
    return dict(r) if r else None


def list_cases(conn: Connection, tenant_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(breach_cases).where(
        breach_cases.c.tenant_id == tenant_id).order_by(breach_cases.c.opened_at)).mappings()]


def set_case_status(conn: Connection, tenant_id: str, case_id: str, status: str,
                    at: datetime) -> None:
    conn.execute(update(breach_cases).where(breach_cases.c.tenant_id == tenant_id,
                                            breach_cases.c.case_id == case_id
                                            ).values(status=status, updated_at=at))


def insert_event(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(breach_events).values(**row))


def case_events(conn: Connection, tenant_id: str, case_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(breach_events).where(
        breach_events.c.tenant_id == tenant_id, breach_events.c.case_id == case_id
    ).order_by(breach_events.c.at, breach_events.c.event_id)).mappings()]


# -- encodings -------------------------------------------------------------------------
def replace_encodings(conn: Connection, tenant_id: str, rows: Sequence[dict[str, Any]],
                      fresh: bool = False) -> None:
    """Write the encoding rows (with their packed blocking keys) of some patients
    (``fresh``: known to have none yet)."""
    if not fresh:
        ids = list({r["patient_id"] for r in rows})
        for i in range(0, len(ids), 500):
            conn.execute(delete(breach_encodings).where(
                breach_encodings.c.tenant_id == tenant_id,
                breach_encodings.c.patient_id.in_(ids[i:i + 500])))
    if rows:
        conn.execute(insert(breach_encodings), list(rows))


def delete_encodings(conn: Connection, tenant_id: str, patient_id: str) -> None:
    conn.execute(delete(breach_encodings).where(breach_encodings.c.tenant_id == tenant_id,
                                                breach_encodings.c.patient_id == patient_id))


def purge_orphan_encodings(conn: Connection) -> int:
    """Drop encodings of patients no longer active (erased, e.g. by a shred-log replay)."""
    live = select(patients.c.patient_id).where(patients.c.status == "active")
    n = conn.execute(delete(breach_encodings).where(
        breach_encodings.c.patient_id.not_in(live))).rowcount
    return int(n or 0)


def inactive_among(conn: Connection, patient_ids: Sequence[str]) -> set[str]:
    """The ids among ``patient_ids`` with no active patient row (erased, or gone)."""
    active: set[str] = set()
    ids = list(patient_ids)
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        marks = ", ".join("{p}" for _ in part)
        active.update(r[0] for r in all_rows(
            conn, "SELECT patient_id FROM patients "  # noqa: S608 (only {p}s)
                  f"WHERE status = 'active' AND patient_id IN ({marks})", tuple(part)))
    return set(ids) - active


def delete_encodings_of(conn: Connection, patient_ids: Sequence[str]) -> None:
    ids = list(patient_ids)
    for i in range(0, len(ids), 500):
        conn.execute(delete(breach_encodings).where(
            breach_encodings.c.patient_id.in_(ids[i:i + 500])))


def patients_without_encoding(conn: Connection, tenant_id: str) -> list[str]:
    have = select(breach_encodings.c.patient_id).where(breach_encodings.c.tenant_id == tenant_id)
    return list(conn.execute(select(patients.c.patient_id).where(
        patients.c.tenant_id == tenant_id, patients.c.status == "active",
        patients.c.patient_id.not_in(have))).scalars())


# Bulk reads for dump triage: plain driver SQL, rows as tuples (``all_rows``; SQLAlchemy's
# typed row processing costs ~7x the fetch itself at a million rows).


def tenant_index_rows(conn: Connection, tenant_id: str, kinds: Sequence[str]
                      ) -> Sequence[tuple[bytes, str]]:
    """(digest, patient id) of every blind-index entry of some kinds of a tenant."""
    marks = ", ".join("{p}" for _ in kinds)
    return all_rows(conn, "SELECT digest, patient_id FROM blind_index "  # noqa: S608 (only {p}s)
                              f"WHERE tenant_id = {{p}} AND kind IN ({marks})",
                        (tenant_id, *kinds))


def tenant_encoding_rows(conn: Connection, tenant_id: str, key_version: int
                         ) -> Sequence[tuple[str, bytes]]:
    """(patient id, sealed encoding and blocking keys) of a tenant's encodings under one
    index key version."""
    return all_rows(conn, "SELECT patient_id, sealed FROM breach_encodings "
                              "WHERE tenant_id = {p} AND key_version = {p}",
                        (tenant_id, key_version))


def count_encodings(conn: Connection, tenant_id: str) -> int:
    return int(conn.execute(select(func.count()).select_from(breach_encodings).where(
        breach_encodings.c.tenant_id == tenant_id)).scalar() or 0)


def record_times(conn: Connection, tenant_id: str, patient_ids: Sequence[str]
                 ) -> tuple[datetime | None, datetime | None]:
    """Earliest creation and latest update among some patients (clear workflow timestamps)."""
    lo: datetime | None = None
    hi: datetime | None = None
    ids = list(patient_ids)
    for i in range(0, len(ids), 500):
        a, b = conn.execute(select(func.min(patients.c.created_at), func.max(patients.c.updated_at)
                                   ).where(patients.c.tenant_id == tenant_id,
                                           patients.c.patient_id.in_(ids[i:i + 500]))).one()
        if a is not None and (lo is None or a < lo):
            lo = a
        if b is not None and (hi is None or b > hi):
            hi = b
    return lo, hi
