"""Lookup benchmark: find a patient by NIR, in-process, in a store of N patients.

    python bench/lookup.py [--n 1000000] [--lookups 2000] [--store DIR] [--rebuild]

Build (once; reused by later runs through ``--store``): N synthetic patients in one
laboratory, written through the real import path (``PatientService.import_lines``:
validate, seal every category, wrap a data key, write blind indexes) in batches of
500 lines per transaction, on the embedded default (SQLite, WAL). The patients are
streamed from the generator, never held in memory. Nothing is bypassed: the store is
exactly what `labvault patient import` would produce.

Measure: ``--lookups`` calls of ``lv.patients.find(actor, tenant, nir=...)`` — the whole
service call: NIR validation and normalisation, tenant key check, HMAC, index query,
gate decision with its audit hook — for NIRs of random stored patients, and the same
number for absent NIRs; prints p50/p90/p99 in milliseconds. Target: p50 <= 1 ms at 1M.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from labvault.config import Settings
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.synthetic import make_finess, make_nir, people, strip_none

SEED = 4242


def settings(store: Path) -> Settings:
    data = store / "var"
    return Settings(data_dir=data, database_url=f"sqlite:///{data / 'labvault.db'}",
                    key_file=store / "var.key")


def build(store: Path, n: int) -> tuple[Labvault, str]:
    s = settings(store)
    marker = store / "built.json"
    if marker.exists() and json.loads(marker.read_text())["n"] == n:
        lv = Labvault.open(s)
        return lv, str(json.loads(marker.read_text())["tenant"])
    store.mkdir(parents=True, exist_ok=True)
    for f in store.glob("var*"):
        if f.is_file():
            f.unlink()
    lv = Labvault.init(s)
    actor = Actor.operator()
    tenant = lv.tenants.add(actor, "Laboratoire bench", make_finess(random.Random(SEED))).tenant_id
    t0 = time.perf_counter()
    done = 0

    def progress(k: int) -> None:
        nonlocal done
        done += k
        if done % 50_000 == 0:
            rate = done / (time.perf_counter() - t0)
            print(f"  built {done:>9,} patients  ({rate:,.0f}/s)", file=sys.stderr)

    lines = (json.dumps(strip_none(p), ensure_ascii=False) for p in people(n, seed=SEED))
    report = lv.patients.import_lines(actor, tenant, lines, progress=progress)
    dt = time.perf_counter() - t0
    print(f"built {report.imported:,} patients in {dt:,.0f} s ({report.imported / dt:,.0f}/s); "
          f"{len(report.rejected)} rejected, {report.skipped} duplicate external ids",
          file=sys.stderr)
    marker.write_text(json.dumps({"n": n, "tenant": tenant, "imported": report.imported,
                                  "build_seconds": round(dt, 1)}))
    return lv, tenant


def sample_nirs(n: int, k: int) -> list[str]:
    """NIRs of k random stored patients (regenerated from the same deterministic stream)."""
    rng = random.Random(7)
    picks = sorted(rng.sample(range(n), k))
    out: list[str] = []
    j = 0
    for i, p in enumerate(people(n, seed=SEED)):
        while j < len(picks) and picks[j] == i:
            out.append(p["nir"])
            j += 1
        if j == len(picks):
            break
    rng.shuffle(out)
    return out


def absent_nirs(k: int) -> list[str]:
    from datetime import date
    rng = random.Random(9)
    # Born abroad in a country code the generator never uses: cannot be in the store.
    return [make_nir(rng.choice("FM"), date(1950 + rng.randint(0, 60), rng.randint(1, 12), 1),
                     "99999", rng.randint(1, 999)) for _ in range(k)]


def timed(lv: Labvault, tenant: str, nirs: list[str]) -> tuple[list[float], int]:
    actor = Actor.operator()
    out: list[float] = []
    hits = 0
    for nir in nirs:
        t0 = time.perf_counter_ns()
        ids = lv.patients.find(actor, tenant, nir=nir)
        out.append((time.perf_counter_ns() - t0) / 1e6)
        hits += bool(ids)
    return out, hits


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="patients in the store")
    ap.add_argument("--lookups", type=int, default=2000, help="lookups of each kind")
    ap.add_argument("--store", type=Path, default=None,
                    help="directory keeping the built store between runs "
                         "(default: <tmp>/labvault-bench-lookup-<n>)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the store")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    store = args.store or Path(tempfile.gettempdir()) / f"labvault-bench-lookup-{args.n}"
    if args.rebuild and (store / "built.json").exists():
        (store / "built.json").unlink()
    lv, tenant = build(store, args.n)
    try:
        present = sample_nirs(args.n, min(args.lookups, args.n))
        timed(lv, tenant, present[:100])            # warm the page cache and the key ring
        hit_ms, hits = timed(lv, tenant, present)
        miss_ms, false_hits = timed(lv, tenant, absent_nirs(args.lookups))
    finally:
        lv.close()
    db = settings(store).data_dir / "labvault.db"
    out: dict[str, Any] = {
        "n": args.n, "lookups": len(hit_ms), "db_bytes": db.stat().st_size,
        "found": hits, "false_hits": false_hits,
        "hit_ms": {"p50": round(statistics.median(hit_ms), 3), "p90": round(pct(hit_ms, .9), 3),
                   "p99": round(pct(hit_ms, .99), 3)},
        "miss_ms": {"p50": round(statistics.median(miss_ms), 3),
                    "p90": round(pct(miss_ms, .9), 3), "p99": round(pct(miss_ms, .99), 3)},
    }
    out["target_p50_le_1ms"] = out["hit_ms"]["p50"] <= 1.0
    marker = store / "built.json"
    if marker.exists():
        out["build"] = json.loads(marker.read_text())
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"N={args.n:,} patients, {len(hit_ms)} lookups by NIR (db {out['db_bytes'] / 1e9:.2f} GB)")
        for k in ("hit_ms", "miss_ms"):
            v = out[k]
            print(f"  {k[:-3]:5s} p50 {v['p50']:.3f} ms  p90 {v['p90']:.3f} ms  p99 {v['p99']:.3f} ms")
        print(f"  found {hits}/{len(hit_ms)}; absent NIRs that matched: {false_hits}")
        print(f"  target p50 <= 1 ms: {'met' if out['target_p50_le_1ms'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
