"""Sealing properties: a sealed value opens only where it was sealed, with its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from labvault.crypto import KeyRing, SealContext
from labvault.crypto.providers.file import FileKeyProvider
from labvault.errors import IntegrityError, KeyUnavailable


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    ring = KeyRing(FileKeyProvider.create(tmp_path / "root.key"))
    for t in ("lab_a", "lab_b"):
        ring.new_tenant_key(t, "kek", 1)
    return ring


CTX = SealContext("lab_a", "patients", "identity", "pt_1")


def test_round_trip(ring: KeyRing) -> None:
    dek, _ = ring.new_dek("lab_a", "pt_1", 1)
    assert dek.open(CTX, dek.seal(CTX, b"Jeanne")) == b"Jeanne"


@pytest.mark.parametrize("other", [
    SealContext("lab_a", "patients", "identity", "pt_2"),   # another row
    SealContext("lab_a", "patients", "contact", "pt_1"),    # another column
    SealContext("lab_b", "patients", "identity", "pt_1"),   # another tenant
    SealContext("lab_a", "orders", "identity", "pt_1"),     # another table
])
def test_copied_value_fails(ring: KeyRing, other: SealContext) -> None:
    dek, _ = ring.new_dek("lab_a", "pt_1", 1)
    sealed = dek.seal(CTX, b"Jeanne")
    with pytest.raises(IntegrityError):
        dek.open(other, sealed)


def test_wrong_key_fails(ring: KeyRing) -> None:
    dek1, _ = ring.new_dek("lab_a", "pt_1", 1)
    dek2, _ = ring.new_dek("lab_a", "pt_1", 1)
    with pytest.raises(IntegrityError):
        dek2.open(CTX, dek1.seal(CTX, b"Jeanne"))


def test_every_tampered_byte_fails(ring: KeyRing) -> None:
    dek, _ = ring.new_dek("lab_a", "pt_1", 1)
    sealed = dek.seal(CTX, b"Jeanne Martin")
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(IntegrityError):
            dek.open(CTX, bytes(tampered))


def test_dek_bound_to_patient(ring: KeyRing) -> None:
    _, wrapped = ring.new_dek("lab_a", "pt_1", 1)
    with pytest.raises(IntegrityError):
        ring.open_dek("lab_a", "pt_2", wrapped)


def test_nonce_is_fresh(ring: KeyRing) -> None:
    dek, _ = ring.new_dek("lab_a", "pt_1", 1)
    assert len({dek.seal(CTX, b"x") for _ in range(100)}) == 100


def test_key_file_permissions_enforced(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    FileKeyProvider.create(path)
    path.chmod(0o644)
    with pytest.raises(KeyUnavailable, match="chmod 600"):
        FileKeyProvider(path)


def test_missing_key_file_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(KeyUnavailable, match="labvault init"):
        FileKeyProvider(tmp_path / "absent.key")


def test_wrong_root_key_fails_closed(tmp_path: Path) -> None:
    ring = KeyRing(FileKeyProvider.create(tmp_path / "a.key"))
    rec = ring.new_tenant_key("lab_a", "kek", 1)
    other = KeyRing(FileKeyProvider.create(tmp_path / "b.key"))
    with pytest.raises(KeyUnavailable):
        other.load(rec)
