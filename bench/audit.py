"""Audit trail benchmark.

1. patient-read cost with and without auditing, in the same run (blocks alternated,
   median of the per-block ratios): operator reads (no address to seal) and staff reads
   from a network address (the address is sealed into the entry); each in the default
   mode (entry in the reading transaction) and with group commit of reads
   (``LABVAULT_AUDIT_READ_GROUP_MS``; the block's queued entries are written inside the
   timed block, so the batch writes are charged to the reads that caused them);
2. append throughput (one transaction per entry, and many entries per transaction);
3. ``verify`` over N entries (default 1,000,000) of one chain, streamed from the database.

    .venv/bin/python bench/audit.py [--backend sqlite|postgres] [--entries 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text, update
from sqlalchemy.engine import Connection

from labvault.audit import chain as ch
from labvault.audit.log import AuditLog
from labvault.config import Settings
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.services.audit import audit_of, install_audit
from labvault.services.gate import Access, Decision
from labvault.store.tables_audit import audit_entries, audit_heads
from labvault.synthetic import make_finess, people

PG_URL = os.environ.get("LABVAULT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


class NoAudit:
    """The baseline: a gate without audit."""

    def record(self, conn: Connection, access: Access, decision: Decision, outcome: str) -> None:
        return None

    def event(self, conn: Connection, actor: Actor, event: str, outcome: str,
              tenant_id: str | None, detail: Mapping[str, Any]) -> None:
        return None


class StaffPolicy:
    def decide(self, access: Access) -> Decision:
        return Decision(True, access.categories, rule="bench")


def open_core(backend: str, tmp: Path) -> tuple[Labvault, Callable[[], None]]:
    env = {"LABVAULT_AUDIT_CHECKPOINT_EVERY": "1000"}
    if backend == "postgres":
        from labvault.store.engine import make_engine
        schema = f"lvbench_{secrets.token_hex(4)}"
        admin = make_engine(PG_URL)
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
        env["LABVAULT_DATABASE_URL"] = PG_URL + f"?options=-csearch_path%3D{schema}"

        def drop() -> None:
            with admin.begin() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    else:
        def drop() -> None:
            return None
    settings = Settings.from_env(tmp / "var", env=env)
    Labvault.init(settings).close()
    lv = Labvault.open(settings)
    return lv, drop


def timed(fn: Callable[[], object], n: int,
          finish: Callable[[], object] = lambda: None) -> tuple[float, float]:
    """(wall, process CPU) seconds per call. On a shared machine the CPU time of this
    process is the steadier measure: SQLite and the hashing run in-process."""
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    finish()
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def read_ratio(lv: Labvault, audit: AuditLog, reader: Actor, pids: list[str], blocks: int,
               per_block: int, group_ms: int = 0) -> dict[str, float]:
    rng = random.Random(1)
    res: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
    audit.group_ms = group_ms
    for b in range(blocks):
        for mode in (("with", "without") if b % 2 == 0 else ("without", "with")):
            lv.gate.audit = audit if mode == "with" else NoAudit()
            res[mode].append(timed(lambda: lv.patients.show(reader, rng.choice(pids)),
                                   per_block, audit.flush))
        lv.gate.audit = audit
    audit.group_ms = 0
    out: dict[str, float] = {}
    for i, clock in ((0, "wall"), (1, "cpu")):
        w = [r[i] for r in res["with"]]
        wo = [r[i] for r in res["without"]]
        ratios = [a / b for a, b in zip(w, wo, strict=True)]
        out[f"{clock}_without_audit_ms"] = statistics.median(wo) * 1e3
        out[f"{clock}_with_audit_ms"] = statistics.median(w) * 1e3
        out[f"{clock}_ratio_median"] = statistics.median(ratios)
        out[f"{clock}_ratio_min"] = min(ratios)
        out[f"{clock}_ratio_max"] = max(ratios)
    return out


def append_throughput(lv: Labvault, tenant: str, n: int) -> dict[str, float]:
    audit = lv.gate.audit
    actor = Actor(kind="staff", id="acct_bench", tenant_id=tenant, roles=frozenset({"bio"}),
                  client="cli")
    t, c = time.perf_counter(), time.process_time()
    for i in range(n):
        with lv.begin() as conn:
            audit.event(conn, actor, "bench.event", "success", tenant, {"count": i})
    one_per_tx = (n / (time.perf_counter() - t), n / (time.process_time() - c))
    t, c = time.perf_counter(), time.process_time()
    with lv.begin() as conn:
        for i in range(n):
            audit.event(conn, actor, "bench.event", "success", tenant, {"count": i})
    batched = (n / (time.perf_counter() - t), n / (time.process_time() - c))
    return {"appends_per_s_one_per_transaction_wall": one_per_tx[0],
            "appends_per_s_one_per_transaction_cpu": one_per_tx[1],
            "appends_per_s_one_transaction_wall": batched[0],
            "appends_per_s_one_transaction_cpu": batched[1]}


def fill_chain(lv: Labvault, audit: AuditLog, tenant: str, n: int) -> float:
    """Write n valid entries straight into a fresh chain (bulk), as the log would have."""
    t = time.perf_counter()
    with lv.begin() as conn:
        k0 = audit.k0(conn, tenant)
    state = ch.State.genesis(k0)
    body = json.dumps({"actor_kind": "staff", "categories": ["clinical", "identity"],
                       "client": None, "patients": ["pt_" + "x" * 26], "purpose": "care",
                       "request_id": None, "resource": "patient", "roles": ["biologist"],
                       "rule": "staff-own-lab", "tenant": tenant, "v": 1},
                      sort_keys=True, separators=(",", ":"))
    batch: list[dict[str, Any]] = []
    at = time.time_ns() // 1000 - n
    for i in range(n):
        row, state = ch.append(state, tenant, f"ae_{i:026d}", at + i, "acct_" + "b" * 26,
                               f"pt_{i % 5000:026d}", "read", "allowed", body)
        d = row._asdict()
        d["tenant_id"] = d.pop("chain")
        batch.append(d)
        if len(batch) == 50_000 or i == n - 1:
            with lv.begin() as conn:
                conn.execute(insert(audit_entries), batch)
            batch = []
    with lv.begin() as conn:
        conn.execute(update(audit_heads).where(audit_heads.c.tenant_id == tenant).values(
            next_seq=state.next_seq, last_hash=state.prev,
            key_sealed=audit._seal_key(conn, tenant, state.key),
            frontier=ch.pack_frontier(state.frontier)))
    audit.forget_cache()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--entries", type=int, default=1_000_000, help="entries to verify")
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--per-block", type=int, default=200)
    ap.add_argument("--appends", type=int, default=2000)
    ap.add_argument("--group-ms", type=int, default=200,
                    help="LABVAULT_AUDIT_READ_GROUP_MS for the grouped read figures")
    ap.add_argument("--skip-verify", action="store_true", help="only the read and append parts")
    args = ap.parse_args()
    out: dict[str, Any] = {"backend": args.backend, "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        lv, drop = open_core(args.backend, Path(d))
        try:
            audit = install_audit(lv)
            operator = Actor.operator()
            tenant = lv.tenants.add(operator, "Bench", make_finess(random.Random(3))).tenant_id
            rows = [json.dumps({k: v for k, v in p.items() if v is not None})
                    for p in people(args.patients, seed=5)]
            pids = lv.patients.import_lines(operator, tenant, rows).ids
            for p in pids[:20]:   # warm caches and the chain head
                lv.patients.show(operator, p)
            policy = lv.gate.policy
            staff = Actor(kind="staff", id="acct_bench", tenant_id=tenant,
                          roles=frozenset({"biologist"}), client="10.1.2.3")
            for label, ms in (("", 0), ("_grouped", args.group_ms)):
                lv.gate.policy = policy
                out["operator_read" + label] = read_ratio(lv, audit, operator, pids,
                                                          args.blocks, args.per_block, ms)
                lv.gate.policy = StaffPolicy()
                out["staff_read_from_network" + label] = read_ratio(
                    lv, audit, staff, pids, args.blocks, args.per_block, ms)
            lv.gate.policy = policy
            out["append"] = append_throughput(lv, tenant, args.appends)
            if args.skip_verify:
                print(json.dumps(out, indent=1))
                return
            big = lv.tenants.add(operator, "Big", make_finess(random.Random(4))).tenant_id
            with lv.begin() as conn:   # create the chain (head + audit key)
                audit.event(conn, operator, "bench.start", "success", big, {})
            with lv.begin() as conn:
                conn.execute(audit_entries.delete().where(audit_entries.c.tenant_id == big))
                conn.execute(update(audit_heads).where(audit_heads.c.tenant_id == big)
                             .values(next_seq=0, frontier=b"", last_hash=bytes(32),
                                     key_sealed=audit._seal_key(conn, big,
                                                                audit.k0(conn, big))))
            out["fill_seconds"] = fill_chain(lv, audit, big, args.entries)
            svc = audit_of(lv)
            runs = []
            for _ in range(3 if args.entries <= 200_000 else 1):  # 1M: one run
                t, c = time.perf_counter(), time.process_time()
                res = svc.verify(big)
                runs.append((time.perf_counter() - t, time.process_time() - c))
                assert res["ok"] and res["entries_checked"] == args.entries, res
            out["verify"] = {"entries": args.entries,
                             "seconds_wall": statistics.median(r[0] for r in runs),
                             "seconds_cpu": statistics.median(r[1] for r in runs),
                             "us_per_entry_wall": statistics.median(r[0] for r in runs)
                             / args.entries * 1e6}
            # "who saw my record" on the big chain: one patient of 5,000, ~200 entries
            # spread over every bucket of the patient index (docs/audit.md)
            from labvault.store import repositories_audit as arepo
            times = []
            for _ in range(5):
                t = time.perf_counter()
                with lv.begin() as conn:
                    found = arepo.entries_for_patient(conn, big, f"pt_{7:026d}")
                times.append(time.perf_counter() - t)
            assert len(found) == args.entries // 5000 + (args.entries % 5000 > 7), len(found)
            out["who_saw"] = {"entries_found": len(found),
                              "ms_median": statistics.median(times) * 1e3}
            # the walk alone (in memory), to separate hashing from database streaming
            with lv.begin() as conn:
                mem = [tuple(r) for b in arepo.stream_rows(conn, big) for r in b]
                k0 = audit.k0(conn, big)
            from labvault.audit.ops import walk_rows
            t, c = time.perf_counter(), time.process_time()
            rep = walk_rows(big, k0, mem)
            assert rep.ok
            out["verify"]["walk_only_seconds_wall"] = time.perf_counter() - t
            out["verify"]["walk_only_seconds_cpu"] = time.process_time() - c
            out["load_average_end"] = os.getloadavg()
        finally:
            lv.close()
            drop()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
