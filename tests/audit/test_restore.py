"""Restores of the database and the audit trail (docs/audit.md "Restores"): a chain
behind its signed checkpoints refuses appends until the operator acknowledges the
restore with a signed record; the record re-anchors the chain in a new epoch and the
loss is reported for ever; nothing else (a truncation, an edited prefix, a forged or
removed record) passes for a restore."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from labvault.audit import chain as ch
from labvault.audit.checkpoints import Checkpoint, CheckpointStore, SigningKey, history
from labvault.audit.log import AuditLog, signing_key_path
from labvault.audit.ops import walk_rows
from labvault.domain.actors import Actor
from labvault.errors import AuditChainBehind
from labvault.services.app import Labvault
from labvault.services.audit import AuditService
from labvault.store.tables_audit import audit_entries, audit_heads, audit_refs
from tests.audit.helpers import LabPolicy, new_lab, person, staff
from tests.audit.test_chain_properties import build, checkpoint_of
from tests.foundation.conftest import Cli, make_cli, synthetic, write_ndjson

E = audit_entries.c
H = audit_heads.c


# -- the command line on an embedded installation -----------------------------------------
def _installed(cli: Cli) -> tuple[str, list[dict[str, Any]], list[str]]:
    tenant = cli.init_with_tenant()
    recs = synthetic(5, seed=53)
    cli.ok("patient", "import", str(write_ndjson(cli.root / "p.ndjson", recs)), "--tenant", tenant)
    ids = [cli.ok("patient", "find", "--tenant", tenant, "--nir", str(r["nir"]))["patients"][0]
           for r in recs]
    return tenant, recs, ids


def _restore(cli: Cli, file: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cli.db_file}{suffix}").unlink(missing_ok=True)
    file_bytes = file.read_bytes()
    cli.db_file.write_bytes(file_bytes)
    cli.db_file.chmod(0o600)


def _verify(cli: Cli, tenant: str) -> tuple[int, dict[str, Any]]:
    r = cli.run("audit", "verify", "--tenant", tenant, "--json")
    return r.exit_code, json.loads(r.stdout)


def _restored(cli: Cli, checkpoint_first: bool = True
              ) -> tuple[str, list[dict[str, Any]], list[str], int, int]:
    """An installation restored from a backup: (tenant, records, ids, N restored, M signed)."""
    tenant, recs, ids = _installed(cli)
    if checkpoint_first:
        cli.ok("audit", "checkpoint")
    file = Path(cli.ok("backup", "create", str(cli.root / "backups"))["file"])
    for pid in ids[:3]:
        cli.ok("patient", "show", pid)
    cli.ok("audit", "checkpoint")
    m = cli.ok("audit", "verify", "--tenant", tenant)["chains"][0]["next_seq"]
    _restore(cli, file)
    code, res = _verify(cli, tenant)
    assert code == 1 and res["failures"][0]["kind"] == "truncated"
    return tenant, recs, ids, res["chains"][0]["next_seq"], m


@pytest.fixture
def cli(tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    c = make_cli("sqlite", tmp_path, request)
    c.env["LABVAULT_AUDIT_CHECKPOINT_EVERY"] = "0"
    return c


def _sql(cli: Cli, statement: str, *args: object) -> None:
    db = sqlite3.connect(cli.db_file)
    try:
        db.execute(statement, args)
        db.commit()
    finally:
        db.close()


def test_a_truncation_is_no_restore(cli: Cli) -> None:
    """The newest entries deleted with sqlite3: TAMPERED, and it stays so; whatever the
    intruder does to the head, acknowledge-restore refuses it (exit 1)."""
    tenant, recs, ids = _installed(cli)
    for pid in ids:
        cli.ok("patient", "show", pid)
    cli.ok("audit", "checkpoint")
    m = cli.ok("audit", "verify", "--tenant", tenant)["chains"][0]["next_seq"]
    # 1. rows deleted, head left alone
    _sql(cli, "DELETE FROM audit_entries WHERE tenant_id = ? AND seq >= ?", tenant, m - 3)
    code, res = _verify(cli, tenant)
    assert code == 1 and res["failures"][0]["kind"] == "truncated"
    assert "acknowledge-restore" not in res["failures"][0]["message"]
    ack = cli.run("audit", "acknowledge-restore", "--tenant", tenant, "--reason", "x", "--json")
    assert ack.exit_code == 1 and json.loads(ack.stdout)["chains"][0]["status"] == "refused"
    # 2. ... and the head's position rolled back by hand, as a restore would
    _sql(cli, "UPDATE audit_heads SET next_seq = ? WHERE tenant_id = ?", m - 3, tenant)
    code, res = _verify(cli, tenant)
    assert code == 1 and res["failures"][0]["kind"] == "truncated"
    r = cli.user_error("patient", "find", "--tenant", tenant, "--nir", str(recs[0]["nir"]))
    assert "acknowledge-restore" in r.stderr            # nothing reuses a lost position
    ack = cli.run("audit", "acknowledge-restore", "--tenant", tenant, "--reason", "x", "--json")
    out = json.loads(ack.stdout)["chains"][0]
    assert ack.exit_code == 1 and out["status"] == "refused"
    assert out["problem"]["kind"] == "head-mismatch"
    assert not list((cli.data_dir / "checkpoints" / tenant).glob("restore-*"))
    code, res = _verify(cli, tenant)
    assert code == 1 and res["chains"][0]["restores"] == []


def test_an_edited_restored_prefix_is_not_acknowledged(cli: Cli) -> None:
    tenant, recs, _ids, n, _m = _restored(cli)
    _sql(cli, "UPDATE audit_entries SET actor_id = 'acct_nobody' WHERE tenant_id = ? AND seq = ?",
         tenant, n - 2)
    r = cli.run("audit", "acknowledge-restore", "--all", "--reason", "restored", "--json")
    out = {c["tenant"]: c for c in json.loads(r.stdout)["chains"]}
    assert r.exit_code == 1 and out[tenant]["status"] == "refused"
    assert (out[tenant]["problem"]["kind"], out[tenant]["problem"]["seq"]) == ("mac-mismatch",
                                                                               n - 2)
    assert out["_platform"]["status"] in ("acknowledged", "not-behind")    # the others go on
    assert not list((cli.data_dir / "checkpoints" / tenant).glob("restore-*"))
    cli.user_error("patient", "find", "--tenant", tenant, "--nir", str(recs[0]["nir"]))
    assert _verify(cli, tenant)[0] == 1


def _store(cli: Cli, key: Path | None = None) -> CheckpointStore:
    return CheckpointStore(cli.data_dir / "checkpoints",
                           SigningKey(key or signing_key_path(cli.settings())))


def test_a_forged_restore_record_is_detected(cli: Cli, tmp_path: Path) -> None:
    tenant, recs, _ids, n, m = _restored(cli)
    # signed by a key of the intruder's own: its signature does not verify
    intruder = _store(cli, tmp_path / "intruder.key")
    intruder.key.ensure()
    forged = intruder.write_restore(
        tenant, n, bytes(32), bytes(32), [], 1, {"lost_to": m, "anchor": None,
                                                 "operator": "os:root@host", "reason": "x"})
    code, res = _verify(cli, tenant)
    assert code == 1 and res["failures"][0]["kind"] == "truncated"
    assert any("signature does not verify" in w for w in res["chains"][0]["warnings"])
    r = cli.user_error("patient", "find", "--tenant", tenant, "--nir", str(recs[0]["nir"]))
    assert "acknowledge-restore" in r.stderr
    assert forged.path is not None
    forged.path.unlink()
    # a genuine record, edited afterwards to understate the loss: no longer verifies
    cli.ok("audit", "acknowledge-restore", "--tenant", tenant, "--reason", "restored")
    assert _verify(cli, tenant)[0] == 0
    record = cli.data_dir / "checkpoints" / tenant / "restore-e000001.json"
    doc = json.loads(record.read_text())
    doc["restore"]["lost_to"] = n + 1
    record.write_text(json.dumps(doc))
    code, res = _verify(cli, tenant)
    assert code == 1 and res["failures"][0]["kind"] in ("truncated", "root-mismatch")
    assert any("signature does not verify" in w for w in res["chains"][0]["warnings"])


def test_a_record_whose_prefix_does_not_match_is_tampering(cli: Cli) -> None:
    """Signed with the real key (a key holder, or a bug), but the chain is not what it
    says was restored: exit 1 at its boundary."""
    tenant, _recs, _ids, n, m = _restored(cli)
    _store(cli).write_restore(tenant, n, bytes(32), bytes(32), [bytes(32)] * n.bit_count(), 1,
                              {"lost_to": m, "anchor": None, "operator": "os:x@y",
                               "reason": "not what happened"})
    code, res = _verify(cli, tenant)
    assert code == 1
    assert (res["failures"][0]["kind"], res["failures"][0]["seq"]) == ("root-mismatch", n - 1)


def test_a_removed_restore_record_is_detected(cli: Cli) -> None:
    tenant, recs, ids, _n, _m = _restored(cli)
    cli.ok("audit", "acknowledge-restore", "--all", "--reason", "restored")
    cli.ok("patient", "show", ids[4])
    cli.ok("audit", "checkpoint")
    assert _verify(cli, tenant)[0] == 0
    (cli.data_dir / "checkpoints" / tenant / "restore-e000001.json").unlink()
    code, res = _verify(cli, tenant)
    assert code == 1 and res["failures"][0]["kind"] == "checkpoint-history"
    assert "restore record was removed" in res["failures"][0]["message"]
    r = cli.user_error("patient", "find", "--tenant", tenant, "--nir", str(recs[0]["nir"]))
    assert "inconsistent" in " ".join(r.stderr.split())


def test_an_unanchored_restore_needs_saying_so(cli: Cli) -> None:
    """No checkpoint of the restored size or fewer: acknowledged only with --unanchored,
    and verify says so for ever."""
    tenant, _recs, _ids, n, m = _restored(cli, checkpoint_first=False)
    r = cli.run("audit", "acknowledge-restore", "--tenant", tenant, "--reason", "restored")
    assert r.exit_code == 2 and "--unanchored" in r.stderr
    assert not list((cli.data_dir / "checkpoints" / tenant).glob("restore-*"))
    out = cli.ok("audit", "acknowledge-restore", "--tenant", tenant, "--reason", "restored",
                 "--unanchored")["chains"][0]
    assert out["status"] == "acknowledged" and not out["anchored"]
    r = cli.run("audit", "verify", "--tenant", tenant)
    assert r.exit_code == 0 and "UNANCHORED" in r.stdout
    assert f"entries {n}..{m - 1} lost" in " ".join(r.stdout.split())


def test_restores_in_a_row(cli: Cli) -> None:
    """A second restore, of a backup taken after the first was acknowledged: epoch 2,
    anchored by the first epoch's checkpoints; both losses reported."""
    tenant, recs, ids, n1, m1 = _restored(cli)
    cli.ok("audit", "acknowledge-restore", "--all", "--reason", "first")
    cli.ok("patient", "show", ids[4])
    cli.ok("audit", "checkpoint")
    second = Path(cli.ok("backup", "create", str(cli.root / "backups2"))["file"])
    for pid in ids:
        cli.ok("patient", "show", pid)
    cli.ok("audit", "checkpoint")
    m2 = cli.ok("audit", "verify", "--tenant", tenant)["chains"][0]["next_seq"]
    _restore(cli, second)
    code, res = _verify(cli, tenant)
    n2 = res["chains"][0]["next_seq"]
    assert code == 1 and n1 < n2 < m2 and res["failures"][0]["kind"] == "truncated"
    out = {c["tenant"]: c for c in cli.ok("audit", "acknowledge-restore", "--all", "--reason",
                                           "second")["chains"]}
    assert out[tenant]["epoch"] == 2 and out[tenant]["anchor"]["epoch"] == 1
    cli.ok("patient", "find", "--tenant", tenant, "--nir", str(recs[0]["nir"]))
    cli.ok("audit", "checkpoint")
    code, res = _verify(cli, tenant)
    assert code == 0 and res["entries_lost_at_restores"] == (m1 - n1) + (m2 - n2)
    assert [(x["epoch"], x["lost_from"], x["lost_to"]) for x in res["restores"]] == [
        (1, n1, m1), (2, n2, m2)]


