"""Hot statements as plain SQL in the driver's parameter style.

Every API read and every audit append runs a handful of fixed statements; building and
compiling Core statements costs several times the SQL itself (~40 µs against ~8 µs on
SQLite), so these few are written once as text. Values are always bound parameters, never
formatted into the text; the templates take only ``{p}`` placeholders and fixed names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

_CACHE: dict[tuple[str, str], str] = {}


def driver_sql(conn: Connection, template: str) -> str:
    key = (conn.dialect.name, template)
    sql = _CACHE.get(key)
    if sql is None:
        sql = _CACHE[key] = template.format(p="?" if key[0] == "sqlite" else "%s")
    return sql


def execute(conn: Connection, sql: str, params: Any, many: bool = False) -> Any:
    """Run ``sql`` (already in the driver's style) on the transaction's own DBAPI cursor.

    ``exec_driver_sql`` wraps every call in SQLAlchemy's execution context and result
    objects: ~20 µs against ~3 µs for the statement itself on SQLite, on statements every
    HL7 message, API read and audit append runs (docs/benchmarks.md). The statement still
    runs in the connection's transaction; a driver error is raised as SQLAlchemy's own
    exception class (``IntegrityError``...), as ``exec_driver_sql`` would. The caller
    reads the returned DBAPI cursor (``fetchone`` / ``fetchall`` / ``rowcount``)."""
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if many:
            cur.executemany(sql, params)
        else:
            cur.execute(sql, params)
    except conn.dialect.loaded_dbapi.Error as exc:
        cur.close()
        raise sa_exc.DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error,
                                         dialect=conn.dialect) from exc
    return cur


@contextmanager
def pipelined(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, the statements of the block go out without waiting for each answer
    (psycopg's pipeline mode: one round trip for a message's inserts instead of one each);
    a query whose rows are read inside still gets them (psycopg syncs first). An error of
    a queued statement is raised by the statement or the block's end that learns of it,
    as SQLAlchemy's exception class. Elsewhere (SQLite: no round trips) the block just runs."""
    if conn.dialect.name != "postgresql":
        yield
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    try:
        with raw.pipeline():
            yield
    except conn.dialect.loaded_dbapi.Error as exc:
        raise sa_exc.DBAPIError.instance("(pipelined statements)", None, exc,
                                         conn.dialect.loaded_dbapi.Error,
                                         dialect=conn.dialect) from exc


def first(conn: Connection, template: str, params: tuple[Any, ...]) -> Any:
    """The first row (a tuple) of a ``{p}``-template query, or None."""
    cur = execute(conn, driver_sql(conn, template), params)
    try:
        return cur.fetchone()
    finally:
        cur.close()


def all_rows(conn: Connection, template: str, params: tuple[Any, ...]) -> list[Any]:
    """Every row (tuples) of a ``{p}``-template query."""
    cur = execute(conn, driver_sql(conn, template), params)
    try:
        return list(cur.fetchall())
    finally:
        cur.close()


# -- whole-row statements generated from a table definition -------------------------------
# The text names only the table's own columns (schema names, never data); values go through
# the column types' bind/result processors for the dialect, exactly what Core applies (e.g.
# SQLite's text timestamps), so rows written or read here are the rows Core writes or reads.

_PROCS: dict[tuple[str, str, str], list[tuple[str, Any]]] = {}
_BIND_MAPS: dict[tuple[str, str], dict[str, Any]] = {}
_UPDATES: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str] = {}


def _processors(conn: Connection, table: Table, kind: str) -> list[tuple[str, Any]]:
    key = (conn.dialect.name, table.name, kind)
    procs = _PROCS.get(key)
    if procs is None:
        d = conn.dialect
        procs = _PROCS[key] = [
            (c.name, c.type.dialect_impl(d).bind_processor(d) if kind == "bind"
             else c.type.dialect_impl(d).result_processor(d, None)) for c in table.c]
    return procs


def columns(table: Table) -> str:
    """Every column of ``table`` in order (the select list ``select_rows`` expects)."""
    return ", ".join(c.name for c in table.c)


def select_sql(table: Table, where: str) -> str:
    """``SELECT <columns(table)> FROM table WHERE <where>`` (``where`` from code, with
    ``{p}`` placeholders; never data) — the select list ``select_rows`` expects."""
    return f"SELECT {columns(table)} FROM {table.name} WHERE {where}"  # noqa: S608 - schema names


def insert_sql(table: Table) -> str:
    """``INSERT`` of every column (none may have a default: each row gives them all)."""
    assert all(c.server_default is None and c.default is None for c in table.c), table.name
    return (f"INSERT INTO {table.name} ({columns(table)}) "  # noqa: S608 - schema names only
            f"VALUES ({', '.join('{p}' for _ in table.c)})")


def insert_rows(conn: Connection, table: Table, sql: str,
                rows: Sequence[Mapping[str, Any]]) -> None:
    """Whole rows (a value for every column) in one execute / executemany."""
    procs = _processors(conn, table, "bind")
    params = [tuple(row[c] if p is None or row[c] is None else p(row[c]) for c, p in procs)
              for row in rows]
    stmt = driver_sql(conn, sql)
    if params:
        execute(conn, stmt, params[0] if len(params) == 1 else params,
                many=len(params) > 1).close()


def select_rows(conn: Connection, table: Table, sql: str, params: tuple[Any, ...]
                ) -> list[dict[str, Any]]:
    """Rows of ``SELECT <columns(table)> FROM ...`` as dicts, values as Core reads them."""
    procs = _processors(conn, table, "result")
    return [{c: v if p is None or v is None else p(v) for (c, p), v in zip(procs, r, strict=True)}
            for r in all_rows(conn, sql, params)]


def update_rows(conn: Connection, table: Table, where: Mapping[str, Any],
                values: Mapping[str, Any]) -> int:
    """``UPDATE table SET <values> WHERE <where, all equal>``; the statement text is built
    once per (table, column names); returns the row count."""
    key = (table.name, tuple(values), tuple(where))
    sql = _UPDATES.get(key)
    if sql is None:
        cols = table.c
        assert all(k in cols for k in (*values, *where)), key    # names from code, never data
        sql = _UPDATES[key] = (
            f"UPDATE {table.name} SET "  # noqa: S608 - schema names only
            + ", ".join(f"{k} = {{p}}" for k in values)
            + " WHERE " + " AND ".join(f"{k} = {{p}}" for k in where))
    procs = _BIND_MAPS.get((conn.dialect.name, table.name))
    if procs is None:
        procs = _BIND_MAPS[(conn.dialect.name, table.name)] = dict(
            _processors(conn, table, "bind"))
    params = tuple(v if v is None or procs[k] is None else procs[k](v)
                   for k, v in (*values.items(), *where.items()))
    cur = execute(conn, driver_sql(conn, sql), params)
    try:
        return int(cur.rowcount)
    finally:
        cur.close()
