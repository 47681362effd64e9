"""Lab repositories: small functions over a Connection (the caller owns the transaction).

Only clear columns (ids, status, timestamps, digests) are filtered on; sealed columns
are moved as bytes and opened by the service through the gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, union_all, update
from sqlalchemy.engine import Connection

from labvault.store.tables_lab import (
    lab_catalogues,
    lab_hl7_messages,
    lab_import_issues,
    lab_observation_history,
    lab_observations,
    lab_orders,
    lab_reports,
    lab_specimens,
)

_INS_ORDER = insert(lab_orders)
_INS_REPORT = insert(lab_reports)
_INS_SPECIMEN = insert(lab_specimens)
_INS_OBS = insert(lab_observations)
_INS_HIST = insert(lab_observation_history)
_INS_MSG = insert(lab_hl7_messages)
_INS_ISSUE = insert(lab_import_issues)

# Hot-path statements of the HL7 ingest, built once (SQLAlchemy then reuses the compiled
# form from its cache without re-building the expression on each call).
_SEL_CONTROL = select(lab_hl7_messages.c.message_id, lab_hl7_messages.c.status,
                      lab_hl7_messages.c.ack_sealed).where(
    lab_hl7_messages.c.tenant_id == bindparam("t"),
    lab_hl7_messages.c.control_digest == bindparam("d"))
# Two index searches, not one ``filler = ? OR placer = ?``: SQLite plans the OR as a scan
# of every order of the lab (one per message, growing with the lab's history).
_SEL_ORDER_DIGESTS = union_all(
    select(lab_orders).where(lab_orders.c.tenant_id == bindparam("t"),
                             lab_orders.c.filler_digest == bindparam("f")),
    select(lab_orders).where(lab_orders.c.tenant_id == bindparam("t"),
                             lab_orders.c.placer_digest == bindparam("p"))).limit(4)
_SEL_ACTIVE_CATALOGUE_ID = select(lab_catalogues.c.catalogue_id).where(
    lab_catalogues.c.tenant_id == bindparam("t"), lab_catalogues.c.status == "active"
).order_by(lab_catalogues.c.loaded_at.desc()).limit(1)


def _one(conn: Connection, q: Any) -> dict[str, Any] | None:
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


# -- orders / reports -------------------------------------------------------------------------
def insert_order(conn: Connection, order: dict[str, Any], report: dict[str, Any]) -> None:
    conn.execute(_INS_ORDER, order)
    conn.execute(_INS_REPORT, report)


def order(conn: Connection, order_id: str) -> dict[str, Any] | None:
    return _one(conn, select(lab_orders).where(lab_orders.c.order_id == order_id))


def order_by_digest(conn: Connection, tenant_id: str, placer: bytes | None,
                    filler: bytes | None) -> dict[str, Any] | None:
    """The order with this filler number, else this placer number (one query)."""
    if filler is None and placer is None:
        return None
    rows = [dict(r) for r in conn.execute(_SEL_ORDER_DIGESTS, {
        "t": tenant_id, "f": filler, "p": placer}).mappings()]
    if filler is not None:
        for r in rows:
            if r["filler_digest"] == filler:
                return r
    return rows[0] if rows else None


def update_order(conn: Connection, tenant_id: str, order_id: str, **values: Any) -> None:
    conn.execute(update(lab_orders).where(lab_orders.c.tenant_id == tenant_id,
                                          lab_orders.c.order_id == order_id).values(**values))


def orders(conn: Connection, tenant_id: str, *, statuses: Sequence[str] | None = None,
           patient_id: str | None = None, limit: int = 200,
           order_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    q = select(lab_orders).where(lab_orders.c.tenant_id == tenant_id)
    if statuses:
        q = q.where(lab_orders.c.status.in_(list(statuses)))
    if patient_id:
        q = q.where(lab_orders.c.patient_id == patient_id)
    if order_ids is not None:
        q = q.where(lab_orders.c.order_id.in_(list(order_ids)))
    q = q.order_by(lab_orders.c.created_at, lab_orders.c.order_id).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def report_by_order(conn: Connection, tenant_id: str, order_id: str) -> dict[str, Any] | None:
    return _one(conn, select(lab_reports).where(lab_reports.c.tenant_id == tenant_id,
                                                lab_reports.c.order_id == order_id))


def report(conn: Connection, report_id: str) -> dict[str, Any] | None:
    return _one(conn, select(lab_reports).where(lab_reports.c.report_id == report_id))


def reports(conn: Connection, tenant_id: str, *, patient_id: str | None = None,
            statuses: Sequence[str] | None = None, limit: int = 200) -> list[dict[str, Any]]:
    q = select(lab_reports).where(lab_reports.c.tenant_id == tenant_id)
    if patient_id:
        q = q.where(lab_reports.c.patient_id == patient_id)
    if statuses:
        q = q.where(lab_reports.c.status.in_(list(statuses)))
    q = q.order_by(lab_reports.c.created_at, lab_reports.c.report_id).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def update_report(conn: Connection, tenant_id: str, order_id: str, **values: Any) -> None:
    conn.execute(update(lab_reports).where(lab_reports.c.tenant_id == tenant_id,
                                           lab_reports.c.order_id == order_id).values(**values))


# -- specimens --------------------------------------------------------------------------------
def insert_specimen(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(_INS_SPECIMEN, row)


def specimens(conn: Connection, tenant_id: str, order_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(lab_specimens).where(
        lab_specimens.c.tenant_id == tenant_id, lab_specimens.c.order_id == order_id
    ).order_by(lab_specimens.c.received_at, lab_specimens.c.specimen_id)).mappings()]


def specimen(conn: Connection, specimen_id: str) -> dict[str, Any] | None:
    return _one(conn, select(lab_specimens).where(lab_specimens.c.specimen_id == specimen_id))


def update_specimens(conn: Connection, tenant_id: str, order_id: str, status: str) -> None:
    conn.execute(update(lab_specimens).where(lab_specimens.c.tenant_id == tenant_id,
                                             lab_specimens.c.order_id == order_id
                                             ).values(status=status))


# -- observations -----------------------------------------------------------------------------
def insert_observations(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(_INS_OBS, list(rows))


def observations(conn: Connection, tenant_id: str, order_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(lab_observations).where(
        lab_observations.c.tenant_id == tenant_id, lab_observations.c.order_id == order_id
    ).order_by(lab_observations.c.seq)).mappings()]


def observations_of(conn: Connection, tenant_id: str, *, patient_id: str | None = None,
                    statuses: Sequence[str] | None = None, since: datetime | None = None,
                    until: datetime | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    q = select(lab_observations).where(lab_observations.c.tenant_id == tenant_id)
    if patient_id:
        q = q.where(lab_observations.c.patient_id == patient_id)
    if statuses:
        q = q.where(lab_observations.c.status.in_(list(statuses)))
    if since:
        q = q.where(lab_observations.c.created_at >= since)
    if until:
        q = q.where(lab_observations.c.created_at < until)
    q = q.order_by(lab_observations.c.created_at, lab_observations.c.observation_id).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def observation(conn: Connection, observation_id: str) -> dict[str, Any] | None:
    return _one(conn, select(lab_observations).where(
        lab_observations.c.observation_id == observation_id))


def update_observation(conn: Connection, tenant_id: str, observation_id: str,
                       **values: Any) -> None:
    conn.execute(update(lab_observations).where(
        lab_observations.c.tenant_id == tenant_id,
        lab_observations.c.observation_id == observation_id).values(**values))


def set_observations_status(conn: Connection, tenant_id: str, order_id: str, status: str,
                            at: datetime, only: Sequence[str] = ()) -> None:
    q = update(lab_observations).where(lab_observations.c.tenant_id == tenant_id,
                                       lab_observations.c.order_id == order_id)
    if only:
        q = q.where(lab_observations.c.status.in_(list(only)))
    conn.execute(q.values(status=status, updated_at=at))


def insert_history(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(_INS_HIST, list(rows))


def history(conn: Connection, tenant_id: str, observation_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(lab_observation_history).where(
        lab_observation_history.c.tenant_id == tenant_id,
        lab_observation_history.c.observation_id == observation_id
    ).order_by(lab_observation_history.c.revision, lab_observation_history.c.changed_at))
        .mappings()]


# -- HL7 message archive ----------------------------------------------------------------------
def message_by_control(conn: Connection, tenant_id: str, digest: bytes) -> dict[str, Any] | None:
    row = conn.execute(_SEL_CONTROL, {"t": tenant_id, "d": digest}).mappings().first()
    return dict(row) if row else None


def insert_message(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(_INS_MSG, row)


def message(conn: Connection, tenant_id: str, message_id: str) -> dict[str, Any] | None:
    return _one(conn, select(lab_hl7_messages).where(
        lab_hl7_messages.c.tenant_id == tenant_id, lab_hl7_messages.c.message_id == message_id))


def count_messages(conn: Connection, tenant_id: str) -> int:
    return int(conn.execute(select(func.count()).select_from(lab_hl7_messages).where(
        lab_hl7_messages.c.tenant_id == tenant_id)).scalar() or 0)


# -- import issues ----------------------------------------------------------------------------
def insert_issues(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(_INS_ISSUE, list(rows))


def issues(conn: Connection, tenant_id: str, statuses: Sequence[str] | None = None,
           limit: int = 500) -> list[dict[str, Any]]:
    q = select(lab_import_issues).where(lab_import_issues.c.tenant_id == tenant_id)
    if statuses:
        q = q.where(lab_import_issues.c.status.in_(list(statuses)))
    q = q.order_by(lab_import_issues.c.created_at, lab_import_issues.c.issue_id).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def issue(conn: Connection, issue_id: str) -> dict[str, Any] | None:
    return _one(conn, select(lab_import_issues).where(lab_import_issues.c.issue_id == issue_id))


def update_issue(conn: Connection, tenant_id: str, issue_id: str, **values: Any) -> None:
    conn.execute(update(lab_import_issues).where(
        lab_import_issues.c.tenant_id == tenant_id,
        lab_import_issues.c.issue_id == issue_id).values(**values))


# -- catalogues -------------------------------------------------------------------------------
def active_catalogue(conn: Connection, tenant_id: str) -> dict[str, Any] | None:
    return _one(conn, select(lab_catalogues).where(lab_catalogues.c.tenant_id == tenant_id,
                                                   lab_catalogues.c.status == "active")
                .order_by(lab_catalogues.c.loaded_at.desc()).limit(1))


def active_catalogue_id(conn: Connection, tenant_id: str) -> str | None:
    return conn.execute(_SEL_ACTIVE_CATALOGUE_ID, {"t": tenant_id}).scalar()


def insert_catalogue(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(update(lab_catalogues).where(lab_catalogues.c.tenant_id == row["tenant_id"],
                                              lab_catalogues.c.status == "active")
                 .values(status="retired"))
    conn.execute(insert(lab_catalogues), row)


def catalogues(conn: Connection, tenant_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(
        lab_catalogues.c.catalogue_id, lab_catalogues.c.version, lab_catalogues.c.status,
        lab_catalogues.c.loaded_at).where(lab_catalogues.c.tenant_id == tenant_id)
        .order_by(lab_catalogues.c.loaded_at)).mappings()]
