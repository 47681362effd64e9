"""Audit repositories: small functions over a Connection (the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, insert, or_, select, text, union, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from labvault.store.driver_sql import all_rows, driver_sql, execute
from labvault.store.tables_audit import (
    PATIENT_BUCKET_BITS,
    audit_entries,
    audit_heads,
    audit_refs,
)

E = audit_entries.c
H = audit_heads.c

# The two statements of every append (head move, entry insert) go straight to the driver's
# cursor, in the connection's open transaction: SQLAlchemy's execution and result set-up
# cost more than the statements themselves on SQLite (~4 us each).

# -- chain heads ---------------------------------------------------------------------------
def head_for_update(conn: Connection, chain: str) -> dict[str, Any] | None:
    """The chain head, locked until the end of the transaction (PostgreSQL row lock;
    SQLite serialises writers anyway)."""
    row = conn.execute(select(audit_heads).where(H.tenant_id == chain)
                       .with_for_update()).mappings().first()
    return dict(row) if row else None


def create_head(conn: Connection, chain: str, key_sealed: bytes, at: datetime) -> None:
    """Insert an empty head unless one exists (two processes may race to create it)."""
    values = {"tenant_id": chain, "next_seq": 0, "last_hash": bytes(32),
              "key_sealed": key_sealed, "frontier": b"", "pruned_below": 0, "updated_at": at}
    if conn.dialect.name == "postgresql":
        conn.execute(pg_insert(audit_heads).values(**values).on_conflict_do_nothing())
    elif conn.dialect.name == "sqlite":
        conn.execute(sqlite_insert(audit_heads).values(**values).on_conflict_do_nothing())
    else:  # pragma: no cover - only the two supported backends
        conn.execute(insert(audit_heads).values(**values))


_ADVANCE = ("UPDATE audit_heads SET next_seq = {p}, last_hash = {p}, key_sealed = {p}, "
            "frontier = {p}, updated_at = {p} WHERE tenant_id = {p} AND next_seq = {p}")
_INSERT = ("INSERT INTO audit_entries (tenant_id, seq, entry_id, at_us, actor_id, patient_id, "
           "action, outcome, body, mac) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})")




def _ts(conn: Connection, at: datetime) -> Any:
    # the text form SQLAlchemy's SQLite DateTime reads back; PostgreSQL takes the datetime
    return (at.replace(tzinfo=None).isoformat(" ", "microseconds")
            if conn.dialect.name == "sqlite" else at)


def advance_head(conn: Connection, chain: str, expected: int, next_seq: int, last_hash: bytes,
                 key_sealed: bytes, frontier: bytes, at: datetime) -> bool:
    """Move the head from ``expected`` to ``next_seq``; False if another writer moved it."""
    cur = execute(conn, driver_sql(conn, _ADVANCE), (next_seq, last_hash, key_sealed, frontier,
                                                     _ts(conn, at), chain, expected))
    try:
        return bool(cur.rowcount == 1)
    finally:
        cur.close()


# PostgreSQL: the head move and a single entry in one statement (one round trip instead of
# two on every audited decision written in the caller's transaction); the entry is inserted
# only if the head moved.
_ADVANCE_AND_INSERT_PG = (
    "WITH moved AS (UPDATE audit_heads SET next_seq = %s, last_hash = %s, key_sealed = %s, "
    "frontier = %s, updated_at = %s WHERE tenant_id = %s AND next_seq = %s RETURNING 1) "
    "INSERT INTO audit_entries (tenant_id, seq, entry_id, at_us, actor_id, patient_id, action, "
    "outcome, body, mac) SELECT %s::text, %s::bigint, %s::text, %s::bigint, %s::text, "
    "%s::text, %s::text, %s::text, %s::text, %s::bytea FROM moved")


def advance_head_and_insert(conn: Connection, chain: str, expected: int, next_seq: int,
                            last_hash: bytes, key_sealed: bytes, frontier: bytes, at: datetime,
                            rows: Sequence[Sequence[Any]]) -> bool:
    """``advance_head`` then, if it moved, ``insert_entries(rows)``; False if another
    writer moved the head (nothing written). One statement on PostgreSQL for one row."""
    if len(rows) != 1 or conn.dialect.name != "postgresql":
        if not advance_head(conn, chain, expected, next_seq, last_hash, key_sealed, frontier, at):
            return False
        insert_entries(conn, rows)
        return True
    cur = execute(conn, _ADVANCE_AND_INSERT_PG, (next_seq, last_hash, key_sealed, frontier, at,
                                                 chain, expected, *rows[0]))
    try:
        return bool(cur.rowcount == 1)
    finally:
        cur.close()


def set_pruned_below(conn: Connection, chain: str, seq: int) -> None:
    conn.execute(update(audit_heads).where(H.tenant_id == chain).values(pruned_below=seq))


def heads(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(audit_heads).order_by(H.tenant_id)).mappings()]


def head(conn: Connection, chain: str) -> dict[str, Any] | None:
    row = conn.execute(select(audit_heads).where(H.tenant_id == chain)).mappings().first()
    return dict(row) if row else None


# -- entries -------------------------------------------------------------------------------
def insert_entries(conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Entries in one statement (one per gate decision, or a group commit of reads):
    ``rows`` in the column order of ``_INSERT`` (tenant, seq, entry id, time, actor,
    patient, action, outcome, body, MAC)."""
    execute(conn, driver_sql(conn, _INSERT), rows[0] if len(rows) == 1 else rows,
            many=len(rows) > 1).close()


