"""Rows of a leaked file -> keys, and the two matching tiers over one tenant's keyed data.

Nothing here opens a sealed value: the exact tier compares keyed digests of the dump's
values with the tenant's blind-index digests; the fuzzy tier compares keyed Bloom
filters (``encoding``). The service loads one tenant's digests/encodings at a time
(bounded memory) and may run tenants in parallel processes.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import accumulate, chain, islice
from operator import itemgetter
from types import ModuleType

import numpy as np
import numpy.typing as npt

from labvault.breach.columns import (
    CATEGORY_OF,
    Column,
    normalise_email,
    normalise_nir,
    normalise_phone,
    parse_date,
)
from labvault.breach.encoding import (
    FIELD_TOKENS,
    FIELD_WORDS,
    FUZZY_ACCEPT,
    MIN_WEIGHT,
    SEGMENTS,
    WEIGHTS,
    WORDS,
    ClkEncoder,
    Counts,
    KeyedDigest,
    MatchIdentity,
    Scores,
    Words,
    field_counts,
    score,
    soundex,
)
from labvault.crypto import blind_index as bi

EXACT_KINDS = (bi.NIR, bi.EMAIL, bi.PHONE, bi.NAME_DOB)
_KIND_CODE = {bi.NIR: 0, bi.EMAIL: 1, bi.PHONE: 2, bi.NAME_DOB: 3}
KEY_NAMES = ("nir", "email", "phone", "name_dob")
_SEX = {"M": "M", "H": "M", "1": "M", "HOMME": "M", "MASCULIN": "M", "MALE": "M",
        "F": "F", "2": "F", "FEMME": "F", "FEMININ": "F", "FÉMININ": "F", "FEMALE": "F"}
_CP = re.compile(r"\b(\d{5})\b")
_UNSEEN = date.min


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
        self._cats: dict[tuple[bool, ...], frozenset[str]] = {}
        self._dates: dict[str, date | None] = {}     # dates repeat: parse each once
        # Rows are read as their stripped cells padded to ``_width`` + 1, the last cell
        # always empty: an absent column reads it (no per-cell bounds checks or calls).
        self._width = 1 + max((c.index for c in columns), default=-1)
        self._pad = [""] * (self._width + 1)
        self._cat_of = _picker([i for i, _ in self.cat_cols])
        self._cat_names = [cat for _, cat in self.cat_cols]
        self._sealed_of = _picker(self.sealed_cols)

    def keys(self, row: Sequence[str]) -> RowKeys:
        cells = [x.strip() for x in row[:self._width]]
        cells += self._pad[len(cells):]
        w = self._width
        nir_raw = cells[w if self.nir is None else self.nir]
        email_raw = cells[w if self.email is None else self.email]
        phone_raw = cells[w if self.phone is None else self.phone]
        nir = normalise_nir(nir_raw) if self.nir is not None else None
        email = normalise_email(email_raw) if self.email is not None else None
        phone = normalise_phone(phone_raw) if self.phone is not None else None
        last = cells[w if self.last is None else self.last]
        first = cells[self.first].split(" ")[0] if self.first is not None else ""
        bd = None
        if self.birth is not None:
            raw = cells[self.birth]
            bd = self._dates.get(raw, _UNSEEN)
            if bd is _UNSEEN:
                bd = self._dates[raw] = parse_date(raw)
        pc = cells[w if self.postcode is None else self.postcode]
        if not pc and self.address is not None:
            m = _CP.search(cells[self.address])
            pc = m.group(1) if m else ""
        sex = _SEX.get(cells[self.sex].upper(), "") if self.sex is not None else ""
        ident = MatchIdentity.of(last, first, bd, pc, sex,
                                 nir_raw if self.nir is not None else None,
                                 email_raw if self.email is not None else None,
                                 phone_raw if self.phone is not None else None)
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
        filled = tuple(map(bool, self._cat_of(cells)))
        cats = self._cats.get(filled)
        if cats is None:
            cats = self._cats[filled] = frozenset(
                c for c, f in zip(self._cat_names, filled, strict=True) if f)
        sealed = any(self._sealed_of(cells))
        return RowKeys(ident, tuple(msgs), bytes(kinds), cats, sealed)


def _picker(indexes: Sequence[int]) -> Callable[[Sequence[str]], tuple[str, ...]]:
    """``cells -> tuple(cells[i] for i in indexes)`` at C speed (itemgetter returns a bare
    value for one index and needs at least one)."""
    if not indexes:
        return lambda _cells: ()
    if len(indexes) == 1:
        i = indexes[0]
        return lambda cells: (cells[i],)
    return itemgetter(*indexes)


@dataclass(frozen=True, slots=True)
class Match:
    row: int                 # 0-based index into the triage's row list
    tenant_id: str
    patient_id: str
    method: str              # exact | fuzzy
    keys: tuple[str, ...]
    score: float


# -- exact tier ----------------------------------------------------------------------------------
U64 = np.dtype("<u8")
Ids = npt.NDArray[np.int64]


def digests_u64(digests: Sequence[bytes]) -> npt.NDArray[np.uint64]:
    """8-byte digests as integers (little-endian reading; only equality matters)."""
    raw = b"".join(digests)
    if len(raw) != 8 * len(digests):
        raise ValueError("digests must be 8 bytes")
    return np.frombuffer(raw, dtype=U64).astype(np.uint64, copy=False)


class ExactPrep:
    """Tenant-independent work of the exact tier, done once per triage: every row's
    MAC inputs in one flat list, with the row and kind of each."""

    def __init__(self, rows: Sequence[RowKeys]) -> None:
        self.messages: list[bytes] = []
        row = array("q")
        kinds = bytearray()
        for n, r in enumerate(rows):
            if r.messages:
                self.messages.extend(r.messages)
                row.extend([n] * len(r.messages))
                kinds += r.kinds
        self.row = np.frombuffer(row, dtype=np.int64) if row else np.zeros(0, np.int64)
        self.kinds = bytes(kinds)


@dataclass(frozen=True, slots=True)
class TenantIndex:
    """A tenant's blind-index digests (sorted, as integers), each with its patient."""

    digests: npt.NDArray[np.uint64]
    patient: Ids                         # index into ``pids``, aligned with ``digests``
    pids: list[str]

    @staticmethod
    def of(pairs: Iterable[tuple[bytes, str]]) -> TenantIndex:
        ds: list[bytes] = []
        ps: list[int] = []
        slot: dict[str, int] = {}
        for d, pid in pairs:
            ds.append(bytes(d))
            ps.append(slot.setdefault(pid, len(slot)))
        dig = digests_u64(ds)
        order = np.argsort(dig, kind="stable")
        return TenantIndex(dig[order], np.asarray(ps, dtype=np.int64)[order], list(slot))


