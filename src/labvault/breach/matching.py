"""Rows of a leaked file -> keys, and the two matching tiers over one tenant's keyed data.

Nothing here opens a sealed value: the exact tier compares keyed digests of the dump's
values with the tenant's blind-index digests; the fuzzy tier compares keyed Bloom
filters (``encoding``). The service loads one tenant's digests/encodings at a time
(bounded memory) and may run tenants in parallel processes.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from labvault.breach.columns import (
    CATEGORY_OF,
    Column,
    normalise_email,
    normalise_nir,
    normalise_phone,
    parse_date,
)
from labvault.breach.encoding import (
    FIELD_WORDS,
    FUZZY_ACCEPT,
    WORDS,
    ClkEncoder,
    KeyedDigest,
    MatchIdentity,
    block_values,
    field_counts,
    filter_words,
    score,
    score_words,
    tokens,
)
from labvault.crypto import blind_index as bi

EXACT_KINDS = (bi.NIR, bi.EMAIL, bi.PHONE, bi.NAME_DOB)
_KIND_CODE = {bi.NIR: 0, bi.EMAIL: 1, bi.PHONE: 2, bi.NAME_DOB: 3}
KEY_NAMES = ("nir", "email", "phone", "name_dob")
_SEX = {"M": "M", "H": "M", "1": "M", "HOMME": "M", "MASCULIN": "M", "MALE": "M",
        "F": "F", "2": "F", "FEMME": "F", "FEMININ": "F", "FÉMININ": "F", "FEMALE": "F"}
_CP = re.compile(r"\b(\d{5})\b")


@dataclass(slots=True)
class RowKeys:
    """What matching needs of one dump row (normalised), and what the row exposes."""

    ident: MatchIdentity
    messages: tuple[bytes, ...]        # exact-tier MAC inputs (kind \0 normalised value)
    kinds: bytes                       # kind code of each message
    categories: frozenset[str]         # data categories with an intelligible value in the row
    sealed: bool                       # the row holds ciphertext blobs


class RowReader:
    """Turns raw rows into ``RowKeys`` according to the detected columns."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)

        def first(meaning: str) -> int | None:
            return next((c.index for c in columns if c.detected == meaning), None)

        self.nir = first("nir")
        self.email = first("email")
        self.phone = first("phone")
        self.last = first("last_name")
        self.first = first("first_name")
        self.birth = first("birth_date")
        self.postcode = first("postcode")
        self.address = first("address")
        self.sex = first("sex")
        self.cat_cols = [(c.index, CATEGORY_OF[c.detected]) for c in columns
                         if c.detected in CATEGORY_OF]
        self.sealed_cols = [c.index for c in columns if c.detected == "sealed"]
        self._cats: dict[frozenset[str], frozenset[str]] = {}

    @staticmethod
    def _cell(row: Sequence[str], i: int | None) -> str:
        if i is None or i >= len(row):
            return ""
        return row[i].strip()

    def keys(self, row: Sequence[str]) -> RowKeys:
        c = self._cell
        nir = normalise_nir(c(row, self.nir)) if self.nir is not None else None
        email = normalise_email(c(row, self.email)) if self.email is not None else None
        phone = normalise_phone(c(row, self.phone)) if self.phone is not None else None
        last = c(row, self.last)
        first = c(row, self.first).split(" ")[0] if self.first is not None else ""
        bd = parse_date(c(row, self.birth)) if self.birth is not None else None
        pc = c(row, self.postcode)
        if not pc and self.address is not None:
            m = _CP.search(c(row, self.address))
            pc = m.group(1) if m else ""
        sex = _SEX.get(c(row, self.sex).upper(), "") if self.sex is not None else ""
        ident = MatchIdentity.of(last, first, bd, pc, sex,
                                 c(row, self.nir) if self.nir is not None else None,
                                 c(row, self.email) if self.email is not None else None,
                                 c(row, self.phone) if self.phone is not None else None)
        msgs: list[bytes] = []
        kinds = bytearray()
        for kind, val in ((bi.NIR, nir), (bi.EMAIL, email), (bi.PHONE, phone)):
            if val:
                msgs.append(kind.encode() + b"\x00" + val.encode())
                kinds.append(_KIND_CODE[kind])
        if ident.last and ident.first and ident.birth_date:
            for a, b in ((ident.last, ident.first), (ident.first, ident.last)):
                msgs.append(bi.NAME_DOB.encode() + b"\x00" + f"{a}|{b}|{ident.birth_date}".encode())
                kinds.append(_KIND_CODE[bi.NAME_DOB])
        present = frozenset(cat for i, cat in self.cat_cols if c(row, i))
        cats = self._cats.setdefault(present, present)
        sealed = any(c(row, i) for i in self.sealed_cols)
        return RowKeys(ident, tuple(msgs), bytes(kinds), cats, sealed)


