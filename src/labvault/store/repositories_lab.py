"""Lab repositories: small functions over a Connection (the caller owns the transaction).

Only clear columns (ids, status, timestamps, digests) are filtered on; sealed columns
are moved as bytes and opened by the service through the gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, select, update
from sqlalchemy.engine import Connection

from labvault.store.driver_sql import (
    execute,
    first,
    insert_rows,
    insert_sql,
    select_rows,
    select_sql,
    update_rows,
)
from labvault.store.engine import for_update, open_write_transaction
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

# Hot statements of the HL7 ingest and the FHIR transactions as plain SQL in the driver's
# parameter style (``store.driver_sql``): SQLAlchemy Core spends several times the SQL
# itself building, caching and setting up each execution. The text is generated from the
# table definitions (fixed column names, never data); values are always bound, and go
# through the same type processors Core would apply (SQLite's text timestamps), so rows
# written here read back exactly like rows written by Core.


_INS_ORDER = insert_sql(lab_orders)
_INS_REPORT = insert_sql(lab_reports)
_INS_SPECIMEN = insert_sql(lab_specimens)
_INS_OBS = insert_sql(lab_observations)
_INS_HIST = insert_sql(lab_observation_history)
_INS_MSG = insert_sql(lab_hl7_messages)
_INS_ISSUE = insert_sql(lab_import_issues)

_SEL_CONTROL = ("SELECT message_id, status, ack_sealed, patient_id, received_at, raw_sealed "
                "FROM lab_hl7_messages WHERE tenant_id = {p} AND control_digest = {p}")
# Two index searches, not one ``filler = ? OR placer = ?``: SQLite plans the OR as a scan
# of every order of the lab (one per message, growing with the lab's history).
_SEL_ORDER_DIGESTS = (
    select_sql(lab_orders, "tenant_id = {p} AND filler_digest = {p}") + " UNION ALL "
    + select_sql(lab_orders, "tenant_id = {p} AND placer_digest = {p}") + " LIMIT 4")
_SEL_ORDER_BY_FILLER = ("SELECT order_id FROM lab_orders WHERE tenant_id = {p} "
                        "AND filler_digest = {p} LIMIT 1")
_SEL_REPORT_BY_ORDER = select_sql(lab_reports, "tenant_id = {p} AND order_id = {p}")
_SEL_ORDER = select_sql(lab_orders, "order_id = {p}")
_SEL_REPORT = select_sql(lab_reports, "report_id = {p}")
_SEL_SPECIMENS = select_sql(lab_specimens, "tenant_id = {p} AND order_id = {p} "
                                           "ORDER BY received_at, specimen_id")
_SEL_SPECIMEN = select_sql(lab_specimens, "specimen_id = {p}")
_SEL_OBSERVATIONS = select_sql(lab_observations, "tenant_id = {p} AND order_id = {p} ORDER BY seq")
_SEL_OBSERVATION = select_sql(lab_observations, "observation_id = {p}")
_SEL_ACTIVE_CATALOGUE_ID = select(lab_catalogues.c.catalogue_id).where(
    lab_catalogues.c.tenant_id == bindparam("t"), lab_catalogues.c.status == "active"
).order_by(lab_catalogues.c.loaded_at.desc()).limit(1)


def _one(conn: Connection, q: Any) -> dict[str, Any] | None:
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


# -- orders / reports -------------------------------------------------------------------------
def insert_order(conn: Connection, order: dict[str, Any], report: dict[str, Any]) -> None:
    insert_rows(conn, lab_orders, _INS_ORDER, (order,))
    insert_rows(conn, lab_reports, _INS_REPORT, (report,))


def _first(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


def order(conn: Connection, order_id: str, lock: bool = False) -> dict[str, Any] | None:
    """The order's row; ``lock``: locked until the end of the transaction
    (``engine.for_update``): the order row is the lock of everything of an order (its
    report, specimens and results), which every lab write takes before it reads."""
    sql = _SEL_ORDER + for_update(conn) if lock else _SEL_ORDER
    return _first(select_rows(conn, lab_orders, sql, (order_id,)))


def order_by_digest(conn: Connection, tenant_id: str, placer: bytes | None,
                    filler: bytes | None) -> dict[str, Any] | None:
    """The order with this filler number, else this placer number (one query)."""
    if filler is None and placer is None:
        return None
    rows = select_rows(conn, lab_orders, _SEL_ORDER_DIGESTS, (tenant_id, filler, tenant_id, placer))
    if filler is not None:
        for r in rows:
            if r["filler_digest"] == filler:
                return r
    return rows[0] if rows else None


def lock_number(conn: Connection, digest: bytes) -> None:
    """Until the end of the transaction, the only writer that may give an order the number
    of this blind-index ``digest``: read, check, then write, with no other order taking it
    in between. PostgreSQL: a transaction advisory lock keyed by the digest (64 bits), so
    that the orders of other numbers are not held up; another writer of the same number
    waits, then reads what this one committed (READ COMMITTED). SQLite: the write
    transaction is opened now (``BEGIN IMMEDIATE``): one writer at a time, which reads the
    last committed state (``engine.for_update``)."""
    if conn.dialect.name == "postgresql":
        execute(conn, "SELECT pg_advisory_xact_lock(%s)",
                (int.from_bytes(digest[:8], "big", signed=True),)).close()
    else:
        open_write_transaction(conn)


def order_with_filler(conn: Connection, tenant_id: str, filler: bytes) -> str | None:
    """The id of an order of the laboratory with this filler number (its digest), if any."""
    row = first(conn, _SEL_ORDER_BY_FILLER, (tenant_id, filler))
    return str(row[0]) if row is not None else None


def update_order(conn: Connection, tenant_id: str, order_id: str, **values: Any) -> None:
    update_rows(conn, lab_orders, {"tenant_id": tenant_id, "order_id": order_id}, values)


def orders(conn: Connection, tenant_id: str, *, statuses: Sequence[str] | None = None,
           patient_id: str | None = None, limit: int = 200,
           order_ids: Sequence[str] | None = None, lock: bool = False) -> list[dict[str, Any]]:
    """``lock``: the orders found locked until the end of the transaction (a bulk
    validation: ``engine.for_update``); PostgreSQL re-checks the filter on a row another
    writer changed meanwhile."""
    q = select(lab_orders).where(lab_orders.c.tenant_id == tenant_id)
    if statuses:
        q = q.where(lab_orders.c.status.in_(list(statuses)))
    if patient_id:
        q = q.where(lab_orders.c.patient_id == patient_id)
    if order_ids is not None:
        q = q.where(lab_orders.c.order_id.in_(list(order_ids)))
    q = q.order_by(lab_orders.c.created_at, lab_orders.c.order_id).limit(limit)
    if lock and for_update(conn):
        q = q.with_for_update()
    return [dict(r) for r in conn.execute(q).mappings()]


def report_by_order(conn: Connection, tenant_id: str, order_id: str) -> dict[str, Any] | None:
    rows = select_rows(conn, lab_reports, _SEL_REPORT_BY_ORDER, (tenant_id, order_id))
    return rows[0] if rows else None


def report(conn: Connection, report_id: str) -> dict[str, Any] | None:
    return _first(select_rows(conn, lab_reports, _SEL_REPORT, (report_id,)))


def _of_orders_in(q: Any, table: Any, order_statuses: Sequence[str] | None) -> Any:
    """Only the rows whose order is in one of ``order_statuses`` (None: any)."""
    if order_statuses is None:
        return q
    return q.join(lab_orders, and_(lab_orders.c.tenant_id == table.c.tenant_id,
                                   lab_orders.c.order_id == table.c.order_id)).where(
        lab_orders.c.status.in_(list(order_statuses)))


# a worklist's order: stat, then urgent, then routine (the column's words sort otherwise)
_URGENCY = case({"stat": 0, "urgent": 1}, value=lab_orders.c.priority, else_=2)


def reports(conn: Connection, tenant_id: str, *, patient_id: str | None = None,
            statuses: Sequence[str] | None = None, limit: int = 200,
            order_statuses: Sequence[str] | None = None,
            urgent_first: bool = False) -> list[dict[str, Any]]:
    """Reports, oldest first; ``order_statuses``: only those whose order is at one of
    these steps (filtered in the query, so that ``limit`` counts only them);
    ``urgent_first``: a worklist's order, stat then urgent orders first."""
    q = select(lab_reports).where(lab_reports.c.tenant_id == tenant_id)
    if patient_id:
        q = q.where(lab_reports.c.patient_id == patient_id)
    if statuses:
        q = q.where(lab_reports.c.status.in_(list(statuses)))
    if urgent_first and order_statuses is None:
        q = q.join(lab_orders, and_(lab_orders.c.tenant_id == lab_reports.c.tenant_id,
                                    lab_orders.c.order_id == lab_reports.c.order_id))
    q = _of_orders_in(q, lab_reports, order_statuses)
    first_ = (_URGENCY,) if urgent_first else ()
    q = q.order_by(*first_, lab_reports.c.created_at, lab_reports.c.report_id).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def update_report(conn: Connection, tenant_id: str, order_id: str, **values: Any) -> None:
    update_rows(conn, lab_reports, {"tenant_id": tenant_id, "order_id": order_id}, values)


