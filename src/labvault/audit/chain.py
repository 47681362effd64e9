"""The tamper-evident chain: pure functions, no I/O (docs/audit.md has the exact scheme).

Per chain (one per tenant, plus ``_platform`` for platform-level events):

- entry bytes   ``c_i = u32(len(P_i)) || P_i || prev_i || body_i`` where ``P_i`` is the
  0x1F-joined clear columns (chain, seq, entry id, time µs, actor id, patient id, action,
  outcome), ``prev_i`` the leaf hash of entry ``i-1`` (32 zero bytes for ``i = 0``) and
  ``body_i`` the canonical JSON of every other field;
- leaf hash     ``h_i = SHA-256(0x00 || c_i)`` (RFC 6962 leaf), chained through ``prev``;
- MAC           ``m_i = HMAC-SHA256(k_i, h_i)`` (hash-then-MAC: the MAC binds every byte
  of ``c_i`` through its leaf hash);
- key evolution ``k_{i+1} = HMAC-SHA256(k_i, "evolve")``: one-way, so whoever holds
  ``k_n`` cannot compute the key of any earlier entry;
- Merkle tree   RFC 6962 over the leaves, node ``SHA-256(0x01 || l || r)``; kept as a
  *frontier* (the roots of the perfect subtrees for the set bits of the size).

The verifier derives ``k_0`` from the tenant's audit key (through the key provider) and
walks the chain; the first entry that does not verify is the location of the tampering.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from labvault.crypto.digests import hmac_sha256, native_chain_append, sha256

ZERO = bytes(32)
EVOLVE = b"evolve"
SEP = "\x1f"
PREFIX_FIELDS = 8
MAGIC = b"LVA1"


def evolve(key: bytes) -> bytes:
    return hmac_sha256(key, EVOLVE)


def evolve_n(key: bytes, n: int) -> bytes:
    """``k_n`` from ``k_0`` (n HMACs)."""
    for _ in range(n):
        key = fast_hmac(key, EVOLVE)
    return key


def clean(value: str) -> str:
    """Clear-column values never contain the separator (so the prefix is unambiguous)."""
    return value.replace(SEP, "?")


def prefix(chain: str, seq: int, entry_id: str, at_us: int, actor_id: str,
           patient_id: str | None, action: str, outcome: str) -> bytes:
    return SEP.join((chain, str(seq), entry_id, str(at_us), actor_id, patient_id or "",
                     action, outcome)).encode()


def entry_bytes(pfx: bytes, prev: bytes, body: str) -> bytes:
    return MAGIC + len(pfx).to_bytes(4, "big") + pfx + prev + body.encode()


def leaf_hash(c: bytes) -> bytes:
    return sha256(b"\x00" + c)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def mac(key: bytes, leaf: bytes) -> bytes:
    return hmac_sha256(key, leaf)


# HMAC-SHA256 (RFC 2104) spelt out with hashlib for the verification loop: the same
# function as ``crypto.digests.hmac_sha256`` (a test checks it) at ~2/3 of the cost of
# ``hmac.digest`` for 32-byte keys and short messages, which is what verifying a million
# entries spends most of its time on.
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_KEY_PAD = bytes(32)


def fast_hmac(key: bytes, message: bytes) -> bytes:
    k = key + _KEY_PAD          # keys are 32 bytes: pad to the 64-byte SHA-256 block
    return hashlib.sha256(k.translate(_OPAD)
                          + hashlib.sha256(k.translate(_IPAD) + message).digest()).digest()


# -- Merkle frontier (compact range of [0, size)) -------------------------------------------
def frontier_push(frontier: list[bytes], size: int, leaf: bytes) -> None:
    """Add leaf number ``size`` (0-based) to the frontier of ``[0, size)``, in place."""
    h = leaf
    n = size
    while n & 1:
        h = node_hash(frontier.pop(), h)
        n >>= 1
    frontier.append(h)


def frontier_root(frontier: Sequence[bytes]) -> bytes:
    """RFC 6962 MTH of the range the frontier describes (SHA-256 of "" when empty)."""
    if not frontier:
        return sha256(b"")
    h = frontier[-1]
    for left in reversed(frontier[:-1]):
        h = node_hash(left, h)
    return h


def frontier_ranges(size: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of the perfect subtrees in the frontier of ``size``."""
    out: list[tuple[int, int]] = []
    start = 0
    for bit in range(size.bit_length() - 1, -1, -1):
        if size >> bit & 1:
            out.append((start, start + (1 << bit)))
            start += 1 << bit
    return out


def pack_frontier(frontier: Sequence[bytes]) -> bytes:
    return b"".join(frontier)


def unpack_frontier(blob: bytes) -> list[bytes]:
    return [blob[i:i + 32] for i in range(0, len(blob), 32)]


