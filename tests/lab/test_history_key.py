"""Migration 0010: a result's history keyed by (tenant, result, history id). Rows written
under the former key survive the upgrade (and a downgrade) and are read by result."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text

from labvault.store import migrate
from labvault.store.engine import make_engine


def _rows(conn: object) -> list[tuple[str, str, int]]:
    return [tuple(r) for r in conn.execute(text(  # type: ignore[attr-defined]
        "SELECT history_id, observation_id, revision FROM lab_observation_history "
        "ORDER BY observation_id, revision"))]


def test_history_survives_the_key_change(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(eng)
    with eng.begin() as conn:
        cfg = migrate._config(eng)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0010_lab_history_key@-1")
    with eng.begin() as conn:
        assert inspect(conn).get_pk_constraint("lab_observation_history")[
            "constrained_columns"] == ["tenant_id", "history_id"]
        now = datetime(2026, 3, 1, tzinfo=UTC)
        for hid, oid, rev in (("hst_a", "obs_1", 1), ("hst_b", "obs_1", 2), ("hst_c", "obs_2", 1)):
            conn.execute(text("INSERT INTO lab_observation_history (tenant_id, history_id, "
                              "observation_id, patient_id, revision, changed_at, change_sealed) "
                              "VALUES ('lab_t', :h, :o, 'pt_1', :r, :at, :b)"),
                         {"h": hid, "o": oid, "r": rev, "at": now, "b": b"sealed"})
        before = _rows(conn)
    migrate.upgrade(eng)
    with eng.connect() as conn:
        insp = inspect(conn)
        assert insp.get_pk_constraint("lab_observation_history")["constrained_columns"] == [
            "tenant_id", "observation_id", "history_id"]
        assert not insp.get_indexes("lab_observation_history")      # the index is gone
        assert _rows(conn) == before
        plan = " ".join(str(r[-1]) for r in conn.execute(text(
            "EXPLAIN QUERY PLAN SELECT * FROM lab_observation_history "
            "WHERE tenant_id = 'lab_t' AND observation_id = 'obs_1'")))
        assert "sqlite_autoindex_lab_observation_history" in plan, plan
    eng.dispose()
