"""Blind indexes: HMAC-SHA256 over a normalised value under the tenant's index key.

Truncated to 64 bits (``DIGEST_BYTES``). For a tenant of N patients, a lookup meets a
false candidate with probability about N / 2**64 (5.4e-14 at N = 1,000,000): the
service treats every index hit as a candidate and never trusts it alone for
anything but finding the record. 64 bits keeps the index compact and still leaves
no dictionary attack to someone without the key: the key never sits in the database.

Normalisation lives here so that the store, the import path and breach triage
compute identical digests for the same person.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import date

from labvault.crypto import _primitives as P

DIGEST_BYTES = 8

# Kinds of index; the kind is part of the MAC input, so equal values of two kinds
# (a phone typed in an e-mail field) never collide.
NIR = "nir"
EMAIL = "email"
PHONE = "phone"
NAME_DOB = "name_dob"
EXTERNAL_ID = "external_id"
INS = "ins"


def digest(index_key: bytes, kind: str, normalised: str) -> bytes:
    return P.hmac_sha256(index_key, kind.encode() + b"\x00" + normalised.encode())[:DIGEST_BYTES]


class Indexer:
    """``digest`` for many values under one index key (one patient's indexes, a batch,
    a breach file): same digests, the keyed HMAC state is computed once."""

    __slots__ = ("_mac",)

    def __init__(self, index_key: bytes) -> None:
        self._mac = P.HmacSha256(index_key)

    def digest(self, kind: str, normalised: str) -> bytes:
        return self._mac.digest(kind.encode() + b"\x00" + normalised.encode())[:DIGEST_BYTES]

    def digest_many(self, values: Sequence[tuple[str, str]]) -> list[bytes]:
        """``digest`` of each (kind, normalised) pair, in one pass (native when built)."""
        raw = self._mac.digest_many([k.encode() + b"\x00" + v.encode() for k, v in values],
                                    DIGEST_BYTES)
        return [raw[i:i + DIGEST_BYTES] for i in range(0, len(raw), DIGEST_BYTES)]


_NON_LETTERS = re.compile(r"[^A-Z]")


def fold_name(value: str) -> str:
    """Upper case, accents removed, only letters kept: 'Le Bœuf-d'Arç' -> 'LEBOEUFDARC'."""
    v = unicodedata.normalize("NFKD", value.replace("œ", "oe").replace("Œ", "OE")
                              .replace("æ", "ae").replace("Æ", "AE"))
    v = "".join(c for c in v if not unicodedata.combining(c)).upper()
    return _NON_LETTERS.sub("", v)


def normalise_nir(value: str) -> str:
    return re.sub(r"[\s.\-]", "", value).upper()


def normalise_email(value: str) -> str:
    return unicodedata.normalize("NFKC", value).strip().lower()


def normalise_phone(e164: str) -> str:
    """Phones are stored E.164 already (domain validation); keep digits and '+'."""
    return re.sub(r"[^\d+]", "", e164)


def normalise_name_dob(last_name: str, first_name: str, birth_date: date | str) -> str:
    d = birth_date.isoformat() if isinstance(birth_date, date) else str(birth_date)
    return f"{fold_name(last_name)}|{fold_name(first_name)}|{d}"
