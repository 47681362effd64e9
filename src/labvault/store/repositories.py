"""Foundation repositories: small functions over a Connection (the caller owns the transaction)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, inspect, select, update
from sqlalchemy.engine import Connection, Engine

from labvault.crypto import WrappedTenantKey
from labvault.domain.categories import Category
from labvault.store.driver_sql import all_rows, execute, first
from labvault.store.engine import for_update, open_write_transaction
from labvault.store.schema import (
    blind_index,
    patient_keys,
    patients,
    shred_log,
    tenant_keys,
    tenants,
)


def now() -> datetime:
    return datetime.now(UTC)


# -- tenants ---------------------------------------------------------------------------
def insert_tenant(conn: Connection, tenant_id: str, name: str, finess: str) -> None:
    conn.execute(insert(tenants).values(tenant_id=tenant_id, name=name, finess=finess,
                                        status="active", created_at=now()))


def get_tenant(conn: Connection, tenant_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(tenants).where(tenants.c.tenant_id == tenant_id)).mappings().first()
    return dict(row) if row else None


def tenant_by_finess(conn: Connection, finess: str) -> dict[str, Any] | None:
    row = conn.execute(select(tenants).where(tenants.c.finess == finess)).mappings().first()
    return dict(row) if row else None


def list_tenants(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(tenants).order_by(tenants.c.name)).mappings()]


# -- tenant keys -----------------------------------------------------------------------
def insert_tenant_key(conn: Connection, k: WrappedTenantKey) -> None:
    conn.execute(insert(tenant_keys).values(
        tenant_id=k.tenant_id, purpose=k.purpose, version=k.version, root_id=k.root_id,
        wrapped=k.wrapped, status="active", created_at=k.created_at))


def holds_tenant_keys(engine: Engine) -> bool:
    """Whether the database (initialised or not) holds a wrapped tenant key, i.e. data
    sealed under some root key."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(tenant_keys.name):
            return False
        return conn.execute(select(tenant_keys.c.tenant_id).where(
            tenant_keys.c.wrapped.is_not(None)).limit(1)).first() is not None


def tenant_key_records(conn: Connection, tenant_id: str) -> list[WrappedTenantKey]:
    rows = conn.execute(select(tenant_keys).where(
        tenant_keys.c.tenant_id == tenant_id, tenant_keys.c.wrapped.is_not(None))).mappings()
    return [WrappedTenantKey(r["tenant_id"], r["purpose"], r["version"], r["root_id"],
                             r["wrapped"], r["created_at"]) for r in rows]


def all_tenant_key_records(conn: Connection) -> list[WrappedTenantKey]:
    rows = conn.execute(select(tenant_keys).where(tenant_keys.c.wrapped.is_not(None))).mappings()
    return [WrappedTenantKey(r["tenant_id"], r["purpose"], r["version"], r["root_id"],
                             r["wrapped"], r["created_at"]) for r in rows]


# Hot-path statements are built once: building a select and its cache key costs more
# than running it on SQLite (lookups run these on every call).
_CURRENT_KEY_VERSION_SQL = ("SELECT max(version) FROM tenant_keys WHERE tenant_id = {p} "
                            "AND purpose = {p} AND status = 'active'")


def current_key_version(conn: Connection, tenant_id: str, purpose: str) -> int | None:
    row = first(conn, _CURRENT_KEY_VERSION_SQL, (tenant_id, purpose))
    return int(row[0]) if row is not None and row[0] is not None else None


# Both versions a process must hold to seal, open and search a tenant's records: one
# statement (``Labvault.load_tenant_keys`` runs it on every transaction's first use).
_KEK_AND_INDEX_SQL = ("SELECT max(CASE WHEN purpose = 'kek' THEN version END), "
                      "max(CASE WHEN purpose = 'index' THEN version END) FROM tenant_keys "
                      "WHERE tenant_id = {p} AND purpose IN ('kek', 'index') "
                      "AND status = 'active'")


def kek_and_index_versions(conn: Connection, tenant_id: str) -> tuple[int | None, int | None]:
    """Current (KEK, index key) versions of a tenant; None where it has none."""
    row = first(conn, _KEK_AND_INDEX_SQL, (tenant_id,))
    if row is None:
        return None, None
    return (int(row[0]) if row[0] is not None else None,
            int(row[1]) if row[1] is not None else None)


