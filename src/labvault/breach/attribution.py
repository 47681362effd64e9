"""Who leaked it: sources of attribution evidence, pluggable.

The service asks each registered ``AttributionSource`` about the matched patients of
each tenant. Built in: the tenants and the time range of the matched records (clear
workflow timestamps), and the accounts that read those patients according to the
gate's audit hook when it can list its entries. The guard (honeytoken patients,
export fingerprints) and the persistent audit log plug in the same way:
``lv.breach.attribution_sources.append(source)`` in ``services/wiring.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy.engine import Connection


class AttributionSource(Protocol):
    name: str

    def attribute(self, conn: Connection, matched: Mapping[str, Sequence[str]],
                  rows: Mapping[str, Mapping[str, Sequence[int]]]) -> list[dict[str, Any]]:
        """``matched``: tenant id -> matched patient ids; ``rows``: tenant -> patient ->
        1-based dump rows. Returns attribution findings (JSON-able, ids only)."""
        ...


def rank_readers(entries: Sequence[tuple[str, str | None, Sequence[str]]],
                 matched: Mapping[str, Sequence[str]], top: int = 10) -> list[dict[str, Any]]:
    """Accounts ranked by how many matched patients they read.

    ``entries``: (account id, tenant id, patient ids) of allowed read/search/export
    decisions. Score = overlap / matched patients of the tenant (coverage), ties broken
    by precision (overlap / patients the account read)."""
    wanted = {t: set(ids) for t, ids in matched.items()}
    overlap: dict[tuple[str, str], set[str]] = {}
    read: Counter[tuple[str, str]] = Counter()
    for account, tenant, ids in entries:
        if tenant is None or tenant not in wanted:
            continue
        k = (account, tenant)
        read[k] += len(ids)
        hit = wanted[tenant].intersection(ids)
        if hit:
            overlap.setdefault(k, set()).update(hit)
    ranked = sorted(overlap.items(), key=lambda kv: (-len(kv[1]) / max(1, len(wanted[kv[0][1]])),
                                                     -len(kv[1]) / max(1, read[kv[0]])))
    return [{"kind": "reader", "account": a, "tenant_id": t, "overlap": len(s),
             "coverage": round(len(s) / max(1, len(wanted[t])), 3),
             "precision": round(len(s) / max(1, read[(a, t)]), 3)}
            for (a, t), s in ranked[:top]]
