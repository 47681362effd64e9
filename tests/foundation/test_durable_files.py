"""Files that must outlive a power loss are synced by name, not only by content: after a
file is created or renamed into place, its directory is synced too (``labvault.durable``).

Checked on the system calls themselves: ``os.fsync`` and ``os.replace`` are recorded with
the path each descriptor names, and every such file must be followed by a sync of its
directory *after* its final name exists."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from labvault.audit.checkpoints import CheckpointStore, SigningKey
from labvault.crypto.providers.file import FileKeyProvider
from labvault.services.app import ShredLogFile
from tests.durability import Events, durable


def test_the_root_key_file_created_and_rotated(tmp_path: Path, events: Events) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    assert durable(events, path)
    events.clear()
    provider.rotate_root()          # tenant keys get re-wrapped under the new root next
    assert durable(events, path)


def test_the_shred_log_when_it_is_created(tmp_path: Path, events: Events) -> None:
    log = ShredLogFile(tmp_path / "var" / "shred.log")
    log.append("lab_1", "pt_1", datetime.now(UTC))
    assert durable(events, log.path)
    events.clear()
    log.append("lab_1", "pt_2", datetime.now(UTC))
    assert events == [("fsync", str(log.path.resolve()))]   # an append: its bytes only


def test_signed_audit_checkpoints_and_their_key(tmp_path: Path, events: Events) -> None:
    key = SigningKey(tmp_path / "root.key.audit-signing")
    store = CheckpointStore(tmp_path / "checkpoints", key)
    cp = store.write("lab_1", 10, b"r" * 32, b"l" * 32, [b"f" * 32])
    assert durable(events, key.path)
    assert cp.path is not None and durable(events, cp.path)


def test_the_recorder_sees_a_missing_directory_sync(tmp_path: Path, events: Events) -> None:
    """The check above can fail: a plain fsync-then-rename is not enough for it."""
    path = tmp_path / "f.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
    os.fsync(fd)
    os.close(fd)
    os.replace(tmp, path)
    assert not durable(events, path)
