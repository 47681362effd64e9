"""The audit log on both backends: one entry per gate decision, refusals kept,
tampering in the database detected and located, forward security, checkpoints."""

from __future__ import annotations

import contextlib
import json
import socket
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, text, update

from labvault.audit import chain as ch
from labvault.audit.log import AuditLog
from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, NotFound
from labvault.services.app import Labvault
from labvault.services.audit import AuditService
from labvault.store.tables_audit import audit_entries, audit_heads
from tests.audit.helpers import LabPolicy, new_lab, person, staff

E = audit_entries.c


def counts(lv: Labvault) -> Counter[tuple[str, str, str]]:
    with lv.begin() as conn:
        rows = conn.execute(select(E.tenant_id, E.action, E.outcome)).all()
    return Counter((("_platform" if r[0] == "_platform" else "lab"), r[1], r[2]) for r in rows)


def test_every_gate_path_writes_exactly_one_entry(lv: Labvault, audit_log: AuditLog,
                                                 audit: AuditService, operator: Actor) -> None:
    lv.gate.policy = LabPolicy()
    tid = new_lab(lv)                                                   # platform write
    p0, p1 = person(0), person(1)
    pid = lv.patients.register(operator, tid, p0)                       # write
    report = lv.patients.import_lines(operator, tid, [json.dumps(person(i))
                                                      for i in range(2, 7)])  # 1 batch: write
    assert report.imported == 5
    assert lv.patients.find(operator, tid, nir=str(p0["nir"])) == [pid]  # search
    lv.patients.show(operator, pid)                                     # read
    lv.patients.update(operator, pid, p1)                               # write
    bio = staff(tid)
    lv.patients.show(bio, pid)                                          # staff read
    intern = staff(tid, "intern", "acct_intern")
    for _ in range(2):
        with pytest.raises(AccessDenied):
            lv.patients.show(intern, pid)                               # 2 denials
    with pytest.raises(AccessDenied):
        lv.patients.register(intern, tid, person(9))                    # denied write
    lv.keys.rotate_tenant(operator, tid)                                # write (keys)
    lv.keys.rotate_root(operator)                                       # platform write
    lv.patients.erase(operator, report.ids[0])                          # erase
    got = counts(lv)
    assert got == Counter({
        ("_platform", "write", "allowed"): 2,
        ("lab", "write", "allowed"): 4,
        ("lab", "write", "denied"): 1,
        ("lab", "search", "allowed"): 1,
        ("lab", "read", "allowed"): 2,
        ("lab", "read", "denied"): 2,
        ("lab", "erase", "allowed"): 1,
    })
    assert audit.verify()["ok"]
    # the refusal names the actor, the patient and the rule, and nothing in clear about them
    with lv.begin() as conn:
        row = conn.execute(select(audit_entries).where(E.outcome == "denied",
                                                       E.action == "read")).mappings().first()
    assert row is not None and row["actor_id"] == "acct_intern" and row["patient_id"] == pid
    body = json.loads(row["body"])
    assert body["rule"] == "default-deny" and "10.0.0.7" not in row["body"]
    assert body["sealed"]  # the client address, sealed


def test_refusal_inside_enclosing_transaction_is_kept(lv: Labvault, audit_log: AuditLog,
                                                     audit: AuditService,
                                                     operator: Actor) -> None:
    from labvault.domain.categories import Action
    from labvault.services.gate import Access
    tid = new_lab(lv)
    intern = staff(tid, "intern", "acct_intern")
    with pytest.raises(AccessDenied), lv.begin() as conn:
        lv.gate.check(conn, Access(operator, Action.READ, tid, frozenset(), patient_ids=()))
        lv.gate.check(conn, Access(intern, Action.READ, tid, frozenset(), patient_ids=()))
    got = counts(lv)
    # the allowed one rolled back with its transaction; the refusal was written again
    assert got[("lab", "read", "denied")] == 1 and got[("lab", "read", "allowed")] == 0
    # a caller that catches the refusal and commits keeps exactly one entry
    with lv.begin() as conn, contextlib.suppress(AccessDenied):
        lv.gate.check(conn, Access(intern, Action.SEARCH, tid, frozenset()))
    assert counts(lv)[("lab", "search", "denied")] == 1
    assert audit.verify()["ok"]