_PREFILTER_BITS = 22          # 4 MiB of flags: ~3 % false positives at 140,000 digests


def _ranges(digests: npt.NDArray[np.uint64], queries: npt.NDArray[np.uint64]
            ) -> tuple[Ids, Ids]:
    """For each query, where its equal digests start in the sorted ``digests`` and how
    many there are (0 and 0 when none). Keyed digests are uniform, so a direct-address
    bitmap of their top bits rules out most queries with one gather each (~8x cheaper
    than a binary search); only those that pass are searched."""
    lo = np.zeros(len(queries), dtype=np.int64)
    cnt = np.zeros(len(queries), dtype=np.int64)
    if len(digests) == 0 or len(queries) == 0:
        return lo, cnt
    shift = np.uint64(64 - _PREFILTER_BITS)
    present = np.zeros(1 << _PREFILTER_BITS, dtype=np.bool_)
    present[digests >> shift] = True
    cand = np.flatnonzero(present[queries >> shift])
    q = queries[cand]
    left = np.searchsorted(digests, q, side="left")
    right = np.searchsorted(digests, q, side="right")
    lo[cand] = left
    cnt[cand] = right - left
    return lo, cnt


def exact_tenant(prep: ExactPrep, tenant_id: str, index_key: bytes,
                 index: TenantIndex) -> list[Match]:
    """Exact tier for one tenant: keyed digests of the rows' identifiers vs its blind index.

    One HMAC per MAC input (the key schedule is done once); the look-up is a vectorised
    binary search of all digests in the tenant's sorted index, and only hits go back
    to Python. A row's keys are listed in the order of its MAC inputs.
    """
    kd = KeyedDigest(index_key)
    n = len(prep.messages)
    if n == 0 or len(index.digests) == 0:
        return []
    d = np.frombuffer(kd.mac_many(prep.messages, bi.DIGEST_BYTES), dtype=U64)
    lo_all, cnt_all = _ranges(index.digests, d)
    hits = np.flatnonzero(cnt_all)
    lo = lo_all[hits]
    hi = lo + cnt_all[hits]
    out: list[Match] = []
    found: dict[str, list[str]] = {}
    current = -1
    for j, m in enumerate(hits.tolist()):
        r = int(prep.row[m])
        if r != current:
            out.extend(Match(current, tenant_id, pid, "exact", tuple(ks), 1.0)
                       for pid, ks in _one_person(found))
            found = {}
            current = r
        key = KEY_NAMES[prep.kinds[m]]
        for p in index.patient[lo[j]:hi[j]].tolist():
            ks = found.setdefault(index.pids[p], [])
            if key not in ks:
                ks.append(key)
    out.extend(Match(current, tenant_id, pid, "exact", tuple(ks), 1.0)
               for pid, ks in _one_person(found))
    return out


