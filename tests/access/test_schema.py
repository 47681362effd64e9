"""The access migration creates exactly the tables declared in store/tables_access.py."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from labvault.store.engine import make_engine
from labvault.store.schema import metadata

ACCESS_TABLES = {"accounts", "recovery_codes", "sessions", "login_throttle"}


def test_migration_matches_tables(sqlite_template: Path) -> None:
    eng = make_engine(f"sqlite:///{sqlite_template}")
    with eng.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    eng.dispose()

    def table_of(d: object) -> str | None:
        item = d[0] if isinstance(d, list) else d
        for x in item[1:] if isinstance(item, tuple) else ():
            name = getattr(x, "name", None) if not isinstance(x, str) else None
            tbl = getattr(x, "table", None)
            if tbl is not None:
                return str(tbl.name)
            if name in ACCESS_TABLES:
                return str(name)
            if isinstance(x, str) and x in ACCESS_TABLES:
                return x
        return None

    ours = [d for d in diff if table_of(d) in ACCESS_TABLES]
    assert not ours, ours
    assert set(metadata.tables) >= ACCESS_TABLES
    for name in ACCESS_TABLES:
        assert metadata.tables[name].primary_key.columns.keys()[0] == "tenant_id"
