"""``AuditLog``: the gate's audit hook, writing chained entries in the caller's transaction.

Append (per chain, serialised by the chain-head row):

1. take the chain head (cached in process; else ``SELECT … FOR UPDATE``);
2. build the entry bytes with the previous leaf hash, MAC them with the current key,
   evolve the key, push the leaf into the Merkle frontier;
3. ``UPDATE audit_heads … WHERE next_seq = expected`` (moves the head, or tells us another
   process did: then reload under lock and redo) and ``INSERT`` the entry.

Refusals (``denied``/``failure``) are written in the caller's transaction like the rest;
when that transaction rolls back — which is what a refusal usually causes — they are
written again in a transaction of their own (``tx_end``), so no refusal goes unrecorded.
Automatic checkpoints are signed only after the transaction that reached them commits.

Group commit of reads (``LABVAULT_AUDIT_READ_GROUP_MS`` > 0): an *allowed* read or search
that is not break-glass turns the reading transaction into a write just to record it,
which costs more than the read (a WAL commit). With grouping on, such entries are queued
when their transaction ends (committed or not: the data was opened either way) and
written by the process's audit writer in one transaction per batch — at most N ms later,
every ``GROUP_MAX`` entries, at shutdown and before any audit report or verification.
Everything else (writes, exports, erasures, refusals, break-glass, security events) stays
in the caller's transaction. The price is stated in docs/audit.md: a hard crash of the
process loses at most the last N ms of read entries.
"""

from __future__ import annotations

import atexit
import base64
import functools
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.engine import Connection

from labvault.audit import chain as ch
from labvault.audit.checkpoints import Checkpoint, CheckpointStore, History, SigningKey
from labvault.audit.entry import (
    PLATFORM,
    Draft,
    canonical,
    sorted_codes,
    split_detail,
)
from labvault.audit.reads import (
    CLIENT_RECORD,
    MAX_TEMPLATES,
    QueuedRead,
    Template,
    decision_body,
    json_values,
    make_template,
    sealed_client,
    shape,
)
from labvault.config import SETTINGS, Settings
from labvault.crypto import DataKey
from labvault.crypto.keys import ColumnSealer
from labvault.domain.actors import Actor
from labvault.domain.categories import Action
from labvault.errors import AuditChainBehind, KeyUnavailable
from labvault.store import repositories as repo
from labvault.store import repositories_audit as arepo
from labvault.store.ids import new_id
from labvault.store.tables_audit import audit_heads

if TYPE_CHECKING:
    from labvault.services.app import Labvault
    from labvault.services.gate import Access, Decision

log = logging.getLogger("labvault.audit")

K0_LABEL = "audit-chain/k0"
AUDIT_KEY_VERSION = 1       # k_0 always derives from version 1 of the tenant's audit key
RESCUED_OUTCOMES = frozenset({"denied", "failure"})
GROUPED_ACTIONS = frozenset({Action.READ, Action.SEARCH})
GROUP_MAX = 500             # a batch this large is written at once, by the thread that filled it
_new_read = tuple.__new__   # a QueuedRead without NamedTuple's Python-level __new__ (hot path)


def setting(settings: Settings, name: str) -> str:
    return settings.extra.get(name) or SETTINGS[name][0]


def signing_key_path(settings: Settings) -> Path:
    """Beside the root key file (never in the data directory nor the database)."""
    explicit = setting(settings, "LABVAULT_AUDIT_SIGNING_KEY")
    if explicit:
        return Path(explicit).expanduser().absolute()
    base = settings.key_file or settings.data_dir.with_name(settings.data_dir.name + ".key")
    return base.with_name(base.name + ".audit-signing")


@dataclass(slots=True)
class _Frame:
    # entries decided in this transaction, written together just before it commits
    # (``tx_flush``): one head move and one insert per chain instead of one per decision
    pending: list[Draft] = field(default_factory=list)
    rescue: list[Draft] = field(default_factory=list)
    chains: set[str] = field(default_factory=set)
    checkpoints: list[tuple[str, int, bytes, bytes, list[bytes]]] = field(default_factory=list)
    grouped: list[QueuedRead] = field(default_factory=list)

    def merge(self, child: _Frame) -> None:
        self.pending.extend(child.pending)
        self.rescue.extend(child.rescue)
        self.grouped.extend(child.grouped)
        self.chains |= child.chains
        self.checkpoints.extend(child.checkpoints)


