"""Lookup benchmark: find a patient by NIR, in-process, in a store of N patients.

    python bench/lookup.py [--n 1000000] [--lookups 2000] [--store DIR] [--rebuild]

Build (once; reused by later runs through ``--store``): N synthetic patients in one
laboratory, written through the bulk import path ``PatientService.import_records``
(typed records: the same sealing of every category, wrapped data key, blind indexes,
batches of 500 per transaction, gate decisions and idempotence as
``labvault patient import``, minus the NDJSON parsing and field validators). The
generator's records are turned into ``PatientRecord`` directly (``record``), checked
equal to ``PatientRecord.parse`` on the first 2,000 and every 10,000th. The patients
are streamed, never held in memory; the store is what an import of the same NDJSON
would produce. The only build-time change is a
1 GiB SQLite page cache (random index inserts stay in memory); lookups are then
measured on a freshly opened store with labvault's default settings.

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
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import event

from labvault.config import Settings
from labvault.domain.actors import Actor
from labvault.domain.patient import Address, PatientRecord, Prescriber
from labvault.services.app import Labvault
from labvault.synthetic import make_finess, make_nir, people, strip_none

SEED = 4242


def settings(store: Path) -> Settings:
    data = store / "var"
    return Settings(data_dir=data, database_url=f"sqlite:///{data / 'labvault.db'}",
                    key_file=store / "var.key")


def record(p: dict[str, Any]) -> PatientRecord:
    """The generator's dict as a typed record, without the field validators.

    The generator's values are valid by construction; only the phone needs normalising
    (to E.164), which is done with string operations here. ``records`` checks that this
    gives exactly ``PatientRecord.parse``'s result on a sample before trusting it.
    """
    phone = p["phone"].replace(" ", "")
    if phone.startswith("0"):
        phone = "+33" + phone[1:]
    a, c, pr = p["address"], p["coverage"], p["prescriber"]
    return PatientRecord(
        birth_name=p["birth_name"], first_names=tuple(p["first_names"]),
        birth_date=date.fromisoformat(p["birth_date"]), sex=p["sex"],
        external_id=p["external_id"], used_name=p.get("used_name"),
        birth_place_insee=p["birth_place_insee"], nir=p["nir"], ins=p.get("ins"),
        address=Address(a["line"], a["postal_code"], a["city"], a["country"]), phone=phone,
        email=p["email"].lower(), amo=c["amo"], amc=c.get("amc"), member_id=c["member_id"],
        blood_group=p["blood_group"], prescriber=Prescriber(pr["name"], pr["rpps"]))


def records(n: int) -> Iterator[PatientRecord]:
    for i, p in enumerate(people(n, seed=SEED)):
        rec = record(p)
        if i < 2000 or i % 10_000 == 0:
            assert rec == PatientRecord.parse(strip_none(p)), i
        yield rec


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
    # Build only: a 1 GiB SQLite page cache (default 2 MiB) so that random inserts into
    # the growing index B-trees do not re-read pages; measurement reopens with defaults.
    lv.engine.dispose()
    event.listen(lv.engine, "connect",
                 lambda dbapi_conn, _rec: dbapi_conn.execute("PRAGMA cache_size=-1048576"))
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

    report = lv.patients.import_records(actor, tenant, records(n), progress=progress)
    dt = time.perf_counter() - t0
    print(f"built {report.imported:,} patients in {dt:,.0f} s ({report.imported / dt:,.0f}/s); "
          f"{len(report.rejected)} rejected, {report.skipped} duplicate external ids",
          file=sys.stderr)
    marker.write_text(json.dumps({"n": n, "tenant": tenant, "imported": report.imported,
                                  "build_seconds": round(dt, 1)}))
    lv.close()
    return Labvault.open(s), tenant


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
