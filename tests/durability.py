"""Recording ``os.fsync`` and ``os.replace`` to check that a file is durable by name
(tests/foundation/test_durable_files.py, the exports' test)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

Events = list[tuple[str, str]]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[Events]:
    seen: Events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        replace(src, dst)
        seen.append(("replace", str(Path(dst).resolve())))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    yield seen


def durable(events: Events, path: Path) -> bool:
    """``path``'s bytes synced, then (after any rename onto it) its directory synced."""
    path, parent = path.resolve(), str(path.resolve().parent)
    try:
        bytes_at = max(i for i, (kind, p) in enumerate(events)
                       if kind == "fsync" and p in (str(path), f"{path}.tmp",
                                                     str(path.with_suffix(".tmp"))))
    except ValueError:
        return False
    named_at = max([i for i, e in enumerate(events) if e == ("replace", str(path))],
                   default=bytes_at)
    return any(e == ("fsync", parent) for e in events[named_at + 1:])
