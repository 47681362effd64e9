"""Property tests for the normalisers (blind indexes) and the field validators.

The blind index is only as good as its normalisation: two spellings of the same value
must give the same digest (or searches miss), and normalising twice must change
nothing (or re-indexing drifts).
"""

from __future__ import annotations

import unicodedata
from datetime import date

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from stdnum.fr import nir as stdnum_nir

from labvault.crypto import blind_index as bi
from labvault.domain import validation as v
from labvault.errors import InvalidField

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
settings.register_profile("labvault", max_examples=150, deadline=None)
settings.load_profile("labvault")

letters = st.text(alphabet=st.characters(min_codepoint=0x41, max_codepoint=0x5A), min_size=1,
                  max_size=20)
ACCENTS = {"E": "ÉÈÊË", "A": "ÀÂÄ", "I": "ÎÏ", "O": "ÔÖ", "U": "ÙÛÜ", "C": "Ç", "N": "Ñ", "Y": "Ÿ"}


@st.composite
def name_variants(draw: st.DrawFn) -> tuple[str, str]:
    """A name and another spelling of it: case, accents, hyphens, spaces, apostrophes."""
    base = draw(letters)
    out = []
    for ch in base:
        c = ch
        if ch in ACCENTS and draw(st.booleans()):
            c = draw(st.sampled_from(ACCENTS[ch]))
        if draw(st.booleans()):
            c = c.lower()
        out.append(c)
        if draw(st.integers(0, 6)) == 0:
            out.append(draw(st.sampled_from([" ", "-", "'", "’", "  "])))
    variant = "".join(out)
    if draw(st.booleans()):
        variant = unicodedata.normalize("NFD", variant)
    return base, variant


@given(st.text(max_size=40))
def test_fold_name_idempotent_and_letters_only(s: str) -> None:
    f = bi.fold_name(s)
    assert bi.fold_name(f) == f
    assert all("A" <= c <= "Z" for c in f)


@given(name_variants(), name_variants(), st.dates(date(1900, 1, 1), date(2025, 12, 31)))
@example(("LEBOEUF", "Le Bœuf"), ("DARC", "d'Arç"), date(1984, 12, 31))
def test_equal_names_equal_digest(last: tuple[str, str], first: tuple[str, str], d: date) -> None:
    a = bi.normalise_name_dob(last[0], first[0], d)
    b = bi.normalise_name_dob(last[1], first[1], d.isoformat())
    assert a == b
    assert bi.digest(KEY, bi.NAME_DOB, a) == bi.digest(KEY, bi.NAME_DOB, b)
    assert len(bi.digest(KEY, bi.NAME_DOB, a)) == bi.DIGEST_BYTES


@given(st.text(max_size=30), st.text(max_size=30))
def test_digest_separates_kinds_keys_and_values(a: str, b: str) -> None:
    assert bi.digest(KEY, bi.NIR, a) != bi.digest(KEY, bi.EMAIL, a)
    assert bi.digest(KEY, bi.NIR, a) != bi.digest(OTHER_KEY, bi.NIR, a)
    if a != b:
        assert bi.digest(KEY, bi.NIR, a) != bi.digest(KEY, bi.NIR, b)


# -- NIR ------------------------------------------------------------------------------
DEPTS = [f"{d:02d}" for d in range(1, 96) if d != 20] + ["2A", "2B"]


@st.composite
def nirs(draw: st.DrawFn) -> tuple[str, str, date]:
    sex = draw(st.sampled_from("FM"))
    birth = draw(st.dates(date(1930, 1, 1), date(2025, 12, 31)))
    dept = draw(st.sampled_from(DEPTS))
    commune = f"{draw(st.integers(1, 999)):03d}"
    order = f"{draw(st.integers(1, 999)):03d}"
    body = f"{1 if sex == 'M' else 2}{birth.year % 100:02d}{birth.month:02d}{dept}{commune}{order}"
    return body + stdnum_nir.calc_check_digits(body), sex, birth


def _spaced(n: str, sep: str) -> str:
    return sep.join([n[0], n[1:3], n[3:5], n[5:7], n[7:10], n[10:13], n[13:]])


@given(nirs(), st.sampled_from([" ", ".", "-", "", "  "]), st.booleans())
@example(("2840575056089" + stdnum_nir.calc_check_digits("2840575056089"), "F",
          date(1984, 5, 1)), " ", False)
def test_nir_any_formatting_same_digest(n: tuple[str, str, date], sep: str, lower: bool) -> None:
    compact, sex, birth = n
    raw = _spaced(compact, sep)
    if lower:
        raw = raw.lower()
    got = v.nir(raw, "nir", sex, birth)
    assert got == compact.upper()
    assert v.nir(got) == got                                   # idempotent
    assert bi.normalise_nir(got) == bi.normalise_nir(bi.normalise_nir(raw))
    assert bi.digest(KEY, bi.NIR, bi.normalise_nir(got)) == bi.digest(
        KEY, bi.NIR, bi.normalise_nir(v.nir(compact)))


