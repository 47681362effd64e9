"""The key hierarchy: root (provider) -> per-tenant keys -> per-patient data keys.

Per tenant, versioned, stored *wrapped* by the root key (the store keeps the bytes,
never the key):

- ``kek``   wraps the patients' data keys (DEKs). Rotation re-wraps DEKs only.
- ``index`` keys the blind indexes (HMAC-SHA256). ``keys rotate --index`` makes a new
  version, recomputes every digest from plaintext (``services/rekey.py``) and destroys
  the old one (docs/security-model.md, "Blind indexes").
- ``data``  seals tenant-level values that belong to no patient (audit reasons,
  alert details, evidence, archived messages).
- any other purpose string a module needs.

Per patient: one random DEK, wrapped by the tenant's current KEK. Destroying the
wrapped DEK erases the patient everywhere (crypto-shredding).

This module is pure: it turns wrapped records into usable keys and back, and keeps
unwrapped tenant keys in process memory. Persistence is the services' job.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from labvault.crypto import _primitives as P
from labvault.crypto import envelope
from labvault.crypto.envelope import SealContext
from labvault.crypto.providers.base import KeyProvider
from labvault.errors import IntegrityError, KeyUnavailable

DEK_VERSION = 1


@dataclass(frozen=True, slots=True)
class WrappedTenantKey:
    """A tenant key as stored: wrapped under root key ``root_id``."""

    tenant_id: str
    purpose: str
    version: int
    root_id: str
    wrapped: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WrappedDek:
    kek_version: int
    wrapped: bytes


class DataKey:
    """An unwrapped key able to seal and open values. Never persisted unwrapped."""

    __slots__ = ("_aead", "_key", "key_id")

    def __init__(self, key: bytes, key_id: str) -> None:
        self._key = key
        self.key_id = key_id
        self._aead: P.Aead | None = None

    def _cipher(self) -> P.Aead:
        if self._aead is None:
            self._aead = P.Aead(self._key)
        return self._aead

    def seal(self, ctx: SealContext, plaintext: bytes) -> bytes:
        return envelope.pack(self.key_id, self._cipher().seal(plaintext, ctx.aad(self.key_id)))

    def column(self, tenant_id: str, table: str, column: str) -> ColumnSealer:
        """A sealer for one column of one tenant's table under this key (hot paths that
        seal one value per row: the audit log's client addresses and chain-head key)."""
        return ColumnSealer(self, tenant_id, table, column)

    def open(self, ctx: SealContext, sealed: bytes) -> bytes:
        key_id, body = envelope.unpack(sealed)
        if key_id != self.key_id:
            raise IntegrityError(f"sealed under key {key_id}, not {self.key_id}")
        try:
            return self._cipher().open(body, ctx.aad(key_id))
        except P.AuthenticationError:
            raise IntegrityError(
                f"sealed value in {ctx.table}.{ctx.column} of record {ctx.record_id} "
                "failed authentication (tampered, moved from another row, or wrong key)"
            ) from None

    def __repr__(self) -> str:  # never print key bytes
        return f"DataKey({self.key_id})"


class ColumnSealer:
    """``DataKey.seal(SealContext(tenant_id, table, column, record_id), plaintext)`` with
    the shared part of the associated data built once: the same envelope, the same
    associated data, a fresh random nonce per value."""

    __slots__ = ("_aead", "_env", "_head", "_tail", "_where")

    def __init__(self, key: DataKey, tenant_id: str, table: str, column: str) -> None:
        self._head, self._tail = envelope.aad_parts(tenant_id, table, column, key.key_id)
        self._env = envelope.pack(key.key_id, b"")
        self._aead = key._cipher()
        self._where = f"{table}.{column}"

    def seal(self, record_id: str, plaintext: bytes) -> bytes:
        if "\x00" in record_id:
            raise ValueError("seal context parts must not contain NUL")
        return self._env + self._aead.seal(plaintext,
                                           self._head + record_id.encode() + self._tail)

    def seal_many(self, items: list[tuple[str, bytes]]) -> list[bytes]:
        """``seal`` of each (record id, plaintext); the nonces drawn in one call."""
        head, tail, env = self._head, self._tail, self._env
        if any("\x00" in r for r, _ in items):
            raise ValueError("seal context parts must not contain NUL")
        return [env + s for s in self._aead.seal_many(
            [(p, head + r.encode() + tail) for r, p in items])]

    def open_many(self, items: Sequence[tuple[str, bytes]]) -> list[bytes]:
        """Open each (record id, envelope) this key sealed in this column (bulk reads: the
        breach triage's encodings). A value sealed under another key, or moved from another
        row, column or tenant, fails the whole call: a tampered store is an incident, not
        a row to skip."""
        head, tail, env, open_ = self._head, self._tail, self._env, self._aead.open
        n = len(env)
        out = []
        for record_id, sealed in items:
            if sealed[:n] != env or "\x00" in record_id:
                raise IntegrityError(f"sealed value in {self._where} of record {record_id} "
                                     "is not sealed under the expected key")
            try:
                out.append(open_(sealed[n:], head + record_id.encode() + tail))
            except P.AuthenticationError:
                raise IntegrityError(
                    f"sealed value in {self._where} of record {record_id} failed "
                    "authentication (tampered, moved from another row, or wrong key)") from None
        return out


