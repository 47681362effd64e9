"""Ingest benchmark: the same N synthetic patients into five stores, in one run.

    python bench/ingest.py [--n 50000] [--repeat 3] [--pgcrypto-n 5000] [--only a,b,...]

Pipelines (every one parses and validates each NDJSON line the same way —
``json.loads`` + ``PatientRecord.parse`` — and computes the same normalised search
values, in batches of 500 lines with one transaction, one "already imported?" query
and one "NIR already registered?" query per batch (one NIR, one patient per laboratory:
``PatientService._nirs_free``); only what is stored differs):

  sqlite-sealed   labvault on SQLite: the real ``PatientService.import_lines`` (seal each
                  category with the patient's DEK, wrap the DEK, HMAC blind indexes)
  sqlite-plain    plaintext baseline on SQLite: same table shapes and indexes, category
                  JSON and normalised search values in clear
  pg-sealed       labvault on PostgreSQL (temporary schema)
  pg-plain        plaintext baseline on PostgreSQL
  pg-pgcrypto     PostgreSQL encrypting in the database: ``pgp_sym_encrypt`` per category
                  and ``hmac(..., 'sha256')`` per search value (pgcrypto, temporary schema)

pgcrypto is ~2 orders of magnitude slower, so it ingests ``--pgcrypto-n`` patients
(default min(N, 5000)); its rate is per patient and does not depend on N at that size.
The figure reported per pipeline is the median of ``--repeat`` runs (fresh store each
run); ratios are computed from medians measured in the same process, so machine noise
(the box is shared) affects both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine

from labvault.config import Settings
from labvault.domain.actors import Actor
from labvault.domain.patient import PatientRecord
from labvault.errors import InvalidRecord
from labvault.services import indexing
from labvault.services.app import Labvault
from labvault.store.engine import make_engine
from labvault.store.ids import new_id
from labvault.synthetic import make_finess, people, strip_none

PG_URL = os.environ.get("LABVAULT_BENCH_PG_URL",
                        os.environ.get("LABVAULT_TEST_PG_URL",
                                       "postgresql://postgres@127.0.0.1:5432/test"))
BATCH = 500
TENANT = "lab_bench"


def make_lines(n: int, seed: int = 2026) -> list[str]:
    return [json.dumps(strip_none(p), ensure_ascii=False) for p in people(n, seed=seed)]


def parse(raw: str) -> PatientRecord | None:
    """The parse step shared by every pipeline (what ``import_lines`` does per line)."""
    try:
        return PatientRecord.parse(json.loads(raw))
    except (InvalidRecord, json.JSONDecodeError):
        return None


# -- plaintext baseline: same shape as the labvault tables, values in clear -------------
def plain_tables(md: MetaData, blob: Any) -> tuple[Table, Table]:
    ts = DateTime(timezone=True)
    patients = Table(
        "plain_patients", md,
        Column("tenant_id", String(40), nullable=False),
        Column("patient_id", String(40), nullable=False),
        Column("status", String(20), nullable=False),
        Column("created_at", ts, nullable=False),
        Column("updated_at", ts, nullable=False),
        Column("identity", blob), Column("contact", blob), Column("coverage", blob),
        Column("clinical", blob),
        PrimaryKeyConstraint("tenant_id", "patient_id"),
        Index("ix_plain_patients_patient_id", "patient_id", unique=True),
    )
    index = Table(
        "plain_index", md,
        Column("tenant_id", String(40), nullable=False),
        Column("kind", String(20), nullable=False),
        Column("value", blob, nullable=False),
        Column("patient_id", String(40), nullable=False),
        PrimaryKeyConstraint("tenant_id", "kind", "value", "patient_id"),
        Index("ix_plain_index_tenant_id_patient_id", "tenant_id", "patient_id"),
    )
    return patients, index


def _dumps(d: dict[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


class Baseline:
    """Plaintext (``mode='plain'``) or pgcrypto (``mode='pgcrypto'``) ingestion."""

    def __init__(self, engine: Engine, mode: str) -> None:
        self.engine = engine
        self.mode = mode
        md = MetaData()
        self.patients, self.index = plain_tables(md, LargeBinary if mode == "pgcrypto" else Text)
        md.create_all(engine)
        self.key = secrets.token_hex(16)
        if mode == "pgcrypto":
            k = bindparam("k")
            self.ins_patients = insert(self.patients).values(
                tenant_id=bindparam("tenant_id"), patient_id=bindparam("patient_id"),
                status=bindparam("status"), created_at=bindparam("created_at"),
                updated_at=bindparam("updated_at"),
                **{c: func.pgp_sym_encrypt(bindparam(c), k)
                   for c in ("identity", "contact", "coverage", "clinical")})
            self.ins_index = insert(self.index).values(
                tenant_id=bindparam("tenant_id"), kind=bindparam("kind"),
                patient_id=bindparam("patient_id"),
                value=func.hmac(bindparam("value"), k, "sha256"))
        else:
            self.ins_patients = insert(self.patients)
            self.ins_index = insert(self.index)

    def ingest(self, lines: Sequence[str]) -> int:
        n = 0
        for i in range(0, len(lines), BATCH):
            recs = [r for r in map(parse, lines[i:i + BATCH]) if r is not None]
            with self.engine.begin() as conn:
                ext = [r.external_id for r in recs if r.external_id]
                if self.mode == "pgcrypto":
                    q = select(self.index.c.patient_id).where(
                        self.index.c.tenant_id == TENANT, self.index.c.kind == "external_id",
                        self.index.c.value.in_([func.hmac(e, self.key, "sha256") for e in ext]))
                else:
                    q = select(self.index.c.patient_id).where(
                        self.index.c.tenant_id == TENANT, self.index.c.kind == "external_id",
                        self.index.c.value.in_(ext))
                assert not conn.execute(q).first()
                values = [list(dict.fromkeys(indexing.index_values(r))) for r in recs]
                nirs = [v for vs in values for k, v in vs if k == "nir"]
                if self.mode == "pgcrypto":
                    q = select(self.index.c.patient_id).where(
                        self.index.c.tenant_id == TENANT, self.index.c.kind == "nir",
                        self.index.c.value.in_([func.hmac(v, self.key, "sha256")
                                                for v in nirs]))
                else:
                    q = select(self.index.c.patient_id).where(
                        self.index.c.tenant_id == TENANT, self.index.c.kind == "nir",
                        self.index.c.value.in_(nirs))
                assert not conn.execute(q).first()
                assert len(set(nirs)) == len(nirs)
                rows: list[dict[str, Any]] = []
                idx: list[dict[str, Any]] = []
                ts = datetime.now(UTC)
                for r, vs in zip(recs, values, strict=True):
                    pid = new_id("pt")
                    cats = r.categories()
                    row: dict[str, Any] = {
                        "tenant_id": TENANT, "patient_id": pid, "status": "active",
                        "created_at": ts, "updated_at": ts,
                        **{c.value: _dumps(v) for c, v in cats.items()}}
                    if self.mode == "pgcrypto":
                        row["k"] = self.key
                    rows.append(row)
                    for kind, value in vs:
                        d = {"tenant_id": TENANT, "kind": kind, "value": value, "patient_id": pid}
                        if self.mode == "pgcrypto":
                            d["k"] = self.key
                        idx.append(d)
                conn.execute(self.ins_patients, rows)
                conn.execute(self.ins_index, idx)
            n += len(recs)
        return n


# -- stores ----------------------------------------------------------------------------
class PgSchema:
    def __init__(self) -> None:
        self.name = f"bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.admin = make_engine(PG_URL)
        with self.admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{self.name}"'))
            c.execute(text(f'CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA "{self.name}"'))

    @property
    def url(self) -> str:
        from urllib.parse import quote
        return f"{PG_URL}?options={quote(f'-csearch_path={self.name}')}"

    def drop(self) -> None:
        with self.admin.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self.admin.dispose()


def _labvault(tmp: Path, url: str | None) -> Labvault:
    data = tmp / "var"
    s = Settings(data_dir=data, database_url=url or f"sqlite:///{data / 'labvault.db'}",
                 key_file=tmp / "var.key")
    lv = Labvault.init(s)
    return lv


def run_sealed(lines: Sequence[str], pg: bool) -> float:
    with tempfile.TemporaryDirectory() as d:
        schema = PgSchema() if pg else None
        try:
            lv = _labvault(Path(d), schema.url if schema else None)
            actor = Actor.operator()
            tenant = lv.tenants.add(actor, "Bench", make_finess(random.Random())).tenant_id
            t0 = time.perf_counter()
            report = lv.patients.import_lines(actor, tenant, lines)
            dt = time.perf_counter() - t0
            assert report.imported == len(lines), (report.imported, report.rejected[:3])
            lv.close()
        finally:
            if schema:
                schema.drop()
    return len(lines) / dt


def run_baseline(lines: Sequence[str], mode: str, pg: bool) -> float:
    with tempfile.TemporaryDirectory() as d:
        schema = PgSchema() if pg else None
        try:
            engine = make_engine(schema.url if schema else f"sqlite:///{Path(d) / 'plain.db'}")
            b = Baseline(engine, mode)
            t0 = time.perf_counter()
            n = b.ingest(lines)
            dt = time.perf_counter() - t0
            assert n == len(lines)
            engine.dispose()
        finally:
            if schema:
                schema.drop()
    return len(lines) / dt


PIPELINES: dict[str, Callable[[Sequence[str]], float]] = {
    "sqlite-sealed": lambda ls: run_sealed(ls, pg=False),
    "sqlite-plain": lambda ls: run_baseline(ls, "plain", pg=False),
    "pg-sealed": lambda ls: run_sealed(ls, pg=True),
    "pg-plain": lambda ls: run_baseline(ls, "plain", pg=True),
    "pg-pgcrypto": lambda ls: run_baseline(ls, "pgcrypto", pg=True),
}

def crypto_only(lines: Sequence[str], pg: bool) -> dict[str, float]:
    """Per-patient cost of the cryptography alone, same payloads (parse excluded):
    labvault in-process (new DEK + wrap, seal 4 category blobs, HMAC the search values)
    vs pgcrypto in the server (``pgp_sym_encrypt`` of the 4 blobs + ``hmac`` of the same
    search values, in one statement over arrays so that round trips do not count)."""
    from labvault.crypto import KeyRing, SealContext
    from labvault.crypto import blind_index as bi
    from labvault.crypto.providers.file import FileKeyProvider
    recs = [r for r in map(parse, lines) if r is not None]
    blobs = [[_dumps(v).encode() for v in r.categories().values()] for r in recs]
    values = [list(dict.fromkeys(indexing.index_values(r))) for r in recs]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        ring = KeyRing(FileKeyProvider.create(Path(d) / "k"))
        ring.new_tenant_key(TENANT, "kek", 1)
        ring.new_tenant_key(TENANT, "index", 1)
        ikey = ring.blind_index_key(TENANT, 1)
        names = ("identity", "contact", "coverage", "clinical")
        ids = [new_id("pt") for _ in recs]
        t0 = time.perf_counter()
        indexer = bi.Indexer(ikey)   # as the import does: one per batch
        for pid, bl, vals in zip(ids, blobs, values, strict=True):
            dek, _wrapped = ring.new_dek(TENANT, pid, 1)
            for name, b in zip(names, bl, strict=True):
                dek.seal(SealContext(TENANT, "patients", name, pid), b)
            indexer.digest_many(vals)
        out["labvault_us_per_patient"] = (time.perf_counter() - t0) / len(recs) * 1e6
    if pg:
        schema = PgSchema()
        try:
            eng = make_engine(schema.url)
            flat = [b.decode() for bl in blobs for b in bl]
            flat_v = [f"{k}:{v}" for vals in values for k, v in vals]
            key = secrets.token_hex(16)
            with eng.begin() as c:
                t0 = time.perf_counter()
                c.execute(text("SELECT count(pgp_sym_encrypt(x, :k)) FROM unnest(CAST(:a AS text[])) x"),
                          {"k": key, "a": flat})
                c.execute(text("SELECT count(hmac(x, :k, 'sha256')) FROM unnest(CAST(:a AS text[])) x"),
                          {"k": key, "a": flat_v})
                out["pgcrypto_us_per_patient"] = (time.perf_counter() - t0) / len(recs) * 1e6
            eng.dispose()
        finally:
            schema.drop()
        out["ratio"] = out["pgcrypto_us_per_patient"] / out["labvault_us_per_patient"]
    return out


TARGETS = (("sqlite-sealed", "sqlite-plain", 0.6, "sealed SQLite / plaintext SQLite"),
           ("pg-sealed", "pg-plain", 0.7, "labvault PG / plaintext PG"),
           ("pg-sealed", "pg-pgcrypto", 30.0, "labvault PG / pgcrypto"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="patients per pipeline (default 50000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per pipeline; median reported")
    ap.add_argument("--pgcrypto-n", type=int, default=None,
                    help="patients for the pgcrypto pipeline (default min(N, 5000))")
    ap.add_argument("--only", default=",".join(PIPELINES), help="comma-separated pipelines")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    wanted = [p for p in args.only.split(",") if p]
    print(f"generating {args.n} synthetic patients…", file=sys.stderr)
    lines = make_lines(args.n)
    pgc_n = args.pgcrypto_n or min(args.n, 5000)
    for raw in lines[:300]:   # warm up lazy imports and caches (phone metadata...) for all
        parse(raw)
    results: dict[str, list[float]] = {p: [] for p in wanted}
    for r in range(args.repeat):          # interleave pipelines: noise hits all of them
        for p in wanted:
            ls = lines[:pgc_n] if p == "pg-pgcrypto" else lines
            rate = PIPELINES[p](ls)
            results[p].append(rate)
            print(f"  run {r + 1}/{args.repeat} {p:14s} {rate:10.0f} patients/s", file=sys.stderr)
    med = {p: statistics.median(v) for p, v in results.items()}
    out: dict[str, Any] = {"n": args.n, "pgcrypto_n": pgc_n, "repeat": args.repeat,
                           "patients_per_s": {p: round(v, 1) for p, v in med.items()},
                           "runs": {p: [round(x, 1) for x in v] for p, v in results.items()},
                           "ratios": {}}
    if any(p.startswith("pg") for p in wanted) or "sqlite-sealed" in wanted:
        crypto = [crypto_only(lines[:pgc_n], pg=any(p.startswith("pg") for p in wanted))
                  for _ in range(args.repeat)]
        out["crypto_only"] = {k: round(statistics.median(c[k] for c in crypto), 2)
                              for k in crypto[0]}
    for a, b, target, label in TARGETS:
        if a in med and b in med:
            out["ratios"][label] = {"ratio": round(med[a] / med[b], 3), "target": target,
                                    "met": med[a] / med[b] >= target}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"\nN={args.n} (pgcrypto {pgc_n}), median of {args.repeat} runs")
        for p, v in med.items():
            print(f"  {p:14s} {v:10.0f} patients/s")
        for label, r in out["ratios"].items():
            print(f"  {label:34s} {r['ratio']:8.2f}x  (target >= {r['target']}x: "
                  f"{'met' if r['met'] else 'MISSED'})")
        c = out.get("crypto_only")
        if c:
            print(f"  crypto only, per patient: labvault {c['labvault_us_per_patient']:.1f} us"
                  + (f", pgcrypto {c['pgcrypto_us_per_patient']:.1f} us -> {c['ratio']:.1f}x"
                     if "ratio" in c else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
