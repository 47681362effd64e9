"""``LABVAULT_SQLITE_CHECKPOINT_PAGES`` reaches SQLite's ``wal_autocheckpoint``; a bad
number in it or in the audit settings stops the start with a message (nothing opened)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from labvault.config import Settings
from labvault.errors import ConfigurationError
from labvault.services.app import Labvault


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(tmp_path / "var", env={"LABVAULT_KEY_FILE": str(tmp_path / "k"),
                                                    **env})


@pytest.mark.parametrize(("value", "want"), [(None, 1000), ("", 1000), ("8000", 8000)])
def test_checkpoint_pages_reach_sqlite(tmp_path: Path, value: str | None, want: int) -> None:
    env = {} if value is None else {"LABVAULT_SQLITE_CHECKPOINT_PAGES": value}
    lv = Labvault.init(_settings(tmp_path, **env))
    try:
        with lv.engine.connect() as conn:
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == want
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        lv.close()


@pytest.mark.parametrize("value", ["0", "-5", "lots"])
def test_bad_checkpoint_pages_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigurationError, match="LABVAULT_SQLITE_CHECKPOINT_PAGES"):
        Labvault.init(_settings(tmp_path, LABVAULT_SQLITE_CHECKPOINT_PAGES=value))
    assert not (tmp_path / "var").exists() and not (tmp_path / "k").exists()   # nothing made


@pytest.mark.parametrize(("name", "value"), [("LABVAULT_AUDIT_READ_GROUP_MS", "soon"),
                                             ("LABVAULT_AUDIT_CHECKPOINT_EVERY", "-1"),
                                             ("LABVAULT_AUDIT_RETENTION_DAYS", "1 year")])
def test_bad_audit_numbers_are_refused_with_a_message(tmp_path: Path, name: str,
                                                      value: str) -> None:
    from labvault.audit.log import AuditLog
    with pytest.raises(ConfigurationError, match=name):
        AuditLog(_settings(tmp_path, **{name: value}))
    assert AuditLog(_settings(tmp_path, **{name: "0"})) is not None   # 0: off / forever
