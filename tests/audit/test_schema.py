"""The audit migration creates exactly the tables declared in store/tables_audit.py."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from labvault.store import migrate
from labvault.store.engine import make_engine
from labvault.store.schema import metadata
from labvault.store.tables_audit import audit_entries, audit_heads, audit_refs

AUDIT_TABLES = {"audit_entries", "audit_refs", "audit_heads"}


def _table_of(diff: object) -> str | None:
    item = diff[0] if isinstance(diff, list) else diff
    for part in item if isinstance(item, tuple) else ():
        name = getattr(part, "name", None)
        table = getattr(part, "table", None)
        if table is not None and getattr(table, "name", None):
            return str(table.name)
        if name in AUDIT_TABLES:
            return str(name)
    return None


def test_migration_matches_tables(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(eng)
    with eng.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    mine = [d for d in diffs if _table_of(d) in AUDIT_TABLES]
    assert mine == []
    eng.dispose()


def test_tenant_first_in_every_primary_key() -> None:
    for t in (audit_entries, audit_heads, audit_refs):
        assert next(iter(t.primary_key.columns)).name == "tenant_id"


def test_audit_settings_documented() -> None:
    from labvault.config import SETTINGS
    root = Path(__file__).resolve().parents[2]
    conf = (root / "docs" / "configuration.md").read_text()
    audit_doc = (root / "docs" / "audit.md").read_text()
    for name in (k for k in SETTINGS if k.startswith("LABVAULT_AUDIT_")):
        assert f"`{name}`" in conf and f"`{name}`" in audit_doc, name