def test_a_checkpoint_put_back_after_the_acknowledgement_widens_the_loss(cli: Cli) -> None:
    """The record says what was signed when it was signed; a checkpoint of the old epoch
    that was missing then (put back from its copy) shows more was lost, and verify says so."""
    tenant, _recs, ids = _installed(cli)
    cli.ok("audit", "checkpoint")
    file = Path(cli.ok("backup", "create", str(cli.root / "backups"))["file"])
    cli.ok("patient", "show", ids[0])
    m1 = cli.ok("audit", "checkpoint")["checkpoints"]
    m1 = next(c["tree_size"] for c in m1 if c["tenant"] == tenant)
    for pid in ids:
        cli.ok("patient", "show", pid)
    last = next(c for c in cli.ok("audit", "checkpoint")["checkpoints"]
                if c["tenant"] == tenant)
    _restore(cli, file)
    hidden = Path(last["file"]).rename(cli.root / "hidden.json")
    out = cli.ok("audit", "acknowledge-restore", "--all", "--reason", "restored")
    mine = next(c for c in out["chains"] if c["tenant"] == tenant)
    n = mine["restored_size"]
    assert mine["lost_to"] == m1 < last["tree_size"]
    hidden.rename(last["file"])
    code, res = _verify(cli, tenant)
    assert code == 0 and res["restores"][0]["lost_to"] == last["tree_size"]
    assert res["entries_lost_at_restores"] == last["tree_size"] - n
    assert any("more than the restore record" in w for w in res["chains"][0]["warnings"])