@dataclass(frozen=True, slots=True)
class Match:
    row: int                 # 0-based index into the triage's row list
    tenant_id: str
    patient_id: str
    method: str              # exact | fuzzy
    keys: tuple[str, ...]
    score: float


def exact_tenant(rows: Sequence[RowKeys], tenant_id: str, index_key: bytes,
                 index: Mapping[bytes, Sequence[str]]) -> list[Match]:
    """Exact tier for one tenant: keyed digests of the row's identifiers vs its blind index."""
    kd = KeyedDigest(index_key)
    mac = kd.mac
    get = index.get
    out: list[Match] = []
    for n, r in enumerate(rows):
        found: dict[str, list[str]] | None = None
        for msg, kind in zip(r.messages, r.kinds, strict=True):
            ids = get(mac(msg)[:8])
            if ids:
                if found is None:
                    found = {}
                for pid in ids:
                    ks = found.setdefault(pid, [])
                    if KEY_NAMES[kind] not in ks:
                        ks.append(KEY_NAMES[kind])
        if found:
            for pid, ks in found.items():
                out.append(Match(n, tenant_id, pid, "exact", tuple(ks), 1.0))
    return out


class FuzzyPrep:
    """Tenant-independent work of the fuzzy tier, done once per triage: each row's
    tokens and blocking values (both name orders), as ids into shared vocabularies."""

    def __init__(self, rows: Sequence[RowKeys], todo: Iterable[int]) -> None:
        self.tokens: list[str] = []
        self.blocks: list[str] = []
        tok_id: dict[str, int] = {}
        blk_id: dict[str, int] = {}
        self.rows: dict[int, tuple[tuple[array[int], ...], array[int]]] = {}
        for n in todo:
            ident = rows[n].ident
            if not (ident.last or ident.birth_date):
                continue
            variants = [ident] if not (ident.first and ident.last) else [ident, ident.swapped()]
            toks = []
            bids: dict[int, None] = {}
            for v in variants:
                ids = array("I")
                for t in tokens(v):
                    i = tok_id.get(t)
                    if i is None:
                        i = tok_id[t] = len(self.tokens)
                        self.tokens.append(t)
                    ids.append(i)
                toks.append(ids)
                for bv in block_values(v):
                    j = blk_id.get(bv)
                    if j is None:
                        j = blk_id[bv] = len(self.blocks)
                        self.blocks.append(bv)
                    bids[j] = None
            self.rows[n] = (tuple(toks), array("I", bids))


# (row, candidate) pairs scored per NumPy batch: bounds memory (~30 MiB per batch).
PAIR_BATCH = 1 << 16


def _candidates(bids: Iterable[int], bdig: list[bytes | None], prep: FuzzyPrep,
                encoder: ClkEncoder, blocks: Mapping[bytes, Sequence[str]]) -> set[str]:
    """Patients sharing at least one keyed blocking key with a row (digests memoised in
    ``bdig``, one per vocabulary entry and tenant)."""
    cand: set[str] = set()
    for b in bids:
        d = bdig[b]
        if d is None:
            d = bdig[b] = encoder.block(prep.blocks[b])
        ids = blocks.get(d)
        if ids:
            cand.update(ids)
    return cand