def _one_person(found: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """A row is one person: a patient whose matched keys are a strict subset of another
    patient's for the same row is someone else who shares them — a namesake born the same
    day (name + birth date only, while the NIR names the other), a parent whose phone and
    e-mail are on a child's record. Equal key sets stay (nothing tells them apart)."""
    if len(found) < 2:
        return list(found.items())
    sets = {pid: frozenset(ks) for pid, ks in found.items()}
    return [(pid, ks) for pid, ks in found.items()
            if not any(sets[pid] < other for other in sets.values())]


# -- fuzzy tier ----------------------------------------------------------------------------------
FIELDS = tuple(SEGMENTS)                 # L F D P N E T: field segments in filter order




class _FieldVocab:
    """Distinct values of one field and their tokens (ids into the field's token list)."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.ids: dict[tuple[str, str], int] = {("", ""): -1}    # empty field: id -1
        self.tokens: list[str] = []
        self._tok: dict[str, int] = {}
        self.ptr = array("q", [0])
        self.toks = array("q")

    def ids_of(self, keys: Sequence[tuple[str, str]]) -> Ids:
        """The id of each (value, qualifier) key, new distinct keys tokenised once.
        Column-wise (one dict pass per field, not a method call per cell): the fuzzy
        preparation of a 500,000-row file is ~2x cheaper this way."""
        ids = self.ids
        make = FIELD_TOKENS[self.field]
        new = [k for k in dict.fromkeys(keys) if k not in ids]
        base = len(self.ptr) - 1
        if self.field in _DIGIT_FIELDS and self._digit_values([a for a, _ in new]):
            ids.update(zip(new, range(base, base + len(new)), strict=True))
            return np.fromiter(map(ids.__getitem__, keys), dtype=np.int64, count=len(keys))
        per_value = [make(*k) for k in new]
        flat = list(chain.from_iterable(per_value))
        tok = self._tok
        for t in dict.fromkeys(flat):
            if t not in tok:
                tok[t] = len(self.tokens)
                self.tokens.append(t)
        base = len(self.ptr) - 1
        ids.update(zip(new, range(base, base + len(new)), strict=True))
        self.ptr.extend(islice(accumulate(map(len, per_value), initial=self.ptr[-1]), 1, None))
        self.toks.extend(map(tok.__getitem__, flat))
        return np.fromiter(map(ids.__getitem__, keys), dtype=np.int64, count=len(keys))

    def _digit_values(self, values: list[str]) -> bool:
        """Tokens of identifier values (``digit_tokens``: position + digit pair) for many
        values of one length at once with NumPy (a file's NIRs and phones are nearly
        all distinct: 12 f-strings and dict look-ups per value otherwise). False, with
        nothing changed, if the values are not all of one length over 0-9/A/B."""
        n = len(values)
        if n == 0:
            return True
        width = len(values[0])
        raw = "".join(values).encode("latin-1", "replace")
        if width < 2 or (self.field == "N" and width > 13) or len(raw) != n * width \
                or any(len(v) != width for v in values):
            return False
        c = _DIGIT_CODE[np.frombuffer(raw, dtype=np.uint8).reshape(n, width)]
        if (c < 0).any():
            return False
        code = (np.arange(width - 1) * 12 + c[:, :-1]) * 12 + c[:, 1:]     # (n, width-1)
        table = np.zeros(12 * 12 * (width - 1), dtype=np.int64)
        for k in np.flatnonzero(np.bincount(code.ravel(), minlength=len(table))).tolist():
            i, rest = divmod(k, 144)
            t = f"{self.field}:{i}{_DIGIT_CHARS[rest // 12]}{_DIGIT_CHARS[rest % 12]}"
            j = self._tok.get(t)
            if j is None:
                j = self._tok[t] = len(self.tokens)
                self.tokens.append(t)
            table[k] = j
        self.toks.frombytes(table[code].astype(np.int64).tobytes())
        end = self.ptr[-1]
        self.ptr.frombytes((end + (width - 1) * np.arange(1, n + 1, dtype=np.int64)).tobytes())
        return True


_DIGIT_FIELDS = ("N", "T")
_DIGIT_CHARS = "0123456789AB"
_DIGIT_CODE = np.full(256, -1, dtype=np.int64)
_DIGIT_CODE[np.frombuffer(_DIGIT_CHARS.encode(), dtype=np.uint8)] = np.arange(12)


def _row_blocks(ident: MatchIdentity) -> list[str]:
    """``block_values`` of the row and, when it has both names, of its swapped form,
    without repeats, in that order: ``dict.fromkeys(block_values(i) +
    block_values(i.swapped()))`` (a test checks it) without the second identity and the
    repeated keys — the fuzzy preparation does this for every row of the file."""
    b, last, first, pc = ident.birth_date, ident.last, ident.first, ident.postcode
    sl = soundex(last) if last else ""
    sf = soundex(first) if first else ""
    out: list[str] = []
    dated = len(b) == 10
    if dated:
        y = b[:4]
        out.append("dob|" + b)
        if last:
            out.append("ys|" + y + sl)
        if first:
            out.append("fy|" + y + sf)
    if pc and first:
        out.append("pf|" + pc + sf)
    if last and first:
        a, c = (sl, sf) if sl <= sf else (sf, sl)
        out.append("ss|" + a + c)
        if dated:
            out.append("ys|" + y + sf)
            out.append("fy|" + y + sl)
        if pc:
            out.append("pf|" + pc + sl)
        return list(dict.fromkeys(out))
    return out


class FuzzyPrep:
    """Tenant-independent work of the fuzzy tier, done once per triage.

    For every row to match (``rows``: dump row numbers): the id of its value in each
    field's vocabulary (``value[f]``, -1 if empty; for the swapped name order, the
    first name as a last name and vice versa: ``swapped_L``/``swapped_F``) and its
    blocking values as ids into ``blocks`` (CSR: ``block_ptr``/``block_ids``). Per
    tenant, each distinct token and blocking value is HMAC'd once, each distinct field
    value's filter segment is built once, and rows' filters are gathered from those.
    """

    def __init__(self, rows: Sequence[RowKeys], todo: Iterable[int]) -> None:
        self.vocab = {f: _FieldVocab(f) for f in FIELDS}
        keep = [n for n in todo if rows[n].ident.last or rows[n].ident.birth_date]
        ids = [rows[n].ident for n in keep]
        v = self.vocab
        e = ""
        last = [(i.last, e) for i in ids]
        first = [(i.first, e) for i in ids]
        both = [bool(i.first and i.last) for i in ids]
        self.value = {
            "L": v["L"].ids_of(last),
            "F": v["F"].ids_of(first),
            "D": v["D"].ids_of([(i.birth_date, e) for i in ids]),
            "P": v["P"].ids_of([(i.postcode, i.sex if i.sex in ("M", "F") else e)
                                for i in ids]),
            "N": v["N"].ids_of([(i.nir[:13], e) for i in ids]),
            "E": v["E"].ids_of([(i.email, e) for i in ids]),
            "T": v["T"].ids_of([(i.phone, e) for i in ids]),
        }
        self.swapped_L = v["L"].ids_of([f if bo else la for la, f, bo in zip(last, first, both,
                                                                                strict=True)])
        self.swapped_F = v["F"].ids_of([la if bo else f for la, f, bo in zip(last, first, both,
                                                                                strict=True)])
        blk_id: dict[str, int] = {}
        per_row = [[blk_id.setdefault(bv, len(blk_id)) for bv in _row_blocks(i)] for i in ids]
        self.blocks = [bv.encode() for bv in blk_id]
        self.block_ptr = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in per_row], out=self.block_ptr[1:])
        self.block_ids = np.fromiter(chain.from_iterable(per_row), dtype=np.int64,
                                     count=int(self.block_ptr[-1]))
        # each (row, blocking value) entry's row, and the entries in blocking-value order
        self.entry_row = np.repeat(np.arange(len(ids), dtype=np.int64), np.diff(self.block_ptr))
        self.entry_order = np.argsort(self.block_ids, kind="stable")
        for voc in self.vocab.values():
            voc.ids = {}                 # only tokens and their CSR are needed from here
        self.rows = np.asarray(keep, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True)
class TenantRows:
    """A tenant's fuzzy-tier data as read from the store, compact and picklable (sent
    to a worker process): encodings sorted by patient id, blocking digests with the
    index of their patient. Blocks of patients without an encoding are dropped (they
    cannot be scored)."""

    pids: list[str]
    stored: list[bytes]                  # stored encodings, aligned with ``pids``
    block_digests: bytes                 # 8 bytes each
    block_patient: Ids

    @staticmethod
    def of(encodings: Iterable[tuple[str, bytes]],
           blocks: Iterable[tuple[bytes, str]]) -> TenantRows:
        enc = sorted((pid, bytes(raw)) for pid, raw in encodings)
        slot = {p: i for i, (p, _) in enumerate(enc)}
        ds: list[bytes] = []
        ps: list[int] = []
        for d, pid in blocks:
            i = slot.get(pid)
            if i is not None:
                ds.append(bytes(d))
                ps.append(i)
        return TenantRows([p for p, _ in enc], [r for _, r in enc], b"".join(ds),
                          np.asarray(ps, dtype=np.int64))

    @staticmethod
    def packed(rows: Iterable[tuple[str, bytes, bytes | None]]) -> TenantRows:
        """From stored rows (patient id, encoding, blocking keys packed 8 bytes each)."""
        enc = sorted((pid, bytes(raw), bytes(blocks or b"")) for pid, raw, blocks in rows)
        counts = np.fromiter((len(b) // 8 for _, _, b in enc), dtype=np.int64, count=len(enc))
        return TenantRows([p for p, _, _ in enc], [r for _, r, _ in enc],
                          b"".join(b for _, _, b in enc),
                          np.repeat(np.arange(len(enc), dtype=np.int64), counts))


@dataclass(frozen=True, slots=True)
class TenantEncodings:
    """A tenant's stored encodings as original filters, and its blocking digests."""

    pids: list[str]                      # sorted: index order is patient-id order
    words: Words                         # (patients, WORDS) original filters
    counts: Counts                       # (patients, fields) popcounts
    block_digests: npt.NDArray[np.uint64]    # sorted
    block_patient: Ids                   # aligned with ``block_digests``

    @staticmethod
    def build(encoder: ClkEncoder, rows: TenantRows) -> TenantEncodings:
        words = encoder.original_words(rows.stored) if rows.stored else \
            np.zeros((0, WORDS), dtype=np.uint64)
        dig = np.frombuffer(rows.block_digests, dtype=U64).astype(np.uint64, copy=False)
        order = np.argsort(dig, kind="stable")
        return TenantEncodings(rows.pids, words, field_counts(words), dig[order],
                               rows.block_patient[order])

    @staticmethod
    def from_maps(encoder: ClkEncoder, blocks: Mapping[bytes, Sequence[str]],
                  encodings: Mapping[str, bytes]) -> TenantEncodings:
        return TenantEncodings.build(encoder, TenantRows.of(
            encodings.items(), ((d, p) for d, ps in blocks.items() for p in ps)))


