"""Storage properties: the migration matches the tables; nothing clinical or personal
reaches a lab table in clear; erasing a patient makes their archived messages and
results unreadable; the CLI drives ingest, issues and catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import inspect, select
from typer.testing import CliRunner

from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services.app import Labvault
from labvault.store import tables_lab
from labvault.store.engine import make_engine
from tests.doors import stop
from tests.lab import hl7_samples as S
from tests.lab.conftest import patient_data

LAB_TABLES = [t for t in tables_lab.metadata.sorted_tables if t.name.startswith("lab_")]


def test_migration_matches_tables(sqlite_template: Path) -> None:
    eng = make_engine(f"sqlite:///{sqlite_template}")
    insp = inspect(eng)
    for t in LAB_TABLES:
        cols = {c["name"]: c for c in insp.get_columns(t.name)}
        assert set(cols) == {c.name for c in t.columns}, t.name
        for c in t.columns:
            assert cols[c.name]["nullable"] == c.nullable, (t.name, c.name)
            assert type(cols[c.name]["type"]).__name__.upper().startswith(
                {"String": "VARCHAR", "DateTime": "DATETIME", "Integer": "INTEGER",
                 "LargeBinary": "BLOB", "Blob": "BLOB"}[type(c.type).__name__]), (t.name, c.name)
        assert insp.get_pk_constraint(t.name)["constrained_columns"] == [
            c.name for c in t.primary_key.columns]
        assert t.primary_key.columns.values()[0].name == "tenant_id"
        got = {(i["name"], tuple(i["column_names"]), bool(i["unique"]))
               for i in insp.get_indexes(t.name)}
        want = {(i.name, tuple(c.name for c in i.columns), bool(i.unique)) for i in t.indexes}
        assert got == want, t.name
    eng.dispose()


def test_nothing_clinical_in_clear(lab_lv: Labvault, tenant_id: str, operator: Actor) -> None:
    lv = lab_lv
    lv.patients.register(operator, tenant_id, {**patient_data(), "nir": S.NIR_F})
    h = Hl7Handler(lv, Actor.system("mllp"), tenant_id)
    for raw in (S.oru_numeric("C1"), S.oru_v23_local_codes("C2"), S.orm("C3"), S.oml("C4")):
        assert h.handle(raw.encode())[0].ack_code == "AA"
    # 5+ characters each: shorter strings turn up in random ciphertext by chance.
    secrets_ = [S.NIR_F, "MARTIN", "Jeanne", "718-7", "2823-3", "13.2|g/dL", "PL1001", "FI2001",
                "Hemoglobin", "anticoagulant", "DURAND", "Mystery", "IPP123", "hmolys",
                "Lilas", "0612345678", "mmol/L", "12.0-16.0"]   # the last: OBX-7
    with lv.begin() as conn:
        for t in LAB_TABLES:
            for row in conn.execute(select(t)).mappings():
                for col, value in row.items():
                    if value is None:
                        continue
                    blob = value if isinstance(value, bytes) else str(value).encode()
                    for s in secrets_:
                        assert s.encode() not in blob, (t.name, col, s)


def test_erasure_reaches_archive_and_results(lab_lv: Labvault, tenant_id: str,
                                             operator: Actor) -> None:
    lv = lab_lv
    pid = lv.patients.register(operator, tenant_id, {**patient_data(), "nir": S.NIR_F})
    h = Hl7Handler(lv, Actor.system("mllp"), tenant_id)
    out, _ = h.handle(S.oru_numeric("E1").encode())
    assert out.patient_id == pid
    with lv.begin() as conn:
        row = conn.execute(select(tables_lab.lab_hl7_messages)).mappings().one()
        assert row["patient_id"] == pid      # raw message sealed under the patient's key
    lv.patients.erase(operator, pid)
    assert lv.lab.list_observations(operator, tenant_id) == []
    from labvault.errors import NotFound
    with pytest.raises(NotFound):
        lv.lab.get_observation(operator, out.observation_ids[0])


def test_cli_ingest_issues_catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labvault.cli import app
    monkeypatch.setenv("LABVAULT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LABVAULT_KEY_FILE", str(tmp_path / "root.key"))
    monkeypatch.delenv("LABVAULT_DATABASE_URL", raising=False)
    r = CliRunner()
    assert r.invoke(app, ["init"]).exit_code == 0
    res = r.invoke(app, ["tenant", "add", "--help"])
    assert res.exit_code == 0
    import random

    from labvault.config import Settings
    from labvault.services.wiring import open_labvault
    from labvault.synthetic import make_finess
    lv = open_labvault(Settings.from_env())
    try:
        tid = lv.tenants.add(Actor.operator(), "Lab CLI", make_finess(random.Random(5))).tenant_id
    finally:
        lv.close()
    f = tmp_path / "drop.hl7"
    f.write_bytes(("FHS|^~\\&\rBHS|^~\\&\r" + S.oru_numeric("F1") + S.oru_numeric("F2")
                   + "BTS|2\rFTS|1\r").encode())
    res = r.invoke(app, ["ingest", "hl7", str(f), "--tenant", tid, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["messages"] == 2 and data["accepted"] == 2
    res = r.invoke(app, ["hl7-issues", "list", "--tenant", tid, "--json"])
    issues = json.loads(res.stdout)
    assert len(issues) == 2 and {i["kind"] for i in issues} == {"unknown-patient"}
    discard = ["hl7-issues", "resolve", issues[0]["id"], "--discard", "--reason",
               "duplicate of a paper result", "--json"]
    res = r.invoke(app, discard)                 # 5 results: not thrown away unasked
    assert res.exit_code == 2 and "--all-results" in res.output
    res = r.invoke(app, [*discard, "--all-results"])
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "discarded"
    assert json.loads(res.stdout)["results_discarded"] == 5
    res = r.invoke(app, ["hl7-issues", "resolve", issues[1]["id"]])
    assert res.exit_code == 2                    # needs --patient: a clear user error
    cat = tmp_path / "cat.json"
    cat.write_text(json.dumps({"version": "x1", "tests": [
        {"code": "718-7", "display": "Hb", "unit": "g/dL", "ranges": [{"low": 12, "high": 17}]}]}))
    res = r.invoke(app, ["catalogue", "load", str(cat), "--tenant", tid, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["version"] == "x1"
    cat.write_text(json.dumps({"version": "x2", "tests": [{"code": "718-8", "display": "Hb"}]}))
    res = r.invoke(app, ["catalogue", "load", str(cat), "--tenant", tid])
    assert res.exit_code == 2 and "check digit" in res.output


@pytest.mark.parametrize("mode", ["clear", "mutual-tls"])
def test_cli_mllp_listener_end_to_end(tmp_path: Path, mode: str) -> None:
    """`labvault mllp --port 0` in its own process: a message in, an AA out, stored — in
    clear on loopback, and inside mutual TLS (a throwaway CA, tests/pki.py); stopped by
    SIGTERM (a service manager) or SIGINT (Ctrl-C), it ends cleanly and says so."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from labvault.config import Settings
    from labvault.interop.hl7.mllp import send
    from labvault.services.wiring import init_labvault
    from labvault.synthetic import make_finess
    env = {**os.environ, "LABVAULT_DATA_DIR": str(tmp_path / "var"),
           "LABVAULT_KEY_FILE": str(tmp_path / "root.key")}
    env.pop("LABVAULT_DATABASE_URL", None)
    lv = init_labvault(Settings.from_env(env=env))
    op = Actor.operator()
    tid = lv.tenants.add(op, "Lab MLLP", make_finess(random.Random(9))).tenant_id
    pid = lv.patients.register(op, tid, {**patient_data(), "nir": S.NIR_F})
    lv.close()
    args, client = [], None
    if mode == "mutual-tls":
        from labvault.interop import tls
        from tests.pki import Pki
        pki = Pki(tmp_path)
        args = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                "--tls-client-ca", str(pki.ca[0])]
        client = tls.client_context(pki.ca[0], *pki.analyser)
    proc = subprocess.Popen([sys.executable, "-m", "labvault", "mllp", "--port", "0",
                             "--tenant", tid, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port = 0
        said: list[str] = []
        deadline = time.monotonic() + 60
        while not port and time.monotonic() < deadline:
            line = proc.stderr.readline()
            said.append(line)
            if "MLLP listening on" in line:
                port = int(line.rsplit(":", 1)[1])
        assert port, "listener did not start"
        if mode == "mutual-tls":    # the test certificate is valid a day: start-up warns
            assert any(x.startswith("warning: the certificate expires in") for x in said), said
        (ack,) = send("127.0.0.1", port, [S.oru_numeric("CLI1").encode()], ssl_context=client,
                      server_hostname="localhost")
        assert b"MSA|AA|CLI1" in ack
    finally:
        stop(proc, signal.SIGTERM if mode == "clear" else signal.SIGINT)
    assert proc.returncode == 0
    assert "MLLP listener stopped: 1 messages answered" in proc.stderr.read()
    lv = init_labvault(Settings.from_env(env=env))
    try:
        assert len(lv.lab.list_observations(op, tid, patient_id=pid)) == 5
    finally:
        lv.close()
