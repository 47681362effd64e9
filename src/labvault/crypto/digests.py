"""Hashes, MACs, key derivation and signatures for modules outside ``crypto/``.

The audit chain (forward-secure MACs, RFC 6962 Merkle hashing, Ed25519 checkpoints),
export fingerprints and breach encodings use these; AEAD stays private to ``crypto``.
"""

from labvault.crypto._primitives import (
    HmacSha256,
    constant_time_equal,
    ed25519_generate,
    ed25519_sign,
    ed25519_verify,
    hkdf_sha256,
    hmac_sha256,
    native_chain_append,
    native_hmac,
    random_bytes,
    sha256,
)

__all__ = [
    "HmacSha256",
    "constant_time_equal",
    "ed25519_generate",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "native_chain_append",
    "native_hmac",
    "random_bytes",
    "sha256",
]