# -- specimens --------------------------------------------------------------------------------
def insert_specimen(conn: Connection, row: dict[str, Any]) -> None:
    insert_rows(conn, lab_specimens, _INS_SPECIMEN, (row,))


def specimens(conn: Connection, tenant_id: str, order_id: str) -> list[dict[str, Any]]:
    return select_rows(conn, lab_specimens, _SEL_SPECIMENS, (tenant_id, order_id))


def specimens_of(conn: Connection, tenant_id: str, order_ids: Sequence[str]
                 ) -> list[dict[str, Any]]:
    """The specimens of ``order_ids``, in one query (a worklist's)."""
    if not order_ids:
        return []
    return [dict(r) for r in conn.execute(select(lab_specimens).where(
        lab_specimens.c.tenant_id == tenant_id,
        lab_specimens.c.order_id.in_(list(dict.fromkeys(order_ids)))).order_by(
        lab_specimens.c.order_id, lab_specimens.c.received_at, lab_specimens.c.specimen_id))
        .mappings()]


def specimen(conn: Connection, specimen_id: str) -> dict[str, Any] | None:
    return _first(select_rows(conn, lab_specimens, _SEL_SPECIMEN, (specimen_id,)))


def update_specimens(conn: Connection, tenant_id: str, order_id: str, status: str) -> None:
    update_rows(conn, lab_specimens, {"tenant_id": tenant_id, "order_id": order_id},
                {"status": status})