def test_backup_check_says_what_a_restore_will_need_acknowledged(cli: Cli) -> None:
    tenant, _recs, ids = _installed(cli)
    file = cli.ok("backup", "create", str(cli.root / "backups"))["file"]
    cli.ok("patient", "show", ids[0])
    drill = cli.ok("backup", "check", file)
    assert drill["audit_chains_to_acknowledge"] == [] and drill["audit_entries_lost_on_restore"]
    cli.ok("audit", "checkpoint")
    drill = cli.ok("backup", "check", file)
    assert tenant in drill["audit_chains_to_acknowledge"]
    assert drill["audit_entries_to_acknowledge"] >= 1
    r = cli.run("backup", "check", file)
    assert "acknowledge-restore" in " ".join(r.stdout.split())


# -- in process, both backends ---------------------------------------------------------------
def _head(lv: Labvault, chain: str) -> dict[str, Any]:
    with lv.begin() as conn:
        return dict(conn.execute(select(audit_heads).where(H.tenant_id == chain))
                    .mappings().one())


def _roll_back(lv: Labvault, audit_log: AuditLog, chain: str, head: dict[str, Any]) -> None:
    """What restoring a backup does to one chain: its entries and head as they were."""
    with lv.begin() as conn:
        n = head["next_seq"]
        conn.execute(delete(audit_refs).where(audit_refs.c.tenant_id == chain,
                                              audit_refs.c.seq >= n))
        conn.execute(delete(audit_entries).where(E.tenant_id == chain, E.seq >= n))
        conn.execute(update(audit_heads).where(H.tenant_id == chain)
                     .values(**{k: v for k, v in head.items() if k != "tenant_id"}))
    audit_log.forget_cache()        # a restart


