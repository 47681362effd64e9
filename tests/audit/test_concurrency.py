"""Concurrent appends to one chain from several processes' worth of writers (each with its own
head cache and connections) stay one valid chain with no gap and no fork."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine

from labvault.crypto import KeyRing
from labvault.crypto.providers.file import FileKeyProvider
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.services.audit import audit_of, install_audit
from labvault.store.schema import tenant_keys, tenants
from labvault.store.tables_audit import audit_entries, audit_heads
from tests.audit.helpers import new_lab
from tests.conftest import PG_URL, make_settings


@pytest.fixture
def engine(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
           sqlite_template: Path) -> Iterator[tuple[Engine, str]]:
    if backend == "sqlite":
        import shutil

        from labvault.store.engine import make_engine
        db = tmp_path / "c.db"
        shutil.copy(sqlite_template, db)
        eng = make_engine(f"sqlite:///{db}")
        yield eng, f"sqlite:///{db}"
        eng.dispose()
    else:
        yield request.getfixturevalue("pg_engine"), PG_URL


def test_concurrent_writers_keep_one_chain(engine: tuple[Engine, str], tmp_path: Path,
                                           root_key_file: Path) -> None:
    eng, url = engine
    settings = make_settings(tmp_path / "var", url, root_key_file)

    def core() -> Labvault:
        lv = Labvault(settings, eng, KeyRing(FileKeyProvider(root_key_file)))
        install_audit(lv)
        return lv

    setup = Labvault(settings, eng, KeyRing(FileKeyProvider(root_key_file)))
    tid = new_lab(setup)          # (default in-memory audit: nothing in the platform chain)
    install_audit(setup)
    errors: list[BaseException] = []
    writers, per_writer = 4, 15

    def work(n: int) -> None:
        lv = core()
        actor = Actor(kind="system", id=f"system:w{n}", tenant_id=None, client="local")
        try:
            for i in range(per_writer):
                with lv.begin() as conn:
                    lv.gate.audit.event(conn, actor, "bench", "success", tid, {"count": i})
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    res = audit_of(setup).verify(tid)
    assert res["ok"], res
    assert res["chains"][0]["entries_checked"] == writers * per_writer
    with setup.begin() as conn:
        n = conn.execute(select(func.count()).select_from(audit_entries)
                         .where(audit_entries.c.tenant_id == tid)).scalar()
        # the shared PostgreSQL schema outlives this test: leave no chain behind
        conn.execute(delete(audit_entries).where(audit_entries.c.tenant_id == tid))
        conn.execute(delete(audit_heads).where(audit_heads.c.tenant_id == tid))
        conn.execute(delete(tenant_keys).where(tenant_keys.c.tenant_id == tid))
        conn.execute(delete(tenants).where(tenants.c.tenant_id == tid))
    assert n == writers * per_writer