def insert_refs(conn: Connection, refs: Sequence[tuple[str, str, int]]) -> None:
    """(tenant, patient, seq) for entries naming more patients than their first."""
    conn.execute(insert(audit_refs), [{"tenant_id": t, "patient_id": p, "seq": q}
                                      for t, p, q in refs])


def chains(conn: Connection) -> list[str]:
    q = union(select(H.tenant_id), select(E.tenant_id).distinct())
    return sorted({r[0] for r in conn.execute(q)})


_STREAM = ("SELECT tenant_id, seq, entry_id, at_us, actor_id, patient_id, action, outcome, body, "
           "mac FROM audit_entries WHERE tenant_id = {p} AND seq > {p} AND seq < {p} "
           "ORDER BY seq LIMIT {p}")


def stream_rows(conn: Connection, chain: str, from_seq: int = 0, to_seq: int | None = None,
                batch: int = 20_000) -> Iterator[Sequence[Any]]:
    """Rows of a chain in ``seq`` order, in batches (keyset pagination), as plain tuples in
    the order of ``ROW_COLUMNS`` (plain SQL: no per-row type processing for a million rows)."""
    last = from_seq - 1
    end = to_seq if to_seq is not None else 2**62
    while True:
        rows = all_rows(conn, _STREAM, (chain, last, end, batch))
        if not rows:
            return
        yield rows
        last = rows[-1][1]
        if len(rows) < batch:
            return


def first_seq(conn: Connection, chain: str) -> int | None:
    v = conn.execute(select(func.min(E.seq)).where(E.tenant_id == chain)).scalar()
    return int(v) if v is not None else None


def first_at_or_after(conn: Connection, chain: str, seq: int) -> tuple[int, str] | None:
    row = conn.execute(select(E.seq, E.entry_id).where(E.tenant_id == chain, E.seq >= seq)
                       .order_by(E.seq).limit(1)).first()
    return (int(row[0]), str(row[1])) if row else None


def count_entries(conn: Connection, chain: str | None = None) -> int:
    q = select(func.count()).select_from(audit_entries)
    if chain is not None:
        q = q.where(E.tenant_id == chain)
    return int(conn.execute(q).scalar() or 0)


def entry_by_id(conn: Connection, entry_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(audit_entries).where(E.entry_id == entry_id)).mappings().first()
    return dict(row) if row else None


def _entries(q: Select[Any]) -> Select[Any]:
    return q.order_by(E.at_us, E.tenant_id, E.seq)


# Every bucket of the chain probed once through the patient index (see tables_audit), the
# buckets as the outer loop. SQLite: a CROSS JOIN fixes that order (its planner, without
# statistics, would walk the whole chain by its primary key), and the bounds stay
# untyped (an INTEGER-affinity bucket number would make it convert the indexed expression
# and pass the index by). PostgreSQL: a LATERAL subquery per bucket (a plain join lets it
# scan the tenant's whole index range), bounds CAST to type the recursive column.
# (PATIENT_BUCKET_BITS = 10 is spelt out as ">> 10": tests/audit/test_schema.py checks both.)
_PATIENT_SEQS = {
    "sqlite": "WITH RECURSIVE b(x) AS (SELECT :lo UNION ALL SELECT x + 1 FROM b "
              "WHERE x < :hi) SELECT e.seq FROM b CROSS JOIN audit_entries e "
              "WHERE e.tenant_id = :chain AND (e.seq >> 10) = b.x AND e.patient_id = :patient",
    # OFFSET 0 keeps the subquery a per-bucket probe (else it is pulled up into a join)
    "postgresql": "WITH RECURSIVE b(x) AS (SELECT CAST(:lo AS BIGINT) UNION ALL "
                  "SELECT x + 1 FROM b WHERE x < CAST(:hi AS BIGINT)) SELECT p.seq FROM b "
                  "CROSS JOIN LATERAL (SELECT e.seq FROM audit_entries e "
                  "WHERE e.tenant_id = :chain AND (e.seq >> 10) = b.x "
                  "AND e.patient_id = :patient OFFSET 0) p",
}