# (row, candidate) pairs scored per NumPy batch: small enough for the working arrays
# (~256 KiB each) to stay in cache.
PAIR_BATCH = 1 << 15


def _or_segments(x: Words, ptr: Ids) -> Words:
    """Bitwise OR of the row groups ``x[ptr[i]:ptr[i+1]]``, plus a last all-zero row
    (so that value id -1, an empty field, selects zeros)."""
    m = len(ptr) - 1
    out = np.zeros((m + 1, x.shape[1]), dtype=np.uint64)
    nonempty = ptr[1:] > ptr[:-1]
    if nonempty.any():
        out[:m][nonempty] = np.bitwise_or.reduceat(x, ptr[:-1][nonempty], axis=0)
    return out


def _value_segments(voc: _FieldVocab, encoder: ClkEncoder, native: bool = True) -> Words:
    """Each distinct value's filter segment (value id -> words of its field segment),
    plus a last all-zero row (value id -1, an empty field)."""
    tm = encoder.token_segments(voc.field, voc.tokens)
    toks = np.frombuffer(voc.toks, dtype=np.int64) if len(voc.toks) else np.zeros(0, np.int64)
    ptr = np.frombuffer(voc.ptr, dtype=np.int64)
    if native and _scoring is not None and tm.shape[1]:
        out = np.zeros((len(ptr), tm.shape[1]), dtype=np.uint64)
        _scoring.or_groups(np.ascontiguousarray(tm), toks, ptr, out)
        return out
    return _or_segments(tm[toks], ptr)


