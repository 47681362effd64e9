"""Signed checkpoints, kept outside the database.

A checkpoint is one JSON file ``<data_dir>/checkpoints/<chain>/<tree_size>-<kind>.json``
holding the RFC 6962 Merkle root of a chain's first ``tree_size`` entries, its compact
range (frontier) and last leaf hash, the time, and an Ed25519 signature by the audit
signing key. The signing key is a file beside the root key file (never in the data
directory, never in the database), created at first use with mode 0600.

Kinds: ``checkpoint`` (periodic or on demand) and ``prune-anchor`` (written before
pruning: verification of the remaining entries starts from it).

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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labvault import durable
from labvault.crypto.digests import ed25519_generate, ed25519_sign, ed25519_verify, sha256
from labvault.errors import ConfigurationError, KeyUnavailable

FORMAT = "labvault-audit-checkpoint/1"
KEY_FORMAT = "labvault-audit-signing-key/1"
KINDS = ("checkpoint", "prune-anchor")


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

    def signed_fields(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": self.kind, "tenant": self.tenant,
                "tree_size": self.tree_size, "root": self.root.hex(),
                "last_leaf": self.last_leaf.hex(), "frontier": [h.hex() for h in self.frontier],
                "time": self.time.isoformat(), "key_id": self.key_id}

    def message(self) -> bytes:
        return json.dumps(self.signed_fields(), sort_keys=True, separators=(",", ":")).encode()

    def as_json(self) -> dict[str, Any]:
        return {**self.signed_fields(), "signature": base64.b64encode(self.signature).decode(),
                "file": str(self.path) if self.path else None}

    @staticmethod
    def from_json(doc: dict[str, Any], path: Path | None = None) -> Checkpoint:
        if doc.get("format") != FORMAT or doc.get("kind") not in KINDS:
            raise ValueError("not a labvault audit checkpoint")
        return Checkpoint(
            tenant=str(doc["tenant"]), tree_size=int(doc["tree_size"]),
            root=bytes.fromhex(doc["root"]), last_leaf=bytes.fromhex(doc["last_leaf"]),
            frontier=tuple(bytes.fromhex(h) for h in doc["frontier"]),
            time=datetime.fromisoformat(doc["time"]), kind=str(doc["kind"]),
            key_id=str(doc["key_id"]), signature=base64.b64decode(doc["signature"]), path=path)


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

    def _dir(self, tenant: str) -> Path:
        if not tenant or "/" in tenant or tenant.startswith("."):
            raise ValueError(f"bad chain id {tenant!r}")
        return self.directory / tenant

    def write(self, tenant: str, tree_size: int, root: bytes, last_leaf: bytes,
              frontier: Sequence[bytes], kind: str = "checkpoint",
              at: datetime | None = None) -> Checkpoint:
        self.key.ensure()
        key_id = self.key.key_id
        unsigned = Checkpoint(tenant, tree_size, root, last_leaf, tuple(frontier),
                              at or datetime.now(UTC), kind, key_id, b"")
        _, sig = self.key.sign(unsigned.message())
        d = self._dir(tenant)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.mkdir(exist_ok=True, mode=0o700)
        path = d / f"{tree_size:012d}-{kind}.json"
        cp = Checkpoint(unsigned.tenant, tree_size, root, last_leaf, tuple(frontier),
                        unsigned.time, kind, key_id, sig, path)
        if path.exists():  # same size, same kind: the same history is already anchored
            return self.read(path) or cp
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(cp.as_json() | {"file": None}, indent=1, sort_keys=True))
            fh.flush()
            os.fsync(fh.fileno())
        durable.replace(tmp, path)
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
        good.sort(key=lambda c: (c.tree_size, c.kind))
        return good, bad


def syslog_message(cp: Checkpoint, hostname: str | None = None) -> bytes:
    """RFC 5424: facility log audit (13), severity informational (6) -> PRI 110."""
    host = (hostname or socket.gethostname() or "-")[:255]
    ts = cp.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sd = (f'[labvault@32473 tenant="{cp.tenant}" size="{cp.tree_size}" '
          f'root="{cp.root.hex()}" kind="{cp.kind}"]')
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
