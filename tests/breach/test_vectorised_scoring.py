"""The NumPy fuzzy scorer gives exactly the pure-Python scores and winners."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.breach import matching
from labvault.breach.encoding import (
    BYTES,
    FUZZY_ACCEPT,
    SEGMENTS,
    ClkEncoder,
    MatchIdentity,
    field_counts,
    filter_words,
    score,
    score_words,
)
from labvault.breach.matching import (
    ExactPrep,
    FuzzyPrep,
    RowKeys,
    TenantEncodings,
    TenantIndex,
    exact_tenant,
    fuzzy_tenant,
    fuzzy_tenant_reference,
)
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


@pytest.mark.parametrize("native", [True, False], ids=["c-loop", "numpy"])
@pytest.mark.parametrize("batch", [7, 1 << 16])
def test_fuzzy_tenant_equals_reference(batch: int, native: bool,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matching, "PAIR_BATCH", batch)
    if native and not matching.native_scoring():
        pytest.skip("C scoring loop not built here")
    if not native:
        monkeypatch.setattr(matching, "_scoring", None)
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
    got = list(fuzzy_tenant(prep, ENC, TenantEncodings.from_maps(ENC, blocks, encodings)))
    want = list(fuzzy_tenant_reference(rows, range(len(rows)), ENC, blocks, encodings))
    assert got == want
    # with a floor (the C loop then skips pairs that cannot reach it): the same rows
    # at or above it, with the same winners
    data = TenantEncodings.from_maps(ENC, blocks, encodings)
    floor = [x for x in want if x[2] >= FUZZY_ACCEPT]
    assert list(fuzzy_tenant(prep, ENC, data, FUZZY_ACCEPT)) == floor
    assert 0 < len(floor) < len(want)
    assert len(got) > 250                          # the comparison is not vacuous
    assert any(s < 1.0 for _, _, s in got) and any(s == 1.0 for _, _, s in got)
    # ties between the duplicated patients go to the smallest patient id
    dup = {f"p{i}" for i in range(20)} | {f"p{i}" for i in range(400, 420)}
    assert any(pid in dup for _, pid, _ in got)


def test_exact_tenant_finds_every_key_in_order() -> None:
    key = b"i" * 32
    from labvault.breach.encoding import KeyedDigest
    kd = KeyedDigest(key)
    msgs = [[b"nir\x00A", b"email\x00a@b.fr"], [], [b"email\x00a@b.fr", b"phone\x00+33"],
            [b"nir\x00Z"]]
    kinds = [bytes([0, 1]), b"", bytes([1, 2]), bytes([0])]
    rows = [RowKeys(MatchIdentity(), tuple(m), k, frozenset(), False)
            for m, k in zip(msgs, kinds, strict=True)]
    index = TenantIndex.of([(kd.mac(b"email\x00a@b.fr")[:8], "p2"),
                            (kd.mac(b"email\x00a@b.fr")[:8], "p1"),
                            (kd.mac(b"nir\x00A")[:8], "p1"),
                            (kd.mac(b"phone\x00+33")[:8], "p3")])
    got = sorted((m.row, m.patient_id, m.keys) for m in
                 exact_tenant(ExactPrep(rows), "t", key, index))
    # row 0: p2 only shares p1's e-mail, while the NIR names p1 — a row is one person
    assert got == [(0, "p1", ("nir", "email")),
                   (2, "p1", ("email",)), (2, "p2", ("email",)), (2, "p3", ("phone",))]


def test_token_segments_equal_token_masks() -> None:
    from labvault.breach.encoding import FIELD_WORDS, tokens
    idents = _identities(60, seed=3)
    for f, a, _ in FIELD_WORDS:
        toks = sorted({t for m in idents for t in tokens(m)
                       if (t[0] == f or (f == "P" and t[0] == "S"))})
        assert toks
        got = ENC.token_segments(f, toks)
        lo = SEGMENTS[f][0]
        want = filter_words([ENC.token_mask(t) for t in toks])[:, a:a + got.shape[1]]
        assert (got == want).all()
        assert all(ENC.token_mask(t) >> lo << lo == ENC.token_mask(t) for t in toks)


def test_field_tokens_make_up_tokens() -> None:
    from labvault.breach.encoding import FIELD_TOKENS as _FIELD_TOKENS
    from labvault.breach.encoding import tokens
    for m in _identities(50, seed=8):
        parts = (_FIELD_TOKENS["L"](m.last, "") + _FIELD_TOKENS["F"](m.first, "")
                 + _FIELD_TOKENS["D"](m.birth_date, "") + _FIELD_TOKENS["N"](m.nir, "")
                 + _FIELD_TOKENS["T"](m.phone, "") + _FIELD_TOKENS["E"](m.email, "")
                 + _FIELD_TOKENS["P"](m.postcode, m.sex))
        assert parts == tokens(m)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_c_scoring_loop_equals_numpy(data: st.DataObject) -> None:
    if not matching.native_scoring():
        pytest.skip("C scoring loop not built here")
    rows = data.draw(st.lists(filters(), min_size=1, max_size=6))
    swapped = data.draw(st.lists(filters(), min_size=len(rows), max_size=len(rows)))
    pats = data.draw(st.lists(filters(), min_size=1, max_size=6))
    n = data.draw(st.integers(1, 40))
    pr = np.array(data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=n, max_size=n)))
    pp = np.array(data.draw(st.lists(st.integers(0, len(pats) - 1), min_size=n, max_size=n)))
    rf = np.ascontiguousarray(filter_words(rows).T)
    rsw = np.ascontiguousarray(filter_words(swapped).T[:7])
    cw = np.ascontiguousarray(filter_words(pats).T)
    rc, rc_sw = matching._counts_t(rf), matching._counts_t(rsw)
    cc = np.ascontiguousarray(field_counts(filter_words(pats)).T.astype(np.float64))
    want = matching.score_pairs(rf, rsw, rc, rc_sw, cw, cc, pr, pp, native=False)
    got = matching.score_pairs(rf, rsw, rc, rc_sw, cw, cc, pr, pp)
    assert got.tobytes() == want.tobytes()           # bit-identical doubles


def test_c_scoring_loop_rejects_bad_indexes() -> None:
    if not matching.native_scoring():
        pytest.skip("C scoring loop not built here")
    w = np.ascontiguousarray(filter_words([1, 2]).T)
    c = matching._counts_t(w)
    with pytest.raises(ValueError, match="inconsistent"):
        matching.score_pairs(w, w[:7], c, c[:2], w, c, np.array([0, 2]), np.array([0, 1]))


def test_native_loops_are_built_in_ci() -> None:
    import os
    if os.environ.get("CI") != "true" and not matching.native_scoring():
        pytest.skip("C scoring loop not built here (no C compiler)")
    assert matching.native_scoring()


def test_row_blocks_are_both_name_orders_blocks() -> None:
    from labvault.breach.encoding import block_values
    rng = random.Random(8)
    idents = _identities(300, seed=31)
    idents += [_corrupt(m, rng) for m in idents]
    idents += [MatchIdentity.of(m.last, None, m.birth_date, m.postcode) for m in idents[:50]]
    idents += [MatchIdentity.of(None, m.first, None, m.postcode) for m in idents[:50]]
    idents.append(MatchIdentity())
    for i in idents:
        both = block_values(i) + (block_values(i.swapped()) if i.first and i.last else [])
        assert matching._row_blocks(i) == list(dict.fromkeys(both)), i


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="0123456789AB", min_size=0, max_size=14), max_size=30),
       st.sampled_from(["N", "T"]))
def test_digit_tokens_vectorised_equal_python(values: list[str], field: str) -> None:
    def tokens_of(voc: matching._FieldVocab, ids: list[int]) -> list[list[str]]:
        ptr = list(voc.ptr)
        return [sorted(voc.tokens[t] for t in voc.toks[ptr[i]:ptr[i + 1]]) if i >= 0 else []
                for i in ids]

    keys = [(v, "") for v in values]
    fast = matching._FieldVocab(field)
    got = tokens_of(fast, fast.ids_of(keys).tolist())
    slow = matching._FieldVocab(field)
    slow_keys = [(v, "") for v in values]
    original = matching._DIGIT_FIELDS
    try:
        matching._DIGIT_FIELDS = ()                  # type: ignore[misc]
        want = tokens_of(slow, slow.ids_of(slow_keys).tolist())
    finally:
        matching._DIGIT_FIELDS = original             # type: ignore[misc]
    assert got == want
    assert [sorted(matching.FIELD_TOKENS[field](v, "")) for v in values] == want


def test_filter_is_or_of_token_masks() -> None:
    from labvault.breach.encoding import tokens
    rng = random.Random(3)
    idents = _identities(200, seed=51)
    idents += [_corrupt(m, rng) for m in idents] + [MatchIdentity()]
    enc = ClkEncoder(b"k" * 32, b"p" * 32, b"b" * 32)
    for _ in range(2):                               # cold, then from the per-value cache
        for m in idents:
            want = 0
            for t in tokens(m):
                want |= enc.token_mask(t)
            assert enc.filter(m) == want