def row_filters(prep: FuzzyPrep, encoder: ClkEncoder, row_major: bool = False
                ) -> tuple[Words, Words]:
    """The rows' original filters under one tenant's keys, word-major: (WORDS, rows)
    for the name order as read, and the L and F words (7, rows) of the swapped order;
    (rows, WORDS) and (rows, 7) with ``row_major`` (the C scorer's layout)."""
    n, sw = len(prep), FIELD_WORDS[1][2]
    out = np.empty((n, WORDS) if row_major else (WORDS, n), dtype=np.uint64)
    swapped = np.empty((n, sw) if row_major else (sw, n), dtype=np.uint64)
    for f, a, b in FIELD_WORDS:
        seg = _value_segments(prep.vocab[f], encoder, native=row_major)
        pick = [(prep.value[f], out)]
        if f == "L":
            pick.append((prep.swapped_L, swapped))
        elif f == "F":
            pick.append((prep.swapped_F, swapped))
        for ids, dest in pick:
            if row_major:
                dest[:, a:b] = seg[ids]
            else:
                dest[a:b] = seg[ids].T
    return out, swapped


def _counts_rows(words: Words) -> npt.NDArray[np.float64]:
    """Per-field popcounts (n, fields) of row-major filters (n, words), as floats."""
    starts = [a for _, a, b in FIELD_WORDS if b <= words.shape[1]]
    return np.add.reduceat(np.bitwise_count(words), starts, axis=1,
                           dtype=np.int64).astype(np.float64)


