"""Read budgets: distinct patients an account may open per sliding window.

Two windows: ``10m`` (short, catches a scripted burst within minutes) and ``day``
(long, catches a slow drip). Limits are per role, the most generous of an account's
roles applies, and each lab may override them (``labvault guard config --tenant ID
--set budget.reception.10m=80``). Defaults are in ``DEFAULT_BUDGETS`` and docs/guard.md.

State is a set of *marks* (account, kind, item, last time) in sliding windows. The
default ``DbMarkStore`` keeps the windows in process memory — counting costs a few
microseconds — and writes the marks to the ``guard_marks`` table behind the reads
(every ``FLUSH_SECONDS`` (2 s) or ``FLUSH_BATCH`` marks, in the reading transaction;
a patient re-read moves its stored mark forward at most once a minute), and
re-reads each account's marks from the table every ``SYNC_SECONDS``: several workers
on one database see each other's reads within seconds. ``RedisMarkStore`` keeps the
windows in Redis sorted sets for deployments that need an exact shared count.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.engine import Connection

from labvault.store import repositories_guard as grepo

SHORT_SECONDS = 600          # the "10m" window
LONG_SECONDS = 86_400        # the "day" window
SYNC_SECONDS = 5.0
FLUSH_SECONDS = 2.0
FLUSH_BATCH = 256
SYNC_MARGIN = 60.0
REFLUSH_SECONDS = 60.0   # a re-read moves a stored mark forward at most once a minute


@dataclass(frozen=True, slots=True)
class Limits:
    short: int   # distinct patients per 10 minutes
    long: int    # distinct patients per day


# A reception desk registers and looks up a few dozen patients an hour; a biologist
# validates a few hundred reports a day. The limits leave 2-3x headroom over a busy
# day observed in a medium lab and stop a script within its first minute.
DEFAULT_BUDGETS: dict[str, Limits] = {
    "reception": Limits(60, 400),
    "technician": Limits(60, 500),
    "biologist": Limits(120, 1000),
    "lab_admin": Limits(60, 300),
    "dpo": Limits(30, 200),
    "patient": Limits(5, 20),
    "*": Limits(30, 200),       # any other staff role
}


def limits_for(roles: Iterable[str], config: Mapping[str, str], kind: str = "staff") -> Limits:
    """The most generous limits among the account's roles (lab overrides first)."""
    names = ["patient"] if kind == "patient" else (sorted(roles) or ["*"])

    def one(role: str) -> Limits:
        base = DEFAULT_BUDGETS.get(role, DEFAULT_BUDGETS["*"])
        return Limits(int(config.get(f"budget.{role}.10m", base.short)),
                      int(config.get(f"budget.{role}.day", base.long)))

    picked = [one(r) for r in names]
    return Limits(max(p.short for p in picked), max(p.long for p in picked))


class Window:
    """Items with their last time in two sliding windows, oldest first (re-touching
    moves an item to the end); counting is amortised O(1): old items fall off the front."""

    __slots__ = ("long", "short", "synced")

    def __init__(self) -> None:
        self.short: OrderedDict[str, float] = OrderedDict()
        self.long: OrderedDict[str, float] = OrderedDict()
        self.synced = 0.0

    def touch(self, items: Iterable[str], now: float) -> None:
        for d in (self.short, self.long):
            for it in items:
                if it in d:
                    d.move_to_end(it)
                d[it] = now

    def merge(self, loaded: Iterable[tuple[str, float]]) -> None:
        merged = dict(self.long)
        for it, at in loaded:
            if merged.get(it, 0.0) < at:
                merged[it] = at
        ordered = sorted(merged.items(), key=lambda kv: kv[1])
        self.long = OrderedDict(ordered)
        self.short = OrderedDict(ordered)

    @staticmethod
    def _prune(d: OrderedDict[str, float], horizon: float) -> None:
        while d:
            first = next(iter(d.values()))
            if first >= horizon:
                return
            d.popitem(last=False)

    def counts(self, now: float) -> tuple[int, int]:
        self._prune(self.long, now - LONG_SECONDS)
        self._prune(self.short, now - SHORT_SECONDS)
        return len(self.short), len(self.long)


