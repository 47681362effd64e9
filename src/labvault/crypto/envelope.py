"""Versioned envelope for sealed values.

Layout (all sealed columns, any table)::

    b"L" | format version (1 byte, =1) | key-id length (1 byte) | key id (ascii)
    | nonce (12 bytes) | AES-256-GCM ciphertext || tag (16 bytes)

The key id names the key (``dek-1``, ``data-3``...) so a reader knows which key and
version opened it; the associated data binds tenant, table, column, record id and
that key id, so a value copied to another row, column or tenant fails to open.
"""

from __future__ import annotations

from dataclasses import dataclass

from labvault.errors import IntegrityError

MAGIC = b"L"
FORMAT_V1 = 1


@dataclass(frozen=True, slots=True)
class SealContext:
    """Where a sealed value lives. All five parts go into the associated data."""

    tenant_id: str
    table: str
    column: str
    record_id: str

    def aad(self, key_id: str) -> bytes:
        parts = (self.tenant_id, self.table, self.column, self.record_id, key_id)
        if any("\x00" in p for p in parts):
            raise ValueError("seal context parts must not contain NUL")
        return b"labvault/seal/v1\x00" + "\x00".join(parts).encode()


def aad_parts(tenant_id: str, table: str, column: str, key_id: str) -> tuple[bytes, bytes]:
    """(head, tail) such that ``head + record_id.encode() + tail`` is
    ``SealContext(tenant_id, table, column, record_id).aad(key_id)`` (the caller refuses a
    record id holding NUL)."""
    if "\x00" in "".join((tenant_id, table, column, key_id)):
        raise ValueError("seal context parts must not contain NUL")
    return (b"labvault/seal/v1\x00" + "\x00".join((tenant_id, table, column, "")).encode(),
            b"\x00" + key_id.encode())


def pack(key_id: str, sealed: bytes) -> bytes:
    kid = key_id.encode("ascii")
    if len(kid) > 255:
        raise ValueError("key id too long")
    return MAGIC + bytes((FORMAT_V1, len(kid))) + kid + sealed


def unpack(envelope: bytes) -> tuple[str, bytes]:
    if len(envelope) < 3 or envelope[:1] != MAGIC:
        raise IntegrityError("not a labvault sealed value")
    if envelope[1] != FORMAT_V1:
        raise IntegrityError(f"unknown sealed-value format version {envelope[1]}")
    n = envelope[2]
    if len(envelope) < 3 + n:
        raise IntegrityError("truncated sealed value")
    return envelope[3:3 + n].decode("ascii", "replace"), envelope[3 + n:]
