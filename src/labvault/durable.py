"""Files that must outlive a power loss: the root key file, the shred log, signed audit
checkpoints, exports.

``fsync`` of a file makes its *bytes* durable, not its *name*: a file just created, or
renamed over an older one, may be missing (or be the older one) after a crash until its
directory is synced too (POSIX; ext4 and XFS commit such metadata seconds later). For the
root key file that window is the worst one: a root rotated in the file, tenant keys
re-wrapped under it and committed, then a power loss that brings back the *previous*
key file — and nothing opens any more."""

from __future__ import annotations

import os
from pathlib import Path


def sync_directory(path: Path) -> None:
    """Make the entries of directory ``path`` (files created, renamed or removed in it)
    durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: Path, path: Path) -> None:
    """``os.replace`` whose result survives a crash (``tmp`` already synced)."""
    os.replace(tmp, path)
    sync_directory(path.parent)
