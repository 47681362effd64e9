"""Hot statements as plain SQL in the driver's parameter style.

Every API read and every audit append runs a handful of fixed statements; building and
compiling Core statements costs several times the SQL itself (~40 µs against ~8 µs on
SQLite), so these few are written once as text. Values are always bound parameters, never
formatted into the text; the templates take only ``{p}`` placeholders and fixed names.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

_CACHE: dict[tuple[str, str], str] = {}


def driver_sql(conn: Connection, template: str) -> str:
    key = (conn.dialect.name, template)
    sql = _CACHE.get(key)
    if sql is None:
        sql = _CACHE[key] = template.format(p="?" if key[0] == "sqlite" else "%s")
    return sql
