"""Signed checkpoints, kept outside the database.

A checkpoint is one JSON file ``<data_dir>/checkpoints/<chain>/<tree_size>-<kind>.json``
holding the RFC 6962 Merkle root of a chain's first ``tree_size`` entries, its compact
range (frontier) and last leaf hash, the time, and an Ed25519 signature by the audit
signing key. The signing key is a file beside the root key file (never in the data
directory, never in the database), created at first use with mode 0600.

Kinds: ``checkpoint`` (periodic or on demand), ``prune-anchor`` (written before
pruning: verification of the remaining entries starts from it) and ``restore`` (written by
``labvault audit acknowledge-restore``: the database was restored from a backup; the chain
goes on from the restored size in a new *epoch*, and the record says, signed, which
positions were lost, when, by whom and why).

Epochs. Every restore record opens the next epoch of its chain (1, 2, ...); checkpoints
written after it carry that epoch. The checkpoints of an earlier epoch stay: up to the
size where a later restore cut their history they describe the same entries as today's
chain and are checked against it; beyond, they describe entries that are lost and only
their lost range is reported (``History``).

Optionally each checkpoint is also forwarded as an RFC 5424 syslog message
(``LABVAULT_AUDIT_SYSLOG=udp://host:514`` or ``tcp://host:601``), so a copy lives on
another machine.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labvault import durable
from labvault.crypto.digests import ed25519_generate, ed25519_sign, ed25519_verify, sha256
from labvault.errors import ConfigurationError, KeyUnavailable, UserError

FORMAT = "labvault-audit-checkpoint/1"
KEY_FORMAT = "labvault-audit-signing-key/1"
KINDS = ("checkpoint", "prune-anchor", "restore")
RESTORE = "restore"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tenant: str
    tree_size: int
    root: bytes
    last_leaf: bytes
    frontier: tuple[bytes, ...]
    time: datetime
    kind: str
    key_id: str
    signature: bytes
    path: Path | None = None
    epoch: int = 0            # 0 until the chain's first acknowledged restore
    restore: dict[str, Any] | None = None    # a restore record's statement (kind "restore")

    def signed_fields(self) -> dict[str, Any]:
        out = {"format": FORMAT, "kind": self.kind, "tenant": self.tenant,
               "tree_size": self.tree_size, "root": self.root.hex(),
               "last_leaf": self.last_leaf.hex(), "frontier": [h.hex() for h in self.frontier],
               "time": self.time.isoformat(), "key_id": self.key_id}
        # absent in epoch 0: checkpoints written before restores existed verify unchanged
        if self.epoch:
            out["epoch"] = self.epoch
        if self.restore is not None:
            out["restore"] = self.restore
        return out

    def message(self) -> bytes:
        return json.dumps(self.signed_fields(), sort_keys=True, separators=(",", ":")).encode()

    def as_json(self) -> dict[str, Any]:
        return {**self.signed_fields(), "signature": base64.b64encode(self.signature).decode(),
                "file": str(self.path) if self.path else None}

    @staticmethod
    def from_json(doc: dict[str, Any], path: Path | None = None) -> Checkpoint:
        if doc.get("format") != FORMAT or doc.get("kind") not in KINDS:
            raise ValueError("not a labvault audit checkpoint")
        epoch = int(doc.get("epoch", 0))
        restore = doc.get("restore")
        if (epoch < 0 or (doc["kind"] == RESTORE) != isinstance(restore, dict)
                or (doc["kind"] == RESTORE and epoch < 1)):
            raise ValueError("malformed restore record")
        return Checkpoint(
            tenant=str(doc["tenant"]), tree_size=int(doc["tree_size"]),
            root=bytes.fromhex(doc["root"]), last_leaf=bytes.fromhex(doc["last_leaf"]),
            frontier=tuple(bytes.fromhex(h) for h in doc["frontier"]),
            time=datetime.fromisoformat(doc["time"]), kind=str(doc["kind"]),
            key_id=str(doc["key_id"]), signature=base64.b64decode(doc["signature"]), path=path,
            epoch=epoch, restore=restore)

    @property
    def lost_to(self) -> int:
        """A restore record: the end (exclusive) of the positions the restore lost."""
        return int((self.restore or {}).get("lost_to", self.tree_size))

    def describe(self) -> str:
        what = {"checkpoint": "checkpoint", "prune-anchor": "prune anchor",
                RESTORE: "restore record"}.get(self.kind, self.kind)
        return f"the {what} of {self.time.isoformat()}"


@dataclass(frozen=True, slots=True)
class History:
    """A chain's valid checkpoints read as epochs (``history``).

    ``lineage``: the checkpoints (and restore records, prune anchors) of the history the
    database's chain must hold today, each to be matched root for root at its size;
    ``partial``: checkpoints of a history lost at a restore, each with the size up to which
    it shares today's history (the perfect subtrees of its frontier below that size must
    match); ``restores``: the restore records by epoch; ``problems``: (position, what)
    when the records contradict each other or one is missing."""

    epoch: int = 0
    lineage: tuple[Checkpoint, ...] = ()
    partial: tuple[tuple[Checkpoint, int], ...] = ()
    restores: tuple[Checkpoint, ...] = ()
    problems: tuple[tuple[int, str], ...] = ()

    @property
    def latest(self) -> Checkpoint | None:
        """The largest checkpoint of today's history: the chain may not be shorter."""
        return max(self.lineage, key=lambda c: (c.tree_size, c.epoch), default=None)


