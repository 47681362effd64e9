"""Breach response: the register (GDPR Art. 33(5)), dump triage, attribution, severity
and notices (docs/breach.md).

A case is platform-level — one leak may touch many laboratories — so the register is
filed under the pseudo tenant ``PLATFORM`` whose ``data`` key (created on first use,
wrapped by the root key like every tenant key) seals every free-text value. Every
step passes the gate with ``resource="breach"`` and leaves an audit event.

Triage never opens a patient record: the exact tier compares keyed digests with the
blind indexes, the fuzzy tier compares keyed Bloom-filter encodings written beside
them when a patient is written (``on_patients_written``). Only ``notify`` opens
patients' identity and contact data — through the gate, purpose ``breach`` — to
address the Art. 34 letters.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Connection

from labvault.breach import attribution as attr
from labvault.breach import columns as colmod
from labvault.breach import notices
from labvault.breach.encoding import (
    BLOCK_LABEL,
    CLK_LABEL,
    FUZZY_ACCEPT,
    PERM_LABEL,
    STORED_BYTES,
    ClkEncoder,
    MatchIdentity,
)
from labvault.breach.matching import (
    EXACT_KINDS,
    ExactPrep,
    FuzzyPrep,
    Match,
    RowKeys,
    RowReader,
    TenantEncodings,
    TenantIndex,
    TenantRows,
    exact_tenant,
    fuzzy_keys,
    fuzzy_tenant,
)
from labvault.breach.readers import DumpError, Progress, open_dump
from labvault.breach.severity import RECIPIENTS, Circumstances, assess
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.domain.patient import PatientRecord
from labvault.errors import NotFound, UserError
from labvault.services.gate import Access
from labvault.store import repositories as repo
from labvault.store import repositories_breach as brepo
from labvault.store.ids import new_id

log = logging.getLogger("labvault.breach")

if TYPE_CHECKING:
    from labvault.services.app import Labvault

PLATFORM = "platform"            # pseudo tenant of platform-level records (breach cases)
CLOCK = timedelta(hours=72)      # GDPR Art. 33(1)
EVENT_KINDS = ("evidence", "triage", "severity", "decision", "notification", "measure", "note",
               "status")
EVIDENCE_CHUNK = 1 << 20
BACKFILL_BATCH = 500
IDENTIFY_MAX = 256 << 20        # leaks larger than this are not handed to the guard's identify
READER_SAMPLE = 500              # matched patients per laboratory looked up in the audit log
ENCODINGS, SEALED = "breach_encodings", "sealed"   # where a patient's sealed encoding lives


def _iso(d: datetime | None) -> str | None:
    if d is None:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.isoformat()


def parse_instant(value: str) -> datetime:
    try:
        d = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{value!r} is not an ISO 8601 date-time",
                        "e.g. 2026-11-28T09:30:00+01:00") from None
    if d.tzinfo is None:
        raise UserError(f"{value!r} has no time zone", "add one, e.g. +01:00 or Z")
    return d.astimezone(UTC)


@dataclass
class _TenantWork:
    tenant_id: str
    index_version: int
    index_key: bytes
    clk: bytes
    perm: bytes
    block: bytes


# Tenant-independent preparation shared with forked worker processes (read-only; set
# just before the pool starts).
_SHARED_EXACT: ExactPrep | None = None
_SHARED_PREP: FuzzyPrep | None = None


def _exact_job(work: _TenantWork, index: TenantIndex) -> list[Match]:
    assert _SHARED_EXACT is not None
    return exact_tenant(_SHARED_EXACT, work.tenant_id, work.index_key, index)


def _fuzzy_job(work: _TenantWork, data: TenantRows) -> list[tuple[int, str, str, float]]:
    assert _SHARED_PREP is not None
    enc = ClkEncoder(work.clk, work.perm, work.block)
    return [(n, work.tenant_id, pid, score)
            for n, pid, score in fuzzy_tenant(_SHARED_PREP, enc, TenantEncodings.build(enc, data),
                                              FUZZY_ACCEPT)]


_J = TypeVar("_J")


def _run(fn: Callable[..., _J], jobs: Iterable[tuple[Any, ...]], workers: int) -> Iterator[_J]:
    """``fn(*job)`` for each job, results in job order; with ``workers`` > 1 in forked
    processes, the next jobs loaded (by iterating ``jobs``) while the workers compute,
    at most ``workers`` + 1 in flight (bounded memory)."""
    if workers <= 1:
        for job in jobs:
            yield fn(*job)
        return
    import multiprocessing as mp
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
        pending: deque[Future[_J]] = deque()
        for job in jobs:
            pending.append(pool.submit(fn, *job))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _PhaseClock:
    """Wall time of each triage phase, logged at INFO on ``labvault.breach`` (bench/breach.py
    prints them; an operator sees where a slow triage spends its time)."""

    def __init__(self) -> None:
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        log.info("triage phase %s: %.2f s", phase, now - self._t)
        self._t = now


class BreachService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv
        self.attribution_sources: list[attr.AttributionSource] = []
        self._encoders: dict[tuple[str, int], ClkEncoder] = {}
        hooks = getattr(lv.patients, "write_hooks", None)
        if hooks is not None:
            hooks.append(self.on_patients_written)
        erase = getattr(lv.patients, "erase_hooks", None)
        if erase is not None:
            erase.append(self.on_patient_erased)

    # -- gate helpers --------------------------------------------------------------------------
    def _check(self, conn: Connection, actor: Actor, action: Action, case_id: str | None = None,
               tenant_id: str | None = None, patient_ids: Sequence[str] = (),
               categories: Iterable[Category] = (), reason: str | None = None) -> None:
        self.lv.gate.check(conn, Access(actor, action, tenant_id, frozenset(categories),
                                        purpose="breach", patient_ids=tuple(patient_ids),
                                        reason=reason, resource="breach"))

    def _event(self, conn: Connection, actor: Actor, event: str, detail: Mapping[str, Any],
               tenant_id: str | None = None) -> None:
        self.lv.gate.audit.event(conn, actor, f"breach.{event}", "ok", tenant_id, detail)

    def _platform_key(self, conn: Connection) -> None:
        if repo.current_key_version(conn, PLATFORM, "data") is None:
            repo.insert_tenant_key(conn, self.lv.keyring.new_tenant_key(PLATFORM, "data", 1))

    def _seal(self, conn: Connection, table: str, column: str, record_id: str,
              value: Any) -> bytes:
        data = json.dumps(value, ensure_ascii=False, default=str).encode()
        return self.lv.gate.seal_tenant_value(conn, PLATFORM, table, column, record_id, data)

    def _open(self, conn: Connection, table: str, column: str, record_id: str,
              sealed: bytes) -> Any:
        return json.loads(self.lv.gate.open_tenant_value_checked(conn, PLATFORM, table, column,
                                                                 record_id, sealed))

    # -- register -----------------------------------------------------------------------------
    def open_case(self, actor: Actor, title: str, aware_at: datetime | str,
                  description: str | None = None) -> str:
        if not title or not title.strip():
            raise UserError("a case needs a title", "e.g. --title 'Fichier patients sur un forum'")
        aware = parse_instant(aware_at) if isinstance(aware_at, str) else aware_at.astimezone(UTC)
        now = self.lv.now()
        if aware > now + timedelta(minutes=5):
            raise UserError("--aware-at is in the future", "give the time you became aware")
        case_id = new_id("brc")
        with self.lv.begin() as conn:
            self._check(conn, actor, Action.WRITE, case_id)
            self._platform_key(conn)
            brepo.insert_case(conn, {
                "tenant_id": PLATFORM, "case_id": case_id, "status": "open",
                "aware_at": aware, "deadline_at": aware + CLOCK, "opened_at": now,
                "updated_at": now,
                "title_sealed": self._seal(conn, "breach_cases", "title", case_id, title.strip()),
                "description_sealed": (self._seal(conn, "breach_cases", "description", case_id,
                                                  description) if description else None)})
            self._add_event(conn, case_id, "note", {"text": "case opened", "by": actor.id})
            self._event(conn, actor, "case_opened", {"case_id": case_id})
        return case_id

    def _add_event(self, conn: Connection, case_id: str, kind: str, body: Mapping[str, Any],
                   at: datetime | None = None) -> str:
        if kind not in EVENT_KINDS:
            raise UserError(f"unknown event kind {kind!r}", "one of " + ", ".join(EVENT_KINDS))
        event_id = new_id("bre")
        brepo.insert_event(conn, {
            "tenant_id": PLATFORM, "case_id": case_id, "event_id": event_id, "kind": kind,
            "at": at or self.lv.now(),
            "body_sealed": self._seal(conn, "breach_events", "body", event_id, dict(body))})
        brepo.set_case_status(conn, PLATFORM, case_id,
                              str(body["status"]) if kind == "status" else
                              self._status(conn, case_id), self.lv.now())
        return event_id

    def _status(self, conn: Connection, case_id: str) -> str:
        row = brepo.get_case(conn, PLATFORM, case_id)
        return str(row["status"]) if row else "open"

    def record(self, actor: Actor, case_id: str, kind: str, text: str,
               extra: Mapping[str, Any] | None = None) -> str:
        """Add a decision, measure or note to the case timeline."""
        if kind not in ("decision", "measure", "note"):
            raise UserError(f"cannot record a {kind!r} by hand", "use decision, measure or note")
        with self.lv.begin() as conn:
            self._require(conn, case_id)
            self._check(conn, actor, Action.WRITE, case_id)
            eid = self._add_event(conn, case_id, kind, {"text": text, "by": actor.id,
                                                        **dict(extra or {})})
            self._event(conn, actor, f"{kind}_recorded", {"case_id": case_id, "event_id": eid})
        return eid

    def close(self, actor: Actor, case_id: str) -> None:
        with self.lv.begin() as conn:
            self._require(conn, case_id)
            self._check(conn, actor, Action.WRITE, case_id)
            self._add_event(conn, case_id, "status", {"status": "closed", "by": actor.id})
            self._event(conn, actor, "case_closed", {"case_id": case_id})

    def _require(self, conn: Connection, case_id: str) -> dict[str, Any]:
        row = brepo.get_case(conn, PLATFORM, case_id)
        if row is None:
            raise NotFound(f"no breach case {case_id}", "list cases with `labvault breach list`")
        return row

    def _case(self, conn: Connection, row: Mapping[str, Any]) -> dict[str, Any]:
        cid = row["case_id"]
        now = self.lv.now()
        deadline = row["deadline_at"] if row["deadline_at"].tzinfo else \
            row["deadline_at"].replace(tzinfo=UTC)
        return {
            "case_id": cid, "status": row["status"],
            "title": self._open(conn, "breach_cases", "title", cid, row["title_sealed"]),
            "description": (self._open(conn, "breach_cases", "description", cid,
                                       row["description_sealed"])
                            if row["description_sealed"] else None),
            "aware_at": _iso(row["aware_at"]), "deadline_at": _iso(deadline),
            "hours_left": round((deadline - now).total_seconds() / 3600, 1),
            "overdue": now > deadline and row["status"] == "open",
            "opened_at": _iso(row["opened_at"]), "updated_at": _iso(row["updated_at"]),
        }

    def list_cases(self, actor: Actor) -> list[dict[str, Any]]:
        with self.lv.begin() as conn:
            self._check(conn, actor, Action.READ)
            if repo.current_key_version(conn, PLATFORM, "data") is None:
                return []
            return [self._case(conn, r) for r in brepo.list_cases(conn, PLATFORM)]

    def show(self, actor: Actor, case_id: str, with_matches: bool = False) -> dict[str, Any]:
        with self.lv.begin() as conn:
            row = self._require(conn, case_id)
            self._check(conn, actor, Action.READ, case_id)
            case = self._case(conn, row)
            events = []
            for e in brepo.case_events(conn, PLATFORM, case_id):
                body = self._open(conn, "breach_events", "body", e["event_id"], e["body_sealed"])
                if e["kind"] == "triage" and not with_matches:
                    body = {k: v for k, v in body.items() if k != "matches"}
                events.append({"event_id": e["event_id"], "kind": e["kind"], "at": _iso(e["at"]),
                               **body})
        case["timeline"] = events
        for kind, key in (("evidence", "evidence"), ("triage", "triage"),
                          ("severity", "severity"), ("decision", "decisions"),
                          ("notification", "notifications"), ("measure", "measures")):
            case[key] = [e for e in events if e["kind"] == kind]
        return case

    # -- evidence ------------------------------------------------------------------------------
    def add_evidence(self, actor: Actor, case_id: str, path: Path) -> dict[str, Any]:
        """Hash the file (SHA-256) and keep a sealed copy beside the database."""
        if not path.is_file():
            raise DumpError(f"{path}: no such file", "check the path")
        evidence_id = new_id("bev")
        store = self.lv.settings.data_dir / "breach" / case_id
        store.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = store / f"{evidence_id}.sealed"
        h = hashlib.sha256()
        size = chunks = 0
        with self.lv.begin() as conn:
            self._require(conn, case_id)
            self._check(conn, actor, Action.WRITE, case_id)
            existing = [e for e in self._events(conn, case_id, "evidence")]
            with path.open("rb") as src, target.open("wb") as dst:
                os.chmod(target, 0o600)
                while True:
                    data = src.read(EVIDENCE_CHUNK)
                    if not data:
                        break
                    h.update(data)
                    size += len(data)
                    sealed = self.lv.gate.seal_tenant_value(
                        conn, PLATFORM, "breach_evidence", "chunk", f"{evidence_id}:{chunks}",
                        data)
                    dst.write(len(sealed).to_bytes(4, "big") + sealed)
                    chunks += 1
            digest = h.hexdigest()
            dup = next((e for e in existing if e.get("sha256") == digest), None)
            if dup is not None:
                target.unlink()
                return dict(dup)
            body = {"evidence_id": evidence_id, "sha256": digest, "name": path.name,
                    "bytes": size, "chunks": chunks,
                    "stored": str(target.relative_to(self.lv.settings.data_dir))}
            self._add_event(conn, case_id, "evidence", body)
            self._event(conn, actor, "evidence_added", {"case_id": case_id,
                                                        "evidence_id": evidence_id})
        return body

    def _events(self, conn: Connection, case_id: str, kind: str) -> list[dict[str, Any]]:
        return [self._open(conn, "breach_events", "body", e["event_id"], e["body_sealed"])
                for e in brepo.case_events(conn, PLATFORM, case_id) if e["kind"] == kind]

    # -- encodings (write path) ----------------------------------------------------------------
    def _work(self, conn: Connection, tenant_id: str) -> _TenantWork:
        self.lv.load_tenant_keys(conn, tenant_id)
        v = repo.current_key_version(conn, tenant_id, "index")
        assert v is not None
        kr = self.lv.keyring
        return _TenantWork(tenant_id, v, kr.blind_index_key(tenant_id, v),
                           kr.tenant_secret(tenant_id, "index", v, CLK_LABEL),
                           kr.tenant_secret(tenant_id, "index", v, PERM_LABEL),
                           kr.tenant_secret(tenant_id, "index", v, BLOCK_LABEL))

    def encoder(self, conn: Connection, tenant_id: str) -> tuple[ClkEncoder, int]:
        self.lv.load_tenant_keys(conn, tenant_id)
        v = repo.current_key_version(conn, tenant_id, "index")
        assert v is not None
        enc = self._encoders.get((tenant_id, v))
        if enc is None:
            w = self._work(conn, tenant_id)
            enc = ClkEncoder(w.clk, w.perm, w.block)
            self._encoders[(tenant_id, v)] = enc
        return enc, v

    def forget_encoders(self, tenant_id: str) -> None:
        """Drop a tenant's cached encoders (its index key was rotated, or the rotation
        failed and the version it prepared will be made again with another key)."""
        for k in [k for k in self._encoders if k[0] == tenant_id]:
            del self._encoders[k]

    @staticmethod
    def identities(rec: PatientRecord) -> list[MatchIdentity]:
        pc = rec.address.postal_code if rec.address else None
        out = [MatchIdentity.of(rec.birth_name, rec.first_names[0], rec.birth_date, pc, rec.sex,
                                rec.nir, rec.email, rec.phone)]
        if rec.used_name:
            out.append(MatchIdentity.of(rec.used_name, rec.first_names[0], rec.birth_date, pc,
                                        rec.sex))
        return out

    def encoding(self, enc: ClkEncoder, rec: PatientRecord) -> bytes:
        """A patient's encoding (``STORED_BYTES``) then its blocking keys (8 bytes each)."""
        ids = self.identities(rec)
        blocks = dict.fromkeys(b for m in ids for b in enc.blocks(m))
        clk = enc.encode(ids[0])
        if len(clk) != STORED_BYTES:       # triage splits the sealed value at this offset
            raise ValueError(f"an encoding of {len(clk)} bytes, not {STORED_BYTES}")
        return clk + b"".join(blocks)

    def encoding_rows(self, conn: Connection, tenant_id: str,
                      written: Sequence[tuple[str, PatientRecord]]) -> list[dict[str, Any]]:
        """The ``breach_encodings`` rows of some patients: each encoding sealed under the
        tenant's data key (one AES-GCM per patient, ~1 µs against the encoding's ~40)."""
        enc, v = self.encoder(conn, tenant_id)
        sealer = self.lv.gate.tenant_column_sealer(conn, tenant_id, ENCODINGS, SEALED)
        sealed = sealer.seal_many([(pid, self.encoding(enc, rec)) for pid, rec in written])
        return [{"tenant_id": tenant_id, "patient_id": pid, "key_version": v, "sealed": s}
                for (pid, _), s in zip(written, sealed, strict=True)]

    def on_patients_written(self, conn: Connection, tenant_id: str,
                            written: Sequence[tuple[str, PatientRecord]], fresh: bool) -> None:
        """Patient write hook: (re)compute encodings in the writer's transaction."""
        if not written:
            return
        brepo.replace_encodings(conn, tenant_id, self.encoding_rows(conn, tenant_id, written),
                                fresh=fresh)

    def on_patient_erased(self, conn: Connection, tenant_id: str, patient_id: str) -> None:
        brepo.delete_encodings(conn, tenant_id, patient_id)

    def backfill(self, actor: Actor, tenant_id: str | None = None) -> dict[str, int]:
        """Encode patients written before this module existed (opens identity + contact
        through the gate, purpose ``breach``); also drops encodings of erased patients."""
        out: dict[str, int] = {}
        if tenant_id:
            self.lv.tenants.get(tenant_id)      # a typo: "no laboratory", not 0 encoded
        tenants = [tenant_id] if tenant_id else [t["tenant_id"] for t in self._tenants()]
        with self.lv.begin() as conn:
            purged = brepo.purge_orphan_encodings(conn)
        for t in tenants:
            with self.lv.begin() as conn:
                todo = brepo.patients_without_encoding(conn, t)
            done = 0
            for i in range(0, len(todo), BACKFILL_BATCH):
                part = todo[i:i + BACKFILL_BATCH]
                with self.lv.begin() as conn:
                    opened = self.lv.gate.read_patients(conn, Access(
                        actor, Action.READ, t, frozenset({Category.IDENTITY, Category.CONTACT}),
                        purpose="breach", patient_ids=tuple(part), resource="breach",
                        reason="breach matching encodings (backfill)"))
                    written = []
                    for pid, cats in opened.items():
                        data = PatientRecord.from_categories(cats)
                        data = {k: v for k, v in data.items()
                                if k in ("birth_name", "used_name", "first_names", "birth_date",
                                         "sex", "address", "nir", "email", "phone")}
                        written.append((pid, PatientRecord.parse(data)))
                    self.on_patients_written(conn, t, written, fresh=False)
                    done += len(written)
            out[t] = done
        out["purged_orphans"] = purged
        return out

    def _tenants(self) -> list[dict[str, Any]]:
        with self.lv.begin() as conn:
            return [t for t in repo.list_tenants(conn) if t["tenant_id"] != PLATFORM]

    # -- triage --------------------------------------------------------------------------------
    def read_dumps(self, paths: Sequence[Path], fmt: str = "auto",
                   progress: Progress | None = None
                   ) -> tuple[list[RowKeys], list[dict[str, Any]], list[colmod.Column]]:
        rows: list[RowKeys] = []
        files: list[dict[str, Any]] = []
        all_cols: list[colmod.Column] = []
        for path in paths:
            table = open_dump(Path(path), fmt, progress)
            sample: list[list[str]] = []
            it = table.rows
            for r in it:
                sample.append(r)
                if len(sample) >= colmod.SAMPLE_ROWS:
                    break
            if not sample:
                raise DumpError(f"{Path(path).name}: no data rows", "check the file")
            cols = colmod.detect(table.header, sample)
            reader = RowReader(cols)
            start = len(rows)
            for r in sample:
                rows.append(reader.keys(r))
            for r in it:
                rows.append(reader.keys(r))
            files.append({"name": Path(path).name, "format": table.format,
                          "encoding": table.encoding, "rows": len(rows) - start,
                          "first_row": start + 1, "notes": table.notes,
                          "columns": [c.as_json() for c in cols]})
            all_cols.extend(cols)
        return rows, files, all_cols

    def triage(self, actor: Actor, case_id: str, paths: Sequence[Path], fmt: str = "auto",
               progress: Progress | None = None, circumstances: Circumstances | None = None,
               workers: int = 1, keep_evidence: bool = True) -> dict[str, Any]:
        if circumstances is not None and circumstances.recipients not in RECIPIENTS:
            raise UserError(f"unknown recipients {circumstances.recipients!r}",
                            "use --recipients " + " | ".join(RECIPIENTS))
        with self.lv.begin() as conn:
            self._require(conn, case_id)
            self._check(conn, actor, Action.SEARCH, case_id,
                        categories=(Category.IDENTITY, Category.CONTACT))
        clock = _PhaseClock()
        rows, files, cols = self.read_dumps(paths, fmt, progress)
        clock.lap("read")
        # Kept once every file was read: a file refused (truncated, not a dump) leaves
        # nothing in the case — no evidence event, no sealed copy.
        evidence = [self.add_evidence(actor, case_id, Path(p)) for p in paths] \
            if keep_evidence else []
        tenants = self._tenants()
        # The rows live until the end: keep the cyclic GC from rescanning them (and,
        # in forked workers, from touching their pages) — up to the end of the summary:
        # unfrozen earlier, the millions of row objects made the next full collection
        # walk them all (seconds on a 500,000-row file).
        gc.freeze()
        try:
            matches = self._exact(rows, tenants, workers)
            clock.lap("exact")
            exact_rows = {m.row for m in matches}
            todo = [n for n in range(len(rows)) if n not in exact_rows]
            unencoded: dict[str, int] = {}
            fuzzy = self._fuzzy(rows, todo, tenants, workers, clock, unencoded)
            clock.lap("fuzzy")
            for n, (t, pid, score) in sorted(fuzzy.items()):
                matches.append(Match(n, t, pid, "fuzzy", fuzzy_keys(rows[n].ident),
                                     round(score, 3)))
            matches = self._living(matches)
            matches.sort(key=lambda m: (m.row, m.tenant_id, m.patient_id))
            result = self._summarise(actor, case_id, rows, files, cols, matches, tenants,
                                     circumstances or Circumstances())
            result["attribution"].extend(self._identify_exports(actor, paths, files))
            # Patients the fuzzy tier could not see (no encoding yet: written before an
            # upgrade that dropped them, migration 0016) -- said, not silently missed.
            result["unencoded"] = unencoded
            result_store = dict(result)
            with self.lv.begin() as conn:
                self._add_event(conn, case_id, "triage", {
                    **{k: v for k, v in result_store.items() if k != "severity"},
                    "files": files, "evidence": [e.get("evidence_id") for e in evidence]})
                self._add_event(conn, case_id, "severity", result["severity"])
                self._event(conn, actor, "triaged", {"case_id": case_id, "rows": len(rows),
                                                     "matches": len(matches)})
            clock.lap("summary")
        finally:
            gc.unfreeze()
        return result

    def _living(self, matches: list[Match]) -> list[Match]:
        """Matches of active patients only. Erasure and its replay drop a patient's
        encodings in their own transaction (``on_patient_erased``); an encoding left by other
        means (a patient erased before this module was plugged in) must still never make
        an erased patient a person concerned. Checked on the matched ids, and such leftover
        encodings deleted then: a scan of every encoding before each triage cost ~5 s at
        a million patients (``breach backfill`` still purges them all)."""
        if not matches:
            return matches
        with self.lv.begin() as conn:
            gone = brepo.inactive_among(conn, sorted({m.patient_id for m in matches}))
            if gone:
                brepo.delete_encodings_of(conn, sorted(gone))
        return [m for m in matches if m.patient_id not in gone] if gone else matches

    def _exact(self, rows: list[RowKeys], tenants: Sequence[Mapping[str, Any]],
               workers: int) -> list[Match]:
        def jobs() -> Iterator[tuple[_TenantWork, TenantIndex]]:
            for t in tenants:
                with self.lv.begin() as conn:
                    w = self._work(conn, t["tenant_id"])
                    index = TenantIndex.of(brepo.tenant_index_rows(conn, w.tenant_id,
                                                                   EXACT_KINDS))
                yield w, index

        global _SHARED_EXACT
        _SHARED_EXACT = ExactPrep(rows)
        try:
            out: list[Match] = []
            for found in _run(_exact_job, jobs(), workers if len(tenants) > 1 else 1):
                out.extend(found)
            return out
        finally:
            _SHARED_EXACT = None

    def _fuzzy(self, rows: list[RowKeys], todo: list[int], tenants: Sequence[Mapping[str, Any]],
               workers: int = 1, clock: _PhaseClock | None = None,
               unencoded: dict[str, int] | None = None) -> dict[int, tuple[str, str, float]]:
        """Best fuzzy match per row; ``unencoded`` gets, per laboratory, how many active
        patients have no encoding under its current index key (counted, not listed)."""
        best: dict[int, tuple[str, str, float]] = {}
        prep = FuzzyPrep(rows, todo)
        if clock is not None:
            clock.lap("fuzzy preparation")
        if not len(prep):
            return best

        def jobs() -> Iterator[tuple[_TenantWork, TenantRows]]:
            for t in tenants:
                with self.lv.begin() as conn:
                    w = self._work(conn, t["tenant_id"])
                    rows = brepo.tenant_encoding_rows(conn, w.tenant_id, w.index_version)
                    missing = repo.count_patients(conn, w.tenant_id) - len(rows)
                    if missing > 0 and unencoded is not None:
                        unencoded[w.tenant_id] = missing
                    # opened here, in the triage's process, under the check made at its start
                    opened = self.lv.gate.open_tenant_column_checked(
                        conn, w.tenant_id, ENCODINGS, SEALED, rows)
                data = TenantRows.packed((pid, o[:STORED_BYTES], o[STORED_BYTES:])
                                         for (pid, _), o in zip(rows, opened, strict=True))
                del rows, opened
                yield w, data

        global _SHARED_PREP
        _SHARED_PREP = prep
        try:
            # tenants in order; a later tenant wins a row only with a strictly better score
            for found in _run(_fuzzy_job, jobs(), workers if len(tenants) > 1 else 1):
                for n, tid, pid, score in found:
                    if score >= FUZZY_ACCEPT and score > best.get(n, ("", "", 0.0))[2]:
                        best[n] = (tid, pid, score)
        finally:
            _SHARED_PREP = None
        return best

    def _summarise(self, actor: Actor, case_id: str, rows: list[RowKeys],
                   files: list[dict[str, Any]], cols: Sequence[colmod.Column],
                   matches: list[Match], tenants: Sequence[Mapping[str, Any]],
                   circumstances: Circumstances) -> dict[str, Any]:
        per_tenant: dict[str, dict[str, Any]] = {}
        patients: dict[str, set[str]] = defaultdict(set)
        row_map: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        matched_rows: set[int] = set()
        for m in matches:
            patients[m.tenant_id].add(m.patient_id)
            row_map[m.tenant_id][m.patient_id].append(m.row + 1)
            matched_rows.add(m.row)
        # Honeytokens name the leak's source (attribution) but are nobody: they are not
        # persons concerned, their rows no records, and no letter is written to them.
        decoys = self._decoys(patients)
        real = [m for m in matches if m.patient_id not in decoys.get(m.tenant_id, ())]
        real_patients: dict[str, set[str]] = defaultdict(set)
        cats: dict[str, set[str]] = defaultdict(set)
        real_rows: set[int] = set()
        for m in real:
            real_patients[m.tenant_id].add(m.patient_id)
            cats[m.tenant_id].update(rows[m.row].categories)
            real_rows.add(m.row)
        for t, ids in real_patients.items():
            per_tenant[t] = {"patients": len(ids), "categories": sorted(cats[t])}
        # What was exposed: detected meanings with a value in some matched row.
        meanings = self._exposed_meanings(rows, files, cols, real_rows)
        persons = len({(m.tenant_id, m.patient_id) for m in real})
        sealed_cols = sum(1 for c in cols if c.detected == "sealed")
        severity = assess(meanings, persons, len(real_rows), circumstances, sealed_cols)
        severity["exposed"] = sorted(meanings)
        with self.lv.begin() as conn:
            for t, ids in real_patients.items():
                # One audited decision per tenant naming the matched patients (ids only).
                # Honeytokens are left out of it: the gate would take the DPO's triage for
                # someone opening a decoy (``canary.search`` naming the DPO); a decoy in a
                # leaked file is the lab's own alarm, raised below as ``canary.leaked``.
                self._check(conn, actor, Action.SEARCH, case_id, tenant_id=t,
                            patient_ids=sorted(ids), categories=(Category.IDENTITY,))
            self._decoys_leaked(conn, actor, case_id, decoys, row_map)
            attribution = self._attribute(conn, {t: sorted(v) for t, v in patients.items()},
                                          {t: {p: r for p, r in d.items()}
                                           for t, d in row_map.items()}, decoys)
        return {
            "case": case_id,
            "rows": len(rows),
            "columns": [c.as_json() for c in cols],
            "matches": [{"row": m.row + 1, "tenant_id": m.tenant_id, "patient_id": m.patient_id,
                         "method": m.method, "keys": list(m.keys), "score": m.score,
                         **({"honeytoken": True} if m.patient_id in decoys.get(m.tenant_id, ())
                            else {})}
                        for m in matches],
            "per_tenant": per_tenant,
            "unmatched_rows": len(rows) - len(matched_rows),
            "attribution": attribution,
            "severity": severity,
        }

    @staticmethod
    def _exposed_meanings(rows: list[RowKeys], files: list[dict[str, Any]],
                          cols: Sequence[colmod.Column], matched: set[int]) -> set[str]:
        """Meanings of detected columns, kept if their category has a value in a matched row."""
        out: set[str] = set()
        for f in files:
            lo, hi = f["first_row"] - 1, f["first_row"] - 1 + f["rows"]
            in_file = [n for n in matched if lo <= n < hi]
            if not in_file:
                continue
            present: set[str] = set()
            sealed = False
            for n in in_file:
                present |= rows[n].categories
                sealed = sealed or rows[n].sealed
            for c in f["columns"]:
                d = c["detected"]
                if colmod.CATEGORY_OF.get(d) in present:
                    out.add(d)
                elif d == "sealed" and sealed:
                    out.add("sealed")
        del cols
        return out

    def _decoys(self, matched: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
        """The guard's honeytokens among the matched patients, per laboratory."""
        guard = getattr(self.lv, "guard", None)
        if guard is None or not hasattr(guard, "canary_hits") or not matched:
            return {}
        with self.lv.begin() as conn:
            return {t: hits for t, ids in matched.items()
                    if (hits := set(guard.canary_hits(conn, t, ids)))}

    def _decoys_leaked(self, conn: Connection, actor: Actor, case_id: str,
                       decoys: Mapping[str, set[str]],
                       rows: Mapping[str, Mapping[str, Sequence[int]]]) -> None:
        """A critical ``canary.leaked`` alert per laboratory whose honeytokens are in the
        leak: proof the file came from that lab's data. It names the case and who triaged
        it as the finder, not as a suspect (no account on the alert)."""
        guard = getattr(self.lv, "guard", None)
        if guard is None:
            return
        for t, hits in sorted(decoys.items()):
            guard.alert(conn, t, "canary.leaked", None,
                        {"case_id": case_id, "patients": sorted(hits), "found_by": actor.id,
                         "rows": sorted(r for p in hits for r in rows[t][p])},
                        subject=f"{case_id}|{','.join(sorted(hits))}")

    def _attribute(self, conn: Connection, matched: Mapping[str, Sequence[str]],
                   rows: Mapping[str, Mapping[str, Sequence[int]]],
                   decoys: Mapping[str, set[str]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for t, ids in sorted(matched.items()):
            real = [p for p in ids if p not in decoys.get(t, ())]
            if not real:
                continue
            lo, hi = brepo.record_times(conn, t, real)
            out.append({"kind": "tenant_scope", "tenant_id": t, "patients": len(real),
                        "records_created_from": _iso(lo), "records_updated_to": _iso(hi)})
        out.extend(self._readers(conn, matched))
        guard = getattr(self.lv, "guard", None)
        for t, hits in sorted(decoys.items()):
            for pid in sorted(hits):
                out.append({"kind": "honeytoken", "tenant_id": t, "patient_id": pid,
                            "rows": list(rows[t][pid])})
        for source in self.attribution_sources:
            out.extend(source.attribute(conn, matched, rows))
        if guard is None and not self.attribution_sources:
            out.append({"kind": "note", "detail":
                        "no honeytoken / export-fingerprint source (guard not plugged in); "
                        "no export is attributed"})
        return out

    def _identify_exports(self, actor: Actor, paths: Sequence[Path],
                          files: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Export fingerprints and decoy rows (guard): which export a CSV/NDJSON leak is."""
        exports = getattr(getattr(self.lv, "guard", None), "exports", None)
        if exports is None or not exports.any_export(actor):
            return []
        out: list[dict[str, Any]] = []
        for path, f in zip(paths, files, strict=True):
            if f["format"] not in ("csv", "ndjson") or Path(path).stat().st_size > IDENTIFY_MAX:
                continue
            try:
                res = exports.identify(actor, Path(path).read_bytes())
            except UserError as exc:
                out.append({"kind": "note", "file": f["name"],
                            "detail": f"export identification: {exc.message}"})
                continue
            if res.get("export_id"):
                out.append({"kind": "export", "file": f["name"],
                            **{k: res.get(k) for k in ("export_id", "tenant_id", "recipient",
                                                        "requested_by", "approvers", "purpose",
                                                        "created_at", "evidence")}})
        return out

    def _readers(self, conn: Connection, matched: Mapping[str, Sequence[str]]
                 ) -> list[dict[str, Any]]:
        """Accounts that read the matched patients, ranked by overlap, from the audit trail:
        the tamper-evident log when plugged in (up to ``READER_SAMPLE`` matched patients
        per laboratory are looked up), else the in-memory audit hook."""
        audit = self.lv.gate.audit
        reads: list[tuple[str, str | None, Sequence[str]]] = []
        from labvault.audit.log import AuditLog
        if isinstance(audit, AuditLog):
            from labvault.audit.entry import AuditEntry
            from labvault.store import repositories_audit as arepo
            sample = {t: list(ids)[:READER_SAMPLE] for t, ids in matched.items()}
            for t, ids in sample.items():
                for pid in ids:
                    for row in arepo.entries_for_patient(conn, t, pid):
                        e = AuditEntry.from_row(row)
                        if e.outcome in ("allowed", "success") and e.purpose != "breach" \
                                and e.action in ("read", "search", "export") and not e.event:
                            reads.append((e.actor_id, t, (pid,)))
            return attr.rank_readers(reads, sample)
        entries = getattr(audit, "entries", None)
        if isinstance(entries, list):
            reads = [(a.actor.id, a.tenant_id, a.patient_ids) for a, _, outcome in entries
                     if outcome == "allowed" and a.purpose != "breach"
                     and str(a.action) in ("read", "search", "export") and a.patient_ids]
        return attr.rank_readers(reads, matched)

    # -- notices -------------------------------------------------------------------------------
    def notify(self, actor: Actor, case_id: str, out_dir: Path, dpo: Mapping[str, str],
               kind: str | None = None, origin: str | None = None,
               delay_reasons: str | None = None, letters: bool = True) -> dict[str, Any]:
        if kind not in (None, "initial", "complementary"):
            raise UserError(f"unknown notification type {kind!r}", "initial or complementary")
        if not all(dpo.get(k) for k in ("name", "email", "phone")):
            raise UserError("the DPO contact is incomplete (Art. 33(3)(b))",
                            "set LABVAULT_DPO_NAME, LABVAULT_DPO_EMAIL and LABVAULT_DPO_PHONE "
                            "or pass --dpo-name/--dpo-email/--dpo-phone")
        case = self.show(actor, case_id, with_matches=True)
        if not case["triage"]:
            raise UserError("the case has no triage yet", "run `labvault breach triage` first")
        tri, sev = self._case_triage(case)
        kind = kind or ("complementary" if case["notifications"] else "initial")
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        now = self.lv.now()
        labs_by_id = {t["tenant_id"]: t for t in self._tenants()}
        labs = [{"tenant_id": t, "name": labs_by_id[t]["name"], "finess": labs_by_id[t]["finess"],
                 "persons": v["patients"]} for t, v in sorted(tri["per_tenant"].items())
                if t in labs_by_id]
        meanings = sev.get("exposed", [])
        measures = [m["text"] for m in case["measures"]]
        origin = origin or self._origin(tri)
        persons = sum(v["patients"] for v in tri["per_tenant"].values())
        records = tri["records"]
        cnil = notices.cnil_notification(
            case=case, kind=kind, labs=labs, meanings=meanings, persons=persons,
            records=records, severity=sev, dpo=dpo, measures_taken=measures,
            measures_proposed=[], notified_at=now, origin=origin, delay_reasons=delay_reasons)
        written: dict[str, Any] = {}
        p = out_dir / f"cnil-art33-{kind}.json"
        notices.write_private_text(p, json.dumps(cnil, ensure_ascii=False, indent=2))
        written["cnil_json"] = str(p)
        p = out_dir / f"cnil-art33-{kind}.pdf"
        written["cnil_pdf_pages"] = notices.render_pdf("cnil.html", p, n=cnil)
        written["cnil_pdf"] = str(p)
        ars = notices.ars_report(case=case, labs=labs, meanings=meanings, persons=persons,
                                 dpo=dpo, measures_taken=measures, origin=origin, cnil_kind=kind)
        p = out_dir / "ars-cert-sante.json"
        notices.write_private_text(p, json.dumps(ars, ensure_ascii=False, indent=2))
        written["ars_json"] = str(p)
        p = out_dir / "ars-cert-sante.pdf"
        notices.render_pdf("ars.html", p, r=ars)
        written["ars_pdf"] = str(p)
        if sev["notify_subjects"] and letters:
            written.update(self._letters(actor, case, tri, set(meanings), labs_by_id, dpo,
                                         measures, out_dir, now))
        else:
            ex = {"case_id": case_id, "date": notices.date_fr(now),
                  "reason": cnil["subjects_informed"]["reason"], "rationale": sev["rationale"]}
            p = out_dir / "art34-exemption.pdf"
            notices.render_pdf("exemption.html", p, e=ex)
            notices.write_private_text(out_dir / "art34-exemption.json",
                                       json.dumps(ex, ensure_ascii=False, indent=2))
            written["exemption_pdf"] = str(p)
        with self.lv.begin() as conn:
            self._check(conn, actor, Action.WRITE, case_id)
            self._add_event(conn, case_id, "notification", {
                "type": kind, "to": ["CNIL", "ARS/CERT Santé"] + (
                    ["patients"] if "letters" in written else []),
                "files": sorted(Path(v).name for k, v in written.items()
                                if isinstance(v, str)),
                "letters": written.get("letters", 0), "within_72h":
                cnil["timeline"]["within_72h"]})
            self._add_event(conn, case_id, "status", {"status": "notified", "by": actor.id})
            self._event(conn, actor, "notified", {"case_id": case_id, "type": kind})
        return {"case": case_id, "type": kind, "out": str(out_dir), **written,
                "notify_subjects": bool(sev["notify_subjects"])}

    @staticmethod
    def _case_triage(case: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every triage of the case as one — files arrive over days and each is triaged
        when it comes: the matches of all triages, honeytokens left out, each person and
        each matched row counted once, the severity assessed on the whole (with the latest
        triage's circumstances).

        A matched row is known by its file's evidence (the same file triaged again is the
        same evidence) and its row in that file."""
        matches: dict[tuple[Any, ...], dict[str, Any]] = {}
        held: dict[tuple[str, str], set[str]] = defaultdict(set)
        meanings: set[str] = set()
        cats: dict[str, set[str]] = defaultdict(set)
        attribution: list[dict[str, Any]] = []
        sealed = 0
        for n, tri in enumerate(case["triage"]):
            evidence = tri.get("evidence") or []
            spans = [(f["first_row"], f["first_row"] + f["rows"],
                      evidence[i] if i < len(evidence) and evidence[i] else (n, i),
                      frozenset(c["detected"] for c in f.get("columns", [])))
                     for i, f in enumerate(tri.get("files", []))]
            for m in tri["matches"]:
                if m.get("honeytoken"):
                    continue
                span = next((sp for sp in spans if sp[0] <= m["row"] < sp[1]), None)
                where = (span[2], m["row"] - span[0]) if span else ((n,), m["row"])
                matches[(*where, m["tenant_id"], m["patient_id"])] = m
                if span is not None:         # what this patient's own file holds
                    held[(m["tenant_id"], m["patient_id"])] |= span[3]
            for t, v in tri["per_tenant"].items():
                cats[t].update(v["categories"])
            attribution.extend(tri.get("attribution", []))
            sealed += sum(1 for c in tri.get("columns", []) if c.get("detected") == "sealed")
        for sv in case["severity"]:
            meanings.update(sv.get("exposed", []))
        patients: dict[str, set[str]] = defaultdict(set)
        for m in matches.values():
            patients[m["tenant_id"]].add(m["patient_id"])
        records = len({k[:2] for k in matches})
        merged = {"matches": list(matches.values()), "records": records,
                  "attribution": attribution, "held": dict(held),
                  "per_tenant": {t: {"patients": len(ids), "categories": sorted(cats[t])}
                                 for t, ids in sorted(patients.items())}}
        last = case["severity"][-1]
        if len(case["triage"]) == 1:
            return merged, last
        cb = last["cb"]
        sev = assess(meanings, sum(map(len, patients.values())), records, Circumstances(
            recipients={0.0: "none", 0.25: "known"}.get(cb["confidentiality"], "unknown"),
            malicious=bool(cb["malicious"]), integrity=cb["integrity"],
            availability=cb["availability"]), sealed)
        sev["exposed"] = sorted(meanings)
        return merged, sev

    @staticmethod
    def _origin(tri: Mapping[str, Any]) -> str:
        exports = [a for a in tri.get("attribution", []) if a.get("kind") == "export"]
        if exports:
            return "fichier d'export " + ", ".join(str(a.get("export_id")) for a in exports)
        scopes = [a for a in tri.get("attribution", []) if a.get("kind") == "tenant_scope"]
        return ("fichier de patients diffusé en ligne ; enregistrements de "
                f"{len(scopes)} laboratoire(s), origine en cours d'analyse")

    def _letters(self, actor: Actor, case: Mapping[str, Any], tri: Mapping[str, Any],
                 exposed: set[str], labs: Mapping[str, Mapping[str, Any]],
                 dpo: Mapping[str, str], measures: Sequence[str], out_dir: Path,
                 now: datetime) -> dict[str, Any]:
        """One PDF letter per affected patient + the mail-merge CSV. Contact data are opened
        through the gate (purpose ``breach``) and written only to ``out_dir``."""
        by_tenant: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        for m in tri["matches"]:
            by_tenant[m["tenant_id"]][m["patient_id"]].add(m["row"])
        letters_dir = out_dir / "lettres"        # names and addresses: the owner's only
        letters_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(letters_dir, 0o700)
        merge: list[list[object]] = []
        n = 0
        for t, pats in sorted(by_tenant.items()):
            ids = sorted(pats)
            opened: dict[str, Any] = {}
            for i in range(0, len(ids), BACKFILL_BATCH):
                with self.lv.begin() as conn:
                    opened.update(self.lv.gate.read_patients(conn, Access(
                        actor, Action.READ, t, frozenset({Category.IDENTITY, Category.CONTACT}),
                        purpose="breach", patient_ids=tuple(ids[i:i + BACKFILL_BATCH]),
                        reason=f"Art. 34 letters, case {case['case_id']}", resource="breach")))
            for pid in ids:
                if pid not in opened:
                    continue
                data = {"id": pid, **PatientRecord.from_categories(opened[pid])}
                # the data of *this* patient's file(s), not of every file of the case
                mine = exposed & tri.get("held", {}).get((t, pid), exposed)
                letter = notices.letter(case=case, lab=labs[t], patient=data, meanings=mine,
                                        measures=measures, dpo=dpo, today=now)
                name = f"{pid}.pdf"
                notices.render_pdf("letter.html", letters_dir / name, l=letter)
                addr = data.get("address") or {}
                merge.append([pid, labs[t]["name"], letter["salutation"],
                              data.get("used_name") or data.get("birth_name", ""),
                              (data.get("first_names") or [""])[0], addr.get("line", ""),
                              addr.get("postal_code", ""), addr.get("city", ""),
                              data.get("email", ""), data.get("phone", ""),
                              f"lettres/{name}"])
                n += 1
        csv_path = out_dir / "art34-publipostage.csv"
        notices.write_csv(csv_path, ["patient_id", "laboratoire", "civilite", "nom", "prenom",
                                     "adresse", "code_postal", "ville", "email", "telephone",
                                     "lettre"], merge)
        return {"letters": n, "letters_dir": str(letters_dir), "mail_merge_csv": str(csv_path)}


def dpo_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The DPO contact from LABVAULT_DPO_NAME / _EMAIL / _PHONE (docs/configuration.md)."""
    from labvault.config import SETTINGS
    e = os.environ if env is None else env
    return {k: e.get(f"LABVAULT_DPO_{k.upper()}", SETTINGS[f"LABVAULT_DPO_{k.upper()}"][0])
            for k in ("name", "email", "phone")}


ProgressFactory = Callable[[int], Progress]
