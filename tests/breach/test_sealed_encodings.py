"""Breach-matching encodings are sealed under the laboratory's data key (migration 0016):
the stored bytes hold no encoding, a value moved to another row stops the triage, and a
store without encodings says so instead of silently matching less."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from labvault.breach import synthdump as sd
from labvault.domain.actors import Actor
from labvault.domain.patient import PatientRecord
from labvault.errors import IntegrityError
from labvault.services.app import Labvault
from labvault.services.breach import ENCODINGS, SEALED
from labvault.store import migrate
from labvault.store.engine import make_engine
from labvault.store.tables_breach import breach_encodings
from tests.breach.conftest import Store


def _rows(lv: Labvault, tenant_id: str) -> dict[str, bytes]:
    with lv.begin() as conn:
        return dict(conn.execute(sa.select(breach_encodings.c.patient_id,
                                           breach_encodings.c.sealed).where(
            breach_encodings.c.tenant_id == tenant_id)).all())


def test_stored_values_are_sealed_encodings(lv: Labvault, store: Store) -> None:
    t, pid, rec = store.patients[0]
    rows = _rows(lv, t)
    assert len(rows) == sum(1 for p in store.patients if p[0] == t)
    with lv.begin() as conn:
        enc, _v = lv.breach.encoder(conn, t)
        plain = lv.breach.encoding(enc, PatientRecord.parse(
            {k: v for k, v in rec.items() if v is not None}))
        opened = lv.gate.open_tenant_column_checked(conn, t, ENCODINGS, SEALED,
                                                    [(pid, rows[pid])])
    assert opened == [plain]
    # the envelope names the tenant's data key; neither the filter nor any 8-byte
    # blocking key of the patient is in the stored bytes
    assert rows[pid].startswith(b"L\x01\x06data-")
    every = b"".join(rows.values())
    assert plain[:256] not in every
    assert not any(plain[i:i + 8] in every for i in range(256, len(plain), 8))


def test_a_value_moved_to_another_row_stops_the_triage(lv: Labvault, operator: Actor,
                                                       store: Store, tmp_path: Path) -> None:
    t = store.tenants[0]
    mine = [p for p in store.patients if p[0] == t][:20]
    (_, a, _), (_, b, _) = mine[0], mine[1]
    with lv.begin() as conn:
        conn.execute(breach_encodings.update().where(
            breach_encodings.c.tenant_id == t, breach_encodings.c.patient_id == b
        ).values(sealed=_rows(lv, t)[a]))
    path = tmp_path / "d.csv"
    sd.write_csv(path, sd.make_dump(mine, 10, seed=8).rows)
    case = lv.breach.open_case(operator, "t", "2026-11-01T09:00:00Z")
    with pytest.raises(IntegrityError, match=f"breach_encodings.sealed of record {b}"):
        lv.breach.triage(operator, case, [path])


def test_missing_encodings_are_counted_then_backfilled(lv: Labvault, operator: Actor,
                                                       store: Store, tmp_path: Path) -> None:
    t = store.tenants[0]
    mine = [p for p in store.patients if p[0] == t]
    with lv.begin() as conn:
        conn.execute(breach_encodings.delete().where(breach_encodings.c.tenant_id == t,
                                                     breach_encodings.c.patient_id.in_(
                                                         [p for _, p, _ in mine[:7]])))
    path = tmp_path / "d.csv"
    sd.write_csv(path, sd.make_dump(mine[:20], 10, seed=9).rows)
    case = lv.breach.open_case(operator, "t", "2026-11-01T09:00:00Z")
    assert lv.breach.triage(operator, case, [path])["unencoded"] == {t: 7}
    assert lv.breach.backfill(Actor.system("test"), t)[t] == 7
    assert lv.breach.triage(operator, case, [path])["unencoded"] == {}


def test_encodings_sealed_before_a_key_rotation_still_open(lv: Labvault, operator: Actor,
                                                           store: Store, tmp_path: Path) -> None:
    t = store.tenants[0]
    mine = [p for p in store.patients if p[0] == t][:20]
    lv.keys.rotate_tenant(operator, t)           # a new data key version for new values
    _t, pid, rec = mine[0]
    lv.patients.update(operator, pid, {**rec, "phone": "+33612345678"})
    rows = _rows(lv, t)
    assert rows[pid].startswith(b"L\x01\x06data-2")
    assert rows[mine[1][1]].startswith(b"L\x01\x06data-1")
    path = tmp_path / "d.csv"
    sd.write_csv(path, sd.make_dump(mine, 10, seed=10).rows)
    case = lv.breach.open_case(operator, "t", "2026-11-01T09:00:00Z")
    res = lv.breach.triage(operator, case, [path])
    assert res["unencoded"] == {}
    assert {m["patient_id"] for m in res["matches"]} >= {p for _, p, _ in mine[1:]} - {pid}


def test_migration_drops_unsealed_encodings(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = migrate._config(eng)
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008_breach_packed_blocks")
        conn.execute(sa.text("INSERT INTO breach_encodings (tenant_id, patient_id, key_version, "
                             "clk, blocks) VALUES ('lab_a', 'pt_1', 1, :c, :b)"),
                     {"c": b"\x01" * 256, "b": b"\x02" * 8})
        command.upgrade(cfg, "0016_breach_sealed_encodings")
        cols = {c["name"] for c in sa.inspect(conn).get_columns("breach_encodings")}
        assert cols == {"tenant_id", "patient_id", "key_version", "sealed"}
        assert conn.execute(sa.text("SELECT count(*) FROM breach_encodings")).scalar() == 0
        command.downgrade(cfg, "0008_breach_packed_blocks")
        cols = {c["name"] for c in sa.inspect(conn).get_columns("breach_encodings")}
        assert cols == {"tenant_id", "patient_id", "key_version", "clk", "blocks"}
    eng.dispose()
    migrate.upgrade(make_engine(f"sqlite:///{tmp_path / 'm.db'}"))

