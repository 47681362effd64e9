"""The core: one ``Labvault`` object per process, holding the store, the key ring and
the gate. Doors (CLI, API, MLLP, web) get one from ``Labvault.open`` and call its
services; they never touch ``store`` or ``crypto`` themselves.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import Connection, Engine

from labvault import durable
from labvault.config import Settings
from labvault.crypto import KeyProvider, KeyRing
from labvault.crypto.providers.file import FileKeyProvider
from labvault.errors import ConfigurationError, KeyUnavailable, RootKeyMissing
from labvault.services.gate import (
    AlertSink,
    AuditHook,
    BudgetHook,
    Gate,
    LogAlerts,
    MemoryAudit,
    NoBudget,
    OperatorOnlyPolicy,
    Policy,
)
from labvault.store import migrate
from labvault.store import repositories as repo
from labvault.store.engine import SYNCHRONOUS, durability_warnings, make_engine, savepoint

log = logging.getLogger("labvault.store")


def _engine_args(settings: Settings) -> tuple[int, str]:
    """The SQLite settings of the engine (checkpoint pages, synchronous), refused at start
    when malformed."""
    return (settings.whole_number("LABVAULT_SQLITE_CHECKPOINT_PAGES"),
            settings.choice("LABVAULT_SQLITE_SYNCHRONOUS", SYNCHRONOUS))


def open_provider(settings: Settings, create: bool = False) -> KeyProvider:
    if settings.key_provider == "file":
        assert settings.key_file is not None
        if create and not settings.key_file.exists():
            return FileKeyProvider.create(settings.key_file)
        return FileKeyProvider(settings.key_file)
    if settings.key_provider == "pkcs11":
        from labvault.crypto.providers.pkcs11 import Pkcs11KeyProvider
        if not settings.pkcs11_module:
            raise ConfigurationError("LABVAULT_PKCS11_MODULE is not set",
                                     "set it to the path of your HSM's PKCS#11 module")
        return Pkcs11KeyProvider(settings.pkcs11_module, settings.pkcs11_token,
                                 settings.pkcs11_pin, create=create)
    raise ConfigurationError(f"unknown key provider {settings.key_provider}", "use file or pkcs11")


def _check_places(settings: Settings) -> None:
    """The data directory is a directory, and the root key file is outside it: a copy of
    the data directory (a backup, a stolen disk image) must not carry the key."""
    data_dir = settings.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigurationError(f"the data directory {data_dir} is a file",
                                 "choose a directory (--data-dir / LABVAULT_DATA_DIR)")
    if settings.key_provider != "file" or settings.key_file is None:
        return
    key, data = settings.key_file.resolve(), data_dir.resolve()   # symlinks followed
    if key == data or key.is_relative_to(data):
        raise ConfigurationError(
            f"the key file {settings.key_file} is inside the data directory {data_dir}",
            "keep it beside, never inside (the default is <data dir>.key), or on another "
            "volume: set LABVAULT_KEY_FILE")


class ShredLogFile:
    """Append-only log of erased patients, kept beside the database (not in it), so
    restoring an older database backup replays the erasures (DESIGN §5)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, tenant_id: str, patient_id: str, at: datetime) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"tenant_id": tenant_id, "patient_id": patient_id,
                           "at": at.isoformat()}) + "\n"
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:     # the erasure is committed next: the log's name must be on disk too
            durable.sync_directory(self.path.parent)

    def entries(self) -> Iterator[tuple[str, str, datetime]]:
        if not self.path.exists():
            return
        with self.path.open() as fh:
            for raw in fh:
                if raw.strip():
                    d = json.loads(raw)
                    yield d["tenant_id"], d["patient_id"], datetime.fromisoformat(d["at"])


class TxObserver(Protocol):
    """Learns how each ``Labvault.begin`` transaction ended (the audit log uses it to write
    refusals again after they rolled back, and to sign checkpoints only once committed)."""

    def tx_begin(self) -> None: ...

    def tx_flush(self, conn: Connection) -> None:
        """The outermost transaction's body is done: last writes, before it commits."""

    def tx_end(self, lv: Labvault, committed: bool, savepoint: bool) -> None: ...


