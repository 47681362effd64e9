"""The MLLP listener's storing path without the network: N ORU^R01 (5 OBX each, the
messages of bench/mllp.py) parsed, mapped, gated, sealed, stored, audited and committed
by ``Hl7Handler.handle_many`` in batches of ``--batch`` (1: one analyser waiting for each
ACK; 4: the group commit measured with 8 connections).

    .venv/bin/python bench/hl7_store.py [--n 3000] [--batch 1 4] [--runs 3]
    .venv/bin/python bench/hl7_store.py --against 329b8ef     # side by side with a revision
    .venv/bin/python bench/hl7_store.py --pg postgresql://postgres@127.0.0.1:5432/test

Prints CPU µs per message (this process, all threads), what that makes per core, and
the KiB passed to write() per message (log frames and checkpoints: steady under load). The
loopback benchmark (bench/mllp.py) varies ±20 % run to run on a shared 2-core machine, as
the client processes and the server contend; CPU per stored message is the steady part.
``--against REV`` unpacks that revision's ``src/`` (``git archive``, with the C extensions
built here copied in) and alternates runs of the two trees, each in a fresh process and
a fresh database; it prints both medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _written() -> int:
    """Bytes this process has passed to write() so far (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))
    except (OSError, StopIteration):
        return 0


def measure(n: int, batch: int, pg: str = "") -> tuple[float, float, float]:
    """(CPU µs, KiB written, wall µs) per message for ``n`` messages stored in batches of
    ``batch``. The bytes (SQLite's write-ahead log frames and checkpoints; on PostgreSQL
    the server writes) do not depend on the machine's load. ``pg``: a PostgreSQL URL (a
    private schema, dropped at the end) instead of a SQLite file."""
    from bench.mllp import oru
    from labvault.config import Settings
    from labvault.domain.actors import Actor
    from labvault.interop.hl7.handler import Hl7Handler
    from labvault.services.wiring import init_labvault
    from labvault.synthetic import make_finess, make_nir

    tmp = Path(tempfile.mkdtemp())
    env = {"LABVAULT_KEY_FILE": str(tmp / "root.key")}
    admin, schema = None, f"bench_hl7_{time.time_ns()}"
    if pg:
        from sqlalchemy import text

        from labvault.store.engine import make_engine
        admin = make_engine(pg)
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
        env["LABVAULT_DATABASE_URL"] = (f"{pg}{'&' if '?' in pg else '?'}"
                                        f"options=-csearch_path%3D{schema}")
    try:
        lv = init_labvault(Settings.from_env(tmp / "var", env=env))
        op = Actor.operator()
        tenant = lv.tenants.add(op, "Bench lab", make_finess(random.Random(1))).tenant_id
        nirs = []
        for k in range(50):
            nir = make_nir("F", date(1980, 5, 17), "59350", k + 1)
            lv.patients.register(op, tenant, {"birth_name": "MARTIN", "first_names": ["Jeanne"],
                                              "birth_date": "1980-05-17", "sex": "F",
                                              "nir": nir})
            nirs.append(nir)
        h = Hl7Handler(lv, Actor.system("mllp"), tenant)
        for i in range(0, 400, 4):        # warm caches (keys, patients, statements)
            h.handle_many([oru(i + j, nirs[(i + j) % 50], "warm") for j in range(4)])
        msgs = [oru(i, nirs[i % 50], "run") for i in range(n)]
        c0, w0, t0 = time.process_time(), _written(), time.perf_counter()
        for i in range(0, n, batch):
            acks = h.handle_many(msgs[i:i + batch])
            assert all(b"MSA|AA" in a for a in acks), acks
        cpu = (time.process_time() - c0) / n * 1e6
        kib = (_written() - w0) / n / 1024
        wall = (time.perf_counter() - t0) / n * 1e6
        lv.close()
        return cpu, kib, wall
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if admin is not None:
            with admin.begin() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def _tree(rev: str) -> Path:
    """``src/`` of ``rev``, with this checkout's built C extensions."""
    out = Path(tempfile.mkdtemp(prefix="labvault-bench-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    for so in (ROOT / "src").rglob("*.so"):
        dest = out / so.relative_to(ROOT)
        if dest.parent.exists():
            shutil.copy2(so, dest)
    return out / "src"


def _one(src: Path | None, n: int, batch: int, pg: str) -> tuple[float, float, float]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, __file__, "--child", "--n", str(n),
                          "--batch", str(batch), "--pg", pg], env=env, check=True, capture_output=True,
                         text=True).stdout
    cpu, kib, wall = out.strip().splitlines()[-1].split()
    return float(cpu), float(kib), float(wall)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", default=None, help="a git revision to compare with")
    ap.add_argument("--pg", default="", help="PostgreSQL URL (default: a SQLite file)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(*measure(args.n, args.batch[0], args.pg))
        return
    base = _tree(args.against) if args.against else None
    try:
        for batch in args.batch:
            here: list[tuple[float, float, float]] = []
            there: list[tuple[float, float, float]] = []
            for _ in range(args.runs):          # alternated: drift hits both alike
                if base is not None:
                    there.append(_one(base, args.n, batch, args.pg))
                here.append(_one(None, args.n, batch, args.pg))
            h = statistics.median(r[0] for r in here)
            hk = statistics.median(r[1] for r in here)
            hw = statistics.median(r[2] for r in here)
            line = (f"batch={batch}: {h:.0f} CPU µs/message = {1e6 / h:.0f} msg/s per core, "
                    f"{hk:.0f} KiB written, {hw:.0f} µs wall "
                    f"(runs: {', '.join(f'{r[0]:.0f}' for r in here)})")
            if there:
                t = statistics.median(r[0] for r in there)
                tk = statistics.median(r[1] for r in there)
                tw = statistics.median(r[2] for r in there)
                line += (f"; {args.against}: {t:.0f} µs, {tk:.0f} KiB, {tw:.0f} µs wall (runs: "
                         f"{', '.join(f'{r[0]:.0f}' for r in there)}); ratio {t / h:.2f}x CPU, "
                         f"{tk / hk:.2f}x bytes, {tw / hw:.2f}x wall")
            print(line, flush=True)
    finally:
        if base is not None:
            shutil.rmtree(base.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
