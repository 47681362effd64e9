#!/usr/bin/env python3
"""Schemathesis campaign against the REST API's OpenAPI document with valid credentials
(one account per role), on SQLite and PostgreSQL: ≥ 2,000 generated requests, zero 5xx.

    .venv/bin/python bench/api_fuzz.py [--requests 2000] [--backend sqlite|postgres|both]

Runs in-process (ASGI) on a throw-away data directory; PostgreSQL in a temporary schema.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(backend: str, total: int) -> dict[int, int]:
    from datetime import timedelta

    from sqlalchemy import text
    from tests.access.conftest import Clock, World, make_lab
    from tests.access.fuzz_api import fuzz

    from labvault.access.policy import TablePolicy
    from labvault.access.sessions import SessionPolicy
    from labvault.config import Settings
    from labvault.crypto import KeyRing
    from labvault.crypto.providers.file import FileKeyProvider
    from labvault.services.app import Labvault
    from labvault.store import migrate
    from labvault.store.engine import make_engine

    tmp = Path(tempfile.mkdtemp(prefix="lvfuzz"))
    key = tmp / "root.key"
    FileKeyProvider.create(key)
    schema = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'var' / 'labvault.db'}"
        (tmp / "var").mkdir()
        engine = make_engine(url)
    else:
        base = os.environ.get("LABVAULT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
        schema = f"lvfuzz_{secrets.token_hex(4)}"
        admin = make_engine(base)
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = base
        engine = make_engine(base, connect_args={"options": f"-csearch_path={schema}"})
    try:
        migrate.upgrade(engine)
        s = Settings(data_dir=tmp / "var", database_url=url, key_file=key)
        lv = Labvault(s, engine, KeyRing(FileKeyProvider(key)), policy=TablePolicy())
        clock = Clock()
        lv.now = clock  # type: ignore[method-assign]
        lv.accounts.session_policy = SessionPolicy(idle=timedelta(hours=24))
        world = World(lv, clock, make_lab(lv, "a", 1), make_lab(lv, "b", 2))
        return dict(fuzz(world, total))
    finally:
        engine.dispose()
        if schema:
            with admin.begin() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--backend", default="both", choices=("sqlite", "postgres", "both"))
    a = ap.parse_args()
    for backend in (("sqlite", "postgres") if a.backend == "both" else (a.backend,)):
        t = time.perf_counter()
        statuses = run(backend, a.requests)
        n = sum(statuses.values())
        five = sum(v for k, v in statuses.items() if k >= 500)
        print(f"{backend}: {n} generated requests in {time.perf_counter() - t:.1f} s, "
              f"5xx: {five}, statuses: {dict(sorted(statuses.items()))}", flush=True)
        if five:
            sys.exit(1)


if __name__ == "__main__":
    main()
