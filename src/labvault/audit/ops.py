"""Verification, checkpoints, inclusion proofs and pruning over the stored chains."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from labvault.audit import chain as ch
from labvault.audit.checkpoints import Checkpoint, History, history
from labvault.audit.entry import PLATFORM, datetime_to_us
from labvault.domain.actors import Actor
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
    epoch: int = 0
    restores: list[dict[str, Any]] = field(default_factory=list)
    # the chain verifies but is shorter than the latest checkpoint of its history, and its
    # head agrees with its entries: what a restore looks like (or a clean truncation)
    behind: Checkpoint | None = None
    history: History | None = None

    def fail(self, problem: ch.Problem) -> None:
        if self.problem is None:
            self.problem = problem
        self.ok = False

    @property
    def entries_lost(self) -> int:
        return sum(int(r["lost"]) for r in self.restores)

    def as_json(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "ok": self.ok, "entries_checked": self.entries_checked,
                "first_seq": self.first_seq, "next_seq": self.next_seq,
                "checkpoints_checked": self.checkpoints_checked,
                "latest_checkpoint": self.latest_checkpoint,
                "problem": self.problem.as_json() if self.problem else None,
                "warnings": self.warnings, "epoch": self.epoch, "restores": self.restores,
                "entries_lost_at_restores": self.entries_lost}


def restore_statement(r: Checkpoint) -> dict[str, Any]:
    """What a (signature-checked) restore record says, as verify reports it."""
    st = r.restore or {}
    anchor = st.get("anchor")
    return {"epoch": r.epoch, "restored_size": r.tree_size, "lost_from": r.tree_size,
            "lost_to": r.lost_to, "lost": max(0, r.lost_to - r.tree_size),
            "acknowledged_at": r.time.isoformat(), "operator": st.get("operator"),
            "reason": st.get("reason"), "anchored": anchor is not None,
            "anchor": anchor, "file": str(r.path) if r.path else None}


def restore_warning(r: Checkpoint) -> str:
    st = r.restore or {}
    text = (f"entries {r.tree_size}..{r.lost_to - 1} lost at the restore acknowledged on "
            f"{r.time.isoformat()} by {st.get('operator')} ({st.get('reason')})")
    if st.get("anchor") is None and r.tree_size > 0:
        text += ("; UNANCHORED: no signed checkpoint vouched for the restored "
                 f"{r.tree_size} entries when it was acknowledged")
    return text


def walk_rows(chain: str, k0: bytes, rows: Iterable[Sequence[Any]] | Iterable[ch.Row],
              checkpoints: Sequence[Checkpoint] = (), head_next: int | None = None,
              keep_leaves: bool = False, restore_at: int | None = None) -> ChainReport:
    """Verify one chain given its rows in ``seq`` order (from the database or a list).

    ``checkpoints`` are signature-checked checkpoints of this chain, read as a history of
    epochs (``checkpoints.history``): the chain must match, root for root, every
    checkpoint of today's history, and, below the size where a restore cut them, the
    perfect subtrees of checkpoints of the histories lost at restores. Prune anchors among
    them say where a legitimately pruned chain starts. Stops at the first problem.
    ``restore_at``: verify as if a restore to that size were acknowledged (the check of
    ``acknowledge-restore``)."""
    hist = history(checkpoints, restore_at)
    lineage = hist.lineage
    rows_it = iter(rows)
    first = next(rows_it, None)
    report = ChainReport(chain, epoch=hist.epoch, history=hist)
    anchors = sorted((c for c in lineage if c.kind == "prune-anchor"),
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
    for r in hist.restores:
        report.restores.append(restore_statement(r))
        report.warnings.append(restore_warning(r))
        # the record says what was signed when it was acknowledged; a checkpoint of the
        # epochs before it that goes further (put back since) makes the loss larger
        before = history([c for c in checkpoints if c.epoch < r.epoch]).latest
        if before is not None and before.tree_size > r.lost_to:
            report.restores[-1]["lost_to"] = before.tree_size
            report.restores[-1]["lost"] = before.tree_size - r.tree_size
            report.warnings.append(
                f"{before.describe()} (epoch {before.epoch}) covers {before.tree_size} "
                f"entries, more than the restore record of epoch {r.epoch} says: entries "
                f"{r.tree_size}..{before.tree_size - 1} were lost at that restore")
    # root checks at the sizes of today's history; subtree checks where a lost history
    # shares today's below its cut (the last perfect subtree of the frontier at size b
    # is the range [b - lowbit(b), b): ``w.frontier[-1]`` once b entries are fed)
    by_size: dict[int, list[Checkpoint]] = {}
    for c in lineage:
        if c.tree_size > base:
            by_size.setdefault(c.tree_size, []).append(c)
    subtrees: dict[int, list[tuple[int, bytes, Checkpoint]]] = {}
    for c, limit in hist.partial:
        ranges = ch.frontier_ranges(c.tree_size)
        if len(ranges) != len(c.frontier):
            continue
        for (a, b), h in zip(ranges, c.frontier, strict=True):
            if b > limit:
                break
            if b > base:
                subtrees.setdefault(b, []).append((a, h, c))
    sizes = sorted(set(by_size) | set(subtrees))
    latest = hist.latest
    if latest is not None:
        report.latest_checkpoint = {"tree_size": latest.tree_size,
                                    "time": latest.time.isoformat(), "kind": latest.kind,
                                    "root": latest.root.hex(), "epoch": latest.epoch}

    def check_boundary() -> None:
        size = w.next_seq
        if w.problem is not None or size <= base:
            return
        for cp in by_size.get(size, ()):
            report.checkpoints_checked += 1
            if w.root != cp.root:
                report.fail(ch.Problem(
                    "root-mismatch", size - 1, w.last_entry_id,
                    f"the first {size} entries do not match {cp.describe()}"
                    + (f" (epoch {cp.epoch})" if cp.epoch else "")
                    + f" (history rewritten before position {size})"))
                return
        for a, h, cp in subtrees.get(size, ()):
            report.checkpoints_checked += 1
            if not w.frontier or w.frontier[-1] != h:
                report.fail(ch.Problem(
                    "root-mismatch", size - 1, w.last_entry_id,
                    f"entries {a}..{size - 1} do not match {cp.describe()} (epoch "
                    f"{cp.epoch}, {cp.tree_size} entries), whose history today's shares up "
                    f"to there (history rewritten before position {size})"))
                return

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
    for at, what in hist.problems:      # a restore record removed, or two for one epoch
        report.warnings.append(f"checkpoint history: {what}")
        report.fail(ch.Problem("checkpoint-history", at, None, what))
    if report.ok:
        # truncation: entries a checkpoint (outside the database) or the head say existed
        if latest is not None and latest.tree_size > w.next_seq:
            missing = (f"entries {w.next_seq}..{latest.tree_size - 1} are missing: "
                       f"{latest.describe()} covers {latest.tree_size} entries")
            if head_next is None or head_next == w.next_seq:
                report.behind = latest
                missing += ("; unless the restore of a backup is acknowledged (`labvault "
                            f"audit acknowledge-restore --tenant {chain} --reason ...`), "
                            "that is a truncation")
            elif head_next > w.next_seq:
                missing += f", and the chain head says {head_next} were written"
            report.fail(ch.Problem("truncated", w.next_seq, None, missing))
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
                     batch: int = 20_000, restore_at: int | None = None) -> ChainReport:
        # Order matters while others keep appending: checkpoints first (each was written
        # after its entries committed), then the head, then the entries up to that head —
        # entries appended meanwhile are left for the next run, never taken for tampering.
        cps, bad = self.audit.checkpoints.list(chain)
        head = arepo.head(conn, chain)
        head_next = int(head["next_seq"]) if head else None
        try:
            k0 = self.audit.k0(conn, chain)
        except KeyUnavailable as exc:
            if not cps or head is not None or arepo.first_seq(conn, chain) is not None:
                r = ChainReport(chain)
                r.fail(ch.Problem("no-key", 0, None, exc.message))
                return r
            # a chain known only from its checkpoints: the database was restored from a
            # backup older than the chain (its laboratory); nothing to read, all lost
            k0, head_next = ch.ZERO, 0
        rows = (r for b in arepo.stream_rows(conn, chain, to_seq=head_next, batch=batch)
                for r in b)
        report = walk_rows(chain, k0, rows, cps, head_next=head_next, keep_leaves=keep_leaves,
                           restore_at=restore_at)
        if (report.ok or report.behind is not None) and head_next is not None:
            extra = arepo.first_at_or_after(conn, chain, head_next)
            now = arepo.head(conn, chain)
            if extra is not None and (now is None or int(now["next_seq"]) <= extra[0]):
                report.behind = None        # not a restore: an entry slipped in
                report.problem = None
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
                             for r in reports if r.problem],
                # acknowledged restores are warnings (exit 0), shown and counted forever
                "warnings": sum(len(r.warnings) for r in reports),
                "restores": [{"tenant": r.tenant, **x} for r in reports for x in r.restores],
                "entries_lost_at_restores": sum(r.entries_lost for r in reports)}

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
                                                  w.frontier, epoch=r.epoch)
                out.append({"tenant": chain, "ok": True, "tree_size": cp.tree_size,
                            "root": cp.root.hex(), "file": str(cp.path)})
        return {"ok": ok, "checkpoints": out}

    # -- restores ---------------------------------------------------------------------------
    def acknowledge_restore(self, actor: Actor, tenant: str | None, reason: str,
                            unanchored: bool = False) -> dict[str, Any]:
        """Acknowledge that the database was restored from a backup: for each chain shorter
        than the latest checkpoint of its history (``tenant``, or every chain), check that
        what remains is a genuine prefix of the signed history, then sign a restore record
        (the checkpoint key) stating the restored size N, the lost positions [N, M), when,
        who and why. The chain goes on at N in a new epoch; ``verify`` reports the loss
        forever. A chain that does not verify is refused; so is one that no checkpoint of
        size <= N anchors, unless ``unanchored``."""
        reason = " ".join(reason.split())
        if not reason:
            raise UserError("the reason for the restore is empty",
                            'say why, e.g. --reason "disk failure, backup of 2 May restored"')
        store = self.audit.checkpoints
        store.key.require()         # never a new key: the checkpoints must keep verifying
        out: list[dict[str, Any]] = []
        with self.lv.begin() as conn:
            known = set(arepo.chains(conn)) | set(store.tenants())
            if tenant is not None and tenant not in known:
                raise NotFound(f"no audit chain {tenant}",
                               "give a laboratory id or _platform (`labvault audit verify` "
                               "lists the chains)")
            for chain in [tenant] if tenant is not None else sorted(known):
                out.append(self._acknowledge(conn, actor, chain, reason, unanchored))
        return {"ok": all(c["status"] in ("acknowledged", "not-behind") for c in out),
                "acknowledged": sum(c["status"] == "acknowledged" for c in out),
                "chains": out}

    def _acknowledge(self, conn: Connection, actor: Actor, chain: str, reason: str,
                     unanchored: bool) -> dict[str, Any]:
        store = self.audit.checkpoints
        head = arepo.head_for_update(conn, chain)     # no append meanwhile (row lock on PG)
        n = int(head["next_seq"]) if head else 0
        hist, _cps, _bad = store.read_history(chain)
        latest = hist.latest
        if latest is None or latest.tree_size <= n:
            r = self.verify_chain(conn, chain)
            if r.ok:
                return {"tenant": chain, "status": "not-behind", "next_seq": n,
                        "message": "not shorter than its latest signed checkpoint: nothing "
                                   "to acknowledge"}
            return {"tenant": chain, "status": "refused", "next_seq": n,
                    "problem": r.problem.as_json() if r.problem else None,
                    "message": "its head is not behind its signed checkpoints, so this is "
                               "no restore, and it does not verify: not acknowledged"}
        # everything must verify as if the restore were acknowledged: MACs, the head,
        # the roots of every checkpoint of the history up to N, and the subtrees below N
        # of the checkpoints beyond it (the restored chain is their prefix)
        r = self.verify_chain(conn, chain, restore_at=n)
        if r.ok and r.walker is not None and head is not None \
                and not self.audit.head_matches(conn, chain, head, r.walker):
            # a restore brings back a head consistent with its entries; rolling back
            # next_seq by hand after deleting rows does not
            r.fail(ch.Problem("head-mismatch", n, None,
                              "the chain head (last leaf hash, Merkle frontier or current "
                              f"key) is not that of the {n} entries stored: rolled back by "
                              "hand, not restored from a backup"))
        if not r.ok or r.walker is None or r.next_seq != n or r.history is None:
            return {"tenant": chain, "status": "refused", "next_seq": n,
                    "lost_to": latest.tree_size,
                    "problem": r.problem.as_json() if r.problem else None,
                    "message": "the restored chain is not a genuine prefix of its signed "
                               "history: not acknowledged (run `labvault audit verify`)"}
        anchor = max((c for c in r.history.lineage if 0 < c.tree_size <= n),
                     key=lambda c: (c.tree_size, c.epoch), default=None)
        if anchor is None and n > 0 and not unanchored:
            return {"tenant": chain, "status": "unanchored", "next_seq": n,
                    "lost_to": latest.tree_size,
                    "message": f"no signed checkpoint of {n} entries or fewer vouches for the "
                               "restored chain (its MACs verify, but whoever holds the key "
                               "provider could have rebuilt it): not acknowledged; "
                               "--unanchored acknowledges it anyway, and says so forever"}
        w = r.walker
        statement = {
            "lost_to": latest.tree_size,
            "superseded": {"tree_size": latest.tree_size, "root": latest.root.hex(),
                           "time": latest.time.isoformat(), "kind": latest.kind,
                           "epoch": latest.epoch},
            "anchor": None if anchor is None else {
                "tree_size": anchor.tree_size, "root": anchor.root.hex(),
                "time": anchor.time.isoformat(), "kind": anchor.kind, "epoch": anchor.epoch},
            "operator": actor.id, "reason": reason}
        record = store.write_restore(chain, n, w.root, w.prev, w.frontier, hist.epoch + 1,
                                     statement)
        if head is not None:    # the first entry of the new epoch says so (sealed reason)
            self.audit.event(conn, actor, "audit.restore-acknowledged", "success",
                             None if chain == PLATFORM else chain,
                             {"epoch": record.epoch, "tree_size": n,
                              "lost_from": n, "lost_to": latest.tree_size,
                              "anchored": anchor is not None,
                              "record": record.path.name if record.path else None,
                              "reason": reason})
        return {"tenant": chain, "status": "acknowledged", "epoch": record.epoch,
                "restored_size": n, "lost_from": n, "lost_to": latest.tree_size,
                "lost": latest.tree_size - n, "anchored": anchor is not None,
                "anchor": statement["anchor"], "record": str(record.path),
                "warning": restore_warning(record)}

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
        assert r.history is not None
        start = next((c for c in r.history.lineage
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
                anchor = self._anchor_at(conn, chain, r, upto)
                n = arepo.delete_below(conn, chain, upto)
                arepo.set_pruned_below(conn, chain, upto)
                pruned.append({"tenant": chain, "deleted": n, "pruned_below": upto,
                               "anchor": str(anchor.path)})
        return {"retention_days": days, "cutoff": cutoff.isoformat(), "pruned": pruned,
                "refused": refused}

    def _anchor_at(self, conn: Connection, chain: str, r: ChainReport, upto: int
                   ) -> Checkpoint:
        base = r.first_seq
        lineage = r.history.lineage if r.history is not None else ()
        start = next((c for c in lineage if c.kind == "prune-anchor" and c.tree_size == base),
                     None)
        w = ch.Walker(chain, ch.evolve_n(self.audit.k0(conn, chain), base), base,
                      start.last_leaf if start else ch.ZERO,
                      list(start.frontier) if start else [])
        for b in arepo.stream_rows(conn, chain, base, to_seq=upto):
            if not w.feed(b):
                raise UserError(f"chain {chain} does not verify before position {upto}",
                                "run `labvault audit verify` and investigate first")
        return self.audit.checkpoints.write(chain, upto, w.root, w.prev, w.frontier,
                                            kind="prune-anchor", epoch=r.epoch)