class AuditLog:
    """Implements ``services.gate.AuditHook`` and ``services.app.TxObserver``."""

    def __init__(self, settings: Settings, clock: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self.clock = clock or (lambda: time.time_ns() // 1000)
        self.checkpoint_every = settings.whole_number("LABVAULT_AUDIT_CHECKPOINT_EVERY", 0)
        self.retention_days = settings.whole_number("LABVAULT_AUDIT_RETENTION_DAYS", 0)
        self.checkpoints = CheckpointStore(settings.data_dir / "checkpoints",
                                           SigningKey(signing_key_path(settings)),
                                           setting(settings, "LABVAULT_AUDIT_SYSLOG"))
        self._lv: Labvault | None = None
        self._heads: dict[str, ch.State] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._tenants: set[str] = set()
        self._audit_keys: dict[str, DataKey] = {}
        self._client_sealers: dict[str, ColumnSealer] = {}
        self._head_sealers: dict[str, ColumnSealer] = {}
        self.group_ms = settings.whole_number("LABVAULT_AUDIT_READ_GROUP_MS", 0)
        self._pending: list[QueuedRead] = []
        self._templates: dict[tuple[object, ...], Template | None] = {}
        self._pending_since = 0.0
        self._writer: threading.Thread | None = None
        self._flushing = threading.Lock()     # one opportunistic batch writer at a time
        self._wake = threading.Event()
        self._closing = False
        # tenants whose chain was checked (``check_head``) before queuing a read for it
        self._open_tenants: set[str | None] = set()

    # -- wiring ---------------------------------------------------------------------------
    def attach(self, lv: Labvault) -> AuditLog:
        self._lv = lv
        lv.gate.audit = self
        lv.tx_observers[:] = [o for o in lv.tx_observers if not isinstance(o, AuditLog)]
        lv.tx_observers.append(self)
        lv.close_hooks.append(self.close)
        return self

    @property
    def lv(self) -> Labvault:
        if self._lv is None:
            raise RuntimeError("AuditLog.attach(lv) was not called")
        return self._lv

    # -- AuditHook ------------------------------------------------------------------------
    def record(self, conn: Connection, access: Access, decision: Decision, outcome: str) -> None:
        if (outcome == "allowed" and self.group_ms > 0 and access.action in GROUPED_ACTIONS
                and not decision.break_glass):
            stack = getattr(self._local, "stack", None)
            if stack:       # queued when the transaction ends, rendered when written
                if access.tenant_id not in self._open_tenants:
                    self._admit(conn, access.tenant_id)
                stack[-1].grouped.append(_new_read(QueuedRead, (access, decision,
                                                                self.clock())))
                return
        # built here, in the request: a decision that cannot be recorded fails its request
        self._draft_and_append(conn, self._draft(access, decision, outcome, self.clock()))

    def _admit(self, conn: Connection, tenant_id: str | None) -> None:
        """A read is queued for a chain only once its head was checked: a chain behind
        its signed checkpoints refuses reads as it refuses everything else (the writer
        could not write their entries)."""
        chain = self._chain_of(conn, tenant_id)
        hist = self.checkpoints.current(chain)   # before the head (see ``_load``)
        row = arepo.head(conn, chain)   # not the cached head: other processes move it
        self.check_head(chain, int(row["next_seq"]) if row else 0,
                        ch.unpack_frontier(bytes(row["frontier"])) if row else [], hist)
        with self._lock:
            self._open_tenants.add(tenant_id)

    def _draft(self, access: Access, decision: Decision, outcome: str, at_us: int) -> Draft:
        body = decision_body(access, decision)
        private: dict[str, Any] = {}
        if decision.detail:
            clear, private = split_detail(decision.detail)
            if clear:
                body["detail"] = clear
        if access.reason:
            private["reason"] = access.reason
        return self._make_draft(access.actor, access.tenant_id, access.action.value, outcome,
                                body, access.patient_ids, private, at_us)

    def event(self, conn: Connection, actor: Actor, event: str, outcome: str,
              tenant_id: str | None, detail: Mapping[str, Any]) -> None:
        clear, private = split_detail(detail)
        pids = tuple(str(p) for p in ([detail["patient_id"]] if detail.get("patient_id") else [])
                     + list(detail.get("patient_ids") or ()))
        body: dict[str, Any] = {
            "v": 1, "event": True, "actor_kind": actor.kind, "roles": sorted_codes(actor.roles),
            "actor_tenant": actor.tenant_id, "resource": str(detail.get("resource", "security")),
            "patients": list(pids), "categories": [], "purpose": detail.get("purpose"),
            "rule": None, "request_id": actor.request_id, "session_id": actor.session_id,
            "tenant": tenant_id, "detail": clear,
        }
        self._draft_and_append(conn, self._make_draft(actor, tenant_id, event, outcome, body,
                                                      pids, private, self.clock()))

    @staticmethod
    def _make_draft(actor: Actor, tenant_id: str | None, action: str, outcome: str,
                    body: dict[str, Any], patient_ids: tuple[str, ...], private: dict[str, Any],
                    at_us: int) -> Draft:
        client = actor.client
        if sealed_client(client):
            private["client"] = client       # an address is personal data: sealed
            client = None
        body["client"] = client
        clean = ch.clean
        return Draft(tenant_id, at_us, clean(actor.id), clean(action), clean(outcome), body,
                     tuple([clean(p) for p in patient_ids]), private, new_id("ae"))

    def _draft_and_append(self, conn: Connection, draft: Draft) -> None:
        """Inside a ``lv.begin()`` transaction the entry is written with the others of the
        transaction just before it commits (``tx_flush``: it commits with the data or not
        at all, as before); outside one, now."""
        frame = self._frame()
        if frame is None:
            self._append(conn, draft)
            return
        frame.pending.append(draft)
        if draft.outcome in RESCUED_OUTCOMES:
            frame.rescue.append(draft)

    # -- append ---------------------------------------------------------------------------
    def _chain_of(self, conn: Connection, tenant_id: str | None) -> str:
        if tenant_id is None or tenant_id == PLATFORM:
            return PLATFORM
        if tenant_id in self._tenants:
            return tenant_id
        if repo.get_tenant(conn, tenant_id) is not None:
            self._tenants.add(tenant_id)
            return tenant_id
        return PLATFORM   # an unknown tenant id never creates a chain (nor keys)

    def _append(self, conn: Connection, d: Draft) -> tuple[str, int]:
        chain = self._chain_of(conn, d.tenant_id)
        return chain, self._append_chain(conn, chain, [d])

    def _append_reads(self, conn: Connection, reads: list[QueuedRead]) -> None:
        """Append a batch of queued reads: per chain, one head move and one insert."""
        chains: dict[str | None, str] = {}     # tenant -> chain, looked up once a batch
        by_chain: dict[str, list[QueuedRead]] = {}
        for r in reads:
            tenant_id = r.access.tenant_id
            chain = chains.get(tenant_id)
            if chain is None:
                chain = chains[tenant_id] = self._chain_of(conn, tenant_id)
            group = by_chain.get(chain)
            if group is None:
                group = by_chain[chain] = []
            group.append(r)         # in queue order within each chain
        for chain, group in by_chain.items():
            self._append_entries(conn, chain, functools.partial(self._render, conn, chain, group))

    def _append_chain(self, conn: Connection, chain: str, drafts: list[Draft]) -> int:
        """Append ``drafts`` in order to ``chain``; the sequence number of the first."""
        return self._append_entries(conn, chain, lambda: (
            [(d.entry_id, d.at_us, d.actor_id, d.patient_id, d.action, d.outcome, text)
             for d, text in zip(drafts, self._texts(conn, chain, drafts), strict=True)],
            [d.patient_ids for d in drafts]))

    def _append_entries(self, conn: Connection, chain: str,
                        make: Callable[[], tuple[list[ch.Entry], list[tuple[str, ...]]]]) -> int:
        """Append the entries ``make`` gives (called once the chain's keys exist) and their
        further patients; the sequence number of the first."""
        made: tuple[list[ch.Entry], list[tuple[str, ...]]] | None = None
        for _attempt in range(3):
            with self._lock:
                head = self._heads.get(chain)
            if head is None:
                head = self._load(conn, chain)
            if made is None:        # the chain's keys exist once its head does
                made = make()
            entries, pids = made
            first = head.next_seq
            rows, state, reached = ch.append_many(head, chain, entries, self.checkpoint_every)
            if arepo.advance_head_and_insert(   # Row's fields: the INSERT's column order
                    conn, chain, first, state.next_seq, state.prev,
                    self._seal_key(conn, chain, state.key), ch.pack_frontier(state.frontier),
                    _now(), rows):
                refs = [(chain, p, r.seq) for r, ps in zip(rows, pids, strict=True)
                        if len(ps) > 1 for p in dict.fromkeys(ps[1:]) if p != r.patient_id]
                if refs:
                    arepo.insert_refs(conn, refs)
                with self._lock:
                    self._heads[chain] = state
                frame = self._frame()
                if frame is not None:
                    frame.chains.add(chain)
                    frame.checkpoints.extend((chain, *r) for r in reached)
                return first
            with self._lock:      # another writer moved the head: reload under lock
                self._heads.pop(chain, None)
        raise RuntimeError(f"audit chain {chain}: could not append after 3 attempts")

    def _render(self, conn: Connection, chain: str, reads: list[QueuedRead]
                ) -> tuple[list[ch.Entry], list[tuple[str, ...]]]:
        """The entries of queued reads: each body from its shape's template, the client
        addresses sealed once per address for the batch (``reads.CLIENT_SEALED``), or
        through a ``Draft`` when a read has no template."""
        parts: list[tuple[str, int, str, str | None, str, Template | None, str, str,
                          str | None]] = []
        pids: list[tuple[str, ...]] = []
        addresses: dict[str, int] = {}          # address -> its index in the batch's seals
        templates = self._templates
        clean = ch.clean
        for access, decision, at_us in reads:
            key = shape(access, decision)
            try:
                t = templates[key]
            except KeyError:
                if len(templates) >= MAX_TEMPLATES:
                    templates.clear()
                t = templates[key] = make_template(access, decision)
            values = json_values(access) if t is not None else None
            patients = tuple([clean(p) for p in access.patient_ids])
            pids.append(patients)
            if t is None or values is None:
                d = self._draft(access, decision, "allowed", at_us)
                parts.append((d.entry_id, d.at_us, d.actor_id, d.patient_id, d.action, None,
                              self._texts(conn, chain, [d])[0], "", None))
                continue
            client = access.actor.client if t.sealed else None
            if client is not None and client not in addresses:
                addresses[client] = len(addresses)
            parts.append((new_id("ae"), at_us, t.actor_id, patients[0] if patients else None,
                          t.action, t, *values, client))
        sealed: list[str] = []
        if addresses:
            sealer = self._client_sealer(conn, chain)
            sealed = [base64.b64encode(b).decode() for b in sealer.seal_many(
                [(CLIENT_RECORD, canonical({"client": a}).encode()) for a in addresses])]
        return [(eid, at, actor, first, action, "allowed",
                 text if t is None else t.text(
                     text, rid, sealed[addresses[client]] if client is not None else None))
                for eid, at, actor, first, action, t, text, rid, client in parts], pids

    def _texts(self, conn: Connection, chain: str, drafts: list[Draft]) -> list[str]:
        """The body text of each draft, its private part sealed in. A client address alone
        (every request from the network) is sealed under the chain's cached ``data`` key,
        a batch's in one call; other private parts go through ``_seal_private``."""
        alone = [(d.entry_id, canonical(d.private).encode()) for d in drafts
                 if len(d.private) == 1 and "client" in d.private]
        sealed: dict[str, bytes] = {}
        if len(alone) == 1:
            sealed[alone[0][0]] = self._client_sealer(conn, chain).seal(*alone[0])
        elif alone:
            sealed = dict(zip([r for r, _ in alone],
                              self._client_sealer(conn, chain).seal_many(alone), strict=True))
        out = []
        for d in drafts:
            if d.private:
                s = sealed.get(d.entry_id)
                if s is None:
                    s = self._seal_private(conn, chain, d.entry_id, d.private)
                out.append(canonical({**d.body, "sealed": base64.b64encode(s).decode()}))
            else:
                out.append(canonical(d.body))
        return out

    # -- group commit of reads ---------------------------------------------------------------
    def _queue(self, reads: list[QueuedRead]) -> None:
        now = time.monotonic()
        with self._lock:
            pending = self._pending
            if not pending:
                self._pending_since = now
            pending.extend(reads)
            full = len(pending) >= GROUP_MAX
            due = (now - self._pending_since) * 1000 >= self.group_ms
        if self.lv.bound or self._closing:
            # a test-bound connection has no writer thread (one connection, one thread)
            self._flush_quietly()
            return
        if full or due:
            # a full or overdue batch is written by the thread that filled it, unless
            # another thread is writing one: many request threads flushing at once would
            # queue on the chain head (and the connection pool) instead of serving
            self._try_flush()
        if self._writer is None:
            self._start_writer()

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except AuditChainBehind as exc:     # until the restore is acknowledged
            log.error("could not write %d queued read audit entries: %s", self.pending(), exc)
        except Exception:   # the caller's work committed: don't fail it, retry later
            log.exception("could not write %d queued read audit entries", self.pending())

    def _try_flush(self) -> None:
        if not self._flushing.acquire(blocking=False):
            return
        try:
            self._flush_quietly()
        finally:
            self._flushing.release()

    def _start_writer(self) -> None:
        if self._writer is not None:
            return
        with self._lock:
            if self._writer is not None or self._closing:
                return
            self._writer = threading.Thread(target=self._write_loop, name="labvault-audit",
                                            daemon=True)
        atexit.register(self._at_exit)    # a door that never calls close() loses nothing
        self._writer.start()

    def _write_loop(self) -> None:
        while not self._closing:
            # group_ms may be set to 0 at run time (strict again): never spin on wait(0)
            delay = self._until_due()
            if delay > 0:
                self._wake.wait(delay)
                self._wake.clear()
                continue
            self._try_flush()
            if self._until_due() == 0:
                # still due: the write failed (kept pending) or another thread is writing;
                # retry a tick later, never spin
                self._wake.wait(self.group_ms / 1000 if self.group_ms > 0 else 1.0)
                self._wake.clear()

    def _until_due(self) -> float:
        """Seconds until the oldest queued entry is ``group_ms`` old (0: write now). The
        writer sleeps until then rather than on a fixed tick: the same bound on the delay,
        one batch per ``group_ms`` instead of a partial one whenever the tick falls."""
        if self.group_ms <= 0:
            return 1.0 if not self.pending() else 0.0
        with self._lock:
            if not self._pending:
                return self.group_ms / 1000
            return max(0.0, self._pending_since + self.group_ms / 1000 - time.monotonic())

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write the queued read entries now; how many. On failure they stay queued."""
        with self._lock:
            reads, self._pending = self._pending, []
        if not reads:
            return 0
        try:
            with self.lv.begin() as conn:
                self._append_reads(conn, reads)
        except BaseException:
            with self._lock:
                self._pending[:0] = reads
            raise
        return len(reads)

    def _at_exit(self) -> None:
        try:
            self.close()
        except Exception:
            log.exception("at exit: %d queued read audit entries could not be written",
                          self.pending())

    def close(self) -> None:
        """Stop the writer and write what is queued (``Labvault.close``)."""
        self._closing = True
        self._wake.set()
        writer, self._writer = self._writer, None
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=10)
        if self._lv is not None:
            self.flush()

    def _seal_private(self, conn: Connection, chain: str, entry_id: str,
                      private: dict[str, Any]) -> bytes:
        """Seal the private part of an entry under the chain's ``data`` key.

        Free text (reasons, messages, any non-code detail) goes through
        ``gate.seal_tenant_value``. A client address alone — on every request from the
        network — is sealed with the same key, cached per chain, to keep the append cheap;
        both open with ``gate.open_tenant_value_checked``."""
        plaintext = canonical(private).encode()
        if set(private) == {"client"}:
            return self._client_sealer(conn, chain).seal(entry_id, plaintext)
        return self.lv.gate.seal_tenant_value(conn, chain, "audit_entries", "body", entry_id,
                                              plaintext)

    def _client_sealer(self, conn: Connection, chain: str) -> ColumnSealer:
        """Seals entry bodies' private parts under the chain's current ``data`` key
        (cached per chain, like the key itself)."""
        sealer = self._client_sealers.get(chain)
        if sealer is None:
            self.lv.load_tenant_keys(conn, chain)
            version = repo.current_key_version(conn, chain, "data")
            if version is None:
                raise KeyUnavailable(f"tenant {chain} has no data key",
                                     "run `labvault keys rotate` to create one")
            key = self.lv.keyring.tenant_data_key(chain, "data", version)
            sealer = self._client_sealers[chain] = key.column(chain, "audit_entries", "body")
        return sealer

    def _audit_key(self, conn: Connection, chain: str) -> DataKey:
        key = self._audit_keys.get(chain)
        if key is None:
            self._ensure_keys(conn, chain)
            key = self.lv.keyring.tenant_data_key(chain, "audit", AUDIT_KEY_VERSION)
            self._audit_keys[chain] = key
        return key

    def _seal_key(self, conn: Connection, chain: str, key: bytes) -> bytes:
        """``seal(SealContext(chain, "audit_heads", "key_sealed", chain), key)``."""
        sealer = self._head_sealers.get(chain)
        if sealer is None:
            sealer = self._head_sealers[chain] = self._audit_key(conn, chain).column(
                chain, "audit_heads", "key_sealed")
        return sealer.seal(chain, key)

    def _ensure_keys(self, conn: Connection, chain: str) -> None:
        """The chain's audit key (and, for the platform chain, a data key for sealed
        detail) exist and are loaded. Called with the chain head locked."""
        lv = self.lv
        records = repo.tenant_key_records(conn, chain)
        have = {r.purpose for r in records}
        wanted = ("audit", "data") if chain == PLATFORM else ("audit",)
        for purpose in wanted:
            if purpose not in have:
                lv.keyring.forget(chain, purpose)
                repo.insert_tenant_key(conn, lv.keyring.new_tenant_key(chain, purpose, 1))
        for rec in repo.tenant_key_records(conn, chain):
            lv.keyring.load(rec)

    def k0(self, conn: Connection, chain: str) -> bytes:
        """The chain's first MAC key, derived from the tenant's audit key (key provider)."""
        if not any(r.purpose == "audit" for r in repo.tenant_key_records(conn, chain)):
            raise KeyUnavailable(f"chain {chain} has no audit key",
                                 "it is created with the chain's first entry")
        for rec in repo.tenant_key_records(conn, chain):
            self.lv.keyring.load(rec)
        return self.lv.keyring.tenant_secret(chain, "audit", AUDIT_KEY_VERSION, K0_LABEL)

    def _load(self, conn: Connection, chain: str) -> ch.State:
        # the checkpoints before the head: each is written after its entries commit, so
        # none read now can be ahead of the head read next unless the chain was rolled back
        hist = self.checkpoints.current(chain)
        row = arepo.head_for_update(conn, chain)
        if row is None:
            arepo.create_head(conn, chain, b"", _now())
            row = arepo.head_for_update(conn, chain)
            assert row is not None
        if not row["key_sealed"]:   # a new chain; we hold its head
            self._ensure_keys(conn, chain)
            key = self.k0(conn, chain)
            conn.execute(update(audit_heads).where(audit_heads.c.tenant_id == chain)
                         .values(key_sealed=self._seal_key(conn, chain, key)))
        else:
            self._ensure_keys(conn, chain)
            key = self.lv.gate.open_tenant_value_checked(
                conn, chain, "audit_heads", "key_sealed", chain, row["key_sealed"],
                purpose="audit")
        head = ch.State(int(row["next_seq"]), bytes(row["last_hash"]), key,
                     ch.unpack_frontier(bytes(row["frontier"])))
        self.check_head(chain, head.next_seq, head.frontier, hist)
        with self._lock:
            self._heads[chain] = head
        return head

    def check_head(self, chain: str, next_seq: int, frontier: list[bytes],
                   hist: History | None = None) -> None:
        """Before appending to a chain: its head must not be behind, nor contradict, the
        latest signed checkpoint of its history. A head behind it means the database was
        rolled back (a restore from a backup, or a truncation): the next entries would
        reuse lost positions, and verification would blame them. Refused (fail closed)
        until the operator acknowledges the restore, which opens a new epoch at the
        restored size (``AuditOps.acknowledge_restore``). ``hist``: the chain's history
        as read *before* the head."""
        if hist is None:
            hist = self.checkpoints.current(chain)
        latest = hist.latest
        what = "the platform" if chain == PLATFORM else f"laboratory {chain}"
        verify = f"`labvault audit verify --tenant {chain}`"
        if hist.problems:
            self._refused()
            raise AuditChainBehind(
                f"the signed checkpoint history of audit chain {chain} is inconsistent "
                f"({hist.problems[0][1]}): audited actions on {what} are refused",
                f"run {verify} and investigate; put the missing record back from its copy "
                "(syslog)")
        if latest is None:
            return
        if latest.tree_size > next_seq:
            self._refused()
            raise AuditChainBehind(
                f"the audit trail of {what} ends at entry {next_seq}, but {latest.describe()} "
                f"covers {latest.tree_size} entries: the database was restored from a backup "
                "(or truncated). Audited actions on it are refused, so that no new entry "
                "reuses a lost position",
                f"check with {verify}; if this is a restore, the operator acknowledges it "
                f"with `labvault audit acknowledge-restore --tenant {chain} --reason "
                '"..."` (or --all)')
        # the perfect subtrees both frontiers share (all of them at the same size) agree
        common = 0
        for a, b in zip(ch.frontier_ranges(latest.tree_size), ch.frontier_ranges(next_seq),
                        strict=False):
            if a != b:
                break
            common += 1
        if (len(latest.frontier) < common or len(frontier) < common
                or list(latest.frontier[:common]) != frontier[:common]):
            self._refused()
            raise AuditChainBehind(
                f"the audit chain head of {what} contradicts {latest.describe()} "
                f"({latest.tree_size} entries): its history was rewritten. Audited actions "
                "on it are refused",
                f"run {verify} and investigate; restore the database from a backup and "
                "acknowledge the restore")

    def _refused(self) -> None:
        with self._lock:
            self._open_tenants.clear()      # queued reads are admitted afresh

    def head_matches(self, conn: Connection, chain: str, row: Mapping[str, Any],
                     walker: ch.Walker) -> bool:
        """Is the stored head ``row`` exactly the state after the entries ``walker`` read:
        position, last leaf hash, Merkle frontier and (sealed) current key?"""
        if int(row["next_seq"]) != walker.next_seq or bytes(row["last_hash"]) != walker.prev \
                or ch.unpack_frontier(bytes(row["frontier"])) != walker.frontier:
            return False
        if not row["key_sealed"]:
            return False
        self._ensure_keys(conn, chain)
        key = self.lv.gate.open_tenant_value_checked(
            conn, chain, "audit_heads", "key_sealed", chain, row["key_sealed"],
            purpose="audit")
        return hmac.compare_digest(key, walker.key)

    def current_key(self, conn: Connection, chain: str) -> bytes:
        """The chain's current MAC key as stored in its head (for tests and forensics:
        this is what an intruder on the running system would hold)."""
        with self._lock:
            self._heads.pop(chain, None)
        return self._load(conn, chain).key

    def forget_cache(self) -> None:
        with self._lock:
            self._heads.clear()

    # -- transactions (TxObserver) ---------------------------------------------------------
    def _stack(self) -> list[_Frame]:
        stack: list[_Frame] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = []
            self._local.stack = stack
        return stack

    def _frame(self) -> _Frame | None:
        stack = self._stack()
        return stack[-1] if stack else None

    def tx_begin(self) -> None:
        self._stack().append(_Frame())

    def tx_flush(self, conn: Connection) -> None:
        """Write the transaction's entries (called by ``lv.begin`` before it commits): per
        chain, in decision order, one head move and one insert."""
        frame = self._frame()
        if frame is None or not frame.pending:
            return
        pending, frame.pending = frame.pending, []
        self._append_drafts(conn, pending)

    def _append_drafts(self, conn: Connection, drafts: list[Draft]) -> None:
        by_chain: dict[str, list[Draft]] = {}
        for d in drafts:
            by_chain.setdefault(self._chain_of(conn, d.tenant_id), []).append(d)
        for chain, group in by_chain.items():
            self._append_chain(conn, chain, group)

    def tx_end(self, lv: Labvault, committed: bool, savepoint: bool) -> None:
        stack = self._stack()
        if not stack:
            return
        frame = stack.pop()
        if frame.grouped:
            if savepoint and stack:
                stack[-1].grouped.extend(frame.grouped)
            else:       # committed or not: the data was opened
                self._queue(frame.grouped)
            frame.grouped = []
        if committed:
            if savepoint and stack:
                stack[-1].merge(frame)      # not durable until the enclosing one commits
                return
            for cp in frame.checkpoints:
                self._auto_checkpoint(*cp)
            if frame.pending:   # not flushed (a transaction not ended by lv.begin): now
                log.error("%d audit entries were not written with their transaction; "
                          "writing them now", len(frame.pending))
                with lv.begin() as conn:
                    self._append_drafts(conn, frame.pending)
            return
        with self._lock:
            for chain in frame.chains:
                self._heads.pop(chain, None)
        if frame.rescue and not getattr(self._local, "rescuing", False):
            self._local.rescuing = True
            try:
                with lv.begin() as conn:
                    for draft in frame.rescue:
                        self._append(conn, draft)
                        top = self._frame()
                        if top is not None:
                            top.rescue.append(draft)
            except AuditChainBehind as exc:     # said plainly, without a traceback
                log.error("could not write %d refusal audit entries after a rollback: %s",
                          len(frame.rescue), exc)
            except Exception:
                log.exception("could not write %d refusal audit entries after a rollback",
                              len(frame.rescue))
            finally:
                self._local.rescuing = False

    def _auto_checkpoint(self, chain: str, size: int, root: bytes, leaf: bytes,
                         frontier: list[bytes]) -> None:
        try:
            self.checkpoints.write(chain, size, root, leaf, frontier)
        except Exception:  # a checkpoint failure must not fail the request that reached it
            log.exception("automatic audit checkpoint of chain %s at %d failed", chain, size)

    # -- reading helpers for the other audit modules ----------------------------------------
    def open_private(self, conn: Connection, chain: str, entry_id: str,
                     sealed: bytes) -> dict[str, Any]:
        """Open an entry's sealed part; the caller has passed the gate for it."""
        raw = self.lv.gate.open_tenant_value_checked(conn, chain, "audit_entries", "body",
                                                     entry_id, sealed)
        out: dict[str, Any] = json.loads(raw)
        return out

    def open_client(self, conn: Connection, chain: str, sealed: bytes) -> str | None:
        """Open a queued read's ``client_sealed`` address; the caller passed the gate."""
        raw = self.lv.gate.open_tenant_value_checked(conn, chain, "audit_entries", "body",
                                                     CLIENT_RECORD, sealed)
        client = json.loads(raw).get("client")
        return client if isinstance(client, str) else None

    def latest_checkpoint(self, chain: str) -> Checkpoint | None:
        """The latest checkpoint of the chain's history (since its last restore)."""
        return self.checkpoints.read_history(chain)[0].latest


def _now() -> datetime:
    return datetime.now(UTC)
