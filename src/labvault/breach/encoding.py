"""Keyed encodings for matching a leaked file to patients without opening the store.

Three things, all keyed with secrets derived from the tenant's index key
(``KeyRing.tenant_secret(tenant, "index", version, label)``), so nobody without the
key provider can compute or test them, and encodings of two tenants cannot be
compared with each other:

- ``KeyedDigest``: HMAC-SHA256 with the key schedule done once, and a batch form
  (``mac_many``) that runs in native code when built. Byte-identical to
  ``blind_index.digest`` (a property test checks it); the batch form is what makes
  testing a 500,000-row dump against 30 laboratories' indexes affordable.
- ``ClkEncoder``: a cryptographic long-term key (CLK, Schnell et al. 2011): one
  1024-bit Bloom filter per person, into which the q-grams (bigrams) of the last and
  first names, the parts of the birth date and of the postcode are hashed, each
  token at ``k`` positions given by keyed double hashing (k per field = field
  weight). Stored *balanced* (Berger/Schnell 2016): the filter followed by its
  complement, bytes shuffled by a keyed permutation, so every stored encoding has
  exactly 1024 bits set: the Hamming weight no longer tells the length of names.
  ``mask`` selects the original half, so the Dice coefficient is computed on the
  original filter.
- blocking keys: 64-bit keyed digests of coarse values (full birth date; birth
  year + Soundex of the last name; unordered pair of Soundex codes of both names),
  stored per patient; a dump row is compared only with patients that share one.

Thresholds are in ``FUZZY_ACCEPT``; docs/breach.md gives their calibration and the
known attacks on Bloom-filter encodings with what this design does about each.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from labvault.crypto import blind_index as bi
from labvault.crypto.digests import HmacSha256

BITS = 1024
BYTES = BITS // 8
STORED_BYTES = 2 * BYTES    # a stored (balanced) encoding: the filter and its complement, shuffled
# The filter is cut into field segments (bit ranges); a token of field X sets K[X]
# positions inside X's segment, so the similarity of each field can be read apart
# (field-level Bloom filters in one record-level encoding).
SEGMENTS = {"L": (0, 256), "F": (256, 448), "D": (448, 640), "P": (640, 704),
            "N": (704, 832), "E": (832, 960), "T": (960, 1024)}
K = {"L": 8, "F": 8, "D": 10, "P": 6, "S": 6, "N": 5, "E": 5, "T": 4}
SEGMENT_OF = {"L": "L", "F": "F", "D": "D", "P": "P", "S": "P", "N": "N", "E": "E", "T": "T"}
# Weights of the per-field Dice coefficients in the match score (fields missing on
# either side are left out and the rest renormalised). Identifiers (NIR, e-mail,
# phone) are encoded too: a mistyped identifier still agrees on most of its q-grams.
WEIGHTS = {"L": 0.20, "F": 0.15, "D": 0.25, "P": 0.05, "N": 0.15, "E": 0.10, "T": 0.10}
# A pair is a match if its score is at least this (and it is the best candidate of
# the row). Calibrated on the test generator: see docs/breach.md ("Thresholds").
FUZZY_ACCEPT = 0.72
# Fields compared must weigh at least this much (names + postcode + one identifier).
MIN_WEIGHT = 0.4
ENCODING_VERSION = 1

# Vectorised scoring works on the original filter as 16 little-endian 64-bit words;
# every field segment is a whole number of words (checked here), so a field's popcount
# is the sum of its words' popcounts.
WORDS = BITS // 64
if any(lo % 64 or hi % 64 for lo, hi in SEGMENTS.values()):  # pragma: no cover - constants
    raise AssertionError("field segments must be 64-bit aligned")
FIELD_WORDS = tuple((f, lo // 64, hi // 64) for f, (lo, hi) in SEGMENTS.items())
Words = npt.NDArray[np.uint64]
Counts = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float64]

CLK_LABEL = "breach/clk/v1"
PERM_LABEL = "breach/clk-permutation/v1"
BLOCK_LABEL = "breach/block/v1"


class KeyedDigest(HmacSha256):
    """HMAC-SHA256 under one key (pads' states precomputed; ``mac_many`` in native
    code when built, see ``labvault.crypto.digests.HmacSha256``)."""

    __slots__ = ()

    def mac(self, message: bytes) -> bytes:
        return self.digest(message)

    def mac_many(self, messages: Sequence[bytes], size: int = 32) -> bytes:
        return self.digest_many(messages, size)

    def index(self, kind: str, normalised: str) -> bytes:
        """Same bytes as ``blind_index.digest(key, kind, normalised)``."""
        return self.mac(kind.encode() + b"\x00" + normalised.encode())[:bi.DIGEST_BYTES]


_NOT_DIGIT = re.compile(r"[^0-9]")
_NOT_NIR = re.compile(r"[^0-9AB]")
# Folded names repeat (a dump has far fewer distinct names than rows).
_fold = lru_cache(maxsize=1 << 16)(bi.fold_name)


def _digits(s: str) -> str:
    """The characters of ``s`` for which ``str.isdigit`` holds (regex fast path for ASCII)."""
    return _NOT_DIGIT.sub("", s) if s.isascii() else "".join(c for c in s if c.isdigit())


def _nir_chars(s: str) -> str:
    return _NOT_NIR.sub("", s) if s.isascii() else \
        "".join(c for c in s if c.isdigit() or c in "AB")


# -- identity as the encoders see it ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MatchIdentity:
    """Folded names (A-Z only), ISO birth date, 5-digit postcode, sex M/F; any may be empty."""

    last: str = ""
    first: str = ""
    birth_date: str = ""
    postcode: str = ""
    sex: str = ""
    nir: str = ""          # 13-15 characters, possibly mistyped (no key check here)
    email: str = ""        # lower case
    phone: str = ""        # 9 national digits of a French number

    @staticmethod
    def of(last: str | None, first: str | None, birth: date | str | None,
           postcode: str | None, sex: str | None = None, nir: str | None = None,
           email: str | None = None, phone: str | None = None) -> MatchIdentity:
        b = birth.isoformat() if isinstance(birth, date) else (birth or "")
        pc = _digits(postcode or "")
        n = _nir_chars((nir or "").upper())
        ph = _digits(phone or "")
        return MatchIdentity(_fold(last or ""), _fold(first or ""), b,
                             pc if len(pc) == 5 else "", (sex or "").upper()[:1],
                             n if 13 <= len(n) <= 15 else "",
                             (email or "").strip().lower()[:100],
                             ph[-9:] if len(ph) >= 9 else "")

    def swapped(self) -> MatchIdentity:
        return MatchIdentity(self.first, self.last, self.birth_date, self.postcode, self.sex,
                             self.nir, self.email, self.phone)


def bigrams(prefix: str, s: str) -> list[str]:
    if not s:
        return []
    p = f"_{s}_"
    return [f"{prefix}:{p[i:i + 2]}" for i in range(len(p) - 1)]


def date_tokens(birth_date: str) -> list[str]:
    if len(birth_date) != 10:
        return []
    y, mo, d = birth_date[:4], birth_date[5:7], birth_date[8:10]
    return [f"D:y{y}", f"D:m{mo}", f"D:d{d}", f"D:ym{y}{mo}", f"D:md{mo}{d}", f"D:yd{y}{d}"]


def digit_tokens(prefix: str, digits: str) -> list[str]:
    """Identifiers: positional digit pairs (a typo changes two of them)."""
    return [f"{prefix}:{i}{digits[i:i + 2]}" for i in range(len(digits) - 1)]


def email_tokens(email: str) -> list[str]:
    if not email:
        return []
    return [*bigrams("E", email.split("@")[0]), f"E:@{email.split('@')[-1]}"]


def postcode_tokens(postcode: str, sex: str) -> list[str]:
    out = [f"P:{postcode}", f"P:d{postcode[:2]}", f"P:p{postcode[:3]}"] if postcode else []
    if sex in ("M", "F"):
        out.append(f"S:{sex}")
    return out


def tokens(m: MatchIdentity) -> list[str]:
    return (bigrams("L", m.last) + bigrams("F", m.first) + date_tokens(m.birth_date)
            + digit_tokens("N", m.nir[:13]) + digit_tokens("T", m.phone)
            + email_tokens(m.email) + postcode_tokens(m.postcode, m.sex))


# The tokens of each field segment from the field's value and, for P, the sex
# (``tokens`` is their concatenation).
FIELD_TOKENS: dict[str, Callable[[str, str], list[str]]] = {
    "L": lambda a, _: bigrams("L", a),
    "F": lambda a, _: bigrams("F", a),
    "D": lambda a, _: date_tokens(a),
    "P": postcode_tokens,
    "N": lambda a, _: digit_tokens("N", a[:13]),
    "E": lambda a, _: email_tokens(a),
    "T": lambda a, _: digit_tokens("T", a),
}
_VALUE_CACHE = 200_000

_SOUNDEX = str.maketrans("AEIOUYHWBFPVCGJKQSXZDTLMNR", "000000..111122222222334556")


@lru_cache(maxsize=1 << 16)
def soundex(name: str) -> str:
    """American Soundex of a folded name (A-Z): 'DUPONT' -> 'D153'."""
    if not name:
        return ""
    codes = name.translate(_SOUNDEX)
    out = [name[0]]
    last = codes[0]
    for c in codes[1:]:
        if c == ".":          # H and W do not separate equal codes
            continue
        if c != "0" and c != last:
            out.append(c)
        last = c
    return ("".join(out) + "000")[:4]


def block_values(m: MatchIdentity) -> list[str]:
    """Coarse keys; a row is compared with the patients sharing at least one. Chosen so
    any two of: a typo in a name, swapped names, an error in the day or month of
    birth, a missing birth date or postcode leave one key intact."""
    out: list[str] = []
    if len(m.birth_date) == 10:
        out.append("dob|" + m.birth_date)
        if m.last:
            out.append(f"ys|{m.birth_date[:4]}{soundex(m.last)}")
        if m.first:
            out.append(f"fy|{m.birth_date[:4]}{soundex(m.first)}")
    if m.postcode and m.first:
        out.append(f"pf|{m.postcode}{soundex(m.first)}")
    if m.last and m.first:
        a, b = sorted((soundex(m.last), soundex(m.first)))
        out.append(f"ss|{a}{b}")
    return out


class ClkEncoder:
    """CLK and blocking keys of one tenant (one index-key version)."""

    def __init__(self, clk_secret: bytes, perm_secret: bytes, block_secret: bytes) -> None:
        self._clk = KeyedDigest(clk_secret)
        self._block = KeyedDigest(block_secret)
        self._masks: dict[str, int] = {}
        self._stored: dict[str, int] = {}
        self._blocks: dict[str, bytes] = {}
        self._values: dict[tuple[str, str, str], int] = {}
        order = _keyed_permutation(perm_secret, 2 * BYTES)
        self._perm = np.asarray(order, dtype=np.intp)   # fancy indexing: ~8x itemgetter
        pos = [0] * (2 * BYTES)
        for i, o in enumerate(order):
            pos[o] = i
        # stored[_original_le[j]] is byte j of the original filter, little-endian
        self._original_le = np.array([pos[BYTES - 1 - j] for j in range(BYTES)], dtype=np.intp)
        # The bits of the permuted balanced filter that come from the original half,
        # and from each field segment of it.
        self.mask = int.from_bytes(self._shuffle(b"\xff" * BYTES + b"\x00" * BYTES), "big")
        self.field_masks = {f: self.permuted(((1 << (hi - lo)) - 1) << lo)
                            for f, (lo, hi) in SEGMENTS.items()}

    def permuted(self, f: int) -> int:
        """Where the bits of an original filter land in the stored (balanced) form."""
        return int.from_bytes(self._shuffle(f.to_bytes(BYTES, "big") + bytes(BYTES)), "big")

    def _shuffle(self, data: bytes) -> bytes:
        return np.frombuffer(data, dtype=np.uint8)[self._perm].tobytes()

    def token_mask(self, token: str) -> int:
        m = self._masks.get(token)
        if m is None:
            h = self._clk.mac(token.encode())
            h1 = int.from_bytes(h[:8], "big")
            h2 = int.from_bytes(h[8:16], "big") | 1
            lo, hi = SEGMENTS[SEGMENT_OF[token[0]]]
            m = 0
            for i in range(K[token[0]]):
                m |= 1 << (lo + (h1 + i * h2) % (hi - lo))
            self._masks[token] = m
        return m

    def token_segments(self, field: str, tokens: Sequence[str]) -> Words:
        """``token_mask(t) >> lo`` of tokens of one field segment [lo, hi), as an
        (n, (hi - lo) // 64) array of uint64 words: the same positions, computed with
        NumPy ((h1 + i*h2) mod m == (h1 mod m + i*(h2 mod m)) mod m, no overflow)."""
        lo, hi = SEGMENTS[field]
        m = hi - lo
        n = len(tokens)
        if n == 0:
            return np.zeros((0, m // 64), dtype=np.uint64)
        if any(SEGMENT_OF[t[0]] != field for t in tokens):
            raise ValueError(f"tokens outside segment {field}")
        h = np.frombuffer(self._clk.mac_many([t.encode() for t in tokens], 16),
                          dtype=np.uint8).reshape(n, 16)
        h1 = np.ascontiguousarray(h[:, :8]).view(">u8").ravel().astype(np.uint64) % m
        h2 = (np.ascontiguousarray(h[:, 8:16]).view(">u8").ravel().astype(np.uint64)
              | np.uint64(1)) % m
        k = np.array([K[t[0]] for t in tokens], dtype=np.int64)
        rows = np.repeat(np.arange(n), k)
        i = (np.arange(len(rows)) - np.repeat(np.cumsum(k) - k, k)).astype(np.uint64)
        pos = ((h1[rows] + i * h2[rows]) % np.uint64(m)).astype(np.intp)
        # Set the bits in a (n, m) boolean matrix and pack it little-endian: bit p of
        # the segment is bit p % 64 of word p // 64 (as ``token_mask(t) >> lo``).
        # ~5x faster than ``np.bitwise_or.at`` on the words.
        bits = np.zeros((n, m), dtype=np.bool_)
        bits[rows, pos] = True
        packed = np.packbits(bits, axis=1, bitorder="little")
        return packed.view("<u8").astype(np.uint64, copy=False).reshape(n, m // 64)

    def stored_token_mask(self, token: str) -> int:
        """A token's positions in the stored (balanced, shuffled) form's original half."""
        m = self._stored.get(token)
        if m is None:
            m = self.permuted(self.token_mask(token))
            self._stored[token] = m
        return m

    def filter(self, m: MatchIdentity) -> int:
        """The OR of ``token_mask`` over ``tokens(m)``. Names, birth dates and postcodes
        repeat from patient to patient: their part is kept per value (bounded), so a
        patient import ORs ~35 token masks instead of ~65."""
        f = (self._value_mask("L", m.last) | self._value_mask("F", m.first)
             | self._value_mask("D", m.birth_date) | self._value_mask("P", m.postcode, m.sex))
        for t in digit_tokens("N", m.nir[:13]) + digit_tokens("T", m.phone) + email_tokens(m.email):
            f |= self.token_mask(t)
        return f

    def _value_mask(self, field: str, a: str, b: str = "") -> int:
        key = (field, a, b)
        m = self._values.get(key)
        if m is None:
            m = 0
            for t in FIELD_TOKENS[field](a, b):
                m |= self.token_mask(t)
            if len(self._values) < _VALUE_CACHE:
                self._values[key] = m
        return m

    def balanced(self, f: int) -> bytes:
        """The stored form: keyed byte shuffle of filter || complement (1024 bits set)."""
        raw = f.to_bytes(BYTES, "big") + ((~f) & ((1 << BITS) - 1)).to_bytes(BYTES, "big")
        return self._shuffle(raw)

    def encode(self, m: MatchIdentity) -> bytes:
        return self.balanced(self.filter(m))

    def block(self, value: str) -> bytes:
        d = self._blocks.get(value)
        if d is None:
            d = self._block.mac(value.encode())[:8]
            self._blocks[value] = d
        return d

    def block_macs(self, values: Sequence[bytes]) -> bytes:
        """The blocking keys (8-byte keyed digests, as ``block``) of many values,
        concatenated."""
        return self._block.mac_many(values, 8)

    def blocks(self, m: MatchIdentity) -> list[bytes]:
        return [self.block(v) for v in block_values(m)]

    def original_half(self, stored: bytes) -> int:
        return int.from_bytes(stored, "big") & self.mask

    def original_words(self, stored: Sequence[bytes]) -> Words:
        """Original filters of stored encodings, as an (n, WORDS) array of uint64."""
        if any(len(s) != STORED_BYTES for s in stored):
            raise ValueError(f"stored encodings must be {STORED_BYTES} bytes")
        raw = np.frombuffer(b"".join(stored), dtype=np.uint8).reshape(len(stored), 2 * BYTES)
        le = np.ascontiguousarray(raw[:, self._original_le])
        return le.view(np.dtype("<u8")).astype(np.uint64, copy=False).reshape(len(stored), WORDS)


def filter_words(filters: Sequence[int]) -> Words:
    """Original-form filters (ints of ``BITS`` bits) as an (n, WORDS) array of uint64."""
    raw = b"".join(f.to_bytes(BYTES, "little") for f in filters)
    words = np.frombuffer(raw, dtype=np.dtype("<u8")).astype(np.uint64, copy=False)
    return words.reshape(len(filters), WORDS)


def field_counts(words: Words) -> Counts:
    """Per-field popcounts (n, len(SEGMENTS)) of (n, WORDS) filters, in ``SEGMENTS`` order."""
    c = np.bitwise_count(words)
    return np.stack([c[:, a:b].sum(axis=1, dtype=np.int64) for _, a, b in FIELD_WORDS],
                    axis=1)


def score_words(a: Words, a_counts: Counts, b: Words, b_counts: Counts) -> Scores:
    """``score`` of n pairs of original-form filters at once (row i of ``a`` vs of ``b``)."""
    return score_counts(field_counts(a & b), a_counts, b_counts)


def score_counts(inter: Counts, a_counts: Counts, b_counts: Counts) -> Scores:
    """``score`` of n pairs from their per-field popcounts: of the intersections, of
    the first and of the second filters (each (n, len(SEGMENTS))).

    Bit-for-bit the same floats as ``score``: the same IEEE operations in the same
    order (field by field, skipped fields add 0.0, which changes no sum).
    """
    n = len(inter)
    total = np.zeros(n, dtype=np.float64)
    weight = np.zeros(n, dtype=np.float64)
    for k, (f, _, _) in enumerate(FIELD_WORDS):
        pa, pb = a_counts[:, k], b_counts[:, k]
        valid = (pa > 0) & (pb > 0)
        w = WEIGHTS[f]
        term = w * 2 * inter[:, k] / np.where(valid, pa + pb, 1)
        total += np.where(valid, term, 0.0)
        weight += np.where(valid, w, 0.0)
    ok = weight >= MIN_WEIGHT
    return np.where(ok, total / np.where(ok, weight, 1.0), 0.0)


def score(a: int, b: int, field_masks: dict[str, int]) -> float:
    """Weighted per-field Dice of two stored-form filters; fields empty on either side
    do not count (a missing postcode neither helps nor hurts)."""
    total = weight = 0.0
    for f, m in field_masks.items():
        fa, fb = a & m, b & m
        pa, pb = fa.bit_count(), fb.bit_count()
        if pa == 0 or pb == 0:
            continue
        w = WEIGHTS[f]
        total += w * 2 * (fa & fb).bit_count() / (pa + pb)
        weight += w
    return total / weight if weight >= MIN_WEIGHT else 0.0


def dice(a: int, b: int) -> float:
    """Dice coefficient of two filters (as ints restricted to the same bit set)."""
    pa, pb = a.bit_count(), b.bit_count()
    if pa + pb == 0:
        return 0.0
    return 2 * (a & b).bit_count() / (pa + pb)


def _keyed_permutation(secret: bytes, n: int) -> list[int]:
    """Fisher-Yates driven by HMAC-SHA256 in counter mode (deterministic per key)."""
    kd = KeyedDigest(secret)
    stream: list[int] = []
    counter = 0

    def draw() -> int:
        nonlocal counter
        if not stream:
            block = kd.mac(counter.to_bytes(8, "big"))
            counter += 1
            stream.extend(int.from_bytes(block[i:i + 4], "big") for i in range(0, 32, 4))
        return stream.pop()

    order = list(range(n))
    for i in range(n - 1, 0, -1):
        # rejection sampling: no modulo bias
        limit = (1 << 32) - ((1 << 32) % (i + 1))
        r = draw()
        while r >= limit:
            r = draw()
        j = r % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def best_candidates(row: Sequence[int], candidates: Iterable[tuple[str, int]]
                    ) -> tuple[str | None, float]:
    """Best (patient id, Dice) of a row's filter variants against candidate filters."""
    best: str | None = None
    score = 0.0
    for pid, f in candidates:
        for r in row:
            s = dice(r, f)
            if s > score:
                best, score = pid, s
    return best, score
