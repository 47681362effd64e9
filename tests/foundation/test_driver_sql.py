"""Hot statements on the DBAPI cursor (``driver_sql.execute``) behave as ``exec_driver_sql``
did for their callers: inside the connection's transaction, driver errors raised as
SQLAlchemy's exception classes (callers catch ``sqlalchemy.exc.IntegrityError``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.exc import IntegrityError, OperationalError

from labvault.store.driver_sql import all_rows, execute, first, insert_rows, insert_sql, pipelined
from labvault.store.engine import make_engine

metadata = MetaData()
things = Table("things", metadata, Column("k", String, primary_key=True),
               Column("n", Integer, nullable=False))


def test_errors_are_sqlalchemys_and_writes_share_the_transaction(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'd.db'}")
    metadata.create_all(eng)
    sql = insert_sql(things)
    with pytest.raises(IntegrityError), eng.begin() as conn:
        insert_rows(conn, things, sql, [{"k": "a", "n": 1}, {"k": "b", "n": 2}])
        assert first(conn, "SELECT n FROM things WHERE k = {p}", ("b",)) == (2,)
        insert_rows(conn, things, sql, [{"k": "a", "n": 3}])          # duplicate key
    with eng.connect() as conn:                                       # rolled back as a whole
        assert all_rows(conn, "SELECT k FROM things", ()) == []
        with pytest.raises(OperationalError, match="no such table"):
            execute(conn, "SELECT * FROM nothing_here", ())
    eng.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_pipelined_statements_share_the_transaction_and_its_errors(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """``pipelined``: the block's statements go out together on PostgreSQL (one round
    trip), are read back inside the block, and a failing one raises SQLAlchemy's class
    and rolls the transaction back — as on SQLite, where the block is plain."""
    if backend == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    else:
        from tests.foundation.conftest import _pg_schema_url
        eng = make_engine(_pg_schema_url(request.getfixturevalue("pg_schema")))
    metadata.create_all(eng)
    sql = insert_sql(things)
    with eng.begin() as conn, pipelined(conn):
        if backend == "postgres":       # really in psycopg's pipeline mode
            assert conn.connection.driver_connection.pgconn.pipeline_status != 0  # type: ignore[union-attr]
        insert_rows(conn, things, sql, [{"k": "a", "n": 1}])
        insert_rows(conn, things, sql, [{"k": "b", "n": 2}, {"k": "c", "n": 3}])
        assert first(conn, "SELECT count(*) FROM things", ()) == (3,)   # read inside
    with pytest.raises(IntegrityError), eng.begin() as conn, pipelined(conn):
        insert_rows(conn, things, sql, [{"k": "d", "n": 4}])
        insert_rows(conn, things, sql, [{"k": "a", "n": 5}])          # duplicate key
        insert_rows(conn, things, sql, [{"k": "e", "n": 6}])
    with eng.connect() as conn:
        assert sorted(r[0] for r in all_rows(conn, "SELECT k FROM things", ())) == \
            ["a", "b", "c"]
    eng.dispose()