def set_key_status(conn: Connection, tenant_id: str, purpose: str, version: int,
                   status: str) -> None:
    values: dict[str, Any] = {"status": status}
    if status == "destroyed":
        values["wrapped"] = None
    conn.execute(update(tenant_keys).where(
        tenant_keys.c.tenant_id == tenant_id, tenant_keys.c.purpose == purpose,
        tenant_keys.c.version == version).values(**values))


def update_tenant_key_wrapping(conn: Connection, k: WrappedTenantKey) -> None:
    conn.execute(update(tenant_keys).where(
        tenant_keys.c.tenant_id == k.tenant_id, tenant_keys.c.purpose == k.purpose,
        tenant_keys.c.version == k.version).values(root_id=k.root_id, wrapped=k.wrapped))


# -- patients --------------------------------------------------------------------------
def insert_patients(conn: Connection, rows: Sequence[dict[str, Any]],
                    keys: Sequence[dict[str, Any]], index_rows: Sequence[dict[str, Any]]) -> None:
    """Bulk insert (import batches); each row dict carries tenant_id, patient_id, blobs."""
    if rows:
        conn.execute(insert(patients), list(rows))
    if keys:
        conn.execute(insert(patient_keys), list(keys))
    if index_rows:
        conn.execute(insert(blind_index), list(index_rows))


def update_patient_blobs(conn: Connection, tenant_id: str, patient_id: str,
                         blobs: dict[Category, bytes]) -> None:
    conn.execute(update(patients).where(
        patients.c.tenant_id == tenant_id, patients.c.patient_id == patient_id).values(
        updated_at=now(), **{c.value: b for c, b in blobs.items()}))


# Hot-path statements built once (every API read binds ids only; see bench/api.py).
_PATIENT_META = select(patients.c.tenant_id, patients.c.patient_id, patients.c.status,
                       patients.c.created_at, patients.c.updated_at).where(
    patients.c.tenant_id == bindparam("tid"), patients.c.patient_id == bindparam("pid"))

_TENANT_SQL = "SELECT tenant_id FROM patients WHERE patient_id = {p} AND status = 'active'"
_DEK_SQL = ("SELECT kek_version, wrapped FROM patient_keys WHERE tenant_id = {p} "
            "AND patient_id = {p}")


def patient_tenant(conn: Connection, patient_id: str, lock: bool = False) -> str | None:
    """The laboratory of an active patient; ``lock``: the patient's row locked until the end
    of the transaction (``engine.for_update``), read first by a read-modify-write."""
    row = first(conn, _TENANT_SQL + for_update(conn) if lock else _TENANT_SQL, (patient_id,))
    return str(row[0]) if row else None


def patient_meta(conn: Connection, tenant_id: str, patient_id: str) -> dict[str, Any] | None:
    row = conn.execute(_PATIENT_META, {"tid": tenant_id, "pid": patient_id}).mappings().first()
    if not row:
        return None
    # SQLite hands back naive datetimes; everything labvault writes is UTC
    return {k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
            for k, v in row.items()}


def patient_dek(conn: Connection, tenant_id: str, patient_id: str) -> tuple[int, bytes] | None:
    row = first(conn, _DEK_SQL, (tenant_id, patient_id))
    return (int(row[0]), bytes(row[1])) if row else None


_DEKS: Any = None


def patient_deks(conn: Connection, tenant_id: str, patient_ids: Sequence[str]
                 ) -> dict[str, tuple[int, bytes]]:
    """Wrapped data keys of many patients in one query per 500 ids (bulk reads, exports)."""
    global _DEKS
    if _DEKS is None:
        _DEKS = select(patient_keys.c.patient_id, patient_keys.c.kek_version,
                       patient_keys.c.wrapped).where(
            patient_keys.c.tenant_id == bindparam("tid"),
            patient_keys.c.patient_id.in_(bindparam("pids", expanding=True)))
    out: dict[str, tuple[int, bytes]] = {}
    ids = list(patient_ids)
    for i in range(0, len(ids), 500):
        for pid, ver, wrapped in conn.execute(_DEKS, {"tid": tenant_id, "pids": ids[i:i + 500]}):
            out[pid] = (ver, wrapped)
    return out


_SEALED: dict[tuple[str, ...], Any] = {}