def patient_seqs_sql(dialect: str) -> str:
    return _PATIENT_SEQS["postgresql" if dialect == "postgresql" else "sqlite"]


_IN_CHUNK = 5000


def patient_seqs(conn: Connection, chain: str, patient_id: str) -> list[int]:
    """The positions of the chain's entries that name ``patient_id`` (first or further)."""
    # two scalar subqueries: SQLite answers a lone min() or max() from the primary key, but
    # scans the whole chain for both in one SELECT
    lo, hi = conn.execute(select(
        select(func.min(E.seq)).where(E.tenant_id == chain).scalar_subquery(),
        select(func.max(E.seq)).where(E.tenant_id == chain).scalar_subquery())).one()
    seqs: set[int] = set()
    if lo is not None:
        seqs.update(int(r[0]) for r in conn.execute(text(patient_seqs_sql(conn.dialect.name)), {
            "lo": int(lo) >> PATIENT_BUCKET_BITS, "hi": int(hi) >> PATIENT_BUCKET_BITS,
            "chain": chain, "patient": patient_id}))
    seqs.update(int(r[0]) for r in conn.execute(
        select(audit_refs.c.seq).where(audit_refs.c.tenant_id == chain,
                                       audit_refs.c.patient_id == patient_id)))
    return sorted(seqs)


def entries_for_patient(conn: Connection, chain: str, patient_id: str,
                        since_us: int = 0) -> list[dict[str, Any]]:
    seqs = patient_seqs(conn, chain, patient_id)
    out: list[dict[str, Any]] = []
    for i in range(0, len(seqs), _IN_CHUNK):
        q = select(audit_entries).where(E.tenant_id == chain,
                                        E.seq.in_(seqs[i:i + _IN_CHUNK]), E.at_us >= since_us)
        out.extend(dict(r) for r in conn.execute(q).mappings())
    out.sort(key=lambda r: (r["at_us"], r["tenant_id"], r["seq"]))
    return out


def entries_for_actor(conn: Connection, actor_id: str, since_us: int = 0,
                      until_us: int | None = None) -> list[dict[str, Any]]:
    q = select(audit_entries).where(E.actor_id == actor_id, E.at_us >= since_us)
    if until_us is not None:
        q = q.where(E.at_us < until_us)
    return [dict(r) for r in conn.execute(_entries(q)).mappings()]


def first_at_us(conn: Connection, actor_id: str, action: str, outcome: str) -> int | None:
    """When ``actor_id`` first did ``action`` with ``outcome`` (µs since the epoch), or None."""
    at = conn.execute(select(func.min(E.at_us)).where(
        E.actor_id == actor_id, E.action == action, E.outcome == outcome)).scalar()
    return None if at is None else int(at)


def actor_has_entries(conn: Connection, actor_id: str) -> bool:
    return conn.execute(select(E.seq).where(E.actor_id == actor_id).limit(1)).first() is not None


def entries_page(conn: Connection, chain: str | None, after: tuple[str, int] | None,
                 limit: int, since_us: int = 0) -> list[dict[str, Any]]:
    """Entries in (chain, seq) order for exports, ``limit`` at a time."""
    q = select(audit_entries).where(E.at_us >= since_us)
    if chain is not None:
        q = q.where(E.tenant_id == chain)
    if after is not None:
        q = q.where(or_(E.tenant_id > after[0], (E.tenant_id == after[0]) & (E.seq > after[1])))
    q = q.order_by(E.tenant_id, E.seq).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def newest_seq_before(conn: Connection, chain: str, cutoff_us: int) -> int | None:
    """The number of leading entries all older than ``cutoff_us`` (None if none)."""
    young = conn.execute(select(func.min(E.seq)).where(E.tenant_id == chain,
                                                       E.at_us >= cutoff_us)).scalar()
    if young is None:
        v = conn.execute(select(func.max(E.seq)).where(E.tenant_id == chain)).scalar()
        return int(v) + 1 if v is not None else None
    return int(young)


def delete_below(conn: Connection, chain: str, seq: int) -> int:
    conn.execute(delete(audit_refs).where(audit_refs.c.tenant_id == chain,
                                          audit_refs.c.seq < seq))
    return int(conn.execute(delete(audit_entries).where(E.tenant_id == chain,
                                                        E.seq < seq)).rowcount or 0)
