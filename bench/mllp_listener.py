"""The MLLP listener's own cost: ``MllpServer`` with a batch handler that returns a
constant ACK (no parsing, no database), so that what the server process spends per
message is the event loop, the stream reader, de-framing, the group committer and the
ACK writes. Clients are started with ``spawn`` (no pages shared with the server: a forked
client would make the server pay copy-on-write faults).

    .venv/bin/python bench/mllp_listener.py [--n 20000] [--repeat 3]

Prints, per connection count (1 and 8), the server's CPU per message in µs (process,
user, system, and the loop thread alone) and messages per batch; medians of the runs
(no messages/s: the spawned clients' start would be in it). docs/benchmarks.md, "Session 13 (mllp listener)".
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab.serving import serving

from labvault.interop.hl7.mllp import MllpServer, send

ACK = (b"MSH|^~\\&|LABVAULT|LABO|ANALYZER|LABO|20260301083000||ACK^R01^ACK|ACK0123456789abcdef|"
       b"P|2.5\rMSA|AA|X-1\r")
MSG = ("\r".join(["MSH|^~\\&|ANALYZER|LABO|LABVAULT|LABO|20260301083000||ORU^R01^ORU_R01|X-1|P|2.5",
                  *["OBX|1|NM|718-7^Hemoglobin^LN||13.2|g/dL|||||F"] * 8]) + "\r").encode()


def client(port: int, n: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    q.put(len(send("127.0.0.1", port, [MSG] * n, timeout=60)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    srv = MllpServer(lambda raw: ACK, "127.0.0.1", 0,
                     handle_many=lambda items: [ACK] * len(items))
    assert srv.committer is not None
    ctx = mp.get_context("spawn")
    rows: dict[int, list[dict[str, float]]] = {}

    async def thread_cpu() -> float:
        return time.thread_time()

    with serving(srv):
        assert srv.server is not None
        loop = srv.server.get_loop()
        for _ in range(args.repeat):
            for conns in (1, 8):
                k = args.n // conns
                q = ctx.Queue()
                procs = [ctx.Process(target=client, args=(srv.port, k, q))
                         for _ in range(conns)]
                for p in procs:
                    p.start()
                lt0 = asyncio.run_coroutine_threadsafe(thread_cpu(), loop).result()
                o0, b0 = os.times(), srv.committer.batches
                got = sum(q.get() for _ in procs)
                o1 = os.times()
                lt1 = asyncio.run_coroutine_threadsafe(thread_cpu(), loop).result()
                for p in procs:
                    p.join()
                m = k * conns
                assert got == m, (got, m)
                f = 1e6 / m
                rows.setdefault(conns, []).append({
                    "process": (o1.user + o1.system - o0.user - o0.system) * f,
                    "user": (o1.user - o0.user) * f, "system": (o1.system - o0.system) * f,
                    "loop thread": (lt1 - lt0) * f,
                    "per batch": m / max(1, srv.committer.batches - b0)})
    for conns, runs in rows.items():
        med = {key: sorted(r[key] for r in runs)[len(runs) // 2] for key in runs[0]}
        print(f"connections={conns}: server CPU µs per message: "
              + ", ".join(f"{key} {v:.1f}" for key, v in med.items())
              + f" (medians of {len(runs)})", flush=True)


if __name__ == "__main__":
    main()