class Labvault:
    def __init__(self, settings: Settings, engine: Engine, keyring: KeyRing,
                 policy: Policy | None = None, budget: BudgetHook | None = None,
                 audit: AuditHook | None = None, alerts: AlertSink | None = None,
                 bound: Connection | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.keyring = keyring
        self._bound = bound
        # The transaction open in this context (thread / request), so that service calls
        # made inside ``with lv.begin()`` join it instead of opening a second one.
        self._tx: ContextVar[Connection | None] = ContextVar(f"labvault_tx_{id(self)}",
                                                              default=None)
        # SQLite has one writer: transactions of this process queue on a lock instead of
        # spinning in SQLite's busy handler (which sleeps up to 100 ms per retry).
        self._write_lock: threading.Lock | None = (
            threading.Lock() if engine.dialect.name == "sqlite" else None)
        # Tenants whose key versions were checked in the open transaction (checked once).
        self._tx_keys: ContextVar[set[str] | None] = ContextVar(f"labvault_txk_{id(self)}",
                                                                default=None)
        # Each tenant's current index key version as the latest check read it
        # (``load_tenant_keys``): what ``current_index_version`` answers.
        self._index_versions: dict[str, int] = {}
        self.shred_log = ShredLogFile(settings.data_dir / "shred.log")
        self.tx_observers: list[TxObserver] = []
        self.close_hooks: list[Callable[[], None]] = []   # run by close(), before the engine goes
        self.alerts: AlertSink = alerts or LogAlerts()
        self.gate = Gate(keyring, policy or OperatorOnlyPolicy(), budget or NoBudget(),
                         audit or MemoryAudit(), self.load_tenant_keys)
        from labvault.services.guard import GuardService
        self.gate.alerts = self.alerts
        from labvault.services.keys import KeyService
        from labvault.services.lab import LabService
        from labvault.services.patients import PatientService
        from labvault.services.tenants import TenantService
        self.tenants = TenantService(self)
        self.patients = PatientService(self)
        self.keys = KeyService(self)
        self.guard = GuardService(self)
        self.lab = LabService(self)
        from labvault.services.delivery import DeliveryService
        self.delivery = DeliveryService(self)
        from labvault.services.accounts import AccountService; self.accounts = AccountService(self)  # noqa: E702, I001
        from labvault.services.breach import BreachService
        self.breach = BreachService(self)
        from labvault.services.backup import BackupService
        self.backups = BackupService(self)
        from labvault.services.merge import MergeService
        self.merges = MergeService(self)

    # -- life cycle --------------------------------------------------------------------
    @staticmethod
    def init(settings: Settings) -> Labvault:
        """Create the data directory, the root key (if absent) and the schema."""
        engine_args = _engine_args(settings)        # checked before anything is written
        _check_places(settings)
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(settings.data_dir, 0o700)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the data directory {settings.data_dir}: {exc.strerror}",
                "choose a directory you may write (--data-dir / LABVAULT_DATA_DIR)") from None
        engine = make_engine(settings.database_url, *engine_args)
        # Over data sealed under a root key, a fresh one (a new key file, a key generated in
        # another token) would sit where the lost one was expected and open nothing.
        holds_data = repo.holds_tenant_keys(engine)
        try:
            provider = open_provider(settings, create=not holds_data)
        except RootKeyMissing as exc:
            engine.dispose()
            raise type(exc)(exc.where, holds_data) from None
        migrate.upgrade(engine)
        return Labvault(settings, engine, KeyRing(provider))

    @staticmethod
    def open(settings: Settings, **hooks: Any) -> Labvault:
        """Open an initialised installation; fails closed without its key provider."""
        if settings.is_sqlite and not (settings.data_dir / "labvault.db").exists() \
                and settings.database_url.endswith(str(settings.data_dir / "labvault.db")):
            raise ConfigurationError(f"no labvault data in {settings.data_dir}",
                                     "run `labvault init` first (or `labvault demo`)")
        engine = make_engine(settings.database_url, *_engine_args(settings))
        try:
            provider = open_provider(settings)
        except RootKeyMissing as exc:   # the hint depends on whether data is sealed under it
            holds_data = repo.holds_tenant_keys(engine)
            engine.dispose()
            raise type(exc)(exc.where, holds_data) from None
        for warning in durability_warnings(engine):
            log.warning(warning)
        migrate.upgrade(engine)
        lv = Labvault(settings, engine, KeyRing(provider), **hooks)
        lv.replay_shred_log()
        return lv

    @property
    def bound(self) -> bool:
        """Running on one caller-owned connection (tests): no background threads."""
        return self._bound is not None

    def close(self) -> None:
        for hook in self.close_hooks:
            hook()
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction: everything inside commits together or not at all.

        Re-entrant: a ``begin()`` inside another one (in the same thread or request)
        joins the enclosing transaction, so a door can make several service calls
        all-or-nothing (a FHIR transaction Bundle, an HL7 message); observers see one
        transaction. They learn how it ended after its connection, the SQLite write lock
        and the context are released (the audit log opens a new transaction then).
        """
        outer = self._tx.get()
        if outer is not None:
            yield outer
            return
        observers = tuple(self.tx_observers)
        for o in observers:
            o.tx_begin()
        try:
            with self._transaction() as conn:
                yield conn
                for o in observers:
                    o.tx_flush(conn)
        except BaseException:
            for o in observers:
                o.tx_end(self, False, self._bound is not None)
            raise
        for o in observers:
            o.tx_end(self, True, self._bound is not None)

    @contextmanager
    def savepoint(self) -> Iterator[Connection]:
        """A part of the open transaction that rolls back alone (a savepoint): several
        independent units of work in one commit (the MLLP group commit). Observers see
        it as a nested transaction: refusals recorded inside survive its rollback."""
        conn = self._tx.get()
        if conn is None:
            raise RuntimeError("savepoint() needs an open transaction (inside lv.begin())")
        observers = tuple(self.tx_observers)
        for o in observers:
            o.tx_begin()
        try:
            with savepoint(conn):
                yield conn
        except BaseException:
            for o in observers:
                o.tx_end(self, False, True)
            raise
        for o in observers:
            o.tx_end(self, True, True)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self._bound is not None:
            with self._bound.begin_nested():
                token, ktoken = self._tx.set(self._bound), self._tx_keys.set(set())
                try:
                    yield self._bound
                finally:
                    self._tx_keys.reset(ktoken)
                    self._tx.reset(token)
            return
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self.engine.begin() as conn:
                token, ktoken = self._tx.set(conn), self._tx_keys.set(set())
                try:
                    yield conn
                finally:
                    self._tx_keys.reset(ktoken)
                    self._tx.reset(token)
        finally:
            if lock is not None:
                lock.release()

    # -- keys ---------------------------------------------------------------------------
    def load_tenant_keys(self, conn: Connection, tenant_id: str) -> None:
        checked = self._tx_keys.get() if self._tx.get() is conn else None
        if checked is not None and tenant_id in checked:
            return   # already checked in this transaction
        # The current index key too: another process may have rotated it (`keys rotate
        # --index`) while this one still holds the KEK.
        kek, index = repo.kek_and_index_versions(conn, tenant_id)
        if index is not None:
            self._index_versions[tenant_id] = index
        if (self.keyring.is_loaded(tenant_id, "kek", kek or 0)
                and (index is None or self.keyring.is_loaded(tenant_id, "index", index))):
            if checked is not None:
                checked.add(tenant_id)
            return
        records = repo.tenant_key_records(conn, tenant_id)
        if not records:
            raise KeyUnavailable(f"tenant {tenant_id} has no keys",
                                 "check the tenant id (`labvault tenant list`)")
        for rec in records:
            self.keyring.load(rec)
        if checked is not None:
            checked.add(tenant_id)

    def current_index_version(self, conn: Connection, tenant_id: str) -> int:
        """The tenant's current index key version, as this transaction sees it (read
        once per transaction with the key check: no statement of its own after that)."""
        self.load_tenant_keys(conn, tenant_id)
        version = self._index_versions.get(tenant_id)
        if version is None:
            raise KeyUnavailable(f"tenant {tenant_id} has no index key",
                                 "check the tenant id (`labvault tenant list`)")
        return version

    # -- shredding ----------------------------------------------------------------------
    def replay_shred_log(self) -> int:
        """Re-apply erasures recorded outside the database (after restoring a backup)."""
        entries = list(self.shred_log.entries())
        if not entries:
            return 0
        with self.begin() as conn:
            # Judge by what the database still holds (a data key, index rows or sealed
            # blobs), not by its own copy of the log: a restored backup may hold both an
            # old key row and no record of the erasure, or a partial restore may bring
            # a key row back next to a logged erasure.
            live = repo.unshredded(conn, [(t, p) for t, p, _ in entries])
            todo = [(t, p, at) for t, p, at in entries if (t, p) in live]
            for tenant_id, patient_id, at in todo:
                repo.shred_patient(conn, tenant_id, patient_id, at)
                for erase_hook in self.patients.erase_hooks:   # e.g. breach-matching encodings
                    erase_hook(conn, tenant_id, patient_id)
        return len(todo)

    def now(self) -> datetime:
        return datetime.now(UTC)
