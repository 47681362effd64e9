"""Random identifiers: never sequential, so an id says nothing about volume or order."""

from __future__ import annotations

import os

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
# byte -> one base32 digit of its low 5 bits (256 = 8 x 32: every digit equally likely)
_DIGITS = bytes(_ALPHABET[b & 31].encode()[0] for b in range(256))


def new_id(prefix: str) -> str:
    """``prefix_`` + 26 random base32 digits (130 bits: one random byte per digit)."""
    return f"{prefix}_{os.urandom(26).translate(_DIGITS).decode()}"