def fuzzy_tenant(prep: FuzzyPrep, encoder: ClkEncoder, blocks: Mapping[bytes, Sequence[str]],
                 encodings: Mapping[str, bytes]) -> Iterator[tuple[int, str, float]]:
    """Fuzzy tier for one tenant: (row, best patient, score) for rows with a candidate.

    Candidates come from the keyed blocking digests; each is scored by the weighted
    per-field Dice coefficients (``encoding.score``) of the row's filter (and of the
    filter with first and last names swapped) against the patient's stored filter.
    Token masks and block digests are computed once per tenant and vocabulary entry.

    Scoring is vectorised (``encoding.score_words``): candidates' original filters are
    gathered into a uint64 matrix once per patient, and (row, candidate) pairs are
    scored in batches of ``PAIR_BATCH``. Same scores, same winner as
    ``fuzzy_tenant_reference``: the best candidate is the first one, in the candidate
    set's iteration order, reaching the row's best score (ties included).
    """
    tmask: list[int | None] = [None] * len(prep.tokens)
    bdig: list[bytes | None] = [None] * len(prep.blocks)
    slot: dict[str, int] = {}                    # patient -> row of ``mat`` (-1: no encoding)
    pids: list[str] = []
    mat = np.empty((len(encodings), WORDS), dtype=np.uint64)
    counts = np.empty((len(encodings), len(FIELD_WORDS)), dtype=np.int64)
    filled = 0
    pending: list[bytes] = []                    # encodings of slots >= filled
    seg_rows: list[int] = []
    seg_len: list[int] = []
    seg_filters: list[int] = []                  # two per row (the same twice if one order)
    pairs = array("q")

    def flush() -> Iterator[tuple[int, str, float]]:
        nonlocal filled
        if pending:
            w = encoder.original_words(pending)
            mat[filled:filled + len(w)] = w
            counts[filled:filled + len(w)] = field_counts(w)
            filled += len(w)
            pending.clear()
        cidx = np.array(pairs, dtype=np.int64)
        lens = np.array(seg_len, dtype=np.int64)
        seg = np.repeat(np.arange(len(seg_len)), lens)
        rf = filter_words(seg_filters)
        rc = field_counts(rf)
        cw, cc = mat[cidx], counts[cidx]
        s = np.maximum(score_words(rf[2 * seg], rc[2 * seg], cw, cc),
                       score_words(rf[2 * seg + 1], rc[2 * seg + 1], cw, cc))
        starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
        top = np.maximum.reduceat(s, starts)
        hit = np.flatnonzero(s == top[seg])
        _, first = np.unique(seg[hit], return_index=True)
        winner = cidx[hit[first]]
        for k, n in enumerate(seg_rows):
            if top[k] > 0.0:
                yield n, pids[int(winner[k])], float(top[k])
        seg_rows.clear()
        seg_len.clear()
        seg_filters.clear()
        del pairs[:]

    for n, (variants, bids) in prep.rows.items():
        cand = _candidates(bids, bdig, prep, encoder, blocks)
        if not cand:
            continue
        before = len(pairs)
        for pid in cand:
            i = slot.get(pid)
            if i is None:
                raw = encodings.get(pid)
                if raw is None:
                    i = -1
                else:
                    i = len(pids)
                    pids.append(pid)
                    pending.append(raw)
                slot[pid] = i
            if i >= 0:
                pairs.append(i)
        if len(pairs) == before:
            continue
        filters = []
        for toks in variants:
            f = 0
            for t in toks:
                m = tmask[t]
                if m is None:
                    m = tmask[t] = encoder.token_mask(prep.tokens[t])
                f |= m
            filters.append(f)
        seg_rows.append(n)
        seg_len.append(len(pairs) - before)
        seg_filters += (filters[0], filters[-1])
        if len(pairs) >= PAIR_BATCH:
            yield from flush()
    if seg_rows:
        yield from flush()


def fuzzy_tenant_reference(prep: FuzzyPrep, encoder: ClkEncoder, blocks: Mapping[bytes, Sequence[str]],
                 encodings: Mapping[str, bytes]) -> Iterator[tuple[int, str, float]]:
    """Pure-Python fuzzy tier (one ``encoding.score`` call per candidate and name
    order): the reference ``fuzzy_tenant`` must agree with exactly (tests check it).

    Candidates come from the keyed blocking digests; each is scored by the weighted
    per-field Dice coefficients (``encoding.score``) of the row's filter (and of the
    filter with first and last names swapped) against the patient's stored filter.
    Token masks and block digests are computed once per tenant and vocabulary entry.
    """
    mask = encoder.mask
    fm = encoder.field_masks
    tmask: list[int | None] = [None] * len(prep.tokens)
    bdig: list[bytes | None] = [None] * len(prep.blocks)
    opened: dict[str, int] = {}
    for n, (variants, bids) in prep.rows.items():
        cand = _candidates(bids, bdig, prep, encoder, blocks)
        if not cand:
            continue
        filters = []
        for toks in variants:
            f = 0
            for t in toks:
                m = tmask[t]
                if m is None:
                    m = tmask[t] = encoder.stored_token_mask(prep.tokens[t])
                f |= m
            filters.append(f)
        best, top = "", 0.0
        for pid in cand:
            sf = opened.get(pid)
            if sf is None:
                raw = encodings.get(pid)
                if raw is None:
                    continue
                sf = int.from_bytes(raw, "big") & mask
                opened[pid] = sf
            for rf in filters:
                s = score(rf, sf, fm)
                if s > top:
                    best, top = pid, s
        if best:
            yield n, best, top


def fuzzy_keys(ident: MatchIdentity) -> tuple[str, ...]:
    return tuple(k for k, v in (("last_name", ident.last), ("first_name", ident.first),
                                ("birth_date", ident.birth_date), ("postcode", ident.postcode))
                 if v)


def accept_fuzzy(best: Mapping[int, tuple[str, str, float]]) -> dict[int, tuple[str, str, float]]:
    """Keep, per row, the best (tenant, patient, score) at or above the threshold."""
    return {n: v for n, v in best.items() if v[2] >= FUZZY_ACCEPT}
