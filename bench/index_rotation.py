"""Index-key rotation benchmark: `keys rotate --index` of one laboratory of N patients.

    python bench/index_rotation.py [--n 10000] [--repeat 2] [--store DIR]

Build: N synthetic patients (``labvault.synthetic.people``) imported through
``PatientService.import_lines`` (the `labvault patient import` path: sealed categories,
data keys, blind indexes, breach encodings), into a fresh SQLite store (or ``--store``,
kept for the next run). Measure: ``lv.keys.rotate_index`` -- the whole rotation in one
transaction: every patient's identity and contact unsealed and parsed, every blind-index
row and breach encoding rewritten, the old key destroyed -- ``--repeat`` times on a
freshly opened store; prints wall seconds and patients per second for each run.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from labvault.config import Settings
from labvault.domain.actors import Actor
from labvault.interop.hl7.archive import archived_control_key
from labvault.services.app import Labvault
from labvault.synthetic import make_finess, people, strip_none


def settings(store: Path) -> Settings:
    return Settings(data_dir=store / "var",
                    database_url=f"sqlite:///{store / 'var' / 'labvault.db'}",
                    key_file=store / "var.key")


def build(store: Path, n: int) -> str:
    (store / "var").mkdir(parents=True, exist_ok=True)
    lv = Labvault.init(settings(store))
    op = Actor.operator()
    try:
        tenant = lv.tenants.add(op, "Laboratoire du banc", make_finess(random.Random(5))).tenant_id
        t0 = time.perf_counter()
        report = lv.patients.import_lines(
            op, tenant, (json.dumps(strip_none(p)) for p in people(n, seed=17)))
        assert report.imported == n, report.rejected[:3]
        print(f"built {n} patients in {time.perf_counter() - t0:.1f} s")
    finally:
        lv.close()
    (store / "tenant").write_text(tenant)
    return tenant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--store", type=Path, default=None,
                    help="keep the built store here (reused if it holds one)")
    args = ap.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="lv-index-rotation-"))
    tenant = ((store / "tenant").read_text() if (store / "tenant").exists()
              else build(store, args.n))
    for run in range(1, args.repeat + 1):
        lv = Labvault.open(settings(store))
        try:
            t0 = time.perf_counter()
            c0 = time.process_time()
            out = lv.keys.rotate_index(Actor.operator(), tenant, archived_control_key)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            lv.close()
        n = out["patients"]
        print(f"run {run}: index v{out['index_version']}, {n} patients, "
              f"{out['patient_digests']} index rows, {out['breach_encodings']} encodings: "
              f"{wall:.2f} s wall ({cpu:.2f} s CPU), {n / wall:,.0f} patients/s, "
              f"{100_000 * wall / n:.0f} s per 100,000 patients")


if __name__ == "__main__":
    main()