def test_a_transactions_entries_are_written_together_at_its_end(
        lv: Labvault, audit_log: AuditLog, audit: AuditService, operator: Actor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Decisions are drafted as they are made and written just before the transaction
    commits: one head move per chain, entries in decision order; nothing of a transaction
    that rolls back (its refusals aside, written again on their own)."""
    from labvault.domain.categories import Action
    from labvault.services.gate import Access
    from labvault.store import repositories_audit as arepo
    tid, other = new_lab(lv), new_lab(lv, "Laboratoire du Hainaut")
    moves: list[tuple[str, int]] = []
    real = arepo.advance_head_and_insert

    def counted(conn, chain, *args, **kw):  # type: ignore[no-untyped-def]
        moves.append((chain, len(args[-1])))
        return real(conn, chain, *args, **kw)
    monkeypatch.setattr(arepo, "advance_head_and_insert", counted)
    with lv.begin() as conn:
        for action in (Action.READ, Action.SEARCH, Action.WRITE):
            lv.gate.check(conn, Access(operator, action, tid, frozenset(), patient_ids=()))
        lv.gate.check(conn, Access(operator, Action.READ, other, frozenset(), patient_ids=()))
        lv.gate.check(conn, Access(operator, Action.EXPORT, tid, frozenset(), patient_ids=()))
        assert moves == []                      # nothing written before the end
    assert sorted(moves) == sorted([(tid, 4), (other, 1)])
    with lv.begin() as conn:
        actions = [r.action for r in conn.execute(
            select(audit_entries.c.action).where(audit_entries.c.tenant_id == tid)
            .order_by(audit_entries.c.seq))]
    assert actions[-4:] == ["read", "search", "write", "export"]
    moves.clear()
    with pytest.raises(RuntimeError), lv.begin() as conn:
        lv.gate.check(conn, Access(operator, Action.READ, tid, frozenset(), patient_ids=()))
        raise RuntimeError("the work fails")
    assert moves == [] and audit.verify()["ok"]


def test_security_events_seal_free_text(lv: Labvault, audit_log: AuditLog, audit: AuditService,
                                        operator: Actor) -> None:
    tid = new_lab(lv)
    actor = staff(tid, client="192.0.2.4")
    with lv.begin() as conn:
        lv.gate.audit.event(conn, actor, "login.failed", "failure", tid,
                            {"account_id": "acct_bio", "message": "mot de passe erroné",
                             "factor": "password"})
        lv.gate.audit.event(conn, operator, "key.rotate", "success", None, {"kek_version": 2})
    with lv.begin() as conn:
        row = conn.execute(select(audit_entries).where(E.action == "login.failed")
                           ).mappings().one()
    assert "erroné" not in row["body"] and "192.0.2.4" not in row["body"]
    rep = audit.user_report(operator, "acct_bio")
    item = next(i for i in rep["items"] if i["action"] == "login.failed")
    assert item["sealed"] == {"client": "192.0.2.4", "message": "mot de passe erroné"}
    assert item["detail"] == {"account_id": "acct_bio", "factor": "password"}
    assert audit.verify()["ok"]


def _populate(lv: Labvault, operator: Actor, n: int = 12) -> tuple[str, str, list[str]]:
    tid, other = new_lab(lv, "A"), new_lab(lv, "B")
    pid = lv.patients.register(operator, tid, person(0))
    for _ in range(n):
        lv.patients.show(operator, pid)
    lv.patients.register(operator, other, person(1))
    with lv.begin() as conn:
        ids = list(conn.execute(select(E.entry_id).where(E.tenant_id == tid).order_by(E.seq))
                   .scalars())
    return tid, other, ids


def _failure(audit: AuditService, tid: str) -> dict[str, object]:
    res = audit.verify(tid)
    assert not res["ok"]
    failure: dict[str, object] = res["failures"][0]
    return failure


def test_database_tampering_is_located(lv: Labvault, audit_log: AuditLog, audit: AuditService,
                                       operator: Actor) -> None:
    tid, other, ids = _populate(lv, operator)
    audit.checkpoint()
    assert audit.verify()["ok"]
    where = (E.tenant_id == tid)
    with lv.begin() as conn:   # 1. edit a field
        conn.execute(update(audit_entries).where(where, E.seq == 4).values(outcome="denied"))
    f = _failure(audit, tid)
    assert (f["kind"], f["seq"], f["entry_id"]) == ("mac-mismatch", 4, ids[4])
    with lv.begin() as conn:
        conn.execute(update(audit_entries).where(where, E.seq == 4).values(outcome="allowed"))
        # 2. delete one
        saved = dict(conn.execute(select(audit_entries).where(where, E.seq == 6)).mappings()
                     .one())
        conn.execute(delete(audit_entries).where(where, E.seq == 6))
    f = _failure(audit, tid)
    assert (f["kind"], f["seq"]) == ("missing", 6)
    with lv.begin() as conn:   # 3. reorder: swap the positions of two entries
        conn.execute(insert(audit_entries).values(**saved))
        conn.execute(update(audit_entries).where(where, E.seq == 2).values(seq=-1))
        conn.execute(update(audit_entries).where(where, E.seq == 8).values(seq=2))
        conn.execute(update(audit_entries).where(where, E.seq == -1).values(seq=8))
    f = _failure(audit, tid)
    assert (f["seq"], f["entry_id"]) == (2, ids[8])
    with lv.begin() as conn:
        conn.execute(update(audit_entries).where(where, E.seq == 2).values(seq=-1))
        conn.execute(update(audit_entries).where(where, E.seq == 8).values(seq=2))
        conn.execute(update(audit_entries).where(where, E.seq == -1).values(seq=8))
        # 4. replay the other laboratory's entry in place of entry 3
        foreign = dict(conn.execute(select(audit_entries).where(E.tenant_id == other))
                       .mappings().first() or {})
        mine = dict(conn.execute(select(audit_entries).where(where, E.seq == 3)).mappings()
                    .one())
        conn.execute(delete(audit_entries).where(where, E.seq == 3))
        conn.execute(insert(audit_entries).values(**{**foreign, "tenant_id": tid, "seq": 3,
                                                      "entry_id": "ae_replayed"}))
    f = _failure(audit, tid)
    assert (f["kind"], f["seq"], f["entry_id"]) == ("mac-mismatch", 3, "ae_replayed")
    with lv.begin() as conn:
        conn.execute(delete(audit_entries).where(where, E.seq == 3))
        conn.execute(insert(audit_entries).values(**mine))
    assert audit.verify(tid)["ok"]
    with lv.begin() as conn:   # 5. truncate the newest entries and roll the head back too
        conn.execute(delete(audit_entries).where(where, E.seq >= 10))
        conn.execute(update(audit_heads).where(audit_heads.c.tenant_id == tid)
                     .values(next_seq=10))
    f = _failure(audit, tid)
    assert (f["kind"], f["seq"]) == ("truncated", 10)


def test_entry_behind_the_head_is_reported(lv: Labvault, audit_log: AuditLog,
                                           audit: AuditService, operator: Actor) -> None:
    tid, _, ids = _populate(lv, operator, 3)     # no checkpoint: only the head knows
    with lv.begin() as conn:
        row = dict(conn.execute(select(audit_entries).where(E.tenant_id == tid, E.seq == 1))
                   .mappings().one())
        conn.execute(insert(audit_entries).values(**{**row, "seq": 4, "entry_id": "ae_extra"}))
    f = _failure(audit, tid)
    assert (f["kind"], f["seq"], f["entry_id"]) == ("beyond-head", 4, "ae_extra")
    assert len(ids) == 4


def test_current_key_cannot_rewrite_earlier_entries(lv: Labvault, audit_log: AuditLog,
                                                    audit: AuditService,
                                                    operator: Actor) -> None:
    tid, _, ids = _populate(lv, operator, 6)
    with lv.begin() as conn:
        key = audit_log.current_key(conn, tid)   # what an intruder on the server holds now
        rows = [ch.Row(*r) for r in conn.execute(
            select(*[audit_entries.c[c] for c in ("tenant_id", "seq", "entry_id", "at_us",
                                                  "actor_id", "patient_id", "action",
                                                  "outcome", "body", "mac")])
            .where(E.tenant_id == tid).order_by(E.seq)).all()]
        n = len(rows)
        j = 2
        # rewrite entry j (hide the access) and re-chain the rest with the keys it can compute
        prev = ch.ZERO
        frontier: list[bytes] = []
        for r in rows[:j]:
            c = ch.entry_bytes(ch.prefix(*r[:8]), prev, r.body)
            prev = ch.leaf_hash(c)
            ch.frontier_push(frontier, r.seq, prev)
        state = ch.State(j, prev, key, frontier)
        for r in rows[j:]:
            forged, state = ch.append(state, tid, r.entry_id, r.at_us,
                                      "acct_nobody" if r.seq == j else r.actor_id,
                                      r.patient_id, r.action, r.outcome, r.body)
            conn.execute(update(audit_entries).where(E.tenant_id == tid, E.seq == r.seq)
                         .values(actor_id=forged.actor_id, mac=forged.mac))
    f = _failure(audit, tid)
    assert (f["kind"], f["seq"], f["entry_id"]) == ("mac-mismatch", j, ids[j])
    assert n == 7


def test_concurrent_head_move_is_noticed(lv: Labvault, audit_log: AuditLog,
                                         audit: AuditService, operator: Actor) -> None:
    """A second process appended meanwhile: the cached head is stale, the append reloads."""
    tid, _, _ = _populate(lv, operator, 2)
    other = AuditLog(lv.settings).attach(lv)   # a second writer with its own cache
    pid = lv.patients.register(operator, tid, person(5))
    audit_log.attach(lv)
    lv.patients.show(operator, pid)            # first log's cache is one entry behind
    other.attach(lv)
    lv.patients.show(operator, pid)
    assert audit.verify(tid)["ok"]
    assert audit.verify(tid)["chains"][0]["next_seq"] == 6


def test_automatic_checkpoints_and_syslog(lv: Labvault, audit_log: AuditLog,
                                          audit: AuditService, operator: Actor) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    audit_log.checkpoint_every = 4
    audit_log.checkpoints.syslog = f"udp://127.0.0.1:{sock.getsockname()[1]}"
    tid, _, _ = _populate(lv, operator, 8)      # 9 entries in the lab chain
    cps, bad = audit_log.checkpoints.list(tid)
    assert [c.tree_size for c in cps] == [4, 8] and not bad
    msg = sock.recv(65536)
    sock.close()
    assert msg.startswith(b"<110>1 ") and b"audit-checkpoint" in msg and tid.encode() in msg
    res = audit.verify(tid)
    assert res["ok"] and res["chains"][0]["checkpoints_checked"] == 2
    # a forged checkpoint file (no signing key) is reported and ignored
    path = cps[0].path
    assert path is not None
    doc = json.loads(path.read_text())
    doc["tree_size"] = 5
    (path.parent / "000000000005-checkpoint.json").write_text(json.dumps(doc))
    res = audit.verify(tid)
    assert res["ok"] and any("signature" in w for w in res["chains"][0]["warnings"])
    key_file = audit_log.checkpoints.key.path
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert not str(key_file).startswith(str(lv.settings.data_dir))


def test_checkpoint_not_written_for_rolled_back_entries(lv: Labvault, audit_log: AuditLog,
                                                        operator: Actor) -> None:
    from labvault.domain.categories import Action
    from labvault.services.gate import Access
    audit_log.checkpoint_every = 2
    tid = new_lab(lv)
    with pytest.raises(RuntimeError), lv.begin() as conn:
        lv.gate.check(conn, Access(operator, Action.READ, tid, frozenset()))
        lv.gate.check(conn, Access(operator, Action.READ, tid, frozenset()))
        raise RuntimeError("boom")
    assert audit_log.checkpoints.list(tid) == ([], [])


def test_prove_inclusion(lv: Labvault, audit_log: AuditLog, audit: AuditService,
                         operator: Actor) -> None:
    tid, _, ids = _populate(lv, operator, 12)
    with pytest.raises(Exception, match="checkpoint"):
        audit.prove(ids[3])
    audit.checkpoint(tid)
    for eid in (ids[0], ids[5], ids[-1]):
        proof = audit.prove(eid)
        assert proof["verified"] and proof["tree_size"] == len(ids)
        path = [bytes.fromhex(h) for h in proof["path"]]
        root = bytes.fromhex(proof["root"])
        leaf = bytes.fromhex(proof["leaf_hash"])
        assert ch.verify_inclusion(proof["seq"], proof["tree_size"], leaf, path, root)
        if path:
            bad = [bytes(32), *path[1:]]
            assert not ch.verify_inclusion(proof["seq"], proof["tree_size"], leaf, bad, root)
    with pytest.raises(NotFound):
        audit.prove("ae_nope")


def test_prune_keeps_verification_possible(lv: Labvault, audit_log: AuditLog,
                                           audit: AuditService, operator: Actor) -> None:
    day = 86_400_000_000
    t0 = 1_800_000_000_000_000
    now = [t0]
    audit_log.clock = lambda: now[0]
    audit_log.retention_days = 30
    tid, _, ids = _populate(lv, operator, 9)          # 10 entries, 100 days ago
    now[0] = t0 + 70 * day
    pid = lv.patients.register(operator, tid, person(7))
    for _ in range(3):
        lv.patients.show(operator, pid)                 # 4 recent entries
    from labvault.audit.entry import us_to_datetime
    res = audit.prune(now=us_to_datetime(t0 + 100 * day))
    pruned = {p["tenant"]: p for p in res["pruned"]}
    assert pruned[tid]["deleted"] == 10 and pruned[tid]["pruned_below"] == 10
    v = audit.verify(tid)
    assert v["ok"] and v["chains"][0]["first_seq"] == 10 and v["chains"][0]["entries_checked"] == 4
    audit.checkpoint(tid)
    with lv.begin() as conn:
        last = conn.execute(select(E.entry_id).where(E.tenant_id == tid, E.seq == 13)).scalar()
    assert last is not None and audit.prove(last)["verified"]
    # deleting more than the prune anchored is still detected, at the right place
    with lv.begin() as conn:
        conn.execute(delete(audit_entries).where(E.tenant_id == tid, E.seq == 10))
    f = _failure(audit, tid)
    assert (f["kind"], f["seq"]) == ("missing", 10)
    assert ids  # (pruned ids are gone for good)


def test_unknown_tenant_goes_to_platform_chain(lv: Labvault, audit_log: AuditLog,
                                               audit: AuditService) -> None:
    from labvault.domain.categories import Action
    from labvault.services.gate import Access
    intruder = Actor(kind="staff", id="acct_x", tenant_id="lab_fake", roles=frozenset({"x"}))
    with pytest.raises(AccessDenied), lv.begin() as conn:
        lv.gate.check(conn, Access(intruder, Action.READ, "lab_fake", frozenset()))
    with lv.begin() as conn:
        rows = conn.execute(select(E.tenant_id, E.body).where(E.actor_id == "acct_x")).all()
        chains = {r[0] for r in conn.execute(text("select tenant_id from audit_heads"))}
    assert [r[0] for r in rows] == ["_platform"] and json.loads(rows[0][1])["tenant"] == "lab_fake"
    assert "lab_fake" not in chains
    assert audit.verify()["ok"]


def test_verify_needs_no_database_secret(lv: Labvault, audit_log: AuditLog,
                                         audit: AuditService, operator: Actor,
                                         tmp_path: Path) -> None:
    """The head's stored key is sealed: the database alone does not hold a usable MAC key."""
    tid, _, _ = _populate(lv, operator, 2)
    with lv.begin() as conn:
        sealed = conn.execute(select(audit_heads.c.key_sealed)
                              .where(audit_heads.c.tenant_id == tid)).scalar()
        key = audit_log.current_key(conn, tid)
    assert sealed is not None and key not in bytes(sealed) and len(bytes(sealed)) > 32
