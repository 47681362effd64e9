"""``labvault backup``: a consistent copy of the embedded database, taken while labvault
runs, checked before it is given its name, and never holding the root key.

What a backup is worth to a thief is what the database is worth: sealed values, keyed
digests, random ids. What it is worth to the laboratory depends on two checks made here,
on the copy itself: SQLite's ``integrity_check``, and every tenant key in the copy
unwrapping under the current root key — a backup that the key provider cannot open is
found out today, not on the day of the restore.

PostgreSQL installations back up with ``pg_dump`` (docs/cli.md); this module refuses them
with that advice rather than half-doing it."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine

from labvault import durable
from labvault.crypto import KeyRing
from labvault.domain.actors import Actor
from labvault.domain.categories import Action
from labvault.errors import UserError
from labvault.services.gate import Access
from labvault.store import repositories as repo

if TYPE_CHECKING:
    from labvault.services.app import Labvault


class BackupService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def create(self, actor: Actor, dest: Path) -> dict[str, Any]:
        """Copy the database into ``dest`` (a directory, made 0700 if absent) as
        ``labvault-<UTC time>.db`` with the shred log beside it; returns what was written
        and checked. The copy is a snapshot of one moment (SQLite's online backup: writers
        go on meanwhile) and appears under its name only once synced and checked."""
        lv = self.lv
        settings = lv.settings
        if not settings.is_sqlite:
            raise UserError(
                "labvault backup copies the embedded SQLite database; this installation "
                "uses PostgreSQL",
                "use pg_dump --format=custom (the dump holds only sealed values, docs/cli.md) "
                "and keep the root key's own backup somewhere else")
        dest = dest.expanduser().absolute()
        if dest.exists() and not dest.is_dir():
            raise UserError(f"{dest} is not a directory", "give a directory for the backups")
        key_dir = settings.key_file.parent if settings.key_provider == "file" and \
            settings.key_file is not None else None
        if key_dir is not None and dest.resolve() == key_dir.resolve():
            raise UserError(
                f"{dest} holds the root key file ({settings.key_file.name})",  # type: ignore[union-attr]
                "put backups in another directory: a backup kept with its key is a database "
                "in clear for whoever copies that directory")
        with lv.begin() as conn:
            lv.gate.check(conn, Access(actor, Action.EXPORT, None, frozenset(),
                                       purpose="backup", resource="tenant"))
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        n = 1
        while (dest / f"labvault-{stamp}.db").exists():     # two in the same second
            n += 1
            stamp = f"{stamp.split('-')[0]}-{n}"
        final = dest / f"labvault-{stamp}.db"
        partial = dest / f".labvault-{stamp}.db.partial"
        try:
            self._copy(partial)
            report = self._check(partial)
            durable.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        digest, size = _sha256(final)
        shred = self._copy_shred_log(dest / f"labvault-{stamp}.shred.log")
        result = {"file": str(final), "bytes": size, "sha256": digest, **report,
                  "shred_log": str(shred) if shred else None,
                  "root_key": ("not in the backup: keep a copy of "
                               f"{settings.key_file} apart from it" if key_dir is not None
                               else "not in the backup: it stays in the PKCS#11 token")}
        with lv.begin() as conn:
            lv.gate.audit.event(conn, actor, "backup.create", "success", None,
                                {"file": final.name, "sha256": digest, "bytes": size,
                                 "patients": report["patients"]})
        return result

    def check(self, actor: Actor, file: Path) -> dict[str, Any]:
        """A restore drill without the restore: is ``file`` (a backup, possibly moved and
        copied back since) sound, does it open with the current root key, and how many
        of its patients the installation's shred log will erase again if it is restored."""
        lv = self.lv
        file = file.expanduser().absolute()
        if not file.is_file():
            raise UserError(f"{file} is not a file", "give a backup made by labvault backup "
                                                     "create (labvault-<time>.db)")
        with lv.begin() as conn:
            lv.gate.check(conn, Access(actor, Action.READ, None, frozenset(),
                                       purpose="backup", resource="tenant"))
        try:
            report = self._check(file)
            with _read_only(file) as con:
                keyed = set(con.execute("SELECT tenant_id, patient_id FROM patient_keys"))
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{file} is not a labvault database ({exc})",
                            "give a backup made by labvault backup create") from None
        erased = {(t, p) for t, p, _ in lv.shred_log.entries()}
        digest, size = _sha256(file)
        result = {"file": str(file), "bytes": size, "sha256": digest, **report,
                  "erased_again_on_restore": len(keyed & erased)}
        with lv.begin() as conn:
            lv.gate.audit.event(conn, actor, "backup.check", "success", None,
                                {"file": file.name, "sha256": digest, "bytes": size})
        return result

    def _copy(self, target: Path) -> None:
        raw = self.lv.engine.raw_connection()
        try:
            source = raw.driver_connection
            assert isinstance(source, sqlite3.Connection)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            out = sqlite3.connect(target)
            try:
                # pages=-1: the whole database in one step, so the copy is one snapshot
                # (in steps, a write between them would restart the copy)
                source.backup(out, pages=-1)
                # one self-contained file: no -wal beside it to lose when it is moved
                mode = out.execute("PRAGMA journal_mode=DELETE").fetchone()
                assert mode == ("delete",), mode
            finally:
                out.close()
        finally:
            raw.close()
        with open(target, "rb") as fh:
            os.fsync(fh.fileno())

    def _check(self, path: Path) -> dict[str, Any]:
        with _read_only(path) as con:
            problems = [r[0] for r in con.execute("PRAGMA integrity_check")]
            tenants = con.execute("SELECT count(*) FROM tenants").fetchone()[0]
            patients = con.execute("SELECT count(*) FROM patients").fetchone()[0]
        if problems != ["ok"]:
            raise UserError(f"the copy failed SQLite's integrity check: {problems[:3]}",
                            "check the disk of the data directory and of the destination; "
                            "nothing was kept")
        # read-only and without the engine's pragmas (which would turn the copy back to WAL)
        engine = create_engine("sqlite://", creator=lambda: _connect_read_only(path))
        try:
            with engine.connect() as conn:
                records = repo.all_tenant_key_records(conn)
        finally:
            engine.dispose()
        ring = KeyRing(self.lv.keyring.provider)    # its own: the running keys stay as they are
        for record in records:
            try:
                ring.load(record)
            except Exception as exc:
                raise UserError(
                    f"tenant key {record.tenant_id}/{record.purpose} v{record.version} in the "
                    f"copy does not open with the current root key ({type(exc).__name__})",
                    "the key provider no longer holds a root this database needs; nothing "
                    "was kept") from exc
        return {"integrity": "ok", "tenants": tenants, "patients": patients,
                "tenant_keys_checked": len(records)}

    def _copy_shred_log(self, target: Path) -> Path | None:
        """The erasures up to now, so that a restore of this copy alone cannot bring back
        an erased patient (the installation's own log, newer, is still what counts)."""
        source = self.lv.settings.data_dir / "shred.log"
        if not source.exists():
            return None
        with open(source, "rb") as src, open(os.open(target, os.O_WRONLY | os.O_CREAT |
                                                     os.O_EXCL, 0o600), "wb") as out:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        durable.sync_directory(target.parent)
        return target


def _connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    con = _connect_read_only(path)
    try:
        yield con
    finally:
        con.close()


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