def _tenant_key_aad(tenant_id: str, purpose: str, version: int) -> bytes:
    return f"labvault/tenant-key/v1\x00{tenant_id}\x00{purpose}\x00{version}".encode()


def _dek_aad(tenant_id: str, patient_id: str, kek_version: int) -> bytes:
    return f"labvault/dek/v1\x00{tenant_id}\x00{patient_id}\x00{kek_version}".encode()


class KeyRing:
    """Unwraps tenant keys through the provider and caches them for this process."""

    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider
        self._cache: dict[tuple[str, str, int], bytes] = {}
        self._ciphers: dict[tuple[str, str, int], P.Aead] = {}
        self._lock = threading.Lock()

    # -- tenant keys ------------------------------------------------------------
    def new_tenant_key(self, tenant_id: str, purpose: str, version: int) -> WrappedTenantKey:
        key = P.random_key()
        root_id, wrapped = self.provider.wrap(key, _tenant_key_aad(tenant_id, purpose, version))
        with self._lock:
            self._cache[(tenant_id, purpose, version)] = key
        return WrappedTenantKey(tenant_id, purpose, version, root_id, wrapped, datetime.now(UTC))

    def load(self, record: WrappedTenantKey) -> None:
        k = (record.tenant_id, record.purpose, record.version)
        if k in self._cache:
            return
        key = self.provider.unwrap(record.root_id, record.wrapped,
                                   _tenant_key_aad(record.tenant_id, record.purpose, record.version))
        with self._lock:
            self._cache[k] = key

    def rewrap_tenant_key(self, record: WrappedTenantKey) -> WrappedTenantKey:
        """Re-wrap under the provider's current root (root rotation)."""
        self.load(record)
        key = self._cache[(record.tenant_id, record.purpose, record.version)]
        root_id, wrapped = self.provider.wrap(
            key, _tenant_key_aad(record.tenant_id, record.purpose, record.version))
        return WrappedTenantKey(record.tenant_id, record.purpose, record.version, root_id,
                                wrapped, record.created_at)

    def is_loaded(self, tenant_id: str, purpose: str, version: int) -> bool:
        return (tenant_id, purpose, version) in self._cache

    def forget(self, tenant_id: str, purpose: str | None = None) -> None:
        with self._lock:
            for k in [k for k in self._cache
                      if k[0] == tenant_id and (purpose is None or k[1] == purpose)]:
                del self._cache[k]
                self._ciphers.pop(k, None)

    def _tenant_key(self, tenant_id: str, purpose: str, version: int) -> bytes:
        try:
            return self._cache[(tenant_id, purpose, version)]
        except KeyError:
            raise KeyUnavailable(
                f"{purpose} key v{version} of tenant {tenant_id} is not available",
                "the tenant's keys were not loaded or were destroyed") from None

    def _kek(self, tenant_id: str, version: int) -> P.Aead:
        k = (tenant_id, "kek", version)
        cipher = self._ciphers.get(k)
        if cipher is None:
            cipher = self._ciphers[k] = P.Aead(self._tenant_key(tenant_id, "kek", version))
        return cipher

    def tenant_data_key(self, tenant_id: str, purpose: str, version: int) -> DataKey:
        """A tenant-level sealing key (purpose ``data`` or a module's own)."""
        return DataKey(self._tenant_key(tenant_id, purpose, version), f"{purpose}-{version}")

    def tenant_secret(self, tenant_id: str, purpose: str, version: int, label: str) -> bytes:
        """A 32-byte secret derived from a tenant key for one named use (HKDF).

        For keyed encodings that are not AEAD (e.g. breach-matching Bloom filters).
        """
        return P.hkdf_sha256(self._tenant_key(tenant_id, purpose, version),
                             b"labvault/derived/v1\x00" + label.encode())

    # -- patient data keys -----------------------------------------------------
    def new_dek(self, tenant_id: str, patient_id: str, kek_version: int) -> tuple[DataKey, WrappedDek]:
        dek = P.random_key()
        wrapped = self._kek(tenant_id, kek_version).seal(
            dek, _dek_aad(tenant_id, patient_id, kek_version))
        return DataKey(dek, f"dek-{DEK_VERSION}"), WrappedDek(kek_version, wrapped)

    def open_dek(self, tenant_id: str, patient_id: str, wrapped: WrappedDek) -> DataKey:
        kek = self._kek(tenant_id, wrapped.kek_version)
        try:
            dek = kek.open(wrapped.wrapped, _dek_aad(tenant_id, patient_id, wrapped.kek_version))
        except P.AuthenticationError:
            raise IntegrityError(f"data key of patient {patient_id} failed authentication") from None
        return DataKey(dek, f"dek-{DEK_VERSION}")

    def rewrap_dek(self, tenant_id: str, patient_id: str, wrapped: WrappedDek,
                   new_kek_version: int) -> WrappedDek:
        """KEK rotation: the DEK (and so every sealed value) stays the same."""
        dek = self.open_dek(tenant_id, patient_id, wrapped)._key
        return WrappedDek(new_kek_version, self._kek(tenant_id, new_kek_version).seal(
            dek, _dek_aad(tenant_id, patient_id, new_kek_version)))

    # -- blind indexes -----------------------------------------------------------
    def blind_index_key(self, tenant_id: str, version: int) -> bytes:
        return self._tenant_key(tenant_id, "index", version)
