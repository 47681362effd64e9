"""Migration 0014: ``patients.merged_into`` (a merged duplicate's tombstone points at the
record kept) is added to a database holding patients, who keep their rows (no pointer),
and goes away on downgrade."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command

from labvault.store import migrate
from labvault.store.engine import make_engine


def test_merged_into_is_added_and_removed(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = migrate._config(eng)
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001_foundation")
        conn.execute(sa.text(
            "INSERT INTO patients (tenant_id, patient_id, status, created_at, updated_at, "
            "identity) VALUES ('lab_a', 'pt_1', 'active', :t, :t, :b)"),
            {"t": "2026-01-01 00:00:00", "b": b"sealed"})
        command.upgrade(cfg, "0014_patient_merged_into")
        cols = {c["name"] for c in sa.inspect(conn).get_columns("patients")}
        assert "merged_into" in cols
        assert "ix_patients_tenant_id_merged_into" in {
            i["name"] for i in sa.inspect(conn).get_indexes("patients")}
        assert conn.execute(sa.text("SELECT status, merged_into, identity FROM patients")
                            ).one() == ("active", None, b"sealed")
        command.downgrade(cfg, "0001_foundation")
        cols = {c["name"] for c in sa.inspect(conn).get_columns("patients")}
        assert "merged_into" not in cols
        assert conn.execute(sa.text("SELECT patient_id FROM patients")).scalar_one() == "pt_1"
    eng.dispose()
    eng = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(eng)                        # and up to heads again
    assert migrate.is_current(eng)
    eng.dispose()
