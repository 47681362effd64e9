"""Guard repositories: small functions over a Connection (the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from labvault.store.schema import patients
from labvault.store.tables_guard import (
    guard_alerts,
    guard_canaries,
    guard_clients,
    guard_config,
    guard_deletions,
    guard_export_decoys,
    guard_exports,
    guard_marks,
    guard_suspensions,
)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything labvault writes is UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _rows(result: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for r in result:
        d = dict(r)
        for k, v in d.items():
            if isinstance(v, datetime):
                d[k] = aware(v)
        out.append(d)
    return out


def _upsert(conn: Connection, table: Any, rows: Sequence[dict[str, Any]],
            keys: Sequence[str], update_cols: Sequence[str]) -> None:
    if not rows:
        return
    ins: Any = (postgresql.insert(table) if conn.dialect.name == "postgresql"
                else sqlite.insert(table))
    if update_cols:
        stmt = ins.on_conflict_do_update(index_elements=list(keys),
                                         set_={c: ins.excluded[c] for c in update_cols})
    else:
        stmt = ins.on_conflict_do_nothing(index_elements=list(keys))
    conn.execute(stmt, list(rows))


# -- alerts ------------------------------------------------------------------------------
def open_alert_since(conn: Connection, tenant_id: str, kind: str, actor_id: str | None,
                     since: datetime) -> dict[str, Any] | None:
    actor_cond = (guard_alerts.c.actor_id.is_(None) if actor_id is None
                  else guard_alerts.c.actor_id == actor_id)
    rows = _rows(conn.execute(select(guard_alerts).where(
        guard_alerts.c.tenant_id == tenant_id, guard_alerts.c.kind == kind, actor_cond,
        guard_alerts.c.status == "open", guard_alerts.c.last_seen_at >= since)
        .order_by(guard_alerts.c.last_seen_at.desc()).limit(1)).mappings())
    return rows[0] if rows else None


def open_alert_about(conn: Connection, tenant_id: str, kind: str, subject_digest: bytes,
                     since: datetime) -> dict[str, Any] | None:
    """The open alert of this kind about this subject seen since ``since`` (any account)."""
    rows = _rows(conn.execute(select(guard_alerts).where(
        guard_alerts.c.tenant_id == tenant_id, guard_alerts.c.kind == kind,
        guard_alerts.c.subject_digest == subject_digest, guard_alerts.c.status == "open",
        guard_alerts.c.last_seen_at >= since)
        .order_by(guard_alerts.c.last_seen_at.desc()).limit(1)).mappings())
    return rows[0] if rows else None


def insert_alert(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(guard_alerts).values(**row))


def bump_alert(conn: Connection, tenant_id: str, alert_id: str, at: datetime) -> None:
    conn.execute(update(guard_alerts).where(
        guard_alerts.c.tenant_id == tenant_id, guard_alerts.c.alert_id == alert_id).values(
        count=guard_alerts.c.count + 1, last_seen_at=at))


def list_alerts(conn: Connection, tenant_id: str | None, status: str | None,
                limit: int, kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
    q = select(guard_alerts)
    if tenant_id is not None:
        q = q.where(guard_alerts.c.tenant_id == tenant_id)
    if status:
        q = q.where(guard_alerts.c.status == status)
    if kinds is not None:
        q = q.where(guard_alerts.c.kind.in_(sorted(kinds)))
    return _rows(conn.execute(q.order_by(guard_alerts.c.last_seen_at.desc()).limit(limit))
                 .mappings())


def get_alert(conn: Connection, alert_id: str) -> dict[str, Any] | None:
    rows = _rows(conn.execute(select(guard_alerts).where(guard_alerts.c.alert_id == alert_id))
                 .mappings())
    return rows[0] if rows else None


def ack_alert(conn: Connection, tenant_id: str, alert_id: str, by: str, at: datetime) -> bool:
    """Acknowledge an alert not acknowledged yet; False if it already was."""
    res = conn.execute(update(guard_alerts).where(
        guard_alerts.c.tenant_id == tenant_id, guard_alerts.c.alert_id == alert_id,
        guard_alerts.c.status != "acked").values(status="acked", acked_by=by, acked_at=at))
    return res.rowcount == 1


def set_alert_detail(conn: Connection, tenant_id: str, alert_id: str, sealed: bytes) -> None:
    """Replace an alert's sealed detail (a note added when it was closed)."""
    conn.execute(update(guard_alerts).where(
        guard_alerts.c.tenant_id == tenant_id, guard_alerts.c.alert_id == alert_id).values(
        detail_sealed=sealed))