@pytest.mark.parametrize("group_ms", [0, 60_000])
def test_reads_are_refused_until_the_restore_is_acknowledged(
        lv: Labvault, audit_log: AuditLog, audit: AuditService, operator: Actor,
        group_ms: int) -> None:
    """Fail closed, reads included — also when reads' entries are written later by the
    group-commit writer (it could not write them)."""
    lv.gate.policy = LabPolicy()
    tid = new_lab(lv)
    pid = lv.patients.register(operator, tid, person(0))
    audit.checkpoint(tid)
    saved = _head(lv, tid)
    for _ in range(3):
        lv.patients.show(operator, pid)
    audit.checkpoint(tid)
    _roll_back(lv, audit_log, tid, saved)
    audit_log.group_ms = group_ms
    for actor in (operator, staff(tid)):
        with pytest.raises(AuditChainBehind, match="acknowledge-restore"):
            lv.patients.show(actor, pid)
    assert audit_log.pending() == 0
    res = audit.acknowledge_restore(operator, tid, "restored from last night's backup")
    chain = res["chains"][0]
    assert chain["status"] == "acknowledged" and chain["lost"] == 3
    lv.patients.show(staff(tid), pid)
    audit_log.flush()
    v = audit.verify(tid)
    assert v["ok"] and v["warnings"] == 1 and v["entries_lost_at_restores"] == 3
    assert v["chains"][0]["next_seq"] == saved["next_seq"] + 2   # acknowledgement + read
    audit.checkpoint(tid)
    assert audit.verify(tid)["ok"]


