"""TOTP (RFC 6238, pyotp) and one-time recovery codes.

A code is accepted for the current 30-second step or one step either side (clock
drift); the step it matched is recorded per account and any step at or before the
last used one is refused, so a code (even an observed one) works once.
Recovery codes are 60 random bits each, shown once and stored as SHA-256 digests.
"""

from __future__ import annotations

import secrets
import time

import pyotp

from labvault.crypto import digests

ISSUER = "labvault"
STEP_SECONDS = 30
DRIFT_STEPS = 1
RECOVERY_CODES = 10
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def new_secret() -> str:
    return pyotp.random_base32(32)


def otpauth_uri(secret: str, account_label: str, issuer: str = ISSUER) -> str:
    return pyotp.TOTP(secret, interval=STEP_SECONDS).provisioning_uri(name=account_label,
                                                                        issuer_name=issuer)


def current_code(secret: str, at: float | None = None) -> str:
    return pyotp.TOTP(secret, interval=STEP_SECONDS).at(int(at if at is not None else time.time()))


def matching_step(secret: str, code: str, at: float | None = None) -> int | None:
    """The time step ``code`` is valid for (within the drift window), or None."""
    code = (code or "").strip().replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    now = at if at is not None else time.time()
    totp = pyotp.TOTP(secret, interval=STEP_SECONDS)
    step_now = int(now) // STEP_SECONDS
    for delta in range(-DRIFT_STEPS, DRIFT_STEPS + 1):
        step = step_now + delta
        if secrets.compare_digest(totp.at(step * STEP_SECONDS), code):
            return step
    return None


def new_recovery_codes(n: int = RECOVERY_CODES) -> list[str]:
    out = []
    for _ in range(n):
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(12))
        out.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
    return out


def recovery_digest(code: str) -> bytes:
    norm = code.strip().lower().replace("-", "").replace(" ", "")
    return digests.sha256(b"labvault/recovery/v1\x00" + norm.encode())
