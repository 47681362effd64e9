"""``labvault backup``: a consistent copy of the database, taken while labvault runs,
checked before it is given its name, and never holding the root key.

What a backup is worth to a thief is what the database is worth: sealed values, keyed
digests, random ids. What it is worth to the laboratory depends on two checks made here,
on the copy itself: its integrity, and every tenant key in it unwrapping under the current
root key — a backup that the key provider cannot open is found out today, not on the day
of the restore.

Two formats, one per backend: the embedded SQLite database is copied with SQLite's online
backup (``labvault-<time>.db``); a PostgreSQL schema is dumped with ``pg_dump
--format=custom`` (``labvault-<time>.dump``), which the standard ``pg_restore`` restores.
Both are read back with their own tools (``integrity_check``; ``pg_restore``) for the
checks."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, text

from labvault import durable
from labvault.crypto import KeyRing, WrappedTenantKey
from labvault.domain.actors import Actor
from labvault.domain.categories import Action
from labvault.errors import UserError
from labvault.services.gate import Access
from labvault.store import repositories as repo
from labvault.store import repositories_audit as arepo

if TYPE_CHECKING:
    from labvault.services.app import Labvault

SQLITE_MAGIC = b"SQLite format 3\x00"
DUMP_MAGIC = b"PGDMP"            # pg_dump's custom format
NOT_A_BACKUP = "give a backup made by labvault backup create (labvault-<time>.db or .dump)"


@dataclass(frozen=True)
class _Contents:
    """What the checks need from a backup, whatever its format."""

    tenants: int
    patients: int
    keyed: frozenset[tuple[str, str]]         # (tenant, patient) holding a data key
    tenant_keys: list[WrappedTenantKey]
    audit_heads: dict[str, int]               # chain -> entries written (its next seq)


class BackupService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def create(self, actor: Actor, dest: Path) -> dict[str, Any]:
        """Back the database up into ``dest`` (a directory, made 0700 if absent) as
        ``labvault-<UTC time>.db`` (SQLite) or ``.dump`` (PostgreSQL), the shred log
        beside it; returns what was written and checked. The copy is one moment's
        snapshot (writers go on meanwhile) and appears under its name only once synced
        and checked."""
        lv = self.lv
        settings = lv.settings
        dest = Path(os.path.abspath(dest.expanduser()))   # "../x" shown as the place it is
        if dest.exists() and not dest.is_dir():
            raise UserError(f"{dest} is not a directory", "give a directory for the backups")
        key_file = settings.key_file if settings.key_provider == "file" else None
        if key_file is not None and dest.resolve() == key_file.parent.resolve():
            raise UserError(
                f"{dest} holds the root key file ({key_file.name})",
                "put backups in another directory: a backup kept with its key is a database "
                "in clear for whoever copies that directory")
        dump = None
        if not settings.is_sqlite:
            dump = _tool("pg_dump")
            _tool("pg_restore")     # the archive is read back with it: say so before dumping
        with lv.begin() as conn:
            lv.gate.check(conn, Access(actor, Action.EXPORT, None, frozenset(),
                                       purpose="backup", resource="tenant"))
        try:
            dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise _unwritable(dest, exc) from None
        suffix = ".db" if dump is None else ".dump"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        n = 1
        while (dest / f"labvault-{stamp}{suffix}").exists():     # two in the same second
            n += 1
            stamp = f"{stamp.split('-')[0]}-{n}"
        final = dest / f"labvault-{stamp}{suffix}"
        partial = dest / f".labvault-{stamp}{suffix}.partial"
        try:
            if dump is None:
                self._copy_sqlite(partial)
            else:
                self._dump_postgresql(dump, partial)
            with open(partial, "rb") as fh:
                os.fsync(fh.fileno())
            report = self._verify(_read(partial))
            durable.replace(partial, final)
        except (OSError, sqlite3.Error) as exc:    # full disk, permissions: nothing is kept
            raise _unwritable(dest, exc) from None
        finally:
            partial.unlink(missing_ok=True)
        digest, size = _sha256(final)
        shred = self._copy_shred_log(dest / f"labvault-{stamp}.shred.log")
        result = {"file": str(final), "bytes": size, "sha256": digest, **report,
                  "shred_log": str(shred) if shred else None,
                  "root_key": (f"not in the backup: keep a copy of {key_file} apart from it"
                               if key_file is not None
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
        file = Path(os.path.abspath(file.expanduser()))
        if not file.is_file():
            raise UserError(f"{file} is not a file", NOT_A_BACKUP)
        with lv.begin() as conn:
            lv.gate.check(conn, Access(actor, Action.READ, None, frozenset(),
                                       purpose="backup", resource="tenant"))
        try:
            contents = _read(file)
        except OSError as exc:
            raise UserError(f"cannot read {file}: {exc.strerror}", NOT_A_BACKUP) from None
        report = self._verify(contents)
        erased = {(t, p) for t, p, _ in lv.shred_log.entries()}
        with lv.engine.connect() as conn:
            live = {h["tenant_id"]: int(h["next_seq"]) for h in arepo.heads(conn)}
        digest, size = _sha256(file)
        signed = _signed_sizes(lv, set(live))
        # chains the signed checkpoints say are longer than the backup's: restored, they
        # refuse audited actions until `labvault audit acknowledge-restore`
        acknowledge = {chain: n - contents.audit_heads.get(chain, 0)
                       for chain, n in sorted(signed.items())
                       if n > contents.audit_heads.get(chain, 0)}
        result = {"file": str(file), "bytes": size, "sha256": digest, **report,
                  "erased_again_on_restore": len(contents.keyed & erased),
                  # what `audit verify` will report missing after restoring this backup
                  "audit_entries_lost_on_restore": sum(
                      max(0, n - contents.audit_heads.get(chain, 0))
                      for chain, n in live.items()),
                  "audit_entries_to_acknowledge": sum(acknowledge.values()),
                  "audit_chains_to_acknowledge": list(acknowledge)}
        with lv.begin() as conn:
            lv.gate.audit.event(conn, actor, "backup.check", "success", None,
                                {"file": file.name, "sha256": digest, "bytes": size})
        return result

    # -- writing -----------------------------------------------------------------------
    def _copy_sqlite(self, target: Path) -> None:
        raw = self.lv.engine.raw_connection()
        try:
            source = raw.driver_connection
            assert isinstance(source, sqlite3.Connection)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
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

    def _dump_postgresql(self, pg_dump: str, target: Path) -> None:
        """``pg_dump`` of labvault's schema only (the server may hold other schemas), in
        one snapshot (pg_dump's own serializable transaction)."""
        with self.lv.engine.connect() as conn:
            schema = str(conn.execute(text("SELECT current_schema()")).scalar())
        url = self.lv.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
        # created 0600 here: pg_dump writes into it and keeps the mode (its own is 0644)
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        done = subprocess.run(    # noqa: S603 - pg_dump from PATH, arguments are ours
            [pg_dump, "--format=custom", "--no-owner", f"--schema={schema}",
             f"--file={target}", f"--dbname={url}"], capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"pg_dump failed: {done.stderr.strip()[-300:]}",
                            "pg_dump must be of the server's major version or newer "
                            "(apt-get install postgresql-client); nothing was kept")

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

    # -- checking ----------------------------------------------------------------------
    def _verify(self, contents: _Contents) -> dict[str, Any]:
        ring = KeyRing(self.lv.keyring.provider)    # its own: the running keys stay as they are
        for record in contents.tenant_keys:
            try:
                ring.load(record)
            except Exception as exc:
                raise UserError(
                    f"tenant key {record.tenant_id}/{record.purpose} v{record.version} in the "
                    f"backup does not open with the current root key ({type(exc).__name__})",
                    "the key provider no longer holds a root this database needs; a new "
                    "backup would not be kept either") from exc
        return {"integrity": "ok", "tenants": contents.tenants, "patients": contents.patients,
                "tenant_keys_checked": len(contents.tenant_keys)}


def _signed_sizes(lv: Labvault, chains: set[str]) -> dict[str, int]:
    """Per chain, the size of the latest signed checkpoint of its history (what a
    restored chain is compared with before anything is appended to it)."""
    from labvault.audit.log import AuditLog
    audit = lv.gate.audit
    if not isinstance(audit, AuditLog):
        return {}
    out: dict[str, int] = {}
    for chain in chains | set(audit.checkpoints.tenants()):
        latest = audit.checkpoints.read_history(chain)[0].latest
        if latest is not None:
            out[chain] = latest.tree_size
    return out


def _read(path: Path) -> _Contents:
    with open(path, "rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    if head.startswith(SQLITE_MAGIC):
        return _read_sqlite(path)
    if head.startswith(DUMP_MAGIC):
        return _read_dump(path)
    raise UserError(f"{path} is not a labvault backup (neither a SQLite database nor a "
                    "pg_dump archive)", NOT_A_BACKUP)


def _read_sqlite(path: Path) -> _Contents:
    try:
        with _read_only(path) as con:
            problems = [r[0] for r in con.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise UserError(f"{path.name} fails SQLite's integrity check: {problems[:3]}",
                                "check the disk it was written to; nothing was kept")
            tenants = con.execute("SELECT count(*) FROM tenants").fetchone()[0]
            patients = con.execute("SELECT count(*) FROM patients").fetchone()[0]
            keyed = frozenset(con.execute("SELECT tenant_id, patient_id FROM patient_keys"))
            heads = dict(con.execute("SELECT tenant_id, next_seq FROM audit_heads"))
        # read-only and without the engine's pragmas (which would turn a copy back to WAL)
        engine = create_engine("sqlite://", creator=lambda: _connect_read_only(path))
        try:
            with engine.connect() as conn:
                records = repo.all_tenant_key_records(conn)
        finally:
            engine.dispose()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path} is not a labvault database ({exc})", NOT_A_BACKUP) from None
    return _Contents(tenants, patients, keyed, records, heads)


def _read_dump(path: Path) -> _Contents:
    """Read back through ``pg_restore`` (the archive's own reader: a truncated or corrupt
    archive fails there), the four tables the checks need as COPY text."""
    pg_restore = _tool("pg_restore")
    tables = ("tenants", "patients", "patient_keys", "tenant_keys", "audit_heads")
    done = subprocess.run(    # noqa: S603 - pg_restore from PATH, arguments are ours
        [pg_restore, "--data-only", *(f"--table={t}" for t in tables), "--file=-", str(path)],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{path.name} does not read back with pg_restore: "
                        f"{done.stderr.strip()[-300:]}", "check the disk it was written to; "
                        "nothing was kept")
    rows = _copy_blocks(done.stdout)
    if set(rows) != set(tables):
        raise UserError(f"{path.name} is a pg_dump archive without labvault's tables",
                        NOT_A_BACKUP)
    def v(row: dict[str, str | None], column: str) -> str:
        value = row.get(column)
        if value is None:      # NOT NULL in labvault's schema: not an archive of ours
            raise UserError(f"{path.name}: {column} missing in a row", NOT_A_BACKUP)
        return value
    keys = [WrappedTenantKey(v(r, "tenant_id"), v(r, "purpose"), int(v(r, "version")),
                             v(r, "root_id"), bytes.fromhex(v(r, "wrapped")[2:]),
                             datetime.fromisoformat(v(r, "created_at")))
            for r in rows["tenant_keys"] if r.get("wrapped") is not None]
    return _Contents(len(rows["tenants"]), len(rows["patients"]),
                     frozenset((v(r, "tenant_id"), v(r, "patient_id"))
                               for r in rows["patient_keys"]), keys,
                     {v(r, "tenant_id"): int(v(r, "next_seq")) for r in rows["audit_heads"]})


_COPY = re.compile(r'COPY (?:"?\w+"?\.)?"?(\w+)"? \(([^)]*)\) FROM stdin;')
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "\\": "\\"}


def _copy_blocks(sql: str) -> dict[str, list[dict[str, str | None]]]:
    """The ``COPY ... FROM stdin`` blocks of a plain-text restore script, as rows of
    column -> text (``None`` for NULL). PostgreSQL's COPY text format: tab-separated,
    ``\\N`` for NULL, backslash escapes (a bytea reads ``\\x<hex>`` once unescaped)."""
    out: dict[str, list[dict[str, str | None]]] = {}
    lines = iter(sql.splitlines())
    for line in lines:
        m = _COPY.match(line)
        if not m:
            continue
        cols = [c.strip().strip('"') for c in m.group(2).split(",")]
        rows = out.setdefault(m.group(1), [])
        for data in lines:
            if data == "\\.":
                break
            rows.append({c: None if v == "\\N" else
                         _UNESCAPE.sub(lambda e: _ESCAPES.get(e.group(1), e.group(1)), v)
                         for c, v in zip(cols, data.split("\t"), strict=True)})
    return out


def _unwritable(dest: Path, exc: Exception) -> UserError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UserError(f"cannot write the backup in {dest}: {reason}",
                     "choose a directory labvault may write to, with room for a copy of the "
                     "database; nothing was kept")


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise UserError(f"{name} is not installed: a PostgreSQL backup is a {name} archive",
                        "apt-get install postgresql-client (of the server's major version)")
    return found


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
