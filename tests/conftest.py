"""Shared fixtures.

``lv`` is a ready core on each backend: SQLite (a copy of a migrated template file
per test) and PostgreSQL (one schema per test session, each test inside a transaction
rolled back at the end). With ``CI=true`` PostgreSQL is mandatory: an unreachable
server fails the run instead of skipping.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy import text
from sqlalchemy.engine import Engine

from labvault.config import Settings
from labvault.crypto import KeyRing
from labvault.crypto.providers.file import FileKeyProvider
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.store import migrate
from labvault.store.engine import make_engine
from tests.durability import events  # noqa: F401 - the fixture, for every test package

# Machines here are shared and loaded: no per-example deadline. CI runs the same examples
# every time (derandomize) so a landing never depends on a lucky draw; local runs explore.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.register_profile("dev", deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")

@pytest.fixture(autouse=True)
def _lab_open_around_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run whatever the hour: a lab is open every day, all day, unless a test sets
    its hours (``hours.*``). With the shipped default (07:00-20:00 Paris, Monday to
    Saturday) every read after 20:00 or on a Sunday raised an extra off-hours alert and
    tests counting alerts failed by the clock."""
    from labvault.guard import rules
    monkeypatch.setattr(rules, "DEFAULT_HOURS", {**rules.DEFAULT_HOURS, "hours.open": "00:00",
                                                 "hours.close": "23:59:59.999999",
                                                 "hours.days": "mon-sun"})


PG_URL = os.environ.get("LABVAULT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def pg_available() -> str | None:
    """None if PostgreSQL answers, else the reason."""
    try:
        eng = make_engine(PG_URL)
        with eng.connect() as c:
            c.execute(text("select 1"))
        eng.dispose()
        return None
    except Exception as exc:  # any driver error means "not reachable"
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}"


def require_pg() -> None:
    reason = pg_available()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests are mandatory)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lv")


@pytest.fixture(scope="session")
def root_key_file(session_dir: Path) -> Path:
    path = session_dir / "root.key"
    FileKeyProvider.create(path)
    return path


@pytest.fixture(scope="session")
def sqlite_template(session_dir: Path) -> Path:
    path = session_dir / "template.db"
    eng = make_engine(f"sqlite:///{path}")
    migrate.upgrade(eng)
    with eng.connect() as c:
        c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    eng.dispose()
    return path


@contextmanager
def private_schema(prefix: str) -> Iterator[str]:
    """A PostgreSQL schema of its own (named after ``prefix``, this process and a random
    part: xdist workers never share one), dropped with everything in it at the end."""
    require_pg()
    schema = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    admin = make_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def schema_engine(schema: str, migrated: bool = True) -> Engine:
    """An engine whose connections work in ``schema`` (migrated to the heads)."""
    eng = make_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    if migrated:
        migrate.upgrade(eng)
    return eng


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[Engine]:
    with private_schema("lvt") as schema:
        eng = schema_engine(schema)
        yield eng
        eng.dispose()


def make_settings(data_dir: Path, url: str, key_file: Path) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(data_dir=data_dir, database_url=url, key_file=key_file)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def lv(backend: str, request: pytest.FixtureRequest, tmp_path: Path, root_key_file: Path,
       sqlite_template: Path) -> Iterator[Labvault]:
    """A core with the default (strict) hooks on the test's backend."""
    if backend == "sqlite":
        db = tmp_path / "var" / "labvault.db"
        db.parent.mkdir(parents=True)
        shutil.copy(sqlite_template, db)
        s = make_settings(tmp_path / "var", f"sqlite:///{db}", root_key_file)
        core = Labvault(s, make_engine(s.database_url), KeyRing(FileKeyProvider(root_key_file)))
        yield core
        core.close()
    else:
        eng: Engine = request.getfixturevalue("pg_engine")
        conn = eng.connect()
        outer = conn.begin()
        s = make_settings(tmp_path / "var", PG_URL, root_key_file)
        core = Labvault(s, eng, KeyRing(FileKeyProvider(root_key_file)), bound=conn)
        yield core
        outer.rollback()
        conn.close()


@pytest.fixture
def operator() -> Actor:
    return Actor.operator()


@pytest.fixture
def tenant_id(lv: Labvault, operator: Actor) -> str:
    import random

    from labvault.synthetic import make_finess
    return lv.tenants.add(operator, "Laboratoire de test", make_finess(random.Random())).tenant_id
