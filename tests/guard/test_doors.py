"""CLI and API doors of the guard."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyrage
import pytest
from fastapi.testclient import TestClient
from pyrage import x25519
from typer.testing import CliRunner

from labvault.api.app import create_app
from labvault.api.deps import current_actor
from labvault.cli import app as cli
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from tests.guard.conftest import alerts_of, import_people, staff


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    e = {"LABVAULT_DATA_DIR": str(tmp_path / "var")}
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    return e


def _run(*args: str, ok: bool = True) -> dict[str, object]:
    res = CliRunner().invoke(cli, list(args))
    if ok:
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout) if "--json" in args else {}
    assert res.exit_code == 2, res.output
    return {}


def test_cli_canary_export_identify_purge(env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "alice")
    demo = _run("demo", "--labs", "1", "--patients", "40", "--json")
    tenant = demo["laboratories"][0]["id"]  # type: ignore[index]
    assert _run("canary", "plant", "--tenant", tenant, "--count", "2", "--json") == \
        {"planted": 2, "tenant_id": tenant}
    tenants = _run("tenant", "list", "--json")
    assert json.dumps(tenants).count('"patients": 40') == 1        # canaries not counted
    key = x25519.Identity.generate()
    base = ["export", "--tenant", tenant, "--purpose", "transfer to lab B",
            "--from", "2000-01-01", "--to", "2100-01-01", "--recipient", str(key.to_public()),
            "--expires", "7d", "--json"]
    _run(*base[:-1], "--fields", "birth_name,password", "--json", ok=False)
    out = _run(*base[:-1], "--fields", "birth_name,first_names,birth_date,nir,phone,email",
               "--json")
    assert set(out) == {"export_id", "file", "status"} and out["status"] == "ready"
    rows = pyrage.decrypt(Path(str(out["file"])).read_bytes(), [key]).decode().splitlines()
    assert len(rows) >= 40
    leak = Path(env["LABVAULT_DATA_DIR"]).parent / "leak.ndjson"
    leak.write_text("\n".join(rows[::10]) + "\n")
    found = _run("export", "identify", str(leak), "--json")
    assert found["export_id"] == out["export_id"] and found["recipient"] == str(key.to_public())
    monkeypatch.setenv("LABVAULT_EXPORT_APPROVAL_MIN_PATIENTS", "10")
    pending = _run(*base[:-1], "--fields", "birth_name", "--json")
    assert pending["status"] == "pending_approval" and pending["file"] is None
    _run("export", "approve", str(pending["export_id"]), "--json", ok=False)   # same account
    monkeypatch.setenv("LOGNAME", "bob")
    approved = _run("export", "approve", str(pending["export_id"]), "--json")
    assert approved["status"] == "ready"
    listed = _run("export", "list", "--json")
    assert len(listed["exports"]) == 2  # type: ignore[arg-type]
    purge = _run("purge", "--dry-run", "--json")
    assert purge["dry_run"] is True and purge["exports"]["expired"] == 0  # type: ignore[index]
    alerts = _run("alerts", "list", "--json")
    assert alerts == {"alerts": []} or all(a["kind"] for a in alerts["alerts"])  # type: ignore[union-attr]
    cfg = _run("guard", "config", "--tenant", tenant, "--set", "budget.reception.10m=80", "--json")
    assert cfg == {"budget.reception.10m": "80"}


def test_api_alerts_for_dpo_only(glv: Labvault, tenant_id: str) -> None:
    (pid,) = import_people(glv, tenant_id, 1)
    glv.guard.plant(Actor.operator(), tenant_id, 1)
    with glv.begin() as conn:
        canary = glv.guard.canary_ids(conn, tenant_id)[0]
    glv.patients.show(staff(tenant_id, role="biologist", ident="acct_b"), canary)
    app = create_app(glv)
    dpo = staff(tenant_id, role="dpo", ident="acct_dpo")
    with TestClient(app) as client:
        # the router's lifespan runs the scheduled purge while the app is served
        assert any(t.name == "labvault-purge" and t.is_alive() for t in threading.enumerate())
        app.dependency_overrides[current_actor] = lambda: dpo
        body = client.get("/api/v1/alerts").json()
        (alert,) = body["alerts"]
        assert alert["kind"] == "canary.read" and alert["actor_id"] == "acct_b"
        r = client.post(f"/api/v1/alerts/{alert['id']}/ack")
        assert r.status_code == 200 and r.json()["status"] == "acked"
        app.dependency_overrides[current_actor] = lambda: staff(tenant_id, ident="acct_r")
        r = client.get("/api/v1/alerts")
        assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    assert alerts_of(glv, tenant_id)[0]["status"] == "acked"
    del pid


def test_cli_retention_and_mass_erasure_guard(env: dict[str, str]) -> None:
    """QA report item 1: `retention.lab_report=0` was accepted and the next purge
    crypto-shredded the whole lab."""
    from datetime import timedelta

    from sqlalchemy import update

    from labvault.config import Settings
    from labvault.store.schema import patients
    tenant = _run("demo", "--labs", "1", "--patients", "30", "--json")[
        "laboratories"][0]["id"]  # type: ignore[index]
    for bad in ("retention.lab_report=0", "retention.lab_report=1", "retention.foo=3",
                "budget.nobody.10m=5", "rule.nope.10m=3"):
        res = CliRunner().invoke(cli, ["guard", "config", "--tenant", tenant, "--set", bad])
        assert res.exit_code == 2 and "error:" in res.stderr, (bad, res.output)
    assert _run("guard", "config", "--tenant", tenant, "--json") == {}
    # any other way of making every patient due (a clock, a restore): the purge holds
    lv = Labvault.open(Settings.from_env())
    try:
        with lv.begin() as conn:
            conn.execute(update(patients).values(updated_at=lv.now() - timedelta(days=4100)))
    finally:
        lv.close()
    res = CliRunner().invoke(cli, ["purge", "--json"])
    assert res.exit_code == 2 and "nothing erased" in res.stderr, res.output
    assert "--confirm-mass-erasure 30" in res.stderr
    assert json.dumps(_run("tenant", "list", "--json")).count('"patients": 30') == 1
    dry = _run("purge", "--dry-run", "--json")["patients"]
    assert dry["expired"] == 30  # type: ignore[index]
    assert dry["mass_erasure"] == {tenant: {"expired": 30, "active": 30,  # type: ignore[index]
                                            "limit": 25}}
    _run("purge", "--confirm-mass-erasure", "29", "--json", ok=False)
    done = _run("purge", "--confirm-mass-erasure", "30", "--json")
    assert done["patients"]["erased"] == 30  # type: ignore[index]


def test_cli_breach_triage_attributes_a_semicolon_leak(env: dict[str, str]) -> None:
    """QA report item 3: breach triage matched the semicolon CSV's patients but named no
    export, since identify read it as one column."""
    import csv
    import io
    tenant = _run("demo", "--labs", "1", "--patients", "30", "--json")[
        "laboratories"][0]["id"]  # type: ignore[index]
    key = x25519.Identity.generate()
    out = _run("export", "--tenant", tenant, "--purpose", "transfer", "--from", "2000-01-01",
               "--to", "2100-01-01", "--recipient", str(key.to_public()),
               "--fields", "birth_name,first_names,birth_date,nir,phone,email", "--json")
    rows = [json.loads(r) for r in pyrage.decrypt(Path(str(out["file"])).read_bytes(),
                                                  [key]).decode().splitlines()]
    cols = ["birth_name", "nir", "email", "phone", "birth_date"]
    text = io.StringIO()
    w = csv.writer(text, delimiter=";")
    w.writerow(cols)
    for r in rows:
        w.writerow([r.get(c) for c in cols])
    leak = Path(env["LABVAULT_DATA_DIR"]).parent / "leak_semi.csv"
    leak.write_bytes(text.getvalue().encode("utf-8-sig"))
    case = _run("breach", "open", "--title", "fuite", "--aware-at",
                "2026-01-01T10:00:00+01:00", "--json")["case"]
    res = _run("breach", "triage", str(leak), "--case", str(case), "--json")
    exports = [a for a in res["attribution"] if a["kind"] == "export"]  # type: ignore[union-attr]
    assert [a["export_id"] for a in exports] == [out["export_id"]]