def history(checkpoints: Iterable[Checkpoint], restore_at: int | None = None) -> History:
    """Read signature-checked checkpoints of one chain as epochs.

    Restore record *e* (restored size N_e) opens epoch *e*. A checkpoint of epoch *e*
    belongs to today's history when its size is at most every N_j of a later restore
    (j > e); beyond, the restores after it cut its history: only its prefix up to the
    smallest such N_j is shared with today's chain. ``restore_at`` reads the history as if
    a restore of that size were acknowledged now (what ``acknowledge-restore`` checks)."""
    unique = list({c.message(): c for c in checkpoints}.values())   # copies count once
    records: dict[int, Checkpoint] = {}
    problems: list[tuple[int, str]] = []
    for r in sorted((c for c in unique if c.kind == RESTORE), key=lambda c: c.epoch):
        if r.epoch in records:
            problems.append((min(r.tree_size, records[r.epoch].tree_size),
                             f"two restore records open epoch {r.epoch} "
                             f"({records[r.epoch].describe()} and {r.describe()})"))
            continue
        records[r.epoch] = r
    top = max((c.epoch for c in unique), default=0)
    for e in range(1, top + 1):
        if e not in records:
            at = min(c.tree_size for c in unique if c.epoch >= e)
            problems.append((at, f"no restore record opens epoch {e}, yet checkpoints of that "
                                 "epoch exist: a restore record was removed"))
    sizes = {e: r.tree_size for e, r in records.items()}
    if restore_at is not None:
        top += 1
        sizes[top] = restore_at
    cut: dict[int, int | None] = {}
    running: int | None = None
    for e in range(top, -1, -1):
        cut[e] = running
        if e in sizes:
            running = sizes[e] if running is None else min(running, sizes[e])
    lineage: list[Checkpoint] = []
    partial: list[tuple[Checkpoint, int]] = []
    for c in unique:
        limit = cut[c.epoch]
        if limit is None or c.tree_size <= limit:
            lineage.append(c)
        elif limit > 0:
            partial.append((c, limit))
    lineage.sort(key=lambda c: (c.tree_size, c.epoch, c.kind))
    partial.sort(key=lambda p: (p[0].tree_size, p[0].epoch, p[0].kind))
    return History(top, tuple(lineage), tuple(partial),
                   tuple(records[e] for e in sorted(records)), tuple(problems))


