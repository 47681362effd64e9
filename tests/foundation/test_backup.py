"""``labvault backup``: a consistent, checked copy taken while labvault writes; no
plaintext and no key in it; restored, it opens with the installation's key and the shred
log erases again whoever was erased since; what it cannot do is refused with exit 2."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from labvault.crypto.providers.file import FileKeyProvider
from labvault.domain.actors import Actor
from labvault.errors import NotFound, UserError
from tests.conftest import IN_CI
from tests.foundation.conftest import Cli, synthetic, write_ndjson


def require_pg_dump() -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        msg = "pg_dump not installed (apt-get install postgresql-client; .ci/run does it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def assert_restored(cli: Cli, erased: str, kept: str) -> None:
    """The restored installation opens; the patient erased since the backup stays erased."""
    lv = cli.open()
    try:
        with pytest.raises(NotFound):
            lv.patients.show(Actor.operator(), erased)
        assert lv.patients.show(Actor.operator(), kept)["id"] == kept
    finally:
        lv.close()


def _installed(cli: Cli, n: int = 5) -> tuple[str, list[dict[str, object]], list[str]]:
    tenant = cli.init_with_tenant()
    recs = synthetic(n, seed=47)
    cli.ok("patient", "import", str(write_ndjson(cli.root / "p.ndjson", recs)), "--tenant", tenant)
    ids = [cli.ok("patient", "find", "--tenant", tenant, "--nir", str(r["nir"]))["patients"][0]
           for r in recs]
    return tenant, recs, ids


def test_a_backup_is_checked_sealed_and_keyless(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    _tenant, recs, _ids = _installed(cli)
    out = cli.ok("backup", "create", str(cli.root / "elsewhere" / ".." / "backups"))
    file = Path(out["file"])                     # the place itself, not the way to it
    assert file.parent == cli.root / "backups" and file.name.startswith("labvault-")
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    assert [p.name for p in file.parent.iterdir()] == [file.name]    # no partial, no -wal
    assert out["integrity"] == "ok" and out["patients"] == 5 and out["tenants"] == 1
    assert out["tenant_keys_checked"] >= 2 and str(cli.key_file) in out["root_key"]
    raw = file.read_bytes()
    import hashlib
    assert out["sha256"] == hashlib.sha256(raw).hexdigest() and out["bytes"] == len(raw)
    for r in recs:
        for value in (r["birth_name"], r["nir"], r["email"]):
            assert str(value).encode() not in raw
    assert cli.key_file.read_bytes() not in raw
    # the copy is self-contained (no write-ahead log to carry) and a valid database
    con = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    # the operator's backup is in the audit trail, with the file's digest
    report = cli.ok("audit", "report", "--user", Actor.operator().id)
    assert out["sha256"] in str(report)


def test_a_restored_backup_opens_and_stays_erased(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    _tenant, _recs, ids = _installed(cli)
    file = Path(cli.ok("backup", "create", str(cli.root / "backups"))["file"])
    cli.ok("patient", "erase", ids[0])          # after the backup
    cli.ok("audit", "checkpoint")               # signed, outside the database
    drill = cli.ok("backup", "check", str(file))   # before restoring: what it would do
    assert drill["integrity"] == "ok" and drill["patients"] == 5
    assert drill["erased_again_on_restore"] == 1
    # the erasure, the checkpoint, the backup's own event... are after the backup's moment
    assert drill["audit_entries_lost_on_restore"] >= 3
    # the restore of docs/cli.md: labvault stopped, the database replaced by the copy
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cli.db_file}{suffix}").unlink(missing_ok=True)
    shutil.copy(file, cli.db_file)
    assert_restored(cli, erased=ids[0], kept=ids[1])   # the shred log replayed
    # what the restore lost is on record: the chain ends before the checkpoint
    r = cli.run("audit", "verify")
    assert r.exit_code == 1 and "truncated" in r.stdout, r.stdout


def test_a_backup_taken_while_patients_are_written_is_one_moment(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    tenant, _recs, _ids = _installed(cli, 2)
    lv = cli.open()
    stop, going = threading.Event(), threading.Event()

    def writer() -> None:
        for i, rec in enumerate(synthetic(400, seed=5, start=100)):
            if stop.is_set():
                return
            lv.patients.register(Actor.operator(), tenant, {**rec, "external_id": f"w{i}"})
            if i == 20:
                going.set()
    t = threading.Thread(target=writer)
    t.start()
    try:
        assert going.wait(60)                   # the copy starts amid the writes
        out = lv.backups.create(Actor.operator(), cli.root / "backups")
    finally:
        stop.set()
        t.join()
        lv.close()
    con = sqlite3.connect(f"file:{out['file']}?mode=ro", uri=True)
    try:
        patients = con.execute("SELECT count(*) FROM patients").fetchone()[0]
        keys = con.execute("SELECT count(*) FROM patient_keys").fetchone()[0]
        indexed = con.execute("SELECT count(DISTINCT patient_id) FROM blind_index").fetchone()[0]
    finally:
        con.close()
    # every patient in the copy came with its key and its index rows: no half transaction
    assert patients == out["patients"] == keys == indexed >= 2 + 21


def test_what_a_backup_refuses(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    _installed(cli, 1)
    (cli.root / "a-file").write_text("x")
    assert "is not a directory" in cli.user_error("backup", "create", str(cli.root / "a-file")).stderr
    r = cli.user_error("backup", "create", str(cli.root / "a-file" / "below"))
    assert "cannot write the backup in" in r.stderr and "nothing was kept" in " ".join(
        r.stderr.split())
    r = cli.user_error("backup", "create", str(cli.key_file.parent))      # beside the root key
    assert "holds the root key file" in r.stderr
    assert not list(cli.key_file.parent.glob("labvault-*.db"))


def test_a_copy_the_key_provider_cannot_open_is_not_kept(sqlite_cli: Cli,
                                                           tmp_path: Path) -> None:
    cli = sqlite_cli
    _installed(cli, 1)
    lv = cli.open()
    try:
        lv.keyring.provider = FileKeyProvider.create(tmp_path / "another.key")
        with pytest.raises(UserError, match="does not open with the current root key"):
            lv.backups.create(Actor.operator(), cli.root / "backups")
    finally:
        lv.close()
    assert list((cli.root / "backups").iterdir()) == []


def test_postgresql_backs_up_to_a_checked_pg_dump_archive(request: pytest.FixtureRequest,
                                                          tmp_path: Path) -> None:
    """The same promises on PostgreSQL, with pg_dump's custom format: one schema, checked
    through pg_restore, no plaintext in what it restores, and a restore that keeps the
    erasures."""

    from tests.foundation.conftest import make_cli
    require_pg_dump()
    cli = make_cli("postgres", tmp_path, request)
    _tenant, recs, ids = _installed(cli)
    out = cli.ok("backup", "create", str(cli.root / "backups"))
    file = Path(out["file"])
    assert file.suffix == ".dump" and stat.S_IMODE(file.stat().st_mode) == 0o600
    assert out["integrity"] == "ok" and out["patients"] == 5 and out["tenants"] == 1
    assert out["tenant_keys_checked"] >= 2
    script = subprocess.run(["pg_restore", "--file=-", str(file)], capture_output=True,
                            text=True, check=True).stdout
    assert f"CREATE SCHEMA {cli.schema}" in script and "COPY" in script
    for r in recs:
        for value in (r["birth_name"], r["nir"], r["email"]):
            assert str(value) not in script
    cli.ok("patient", "erase", ids[0])
    drill = cli.ok("backup", "check", str(file))
    assert drill["erased_again_on_restore"] == 1 and drill["audit_entries_lost_on_restore"] >= 2
    # restore: the schema gone, pg_restore brings it back; the shred log erases again
    _restore(cli, file)
    assert_restored(cli, erased=ids[0], kept=ids[1])


def test_a_pg_dump_archive_of_something_else_is_not_a_backup(sqlite_cli: Cli,
                                                            pg_schema: str) -> None:
    require_pg_dump()
    cli = sqlite_cli
    _installed(cli, 1)
    from sqlalchemy import text

    from labvault.store.engine import make_engine
    from tests.conftest import PG_URL
    eng = make_engine(PG_URL)
    with eng.begin() as c:
        c.execute(text(f'CREATE TABLE "{pg_schema}".things (k text)'))
    eng.dispose()
    other = cli.root / "other.dump"
    subprocess.run(["pg_dump", "--format=custom", f"--schema={pg_schema}", f"--file={other}",
                    f"--dbname={PG_URL}"], check=True, capture_output=True)
    assert "without labvault's tables" in cli.user_error("backup", "check", str(other)).stderr


def test_checking_what_is_not_a_backup(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    _installed(cli, 1)
    (cli.root / "notes.db").write_bytes(b"not a database at all" * 100)
    assert "is not a labvault backup" in cli.user_error(
        "backup", "check", str(cli.root / "notes.db")).stderr
    assert "is not a file" in cli.user_error("backup", "check", str(cli.root / "nope.db")).stderr


def test_a_backup_another_root_cannot_open_fails_its_check(sqlite_cli: Cli,
                                                           tmp_path: Path) -> None:
    cli = sqlite_cli
    _installed(cli, 1)
    file = cli.ok("backup", "create", str(cli.root / "backups"))["file"]
    lv = cli.open()
    try:
        lv.keyring.provider = FileKeyProvider.create(tmp_path / "another.key")
        with pytest.raises(UserError, match="does not open with the current root key"):
            lv.backups.check(Actor.operator(), Path(file))
    finally:
        lv.close()


def _restore(cli: Cli, file: Path) -> None:
    """docs/cli.md "Restore": labvault stopped, the database replaced by the backup."""
    if cli.backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{cli.db_file}{suffix}").unlink(missing_ok=True)
        shutil.copy(file, cli.db_file)
        cli.db_file.chmod(0o600)
        return
    from sqlalchemy import text

    from labvault.store.engine import make_engine
    from tests.conftest import PG_URL
    admin = make_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA "{cli.schema}" CASCADE'))
    admin.dispose()
    subprocess.run(["pg_restore", "--no-owner", f"--dbname={PG_URL}", str(file)],
                   capture_output=True, text=True, check=True)


def test_after_a_restore_the_trail_is_refused_acknowledged_and_goes_on(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """QA ops report, finding 2: after a restore, nothing reuses a lost position; the
    operator's signed acknowledgement re-anchors the chains, and `audit verify` reports
    what the restore lost for ever after, with exit 0."""
    import json

    from tests.foundation.conftest import make_cli
    if backend == "postgres":
        require_pg_dump()
    cli = make_cli(backend, tmp_path, request)
    tenant, recs, ids = _installed(cli)
    cli.ok("audit", "checkpoint")
    file = Path(cli.ok("backup", "create", str(cli.root / "backups"))["file"])
    cli.ok("patient", "show", ids[1])
    cli.ok("patient", "erase", ids[0])
    cli.ok("audit", "checkpoint")               # signed, outside the database: M entries
    m = cli.ok("audit", "verify", "--tenant", tenant)["chains"][0]["next_seq"]
    drill = cli.ok("backup", "check", str(file))
    assert tenant in drill["audit_chains_to_acknowledge"]
    assert drill["audit_entries_to_acknowledge"] >= 2
    _restore(cli, file)
    # 1. verify: the loss, unacknowledged, is a truncation (exit 1)
    r = cli.run("audit", "verify", "--tenant", tenant, "--json")
    res = json.loads(r.stdout)
    assert r.exit_code == 1 and res["failures"][0]["kind"] == "truncated", r.stdout
    n = res["chains"][0]["next_seq"]
    assert 0 < n < m and f"entries {n}..{m - 1} are missing" in res["failures"][0]["message"]
    assert "acknowledge-restore" in res["failures"][0]["message"]
    # 2. an audited action on that laboratory is refused, and names the way out
    nir = str(recs[2]["nir"])
    r = cli.user_error("patient", "find", "--tenant", tenant, "--nir", nir)
    err = " ".join(r.stderr.split())
    assert "restored from a backup" in err and "refused" in err
    assert f"labvault audit acknowledge-restore --tenant {tenant}" in err
    # ... so the lost positions are not reused: verify says the same as before
    again = json.loads(cli.run("audit", "verify", "--tenant", tenant, "--json").stdout)
    assert again["failures"][0]["message"] == res["failures"][0]["message"]
    # 3. the operator acknowledges (the checkpoint key signs a restore record)
    ack = cli.ok("audit", "acknowledge-restore", "--all", "--reason", "disque perdu, copie de "
                 "la veille restaurée")
    mine = next(c for c in ack["chains"] if c["tenant"] == tenant)
    assert mine["status"] == "acknowledged" and (mine["lost_from"], mine["lost_to"]) == (n, m)
    assert mine["anchored"] and mine["anchor"]["tree_size"] <= n and mine["epoch"] == 1
    # 4. verify: intact, with the loss as a warning (exit 0), printed and counted
    warning = f"entries {n}..{m - 1} lost at the restore acknowledged on"

    def verified() -> dict[str, object]:
        r = cli.run("audit", "verify")
        assert r.exit_code == 0 and "TAMPERED" not in r.stdout, r.stdout
        assert warning in " ".join(r.stdout.split()) and "disque perdu" in r.stdout
        out = cli.ok("audit", "verify", "--tenant", tenant)
        chain = out["chains"][0]
        assert out["ok"] and out["warnings"] >= 1 and chain["entries_lost_at_restores"] == m - n
        assert [(x["lost_from"], x["lost_to"]) for x in out["restores"]] == [(n, m)]
        assert any(w.startswith(warning) for w in chain["warnings"])
        assert out["restores"][0]["operator"] == Actor.operator().id
        return chain
    first = verified()
    assert first["next_seq"] == n + 1 and first["epoch"] == 1   # the acknowledgement, at n
    # 5. new audited actions go on at n+1, n+2...; a checkpoint of the new epoch; verify
    assert cli.ok("patient", "find", "--tenant", tenant, "--nir", nir)["patients"]
    cli.ok("patient", "show", ids[3])
    assert cli.ok("audit", "checkpoint")["ok"]
    chain = verified()
    assert chain["next_seq"] >= n + 3 and chain["latest_checkpoint"]["epoch"] == 1
    # an entry of the new epoch has its inclusion proof against the new checkpoint
    report = cli.ok("audit", "report", "--user", Actor.operator().id)
    mine_items = [i for i in report["items"] if i["tenant_id"] == tenant]
    newest = max(mine_items, key=lambda i: i["seq"])
    assert newest["seq"] > n and cli.ok("audit", "prove", newest["entry_id"])["verified"]
    # the acknowledgement is the first entry of the new epoch, its reason sealed
    acked = next(i for i in mine_items if i["action"] == "audit.restore-acknowledged")
    assert acked["seq"] == n and acked["detail"]["lost_to"] == m
    assert "disque perdu" in acked["sealed"]["reason"]
    # a second acknowledgement finds nothing to acknowledge
    again_ack = cli.ok("audit", "acknowledge-restore", "--tenant", tenant, "--reason", "x")
    assert again_ack["chains"][0]["status"] == "not-behind" and again_ack["acknowledged"] == 0
