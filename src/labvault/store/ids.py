"""Random identifiers: never sequential, so an id says nothing about volume or order."""

from __future__ import annotations

import os
import threading

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
# byte -> one base32 digit of its low 5 bits (256 = 8 x 32: every digit equally likely)
_DIGITS = bytes(_ALPHABET[b & 31].encode()[0] for b in range(256))
_DIGITS_PER_ID = 26
# The kernel's CSPRNG read 256 ids at a time: one getrandom() call per id was a
# measurable part of every audited read. Each thread draws from a pool of its own (no
# lock; each id's bytes are taken once), and a forked child starts with empty pools: it
# must never hand out its parent's ids.
_POOL_IDS = 256
_local = threading.local()


def _empty_pools() -> None:
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_empty_pools)


def new_id(prefix: str) -> str:
    """``prefix_`` + 26 random base32 digits (130 bits: one random byte per digit)."""
    pool = _local.__dict__
    at = pool.get("next", 0)
    digits = pool.get("digits", "")
    if at >= len(digits):
        digits = pool["digits"] = os.urandom(_DIGITS_PER_ID * _POOL_IDS).translate(
            _DIGITS).decode()
        at = 0
    pool["next"] = at + _DIGITS_PER_ID
    return f"{prefix}_{digits[at:at + _DIGITS_PER_ID]}"


# Ids of one group (the results of one order) share their first digits: written together,
# they sit side by side in every index keyed by them (the results' unique id index, their
# history's key) — one B-tree page per message instead of one random page per result,
# ~18 % fewer bytes written per ORU^R01 (docs/benchmarks.md). Each id keeps 50 digits'
# worth of its own randomness (10 digits): knowing one result's id does not let anyone
# guess a sibling's, and nothing in an id says when or in which order it was made.
_GROUP_DIGITS = 16


def new_ids(prefix: str, n: int) -> list[str]:
    """``n`` ids of the shape of ``new_id``, sharing a random head of 16 digits."""
    head = new_id(prefix)[:len(prefix) + 1 + _GROUP_DIGITS]
    return [head + new_id(prefix)[-(_DIGITS_PER_ID - _GROUP_DIGITS):] for _ in range(n)]