@functools.lru_cache(maxsize=64)
def _one_sealed_sql(columns: tuple[str, ...]) -> str:
    assert all(c in {x.value for x in Category} for c in columns)   # never user input
    cols = ", ".join(["patient_id", *columns])
    return (f"SELECT {cols} FROM patients WHERE tenant_id = {{p}} AND "  # noqa: S608 - enum names
            "patient_id = {p} AND status = 'active'")


def sealed_patients(conn: Connection, tenant_id: str, patient_ids: Iterable[str],
                    categories: Iterable[Category]) -> dict[str, dict[Category, bytes | None]]:
    cats = list(categories)
    ids = list(patient_ids)
    if not ids:
        return {}
    key = tuple(c.value for c in cats)
    if len(ids) == 1:     # one record (every API read): plain SQL, column names from the enum
        row = first(conn, _one_sealed_sql(key), (tenant_id, ids[0]))
        return {} if row is None else {ids[0]: {c: None if row[i + 1] is None else bytes(row[i + 1])
                                                for i, c in enumerate(cats)}}
    stmt = _SEALED.get(key)
    if stmt is None:      # one statement per category set, built once (hot path)
        cols = [patients.c.patient_id] + [patients.c[c] for c in key]
        stmt = _SEALED[key] = select(*cols).where(
            patients.c.tenant_id == bindparam("tid"),
            patients.c.patient_id.in_(bindparam("pids", expanding=True)),
            patients.c.status == "active")
    rows = conn.execute(stmt, {"tid": tenant_id, "pids": ids})
    return {r[0]: {c: r[i + 1] for i, c in enumerate(cats)} for r in rows}


def count_patients(conn: Connection, tenant_id: str | None = None) -> int:
    q = select(func.count()).select_from(patients).where(patients.c.status == "active")
    if tenant_id:
        q = q.where(patients.c.tenant_id == tenant_id)
    return int(conn.execute(q).scalar() or 0)


def dek_rows(conn: Connection, tenant_id: str, batch: int = 5000
             ) -> Iterable[list[tuple[str, int, bytes]]]:
    """Wrapped DEKs of a tenant in batches (for KEK rotation)."""
    last = ""
    while True:
        rows = conn.execute(select(patient_keys.c.patient_id, patient_keys.c.kek_version,
                                   patient_keys.c.wrapped).where(
            patient_keys.c.tenant_id == tenant_id, patient_keys.c.patient_id > last
        ).order_by(patient_keys.c.patient_id).limit(batch)).all()
        if not rows:
            return
        yield [(r[0], r[1], r[2]) for r in rows]
        last = rows[-1][0]


def update_dek(conn: Connection, tenant_id: str, patient_id: str, kek_version: int,
               wrapped: bytes) -> None:
    conn.execute(update(patient_keys).where(
        patient_keys.c.tenant_id == tenant_id, patient_keys.c.patient_id == patient_id
    ).values(kek_version=kek_version, wrapped=wrapped))


# -- blind indexes ---------------------------------------------------------------------
_FIND_BY_DIGEST_SQL = ("SELECT patient_id FROM blind_index WHERE tenant_id = {p} "
                       "AND kind = {p} AND digest = {p}")


def find_by_digest(conn: Connection, tenant_id: str, kind: str, digest: bytes) -> list[str]:
    return [r[0] for r in all_rows(conn, _FIND_BY_DIGEST_SQL, (tenant_id, kind, digest))]


def lock_identifier(conn: Connection, digest: bytes) -> None:
    """Until the end of the transaction, the only writer that may give a patient the
    identifier of this blind-index ``digest`` (a NIR, an INS, an external id): read, check
    that no patient has it, then write, with no other registration taking it in between
    (two prescribers' systems sending the same new patient at once, a Bundle sent again
    after a timeout). PostgreSQL: a transaction advisory lock keyed by the digest (64
    bits), so that registrations of other identifiers are not held up; the other writer
    of the same identifier waits, then reads what this one committed (READ COMMITTED).
    SQLite: the write transaction is opened now (``BEGIN IMMEDIATE``): one writer at a
    time, which reads the last committed state (``engine.for_update``)."""
    if conn.dialect.name == "postgresql":
        execute(conn, "SELECT pg_advisory_xact_lock(%s)",
                (int.from_bytes(digest[:8], "big", signed=True),)).close()
    else:
        open_write_transaction(conn)


