"""``labvault audit ...`` end to end on an embedded (SQLite) installation."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labvault.cli import app


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"LABVAULT_DATA_DIR": str(tmp_path / "var"),
            "LABVAULT_KEY_FILE": str(tmp_path / "keys" / "root.key"),
            "LABVAULT_AUDIT_CHECKPOINT_EVERY": "0"}


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args), env=env)
    return r.exit_code, r.stdout


def test_cli_audit_commands(env: dict[str, str], tmp_path: Path) -> None:
    code, out = run(env, "demo", "--labs", "2", "--patients", "6", "--json")
    assert code == 0, out
    code, out = run(env, "audit", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"]
    code, out = run(env, "audit", "checkpoint", "--json")
    assert code == 0 and json.loads(out)["ok"]
    assert (tmp_path / "keys" / "root.key.audit-signing").exists()
    db = sqlite3.connect(tmp_path / "var" / "labvault.db")
    entry = db.execute("select entry_id from audit_entries where tenant_id like 'lab%'"
                       ).fetchone()[0]
    pid = db.execute("select patient_id from patients limit 1").fetchone()[0]
    code, out = run(env, "patient", "show", pid, "--json")
    assert code == 0, out
    code, out = run(env, "audit", "access", "--patient", pid, "--json")
    assert code == 0 and [r["action"] for r in json.loads(out)][:1] == ["read"]
    assert [r["resource"] for r in json.loads(out)][:1] == ["patient"]
    code, out = run(env, "audit", "access", "--patient", pid)
    assert code == 0 and "resource" in out and "patient" in out
    code, out = run(env, "audit", "prove", entry, "--json")
    assert code == 0 and json.loads(out)["verified"]
    code, out = run(env, "audit", "fhir", "--out", str(tmp_path / "audit.ndjson"), "--json")
    assert code == 0 and json.loads(out)["resources"] >= 3
    code, out = run(env, "audit", "register", "--format", "json")
    assert code == 0 and json.loads(out)["title"].startswith("Record of processing")
    code, out = run(env, "audit", "report", "--user", "nobody", "--since", "2020-01-01",
                    "--json")
    assert code == 2 and out == ""      # a typo, not a user who did nothing
    code, out = run(env, "audit", "report", "--user", "system:nobody", "--since", "2020-01-01",
                    "--json")
    assert code == 0 and json.loads(out)["entries"] == 0
    code, out = run(env, "audit", "prune", "--json")
    assert code == 0 and json.loads(out)["pruned"] == []
    # tamper with the database behind labvault's back
    db.execute("update audit_entries set actor_id = 'someone-else' where entry_id = ?", (entry,))
    db.commit()
    code, out = run(env, "audit", "verify", "--json")
    res = json.loads(out)
    assert code == 1 and res["failures"][0]["entry_id"] == entry
    assert res["failures"][0]["kind"] == "mac-mismatch"
    code, _ = run(env, "audit", "register", "--format", "xml")
    assert code == 2


def test_cli_access_and_report_are_readable_without_json(env: dict[str, str]) -> None:
    """QA (DPO): on a piped or narrow output the access table cut the time to
    '2026-11-…' (when — the column the DPO needs), and `audit report` without --json
    printed counts only, no entry."""
    from datetime import UTC, datetime
    code, out = run(env, "demo", "--labs", "1", "--patients", "3", "--json")
    assert code == 0, out
    db = sqlite3.connect(Path(env["LABVAULT_DATA_DIR"]) / "labvault.db")
    pid = db.execute("select patient_id from patients limit 1").fetchone()[0]
    assert run(env, "patient", "show", pid, "--json")[0] == 0
    code, out = run(env, "audit", "access", "--patient", pid, "--json")
    stamps = [datetime.fromisoformat(r["at"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
              for r in json.loads(out)]
    code, out = run(env, "audit", "access", "--patient", pid)
    assert code == 0 and stamps and all(s in out for s in stamps), out
    code, out = run(env, "audit", "report", "--user", _operator(db), "--json")
    items = json.loads(out)["items"]
    code, out = run(env, "audit", "report", "--user", _operator(db))
    assert code == 0
    lines = [ln for ln in out.splitlines() if ln[:4].isdigit()]
    assert len(lines) == len(items) + 1 >= 3     # + the --json report's own audited read
    read = next(it for it in items if it["action"] == "read" and pid in it["patient_ids"])
    assert any(ln.startswith(datetime.fromisoformat(read["at"]).astimezone(UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC  read allowed  patient")) for ln in lines), out


def _operator(db: sqlite3.Connection) -> str:
    return str(db.execute("select actor_id from audit_entries where actor_id like 'os:%' "
                          "limit 1").fetchone()[0])
