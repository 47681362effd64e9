"""Key rotation keeps every patient readable; erasure (crypto-shredding) makes a patient
unreadable and unfindable — also after restoring a database backup taken before the
erasure, because opening replays the shred log kept outside the database."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select

from labvault.domain.actors import Actor
from labvault.errors import NotFound
from labvault.services.app import Labvault
from labvault.store.schema import blind_index, patient_keys, patients, shred_log, tenant_keys
from labvault.store.tables_breach import breach_encodings
from tests.foundation.conftest import Cli, synthetic, write_ndjson

N = 40


def _setup(cli: Cli, n: int = N) -> tuple[str, list[dict[str, Any]], list[str]]:
    tenant = cli.init_with_tenant()
    recs = synthetic(n, seed=53)
    report = cli.ok("patient", "import", str(write_ndjson(cli.root / "p.ndjson", recs)),
                    "--tenant", tenant)
    assert report["imported"] == n
    lv = cli.open()
    try:
        ids = [lv.patients.find(Actor.operator(), tenant, nir=r["nir"])[0] for r in recs]
    finally:
        lv.close()
    return tenant, recs, ids


def _all_readable(cli: Cli, recs: list[dict[str, Any]], ids: list[str]) -> None:
    lv = cli.open()
    try:
        for r, pid in zip(recs, ids, strict=True):
            shown = lv.patients.show(Actor.operator(), pid)
            cov = {k: x for k, x in r["coverage"].items() if x is not None}
            assert (shown["nir"], shown["email"], shown["coverage"]) == (
                r["nir"], r["email"], cov)
    finally:
        lv.close()


def test_kek_rotation_keeps_every_patient_readable(cli: Cli) -> None:
    tenant, recs, ids = _setup(cli)
    lv = cli.open()
    with lv.begin() as conn:
        before = {r[0]: bytes(r[1]) for r in conn.execute(
            select(patients.c.patient_id, patients.c.identity))}
    lv.close()
    out = cli.ok("keys", "rotate", "--tenant", tenant)
    assert out["rotated"][0]["kek_version"] == 2
    assert out["rotated"][0]["rewrapped_keys"] == N
    out = cli.ok("keys", "rotate")  # all tenants
    assert out["rotated"][0]["kek_version"] == 3
    _all_readable(cli, recs, ids)
    lv = cli.open()
    with lv.begin() as conn:
        after = {r[0]: bytes(r[1]) for r in conn.execute(
            select(patients.c.patient_id, patients.c.identity))}
        kek_versions = set(conn.execute(select(patient_keys.c.kek_version)).scalars())
        old_keks = conn.execute(select(func.count()).select_from(tenant_keys).where(
            tenant_keys.c.purpose == "kek", tenant_keys.c.wrapped.is_not(None),
            tenant_keys.c.version < 3)).scalar()
    lv.close()
    assert after == before  # data was not re-sealed: only the DEK wrappings changed
    assert kek_versions == {3}
    assert old_keks == 0    # retired KEKs are destroyed, not kept around


def test_root_rotation_keeps_every_patient_readable(cli: Cli) -> None:
    _tenant, recs, ids = _setup(cli)
    out = cli.ok("keys", "rotate", "--root")
    assert out["rotated"]["root_id"] == "root-2"
    assert out["rotated"]["rewrapped_tenant_keys"] >= 3
    _all_readable(cli, recs, ids)
    lv = cli.open()
    with lv.begin() as conn:
        roots = set(conn.execute(select(tenant_keys.c.root_id).where(
            tenant_keys.c.wrapped.is_not(None))).scalars())
    lv.close()
    assert roots == {"root-2"}


def _assert_erased(lv: Labvault, tenant: str, rec: dict[str, Any], pid: str) -> None:
    op = Actor.operator()
    with pytest.raises(NotFound):
        lv.patients.show(op, pid)
    assert lv.patients.find(op, tenant, nir=rec["nir"]) == []
    assert lv.patients.find(op, tenant, email=rec["email"]) == []
    assert lv.patients.find(op, tenant, phone=rec["phone"]) == []
    assert lv.patients.find(op, tenant, birth_name=rec["birth_name"],
                            first_name=rec["first_names"][0], birth_date=rec["birth_date"]) == []
    with lv.begin() as conn:
        assert conn.execute(select(func.count()).select_from(patient_keys).where(
            patient_keys.c.patient_id == pid)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(breach_encodings).where(
            breach_encodings.c.patient_id == pid)).scalar() == 0    # breach encodings too
        assert conn.execute(select(func.count()).select_from(blind_index).where(
            blind_index.c.patient_id == pid)).scalar() == 0
        row = conn.execute(select(patients).where(patients.c.patient_id == pid)).mappings().one()
        assert row["status"] == "erased"
        assert (row["identity"], row["contact"], row["coverage"], row["clinical"]) == (
            None, None, None, None)


def test_erase_then_restore_sqlite_backup(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    tenant, recs, ids = _setup(cli)
    backup = cli.root / "backup.db"
    src, dst = sqlite3.connect(cli.db_file), sqlite3.connect(backup)
    src.backup(dst)   # an online backup taken before the erasure
    src.close()
    dst.close()
    out = cli.ok("patient", "erase", ids[3])
    assert out["id"] == ids[3]
    lv = cli.open()
    _assert_erased(lv, tenant, recs[3], ids[3])
    lv.close()
    assert ids[3] in (cli.data_dir / "shred.log").read_text()

    # Restore the old database file (the shred log beside it is kept).
    for suffix in ("-wal", "-shm"):
        (cli.data_dir / f"labvault.db{suffix}").unlink(missing_ok=True)
    backup.replace(cli.db_file)
    con = sqlite3.connect(cli.db_file)
    assert con.execute("select count(*) from patient_keys where patient_id = ?",
                       (ids[3],)).fetchone() == (1,)   # the backup still held the key...
    con.close()
    lv = cli.open()                                    # ...until opening replays the log
    try:
        _assert_erased(lv, tenant, recs[3], ids[3])
        assert lv.patients.show(Actor.operator(), ids[4])["nir"] == recs[4]["nir"]
    finally:
        lv.close()
    cli.user_error("patient", "show", ids[3])


@pytest.mark.parametrize("restore", ["whole-rows", "key-row-only"])
def test_erase_then_restore_postgres(request: pytest.FixtureRequest, tmp_path: Any,
                                     restore: str) -> None:
    from tests.foundation.conftest import make_cli
    cli = make_cli("postgres", tmp_path, request)
    tenant, recs, ids = _setup(cli, 10)
    pid = ids[2]
    lv = cli.open()
    with lv.begin() as conn:   # "backup": the rows as they were before the erasure
        saved = {t.name: [dict(r) for r in conn.execute(
            select(t).where(t.c.patient_id == pid)).mappings()]
            for t in (patients, patient_keys, blind_index)}
    lv.close()
    cli.ok("patient", "erase", pid)
    lv = cli.open()
    with lv.begin() as conn:   # "restore" the backup over the live database
        if restore == "whole-rows":
            conn.execute(delete(patients).where(patients.c.patient_id == pid))
            conn.execute(delete(shred_log).where(shred_log.c.patient_id == pid))
            conn.execute(insert(patients), saved["patients"])
            conn.execute(insert(blind_index), saved["blind_index"])
        conn.execute(insert(patient_keys), saved["patient_keys"])
    lv.close()
    lv = cli.open()
    try:
        _assert_erased(lv, tenant, recs[2], pid)
        assert lv.patients.show(Actor.operator(), ids[1])["nir"] == recs[1]["nir"]
    finally:
        lv.close()


def test_erase_is_idempotent_and_unknown_ids_are_clear(cli: Cli) -> None:
    _tenant, _recs, ids = _setup(cli, 3)
    cli.ok("patient", "erase", ids[0])
    r = cli.user_error("patient", "erase", ids[0])
    assert "no such patient" in r.stderr
    r = cli.user_error("patient", "show", "pt_doesnotexist")
    assert "no such patient" in r.stderr
