"""Group commit of read entries (``LABVAULT_AUDIT_READ_GROUP_MS``): queued reads reach the
chain in order and verify; everything else stays in the caller's transaction; nothing queued
is lost on flush failure, on rollback, before a report, or at close."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from labvault.audit import log as audit_log_module
from labvault.audit.log import AuditLog
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.errors import AccessDenied
from labvault.services.app import Labvault
from labvault.services.audit import audit_of
from labvault.services.gate import Access
from labvault.store.tables_audit import audit_entries, audit_refs
from tests.audit.helpers import LabPolicy, new_lab, person, staff

E = audit_entries.c
# The writer thread and its failure handling need a core that owns its connections; the
# PostgreSQL fixture binds one rolled-back connection (writes happen at each transaction end,
# which the other tests cover on both backends).
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


def stored(lv: Labvault) -> Counter[tuple[str, str]]:
    with lv.begin() as conn:
        rows = conn.execute(select(E.action, E.outcome).where(E.tenant_id != "_platform")).all()
    return Counter((r[0], r[1]) for r in rows)


@pytest.fixture
def grouped(lv: Labvault, audit_log: AuditLog) -> AuditLog:
    lv.gate.policy = LabPolicy()
    audit_log.group_ms = 60_000        # only size, reports and close flush in these tests
    return audit_log


@pytest.fixture
def lab(lv: Labvault, operator: Actor) -> tuple[str, list[str]]:
    tid = new_lab(lv)
    return tid, [lv.patients.register(operator, tid, person(i)) for i in range(3)]


def test_reads_are_queued_then_written_in_order_and_verify(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]]) -> None:
    tid, pids = lab
    bio = staff(tid)
    before = stored(lv)
    order = [pids[i % 3] for i in range(10)]
    for pid in order:
        lv.patients.show(bio, pid)
    lv.patients.find(bio, tid, nir=str(person(1)["nir"]))
    if not lv.bound:      # one connection (PostgreSQL fixture): written at each transaction end
        assert stored(lv) == before and grouped.pending() == 11
    assert grouped.flush() == (0 if lv.bound else 11)
    after = stored(lv) - before
    assert after == Counter({("read", "allowed"): 10, ("search", "allowed"): 1})
    with lv.begin() as conn:
        got = [r[0] for r in conn.execute(
            select(E.patient_id).where(E.tenant_id == tid, E.action == "read")
            .order_by(E.seq)).all()]
    assert got == order
    assert audit_of(lv).verify()["ok"]


def test_refusals_writes_and_break_glass_are_not_deferred(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]], operator: Actor) -> None:
    tid, pids = lab
    before = stored(lv)
    with pytest.raises(AccessDenied):
        lv.patients.show(staff(tid, "intern", "acct_intern"), pids[0])
    lv.patients.update(operator, pids[1], person(7))
    with lv.begin() as conn:    # a break-glass read: the policy marks it, the log keeps it now
        lv.gate.policy = _BreakGlass()
        lv.gate.check(conn, Access(staff(tid), Action.READ, tid, frozenset({Category.CLINICAL}),
                                   patient_ids=(pids[2],), reason="urgence vitale"))
    assert grouped.pending() == 0
    assert stored(lv) - before == Counter({("read", "denied"): 1, ("write", "allowed"): 1,
                                           ("read", "allowed"): 1})


class _BreakGlass(LabPolicy):
    def decide(self, access: Access):  # type: ignore[no-untyped-def]
        from labvault.services.gate import Decision
        return Decision(True, access.categories, rule="break-glass", break_glass=True)


def test_a_read_in_a_rolled_back_transaction_is_still_recorded(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]]) -> None:
    tid, pids = lab
    before = stored(lv)
    with pytest.raises(RuntimeError), lv.begin():
        lv.patients.show(staff(tid), pids[0])
        raise RuntimeError("the request failed after opening the record")
    grouped.flush()
    assert stored(lv) - before == Counter({("read", "allowed"): 1})


def test_reports_see_queued_reads(lv: Labvault, grouped: AuditLog,
                                  lab: tuple[str, list[str]], operator: Actor) -> None:
    tid, pids = lab
    lv.patients.show(staff(tid), pids[0])
    log = audit_of(lv).access_log(operator, pids[0])   # (itself a read, queued in turn)
    assert [e for e in log if e["action"] == "read"]


def test_a_full_batch_is_written_by_the_reader(lv: Labvault, grouped: AuditLog,
                                               lab: tuple[str, list[str]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_log_module, "GROUP_MAX", 4)
    tid, pids = lab
    before = stored(lv)
    for _ in range(9):
        lv.patients.show(staff(tid), pids[0])
    assert grouped.pending() == (0 if lv.bound else 1)
    assert stored(lv) - before == Counter({("read", "allowed"): 9 if lv.bound else 8})


def test_checkpoints_reached_inside_a_batch_are_written(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]]) -> None:
    tid, pids = lab
    grouped.checkpoint_every = 5
    for i in range(12):
        lv.patients.show(staff(tid), pids[i % 3])
    grouped.flush()
    good, bad = grouped.checkpoints.list(tid)
    assert not bad
    with lv.begin() as conn:
        size = conn.execute(select(func.count()).select_from(audit_entries)
                            .where(E.tenant_id == tid)).scalar_one()
    assert sorted(c.tree_size for c in good) == list(range(5, size + 1, 5))
    assert audit_of(lv).verify(tid)["ok"]


def test_multi_patient_reads_keep_their_references(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]]) -> None:
    tid, pids = lab
    for _ in range(2):
        with lv.begin() as conn:
            lv.gate.read_patients(conn, Access(staff(tid), Action.READ, tid,
                                               frozenset({Category.IDENTITY}),
                                               patient_ids=tuple(pids)))
    grouped.flush()
    with lv.begin() as conn:
        refs = conn.execute(select(func.count()).select_from(audit_refs)
                            .where(audit_refs.c.tenant_id == tid)).scalar_one()
    assert refs == 4     # two entries, each naming two more patients than its first


@SQLITE_ONLY
def test_a_failed_flush_keeps_the_entries_and_does_not_fail_the_read(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    tid, pids = lab
    before = stored(lv)
    lv.patients.show(staff(tid), pids[0])
    real = grouped._append_reads
    monkeypatch.setattr(grouped, "_append_reads", _raise)
    with pytest.raises(OSError):
        grouped.flush()
    monkeypatch.setattr(audit_log_module, "GROUP_MAX", 1)
    lv.patients.show(staff(tid), pids[1])            # its flush fails: the read does not
    assert grouped.pending() == 2
    monkeypatch.setattr(grouped, "_append_reads", real)
    assert grouped.flush() == 2
    assert stored(lv) - before == Counter({("read", "allowed"): 2})


def _raise(*_: object) -> None:
    raise OSError("database unavailable")


@SQLITE_ONLY
def test_the_writer_thread_writes_without_being_asked_and_close_drains(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]]) -> None:
    tid, pids = lab
    grouped.group_ms = 30
    before = stored(lv)
    lv.patients.show(staff(tid), pids[0])
    deadline = time.monotonic() + 10
    while grouped.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert grouped.pending() == 0
    assert stored(lv) - before == Counter({("read", "allowed"): 1})
    grouped.group_ms = 60_000
    lv.patients.show(staff(tid), pids[1])
    grouped.close()
    assert grouped.pending() == 0
    assert stored(lv) - before == Counter({("read", "allowed"): 2})


@SQLITE_ONLY
def test_concurrent_readers_make_one_valid_chain(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_log_module, "GROUP_MAX", 7)
    grouped.group_ms = 5
    tid, pids = lab
    before = stored(lv)
    errors: list[BaseException] = []

    def reader(k: int) -> None:
        try:
            for i in range(25):
                lv.patients.show(staff(tid, ident=f"acct_{k}"), pids[(i + k) % 3])
        except BaseException as exc:   # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    grouped.close()
    assert stored(lv) - before == Counter({("read", "allowed"): 100})
    assert audit_of(lv).verify(tid)["ok"]


def test_serve_writes_queued_reads_when_it_stops(tmp_path: Path) -> None:
    """uvicorn's worker processes end with ``os._exit`` (no ``atexit``): the app's
    shutdown must write what is queued. A real ``labvault serve --workers 2``, SIGTERM."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx
    import pyotp
    from sqlalchemy import create_engine, text

    exe = Path(sys.executable).parent / "labvault"
    env = {**os.environ, "LABVAULT_DATA_DIR": str(tmp_path / "var"),
           "LABVAULT_AUDIT_READ_GROUP_MS": "600000"}
    env.pop("LABVAULT_DATABASE_URL", None)
    demo = json.loads(subprocess.run([str(exe), "demo", "--labs", "1", "--patients", "3",
                                      "--json"], env=env, check=True, capture_output=True,
                                     text=True).stdout)
    acc = next(a for a in demo["laboratories"][0]["accounts"] if a["role"] == "biologist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(exe), "serve", "--port", str(port), "--workers", "2"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = create_engine(f"sqlite:///{tmp_path / 'var' / 'labvault.db'}")

    def reads() -> int:
        with db.connect() as c:
            return int(c.execute(text("SELECT count(*) FROM audit_entries WHERE "
                                      "action = 'read' AND outcome = 'allowed' AND "
                                      "actor_id = :a"), {"a": acc["id"]}).scalar_one())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "serve did not start"
            time.sleep(0.2)
        tok = httpx.post(f"{base}/api/v1/auth/login", json={
            "email": acc["email"], "password": demo["demo_password"],
            "totp": pyotp.TOTP(demo["demo_totp_secret"]).now()}).json()["token"]
        with db.connect() as c:
            pid = c.execute(text("SELECT patient_id FROM patients WHERE tenant_id = :t "
                                 "AND status = 'active' LIMIT 1"),
                            {"t": demo["laboratories"][0]["id"]}).scalar_one()
        for _ in range(3):
            r = httpx.get(f"{base}/api/v1/patients/{pid}",
                          headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 200, r.text
        assert reads() == 0                 # queued: the group delay is ten minutes
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert reads() == 3
    db.dispose()


@SQLITE_ONLY
def test_the_writer_waits_for_the_oldest_entry_not_a_tick(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]]) -> None:
    """One batch per delay: the writer sleeps until the oldest queued read is group_ms old
    (not until the next fixed tick, which split batches), and never longer."""
    tid, pids = lab
    assert grouped._until_due() == 60.0                       # nothing queued: a full delay
    lv.patients.show(staff(tid), pids[0])
    assert grouped.pending() == 1
    assert 59.0 < grouped._until_due() <= 60.0                # due 60 s after that read
    grouped._pending_since -= 61                              # ... which has now passed
    assert grouped._until_due() == 0.0
    grouped.group_ms = 0                                      # strict again: write what waits
    assert grouped._until_due() == 0.0
    grouped.flush()
    assert grouped._until_due() == 1.0                        # and idle without spinning
    grouped.group_ms = 150
    grouped._wake.set()                # the writer slept for the old (60 s) delay
    before = stored(lv)
    lv.patients.show(staff(tid), pids[1])
    time.sleep(0.05)
    lv.patients.show(staff(tid), pids[2])
    deadline = time.monotonic() + 10
    while grouped.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert grouped.pending() == 0
    assert stored(lv) - before == Counter({("read", "allowed"): 2})