# -- sliding-window marks ----------------------------------------------------------------
def upsert_marks(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    _upsert(conn, guard_marks, rows, ("tenant_id", "account_id", "kind", "item"),
            ("last_at", "worker"))


def marks_since(conn: Connection, tenant_id: str, account_id: str, kind: str,
                since: datetime, not_worker: str | None = None) -> list[tuple[str, datetime]]:
    q = select(guard_marks.c.item, guard_marks.c.last_at).where(
        guard_marks.c.tenant_id == tenant_id, guard_marks.c.account_id == account_id,
        guard_marks.c.kind == kind, guard_marks.c.last_at >= since)
    if not_worker is not None:
        q = q.where(guard_marks.c.worker != not_worker)
    rows = conn.execute(q).all()
    return [(r[0], aware(r[1]) or since) for r in rows]


def delete_marks_before(conn: Connection, before: datetime) -> int:
    return int(conn.execute(delete(guard_marks).where(guard_marks.c.last_at < before)).rowcount)


def delete_account_marks(conn: Connection, tenant_id: str, account_id: str) -> int:
    """Every mark of one account (its windows restart empty when it is released)."""
    return int(conn.execute(delete(guard_marks).where(
        guard_marks.c.tenant_id == tenant_id,
        guard_marks.c.account_id == account_id)).rowcount)


# -- suspensions -------------------------------------------------------------------------
def insert_suspension(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(guard_suspensions).values(**row))


def active_suspension(conn: Connection, account_id: str,
                      tenant_id: str | None = None) -> dict[str, Any] | None:
    q = select(guard_suspensions).where(guard_suspensions.c.account_id == account_id,
                                        guard_suspensions.c.status == "active")
    if tenant_id is not None:
        q = q.where(guard_suspensions.c.tenant_id == tenant_id)
    rows = _rows(conn.execute(q.limit(1)).mappings())
    return rows[0] if rows else None


def suspension_state(conn: Connection, account_id: str, tenant_id: str
                     ) -> tuple[bool, datetime | None]:
    """(suspended now, time of the account's latest release or None)."""
    rows = conn.execute(select(guard_suspensions.c.status, guard_suspensions.c.released_at)
                        .where(guard_suspensions.c.account_id == account_id,
                               guard_suspensions.c.tenant_id == tenant_id)).all()
    released = [d for r in rows if (d := aware(r[1])) is not None]
    return any(r[0] == "active" for r in rows), max(released, default=None)


def list_suspensions(conn: Connection, tenant_id: str | None,
                     status: str | None = "active") -> list[dict[str, Any]]:
    q = select(guard_suspensions)
    if tenant_id is not None:
        q = q.where(guard_suspensions.c.tenant_id == tenant_id)
    if status:
        q = q.where(guard_suspensions.c.status == status)
    return _rows(conn.execute(q.order_by(guard_suspensions.c.created_at.desc())).mappings())


def release_suspensions(conn: Connection, tenant_id: str, account_id: str, by: str,
                        at: datetime) -> int:
    return int(conn.execute(update(guard_suspensions).where(
        guard_suspensions.c.tenant_id == tenant_id, guard_suspensions.c.account_id == account_id,
        guard_suspensions.c.status == "active").values(
        status="released", released_by=by, released_at=at)).rowcount)


# -- known clients -----------------------------------------------------------------------
def client_known(conn: Connection, tenant_id: str, account_id: str, digest: bytes) -> bool:
    return conn.execute(select(guard_clients.c.first_seen_at).where(
        guard_clients.c.tenant_id == tenant_id, guard_clients.c.account_id == account_id,
        guard_clients.c.client_digest == digest)).first() is not None


def account_has_clients(conn: Connection, tenant_id: str, account_id: str) -> bool:
    return conn.execute(select(guard_clients.c.first_seen_at).where(
        guard_clients.c.tenant_id == tenant_id,
        guard_clients.c.account_id == account_id).limit(1)).first() is not None


def add_client(conn: Connection, tenant_id: str, account_id: str, digest: bytes,
               at: datetime) -> None:
    _upsert(conn, guard_clients, [{"tenant_id": tenant_id, "account_id": account_id,
                                   "client_digest": digest, "first_seen_at": at}],
            ("tenant_id", "account_id", "client_digest"), ())


# -- per-lab settings ----------------------------------------------------------------------
def get_config(conn: Connection, tenant_id: str) -> dict[str, str]:
    return {r[0]: r[1] for r in conn.execute(select(guard_config.c.setting, guard_config.c.value)
                                             .where(guard_config.c.tenant_id == tenant_id))}


def set_config(conn: Connection, tenant_id: str, name: str, value: str | None,
               at: datetime) -> None:
    conn.execute(delete(guard_config).where(guard_config.c.tenant_id == tenant_id,
                                            guard_config.c.setting == name))
    if value is not None:
        conn.execute(insert(guard_config).values(tenant_id=tenant_id, setting=name, value=value,
                                                 updated_at=at))


# -- honeytokens -------------------------------------------------------------------------
def insert_canary(conn: Connection, tenant_id: str, digest: bytes, ref_sealed: bytes,
                  at: datetime) -> None:
    conn.execute(insert(guard_canaries).values(tenant_id=tenant_id, digest=digest,
                                               ref_sealed=ref_sealed, created_at=at))


def canary_rows(conn: Connection, tenant_id: str) -> list[tuple[bytes, bytes]]:
    return [(bytes(r[0]), bytes(r[1])) for r in conn.execute(
        select(guard_canaries.c.digest, guard_canaries.c.ref_sealed).where(
            guard_canaries.c.tenant_id == tenant_id))]


# -- exports -------------------------------------------------------------------------------
def insert_export(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(guard_exports).values(**row))


def get_export(conn: Connection, export_id: str) -> dict[str, Any] | None:
    rows = _rows(conn.execute(select(guard_exports).where(guard_exports.c.export_id == export_id))
                 .mappings())
    return rows[0] if rows else None


def update_export(conn: Connection, tenant_id: str, export_id: str, **values: Any) -> None:
    conn.execute(update(guard_exports).where(guard_exports.c.tenant_id == tenant_id,
                                             guard_exports.c.export_id == export_id)
                 .values(**values))


def list_exports(conn: Connection, tenant_id: str | None = None) -> list[dict[str, Any]]:
    q = select(guard_exports)
    if tenant_id is not None:
        q = q.where(guard_exports.c.tenant_id == tenant_id)
    return _rows(conn.execute(q.order_by(guard_exports.c.created_at)).mappings())


def expired_exports(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    return _rows(conn.execute(select(guard_exports).where(
        guard_exports.c.status.in_(("ready", "pending_approval")),
        guard_exports.c.expires_at <= now)).mappings())


def insert_decoys(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    _upsert(conn, guard_export_decoys, rows, ("tenant_id", "kind", "digest", "export_id"), ())


def find_decoys(conn: Connection, tenant_id: str, kind: str,
                digests: Sequence[bytes]) -> dict[bytes, list[str]]:
    out: dict[bytes, list[str]] = {}
    for i in range(0, len(digests), 500):
        for d, eid in conn.execute(select(guard_export_decoys.c.digest,
                                          guard_export_decoys.c.export_id).where(
                guard_export_decoys.c.tenant_id == tenant_id, guard_export_decoys.c.kind == kind,
                guard_export_decoys.c.digest.in_(digests[i:i + 500]))):
            out.setdefault(bytes(d), []).append(eid)
    return out


# -- deletions -----------------------------------------------------------------------------
def insert_deletion(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(guard_deletions).values(**row))


def list_deletions(conn: Connection, tenant_id: str | None = None) -> list[dict[str, Any]]:
    q = select(guard_deletions)
    if tenant_id is not None:
        q = q.where(guard_deletions.c.tenant_id == tenant_id)
    return _rows(conn.execute(q.order_by(guard_deletions.c.deleted_at)).mappings())


# -- patients (ids and timestamps only) ------------------------------------------------------
def patient_ids_created_between(conn: Connection, tenant_id: str, start: datetime,
                                end: datetime) -> list[str]:
    return list(conn.execute(select(patients.c.patient_id).where(
        patients.c.tenant_id == tenant_id, patients.c.status == "active",
        patients.c.created_at >= start, patients.c.created_at < end)
        .order_by(patients.c.patient_id)).scalars())


def patients_idle_since(conn: Connection, tenant_id: str,
                        cutoff: datetime) -> list[tuple[str, datetime]]:
    """Active patients whose record has not changed since ``cutoff`` (retention candidates)."""
    return [(r[0], aware(r[1]) or cutoff) for r in conn.execute(
        select(patients.c.patient_id, patients.c.updated_at).where(and_(
            patients.c.tenant_id == tenant_id, patients.c.status == "active",
            patients.c.updated_at < cutoff)).order_by(patients.c.patient_id))]


def active_patient_ids(conn: Connection, tenant_id: str, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    return set(conn.execute(select(patients.c.patient_id).where(
        patients.c.tenant_id == tenant_id, patients.c.status == "active",
        patients.c.patient_id.in_(list(ids)))).scalars())


def count_active(conn: Connection, tenant_id: str) -> int:
    return int(conn.execute(select(func.count()).select_from(patients).where(
        patients.c.tenant_id == tenant_id, patients.c.status == "active")).scalar() or 0)