@pytest.mark.parametrize("dept", ["2A", "2B"])
@given(n=nirs())
def test_corsica_nirs(dept: str, n: tuple[str, str, date]) -> None:
    compact, sex, birth = n
    body = compact[:5] + dept + compact[7:13]
    key = stdnum_nir.calc_check_digits(body)
    assert v.nir(body + key, "nir", sex, birth) == body + key
    # Corsica's key is computed with 2A -> 19, 2B -> 18: a key computed naively on "20"
    # must not pass unless it happens to coincide.
    naive = f"{97 - int(body.replace(dept, '20')) % 97:02d}"
    if naive != key:
        with pytest.raises(InvalidField, match="control key"):
            v.nir(body + naive)


@given(nirs(), st.integers(1, 96))
def test_nir_wrong_key_rejected(n: tuple[str, str, date], delta: int) -> None:
    compact = n[0]
    wrong = f"{(int(compact[13:]) + delta - 1) % 97 + 1:02d}"
    assume(wrong != compact[13:])
    with pytest.raises(InvalidField) as exc:
        v.nir(compact[:13] + wrong)
    assert exc.value.field == "nir" and exc.value.rule == "control key does not match"


@given(nirs())
def test_nir_must_agree_with_sex_and_birth(n: tuple[str, str, date]) -> None:
    compact, sex, birth = n
    with pytest.raises(InvalidField, match="sex"):
        v.nir(compact, "nir", "M" if sex == "F" else "F", birth)
    other = date(birth.year - 1 if birth.year > 1931 else birth.year + 1, birth.month, 1)
    with pytest.raises(InvalidField, match="year/month"):
        v.nir(compact, "nir", sex, other)


# -- phones ---------------------------------------------------------------------------
# Mobile ranges allocated in France (ARCEP): 06 0-2/4-8 and 07 3-9; 063x, 069x are partly
# unallocated, which phonenumbers knows, so they are left out here.
@given(st.sampled_from(["60", "61", "62", "64", "65", "66", "67", "68", "73", "75", "76", "77",
                        "78"]), st.integers(0, 99_999_999),
       st.sampled_from(["0{p}{d}", "+33{p}{d}", "+33 {p} {s}", "0033{p}{d}", "0{p} {s}",
                        "0{p}.{dots}", "(0){p}{d}"]))
def test_phone_formats_same_e164(prefix: str, n: int, fmt: str) -> None:
    d = (prefix[1:] + f"{n:08d}")[:8]
    prefix = prefix[0]
    s = " ".join(d[i:i + 2] for i in range(0, 8, 2))
    raw = fmt.format(p=prefix, d=d, s=s, dots=".".join(d[i:i + 2] for i in range(0, 8, 2)))
    try:
        e164 = v.phone(raw)
    except InvalidField:
        assume(fmt != "(0){p}{d}")  # "(0)" is a British habit phonenumbers may refuse
        raise
    assert e164 == f"+33{prefix}{d}"
    assert v.phone(e164) == e164                                # idempotent
    assert bi.normalise_phone(e164) == bi.normalise_phone(bi.normalise_phone(e164)) == e164
    assert bi.digest(KEY, bi.PHONE, bi.normalise_phone(v.phone(raw))) == bi.digest(
        KEY, bi.PHONE, bi.normalise_phone(v.phone(f"0{prefix}{d}")))


@given(st.text(alphabet="0123456789 +-.", max_size=8))
def test_short_phones_rejected(raw: str) -> None:
    with pytest.raises(InvalidField) as exc:
        v.phone(raw)
    assert exc.value.field == "phone"


# -- e-mail ---------------------------------------------------------------------------
local = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@given(st.lists(local, min_size=1, max_size=3), st.sampled_from(["example.org", "example.com",
                                                                   "labo-test.fr"]),
       st.booleans(), st.sampled_from(["", " ", "\t"]))
def test_email_case_and_spaces(parts: list[str], domain: str, upper: bool, pad: str) -> None:
    addr = ".".join(parts) + "@" + domain
    raw = pad + (addr.upper() if upper else addr) + pad
    got = v.email(raw)
    assert got == addr
    assert v.email(got) == got                                  # idempotent
    assert bi.normalise_email(got) == bi.normalise_email(bi.normalise_email(raw)) == addr
    assert bi.digest(KEY, bi.EMAIL, bi.normalise_email(got)) == bi.digest(
        KEY, bi.EMAIL, bi.normalise_email(v.email(addr)))


@pytest.mark.parametrize("bad", ["plainaddress", "a@@example.org", "a@", "@example.org",
                                 "a b@example.org", "a@example..org", ".a@example.org", ""])
def test_bad_emails_rejected(bad: str) -> None:
    with pytest.raises(InvalidField) as exc:
        v.email(bad)
    assert exc.value.field == "email"


@given(st.text(max_size=60))
def test_normalisers_idempotent(s: str) -> None:
    for f in (bi.normalise_nir, bi.normalise_email, bi.normalise_phone, bi.fold_name):
        assert f(f(s)) == f(s)
