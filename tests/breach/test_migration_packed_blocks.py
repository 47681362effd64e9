"""Migration 0008: blocking keys move from ``breach_blocks`` rows into the encoding row
(upgrade packs them per patient, downgrade unpacks them), on a database that has some."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command

from labvault.store import migrate
from labvault.store.engine import make_engine

K1, K2, K3 = b"\x01" * 8, b"\x02" * 8, b"\x03" * 8


def test_blocks_are_packed_and_unpacked(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = migrate._config(eng)
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007_breach")
        conn.execute(sa.text("INSERT INTO breach_encodings (tenant_id, patient_id, key_version, "
                             "clk) VALUES ('lab_a', 'pt_1', 1, :c), ('lab_a', 'pt_2', 1, :c)"),
                     {"c": b"\x00" * 256})
        conn.execute(sa.text("INSERT INTO breach_blocks (tenant_id, block, patient_id) "
                             "VALUES ('lab_a', :k2, 'pt_1'), ('lab_a', :k1, 'pt_1'), "
                             "('lab_a', :k3, 'pt_2')"), {"k1": K1, "k2": K2, "k3": K3})
        command.upgrade(cfg, "0008_breach_packed_blocks")
        got = dict(conn.execute(sa.text(
            "SELECT patient_id, blocks FROM breach_encodings ORDER BY patient_id")).all())
        assert got == {"pt_1": K1 + K2, "pt_2": K3}
        assert "breach_blocks" not in sa.inspect(conn).get_table_names()
        command.downgrade(cfg, "0007_breach")
        back = set(conn.execute(sa.text("SELECT tenant_id, block, patient_id FROM breach_blocks")))
        assert back == {("lab_a", K1, "pt_1"), ("lab_a", K2, "pt_1"), ("lab_a", K3, "pt_2")}
    eng.dispose()
    migrate.upgrade(make_engine(f"sqlite:///{tmp_path / 'm.db'}"))   # and up to heads again
