"""Sessions: opaque random tokens, stored as SHA-256 digests, short-lived.

A token is 256 random bits (URL-safe base64); the database keeps only its SHA-256,
so a stolen database yields no usable session. A session ends at the first of: idle
timeout (15 min without a request), absolute lifetime (8 h), logout, revocation
(revoke-all, password change, account disabled). Roles are never stored in the
session: each request reads them from the account, so a role change or a disabled
account applies to live sessions at once.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from labvault.crypto import digests

TOKEN_BYTES = 32
IDLE = timedelta(minutes=15)
ABSOLUTE_STAFF = timedelta(hours=8)
ABSOLUTE_PATIENT = timedelta(hours=8)
ENROL_LINK = timedelta(hours=72)
REAUTH_WINDOW = timedelta(minutes=5)      # "recent authentication" for sensitive operations
TOUCH_EVERY = timedelta(seconds=30)       # last_seen is written at most this often

FULL = "full"
MFA_ENROL = "mfa-enrol"                   # password ok, TOTP not yet enrolled: /auth/mfa only
ENROL_LINK_SCOPE = "enrol-link"           # one-time enrolment link sent to a new user


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta = IDLE
    absolute_staff: timedelta = ABSOLUTE_STAFF
    absolute_patient: timedelta = ABSOLUTE_PATIENT


def new_token() -> tuple[str, bytes]:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_digest(token)


def token_digest(token: str) -> bytes:
    return digests.sha256(b"labvault/session/v1\x00" + token.encode("utf-8", "replace"))


def aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def is_live(row: Mapping[str, Any], now: datetime, policy: SessionPolicy) -> bool:
    """Not revoked, not past its absolute end, not idle for longer than allowed."""
    if row.get("revoked_at") is not None:
        return False
    if aware(row["expires_at"]) <= now:
        return False
    idle = aware(row["last_seen_at"]) + policy.idle <= now
    return row.get("scope") == ENROL_LINK_SCOPE or not idle
