"""MLLP throughput: N ORU^R01 messages (5 OBX each) sent by separate client processes over
loopback, on 1 connection and on 8 connections; every ACK is sent after the message's
transaction committed (with 8 connections, the messages waiting from several connections
share one transaction: the listener's group commit, docs/hl7.md; ``--no-group-commit``:
one transaction per message).

    .venv/bin/python bench/mllp.py [--n 2000] [--repeat 3] [--pg URL] [--tls]

Prints messages/s (median of the runs) per connection count, the server's CPU per message
and the messages per commit. The server runs in this process (its asyncio loop stores the
batches); the clients are forked processes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab.serving import serving

from labvault.config import Settings
from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler
from labvault.interop.hl7.mllp import MllpServer, send
from labvault.services.app import Labvault
from labvault.synthetic import make_finess, make_nir


def oru(i: int, nir: str, run: str) -> bytes:
    return ("\r".join([
        f"MSH|^~\\&|ANALYZER|LABO|LABVAULT|LABO|20260301083000||ORU^R01^ORU_R01|{run}-{i}|P|2.5",
        f"PID|1||{nir}^^^ASIP-SANTE-NIR&1.2.250.1.213.1.4.8&ISO^NH||MARTIN^Jeanne||19800517|F",
        f"OBR|1|PL{run}{i}|FI{run}{i}|58410-2^CBC^LN|||20260301080000",
        "OBX|1|NM|718-7^Hemoglobin^LN||13.2|g/dL|||||F",
        "OBX|2|NM|6690-2^WBC^LN||7.1|10*9/L|||||F",
        "OBX|3|NM|777-3^Platelets^LN||250|10*9/L|||||F",
        "OBX|4|NM|2823-3^Potassium^LN||4.4|mmol/L|||||F",
        "OBX|5|NM|2951-2^Sodium^LN||140|mmol/L|||||F",
    ]) + "\r").encode()


TLS: tuple[Path, Path, Path] | None = None     # (CA, analyser cert, its key) with --tls


def client(port: int, msgs: list[bytes], q: mp.Queue) -> None:  # type: ignore[type-arg]
    ctx = None
    if TLS is not None:
        from labvault.interop import tls
        ctx = tls.client_context(*TLS)
    acks = send("127.0.0.1", port, msgs, timeout=300, ssl_context=ctx,
                server_hostname="localhost")
    q.put(sum(1 for a in acks if b"MSA|AA" in a))


def run(port: int, n: int, conns: int, nirs: list[str], run_id: str
        ) -> tuple[float, int, float]:
    """(messages/s wall, messages acknowledged AA, server CPU ms per message)."""
    msgs = [oru(i, nirs[i % len(nirs)], run_id) for i in range(n)]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    c0 = time.process_time()          # this process = the server (all its threads)
    t0 = time.perf_counter()
    procs = [ctx.Process(target=client, args=(port, msgs[k::conns], q)) for k in range(conns)]
    for p in procs:
        p.start()
    ok = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    return n / wall, ok, (time.process_time() - c0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--pg", default="", help="PostgreSQL URL (default: SQLite file)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--no-group-commit", action="store_true",
                    help="one transaction per message (the listener without handle_many)")
    ap.add_argument("--hooks", choices=("wiring", "memory"), default="wiring",
                    help="wiring: the gate hooks a running labvault uses (audit chain...); "
                         "memory: in-memory audit (to see the hooks' cost)")
    ap.add_argument("--checkpoint-pages", type=int, default=None,
                    help="LABVAULT_SQLITE_CHECKPOINT_PAGES for the server (default: the "
                         "setting's default, SQLite's 1000)")
    ap.add_argument("--tls", action="store_true",
                    help="MLLP inside mutual TLS (a throwaway CA: tests/pki.py)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    context = None
    if args.tls:
        global TLS
        from tests.pki import Pki

        from labvault.interop import tls
        pki = Pki(tmp)
        TLS = (pki.ca[0], *pki.analyser)
        context = tls.server_context(pki.cert, pki.key, client_ca=pki.ca[0])
    env = {"LABVAULT_KEY_FILE": str(tmp / "root.key")}
    if args.checkpoint_pages is not None:
        env["LABVAULT_SQLITE_CHECKPOINT_PAGES"] = str(args.checkpoint_pages)
    schema = None
    if args.pg:
        # A private schema, dropped at the end: never touch the shared database's tables.
        from sqlalchemy import text

        from labvault.store.engine import make_engine
        schema = f"bench_mllp_{time.time_ns()}"
        admin = make_engine(args.pg)
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in args.pg else "?"
        env["LABVAULT_DATABASE_URL"] = f"{args.pg}{sep}options=-csearch_path%3D{schema}"
    s = Settings.from_env(tmp / "var", env=env)
    if args.hooks == "wiring":
        from labvault.services.wiring import init_labvault
        lv = init_labvault(s)
    else:
        lv = Labvault.init(s)
    op = Actor.operator()
    tenant = lv.tenants.add(op, "Bench lab", make_finess(random.Random(time.time_ns()))).tenant_id
    nirs = []
    for k in range(50):
        nir = make_nir("F", date(1980, 5, 17), "59350", k + 1)
        lv.patients.register(op, tenant, {"birth_name": "MARTIN", "first_names": ["Jeanne"],
                                          "birth_date": "1980-05-17", "sex": "F", "nir": nir})
        nirs.append(nir)
    h = Hl7Handler(lv, Actor.system("mllp"), tenant)
    srv = MllpServer(lambda raw: h.handle(raw)[1], "127.0.0.1", 0, workers=args.workers,
                     reject=h.reject,
                     handle_many=None if args.no_group_commit else h.handle_many,
                     ssl_context=context)
    with serving(srv):
        measure(args, s, srv, nirs)
    lv.close()
    if schema is not None:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def measure(args: argparse.Namespace, s: Settings, srv: MllpServer, nirs: list[str]) -> None:
    run(srv.port, 100, 1, nirs, "warm")
    print(f"backend={'postgresql' if args.pg else 'sqlite'} hooks={args.hooks} n={args.n} "
          f"(5 OBX each) group_commit={not args.no_group_commit} "
          f"checkpoint_pages={s.get('LABVAULT_SQLITE_CHECKPOINT_PAGES')} tls={args.tls}")
    # The machine is shared: wall-clock rates depend on the load. Server CPU per message
    # says what one fully available core would do (1000 / ms), load aside.
    for conns in (1, 8):
        rates, cpu = [], []
        batches0 = srv.committer.batches if srv.committer else 0
        for r in range(args.repeat):
            rate, ok, ms = run(srv.port, args.n, conns, nirs, f"c{conns}r{r}")
            assert ok == args.n, (ok, args.n)
            rates.append(rate)
            cpu.append(ms)
        rates.sort()
        cpu.sort()
        med = cpu[len(cpu) // 2]
        print(f"connections={conns}: median {rates[len(rates) // 2]:.0f} msg/s "
              f"(runs: {', '.join(f'{x:.0f}' for x in rates)}); server CPU {med:.2f} ms/msg "
              f"= {1000 / med:.0f} msg/s per free core"
              + (f"; {args.n * args.repeat / (srv.committer.batches - batches0):.1f} "
                 "messages per commit" if srv.committer else ""), flush=True)


if __name__ == "__main__":
    main()
