"""Fail closed (DESIGN §5): without its root key, labvault shows nothing — a clear
error, exit code 2, and no plaintext anywhere in what it prints."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest

from labvault.config import Settings
from labvault.crypto.providers.file import FileKeyProvider
from labvault.errors import KeyUnavailable
from labvault.services.app import Labvault
from tests.foundation.conftest import Cli, synthetic, write_ndjson


def _installed(cli: Cli) -> tuple[str, dict[str, Any], str]:
    tenant = cli.init_with_tenant()
    rec = synthetic(1, seed=91)[0]
    cli.ok("patient", "import", str(write_ndjson(cli.root / "p.ndjson", [rec])), "--tenant", tenant)
    pid = cli.ok("patient", "find", "--tenant", tenant, "--nir", rec["nir"])["patients"][0]
    return tenant, rec, pid


def _no_plaintext(out: str, rec: dict[str, Any]) -> None:
    for v in (rec["birth_name"], rec["nir"], rec["email"], rec["address"]["line"]):
        assert v not in out


def test_no_key_file(cli: Cli) -> None:
    tenant, rec, pid = _installed(cli)
    cli.key_file.unlink()
    for args in (("patient", "show", pid), ("patient", "find", "--tenant", tenant, "--nir",
                                            rec["nir"]), ("tenant", "list")):
        r = cli.user_error(*args)
        assert f"key file {cli.key_file} not found" in r.stderr
        # data is sealed under the lost key: restore it (init would write a useless one)
        assert "restore the key file" in r.stderr and "labvault init` to" not in r.stderr
        _no_plaintext(r.stdout + r.stderr, rec)
    with pytest.raises(KeyUnavailable):
        Labvault.open(cli.settings())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_refused(sqlite_cli: Cli, mode: int) -> None:
    cli = sqlite_cli
    _tenant, rec, pid = _installed(cli)
    os.chmod(cli.key_file, mode)
    r = cli.user_error("patient", "show", pid)
    assert f"mode {mode:04o}" in r.stderr and f"chmod 600 {cli.key_file}" in r.stderr
    _no_plaintext(r.stdout + r.stderr, rec)
    os.chmod(cli.key_file, 0o600)
    assert cli.ok("patient", "show", pid)["nir"] == rec["nir"]


def test_another_installations_key(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    _tenant, rec, pid = _installed(cli)
    cli.key_file.unlink()
    FileKeyProvider.create(cli.key_file)    # a fresh root key: opens nothing of the old data
    r = cli.user_error("patient", "show", pid)
    assert "does not open with this root key" in r.stderr
    _no_plaintext(r.stdout + r.stderr, rec)


def test_corrupt_key_file(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    _installed(cli)
    cli.key_file.write_text(json.dumps({"format": "labvault-root-key/1", "current": "root-1",
                                        "keys": {"root-1": "dG9vIHNob3J0"}}))
    r = cli.user_error("tenant", "list")
    assert "is not a labvault root key file" in r.stderr


def test_data_dir_copy_without_key_is_useless(sqlite_cli: Cli) -> None:
    """Copying the data directory (what a backup or a thief gets) does not copy the key."""
    cli = sqlite_cli
    _tenant, rec, pid = _installed(cli)
    stolen = cli.root / "stolen" / "var"
    shutil.copytree(cli.data_dir, stolen)
    s = Settings.from_env(env={"LABVAULT_DATA_DIR": str(stolen)})
    assert s.key_file == stolen.with_name("var.key") and not s.key_file.exists()
    with pytest.raises(KeyUnavailable, match="not found"):
        Labvault.open(s)
    r = cli.user_error("patient", "show", pid, env={"LABVAULT_DATA_DIR": str(stolen)})
    _no_plaintext(r.stdout + r.stderr, rec)
