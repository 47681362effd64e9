"""The NumPy fuzzy scorer gives exactly the pure-Python scores and winners."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.breach import matching
from labvault.breach.encoding import (
    BYTES,
    SEGMENTS,
    ClkEncoder,
    MatchIdentity,
    field_counts,
    filter_words,
    score,
    score_words,
)
from labvault.breach.matching import FuzzyPrep, RowKeys, fuzzy_tenant, fuzzy_tenant_reference
from labvault.synthetic import people

ENC = ClkEncoder(b"k" * 32, b"p" * 32, b"b" * 32)


@st.composite
def filters(draw: st.DrawFn) -> int:
    """Original-form filters whose fields are empty, sparse or dense (fields empty on
    one side and the MIN_WEIGHT cut-off both get exercised)."""
    f = 0
    for lo, hi in SEGMENTS.values():
        kind = draw(st.sampled_from(("empty", "sparse", "dense")))
        if kind == "sparse":
            for b in draw(st.lists(st.integers(lo, hi - 1), max_size=12)):
                f |= 1 << b
        elif kind == "dense":
            f |= draw(st.integers(0, (1 << (hi - lo)) - 1)) << lo
    return f


@settings(max_examples=200, deadline=None)
@given(row=filters(), cands=st.lists(filters(), min_size=1, max_size=8),
       noise=st.binary(min_size=2 * BYTES, max_size=2 * BYTES))
def test_score_words_equals_score(row: int, cands: list[int], noise: bytes) -> None:
    # stored forms as the store holds them, the complement half replaced by noise
    # (the scorer must read the original half only)
    full = (1 << (16 * BYTES)) - 1
    nz = int.from_bytes(noise, "big") & (full ^ ENC.mask)
    noisy = [((int.from_bytes(ENC.balanced(c), "big") & ENC.mask) | nz).to_bytes(2 * BYTES, "big")
             for c in cands]
    want = [score(ENC.permuted(row), ENC.original_half(s), ENC.field_masks) for s in noisy]
    rw = filter_words([row] * len(cands))
    cw = ENC.original_words(noisy)
    got = score_words(rw, field_counts(rw), cw, field_counts(cw))
    assert [float(x) for x in got] == want          # bit-identical floats, not approx
    assert (cw == filter_words(cands)).all()


def _identities(n: int, seed: int) -> list[MatchIdentity]:
    return [MatchIdentity.of(p["birth_name"], p["first_names"][0], p["birth_date"],
                             p["address"]["postal_code"], p["sex"], p["nir"], p["email"],
                             p["phone"]) for p in people(n, seed=seed)]


def _corrupt(m: MatchIdentity, rng: random.Random) -> MatchIdentity:
    last, first, bd, pc = m.last, m.first, m.birth_date, m.postcode
    r = rng.random()
    if r < 0.3 and len(last) > 2:
        i = rng.randrange(len(last))
        last = last[:i] + rng.choice("AEIOUXZ") + last[i + 1:]
    elif r < 0.5:
        last, first = first, last
    elif r < 0.7:
        pc = ""
    elif r < 0.8 and bd:
        bd = bd[:8] + f"{(int(bd[8:]) % 28) + 1:02d}"
    return MatchIdentity.of(last, first, bd, pc, m.sex, None, m.email if r > 0.6 else None)


@pytest.mark.parametrize("batch", [7, 1 << 16])
def test_fuzzy_tenant_equals_reference(batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matching, "PAIR_BATCH", batch)
    rng = random.Random(5)
    patients = _identities(400, seed=21)
    patients += patients[:20]                      # exact duplicates: ties between patients
    encodings: dict[str, bytes] = {}
    blocks: dict[bytes, list[str]] = {}
    for i, m in enumerate(patients):
        pid = f"p{i}"
        if i % 50 != 7:                            # some candidates have no encoding
            encodings[pid] = ENC.encode(m)
        for d in ENC.blocks(m):
            blocks.setdefault(d, []).append(pid)
    idents = [_corrupt(m, rng) for m in patients[:300]] + _identities(150, seed=77)
    idents.append(MatchIdentity())                 # nothing to match on
    rows = [RowKeys(m, (), b"", frozenset(), False) for m in idents]
    prep = FuzzyPrep(rows, range(len(rows)))
    got = list(fuzzy_tenant(prep, ENC, blocks, encodings))
    want = list(fuzzy_tenant_reference(prep, ENC, blocks, encodings))
    assert got == want
    assert len(got) > 250                          # the comparison is not vacuous
    assert any(s < 1.0 for _, _, s in got) and any(s == 1.0 for _, _, s in got)
