"""Engines for the embedded default (SQLite, WAL) and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine

from labvault.store.driver_sql import execute

SYNCHRONOUS = ("full", "normal")


def make_engine(url: str, checkpoint_pages: int = 1000, synchronous: str = "full",
                **kwargs: Any) -> Engine:
    """``checkpoint_pages``: SQLite's ``wal_autocheckpoint`` (its default, 1000, unless
    ``LABVAULT_SQLITE_CHECKPOINT_PAGES`` says otherwise); ``synchronous``: SQLite's
    ``synchronous`` (``LABVAULT_SQLITE_SYNCHRONOUS``). PostgreSQL ignores both (its own
    ``synchronous_commit``, on by default, makes a commit durable)."""
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
    if url.startswith("sqlite"):
        # sqlite3 keeps 128 prepared statements per connection by default; one FHIR
        # transaction Bundle's work (lab, patients, gate, audit, guard) runs more distinct
        # statements than that, so each cycle evicted and prepared some again (1.7 % of a
        # Bundle's instructions, docs/benchmarks.md "Session 12").
        engine = create_engine(url, connect_args={"timeout": 30, "cached_statements": 1024},
                               **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: the log is synced at every commit, so a commit that returned -- an HL7
            # ACK, a FHIR 201 -- survives a power loss. NORMAL syncs only at checkpoints:
            # consistent after a crash, but the last commits may be gone (SQLite's "WAL
            # mode loses durability"), which an analyser that already dropped its copy of
            # an acknowledged result cannot know.
            cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
            cur.execute("PRAGMA foreign_keys=ON")
            # savepoint sub-journals and temporary b-trees in memory, not in temp files
            cur.execute("PRAGMA temp_store=MEMORY")
            # 64 MiB of page cache (default 2 MiB): random-keyed index inserts (blind
            # indexes, breach blocks, random ids) stay in memory instead of re-reading pages
            cur.execute("PRAGMA cache_size=-65536")
            cur.execute("PRAGMA busy_timeout=30000")
            # how many WAL pages before they are copied into the database file (and synced):
            # writes of random-keyed rows (HL7 messages, audit entries) re-dirty the same
            # pages, which a larger log writes back once instead of once per checkpoint
            cur.execute(f"PRAGMA wal_autocheckpoint={int(checkpoint_pages)}")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_pre_ping=True, **kwargs)


def durability_warnings(engine: Engine) -> list[str]:
    """What makes a returned commit not durable on this PostgreSQL server (its
    ``synchronous_commit`` or ``fsync`` off): an HL7 ACK or a FHIR 201 would then promise
    what a crash of the server may undo. SQLite's setting is labvault's own
    (``LABVAULT_SQLITE_SYNCHRONOUS``); nothing to ask there."""
    if engine.dialect.name != "postgresql":
        return []
    out = []
    with engine.connect() as conn:
        for name, fix in (("synchronous_commit", "on"), ("fsync", "on")):
            value = str(conn.exec_driver_sql(f"SHOW {name}").scalar())
            if value == "off":
                out.append(f"PostgreSQL runs with {name}=off: a commit labvault acknowledges "
                           "(HL7 ACK, FHIR 201, an audit entry) may be lost if the server "
                           f"crashes; set {name}={fix} for the labvault database")
    return out


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def open_write_transaction(conn: Connection) -> None:
    """Make sure a real transaction is open before a SAVEPOINT.

    Python's sqlite3 (legacy transaction control, which SQLAlchemy uses) sends ``BEGIN``
    only before the first INSERT/UPDATE/DELETE: a SAVEPOINT issued earlier opens the
    transaction itself, and its RELEASE then *commits*. A savepoint is only ever taken to
    write, so the transaction is opened as a write one (IMMEDIATE: the lock now, not a
    failed upgrade later)."""
    if conn.dialect.name != "sqlite":
        return
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def for_update(conn: Connection) -> str:
    """What makes a read the first step of a write (read, check, then write, with nothing
    committed in between): the text to append to the ``SELECT`` of the rows to lock.

    PostgreSQL: `` FOR UPDATE`` -- the rows read stay locked until the transaction ends;
    another writer of them waits, then reads what this one committed (READ COMMITTED takes
    a new snapshot per statement). SQLite: the write transaction is opened now
    (``BEGIN IMMEDIATE``, ``open_write_transaction``) and nothing is appended: the
    database has one writer at a time, across processes (``labvault serve --workers``),
    and what is read after BEGIN IMMEDIATE is the last committed state, which nobody else
    can change before this transaction ends. Without it, Python's sqlite3 reads outside
    any transaction until the first write, and another process may commit in between."""
    if conn.dialect.name == "postgresql":
        return " FOR UPDATE"
    open_write_transaction(conn)
    return ""


_SAVEPOINTS = itertools.count(1)


@contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """A savepoint as three plain statements on the DBAPI cursor: what ``begin_nested``
    does, without its compiling of a SAVEPOINT / RELEASE clause each time (~190 µs of an
    HL7 message in the listener's group commit, against ~10 µs; docs/benchmarks.md). Rolled back and
    released if the block raises; the block's exception is the one that propagates."""
    open_write_transaction(conn)
    name = f"lv_sp_{next(_SAVEPOINTS)}"      # unique: savepoints may nest
    execute(conn, f"SAVEPOINT {name}", ()).close()
    try:
        yield
    except BaseException:
        try:
            execute(conn, f"ROLLBACK TO SAVEPOINT {name}", ()).close()
            execute(conn, f"RELEASE SAVEPOINT {name}", ()).close()
        except Exception:   # noqa: S110 - the connection is gone: the block's error says why
            pass
        raise
    execute(conn, f"RELEASE SAVEPOINT {name}", ()).close()
