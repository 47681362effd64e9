"""Breach triage benchmark: a store of N patients over L labs, a dump of R rows (half
corrupted patients, half strangers), triage wall time and peak RSS, quality against
the ground truth; optionally clkhash/anonlink and Splink on the same data in plaintext.

    .venv/bin/python bench/breach.py --patients 1000000 --labs 30 --rows 500000
    .venv/bin/python bench/breach.py --patients 100000 --rows 50000 --baseline-python /path/py

How the store is built (for speed): tenants and their keys are created through the
service; patient rows are then inserted in bulk with their blind-index digests and
breach encodings computed by the same code the write path uses (``KeyedDigest`` ==
``blind_index.digest``, ``BreachService.encoding_rows``: sealed), but WITHOUT sealed
category blobs (triage never reads them) and without per-patient data keys. Triage
runs in a child process so its peak RSS is measured alone (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(work: Path, patients: int, labs: int, rows: int, seed: int) -> None:
    from sqlalchemy import insert

    from labvault.breach import synthdump as sd
    from labvault.breach.encoding import KeyedDigest
    from labvault.config import Settings
    from labvault.domain.actors import Actor
    from labvault.domain.patient import PatientRecord
    from labvault.services import indexing
    from labvault.services.app import Labvault
    from labvault.store import repositories as repo
    from labvault.store.schema import blind_index
    from labvault.store.schema import patients as patients_t
    from labvault.store.tables_breach import breach_encodings
    from labvault.synthetic import make_finess, people

    s = Settings(data_dir=work / "var", database_url=f"sqlite:///{work / 'var' / 'labvault.db'}",
                 key_file=work / "root.key")
    lv = Labvault.init(s)
    op = Actor.operator()
    rng = random.Random(seed)
    keep_p = (rows / 2) / patients
    kept: list[tuple[str, str, dict[str, Any]]] = []
    plain = (work / "store-plain.ndjson").open("w")
    per = [patients // labs + (1 if i < patients % labs else 0) for i in range(labs)]
    start = 0
    t0 = time.perf_counter()
    from labvault.store.ids import new_id
    for i in range(labs):
        tid = lv.tenants.add(op, f"Laboratoire {i}", make_finess(rng)).tenant_id
        with lv.begin() as conn:
            lv.load_tenant_keys(conn, tid)
            v = repo.current_key_version(conn, tid, "index")
            assert v is not None
            kd = KeyedDigest(lv.keyring.blind_index_key(tid, v))
        now = datetime.now(UTC)
        batch_p: list[dict[str, Any]] = []
        batch_i: list[dict[str, Any]] = []
        batch_e: list[tuple[str, PatientRecord]] = []

        def flush() -> None:
            if not batch_p:  # noqa: B023
                return
            with lv.begin() as conn:
                conn.execute(insert(patients_t), batch_p)  # noqa: B023
                conn.execute(insert(blind_index), batch_i)  # noqa: B023
                conn.execute(insert(breach_encodings),
                             lv.breach.encoding_rows(conn, tid, batch_e))  # noqa: B023
            for b in (batch_p, batch_i, batch_e):  # noqa: B023
                b.clear()

        for p in people(per[i], seed=seed, start=start):
            p = {k: val for k, val in p.items() if val is not None}
            rec = PatientRecord.parse(p)
            pid = new_id("pt")
            batch_p.append({"tenant_id": tid, "patient_id": pid, "status": "active",
                            "created_at": now, "updated_at": now})
            for kind, d in dict.fromkeys((k, kd.index(k, n))
                                         for k, n in indexing.index_values(rec)):
                batch_i.append({"tenant_id": tid, "kind": kind, "digest": d, "patient_id": pid})
            batch_e.append((pid, rec))
            plain.write(json.dumps({"id": pid, **p}) + "\n")
            if rng.random() < keep_p:
                kept.append((tid, pid, p))
            if len(batch_p) >= 5000:
                flush()
        flush()
        start += per[i]
        print(f"  lab {i + 1}/{labs}: {start} patients, {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    plain.close()
    lv.close()
    dump = sd.make_dump(kept, rows - len(kept), seed=seed + 1)
    sd.write_csv(work / "dump.csv", dump.rows, delimiter=";")
    with (work / "truth.ndjson").open("w") as fh:
        for t in dump.truth:
            fh.write(json.dumps([t.patient_id, t.exact]) + "\n")
    (work / "meta.json").write_text(json.dumps({"patients": patients, "labs": labs,
                                                "rows": len(dump.rows),
                                                "build_s": round(time.perf_counter() - t0)}))
    print(f"store built in {time.perf_counter() - t0:.0f} s ({patients} patients, {labs} labs); "
          f"dump {len(dump.rows)} rows", file=sys.stderr)


def triage(work: Path, workers: int) -> None:
    import logging

    phases: dict[str, float] = {}

    class _Phases(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            name, secs = record.args  # type: ignore[misc]
            phases[str(name)] = round(float(secs), 1)

    logging.getLogger("labvault.breach").addHandler(_Phases())
    logging.getLogger("labvault.breach").setLevel(logging.INFO)
    from labvault.config import Settings
    from labvault.domain.actors import Actor
    from labvault.services.app import Labvault
    s = Settings(data_dir=work / "var", database_url=f"sqlite:///{work / 'var' / 'labvault.db'}",
                 key_file=work / "root.key")
    lv = Labvault.open(s)
    op = Actor.operator()
    case = lv.breach.open_case(op, "bench", datetime.now(UTC).isoformat())
    t0 = time.perf_counter()
    res = lv.breach.triage(op, case, [work / "dump.csv"], workers=workers, keep_evidence=False)
    wall = time.perf_counter() - t0
    truth = [json.loads(line) for line in (work / "truth.ndjson").open()]
    with (work / "matches.ndjson").open("w") as fh:
        for m in res["matches"]:
            fh.write(json.dumps([m["row"], m["patient_id"], m["method"], m["score"]]) + "\n")
    print(json.dumps({"wall_s": round(wall, 1), **quality(res["matches"], truth),
                      "rows": res["rows"], "cpu_s": round(_cpu(), 1), "phases_s": phases}))


def _cpu() -> float:
    """CPU seconds of this process and its (forked, joined) workers."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def quality(matches: list[dict[str, Any]], truth: list[list[Any]]) -> dict[str, Any]:
    by_row: dict[int, set[str]] = {}
    for m in matches:
        by_row.setdefault(m["row"], set()).add(m["patient_id"])
    pred = sum(len(v) for v in by_row.values())
    correct = sum(1 for r, ids in by_row.items() for p in ids if truth[r - 1][0] == p)
    ex = [i for i, t in enumerate(truth, 1) if t[0] and t[1]]
    fz = [i for i, t in enumerate(truth, 1) if t[0] and not t[1]]
    return {"precision": round(correct / max(1, pred), 4),
            "recall": round(sum(truth[i - 1][0] in by_row.get(i, ()) for i in ex + fz)
                            / max(1, len(ex) + len(fz)), 4),
            "exact_recall": round(sum(truth[i - 1][0] in by_row.get(i, ()) for i in ex)
                                  / max(1, len(ex)), 4),
            "fuzzy_recall": round(sum(truth[i - 1][0] in by_row.get(i, ()) for i in fz)
                                  / max(1, len(fz)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patients", type=int, default=1_000_000)
    ap.add_argument("--labs", type=int, default=30)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/labvault-bench-breach"))  # noqa: S108
    ap.add_argument("--reuse", action="store_true", help="reuse a store built before")
    ap.add_argument("--runs", type=int, default=1, help="triage runs (median reported)")
    ap.add_argument("--baseline-python", default=None,
                    help="a Python with clkhash, anonlink and splink installed")
    ap.add_argument("--triage-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.triage_only:
        triage(a.work, a.workers)
        return
    if not a.reuse:
        import shutil
        shutil.rmtree(a.work, ignore_errors=True)
        a.work.mkdir(parents=True)
        build(a.work, a.patients, a.labs, a.rows, a.seed)
    results = []
    for _ in range(a.runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        out = subprocess.run([sys.executable, __file__, "--triage-only", "--work", str(a.work),
                              "--workers", str(a.workers)], capture_output=True, text=True,
                             check=True)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["peak_rss_mib"] = round(max(rss, before) / 1024)
        results.append(r)
        print(json.dumps({"tool": "labvault", **r}), flush=True)
    walls = sorted(r["wall_s"] for r in results)
    meta = json.loads((a.work / "meta.json").read_text())
    print(json.dumps({"tool": "labvault", "median_wall_s": walls[len(walls) // 2], **meta,
                      "workers": a.workers}))
    if a.baseline_python:
        out = subprocess.run([a.baseline_python, str(ROOT / "bench" / "breach_baselines.py"),
                              str(a.work)], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip()[-2000:])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
