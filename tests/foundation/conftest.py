"""Foundation fixtures: the ``labvault`` command line against a fresh installation on
each backend (an SQLite data directory, or a PostgreSQL schema of its own so that
``pg_dump`` and reopening see committed data), and synthetic import files.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import Result
from typer.testing import CliRunner

from labvault.cli import app
from labvault.config import Settings
from labvault.services.app import Labvault
from labvault.synthetic import make_finess, people, strip_none
from tests.conftest import PG_URL, private_schema


@dataclass
class Cli:
    """Runs ``labvault`` in-process (Typer's runner) against one installation."""

    backend: str
    root: Path
    env: dict[str, str]
    schema: str | None = None
    runner: CliRunner = field(default_factory=CliRunner)

    @property
    def data_dir(self) -> Path:
        return Path(self.env["LABVAULT_DATA_DIR"])

    @property
    def key_file(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".key")

    @property
    def db_file(self) -> Path:
        return self.data_dir / "labvault.db"

    def run(self, *args: str, env: dict[str, str] | None = None, input: str | None = None
            ) -> Result:
        return self.runner.invoke(app, list(args), env={**self.env, **(env or {})},
                                  input=input, catch_exceptions=False)

    def ok(self, *args: str) -> Any:
        """Run with ``--json``, expect exit 0, return the parsed stdout."""
        r = self.run(*args, "--json")
        assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
        return json.loads(r.stdout)

    def user_error(self, *args: str, env: dict[str, str] | None = None) -> Result:
        r = self.run(*args, env=env)
        assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
        assert "error:" in r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        return r

    def settings(self) -> Settings:
        return Settings.from_env(env=self.env)

    def open(self) -> Labvault:
        return Labvault.open(self.settings())

    def init_with_tenant(self, name: str = "Laboratoire du test CLI") -> str:
        self.ok("init")
        finess = make_finess(__import__("random").Random(secrets.randbits(32)))
        return str(self.ok("tenant", "add", name, "--finess", finess)["id"])


def _pg_schema_url(schema: str) -> str:
    return f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema (committed data; dropped afterwards)."""
    with private_schema("lvf") as schema:
        yield schema


def make_cli(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    env = {"LABVAULT_DATA_DIR": str(tmp_path / "var"), "LABVAULT_DATABASE_URL": "",
           "LABVAULT_KEY_FILE": "", "LABVAULT_KEY_PROVIDER": "file", "COLUMNS": "200"}
    schema = None
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        env["LABVAULT_DATABASE_URL"] = _pg_schema_url(schema)
    return Cli(backend, tmp_path, env, schema)


@pytest.fixture
def cli(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    """The CLI on a fresh installation, on each backend."""
    return make_cli(backend, tmp_path, request)


@pytest.fixture
def sqlite_cli(tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    return make_cli("sqlite", tmp_path, request)


def write_ndjson(path: Path, records: Sequence[dict[str, Any] | str]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def synthetic(n: int, seed: int = 11, start: int = 0) -> list[dict[str, Any]]:
    return [strip_none(p) for p in people(n, seed=seed, start=start)]