class SigningKey:
    """The Ed25519 checkpoint key, in a 0600 file beside the root key file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._private: bytes | None = None
        self._public: bytes | None = None

    def _load(self, create: bool) -> None:
        if self._public is not None:
            return
        if not self.path.exists():
            if not create:
                raise KeyUnavailable(f"audit signing key {self.path} not found",
                                     "it is created with the first checkpoint; restore it from "
                                     "your key backup if checkpoints already exist")
            private, public = ed25519_generate()
            doc = {"format": KEY_FORMAT, "private": base64.b64encode(private).decode(),
                   "public": base64.b64encode(public).decode()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it meanwhile
                self._load(create=False)
                return
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh)
                fh.flush()
                os.fsync(fh.fileno())
            durable.sync_directory(self.path.parent)
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise KeyUnavailable(f"audit signing key {self.path} is readable by group or others "
                                 f"(mode {mode:04o})", f"run `chmod 600 {self.path}`")
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("format") != KEY_FORMAT:
                raise ValueError("format")
            self._private = base64.b64decode(doc["private"], validate=True)
            self._public = base64.b64decode(doc["public"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyUnavailable(f"{self.path} is not a labvault audit signing key",
                                 "restore it from your key backup") from exc

    def ensure(self) -> None:
        """Create the key file at first use."""
        self._load(create=True)

    def require(self) -> None:
        """The key file must exist already (a restore record is never signed by a key
        made for the occasion: the checkpoints it relies on would no longer verify)."""
        self._load(create=False)

    @property
    def public(self) -> bytes:
        self._load(create=False)
        assert self._public is not None
        return self._public

    @property
    def key_id(self) -> str:
        return "ed25519:" + sha256(self.public).hex()[:16]

    def sign(self, message: bytes) -> tuple[str, bytes]:
        self._load(create=True)
        assert self._private is not None
        return self.key_id, ed25519_sign(self._private, message)

    def verify(self, cp: Checkpoint) -> bool:
        return cp.key_id == self.key_id and ed25519_verify(self.public, cp.signature, cp.message())


class CheckpointStore:
    def __init__(self, directory: Path, key: SigningKey, syslog: str = "") -> None:
        self.directory = directory
        self.key = key
        self.syslog = syslog
        # for the check before appends (``current``): each file read and verified once,
        # each chain's history kept while its directory is unchanged
        self._lock = threading.Lock()
        self._files: dict[Path, Checkpoint | None] = {}
        self._histories: dict[str, tuple[int, History]] = {}

    def _dir(self, tenant: str) -> Path:
        if not tenant or "/" in tenant or tenant.startswith("."):
            raise ValueError(f"bad chain id {tenant!r}")
        return self.directory / tenant

    def _signed(self, tenant: str, tree_size: int, root: bytes, last_leaf: bytes,
                frontier: Sequence[bytes], kind: str, at: datetime | None, epoch: int,
                restore: dict[str, Any] | None, path: Path) -> Checkpoint:
        key_id = self.key.key_id
        unsigned = Checkpoint(tenant, tree_size, root, last_leaf, tuple(frontier),
                              at or datetime.now(UTC), kind, key_id, b"", None, epoch, restore)
        _, sig = self.key.sign(unsigned.message())
        return Checkpoint(tenant, tree_size, root, last_leaf, tuple(frontier), unsigned.time,
                          kind, key_id, sig, path, epoch, restore)

    def _chain_dir(self, tenant: str) -> Path:
        d = self._dir(tenant)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.mkdir(exist_ok=True, mode=0o700)
        return d

    def write(self, tenant: str, tree_size: int, root: bytes, last_leaf: bytes,
              frontier: Sequence[bytes], kind: str = "checkpoint",
              at: datetime | None = None, epoch: int | None = None) -> Checkpoint:
        """Sign and write a checkpoint of the chain's current epoch (``epoch``, or the
        number of restore records of the chain)."""
        if kind == RESTORE:
            raise ValueError("restore records are written by write_restore")
        self.key.ensure()
        if epoch is None:
            epoch = self.current(tenant).epoch
        d = self._chain_dir(tenant)
        # epoch 0 keeps the names written before restores existed
        path = d / (f"{tree_size:012d}-{kind}.json" if not epoch
                    else f"{tree_size:012d}-{kind}-e{epoch}.json")
        cp = self._signed(tenant, tree_size, root, last_leaf, frontier, kind, at, epoch, None,
                          path)
        if path.exists():  # same size, kind and epoch: the same history is already anchored
            return self.read(path) or cp
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(cp.as_json() | {"file": None}, indent=1, sort_keys=True))
            fh.flush()
            os.fsync(fh.fileno())
        durable.replace(tmp, path)
        self.forget(tenant)
        if self.syslog:
            forward_syslog(self.syslog, cp)
        return cp

    def write_restore(self, tenant: str, tree_size: int, root: bytes, last_leaf: bytes,
                      frontier: Sequence[bytes], epoch: int,
                      statement: dict[str, Any]) -> Checkpoint:
        """Sign and write the restore record opening ``epoch``: ``restore-e<epoch>.json``,
        created only if absent (two acknowledgements never open the same epoch)."""
        self.key.require()
        d = self._chain_dir(tenant)
        path = d / f"restore-e{epoch:06d}.json"
        cp = self._signed(tenant, tree_size, root, last_leaf, frontier, RESTORE, None, epoch,
                          statement, path)
        tmp = d / f".restore-e{epoch:06d}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(cp.as_json() | {"file": None}, indent=1, sort_keys=True))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)          # atomic, and fails if the name exists
            except FileExistsError:
                raise UserError(f"a restore record of epoch {epoch} of chain {tenant} was "
                                "written meanwhile by another acknowledgement",
                                "run `labvault audit verify` to see it") from None
        finally:
            tmp.unlink(missing_ok=True)
        durable.sync_directory(d)
        self.forget(tenant)
        if self.syslog:
            forward_syslog(self.syslog, cp)
        return cp

    @staticmethod
    def read(path: Path) -> Checkpoint | None:
        try:
            return Checkpoint.from_json(json.loads(path.read_text()), path)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def tenants(self) -> list[str]:
        if not self.directory.exists():
            return []
        return sorted(p.name for p in self.directory.iterdir() if p.is_dir())

    def list(self, tenant: str) -> tuple[list[Checkpoint], list[str]]:
        """(valid checkpoints sorted by size, problems with files that do not verify)."""
        d = self._dir(tenant)
        good: list[Checkpoint] = []
        bad: list[str] = []
        if not d.exists():
            return good, bad
        for path in sorted(d.glob("*.json")):
            cp = self.read(path)
            if cp is None:
                bad.append(f"{path.name}: unreadable")
            elif cp.tenant != tenant:
                bad.append(f"{path.name}: belongs to chain {cp.tenant}")
            elif not self.key.verify(cp):
                bad.append(f"{path.name}: signature does not verify")
            else:
                good.append(cp)
        good.sort(key=lambda c: (c.tree_size, c.epoch, c.kind))
        return good, bad

    def read_history(self, tenant: str, restore_at: int | None = None
                     ) -> tuple[History, Sequence[Checkpoint], Sequence[str]]:
        """(``history`` of the valid checkpoints, those checkpoints, problem files)."""
        good, bad = self.list(tenant)
        return history(good, restore_at), good, bad

    def current(self, tenant: str) -> History:
        """The chain's history for the check before appends: files are read and their
        signatures verified once per process, and the history is kept while the
        directory does not change (a stat per call). ``verify`` reads everything again."""
        d = self._dir(tenant)
        try:
            mtime = d.stat().st_mtime_ns
        except FileNotFoundError:
            return History()
        with self._lock:
            hit = self._histories.get(tenant)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        good: list[Checkpoint] = []
        for path in d.glob("*.json"):
            with self._lock:
                known = path in self._files
                cp = self._files.get(path)
            if not known:
                cp = self.read(path)
                if cp is not None and (cp.tenant != tenant or not self.key.verify(cp)):
                    cp = None
                with self._lock:
                    self._files[path] = cp
            if cp is not None:
                good.append(cp)
        h = history(good)
        # a directory changed within the last moment may change again within the same
        # timestamp tick: keep its history only once it is older than that
        if time.time_ns() - mtime > 50_000_000:
            with self._lock:
                self._histories[tenant] = (mtime, h)
        return h

    def forget(self, tenant: str) -> None:
        with self._lock:
            self._histories.pop(tenant, None)


def syslog_message(cp: Checkpoint, hostname: str | None = None) -> bytes:
    """RFC 5424: facility log audit (13), severity informational (6) -> PRI 110."""
    host = (hostname or socket.gethostname() or "-")[:255]
    ts = cp.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sd = (f'[labvault@32473 tenant="{cp.tenant}" size="{cp.tree_size}" '
          f'root="{cp.root.hex()}" kind="{cp.kind}"'
          + (f' epoch="{cp.epoch}"' if cp.epoch else "") + "]")
    msg = json.dumps(cp.as_json() | {"file": None}, sort_keys=True, separators=(",", ":"))
    return f"<110>1 {ts} {host} labvault {os.getpid()} audit-checkpoint {sd} ".encode() \
        + b"\xef\xbb\xbf" + msg.encode()


def forward_syslog(url: str, cp: Checkpoint) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("udp", "tcp") or not parts.hostname:
        raise ConfigurationError(f"LABVAULT_AUDIT_SYSLOG={url!r} is not a syslog address",
                                 "use udp://host:514 or tcp://host:601")
    port = parts.port or (514 if parts.scheme == "udp" else 601)
    data = syslog_message(cp)
    if parts.scheme == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(data, (parts.hostname, port))
    else:  # RFC 6587 octet counting
        with socket.create_connection((parts.hostname, port), timeout=5) as s:
            s.sendall(f"{len(data)} ".encode() + data)