# -- RFC 6962 inclusion proofs ---------------------------------------------------------------
class Tree:
    """Leaves ``[base, size)`` plus the frontier of ``[0, base)`` (after pruning)."""

    def __init__(self, leaves: Sequence[bytes], base: int = 0,
                 base_frontier: Sequence[bytes] = ()) -> None:
        self.leaves = leaves
        self.base = base
        self.size = base + len(leaves)
        self.known = dict(zip(frontier_ranges(base), base_frontier, strict=True))

    def mth(self, a: int, b: int) -> bytes:
        if (a, b) in self.known:
            return self.known[(a, b)]
        n = b - a
        if n == 0:
            return sha256(b"")
        if n == 1:
            if a < self.base:
                raise ValueError(f"leaf {a} was pruned")
            return self.leaves[a - self.base]
        k = 1 << ((n - 1).bit_length() - 1)
        return node_hash(self.mth(a, a + k), self.mth(a + k, b))

    def path(self, m: int, a: int = 0, b: int | None = None) -> list[bytes]:
        """RFC 6962 PATH(m, D[a:b]), leaf-to-root order."""
        b = self.size if b is None else b
        n = b - a
        if n <= 1:
            return []
        k = 1 << ((n - 1).bit_length() - 1)
        if m < k:
            return [*self.path(m, a, a + k), self.mth(a + k, b)]
        return [*self.path(m - k, a + k, b), self.mth(a, a + k)]


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes],
                     root: bytes) -> bool:
    """RFC 9162 §2.1.3.2 inclusion-proof verification."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)


# -- appending -----------------------------------------------------------------------------
@dataclass(slots=True)
class State:
    """A chain head: next position, previous leaf hash, current key, Merkle frontier."""

    next_seq: int
    prev: bytes
    key: bytes
    frontier: list[bytes]

    @staticmethod
    def genesis(k0: bytes) -> State:
        return State(0, ZERO, k0, [])


def append(state: State, chain: str, entry_id: str, at_us: int, actor_id: str,
           patient_id: str | None, action: str, outcome: str, body: str) -> tuple[Row, State]:
    """The row for the next entry and the head after it (``state`` is not modified)."""
    rows, after, _ = append_many(state, chain, ((entry_id, at_us, actor_id, patient_id, action,
                                                 outcome, body),))
    return rows[0], after


Reached = tuple[int, bytes, bytes, list[bytes]]    # (tree size, root, last leaf, frontier)
# (entry id, time µs, actor id, patient id, action, outcome, body): what an entry adds
Entry = tuple[str, int, str, str | None, str, str, str]


def append_many(state: State, chain: str, entries: Iterable[Entry],
                checkpoint_every: int = 0) -> tuple[list[Row], State, list[Reached]]:
    """The rows for the next entries ``(entry_id, at_us, actor_id, patient_id, action,
    outcome, body)`` in order, the head after them, and the checkpoints reached (every
    ``checkpoint_every`` entries). ``state`` is not modified.

    Exactly ``append`` applied once per entry — leaf, MAC under ``k_i``, ``k_{i+1}``,
    frontier — with the per-entry work a batch can share hoisted out of the loop: one
    frontier copy, HMAC-SHA256 spelt out with hashlib (``fast_hmac``) with each key's pads
    computed once for its MAC and its evolution. The native loop (``crypto/_native.c``)
    does the same in C when it was built; ``append_many_python`` is the reference (tests
    compare the two)."""
    if native_chain_append is not None:
        entries = entries if isinstance(entries, list | tuple) else list(entries)
        rows, seq, prev, key, frontier, reached = native_chain_append(
            Row, chain, state.next_seq, state.prev, state.key, list(state.frontier), entries,
            checkpoint_every)
        return rows, State(seq, prev, key, frontier), reached
    return append_many_python(state, chain, entries, checkpoint_every)


def append_many_python(state: State, chain: str, entries: Iterable[Entry],
                       checkpoint_every: int = 0) -> tuple[list[Row], State, list[Reached]]:
    """``append_many`` in Python: the reference, and the fallback without the native loop."""
    sha = hashlib.sha256
    ipad, opad, kpad = _IPAD, _OPAD, _KEY_PAD
    seq, prev, key = state.next_seq, state.prev, state.key
    frontier = list(state.frontier)
    rows: list[Row] = []
    reached: list[Reached] = []
    new_row = tuple.__new__
    for entry_id, at_us, actor_id, patient_id, action, outcome, body in entries:
        pfx = SEP.join((chain, str(seq), entry_id, str(at_us), actor_id, patient_id or "",
                        action, outcome)).encode()
        leaf = sha(b"\x00" + MAGIC + len(pfx).to_bytes(4, "big") + pfx + prev
                   + body.encode()).digest()
        k = key + kpad
        ki, ko = k.translate(ipad), k.translate(opad)
        rows.append(new_row(Row, (chain, seq, entry_id, at_us, actor_id, patient_id, action,
                                  outcome, body, sha(ko + sha(ki + leaf).digest()).digest())))
        key = sha(ko + sha(ki + EVOLVE).digest()).digest()
        h, m = leaf, seq           # frontier_push, inlined
        while m & 1:
            h = sha(b"\x01" + frontier.pop() + h).digest()
            m >>= 1
        frontier.append(h)
        prev = leaf
        seq += 1
        if checkpoint_every > 0 and seq % checkpoint_every == 0:
            reached.append((seq, frontier_root(frontier), leaf, list(frontier)))
    return rows, State(seq, prev, key, frontier), reached


# -- verification --------------------------------------------------------------------------
class Row(NamedTuple):
    """One stored entry as the verifier sees it (the clear columns, body and MAC)."""

    chain: str
    seq: int
    entry_id: str
    at_us: int
    actor_id: str
    patient_id: str | None
    action: str
    outcome: str
    body: str
    mac: bytes


@dataclass(slots=True)
class Problem:
    kind: str          # mac-mismatch | missing | unexpected-sequence | foreign-chain |
    #                    truncated | root-mismatch | head-mismatch | malformed
    seq: int           # the chain position where the history stops being authentic
    entry_id: str | None
    message: str

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "seq": self.seq, "entry_id": self.entry_id,
                "message": self.message}


@dataclass(slots=True)
class Walker:
    """Streams a chain's rows in ``seq`` order and stops at the first inauthentic one."""

    chain: str
    key: bytes                       # k_{next}
    next_seq: int = 0
    prev: bytes = ZERO
    frontier: list[bytes] = field(default_factory=list)
    problem: Problem | None = None
    last_entry_id: str | None = None
    checked: int = 0
    keep_leaves: list[bytes] | None = None

    def feed(self, rows: Iterable[Row]) -> bool:
        """Returns False once a problem is found (further rows are ignored)."""
        if self.problem is not None:
            return False
        sha = hashlib.sha256
        compare = hmac.compare_digest
        ipad, opad, kpad = _IPAD, _OPAD, _KEY_PAD
        key, seq, prev, chain = self.key, self.next_seq, self.prev, self.chain
        frontier = self.frontier
        leaves = self.keep_leaves
        n = 0
        try:
            for chain_, rseq, eid, at_us, actor_id, pid, action, outcome, body, rmac in rows:
                if rseq != seq:
                    if rseq > seq:
                        self.problem = Problem(
                            "missing", seq, eid,
                            f"entries {seq}..{rseq - 1} are missing before entry {eid}"
                            if rseq - 1 > seq else
                            f"entry {seq} is missing before entry {eid}")
                    else:
                        self.problem = Problem("unexpected-sequence", seq, eid,
                                               f"entry {eid} claims position {rseq} "
                                               f"where {seq} was expected")
                    return False
                if chain_ != chain:
                    self.problem = Problem("foreign-chain", seq, eid,
                                           f"entry {eid} belongs to chain {chain_}")
                    return False
                s = SEP.join((chain_, str(rseq), eid, str(at_us), actor_id, pid or "",
                              action, outcome))
                if s.count(SEP) != PREFIX_FIELDS - 1:
                    self.problem = Problem("malformed", seq, eid,
                                           f"entry {eid} has a separator inside a column")
                    return False
                pfx = s.encode()
                leaf = sha(b"\x00" + MAGIC + len(pfx).to_bytes(4, "big") + pfx + prev
                           + body.encode()).digest()
                k = key + kpad
                ki, ko = k.translate(ipad), k.translate(opad)
                if not compare(sha(ko + sha(ki + leaf).digest()).digest(), rmac):
                    self.problem = Problem("mac-mismatch", seq, eid,
                                           f"entry {eid} at position {seq} was modified, "
                                           "forged, moved or replayed from elsewhere")
                    return False
                h = leaf
                m = seq  # frontier_push, inlined (hot loop)
                while m & 1:
                    h = sha(b"\x01" + frontier.pop() + h).digest()
                    m >>= 1
                frontier.append(h)
                if leaves is not None:
                    leaves.append(leaf)
                prev = leaf
                key = sha(ko + sha(ki + EVOLVE).digest()).digest()
                seq += 1
                n += 1
                self.last_entry_id = eid
        finally:
            self.key, self.next_seq, self.prev = key, seq, prev
            self.checked += n
        return True

    @property
    def root(self) -> bytes:
        return frontier_root(self.frontier)
