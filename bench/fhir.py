"""FHIR transaction Bundles posted to ``labvault serve`` from separate client processes.

Each Bundle is one laboratory visit: Patient + ServiceRequest + Specimen + 5
Observations + DiagnosticReport (final: technical and biological validation) = 9
resources, all-or-nothing, every resource validated at the door (fhir.resources R4B),
sealed and audited. The server is a real ``labvault serve`` (uvicorn workers) on
loopback, authenticated with a demo biologist's bearer token (password + TOTP login).

    .venv/bin/python bench/fhir.py --bundles 2000 --clients 4
    .venv/bin/python bench/fhir.py --database-url postgresql://postgres@127.0.0.1:5432/test

Prints resources/s (median of ``--runs``) and latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESOURCES_PER_BUNDLE = 9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client_main(url: str, token: str, seed: int, start: int, count: int, go_at: float) -> None:
    """One client process: ``count`` bundles, one keep-alive connection."""
    import httpx

    from labvault.interop.fhir.samples import visit_bundle
    from labvault.synthetic import people
    bodies = [json.dumps(visit_bundle(p, start + i)).encode()
              for i, p in enumerate(people(count, seed=seed, start=start, prefix="BENCH"))]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    lat: list[float] = []
    errors: list[str] = []
    with httpx.Client(timeout=120, headers=headers) as c:
        while time.time() < go_at:
            time.sleep(0.001)
        t0 = time.perf_counter()
        for body in bodies:
            t = time.perf_counter()
            r = c.post(url, content=body)
            lat.append(time.perf_counter() - t)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:300]}")
        elapsed = time.perf_counter() - t0
    print(json.dumps({"elapsed": elapsed, "latencies": lat, "errors": errors[:5],
                      "n_errors": len(errors)}))


def tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` and its live descendants (the
    server and its uvicorn workers), from /proc; None where there is no /proc."""
    proc = Path("/proc")
    if not (proc / str(pid) / "stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)
    keep, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in stats.items():
            if ppid == parent and child not in keep:
                keep.add(child)
                frontier.append(child)
    return sum(stats[p][1] for p in keep if p in stats)


def run_cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([str(BIN / "labvault"), *args], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"labvault {' '.join(args)} failed: {out.stderr[-2000:]}")
    return out.stdout


def login(base: str, email: str, password: str, totp_secret: str) -> str:
    import httpx
    import pyotp
    r = httpx.post(f"{base}/api/v1/auth/login", json={
        "email": email, "password": password, "totp": pyotp.TOTP(totp_secret).now()})
    r.raise_for_status()
    return str(r.json()["token"])


def one_run(args: argparse.Namespace, run: int, env: dict[str, str], url: str,
            token: str, server_pid: int | None = None) -> dict[str, Any]:
    per = [args.bundles // args.clients + (1 if i < args.bundles % args.clients else 0)
           for i in range(args.clients)]
    go_at = time.time() + 2.0 + 0.002 * args.bundles / max(1, args.clients)
    procs = []
    start = run * 100_000
    for n in per:
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--client", url, token, str(args.seed + run), str(start),
             str(n), str(go_at)], stdout=subprocess.PIPE, env=env, text=True))
        start += n
    cpu0 = tree_cpu(server_pid) if server_pid else None
    results = []
    for p in procs:
        out, _ = p.communicate()
        results.append(json.loads(out.strip().splitlines()[-1]))
    cpu1 = tree_cpu(server_pid) if server_pid else None
    wall = max(r["elapsed"] for r in results)
    lat = sorted(x for r in results for x in r["latencies"])
    n_err = sum(r["n_errors"] for r in results)
    ok = len(lat) - n_err
    if n_err:
        print("errors:", [e for r in results for e in r["errors"]][:3], file=sys.stderr)
    return {"bundles": ok, "errors": n_err, "wall_s": round(wall, 3),
            "resources_per_s": round(ok * RESOURCES_PER_BUNDLE / wall, 1),
            "bundles_per_s": round(ok / wall, 1),
            "p50_ms": round(1000 * lat[len(lat) // 2], 1),
            "p95_ms": round(1000 * lat[int(len(lat) * 0.95)], 1),
            # the server's CPU (all its processes) per Bundle stored: load aside, what one
            # free core would do is 1000 / this Bundles/s (the clients' CPU not counted)
            "server_cpu_ms_per_bundle": (round(1000 * (cpu1 - cpu0) / ok, 2)
                                         if cpu0 is not None and cpu1 is not None and ok
                                         else None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundles", type=int, default=1000, help="bundles per run")
    ap.add_argument("--clients", type=int, default=4, help="client processes")
    ap.add_argument("--workers", type=int, default=None,
                    help="uvicorn worker processes (default: 1 on SQLite, one writer; "
                         "2 on PostgreSQL)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--database-url", default="",
                    help="PostgreSQL URL (a fresh schema is created); default SQLite")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.workers is None:
        args.workers = 2 if args.database_url else 1

    tmp = Path(tempfile.mkdtemp(prefix="lvbench-fhir-"))
    env = {**os.environ, "LABVAULT_DATA_DIR": str(tmp / "var"),
           "LABVAULT_KEY_FILE": str(tmp / "root.key")}
    schema = None
    if args.database_url:
        import sqlalchemy as sa
        schema = f"lvbench_{secrets.token_hex(4)}"
        url = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
        eng = sa.create_engine(url)
        with eng.begin() as c:
            c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        eng.dispose()
        sep = "&" if "?" in args.database_url else "?"
        env["LABVAULT_DATABASE_URL"] = f"{args.database_url}{sep}options=-csearch_path%3D{schema}"
    server = None
    try:
        demo = json.loads(run_cli(env, "demo", "--labs", "1", "--patients", "0", "--json"))
        lab = demo["laboratories"][0]
        email = next(a["email"] for a in lab["accounts"] if a["role"] == "biologist")
        sys.path.insert(0, str(ROOT))
        from bench._budgets import raise_read_budgets
        raise_read_budgets(BIN / "labvault", env, [lab["id"]])
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([str(BIN / "labvault"), "serve", "--port", str(port),
                                   "--workers", str(args.workers)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import httpx
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("server did not start: " + (server.stderr.read().decode()
                                                             if server.stderr else ""))
            time.sleep(0.2)
        token = login(base, email, demo["demo_password"], demo["demo_totp_secret"])
        url = f"{base}/fhir/R4"
        one_run(argparse.Namespace(**{**vars(args), "bundles": 20, "clients": 1}), 99, env,
                url, token)  # warm-up: imports, catalogue, key caches in every worker
        runs = [one_run(args, r, env, url, token, server.pid) for r in range(args.runs)]
        summary = {
            "backend": "postgresql" if args.database_url else "sqlite",
            "workers": args.workers, "clients": args.clients,
            "bundles_per_run": args.bundles, "resources_per_bundle": RESOURCES_PER_BUNDLE,
            "median_resources_per_s": statistics.median(r["resources_per_s"] for r in runs),
            "median_server_cpu_ms_per_bundle": (statistics.median(
                r["server_cpu_ms_per_bundle"] for r in runs)
                if all(r["server_cpu_ms_per_bundle"] is not None for r in runs) else None),
            "runs": runs, "cpus": os.cpu_count()}
        print(json.dumps(summary, indent=None if args.json else 2))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        if schema and args.database_url:
            import sqlalchemy as sa
            eng = sa.create_engine(args.database_url.replace("postgresql://",
                                                             "postgresql+psycopg://", 1))
            with eng.begin() as c:
                c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            eng.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        sys.path.insert(0, str(ROOT / "src"))
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                    int(sys.argv[6]), float(sys.argv[7]))
    else:
        main()