# -- observations -----------------------------------------------------------------------------
def insert_observations(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        insert_rows(conn, lab_observations, _INS_OBS, rows)


def observations(conn: Connection, tenant_id: str, order_id: str) -> list[dict[str, Any]]:
    return select_rows(conn, lab_observations, _SEL_OBSERVATIONS, (tenant_id, order_id))


def observations_of(conn: Connection, tenant_id: str, *, patient_id: str | None = None,
                    statuses: Sequence[str] | None = None, since: datetime | None = None,
                    until: datetime | None = None, limit: int = 1000,
                    order_statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
    q = _of_orders_in(select(lab_observations), lab_observations, order_statuses).where(
        lab_observations.c.tenant_id == tenant_id)
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


def validated_observations_of(conn: Connection, tenant_id: str, patient_ids: Sequence[str],
                              order_statuses: Sequence[str],
                              statuses: Sequence[str], since: datetime,
                              until: datetime | None = None) -> list[dict[str, Any]]:
    """The results of ``patient_ids`` in one of ``statuses`` whose order is in one of
    ``order_statuses`` (the validated ones: a patient's previous results, the delta
    check's; the published ones: a report's "Antériorité" column), entered at or after
    ``since`` (and before ``until``), each with its order's specimens (``specimens``:
    [(specimen id, sealed specimen)], what dates a result without an observation time)
    -- one query for every patient of a worklist, specimens included."""
    if not patient_ids:
        return []
    joined = lab_observations.outerjoin(lab_specimens, and_(
        lab_specimens.c.tenant_id == lab_observations.c.tenant_id,
        lab_specimens.c.order_id == lab_observations.c.order_id))
    q = _of_orders_in(select(lab_observations, lab_specimens.c.specimen_id.label("spec_id"),
                             lab_specimens.c.specimen_sealed.label("spec_sealed"))
                      .select_from(joined), lab_observations, order_statuses).where(
        lab_observations.c.tenant_id == tenant_id,
        lab_observations.c.patient_id.in_(list(dict.fromkeys(patient_ids))),
        lab_observations.c.status.in_(list(statuses)),
        lab_observations.c.created_at >= since)
    if until is not None:
        q = q.where(lab_observations.c.created_at < until)
    q = q.order_by(lab_observations.c.created_at, lab_observations.c.observation_id,
                   lab_specimens.c.specimen_id)
    out: dict[str, dict[str, Any]] = {}
    for r in conn.execute(q).mappings():
        row = dict(r)
        spec = (row.pop("spec_id"), row.pop("spec_sealed"))
        seen = out.setdefault(row["observation_id"], {**row, "specimens": []})
        if spec[0] is not None:
            seen["specimens"].append(spec)
    return list(out.values())


def observation(conn: Connection, observation_id: str) -> dict[str, Any] | None:
    return _first(select_rows(conn, lab_observations, _SEL_OBSERVATION, (observation_id,)))


def update_observation(conn: Connection, tenant_id: str, observation_id: str,
                       **values: Any) -> None:
    update_rows(conn, lab_observations,
                {"tenant_id": tenant_id, "observation_id": observation_id}, values)


def set_observations_status(conn: Connection, tenant_id: str, order_id: str, status: str,
                            at: datetime, only: Sequence[str] = ()) -> None:
    if len(only) == 1:      # the hot case (validation: preliminary -> final)
        update_rows(conn, lab_observations, {"tenant_id": tenant_id, "order_id": order_id,
                                             "status": only[0]},
                    {"status": status, "updated_at": at})
        return
    q = update(lab_observations).where(lab_observations.c.tenant_id == tenant_id,
                                       lab_observations.c.order_id == order_id)
    if only:
        q = q.where(lab_observations.c.status.in_(list(only)))
    conn.execute(q.values(status=status, updated_at=at))


def insert_history(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        insert_rows(conn, lab_observation_history, _INS_HIST, rows)


def history(conn: Connection, tenant_id: str, observation_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(lab_observation_history).where(
        lab_observation_history.c.tenant_id == tenant_id,
        lab_observation_history.c.observation_id == observation_id
    ).order_by(lab_observation_history.c.revision, lab_observation_history.c.changed_at))
        .mappings()]


# -- HL7 message archive ----------------------------------------------------------------------
def message_by_control(conn: Connection, tenant_id: str, digest: bytes) -> dict[str, Any] | None:
    row = first(conn, _SEL_CONTROL, (tenant_id, digest))
    return None if row is None else {"message_id": row[0], "status": row[1],
                                     "ack_sealed": bytes(row[2]), "patient_id": row[3],
                                     "received_at": row[4], "raw_sealed": bytes(row[5])}


def insert_message(conn: Connection, row: dict[str, Any]) -> None:
    insert_rows(conn, lab_hl7_messages, _INS_MSG, (row,))


def message(conn: Connection, tenant_id: str, message_id: str) -> dict[str, Any] | None:
    return _one(conn, select(lab_hl7_messages).where(
        lab_hl7_messages.c.tenant_id == tenant_id, lab_hl7_messages.c.message_id == message_id))


def count_messages(conn: Connection, tenant_id: str) -> int:
    return int(conn.execute(select(func.count()).select_from(lab_hl7_messages).where(
        lab_hl7_messages.c.tenant_id == tenant_id)).scalar() or 0)


# -- import issues ----------------------------------------------------------------------------
def insert_issues(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        insert_rows(conn, lab_import_issues, _INS_ISSUE, rows)


def issues(conn: Connection, tenant_id: str, statuses: Sequence[str] | None = None,
           limit: int = 500, newest_first: bool = False) -> list[dict[str, Any]]:
    q = select(lab_import_issues).where(lab_import_issues.c.tenant_id == tenant_id)
    if statuses:
        q = q.where(lab_import_issues.c.status.in_(list(statuses)))
    keys = (lab_import_issues.c.created_at, lab_import_issues.c.issue_id)
    q = q.order_by(*(k.desc() for k in keys) if newest_first else keys).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def open_issues_of(conn: Connection, tenant_id: str, kind: str,
                   patient_id: str) -> list[dict[str, Any]]:
    """The open issues of one kind held under one patient."""
    t = lab_import_issues.c
    return [dict(r) for r in conn.execute(select(lab_import_issues).where(
        t.tenant_id == tenant_id, t.kind == kind, t.patient_id == patient_id,
        t.status == "open").order_by(t.created_at, t.issue_id)).mappings()]


def issues_of_kind(conn: Connection, tenant_id: str, kind: str, status: str,
                   limit: int = 500) -> list[dict[str, Any]]:
    """A laboratory's issues of one kind and status, oldest first."""
    t = lab_import_issues.c
    return [dict(r) for r in conn.execute(select(lab_import_issues).where(
        t.tenant_id == tenant_id, t.kind == kind, t.status == status)
        .order_by(t.created_at, t.issue_id).limit(limit)).mappings()]


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