def _counts_t(words_t: Words) -> npt.NDArray[np.float64]:
    """Per-field popcounts (fields, n) of word-major filters (words, n), as floats."""
    c = np.bitwise_count(words_t)
    return np.stack([c[a:b].sum(axis=0, dtype=np.int64) for _, a, b in FIELD_WORDS
                     if b <= len(words_t)]).astype(np.float64)


_W2 = tuple(WEIGHTS[f] * 2 for f, _, _ in FIELD_WORDS)
_W = tuple(WEIGHTS[f] for f, _, _ in FIELD_WORDS)

_scoring: ModuleType | None
try:  # optional C loops (_scoring.c): the same floats as _score_batch, ~10x faster
    from labvault.breach import _scoring
except ImportError:  # not built (no C compiler where labvault was installed)
    _scoring = None
_LO = np.array([a for _, a, _ in FIELD_WORDS], dtype=np.int64)
_HI = np.array([b for _, _, b in FIELD_WORDS], dtype=np.int64)
_W2_A = np.array(_W2, dtype=np.float64)
_W_A = np.array(_W, dtype=np.float64)


def native_scoring() -> bool:
    """Whether the optional C scoring loop was built (CI requires it)."""
    return _scoring is not None


def _score_batch(rf: Words, rsw: Words, rc: npt.NDArray[np.float64],
                 rc_sw: npt.NDArray[np.float64], cw: Words, cc: npt.NDArray[np.float64],
                 pr: Ids, pp: Ids) -> Scores:
    """Scores of (row ``pr[i]``, patient ``pp[i]``) pairs, best of both name orders.

    Word-major inputs: rows' filters ``rf`` (16, R) and swapped L/F words ``rsw`` (7, R),
    their per-field counts ``rc`` (7, R) / ``rc_sw`` (2, R); patients' filters ``cw``
    (16, P) and counts ``cc`` (7, P). The same IEEE operations in the same order as
    ``encoding.score`` (and ``score_counts``): (w*2)*inter/(pa+pb) per valid field,
    summed field by field from 0.0, divided by the summed weights.
    """
    n = len(pp)
    x = np.empty(n, dtype=np.uint64)
    y = np.empty(n, dtype=np.uint64)
    c = np.empty(n, dtype=np.uint64)
    total = np.zeros(n)
    weight = np.zeros(n)
    total_sw = np.zeros(n)
    weight_sw = np.zeros(n)
    rest: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for k, (_, a, b) in enumerate(FIELD_WORDS):
            inter = np.zeros(n, dtype=np.uint16)
            inter_sw = np.zeros(n, dtype=np.uint16) if k < 2 else inter
            for w in range(a, b):
                np.take(cw[w], pp, out=c)
                np.take(rf[w], pr, out=x)
                np.bitwise_and(x, c, out=x)
                inter += np.bitwise_count(x)
                if k < 2:
                    np.take(rsw[w], pr, out=y)
                    np.bitwise_and(y, c, out=y)
                    inter_sw += np.bitwise_count(y)
            pb = cc[k][pp]
            for variant in ((0, 1) if k < 2 else (0,)):
                pa = (rc if variant == 0 else rc_sw)[k][pr]
                iv = inter if variant == 0 else inter_sw
                valid = (pa > 0) & (pb > 0)
                term = np.where(valid, iv * _W2[k] / (pa + pb), 0.0)
                wt = np.where(valid, _W[k], 0.0)
                if variant == 0:
                    total += term
                    weight += wt
                    if k >= 2:
                        rest.append((term, wt))
                else:
                    total_sw += term
                    weight_sw += wt
        for term, wt in rest:
            total_sw += term
            weight_sw += wt
        s = np.where(weight >= MIN_WEIGHT, total / weight, 0.0)
        s_sw = np.where(weight_sw >= MIN_WEIGHT, total_sw / weight_sw, 0.0)
    return np.maximum(s, s_sw)