def test_a_batch_mixing_templated_and_general_reads_reads_back(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]]) -> None:
    """Templated reads (sealed address, clear marker) and reads the template leaves to the
    general way (a written reason) in one batch: in order, verified, and the "who saw my
    record" report reads each back (address sealed, never in clear in the body)."""
    tid, pids = lab
    lv.patients.show(staff(tid), pids[0])
    lv.patients.show(staff(tid, client="cli"), pids[0])
    lv.patients.show(staff(tid), pids[0], reason="contrôle du dossier")
    lv.patients.show(staff(tid, client="2001:db8::9"), pids[0])
    grouped.flush()
    with lv.begin() as conn:
        bodies = [r[0] for r in conn.execute(
            select(E.body).where(E.tenant_id == tid, E.patient_id == pids[0],
                                 E.action == "read").order_by(E.seq))]
    assert len(bodies) == 4
    assert not any("10.0.0.7" in b or "2001:db8::9" in b or "contrôle" in b for b in bodies)
    assert ['"client":"cli"' in b for b in bodies] == [False, True, False, False]
    svc = audit_of(lv)
    assert svc.verify(tid)["ok"]
    rows = [r for r in svc.access_log(Actor.operator(), pids[0]) if r["actor_kind"] == "staff"]
    assert len(rows) == 4
    # the DPO's report opens every address, whichever way it was sealed
    report = svc.user_report(Actor.operator(), "acct_bio")
    reads = [e for e in report["items"] if e["action"] == "read"]
    assert [e.get("sealed", {}).get("client") for e in reads] == [
        "10.0.0.7", None, "10.0.0.7", "2001:db8::9"]
    assert reads[2]["sealed"]["reason"] == "contrôle du dossier"


@SQLITE_ONLY     # a bound PostgreSQL test connection writes each read at once (one batch each)
def test_an_address_is_sealed_once_per_batch(
        lv: Labvault, grouped: AuditLog, lab: tuple[str, list[str]]) -> None:
    """Queued reads from one address share one sealed value within a written batch (the
    entry's MAC binds it to each entry); the next batch seals it afresh, so entries of
    different batches cannot be linked by it."""
    tid, pids = lab
    for pid in pids:
        lv.patients.show(staff(tid), pid)
    grouped.flush()
    lv.patients.show(staff(tid), pids[0])
    grouped.flush()
    with lv.begin() as conn:
        bodies = [json.loads(r[0]) for r in conn.execute(
            select(E.body).where(E.tenant_id == tid, E.action == "read").order_by(E.seq))]
    blobs = [b["client_sealed"] for b in bodies]
    assert len(blobs) == 4 and len(set(blobs[:3])) == 1 and blobs[3] != blobs[0]
    assert all("sealed" not in b and b["client"] is None for b in bodies)
    assert audit_of(lv).verify(tid)["ok"]
