"""Per-export fingerprints that survive re-ordering, dropped columns and partial leaks.

Three independent channels, none of which changes a clinical value:

1. **Row ids**: each row's opaque ``row_id`` is ``nonce(6) || HMAC(K_e, nonce)[:6]``
   (base32); ``K_e`` is derived from the lab's guard secret and the export id. Any one
   surviving row id names the export (a forgery needs the key; chance 2^-48 per row).
2. **Representation choices**: per row, ``h = HMAC(K_e, patient_id)`` picks how
   non-clinical values are *written* — NIR compact or spaced, phone E.164 or national,
   birth name upper case or as registered — and the order of the JSON keys. Every
   choice is the same value to any reader. From a leaked copy the rows are mapped back
   to patients through the blind indexes, and each export's expected choices are
   compared with the observed ones; a wrong export agrees with probability 1/2 per
   choice (key order: at most 1/2), so attribution is a binomial test
   (``P(Bin(n, 1/2) >= m) < ATTRIBUTION_P``). A channel the leaker normalised (all
   rows written the same way) is dropped, not counted against.
3. **Decoy rows**: synthetic patients unique to the export (honeytoken NIR range), whose
   identifiers are kept as keyed digests; any one in a leak names the export.
"""

from __future__ import annotations

import base64
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labvault.crypto.digests import constant_time_equal, hmac_sha256

ATTRIBUTION_P = 1e-12      # binomial p-value below which the format channel attributes
MIN_TRIALS = 12

CHANNELS = ("nir", "phone", "birth_name", "email", "key_order")


def export_key(guard_secret: bytes, export_id: str) -> bytes:
    return hmac_sha256(guard_secret, b"labvault/export-fingerprint/v1\x00" + export_id.encode())


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes | None:
    t = text.strip().upper()
    try:
        return base64.b32decode(t + "=" * (-len(t) % 8))
    except (ValueError, TypeError):
        return None


def new_row_id(key: bytes) -> str:
    nonce = os.urandom(6)
    return _b32(nonce + hmac_sha256(key, b"row\x00" + nonce)[:6])


def row_id_matches(key: bytes, row_id: str) -> bool:
    raw = _unb32(row_id)
    if raw is None or len(raw) != 12:
        return False
    return constant_time_equal(raw[6:], hmac_sha256(key, b"row\x00" + raw[:6])[:6])


def choices(key: bytes, patient_id: str) -> bytes:
    return hmac_sha256(key, b"choice\x00" + patient_id.encode())


# -- representations (same value, different writing) --------------------------------------
def nir_variant(nir: str, bit: int) -> str:
    c = nir.replace(" ", "")
    if bit and len(c) == 15:
        return f"{c[0]} {c[1:3]} {c[3:5]} {c[5:7]} {c[7:10]} {c[10:13]} {c[13:]}"
    return c


def phone_variant(e164: str, bit: int) -> str:
    if bit and e164.startswith("+33") and len(e164) == 12:
        n = "0" + e164[3:]
        return " ".join(n[i:i + 2] for i in range(0, 10, 2))
    return e164


def name_variant(name: str, bit: int) -> str:
    if bit:
        return name.upper()
    return name if any(c.islower() for c in name) else name.title()


def email_variant(email: str, bit: int) -> str:
    """E-mail addresses are matched case-insensitively; only the first letter's case varies."""
    e = email.lower()
    return e[:1].upper() + e[1:] if bit else e


def observed_bit(channel: str, value: Any) -> int | None:
    """Which variant a leaked value shows, or None if the value shows no choice."""
    if not isinstance(value, str) or not value:
        return None
    if channel == "nir":
        return 1 if " " in value.strip() else 0
    if channel == "phone":
        v = value.strip()
        if v.startswith("+33"):
            return 0
        if v.startswith("0") and len(v.replace(" ", "")) == 10:
            return 1
        return None
    if channel == "email":
        head = value.strip()[:1]
        return (1 if head.isupper() else 0) if head.isalpha() else None
    if channel == "birth_name":
        letters = [c for c in value if c.isalpha()]
        if not letters:
            return None
        return 1 if all(c.isupper() for c in letters) else 0
    return None


def _bit(h: bytes, channel: str) -> int:
    return h[CHANNELS.index(channel)] & 1


_SLOT: dict[str, int] = {}


def _slot(k: str) -> int:
    s = _SLOT.get(k)
    if s is None:
        s = _SLOT[k] = 8 + zlib.crc32(k.encode()) % 24
    return s


def key_order(h: bytes, keys: Sequence[str]) -> list[str]:
    """A keyed order of the keys; the order of any subset is the restriction of the whole."""
    return sorted(keys, key=lambda k: (h[_slot(k)], k))


def render(h: bytes, row_id: str, values: Mapping[str, Any], fields: Sequence[str]
           ) -> dict[str, Any]:
    """One export row: requested fields (only those present) written per ``h``, plus row_id."""
    out: dict[str, Any] = {}
    for k in key_order(h, ["row_id", *fields]):
        if k == "row_id":
            out[k] = row_id
            continue
        v = values.get(k)
        if v is None:
            continue
        if k in ("nir", "ins"):
            v = nir_variant(v, _bit(h, "nir"))
        elif k == "phone":
            v = phone_variant(v, _bit(h, "phone"))
        elif k == "birth_name":
            v = name_variant(v, _bit(h, "birth_name"))
        elif k == "email":
            v = email_variant(v, _bit(h, "email"))
        out[k] = v
    return out


# -- attribution ------------------------------------------------------------------------------
@dataclass
class ChannelTally:
    observed: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in CHANNELS})
    agree: dict[str, list[bool]] = field(default_factory=lambda: {c: [] for c in CHANNELS})


def tally_row(tally: ChannelTally, h: bytes, row: Mapping[str, Any], ordered: bool) -> None:
    """Compare one leaked row with the choices ``h`` an export would have made."""
    for ch, fieldname in (("nir", "nir"), ("phone", "phone"), ("birth_name", "birth_name"),
                          ("email", "email")):
        ob = observed_bit(ch, row.get(fieldname))
        if ob is None:
            continue
        if ch == "phone" and not str(row.get(fieldname, "")).strip().startswith(("+33", "0")):
            continue
        tally.observed[ch].append(ob)
        tally.agree[ch].append(ob == _bit(h, ch))
    if ordered:
        keys = [k for k in row if isinstance(k, str)]
        if len(keys) >= 2:
            tally.agree["key_order"].append(key_order(h, keys) == keys)


def binomial_tail(n: int, m: int) -> float:
    """P(Bin(n, 1/2) >= m)."""
    if m <= 0:
        return 1.0
    total = 0.0
    for k in range(m, n + 1):
        total += math.comb(n, k)
    return min(1.0, total / 2.0 ** n)


def score(tally: ChannelTally, order_signatures: Iterable[str] = ()) -> tuple[int, int, float]:
    """(agreements, trials, p-value) over the channels the leaker did not normalise."""
    sigs = set(order_signatures)
    n = m = 0
    for ch in CHANNELS:
        agree = tally.agree[ch]
        if not agree:
            continue
        if ch == "key_order":
            if len(sigs) <= 1:          # every row has the same key order: normalised
                continue
        elif len(set(tally.observed[ch])) <= 1:   # every row written the same way
            continue
        n += len(agree)
        m += sum(agree)
    if n < MIN_TRIALS:
        return m, n, 1.0
    return m, n, binomial_tail(n, m)