class PairScorer:
    """Scores (row, patient) pairs of one tenant: ``_score_batch`` in NumPy on
    word-major arrays (words or fields first), or the same floats in the C loops
    (``_scoring.c``) on row-major arrays (rows or patients first) with ``native``."""

    def __init__(self, rf: Words, rsw: Words, rc: npt.NDArray[np.float64],
                 rc_sw: npt.NDArray[np.float64], cw: Words, cc: npt.NDArray[np.float64],
                 native: bool) -> None:
        if native and _scoring is None:
            raise RuntimeError("the C scoring loops were not built")
        self.native = native
        c = np.ascontiguousarray
        self.arrays = (c(rf), c(rsw), c(rc), c(rc_sw), c(cw), c(cc))
        self.rows = rf.shape[0] if native else rf.shape[1]

    def __call__(self, pr: Ids, pp: Ids) -> Scores:
        if not self.native or _scoring is None:
            return _score_batch(*self.arrays, pr, pp)
        out = np.empty(len(pp), dtype=np.float64)
        c = np.ascontiguousarray
        _scoring.score_pairs(*self.arrays, _LO, _HI, _W2_A, _W_A, MIN_WEIGHT,
                             c(pr, dtype=np.int64), c(pp, dtype=np.int64), out)
        return out

    def best(self, e_row: Ids, e_lo: Ids, e_cnt: Ids, block_patient: Ids,
             floor: float = 0.0) -> tuple[Scores, Ids]:
        """C loop only: each row's best score over the candidates of its entries, and
        the smallest patient index among equal best scores (``big`` where none); a
        row whose best is below ``floor`` may get a lower score than its best."""
        assert _scoring is not None and self.native
        top = np.zeros(self.rows, dtype=np.float64)
        win = np.full(self.rows, np.iinfo(np.int64).max, dtype=np.int64)
        c = np.ascontiguousarray
        _scoring.best_pairs(*self.arrays, _LO, _HI, _W2_A, _W_A, MIN_WEIGHT,
                            c(e_row, dtype=np.int64), c(e_lo, dtype=np.int64),
                            c(e_cnt, dtype=np.int64), c(block_patient, dtype=np.int64),
                            floor, top, win)
        return top, win


def score_pairs(rf: Words, rsw: Words, rc: npt.NDArray[np.float64],
                rc_sw: npt.NDArray[np.float64], cw: Words, cc: npt.NDArray[np.float64],
                pr: Ids, pp: Ids, native: bool = True) -> Scores:
    """``_score_batch`` of word-major inputs, in the C loop (on transposed copies) when
    it was built and ``native``."""
    if native and _scoring is not None:
        return PairScorer(rf.T, rsw.T, rc.T, rc_sw.T, cw.T, cc.T, native=True)(pr, pp)
    return PairScorer(rf, rsw, rc, rc_sw, cw, cc, native=False)(pr, pp)