def find_by_digests(conn: Connection, tenant_id: str, kind: str,
                    digests: Sequence[bytes]) -> dict[bytes, list[str]]:
    out: dict[bytes, list[str]] = {}
    for i in range(0, len(digests), 500):
        for d, pid in conn.execute(select(blind_index.c.digest, blind_index.c.patient_id).where(
                blind_index.c.tenant_id == tenant_id, blind_index.c.kind == kind,
                blind_index.c.digest.in_(digests[i:i + 500]))):
            out.setdefault(bytes(d), []).append(pid)
    return out


def replace_index_rows(conn: Connection, tenant_id: str, patient_id: str,
                       rows: Sequence[tuple[str, bytes]]) -> None:
    conn.execute(delete(blind_index).where(blind_index.c.tenant_id == tenant_id,
                                           blind_index.c.patient_id == patient_id))
    if rows:
        conn.execute(insert(blind_index), [
            {"tenant_id": tenant_id, "kind": k, "digest": d, "patient_id": patient_id}
            for k, d in dict.fromkeys(rows)])


def add_index_rows(conn: Connection, tenant_id: str, patient_id: str,
                   rows: Sequence[tuple[str, bytes]]) -> None:
    """More index rows for a patient (a merge's former identifiers), the others kept."""
    if rows:
        conn.execute(insert(blind_index), [
            {"tenant_id": tenant_id, "kind": k, "digest": d, "patient_id": patient_id}
            for k, d in dict.fromkeys(rows)])


# -- crypto-shredding ------------------------------------------------------------------
def shred_patient(conn: Connection, tenant_id: str, patient_id: str, at: datetime) -> bool:
    """Destroy the data key, the index rows and the sealed blobs. True if anything was live."""
    had_key = conn.execute(delete(patient_keys).where(
        patient_keys.c.tenant_id == tenant_id, patient_keys.c.patient_id == patient_id)).rowcount
    conn.execute(delete(blind_index).where(blind_index.c.tenant_id == tenant_id,
                                           blind_index.c.patient_id == patient_id))
    conn.execute(update(patients).where(
        patients.c.tenant_id == tenant_id, patients.c.patient_id == patient_id).values(
        status="erased", updated_at=at, identity=None, contact=None, coverage=None,
        clinical=None))
    exists = conn.execute(select(shred_log.c.patient_id).where(
        shred_log.c.tenant_id == tenant_id, shred_log.c.patient_id == patient_id)).first()
    if not exists:
        conn.execute(insert(shred_log).values(tenant_id=tenant_id, patient_id=patient_id,
                                              shredded_at=at))
    return bool(had_key)


def unshredded(conn: Connection, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those (tenant, patient) pairs that still hold a data key, index rows, sealed blobs
    or an active status — i.e. whose erasure is not (or no longer) in effect."""
    wanted = set(ids)
    out: set[tuple[str, str]] = set()
    pids = sorted({p for _, p in wanted})
    for i in range(0, len(pids), 500):
        chunk = pids[i:i + 500]
        queries = (
            select(patient_keys.c.tenant_id, patient_keys.c.patient_id).where(
                patient_keys.c.patient_id.in_(chunk)),
            select(blind_index.c.tenant_id, blind_index.c.patient_id).where(
                blind_index.c.patient_id.in_(chunk)),
            select(patients.c.tenant_id, patients.c.patient_id).where(
                patients.c.patient_id.in_(chunk),
                (patients.c.status != "erased") | patients.c.identity.is_not(None)
                | patients.c.contact.is_not(None) | patients.c.coverage.is_not(None)
                | patients.c.clinical.is_not(None)),
            select(shred_log.c.tenant_id, shred_log.c.patient_id).where(
                shred_log.c.patient_id.in_(chunk)),
        )
        for q in queries[:3]:
            out.update((r[0], r[1]) for r in conn.execute(q))
        logged = {(r[0], r[1]) for r in conn.execute(queries[3])}
        out.update(k for k in wanted if k[1] in chunk and k not in logged)
    return out & wanted


def shredded_ids(conn: Connection) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in conn.execute(select(shred_log.c.tenant_id,
                                                      shred_log.c.patient_id))}
