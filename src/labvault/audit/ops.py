"""Verification, checkpoints, inclusion proofs and pruning over the stored chains."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from labvault.audit import chain as ch
from labvault.audit.checkpoints import Checkpoint
from labvault.audit.entry import datetime_to_us
from labvault.errors import KeyUnavailable, NotFound, UserError
from labvault.store import repositories_audit as arepo

if TYPE_CHECKING:
    from labvault.audit.log import AuditLog


@dataclass(slots=True)
class ChainReport:
    tenant: str
    ok: bool = True
    entries_checked: int = 0
    first_seq: int = 0
    next_seq: int = 0
    checkpoints_checked: int = 0
    latest_checkpoint: dict[str, Any] | None = None
    problem: ch.Problem | None = None
    warnings: list[str] = field(default_factory=list)
    walker: ch.Walker | None = None

    def fail(self, problem: ch.Problem) -> None:
        if self.problem is None:
            self.problem = problem
        self.ok = False

    def as_json(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "ok": self.ok, "entries_checked": self.entries_checked,
                "first_seq": self.first_seq, "next_seq": self.next_seq,
                "checkpoints_checked": self.checkpoints_checked,
                "latest_checkpoint": self.latest_checkpoint,
                "problem": self.problem.as_json() if self.problem else None,
                "warnings": self.warnings}


def walk_rows(chain: str, k0: bytes, rows: Iterable[Sequence[Any]] | Iterable[ch.Row],
              checkpoints: Sequence[Checkpoint] = (), head_next: int | None = None,
              keep_leaves: bool = False) -> ChainReport:
    """Verify one chain given its rows in ``seq`` order (from the database or a list).

    ``checkpoints`` are signature-checked checkpoints of this chain; prune anchors among
    them say where a legitimately pruned chain starts. Stops at the first problem.
    """
    rows_it = iter(rows)
    first = next(rows_it, None)
    report = ChainReport(chain)
    anchors = sorted((c for c in checkpoints if c.kind == "prune-anchor"),
                     key=lambda c: c.tree_size)
    start: Checkpoint | None = None
    if first is not None and first[1] > 0:
        start = max((a for a in anchors if a.tree_size <= first[1]),
                    key=lambda a: a.tree_size, default=None)
    elif first is None and anchors:
        start = anchors[-1]
    base = start.tree_size if start else 0
    w = ch.Walker(chain, ch.evolve_n(k0, base), base,
                  start.last_leaf if start else ch.ZERO,
                  list(start.frontier) if start else [],
                  keep_leaves=[] if keep_leaves else None)
    report.first_seq = base
    report.walker = w
    sizes = sorted({c.tree_size for c in checkpoints if c.tree_size > base})
    by_size = {c.tree_size: c for c in checkpoints}
    latest = max(checkpoints, key=lambda c: c.tree_size, default=None)
    if latest is not None:
        report.latest_checkpoint = {"tree_size": latest.tree_size,
                                    "time": latest.time.isoformat(), "kind": latest.kind,
                                    "root": latest.root.hex()}

    def check_boundary() -> None:
        size = w.next_seq
        cp = by_size.get(size)
        if cp is not None and w.problem is None and size > base:
            report.checkpoints_checked += 1
            if w.root != cp.root:
                report.fail(ch.Problem(
                    "root-mismatch", size - 1, w.last_entry_id,
                    f"the first {size} entries do not match the checkpoint of "
                    f"{cp.time.isoformat()} (history rewritten before position {size})"))

    def batches() -> Iterable[list[Any]]:
        buf: list[Any] = [] if first is None else [first]
        for r in rows_it:
            buf.append(r)
            if len(buf) >= 4096:
                yield buf
                buf = []
        if buf:
            yield buf

    pending = list(sizes)
    for batch in batches():
        i = 0
        while i < len(batch) and report.ok:
            # feed up to the next checkpoint boundary so its root can be compared there
            if pending and pending[0] <= w.next_seq:
                pending.pop(0)
                continue
            limit = len(batch) if not pending else min(len(batch), i + pending[0] - w.next_seq)
            if not w.feed(batch[i:limit]):
                assert w.problem is not None
                report.fail(w.problem)
                break
            i = limit
            check_boundary()
        if not report.ok:
            break
    report.entries_checked = w.checked
    report.next_seq = w.next_seq
    if report.ok:
        # truncation: entries a checkpoint (outside the database) or the head say existed
        if latest is not None and latest.tree_size > w.next_seq:
            report.fail(ch.Problem(
                "truncated", w.next_seq, None,
                f"entries {w.next_seq}..{latest.tree_size - 1} are missing: the checkpoint of "
                f"{latest.time.isoformat()} covers {latest.tree_size} entries"))
        elif head_next is not None and head_next > w.next_seq:
            report.fail(ch.Problem(
                "truncated", w.next_seq, None,
                f"entries {w.next_seq}..{head_next - 1} are missing (the chain head says "
                f"{head_next} were written)"))
        elif head_next is not None and head_next < w.next_seq:
            report.fail(ch.Problem("head-mismatch", head_next, None,
                                   f"the chain head says {head_next} entries, "
                                   f"{w.next_seq} are stored"))
    return report


def require_chain(conn: Connection, known: set[str], chain: str) -> None:
    """A chain named on the command line exists: an unknown laboratory is the caller's
    typo (exit 2), not a chain that fails verification (exit 1 means tampering)."""
    from labvault.store import repositories as repo
    if chain not in known and repo.get_tenant(conn, chain) is None:
        raise NotFound(f"no laboratory {chain}",
                       "use `labvault tenant list` (or _platform for the platform chain)")


class AuditOps:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    @property
    def lv(self) -> Any:
        return self.audit.lv

    def chains(self, conn: Connection, tenant: str | None = None) -> list[str]:
        known = set(arepo.chains(conn)) | set(self.audit.checkpoints.tenants())
        if tenant is not None:
            require_chain(conn, known, tenant)
            return [tenant]
        return sorted(known)

    def verify_chain(self, conn: Connection, chain: str, keep_leaves: bool = False,
                     batch: int = 20_000) -> ChainReport:
        # Order matters while others keep appending: checkpoints first (each was written
        # after its entries committed), then the head, then the entries up to that head —
        # entries appended meanwhile are left for the next run, never taken for tampering.
        cps, bad = self.audit.checkpoints.list(chain)
        try:
            k0 = self.audit.k0(conn, chain)
        except KeyUnavailable as exc:
            r = ChainReport(chain)
            r.fail(ch.Problem("no-key", 0, None, exc.message))
            return r
        head = arepo.head(conn, chain)
        head_next = int(head["next_seq"]) if head else None
        rows = (r for b in arepo.stream_rows(conn, chain, to_seq=head_next, batch=batch)
                for r in b)
        report = walk_rows(chain, k0, rows, cps, head_next=head_next, keep_leaves=keep_leaves)
        if report.ok and head_next is not None:
            extra = arepo.first_at_or_after(conn, chain, head_next)
            now = arepo.head(conn, chain)
            if extra is not None and (now is None or int(now["next_seq"]) <= extra[0]):
                report.fail(ch.Problem("beyond-head", head_next, extra[1],
                                       f"entry {extra[1]} sits at position {extra[0]}, after "
                                       f"the chain head ({head_next}): inserted behind "
                                       "labvault's back"))
        report.warnings.extend(f"checkpoint {b}" for b in bad)
        return report

    def verify(self, tenant: str | None = None) -> dict[str, Any]:
        with self.lv.begin() as conn:
            chains = self.chains(conn, tenant)
            reports = [self.verify_chain(conn, c) for c in chains]
        ok = all(r.ok for r in reports)
        return {"ok": ok, "chains": [r.as_json() for r in reports],
                "entries_checked": sum(r.entries_checked for r in reports),
                "failures": [{"tenant": r.tenant, **r.problem.as_json()}
                             for r in reports if r.problem]}

    def checkpoint(self, tenant: str | None = None) -> dict[str, Any]:
        """Verify each chain, then sign a checkpoint of its current state."""
        out: list[dict[str, Any]] = []
        ok = True
        with self.lv.begin() as conn:
            for chain in self.chains(conn, tenant):
                r = self.verify_chain(conn, chain)
                if not r.ok or r.walker is None:
                    ok = False
                    out.append({"tenant": chain, "ok": False,
                                "problem": r.problem.as_json() if r.problem else None})
                    continue
                w = r.walker
                if w.next_seq == 0:
                    continue
                cp = self.audit.checkpoints.write(chain, w.next_seq, w.root, w.prev,
                                                  w.frontier)
                out.append({"tenant": chain, "ok": True, "tree_size": cp.tree_size,
                            "root": cp.root.hex(), "file": str(cp.path)})
        return {"ok": ok, "checkpoints": out}

    def prove(self, entry_id: str) -> dict[str, Any]:
        with self.lv.begin() as conn:
            row = arepo.entry_by_id(conn, entry_id)
            if row is None:
                raise NotFound(f"no audit entry {entry_id}", "check the entry id")
            chain, seq = row["tenant_id"], int(row["seq"])
            cp = self.audit.latest_checkpoint(chain)
            if cp is None or cp.tree_size <= seq:
                raise UserError(f"entry {entry_id} is not covered by a checkpoint yet",
                                "run `labvault audit checkpoint` first")
            r = self.verify_chain(conn, chain, keep_leaves=True)
        w = r.walker
        if w is None or (not r.ok and (r.problem is None or r.problem.seq < cp.tree_size)):
            return {"entry_id": entry_id, "tenant": chain, "seq": seq, "verified": False,
                    "problem": r.problem.as_json() if r.problem else None}
        assert w.keep_leaves is not None
        base = r.first_seq
        start = next((c for c in self.audit.checkpoints.list(chain)[0]
                      if c.kind == "prune-anchor" and c.tree_size == base), None)
        tree = ch.Tree(w.keep_leaves[:cp.tree_size - base], base,
                       start.frontier if start else ())
        leaf = w.keep_leaves[seq - base]
        path = tree.path(seq)
        verified = ch.verify_inclusion(seq, cp.tree_size, leaf, path, cp.root)
        return {"entry_id": entry_id, "tenant": chain, "seq": seq, "leaf_hash": leaf.hex(),
                "tree_size": cp.tree_size, "root": cp.root.hex(),
                "checkpoint": str(cp.path), "checkpoint_time": cp.time.isoformat(),
                "path": [h.hex() for h in path], "verified": verified}

    def prune(self, now: datetime | None = None) -> dict[str, Any]:
        """Delete entries older than the retention period, after anchoring them in a signed
        prune-anchor checkpoint from which verification of the rest starts."""
        days = self.audit.retention_days
        if days <= 0:
            return {"retention_days": days, "pruned": [], "message": "retention is unlimited"}
        cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
        cutoff_us = datetime_to_us(cutoff)
        pruned: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        with self.lv.begin() as conn:
            for chain in self.chains(conn):
                upto = arepo.newest_seq_before(conn, chain, cutoff_us)
                first = arepo.first_seq(conn, chain)
                if upto is None or first is None or upto <= first:
                    continue
                r = self.verify_chain(conn, chain, keep_leaves=False)
                if r.walker is None or r.walker.next_seq < upto or (
                        r.problem is not None and r.problem.seq < upto):
                    refused.append({"tenant": chain, "problem": r.problem.as_json()
                                    if r.problem else None})
                    continue
                anchor = self._anchor_at(conn, chain, r.first_seq, upto)
                n = arepo.delete_below(conn, chain, upto)
                arepo.set_pruned_below(conn, chain, upto)
                pruned.append({"tenant": chain, "deleted": n, "pruned_below": upto,
                               "anchor": str(anchor.path)})
        return {"retention_days": days, "cutoff": cutoff.isoformat(), "pruned": pruned,
                "refused": refused}

    def _anchor_at(self, conn: Connection, chain: str, base: int, upto: int) -> Checkpoint:
        cps, _ = self.audit.checkpoints.list(chain)
        start = next((c for c in cps if c.kind == "prune-anchor" and c.tree_size == base), None)
        w = ch.Walker(chain, ch.evolve_n(self.audit.k0(conn, chain), base), base,
                      start.last_leaf if start else ch.ZERO,
                      list(start.frontier) if start else [])
        for b in arepo.stream_rows(conn, chain, base, to_seq=upto):
            if not w.feed(b):
                raise UserError(f"chain {chain} does not verify before position {upto}",
                                "run `labvault audit verify` and investigate first")
        return self.audit.checkpoints.write(chain, upto, w.root, w.prev, w.frontier,
                                            kind="prune-anchor")