def fuzzy_tenant(prep: FuzzyPrep, encoder: ClkEncoder, data: TenantEncodings,
                 min_score: float = 0.0, native: bool = True
                 ) -> Iterator[tuple[int, str, float]]:
    """Fuzzy tier for one tenant: (row, best patient, score) for rows whose best
    candidate scores above 0 and at least ``min_score``.

    Candidates are the patients sharing a keyed blocking digest with the row (each
    distinct blocking value HMAC'd once, looked up by binary search in the tenant's
    sorted digests). Each (row, candidate) pair is scored by the weighted per-field
    Dice coefficients (``_score_batch``, the same floats as ``encoding.score``) of the
    row's filter and of its swapped-names filter against the patient's stored filter,
    in batches of about ``PAIR_BATCH`` pairs. A row's winner is the candidate with the
    best score, the smallest patient id among equal scores (the same as
    ``fuzzy_tenant_reference``).
    """
    if len(prep) == 0 or len(data.block_digests) == 0:
        return
    vd = np.frombuffer(encoder.block_macs(prep.blocks), dtype=U64)
    v_lo, v_cnt = _ranges(data.block_digests, vd)
    e_lo = v_lo[prep.block_ids]
    e_cnt = v_cnt[prep.block_ids]
    e_cs = np.concatenate(([0], np.cumsum(e_cnt)))
    row_cnt = e_cs[prep.block_ptr[1:]] - e_cs[prep.block_ptr[:-1]]
    if not row_cnt.any():
        return
    if _scoring is not None and native:
        # the C loops, on row-major arrays built directly in that layout
        rf, rsw = row_filters(prep, encoder, row_major=True)
        scorer = PairScorer(rf, rsw, _counts_rows(rf), _counts_rows(rsw), data.words,
                            data.counts.astype(np.float64), native=True)
        # Entries in block order: a block's patients stay in cache across its rows.
        order = prep.entry_order
        e_cnt_o = e_cnt[order]
        live = order[e_cnt_o > 0]
        top, win = scorer.best(prep.entry_row[live], e_lo[live], e_cnt[live],
                               data.block_patient, min_score)
        for k in np.flatnonzero((top > 0.0) & (top >= min_score)).tolist():
            yield int(prep.rows[k]), data.pids[int(win[k])], float(top[k])
        return
    rf, rsw = row_filters(prep, encoder)
    scorer = PairScorer(rf, rsw, _counts_t(rf), _counts_t(rsw), data.words.T,
                        data.counts.T.astype(np.float64), native=False)
    e_row = np.repeat(np.arange(len(prep)), np.diff(prep.block_ptr))
    row_cs = np.concatenate(([0], np.cumsum(row_cnt)))
    big = np.iinfo(np.int64).max
    a = 0
    while a < len(prep):
        b = int(np.searchsorted(row_cs, row_cs[a] + PAIR_BATCH, side="right")) - 1
        b = min(max(b, a + 1), len(prep))
        e0, e1 = int(prep.block_ptr[a]), int(prep.block_ptr[b])
        cnt = e_cnt[e0:e1]
        total = int(cnt.sum())
        if total:
            rep = np.repeat(np.arange(e0, e1), cnt)
            offs = np.arange(total) - np.repeat(e_cs[e0:e1] - e_cs[e0], cnt)
            pp = data.block_patient[e_lo[rep] + offs]
            pr = e_row[rep]
            s = scorer(pr, pp)
            rows_here = np.flatnonzero(row_cnt[a:b]) + a
            lens = row_cnt[rows_here]
            starts = row_cs[rows_here] - row_cs[a]
            top = np.maximum.reduceat(s, starts)
            seg = np.repeat(np.arange(len(rows_here)), lens)
            win = np.minimum.reduceat(np.where(s == top[seg], pp, big), starts)
            for k in np.flatnonzero((top > 0.0) & (top >= min_score)).tolist():
                yield int(prep.rows[rows_here[k]]), data.pids[int(win[k])], float(top[k])
        a = b


def fuzzy_tenant_reference(rows: Sequence[RowKeys], todo: Iterable[int], encoder: ClkEncoder,
                           blocks: Mapping[bytes, Sequence[str]],
                           encodings: Mapping[str, bytes]) -> Iterator[tuple[int, str, float]]:
    """Pure-Python fuzzy tier (one ``encoding.score`` call per candidate and name
    order): the reference ``fuzzy_tenant`` must agree with exactly (tests check it).

    Candidates are the patients sharing a keyed blocking digest with the row; each is
    scored on the row's filter and on the filter with first and last names swapped;
    the winner is the best score, the smallest patient id among equal scores.
    """
    mask = encoder.mask
    fm = encoder.field_masks
    for n in todo:
        ident = rows[n].ident
        if not (ident.last or ident.birth_date):
            continue
        variants = [ident] if not (ident.first and ident.last) else [ident, ident.swapped()]
        cand: set[str] = set()
        for v in variants:
            for d in encoder.blocks(v):
                cand.update(blocks.get(d, ()))
        filters = [encoder.permuted(encoder.filter(v)) for v in variants]
        best, top = "", 0.0
        for pid in cand:
            raw = encodings.get(pid)
            if raw is None:
                continue
            sf = int.from_bytes(raw, "big") & mask
            for f in filters:
                s = score(f, sf, fm)
                if s > top or (s == top and s > 0.0 and pid < best):
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
