"""`labvault user …` and `labvault policy doc` (SQLite data directory in a temp dir)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyotp
import pytest
from typer.testing import CliRunner

from labvault.cli import app
from labvault.errors import AuthenticationFailed
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


def test_user_reissue_enrolment_and_reset_password(tmp_path: Path) -> None:
    """A locked-out person: a new enrolment link, or a password reset by link; each link
    printed once, the earlier one revoked, a disabled account refused (exit 2)."""
    from labvault.config import Settings
    from labvault.services.app import Labvault
    d = tmp_path / "var"
    assert _run(d, "init", "--json")[0] == 0
    tenant = json.loads(_run(d, "tenant", "add", "Laboratoire CLI", "--finess",
                             make_finess(random.Random(4)), "--json")[1])["id"]
    pending = json.loads(_run(d, "user", "add", "--tenant", tenant, "--role", "reception",
                              "--name", "Paul Renaud", "--email", "paul.renaud@example.org",
                              "--json")[1])
    code, out = _run(d, "user", "reissue-enrolment", pending["id"], "--json")
    assert code == 0, out
    again = json.loads(out)
    assert again["status"] == "pending" and "enrolment_token" not in again
    assert again["enrolment_link"] != pending["enrolment_link"]
    code, out = _run(d, "user", "reissue-enrolment", pending["id"])
    assert code == 0 and "one-time enrolment link (valid until" in out
    link = out.rsplit("#token=", 1)[1].split()[0]
    made = json.loads(_run(d, "user", "add", "--tenant", tenant, "--role", "biologist",
                           "--name", "Jeanne Martin", "--email", "jeanne.martin@example.org",
                           "--password-stdin", "--json", stdin=PASSWORD + "\n")[1])
    assert _run(d, "user", "reissue-enrolment", made["id"])[0] == 2      # enrolled already
    code, out = _run(d, "user", "reset-password", made["id"], "--json")
    assert code == 0, out
    reset = json.loads(out)
    assert reset["status"] == "pending" and "#token=" in reset["enrolment_link"]
    lv = Labvault.open(Settings.from_env(d))
    try:
        with pytest.raises(AuthenticationFailed):               # revoked by the later one
            lv.accounts.enrol(again["enrolment_link"].rsplit("#token=", 1)[1], PASSWORD)
        assert lv.accounts.enrol(link, PASSWORD)["otpauth_uri"]         # the latest link
        token = reset["enrolment_link"].rsplit("#token=", 1)[1]
        assert lv.accounts.enrol(token, PASSWORD)["otpauth_uri"] is None    # TOTP kept
    finally:
        lv.close()
    from labvault.domain.actors import Actor
    report = json.loads(_run(d, "audit", "report", "--user", Actor.operator().id,
                             "--json")[1])
    assert report["by_action"]["user.reissue-enrolment:success"] == 2
    assert report["by_action"]["user.reset-password:success"] == 1
    assert _run(d, "user", "disable", made["id"])[0] == 0
    code, _ = _run(d, "user", "reset-password", made["id"])
    assert code == 2
