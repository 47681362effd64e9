"""The schema protects every area's tables:

- the Alembic migrations build exactly ``store/schema.py``'s metadata (no diff), on
  SQLite and PostgreSQL;
- every table keys on ``tenant_id`` first (DESIGN §8), except the platform-level tables
  listed below with their reason;
- no clear (non-sealed) column has a name that says personal data;
- identifiers are strings (random ids), never auto-incremented integers.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Date, DateTime, LargeBinary, String, Table, text

from labvault.store import migrate
from labvault.store.engine import make_engine
from labvault.store.schema import metadata
from tests.foundation.conftest import _pg_schema_url

# Alembic cannot reflect SQLite's expression indexes and skips comparing them (the audit
# patient index; tests/audit/test_schema.py checks it).
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*expression-based index .?ix_audit_entries_patient_bucket")

# Tables that belong to no laboratory. Each entry says why; adding one is a design decision.
PLATFORM_TABLES: dict[str, str] = {}

# Clear columns whose name looks personal but is not, with the reason.
CLEAR_NAME_ALLOWED: dict[tuple[str, str], str] = {
    ("tenants", "name"): "a laboratory's name is a public fact about a legal entity",
}

PERSONAL = re.compile(
    r"(^|_)(name|names|surname|firstname|lastname|email|e_mail|mail|phone|tel|mobile|nir|ssn|"
    r"ins|address|street|city|postal|zip|birth|dob|born|sex|gender|password|secret|note|notes|"
    r"comment|text|diagnos\w*|insurer|amo|amc|member)($|_)")
# A clear timestamp is allowed (workflow times, DESIGN §4) unless it is a birth date.
PERSONAL_DATE = re.compile(r"(^|_)(birth|dob|born)($|_)")


def _diff(url: str, **engine_kw: Any) -> list[Any]:
    eng = make_engine(url, **engine_kw)
    try:
        migrate.upgrade(eng)
        with eng.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={
                "compare_type": True, "compare_server_default": True})
            return list(compare_metadata(ctx, metadata))
    finally:
        eng.dispose()


def test_migrations_match_metadata_sqlite(tmp_path: Path) -> None:
    assert _diff(f"sqlite:///{tmp_path / 'm.db'}") == []


def test_migrations_match_metadata_postgres(pg_schema: str) -> None:
    assert _diff(_pg_schema_url(pg_schema)) == []


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(eng)
    migrate.upgrade(eng)
    assert migrate.is_current(eng)
    with eng.connect() as c:
        tables = {r[0] for r in c.execute(text("select name from sqlite_master where type='table'"))}
    eng.dispose()
    assert set(metadata.tables) <= tables


def _tables() -> list[Table]:
    return sorted(metadata.tables.values(), key=lambda t: t.name)


@pytest.mark.parametrize("table", _tables(), ids=lambda t: t.name)
def test_tenant_id_first_in_primary_key(table: Table) -> None:
    pk = [c.name for c in table.primary_key.columns]
    assert pk, f"{table.name} has no primary key"
    if table.name in PLATFORM_TABLES:
        assert "tenant_id" not in pk[:1], f"{table.name} is listed as platform-level but keys on tenant"
        return
    assert pk[0] == "tenant_id", (
        f"{table.name}: primary key {pk} must start with tenant_id (or be listed in "
        "PLATFORM_TABLES with a reason)")


def _clear(col: Column[Any]) -> bool:
    return not isinstance(col.type, LargeBinary)


@pytest.mark.parametrize("table", _tables(), ids=lambda t: t.name)
def test_no_clear_personal_columns(table: Table) -> None:
    bad = [c.name for c in table.columns
           if _clear(c) and (PERSONAL_DATE if isinstance(c.type, DateTime | Date) else PERSONAL)
           .search(c.name.lower()) and (table.name, c.name) not in CLEAR_NAME_ALLOWED]
    assert not bad, (f"{table.name}: clear columns {bad} look like personal data; seal them "
                     "(LargeBinary through the gate) or rename them")


@pytest.mark.parametrize("table", _tables(), ids=lambda t: t.name)
def test_ids_are_random_strings(table: Table) -> None:
    for c in table.columns:
        if c.name == "id" or c.name.endswith("_id"):
            assert isinstance(c.type, String), f"{table.name}.{c.name} must be a string id"
    assert table.autoincrement_column is None, f"{table.name} has an auto-incremented key"


def test_rules_catch_violations() -> None:
    """The checks above can fail: a table breaking each rule is caught."""
    from sqlalchemy import Integer, MetaData, PrimaryKeyConstraint
    m = MetaData()
    t = Table("bad", m, Column("id", Integer, primary_key=True), Column("tenant_id", String(40)),
              Column("patient_email", String(200)), Column("birth_date_sealed", LargeBinary),
              Column("password_changed_at", DateTime), Column("last_seen_at", DateTime))
    with pytest.raises(AssertionError):
        test_tenant_id_first_in_primary_key(t)
    with pytest.raises(AssertionError, match=r"\['patient_email'\]"):
        test_no_clear_personal_columns(t)
    with pytest.raises(AssertionError, match="date_of_birth"):
        test_no_clear_personal_columns(Table("bad2", m, Column("date_of_birth", Date)))
    with pytest.raises(AssertionError):
        test_ids_are_random_strings(t)
    ok = Table("ok", m, Column("tenant_id", String(40)), Column("x_id", String(40)),
               Column("identity", LargeBinary), PrimaryKeyConstraint("tenant_id", "x_id"))
    test_tenant_id_first_in_primary_key(ok)
    test_no_clear_personal_columns(ok)
    test_ids_are_random_strings(ok)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=1)),
                                               timezone(timedelta(hours=-9, minutes=-30)),
                                               ZoneInfo("Europe/Paris")])))
@example(datetime(2030, 3, 31, 2, 0, tzinfo=ZoneInfo("Europe/Paris")))   # in the DST gap
@example(datetime(2000, 3, 26, 2, 0, tzinfo=ZoneInfo("Europe/Paris"), fold=1))  # gap, fold=1
def test_timestamps_come_back_as_the_same_utc_instant(lv: Any, when: datetime) -> None:
    """QA finding 12: on SQLite as on PostgreSQL, a timestamp column gives back an aware
    time, the very instant written (whatever offset it was written with), in UTC: no door
    ever gets a naive time to print as if it were local. Core statements and the plain-SQL
    hot path (``store.driver_sql``) alike."""
    from sqlalchemy import delete, insert, select

    from labvault.store.driver_sql import select_rows, select_sql
    from labvault.store.schema import shred_log
    with lv.begin() as conn:
        conn.execute(delete(shred_log).where(shred_log.c.tenant_id == "lab_tz"))
        conn.execute(insert(shred_log).values(tenant_id="lab_tz", patient_id="pt_tz",
                                              shredded_at=when))
        core = conn.execute(select(shred_log.c.shredded_at).where(
            shred_log.c.tenant_id == "lab_tz")).scalar_one()
        plain = select_rows(conn, shred_log, select_sql(shred_log, "tenant_id = {p}"),
                            ("lab_tz",))[0]["shredded_at"]
        # one microsecond before, as an instant: Python's aware arithmetic is wall-clock
        # time, so "02:00 (fold=1) - 1 µs" in a DST gap is an hour off (2000-03-26, Paris)
        before = when.astimezone(UTC) - timedelta(microseconds=1)
        later = conn.execute(select(shred_log.c.patient_id).where(
            shred_log.c.shredded_at > before)).scalars().all()
        conn.execute(delete(shred_log).where(shred_log.c.tenant_id == "lab_tz"))
    # (compared in UTC: a local time in a DST gap never equals another zone's, PEP 495)
    for got in (core, plain):
        assert got == when.astimezone(UTC) and got.utcoffset() == timedelta(0), (when, got)
    assert later == ["pt_tz"]                # compared as instants in SQL too
