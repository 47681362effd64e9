"""`labvault user …` and `labvault policy doc` (SQLite data directory in a temp dir)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyotp
from typer.testing import CliRunner

from labvault.cli import app
from labvault.synthetic import make_finess
from tests.access.conftest import PASSWORD

runner = CliRunner()


def _run(data_dir: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    res = runner.invoke(app, ["--data-dir", str(data_dir), *args], input=stdin)
    return res.exit_code, res.stdout


def test_user_add_disable_unlock_reset(tmp_path: Path) -> None:
    d = tmp_path / "var"
    assert _run(d, "init", "--json")[0] == 0
    code, out = _run(d, "tenant", "add", "Laboratoire CLI", "--finess",
                     make_finess(random.Random(3)), "--json")
    assert code == 0, out
    tenant = json.loads(out)["id"]
    code, out = _run(d, "user", "add", "--tenant", tenant, "--role", "biologist", "--name",
                     "Jeanne Martin", "--email", "jeanne.martin@example.org",
                     "--password-stdin", "--json", stdin=PASSWORD + "\n")
    assert code == 0, out
    made = json.loads(out)
    assert made["id"].startswith("acct_") and made["otpauth_uri"].startswith("otpauth://totp/")
    assert pyotp.parse_uri(made["otpauth_uri"]).secret
    assert PASSWORD not in out
    code, out = _run(d, "user", "add", "--tenant", tenant, "--role", "reception", "--name",
                     "Paul Renaud", "--email", "paul.renaud@example.org", "--json")
    assert code == 0 and "enrolment_link" in json.loads(out) and "enrolment_token" not in out
    # generic accounts are refused with exit code 2
    code, _ = _run(d, "user", "add", "--tenant", tenant, "--role", "reception", "--name",
                   "Accueil Labo", "--email", "accueil@example.org", "--password-stdin",
                   stdin=PASSWORD + "\n")
    assert code == 2
    for cmd in ("disable", "unlock", "reset-mfa", "enable"):
        code, out = _run(d, "user", cmd, made["id"], "--json")
        assert code == 0, (cmd, out)
    shown = json.loads(_run(d, "user", "show", made["id"], "--json")[1])
    assert shown["status"] == "active" and shown["mfa_enabled"] is False
    assert _run(d, "user", "disable", "acct_doesnotexist")[0] == 2


def test_policy_doc_check(tmp_path: Path) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "access-policy.md"
    assert runner.invoke(app, ["policy", "doc", "-o", str(doc), "--check"]).exit_code == 0
    stale = tmp_path / "p.md"
    stale.write_text("old\n")
    assert runner.invoke(app, ["policy", "doc", "-o", str(stale), "--check"]).exit_code == 1
