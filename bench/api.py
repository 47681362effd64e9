#!/usr/bin/env python3
"""REST API throughput: authenticated, audited patient reads against `labvault serve`.

    .venv/bin/python bench/api.py [--patients 2000] [--workers 2] [--clients 64] [--seconds 10]

1. seeds a throw-away data directory (`labvault demo`: 2 labs, named accounts per role);
2. starts `labvault serve --workers N` as a subprocess on a free loopback port;
3. from this (separate) process, drives 64 concurrent keep-alive HTTP/1.1 connections
   (a minimal asyncio client, so the load generator costs little CPU next to the server):
   first `GET /health` (framework baseline), then `GET /api/v1/patients/{id}` with bearer
   tokens of biologist / technician / reception accounts of both labs (each read passes
   session lookup, policy, budget and audit hooks, and unseals the record);
4. reports req/s, p50 and p99 for both in the same run, and login cost vs raw Argon2id.
The load generator and the server share the machine's cores: figures are a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from bench._budgets import raise_read_budgets  # noqa: E402 - after the path is set


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def patient_ids(data_dir: Path) -> dict[str, list[str]]:
    from sqlalchemy import select

    from labvault.config import Settings
    from labvault.services.wiring import open_labvault
    from labvault.store.schema import patients
    lv = open_labvault(Settings.from_env(data_dir))
    with lv.engine.connect() as c:
        rows = c.execute(select(patients.c.tenant_id, patients.c.patient_id)).all()
    lv.close()
    out: dict[str, list[str]] = {}
    for t, p in rows:
        out.setdefault(t, []).append(p)
    return out


class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> tuple[int, bytes]:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        assert self.r is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        if body:
            head += f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n"
        self.w.write(head.encode() + b"\r\n" + body)
        raw = await self.r.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        data = await self.r.readexactly(length) if length else b""
        return status, data


async def drive(port: int, clients: int, seconds: float, make_path: object,
                headers_for: object) -> tuple[int, list[float], dict[int, int]]:
    lat: list[float] = []
    statuses: dict[int, int] = {}
    stop = time.perf_counter() + seconds

    async def one(i: int) -> None:
        c = Conn("127.0.0.1", port)
        rng = random.Random(i)
        while time.perf_counter() < stop:
            path = make_path(rng)              # type: ignore[operator]
            t = time.perf_counter()
            st, _ = await c.request("GET", path, headers_for(i))  # type: ignore[operator]
            lat.append(time.perf_counter() - t)
            statuses[st] = statuses.get(st, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return int(len(lat) / (time.perf_counter() - t0)), lat, statuses


WRK_SCRIPT = """
local sets = {%s}
local n = 0
request = function()
  n = n + 1
  local s = sets[(n %% #sets) + 1]
  local path = s.paths[math.random(#s.paths)]
  if s.token == "" then return wrk.format("GET", path) end
  return wrk.format("GET", path, {["Authorization"] = "Bearer " .. s.token})
end
done = function(summary, latency, requests)
  io.write(string.format("WRK %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status))
end
"""


def run_wrk(port: int, clients: int, seconds: float, sets: list[tuple[str, list[str]]],
            tmp: Path) -> dict[str, Any]:
    """wrk with 2 threads: req/s, wrk's p50/p99, statuses as {200: ok, 0: non-2xx}."""
    lua = ", ".join("{token=" + json.dumps(t) + ", paths={"
                    + ", ".join(json.dumps(p) for p in paths) + "}}" for t, paths in sets)
    script = tmp / "bench.lua"
    script.write_text(WRK_SCRIPT % lua)
    out = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{int(seconds)}s", "-s", str(script),
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                         check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    n, dur_us, p50, p99, bad = (int(x) for x in line.split()[1:])
    return {"req_s": int(n / (dur_us / 1e6)), "p50_ms": round(p50 / 1000, 2),
            "p99_ms": round(p99 / 1000, 2), "statuses": {200: n - bad, 0: bad}}


def summary(res: tuple[int, list[float], dict[int, int]]) -> dict[str, Any]:
    """The asyncio client's (req/s, latencies, statuses) in the shape ``run_wrk`` gives."""
    return {"req_s": res[0], "p50_ms": round(pct(res[1], 50), 2),
            "p99_ms": round(pct(res[1], 99), 2), "statuses": res[2]}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


async def login(port: int, email: str, password: str, totp: str | None) -> tuple[str, float]:
    c = Conn("127.0.0.1", port)
    t = time.perf_counter()
    st, data = await c.request("POST", "/api/v1/auth/login", {},
                               json.dumps({"email": email, "password": password,
                                           "totp": totp}).encode())
    dt = time.perf_counter() - t
    if st != 200:
        raise SystemExit(f"login failed for {email}: {st} {data[:200]!r}")
    return json.loads(data)["token"], dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--client", choices=("python", "wrk"), default="python",
                    help="load generator: this script's asyncio client, or wrk (Debian package "
                         "`wrk`: a C client that leaves more of the 2 cores to the server)")
    ap.add_argument("--audit-group-ms", type=int, default=0,
                    help="LABVAULT_AUDIT_READ_GROUP_MS for the server (0 = entry in the "
                         "reading transaction)")
    ap.add_argument("--postgres", action="store_true",
                    help="use a throw-away PostgreSQL database (LABVAULT_TEST_PG_URL server)")
    a = ap.parse_args()
    if a.postgres:
        with pg_database() as url:
            os.environ["LABVAULT_DATABASE_URL"] = url
            run(a)
    else:
        run(a)


@contextmanager
def pg_database() -> Iterator[str]:
    import secrets

    from sqlalchemy import create_engine, text
    base = os.environ.get("LABVAULT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"lvbench_{secrets.token_hex(4)}"
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(a: argparse.Namespace) -> None:
    import pyotp
    tmp = Path(a.data_dir or tempfile.mkdtemp(prefix="lvbench"))
    env = {**os.environ, "LABVAULT_DATA_DIR": str(tmp / "var"),
           "LABVAULT_AUDIT_READ_GROUP_MS": str(a.audit_group_ms)}
    demo = json.loads(subprocess.run([str(BIN / "labvault"), "demo", "--labs", "2", "--patients",
                                      str(a.patients), "--json"], env=env, check=True,
                                     capture_output=True, text=True).stdout)
    ids = patient_ids(tmp / "var")
    raise_read_budgets(BIN / "labvault", env, [lab["id"] for lab in demo["laboratories"]])
    port = free_port()
    server = subprocess.Popen([str(BIN / "labvault"), "serve", "--port", str(port), "--workers",
                               str(a.workers)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.0)
        totp = pyotp.TOTP(demo["demo_totp_secret"])
        tokens: list[tuple[str, list[str]]] = []
        for lab in demo["laboratories"]:
            for acc in lab["accounts"]:
                if acc["role"] in ("biologist", "technician", "reception"):
                    tok, _ = asyncio.run(login(port, acc["email"], demo["demo_password"],
                                               totp.now()))
                    tokens.append((tok, ids[lab["id"]]))
        # login cost (patient accounts: password only, no TOTP step to wait for)
        patient_email = next(acc["email"] for acc in demo["laboratories"][0]["accounts"]
                             if acc["role"] == "patient")
        login_times = [asyncio.run(login(port, patient_email, demo["demo_password"], None))[1]
                       for _ in range(9)]
        from argon2 import PasswordHasher
        ph = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
        h = ph.hash(demo["demo_password"])
        raw = []
        for _ in range(9):
            t = time.perf_counter()
            ph.verify(h, demo["demo_password"])
            raw.append(time.perf_counter() - t)

        if a.client == "python":
            health = summary(asyncio.run(
                drive(port, a.clients, a.seconds, lambda rng: "/health", lambda i: {})))

        paths: dict[int, tuple[str, list[str]]] = {i: tokens[i % len(tokens)]
                                                   for i in range(a.clients)}
        # each client uses its own token and reads random patients of that token's lab
        async def drive_reads() -> tuple[int, list[float], dict[int, int]]:
            lat: list[float] = []
            statuses: dict[int, int] = {}
            stop = time.perf_counter() + a.seconds

            async def one(i: int) -> None:
                c = Conn("127.0.0.1", port)
                rng = random.Random(i)
                tok, lab_ids = paths[i]
                hdr = {"Authorization": f"Bearer {tok}"}
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    st, _ = await c.request("GET", f"/api/v1/patients/{rng.choice(lab_ids)}",
                                            hdr)
                    lat.append(time.perf_counter() - t)
                    statuses[st] = statuses.get(st, 0) + 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(a.clients)))
            return int(len(lat) / (time.perf_counter() - t0)), lat, statuses

        if a.client == "wrk":
            health = run_wrk(port, a.clients, a.seconds, [("", ["/health"])], tmp)
            reads = run_wrk(port, a.clients, a.seconds,
                            [(tok, [f"/api/v1/patients/{p}" for p in lab_ids])
                             for tok, lab_ids in tokens], tmp)
        else:
            reads = summary(asyncio.run(drive_reads()))
        bad = sum(n for st, n in reads["statuses"].items() if st != 200)
        if bad > 0.01 * sum(reads["statuses"].values()):
            print(f"warning: {bad} non-200 answers to patient reads: {reads['statuses']}",
                  file=sys.stderr)
        result = {
            "workers": a.workers, "clients": a.clients, "seconds": a.seconds,
            "audit_read_group_ms": a.audit_group_ms,
            "patients": a.patients,
            "database": "postgresql" if a.postgres else "sqlite",
            "client": a.client, "health": health, "patient_read": reads,
            "login_ms_median": round(statistics.median(login_times) * 1000, 1),
            "argon2id_verify_ms_median": round(statistics.median(raw) * 1000, 1),
        }
        print(json.dumps(result, indent=2))
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
