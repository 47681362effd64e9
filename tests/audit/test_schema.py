"""The audit migration creates exactly the tables declared in store/tables_audit.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from labvault.store import migrate
from labvault.store.engine import make_engine
from labvault.store.schema import metadata
from labvault.store.tables_audit import audit_entries, audit_heads, audit_refs

AUDIT_TABLES = {"audit_entries", "audit_refs", "audit_heads"}

# Alembic cannot reflect SQLite's expression indexes (it says so and skips the comparison):
# the patient index is checked here instead, with the plan that uses it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*expression-based index .?ix_audit_entries_patient_bucket")


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


def test_patient_index_is_bucketed_and_used(tmp_path: Path) -> None:
    from sqlalchemy import text

    from labvault.store.repositories_audit import _PATIENT_SEQS, patient_seqs_sql
    from labvault.store.tables_audit import PATIENT_BUCKET_BITS
    assert PATIENT_BUCKET_BITS == 10 and all(">> 10" in q for q in _PATIENT_SEQS.values())
    eng = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(eng)
    with eng.connect() as conn:
        sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = "
                                "'ix_audit_entries_patient_bucket'")).scalar()
        assert sql is not None and "(seq >> 10)" in sql.replace('"', "")
        names = {r[0] for r in conn.execute(text(
            "SELECT name FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'audit_entries'"))}
        assert "ix_audit_entries_tenant_id_patient_id" not in names   # replaced by 0009
        plan = " ".join(str(r[-1]) for r in conn.execute(
            text("EXPLAIN QUERY PLAN " + patient_seqs_sql("sqlite")),
            {"lo": 0, "hi": 5, "chain": "t", "patient": "p"}))
        assert "ix_audit_entries_patient_bucket" in plan, plan
    eng.dispose()
