"""Column detection by content, and the keyed encodings."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.breach import synthdump as sd
from labvault.breach.columns import detect, normalise_phone, parse_date
from labvault.breach.encoding import (
    BITS,
    ClkEncoder,
    KeyedDigest,
    MatchIdentity,
    block_values,
    soundex,
)
from labvault.crypto import blind_index as bi
from labvault.synthetic import people

EXPECTED = ["last_name", "first_name", "birth_date", "sex", "nir", "address", "postcode",
            "unknown", "phone", "email", "blood_group", "insurer", "prescriber",
            "clinical_note", "password"]


def _rows(n: int = 300) -> list[list[str]]:
    rng = random.Random(1)
    return [[sd.row_of(p, rng)[h] for h in sd.HEADERS_FR] for p in people(n, seed=9)]


def test_detection_by_content_whatever_the_header() -> None:
    rows = _rows()
    for header in (list(sd.HEADERS_FR), list(sd.HEADERS_EN), list(sd.HEADERS_MEANINGLESS), None):
        cols = detect(header, rows)
        got = [c.detected for c in cols]
        want = list(EXPECTED)
        if header is None or header == list(sd.HEADERS_MEANINGLESS):
            want[14] = "unknown"          # clear passwords have no shape: the header says it
        assert got == want, (header, got)
        assert all(0 <= c.confidence <= 1 for c in cols)


def test_hashes_and_dates() -> None:
    rows = [["$2b$12$" + "a" * 53, "15/03/1984"], ["5f4dcc3b5aa765d61d8327deb882cf99", "19840315"],
            ["$argon2id$v=19$m=19456,t=2,p=1$abc$def", "1984-03-15"]]
    cols = detect(None, rows)
    assert [c.detected for c in cols] == ["password_hash", "birth_date"]
    assert parse_date("31/02/1990") is None and parse_date("01.02.1990").isoformat() == "1990-02-01"
    assert normalise_phone("06 12 34 56 78") == normalise_phone("+33 6 12.34.56.78") == \
        "+33612345678"
    assert normalise_phone("12") is None


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.sampled_from(["nir", "email", "name_dob"]),
       st.text(max_size=40))
def test_keyed_digest_equals_blind_index(key: bytes, kind: str, value: str) -> None:
    assert KeyedDigest(key).index(kind, value) == bi.digest(key, kind, value)


def test_balanced_encoding_is_keyed_and_constant_weight() -> None:
    a = ClkEncoder(b"a" * 32, b"b" * 32, b"c" * 32)
    b = ClkEncoder(b"x" * 32, b"b" * 32, b"c" * 32)
    m = MatchIdentity.of("Dupont", "Jeanne", "1980-05-12", "59000", "F",
                         "280055935012345", "jeanne.dupont@example.org", "+33612345678")
    ea, eb = a.encode(m), b.encode(m)
    assert len(ea) == 2 * BITS // 8
    assert int.from_bytes(ea, "big").bit_count() == BITS           # balanced
    assert ea != eb                                                 # keyed per tenant
    c = ClkEncoder(b"a" * 32, b"b" * 32, b"z" * 32)
    assert a.blocks(m) != c.blocks(m)                             # keyed blocks
    assert soundex("DUPONT") == "D153" and soundex("ASHCRAFT") == "A261"
    assert "dob|1980-05-12" in block_values(m)


_NIR_CHARS = "0123456789AB .-xa"


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(alphabet=_NIR_CHARS, max_size=22),
                 st.builds(lambda p, i, c: p["nir"][:i] + c + p["nir"][i + 1:],
                           st.sampled_from(list(people(50, seed=3))), st.integers(0, 14),
                           st.sampled_from("0123456789AB"))))
def test_normalise_nir_agrees_with_stdnum(value: str) -> None:
    from stdnum.fr import nir as stdnum_nir

    from labvault.breach.columns import normalise_nir
    v = "".join(c for c in value if c not in " .-\t\n\r\x0b\x0c").upper()
    expected = v if len(v) == 15 and stdnum_nir.is_valid(v) else None
    if len(v) == 13:                           # without its key: completed when it can be
        full = v + stdnum_nir.calc_check_digits(v) if _nir13(v) else ""
        expected = full if full and stdnum_nir.is_valid(full) else None
    assert normalise_nir(value) == expected


def _nir13(v: str) -> bool:
    """The shape of a NIR without its key: sex, year, month (INSEE), department."""
    if not (v[:5].isdigit() and v[7:].isdigit() and (v[5:7].isdigit() or v[5:7] in ("2A", "2B"))):
        return False
    month = int(v[3:5])
    return v[0] in "12" and (1 <= month <= 12 or 20 <= month <= 42 or month >= 50)


def test_nir_without_its_key_is_completed() -> None:
    """QA (DPO, breach): a leak of 13-digit NIRs (key kept apart, as old systems do) was
    neither detected as NIRs nor matched — the notification would not have said NIRs
    leaked."""
    from labvault.breach.columns import detect, normalise_nir
    nirs = [p["nir"] for p in people(40, seed=6)]
    assert [normalise_nir(n[:13]) for n in nirs] == nirs
    assert normalise_nir(f"{nirs[0][0]} {nirs[0][1:3]} {nirs[0][3:5]} {nirs[0][5:13]}") == nirs[0]
    assert normalise_nir("3400936543213") is None        # a drug code (CIP13)
    assert normalise_nir("0033612345678") is None        # a phone number
    (col,) = detect(["secu"], [[n[:13]] for n in nirs])
    assert col.detected == "nir"


def test_normalise_nir_accepts_synthetic_and_corsican() -> None:
    from labvault.breach.columns import normalise_nir
    for p in people(200, seed=4):
        assert normalise_nir(p["nir"]) == p["nir"]
    from stdnum.fr import nir as stdnum_nir
    n13 = "185052A123456"
    corsican = n13 + stdnum_nir.calc_check_digits(n13 + "00")
    assert normalise_nir(corsican) == corsican
    wrong = corsican[:13] + f"{(int(corsican[13:]) + 1) % 100:02d}"
    assert normalise_nir(wrong) is None
