"""Migrations 0010 and 0011: a result's history keyed by (tenant, result, history id), a
result by (tenant, order, result). Rows written under the former keys survive the upgrade
(and a downgrade) and are read through the new keys."""

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
        command.downgrade(cfg, "lab@0005_lab")
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


def test_results_survive_the_key_change(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(eng)
    with eng.begin() as conn:
        cfg = migrate._config(eng)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "lab@0005_lab")
    now = datetime(2026, 3, 1, tzinfo=UTC)
    with eng.begin() as conn:
        assert inspect(conn).get_pk_constraint("lab_observations")["constrained_columns"] == [
            "tenant_id", "observation_id"]
        for oid, order, seq in (("obs_1", "ord_a", 1), ("obs_2", "ord_a", 2), ("obs_3", "ord_b", 1)):
            conn.execute(text("INSERT INTO lab_observations (tenant_id, observation_id, "
                              "order_id, patient_id, status, seq, revision, created_at, "
                              "updated_at, result_sealed) VALUES ('lab_t', :o, :ord, 'pt_1', "
                              "'final', :s, 1, :at, :at, :b)"),
                         {"o": oid, "ord": order, "s": seq, "at": now, "b": b"sealed"})
    migrate.upgrade(eng)
    with eng.connect() as conn:
        insp = inspect(conn)
        assert insp.get_pk_constraint("lab_observations")["constrained_columns"] == [
            "tenant_id", "order_id", "observation_id"]
        assert {i["name"] for i in insp.get_indexes("lab_observations")} == {
            "ix_lab_observations_observation_id", "ix_lab_observations_tenant_id_patient_id"}
        got = [tuple(r) for r in conn.execute(text(
            "SELECT observation_id FROM lab_observations WHERE tenant_id = 'lab_t' "
            "AND order_id = 'ord_a' ORDER BY seq"))]
        assert got == [("obs_1",), ("obs_2",)]
        plan = " ".join(str(r[-1]) for r in conn.execute(text(
            "EXPLAIN QUERY PLAN SELECT * FROM lab_observations "
            "WHERE tenant_id = 'lab_t' AND order_id = 'ord_a'")))
        assert "sqlite_autoindex_lab_observations" in plan, plan
    eng.dispose()
