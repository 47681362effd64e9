"""``LABVAULT_SQLITE_CHECKPOINT_PAGES`` reaches SQLite's ``wal_autocheckpoint`` and
``LABVAULT_SQLITE_SYNCHRONOUS`` its ``synchronous`` (FULL unless told: a commit that
returned is on disk); a bad value in them or in the audit settings stops the start with a
message (nothing opened)."""

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


# PRAGMA synchronous reads back 2 for FULL, 1 for NORMAL
@pytest.mark.parametrize(("value", "want"), [(None, 2), ("", 2), ("full", 2), ("NORMAL", 1)])
def test_synchronous_reaches_every_sqlite_connection(tmp_path: Path, value: str | None,
                                                     want: int) -> None:
    env = {} if value is None else {"LABVAULT_SQLITE_SYNCHRONOUS": value}
    Labvault.init(_settings(tmp_path, **env)).close()
    lv = Labvault.open(_settings(tmp_path, **env))
    try:
        # every pooled connection, not only the first: the writer and the readers alike
        conns = [lv.engine.connect() for _ in range(3)]
        assert [c.execute(text("PRAGMA synchronous")).scalar() for c in conns] == [want] * 3
        for c in conns:
            c.close()
    finally:
        lv.close()


@pytest.mark.parametrize("value", ["off", "extra", "yes"])
def test_bad_synchronous_is_refused(tmp_path: Path, value: str) -> None:
    """OFF is not offered: a commit-before-ACK that the OS may not have written is no
    commit-before-ACK."""
    with pytest.raises(ConfigurationError, match="LABVAULT_SQLITE_SYNCHRONOUS"):
        Labvault.init(_settings(tmp_path, LABVAULT_SQLITE_SYNCHRONOUS=value))
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


def test_a_postgresql_server_that_does_not_sync_commits_is_named() -> None:
    """``synchronous_commit=off`` (here for this session only, through libpq's options)
    makes an acknowledged commit losable: opening says so; the server's default does not."""
    from labvault.store.engine import durability_warnings, make_engine
    from tests.conftest import PG_URL, require_pg
    require_pg()
    fine = make_engine(PG_URL)
    lossy = make_engine(PG_URL, connect_args={"options": "-csynchronous_commit=off"})
    try:
        assert durability_warnings(fine) == []
        (warning,) = durability_warnings(lossy)
        assert "synchronous_commit=off" in warning and "set synchronous_commit=on" in warning
    finally:
        fine.dispose()
        lossy.dispose()
    assert durability_warnings(make_engine("sqlite://")) == []


def test_opening_logs_the_durability_warnings(tmp_path: Path, pg_schema: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import PG_URL
    url = f"{PG_URL}?options=-csearch_path%3D{pg_schema}%20-csynchronous_commit%3Doff"
    Labvault.init(_settings(tmp_path, LABVAULT_DATABASE_URL=url)).close()
    with caplog.at_level("WARNING", logger="labvault.store"):
        Labvault.open(_settings(tmp_path, LABVAULT_DATABASE_URL=url)).close()
    assert any("synchronous_commit=off" in r.getMessage() for r in caplog.records)