class MarkStore(Protocol):
    def add(self, conn: Connection, tenant_id: str, account_id: str, kind: str,
            items: Sequence[str], now: float) -> tuple[int, int]:
        """Record ``items`` at ``now``; return the distinct counts in the (10m, day) windows."""
        ...

    def maybe_flush(self, conn: Connection, now: float) -> None: ...

    def forget(self, tenant_id: str, account_id: str) -> None: ...


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class DbMarkStore:
    def __init__(self) -> None:
        self.worker = secrets.token_hex(8)      # marks this process wrote are known already
        self._windows: dict[tuple[str, str, str], Window] = {}
        self._pending: dict[tuple[str, str, str, str], float] = {}
        self._flushed: dict[tuple[str, str, str, str], float] = {}
        self._last_flush = 0.0
        self._lock = threading.Lock()

    def add(self, conn: Connection, tenant_id: str, account_id: str, kind: str,
            items: Sequence[str], now: float) -> tuple[int, int]:
        key = (tenant_id, account_id, kind)
        with self._lock:
            w = self._windows.get(key)
            if w is None:
                w = self._windows[key] = Window()
            if now - w.synced > SYNC_SECONDS:
                # First sync: the whole day; later: what *other* workers flushed since (with
                # a margin for their flush delay and clock skew).
                if not w.synced:
                    loaded = grepo.marks_since(conn, tenant_id, account_id, kind,
                                               _dt(now - LONG_SECONDS))
                else:
                    loaded = grepo.marks_since(
                        conn, tenant_id, account_id, kind,
                        _dt(max(now - LONG_SECONDS, w.synced - SYNC_MARGIN)), self.worker)
                if loaded:
                    w.merge((it, at.timestamp()) for it, at in loaded)
                w.synced = now
            w.touch(items, now)
            for it in items:
                key4 = (tenant_id, account_id, kind, it)
                prev = self._flushed.get(key4)
                if prev is None or now - prev >= REFLUSH_SECONDS:
                    self._pending[key4] = now
            return w.counts(now)

    def maybe_flush(self, conn: Connection, now: float) -> None:
        if not self._pending or (now - self._last_flush < FLUSH_SECONDS
                                 and len(self._pending) < FLUSH_BATCH):
            return
        self.flush(conn, now)

    def flush(self, conn: Connection, now: float) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = now
            self._flushed.update(pending)
            if len(self._flushed) > 200_000:
                horizon = now - LONG_SECONDS
                self._flushed = {k: at for k, at in self._flushed.items() if at >= horizon}
        grepo.upsert_marks(conn, [
            {"tenant_id": t, "account_id": a, "kind": k, "item": it, "last_at": _dt(at),
             "worker": self.worker}
            for (t, a, k, it), at in pending.items()])

    def forget(self, tenant_id: str, account_id: str) -> None:
        with self._lock:
            for key in [k for k in self._windows if k[0] == tenant_id and k[1] == account_id]:
                del self._windows[key]


class RedisMarkStore:
    """Windows as Redis sorted sets ``lv:guard:{tenant}:{account}:{kind}`` (member = item,
    score = last time); one pipelined round trip per charge; keys expire after a day."""

    def __init__(self, url: str, client: Any = None) -> None:
        import redis
        self.client = client or redis.Redis.from_url(url)

    def _key(self, tenant_id: str, account_id: str, kind: str) -> str:
        return f"lv:guard:{tenant_id}:{account_id}:{kind}"

    def add(self, conn: Connection, tenant_id: str, account_id: str, kind: str,
            items: Sequence[str], now: float) -> tuple[int, int]:
        key = self._key(tenant_id, account_id, kind)
        pipe = self.client.pipeline(transaction=True)
        if items:
            pipe.zadd(key, dict.fromkeys(items, now))
        pipe.zremrangebyscore(key, "-inf", now - LONG_SECONDS)
        pipe.zcount(key, now - SHORT_SECONDS, "+inf")
        pipe.zcard(key)
        pipe.expire(key, LONG_SECONDS + 60)
        res = pipe.execute()
        return int(res[-3]), int(res[-2])

    def maybe_flush(self, conn: Connection, now: float) -> None:
        return None

    def forget(self, tenant_id: str, account_id: str) -> None:
        for kind in ("read", "search", "miss", "deny"):
            self.client.delete(self._key(tenant_id, account_id, kind))
