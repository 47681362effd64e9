"""Migration 0010_lab_read_keys: a result's history keyed by (tenant, result, history id),
a result by (tenant, order, result), an order by (tenant, patient, order), a specimen by
(tenant, order, specimen), a report by (tenant, order). Rows written under the former keys
survive the upgrade (and a downgrade) and are read through the new keys."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from labvault.store import migrate
from labvault.store.engine import make_engine


def _rows(conn: object) -> list[tuple[str, str, int]]:
    return [tuple(r) for r in conn.execute(text(  # type: ignore[attr-defined]
        "SELECT history_id, observation_id, revision FROM lab_observation_history "
        "ORDER BY observation_id, revision"))]


def _store_at(tmp_path: Path, lab_revision: str) -> Engine:
    """A migrated store with the lab branch taken back to ``lab_revision``."""
    eng = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(eng)
    with eng.begin() as conn:
        cfg = migrate._config(eng)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, f"lab@{lab_revision}")
    return eng


def _read_by_key(conn: Connection, table: str, where: str) -> None:
    """The reading path is served by the table's primary key (SQLite's autoindex)."""
    plan = " ".join(str(r[-1]) for r in conn.execute(text(
        f"EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE tenant_id = 'lab_t' AND {where}")))  # noqa: S608 - test constants
    assert f"sqlite_autoindex_{table}" in plan, plan


def test_history_survives_the_key_change(tmp_path: Path) -> None:
    eng = _store_at(tmp_path, "0005_lab")
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
        _read_by_key(conn, "lab_observation_history", "observation_id = 'obs_1'")
    eng.dispose()


def test_results_survive_the_key_change(tmp_path: Path) -> None:
    eng = _store_at(tmp_path, "0005_lab")
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
        _read_by_key(conn, "lab_observations", "order_id = 'ord_a'")
    eng.dispose()


def test_orders_specimens_reports_survive_the_key_change(tmp_path: Path) -> None:
    eng = _store_at(tmp_path, "0005_lab")
    now = datetime(2026, 3, 1, tzinfo=UTC)
    with eng.begin() as conn:
        for oid, pid in (("ord_a", "pt_1"), ("ord_b", "pt_2")):
            conn.execute(text("INSERT INTO lab_orders (tenant_id, order_id, patient_id, status, "
                              "priority, created_at, updated_at, request_sealed) VALUES "
                              "('lab_t', :o, :p, 'registered', 'routine', :at, :at, :b)"),
                         {"o": oid, "p": pid, "at": now, "b": b"sealed"})
            conn.execute(text("INSERT INTO lab_specimens (tenant_id, specimen_id, order_id, "
                              "patient_id, status, received_at, specimen_sealed) VALUES "
                              "('lab_t', :s, :o, :p, 'available', :at, :b)"),
                         {"s": "spc_" + oid, "o": oid, "p": pid, "at": now, "b": b"sealed"})
            conn.execute(text("INSERT INTO lab_reports (tenant_id, report_id, order_id, "
                              "patient_id, status, created_at, updated_at) VALUES "
                              "('lab_t', :r, :o, :p, 'registered', :at, :at)"),
                         {"r": "rep_" + oid, "o": oid, "p": pid, "at": now})
    migrate.upgrade(eng)
    with eng.connect() as conn:
        insp = inspect(conn)
        keys = {t: insp.get_pk_constraint(t)["constrained_columns"]
                for t in ("lab_orders", "lab_specimens", "lab_reports")}
        assert keys == {"lab_orders": ["tenant_id", "patient_id", "order_id"],
                        "lab_specimens": ["tenant_id", "order_id", "specimen_id"],
                        "lab_reports": ["tenant_id", "order_id"]}
        for table, idx in (("lab_orders", "ix_lab_orders_tenant_id_patient_id"),
                           ("lab_specimens", "ix_lab_specimens_tenant_id_order_id"),
                           ("lab_reports", "ix_lab_reports_tenant_id_order_id")):
            assert idx not in {i["name"] for i in insp.get_indexes(table)}
        assert conn.execute(text("SELECT order_id FROM lab_orders WHERE tenant_id = 'lab_t' "
                                 "AND patient_id = 'pt_2'")).all() == [("ord_b",)]
        assert conn.execute(text("SELECT report_id FROM lab_reports WHERE tenant_id = 'lab_t' "
                                 "AND order_id = 'ord_a'")).all() == [("rep_ord_a",)]
        assert conn.execute(text("SELECT count(*) FROM lab_specimens")).scalar() == 2
    with eng.begin() as conn, pytest.raises(IntegrityError):   # still one report per order
        conn.execute(text("INSERT INTO lab_reports (tenant_id, report_id, order_id, patient_id, "
                          "status, created_at, updated_at) VALUES ('lab_t', 'rep_x', 'ord_a', "
                          "'pt_1', 'registered', :at, :at)"), {"at": now})
    eng.dispose()
