"""Login throttling per account and per client address.

After ``FREE_FAILURES`` failed attempts, each further attempt must wait an
exponentially growing delay (1 s, 2 s, 4 s … capped at ``MAX_DELAY``); after
``LOCK_AFTER`` failures the subject is locked for ``LOCK_MINUTES`` (an account can
be unlocked earlier by its laboratory administrator). Whatever the reason, the
caller only ever sees one generic message: no account enumeration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from labvault.crypto import digests


@dataclass(frozen=True)
class ThrottleRules:
    free_failures: int = 3
    max_delay_s: int = 300
    lock_after: int = 10
    lock_minutes: int = 30


ACCOUNT_RULES = ThrottleRules()
# A client address (one office NAT may serve a whole lab) gets more room, then the same curve.
CLIENT_RULES = ThrottleRules(free_failures=20, lock_after=100, lock_minutes=15)


def delay_after(failures: int, rules: ThrottleRules) -> timedelta:
    if failures <= rules.free_failures:
        return timedelta(0)
    return timedelta(seconds=min(2 ** (failures - rules.free_failures - 1), rules.max_delay_s))


def retry_at(row: Mapping[str, Any] | None, rules: ThrottleRules) -> datetime | None:
    """When the subject may try again, or None if it may now."""
    if row is None:
        return None
    candidates = []
    if row.get("locked_until") is not None:
        candidates.append(_aware(row["locked_until"]))
    d = delay_after(int(row["failures"]), rules)
    if d:
        candidates.append(_aware(row["last_failure_at"]) + d)
    return max(candidates) if candidates else None


def after_failure(row: Mapping[str, Any] | None, now: datetime, rules: ThrottleRules
                  ) -> tuple[int, datetime | None]:
    """(failures, locked_until) once one more failure is recorded."""
    failures = (int(row["failures"]) if row else 0) + 1
    locked = now + timedelta(minutes=rules.lock_minutes) if failures >= rules.lock_after else None
    return failures, locked


def account_subject(account_id: str) -> str:
    return f"acct:{account_id}"


def client_subject(client: str | None, secret: bytes) -> str:
    """A keyed digest of the client address: the address itself is never stored."""
    return "ip:" + digests.hmac_sha256(secret, (client or "unknown").encode())[:16].hex()


def _aware(ts: datetime) -> datetime:
    from datetime import UTC
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
