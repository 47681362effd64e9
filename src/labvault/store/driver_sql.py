"""Hot statements as plain SQL in the driver's parameter style.

Every API read and every audit append runs a handful of fixed statements; building and
compiling Core statements costs several times the SQL itself (~40 µs against ~8 µs on
SQLite), so these few are written once as text. Values are always bound parameters, never
formatted into the text; the templates take only ``{p}`` placeholders and fixed names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection

_CACHE: dict[tuple[str, str], str] = {}


def driver_sql(conn: Connection, template: str) -> str:
    key = (conn.dialect.name, template)
    sql = _CACHE.get(key)
    if sql is None:
        sql = _CACHE[key] = template.format(p="?" if key[0] == "sqlite" else "%s")
    return sql


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
    if len(params) == 1:
        conn.exec_driver_sql(stmt, params[0])
    elif params:
        conn.exec_driver_sql(stmt, params)


def select_rows(conn: Connection, table: Table, sql: str, params: tuple[Any, ...]
                ) -> list[dict[str, Any]]:
    """Rows of ``SELECT <columns(table)> FROM ...`` as dicts, values as Core reads them."""
    procs = _processors(conn, table, "result")
    return [{c: v if p is None or v is None else p(v) for (c, p), v in zip(procs, r, strict=True)}
            for r in conn.exec_driver_sql(driver_sql(conn, sql), params)]


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
    return int(conn.exec_driver_sql(driver_sql(conn, sql), params).rowcount)
