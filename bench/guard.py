"""Guard benchmarks.

1. Overhead of read budgets + anomaly rules + honeytoken check on a patient read
   (``lv.patients.show`` by a staff account, with the real audit log as in production),
   against the same core without the budget hook, in the same run: rounds alternate
   the two hooks, ratio = median of per-round ratios (target <= 1.05); plus the CPU
   time spent inside the hook itself per read.
2. Governed export of N patients (default 100,000): selection, gate, unsealing,
   fingerprinting, decoys, NDJSON, age encryption, file on disk (target >= 10,000/s).

    .venv/bin/python bench/guard.py [--patients 100000] [--reads 2000] [--rounds 7] [--pg URL]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pyrage import x25519

from labvault.config import Settings
from labvault.crypto import KeyRing
from labvault.crypto.providers.file import FileKeyProvider
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.services.audit import install_audit
from labvault.services.gate import Access, Decision, NoBudget
from labvault.store import migrate
from labvault.store.engine import make_engine
from labvault.synthetic import make_finess, people


class StaffPolicy:
    def decide(self, access: Access) -> Decision:
        if access.actor.kind in ("operator", "system") or \
                access.actor.tenant_id == access.tenant_id:
            return Decision(True, access.categories, rule="bench")
        return Decision(False)


class Timed:
    """The guard's budget hook with a CPU-time meter around it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cpu = 0.0
        self.calls = 0

    def charge(self, conn: Any, access: Access, decision: Decision) -> None:
        c0 = time.process_time()
        try:
            self.inner.charge(conn, access, decision)
        finally:
            self.cpu += time.process_time() - c0
            self.calls += 1

    def denied(self, conn: Any, access: Access, decision: Decision) -> None:
        self.inner.denied(conn, access, decision)


def open_core(tmp: Path, url: str | None) -> Labvault:
    data = tmp / "var"
    data.mkdir()
    key = tmp / "root.key"
    FileKeyProvider.create(key)
    s = Settings(data_dir=data, database_url=url or f"sqlite:///{data / 'labvault.db'}",
                 key_file=key)
    engine = make_engine(s.database_url)
    migrate.upgrade(engine)
    lv = Labvault(s, engine, KeyRing(FileKeyProvider(key)), policy=StaffPolicy())
    install_audit(lv)       # the read cost includes its audit entry, as in production
    lv.guard.install()
    return lv


def load(lv: Labvault, tenant_id: str, n: int, seed: int) -> list[str]:
    ids: list[str] = []
    step = 20_000
    for start in range(0, n, step):
        lines = (json.dumps({k: v for k, v in p.items() if v is not None})
                 for p in people(min(step, n - start), seed=seed, start=start))
        ids += lv.patients.import_lines(Actor.operator(), tenant_id, lines).ids
    return ids


def bench_reads(lv: Labvault, tenant_id: str, ids: list[str], reads: int, rounds: int
                ) -> dict[str, float]:
    op = Actor.operator()
    for name, value in (("budget.reception.10m", "1000000000"),
                        ("budget.reception.day", "1000000000"),
                        ("rule.enumeration.10m", "1000000000"),
                        ("hours.open", "00:00"), ("hours.close", "23:59"),
                        ("hours.days", "mon-sun")):
        lv.guard.set_config(op, tenant_id, name, value)
    guard_hook = Timed(lv.gate.budget)
    no_hook = NoBudget()
    user = Actor(kind="staff", id="acct_bench", tenant_id=tenant_id,
                 roles=frozenset({"reception"}), client="10.0.0.1", session_id="s")
    rng = random.Random(1)
    sample = [rng.choice(ids) for _ in range(reads)]

    def run(hook: object) -> tuple[float, float]:
        """(wall, CPU) seconds per read; CPU time is what the guard adds, and is far less
        disturbed than wall time by other processes on a shared machine."""
        lv.gate.budget = hook  # type: ignore[assignment]
        t0, c0 = time.perf_counter(), time.process_time()
        for pid in sample:
            lv.patients.show(user, pid)
        return ((time.perf_counter() - t0) / len(sample),
                (time.process_time() - c0) / len(sample))

    run(guard_hook)
    run(no_hook)     # warm caches
    wall: dict[str, list[float]] = {"base": [], "guard": [], "ratio": []}
    cpu: dict[str, list[float]] = {"base": [], "guard": [], "ratio": []}
    for r in range(rounds):
        order = (no_hook, guard_hook) if r % 2 == 0 else (guard_hook, no_hook)
        res = {id(h): run(h) for h in order}
        for i, acc in ((0, wall), (1, cpu)):
            b, g = res[id(no_hook)][i], res[id(guard_hook)][i]
            acc["base"].append(b)
            acc["guard"].append(g)
            acc["ratio"].append(g / b)
    lv.gate.budget = guard_hook.inner
    med = statistics.median
    return {"wall_us_without_guard": med(wall["base"]) * 1e6,
            "wall_us_with_guard": med(wall["guard"]) * 1e6,
            "wall_ratio_median": med(wall["ratio"]),
            "cpu_us_without_guard": med(cpu["base"]) * 1e6,
            "cpu_us_with_guard": med(cpu["guard"]) * 1e6,
            "cpu_ratio_median": med(cpu["ratio"]),
            "cpu_ratio_min": min(cpu["ratio"]), "cpu_ratio_max": max(cpu["ratio"]),
            # CPU spent inside the guard's hook itself (flushes and syncs included), per read,
            # against the whole read without the guard: the guard's share of a read.
            "hook_cpu_us_per_read": guard_hook.cpu / guard_hook.calls * 1e6,
            "hook_share": (guard_hook.cpu / guard_hook.calls) / med(cpu["base"])}


def bench_export(lv: Labvault, tenant_id: str, n: int) -> dict[str, float]:
    key = x25519.Identity.generate()
    lv.settings.extra["LABVAULT_EXPORT_APPROVAL_MIN_PATIENTS"] = str(n + 1)
    fields = ["birth_name", "used_name", "first_names", "birth_date", "sex", "nir", "address",
              "phone", "email", "amo", "amc", "member_id", "blood_group", "prescriber"]
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = lv.guard.exports.create(Actor.operator(), tenant_id, "bench", fields,
                                  date.today() - timedelta(days=1),
                                  date.today() + timedelta(days=1), str(key.to_public()))
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    size = Path(res["file"]).stat().st_size
    return {"patients": res["patients"], "seconds": secs, "patients_per_s": res["patients"] / secs,
            "cpu_seconds": cpu, "patients_per_cpu_s": res["patients"] / cpu,
            "file_mib": size / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pg", default=None, help="PostgreSQL URL (default: SQLite in a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lv = open_core(Path(tmp), args.pg)
        op = Actor.operator()
        tenant_id = lv.tenants.add(op, "Bench lab", make_finess(random.Random())).tenant_id
        t0 = time.perf_counter()
        ids = load(lv, tenant_id, args.patients, seed=5)
        load_s = time.perf_counter() - t0
        lv.guard.plant(op, tenant_id, 5)
        out = {"backend": "postgresql" if args.pg else "sqlite",
               "import_patients_per_s": len(ids) / load_s,
               "reads": bench_reads(lv, tenant_id, ids, args.reads, args.rounds),
               "export": bench_export(lv, tenant_id, len(ids))}
        lv.guard.alerts.flush()
        lv.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