def test_a_new_chain_with_old_checkpoints_is_refused(lv: Labvault, audit_log: AuditLog,
                                                     audit: AuditService,
                                                     operator: Actor) -> None:
    """Checkpoints of a chain the database no longer holds at all (a data directory whose
    database was replaced): its first append would restart at 0; refused alike."""
    tid = new_lab(lv)
    lv.patients.register(operator, tid, person(0))
    audit.checkpoint()
    with lv.begin() as conn:
        conn.execute(delete(audit_entries).where(E.tenant_id == "_platform"))
        conn.execute(delete(audit_heads).where(H.tenant_id == "_platform"))
    audit_log.forget_cache()
    with pytest.raises(AuditChainBehind, match="_platform"):
        new_lab(lv, "Laboratoire du Hainaut")


# -- the history of epochs, pure -------------------------------------------------------------
def _record(chain: str, state: ch.State, epoch: int, lost_to: int) -> Checkpoint:
    return Checkpoint(chain, state.next_seq, ch.frontier_root(state.frontier), state.prev,
                      tuple(state.frontier), datetime.now(UTC), "restore", "test", b"",
                      None, epoch, {"lost_to": lost_to, "anchor": None, "operator": "t",
                                    "reason": "t"})


def _at(chain: str, state: ch.State, epoch: int) -> Checkpoint:
    cp = checkpoint_of(chain, state)
    return Checkpoint(cp.tenant, cp.tree_size, cp.root, cp.last_leaf, cp.frontier, cp.time,
                      cp.kind, cp.key_id, cp.signature, None, epoch)


def test_history_reads_epochs() -> None:
    import random
    rng = random.Random(3)
    k0 = rng.randbytes(32)
    states: list[ch.State] = []
    build("lab_a", k0, 30, rng, states)
    s = {st.next_seq: st for st in states}
    old = [_at("lab_a", s[n], 0) for n in (8, 12, 16)]
    record = _record("lab_a", s[10], 1, 16)
    h = history([*old, record])
    assert h.epoch == 1 and not h.problems
    assert [c.tree_size for c in h.lineage] == [8, 10]
    assert [(c.tree_size, cut) for c, cut in h.partial] == [(12, 10), (16, 10)]
    assert h.latest is record
    # a checkpoint of epoch 1 without its record: the record was removed
    h = history([*old, _at("lab_a", s[12], 1)])
    assert h.problems and "removed" in h.problems[0][1]
    # two records for one epoch
    h = history([*old, record, _record("lab_a", s[9], 1, 16)])
    assert h.problems and "two restore records" in h.problems[0][1]
    # acknowledging at 10 now: today's history stops there
    h = history(old, restore_at=10)
    assert h.epoch == 1 and h.latest is not None and h.latest.tree_size == 8


def test_checkpoints_of_epoch_0_are_signed_as_before() -> None:
    cp = checkpoint_of("lab_a", ch.State(1, ch.ZERO, bytes(32), [bytes(32)]))
    assert set(cp.signed_fields()) == {"format", "kind", "tenant", "tree_size", "root",
                                       "last_leaf", "frontier", "time", "key_id"}


def test_a_rebuilt_prefix_is_caught_by_a_larger_checkpoint() -> None:
    """Whoever holds k_0 can rebuild entries with valid MACs. A restored prefix of 14 is
    checked against every checkpoint of 14 or fewer, root for root, and against the
    perfect subtrees below 14 of the larger ones (here [12, 14) of the checkpoint of 15)."""
    import random
    rng = random.Random(7)
    k0 = rng.randbytes(32)
    states: list[ch.State] = []
    rows, _ = build("lab_a", k0, 20, rng, states)
    s = {st.next_seq: st for st in states}
    cps = [checkpoint_of("lab_a", s[8]), checkpoint_of("lab_a", s[15]),
           checkpoint_of("lab_a", s[20])]
    prefix = rows[:14]
    ok = walk_rows("lab_a", k0, prefix, cps, head_next=14, restore_at=14)
    assert ok.ok and ok.checkpoints_checked >= 3
    # rebuild entries 12 and 13 (valid MACs under the keys k_0 gives)
    state = s[12]
    forged = list(prefix[:12])
    for r in prefix[12:]:
        row, state = ch.append(state, "lab_a", r.entry_id, r.at_us, "acct_nobody",
                               r.patient_id, r.action, r.outcome, r.body)
        forged.append(row)
    assert walk_rows("lab_a", k0, forged, [], head_next=14).ok        # MACs alone: fine
    bad = walk_rows("lab_a", k0, forged, cps, head_next=14, restore_at=14)
    assert not bad.ok and bad.problem is not None
    assert (bad.problem.kind, bad.problem.seq) == ("root-mismatch", 13)
    assert "12..13" in bad.problem.message
