"""The PKCS#11 key provider against a SoftHSM2 token created by the test.

A PKCS#11 library reads its configuration once per process and a login is per
process, so every run here is a subprocess with its own ``SOFTHSM2_CONF`` pointing at
a temporary token directory (a fresh token per test). Outside CI the tests skip with
the reason when SoftHSM2 is absent; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.foundation.conftest import synthetic, write_ndjson

MODULE_CANDIDATES = ("/usr/lib/softhsm/libsofthsm2.so",
                     "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
SO_PIN = "87654321"
PIN = "12345678"

pytestmark = pytest.mark.pkcs11


def _module() -> str:
    util = shutil.which("softhsm2-util")
    module = next((m for m in MODULE_CANDIDATES if Path(m).exists()), None)
    if util is None or module is None:
        msg = ("SoftHSM2 is not installed (apt-get install softhsm2; .ci/run installs it): "
               "PKCS#11 provider not tested")
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return module


class Token:
    def __init__(self, root: Path) -> None:
        self.module = _module()
        self.dir = root / "tokens"
        self.dir.mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {self.dir}\nobjectstore.backend = file\n"
                             "log.level = ERROR\n")
        self.label = f"lv-{secrets.token_hex(4)}"
        self.env = {**os.environ, "SOFTHSM2_CONF": str(self.conf)}
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", self.label,
                        "--so-pin", SO_PIN, "--pin", PIN], env=self.env, check=True,
                       capture_output=True)

    def labvault_env(self, data_dir: Path, pin: str = PIN) -> dict[str, str]:
        return {**self.env, "LABVAULT_DATA_DIR": str(data_dir), "LABVAULT_KEY_PROVIDER": "pkcs11",
                "LABVAULT_PKCS11_MODULE": self.module, "LABVAULT_PKCS11_TOKEN": self.label,
                "LABVAULT_PKCS11_PIN": pin, "LABVAULT_DATABASE_URL": "", "LABVAULT_KEY_FILE": ""}


@pytest.fixture
def token(tmp_path: Path) -> Token:
    return Token(tmp_path)


def labvault(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labvault", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def ok(env: dict[str, str], *args: str) -> Any:
    r = labvault(env, *args, "--json")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_init_import_show_with_pkcs11(token: Token, tmp_path: Path) -> None:
    env = token.labvault_env(tmp_path / "var")
    info = ok(env, "init", "--key-provider", "pkcs11")
    assert info["key_provider"] == "pkcs11" and info["key_file"] is None
    assert not (tmp_path / "var.key").exists()       # no root key on disk at all
    tenant = ok(env, "tenant", "add", "Laboratoire HSM", "--finess", "590000014")["id"]
    recs = synthetic(25, seed=71)
    f = write_ndjson(tmp_path / "p.ndjson", recs)
    assert ok(env, "patient", "import", str(f), "--tenant", tenant)["imported"] == 25
    pid = ok(env, "patient", "find", "--tenant", tenant, "--nir", recs[7]["nir"])["patients"][0]
    assert ok(env, "patient", "show", pid)["email"] == recs[7]["email"]
    assert ok(env, "keys", "rotate", "--root")["rotated"]["root_id"] == "labvault-root-2"
    assert ok(env, "patient", "show", pid)["nir"] == recs[7]["nir"]

    # Fail closed: a wrong PIN, or another token, opens nothing.
    r = labvault(token.labvault_env(tmp_path / "var", pin="00000000"), "patient", "show", pid)
    assert r.returncode == 2 and "PKCS#11 token" in r.stderr
    assert recs[7]["birth_name"] not in r.stdout + r.stderr
    other = Token(tmp_path / "other")
    r = labvault({**other.labvault_env(tmp_path / "var")}, "patient", "show", pid)
    assert r.returncode == 2 and "no labvault root key in PKCS#11 token" in r.stderr


PROVIDER_CHECKS = textwrap.dedent("""
    import sys
    import pkcs11
    from pkcs11 import Attribute
    from labvault.crypto.providers.pkcs11 import Pkcs11KeyProvider
    from labvault.errors import KeyUnavailable
    module, label, pin = sys.argv[1:4]
    p = Pkcs11KeyProvider(module, label, pin, create=True)
    key = bytes(range(32))
    rid, wrapped = p.wrap(key, b"aad-1")
    assert rid == "labvault-root-1" and key not in wrapped and len(wrapped) == 12 + 32 + 16
    assert p.unwrap(rid, wrapped, b"aad-1") == key
    for bad in ((rid, wrapped, b"aad-2"), (rid, wrapped[:-1] + bytes([wrapped[-1] ^ 1]), b"aad-1")):
        try:
            p.unwrap(*bad)
        except KeyUnavailable:
            pass
        else:
            raise AssertionError("unwrap accepted a wrong AAD or tampered bytes")
    rid2 = p.rotate_root()
    assert rid2 == "labvault-root-2" and p.current_root_id() == rid2
    assert p.unwrap(rid, wrapped, b"aad-1") == key          # older wrappings still open
    assert p.wrap(key, b"x")[0] == rid2
    root = p._keys[rid]
    assert root[Attribute.SENSITIVE] and not root[Attribute.EXTRACTABLE]
    # A second provider in the same process reuses the logged-in session.
    assert Pkcs11KeyProvider(module, label, pin).unwrap(rid, wrapped, b"aad-1") == key
    print("ok")
""")


def test_provider_wraps_in_token(token: Token, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", PROVIDER_CHECKS, token.module, token.label, PIN],
                       env=token.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_init_refuses_a_new_root_key_over_existing_data(token: Token, tmp_path: Path) -> None:
    """Like a missing key file: a token without labvault's root key, over a database that
    holds keys sealed under another root key, gets no fresh root key (it would open
    nothing, and a later write would seal new data under it)."""
    data = tmp_path / "var"
    ok(token.labvault_env(data), "init", "--key-provider", "pkcs11")
    ok(token.labvault_env(data), "tenant", "add", "Laboratoire HSM", "--finess", "590000014")
    other = Token(tmp_path / "other")
    r = labvault(other.labvault_env(data), "init", "--key-provider", "pkcs11")
    assert r.returncode == 2, (r.stdout, r.stderr)
    said = " ".join(r.stderr.split())
    assert f"no labvault root key in PKCS#11 token '{other.label}'" in said
    assert "holds data" in said and "run `labvault init" not in said
    # nothing was generated in the other token: it still opens nothing
    r = labvault(other.labvault_env(data), "tenant", "list")
    assert r.returncode == 2 and "no labvault root key in PKCS#11 token" in r.stderr
    assert ok(token.labvault_env(data), "init", "--key-provider", "pkcs11")   # idempotent
