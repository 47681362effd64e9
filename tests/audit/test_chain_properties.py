"""Tamper evidence as a property: every single tampering of a random history is detected
and located at the entry where the history stops being authentic (in-memory chains,
same appender and verifier code as the database path)."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labvault.audit import chain as ch
from labvault.audit.checkpoints import Checkpoint
from labvault.audit.ops import walk_rows

TAMPERINGS = ("edit", "delete", "insert", "swap", "truncate", "replay")
FIELDS = ("seq", "chain", "entry_id", "at_us", "actor_id", "patient_id", "action", "outcome",
          "body", "mac")


def build(chain: str, k0: bytes, n: int, rng: random.Random,
          states: list[ch.State] | None = None) -> tuple[list[ch.Row], ch.State]:
    state = ch.State.genesis(k0)
    rows = []
    for i in range(n):
        row, state = ch.append(
            state, chain, f"ae_{rng.getrandbits(64):016x}", 1_700_000_000_000_000 + i * 1000,
            rng.choice(["acct_a", "acct_b", "os:op@host"]),
            rng.choice([None, "pt_1", "pt_2", "pt_3"]), rng.choice(["read", "search", "write"]),
            rng.choice(["allowed", "denied"]),
            f'{{"purpose":"{rng.choice(["care", "audit"])}","n":{rng.randint(0, 9)}}}')
        rows.append(row)
        if states is not None:
            states.append(state)
    return rows, state


def checkpoint_of(chain: str, state: ch.State) -> Checkpoint:
    return Checkpoint(chain, state.next_seq, ch.frontier_root(state.frontier), state.prev,
                      tuple(state.frontier), datetime.now(UTC), "checkpoint", "test", b"")


def mutate(row: ch.Row, field: str, rng: random.Random) -> ch.Row:
    v = getattr(row, field)
    if field == "seq":
        new: object = v + rng.choice([-1, 1, 2]) if v > 0 else v + rng.choice([1, 2])
    elif field == "at_us":
        new = v + rng.choice([-1, 1, 3_600_000_000])
    elif field == "mac":
        b = bytearray(v)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        new = bytes(b)
    elif field == "patient_id":
        new = "pt_9" if v != "pt_9" else None
    elif field == "body":
        new = v.replace('"n":', '"n":1') if rng.random() < 0.5 else v + " "
    elif field == "chain":
        new = v + "x"
    else:
        new = v + "x" if rng.random() < 0.5 else v[:-1]
    return row._replace(**{field: new})


def tamper(kind: str, rows: list[ch.Row], other: list[ch.Row], chain: str,
           rng: random.Random, current_key: bytes) -> tuple[list[ch.Row], int]:
    """Apply one tampering; return the new rows (in the order a database gives them: by seq)
    and the position where verification must stop."""
    n = len(rows)
    out = list(rows)
    if kind == "edit":
        j = rng.randrange(n)
        out[j] = mutate(out[j], rng.choice(FIELDS), rng)
        return out, j
    if kind == "delete":
        j = rng.randrange(n)
        del out[j]
        if rng.random() < 0.5:      # the intruder renumbers what follows to hide the gap
            out[j:] = [r._replace(seq=r.seq - 1) for r in out[j:]]
        return out, j
    if kind == "insert":
        j = rng.randrange(n + 1)
        # forged inside the history with the best keys an intruder can have: the current one
        # or one evolved from it. (Appending *after* the newest entry with the current key is
        # what the application itself does: the documented limit of any MAC chain; an append
        # forged without it is detected.)
        choices = [current_key, ch.evolve(current_key)] if j < n else [rng.randbytes(32)]
        key = rng.choice(choices)
        state = ch.State(j, _prev(rows, j), key, [ch.ZERO] * j.bit_count())
        forged, _ = ch.append(state, chain, "ae_forged", rows[min(j, n - 1)].at_us, "acct_x",
                              "pt_1", "read", "allowed", '{"purpose":"care"}')
        tail = [r._replace(seq=r.seq + 1) for r in out[j:]]
        return [*out[:j], forged, *tail], j
    if kind == "swap":
        j, k = sorted(rng.sample(range(n), 2))
        a, b = out[j], out[k]
        out[j], out[k] = b._replace(seq=a.seq), a._replace(seq=b.seq)
        return out, j
    if kind == "truncate":
        j = rng.randrange(n)
        return out[:j], j
    # replay another tenant's entry here (as a replacement or an insertion)
    j = rng.randrange(n)
    foreign = rng.choice(other)._replace(chain=chain, seq=j)
    if rng.random() < 0.5:
        out[j] = foreign
    else:
        out = [*out[:j], foreign, *[r._replace(seq=r.seq + 1) for r in out[j:]]]
    return out, j


N_CASES = int(os.environ.get("LABVAULT_AUDIT_PROPERTY_CASES", "1200"))


@settings(max_examples=N_CASES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 40), kind=st.sampled_from(TAMPERINGS), seed=st.integers(0, 2**32))
def test_every_tampering_is_detected_and_located(n: int, kind: str, seed: int) -> None:
    rng = random.Random(seed)
    k0a, k0b = rng.randbytes(32), rng.randbytes(32)
    rows, state = build("lab_a", k0a, n, rng)
    other, _ = build("lab_b", k0b, rng.randint(1, 10), rng)
    # a checkpoint outside the database covers the history (truncation is seen against it)
    cps = [checkpoint_of("lab_a", state)]
    clean = walk_rows("lab_a", k0a, rows, cps)
    assert clean.ok and clean.next_seq == n
    tampered, where = tamper(kind, rows, other, "lab_a", rng, state.key)
    if tampered == rows:   # the mutation happened to be a no-op (cannot occur, but be exact)
        return
    report = walk_rows("lab_a", k0a, tampered, cps)
    assert not report.ok, f"{kind} not detected"
    assert report.problem is not None
    assert report.problem.seq == where, (kind, report.problem, where)


def test_intact_history_verifies_with_intermediate_checkpoints() -> None:
    rng = random.Random(5)
    k0 = rng.randbytes(32)
    states: list[ch.State] = []
    rows, state = build("lab_a", k0, 100, rng, states)
    cps = [checkpoint_of("lab_a", s) for s in states if s.next_seq % 7 == 0]
    report = walk_rows("lab_a", k0, rows, cps)
    assert report.ok and report.checkpoints_checked == len(cps) == 14
    assert report.walker is not None and report.walker.root == ch.frontier_root(state.frontier)
    # the root of every prefix is the RFC 6962 root recomputed from the leaves
    leaves = [_leaf(rows, i) for i in range(100)]
    for s in states[::13]:
        assert ch.frontier_root(s.frontier) == ch.Tree(leaves[:s.next_seq]).mth(0, s.next_seq)


def _leaf(rows: list[ch.Row], i: int) -> bytes:
    return ch.leaf_hash(ch.entry_bytes(ch.prefix(*rows[i][:8]), _prev(rows, i), rows[i].body))


def _prev(rows: list[ch.Row], i: int) -> bytes:
    prev = ch.ZERO
    for r in rows[:i]:
        prev = ch.leaf_hash(ch.entry_bytes(ch.prefix(*r[:8]), prev, r.body))
    return prev


def test_wrong_checkpoint_root_is_located_at_its_boundary() -> None:
    rng = random.Random(9)
    k0 = rng.randbytes(32)
    rows, state = build("lab_a", k0, 20, rng)
    bad = Checkpoint("lab_a", 20, bytes(32), state.prev, tuple(state.frontier),
                     datetime.now(UTC), "checkpoint", "t", b"")
    report = walk_rows("lab_a", k0, rows, [bad])
    assert not report.ok and report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("root-mismatch", 19)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32), j=st.integers(0, 39))
def test_current_key_cannot_rewrite_the_past(n: int, seed: int, j: int) -> None:
    """An intruder holding k_n rewrites entry j < n and re-chains everything after it with
    every key it can compute (k_n, k_n+1, ...): verification still stops at j."""
    rng = random.Random(seed)
    j = j % n
    k0 = rng.randbytes(32)
    rows, state = build("lab_a", k0, n, rng)
    prev = _prev(rows, j)
    forged_state = ch.State(j, prev, state.key, [ch.ZERO] * j.bit_count())
    forged = list(rows[:j])
    for r in rows[j:]:
        body = r.body.replace("care", "audit") if r.seq == j else r.body
        row, forged_state = ch.append(forged_state, "lab_a", r.entry_id, r.at_us, r.actor_id,
                                      r.patient_id, r.action, r.outcome, body)
        forged.append(row)
    report = walk_rows("lab_a", k0, forged, [])
    assert not report.ok and report.problem is not None and report.problem.seq == j


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300))
def test_fast_hmac_is_hmac_sha256(key: bytes, message: bytes) -> None:
    from labvault.crypto.digests import hmac_sha256
    assert ch.fast_hmac(key, message) == hmac_sha256(key, message)
    assert ch.evolve_n(key, 3) == ch.evolve(ch.evolve(ch.evolve(key)))


def _reference_append(state: ch.State, chain: str, entry: tuple[str, int, str, str | None,
                                                               str, str, str]) -> tuple[ch.Row,
                                                                                        ch.State]:
    """The scheme of docs/audit.md spelt out with the plain primitives."""
    from labvault.crypto.digests import hmac_sha256
    eid, at_us, actor, pid, action, outcome, body = entry
    c = ch.entry_bytes(ch.prefix(chain, state.next_seq, eid, at_us, actor, pid, action, outcome),
                       state.prev, body)
    leaf = ch.leaf_hash(c)
    frontier = list(state.frontier)
    ch.frontier_push(frontier, state.next_seq, leaf)
    row = ch.Row(chain, state.next_seq, eid, at_us, actor, pid, action, outcome, body,
                 hmac_sha256(state.key, leaf))
    return row, ch.State(state.next_seq + 1, leaf, hmac_sha256(state.key, b"evolve"), frontier)


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 3000), n=st.integers(1, 40), every=st.sampled_from([0, 1, 3, 8]),
       seed=st.integers(0, 2**32))
def test_append_many_is_append_one_by_one(start: int, n: int, every: int, seed: int) -> None:
    rng = random.Random(seed)
    k = rng.randbytes(32)
    state = ch.State(start, rng.randbytes(32), k,
                     [rng.randbytes(32) for _ in range(start.bit_count())])
    entries = [(f"ae_{rng.getrandbits(64):016x}", 1_700_000_000_000_000 + i,
                rng.choice(["acct_a", "os:op@host"]), rng.choice([None, "pt_1"]),
                rng.choice(["read", "search"]), "allowed",
                '{"purpose":"care","é":"\u2028"}' * rng.randint(0, 3)) for i in range(n)]
    rows, after, reached = ch.append_many(state, "lab_a", entries, every)
    ref = state
    want_reached = []
    for i, e in enumerate(entries):
        row, ref = _reference_append(ref, "lab_a", e)
        assert rows[i] == row
        if every and ref.next_seq % every == 0:
            want_reached.append((ref.next_seq, ch.frontier_root(ref.frontier), ref.prev,
                                 ref.frontier))
    assert after == ref
    assert reached == want_reached
    assert state.next_seq == start and len(state.frontier) == start.bit_count()  # untouched
    single, one = ch.append(state, "lab_a", *entries[0])
    assert (single, one) == _reference_append(state, "lab_a", entries[0])


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(start=st.integers(0, 2**20), every=st.sampled_from([0, 1, 2, 5]),
       entries=st.lists(st.tuples(_text, st.integers(0, 2**62), _text, st.none() | _text,
                                  _text, _text, st.text(max_size=200)), max_size=12),
       seed=st.integers(0, 2**32))
def test_native_append_matches_python(start: int, every: int,
                                      entries: list[tuple[str, int, str, str | None, str, str,
                                                          str]], seed: int) -> None:
    """The C loop (crypto/_native.c) and the Python reference: the same rows, head and
    checkpoints, byte for byte, whatever the text (any Unicode, empty, None patient)."""
    from labvault.crypto.digests import native_chain_append
    if native_chain_append is None:
        pytest.skip("native chain loop not built here")
    rng = random.Random(seed)
    entries = [e for e in entries if "\udcff" not in e[6]]
    state = ch.State(start, rng.randbytes(32), rng.randbytes(32),
                     [rng.randbytes(32) for _ in range(start.bit_count())])
    native = ch.append_many(state, "lab_é", entries, every)
    python = ch.append_many_python(state, "lab_é", entries, every)
    assert native == python
    assert all(type(r) is ch.Row for r in native[0])


def test_native_append_refuses_what_python_refuses() -> None:
    from labvault.crypto.digests import native_chain_append
    if os.environ.get("CI") == "true":
        assert native_chain_append is not None, "CI builds the native chain loop"
    if native_chain_append is None:
        pytest.skip("native chain loop not built here")
    state = ch.State(3, bytes(32), bytes(32), [bytes(32)])      # 3 needs 2 frontier nodes
    with pytest.raises(ValueError, match="frontier"):
        ch.append_many(state, "c", [("e", 1, "a", None, "read", "allowed", "{}")])
    ok = ch.State(0, bytes(32), bytes(32), [])
    surrogate = [("e", 1, "a", None, "read", "allowed", "\udcff")]
    short = [("e", 1, "a", None, "read", "allowed")]
    for bad in (surrogate, short):          # refused by both
        with pytest.raises((UnicodeEncodeError, TypeError, ValueError)):
            ch.append_many(ok, "c", bad)  # type: ignore[arg-type]
        with pytest.raises((UnicodeEncodeError, ValueError)):
            ch.append_many_python(ok, "c", bad)  # type: ignore[arg-type]
    # stricter than Python's str(): the log always passes an int time and str ids
    for bad in ([("e", "1", "a", None, "read", "allowed", "{}")],
                [("e", 1, None, None, "read", "allowed", "{}")]):
        with pytest.raises(TypeError):
            ch.append_many(ok, "c", bad)  # type: ignore[arg-type]
