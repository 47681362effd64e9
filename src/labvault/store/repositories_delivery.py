"""Delivery repositories: destinations, RPPS routes, the outbox (the caller owns the
transaction). Filters are on clear columns only; sealed columns move as bytes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from labvault.store.schema import tenants
from labvault.store.tables_delivery import (
    delivery_destinations,
    delivery_outbox,
    delivery_routes,
)


def insert_destination(conn: Connection, row: dict[str, Any], digests: Iterable[bytes]) -> None:
    conn.execute(insert(delivery_destinations).values(**row))
    rows = [{"tenant_id": row["tenant_id"], "rpps_digest": d,
             "destination_id": row["destination_id"]} for d in dict.fromkeys(digests)]
    if rows:
        conn.execute(insert(delivery_routes), rows)


def destination(conn: Connection, tenant_id: str, destination_id: str) -> dict[str, Any] | None:
    r = conn.execute(select(delivery_destinations).where(
        delivery_destinations.c.tenant_id == tenant_id,
        delivery_destinations.c.destination_id == destination_id)).mappings().first()
    return dict(r) if r is not None else None


def destinations(conn: Connection, tenant_id: str, active_only: bool = True
                 ) -> list[dict[str, Any]]:
    q = select(delivery_destinations).where(delivery_destinations.c.tenant_id == tenant_id)
    if active_only:
        q = q.where(delivery_destinations.c.status == "active")
    q = q.order_by(delivery_destinations.c.created_at, delivery_destinations.c.destination_id)
    return [dict(r) for r in conn.execute(q).mappings()]


def route_counts(conn: Connection, tenant_id: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in conn.execute(select(delivery_routes.c.destination_id).where(
            delivery_routes.c.tenant_id == tenant_id)):
        out[r[0]] = out.get(r[0], 0) + 1
    return out


def remove_destination(conn: Connection, tenant_id: str, destination_id: str,
                       at: datetime) -> bool:
    res = conn.execute(update(delivery_destinations).where(
        delivery_destinations.c.tenant_id == tenant_id,
        delivery_destinations.c.destination_id == destination_id,
        delivery_destinations.c.status == "active").values(status="removed", removed_at=at))
    conn.execute(delivery_routes.delete().where(
        delivery_routes.c.tenant_id == tenant_id,
        delivery_routes.c.destination_id == destination_id))
    return bool(res.rowcount)


def matching_destinations(conn: Connection, tenant_id: str,
                          rpps_digest: bytes | None) -> list[dict[str, Any]]:
    """The lab's active destinations for a report: those taking all its orders, and
    those routed this prescriber's RPPS digest."""
    d = delivery_destinations
    found = {r["destination_id"]: dict(r) for r in conn.execute(select(d).where(
        d.c.tenant_id == tenant_id, d.c.status == "active", d.c.routing == "all")).mappings()}
    if rpps_digest is not None:
        q = select(d).join(delivery_routes, (delivery_routes.c.tenant_id == d.c.tenant_id)
                           & (delivery_routes.c.destination_id == d.c.destination_id)).where(
            delivery_routes.c.tenant_id == tenant_id,
            delivery_routes.c.rpps_digest == rpps_digest, d.c.status == "active")
        for r in conn.execute(q).mappings():
            found.setdefault(r["destination_id"], dict(r))
    return sorted(found.values(), key=lambda r: r["destination_id"])


def insert_outbox(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(delivery_outbox), list(rows))


def due(conn: Connection, now: datetime, tenant_id: str | None = None,
        limit: int = 100) -> list[dict[str, Any]]:
    o = delivery_outbox
    q = select(o).where(o.c.status == "pending", o.c.next_attempt_at <= now)
    if tenant_id is not None:
        q = q.where(o.c.tenant_id == tenant_id)
    q = q.order_by(o.c.next_attempt_at, o.c.outbox_id).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def claim(conn: Connection, tenant_id: str, outbox_id: str, now: datetime,
          until: datetime) -> bool:
    """Lease a due row to this sender until ``until`` (False: another sender took it)."""
    o = delivery_outbox
    res = conn.execute(update(o).where(
        o.c.tenant_id == tenant_id, o.c.outbox_id == outbox_id, o.c.status == "pending",
        o.c.next_attempt_at <= now).values(next_attempt_at=until))
    return bool(res.rowcount)


def outbox_row(conn: Connection, tenant_id: str, outbox_id: str) -> dict[str, Any] | None:
    o = delivery_outbox
    r = conn.execute(select(o).where(o.c.tenant_id == tenant_id,
                                     o.c.outbox_id == outbox_id)).mappings().first()
    return dict(r) if r is not None else None


def outbox_row_of_any_lab(conn: Connection, outbox_id: str) -> dict[str, Any] | None:
    """The row ``outbox_id`` whichever laboratory holds it (the CLI operator's resend
    without ``--tenant``): a primary-key lookup per laboratory, not a scan of the outbox."""
    o = delivery_outbox
    r = conn.execute(select(o).where(o.c.tenant_id.in_(select(tenants.c.tenant_id)),
                                     o.c.outbox_id == outbox_id)).mappings().first()
    return dict(r) if r is not None else None


def outbox(conn: Connection, tenant_id: str, statuses: Sequence[str] | None = None,
           report_id: str | None = None, limit: int = 500,
           newest_first: bool = False) -> list[dict[str, Any]]:
    o = delivery_outbox
    q = select(o).where(o.c.tenant_id == tenant_id)
    if statuses:
        q = q.where(o.c.status.in_(list(statuses)))
    if report_id is not None:
        q = q.where(o.c.report_id == report_id)
    order = (o.c.created_at.desc(), o.c.outbox_id.desc()) if newest_first \
        else (o.c.created_at, o.c.outbox_id)
    q = q.order_by(*order).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def outbox_of_reports(conn: Connection, tenant_id: str, report_ids: Sequence[str]
                      ) -> list[dict[str, Any]]:
    """Where each report's messages stand (clear columns only: no message, no error)."""
    o = delivery_outbox
    out: list[dict[str, Any]] = []
    ids = list(report_ids)
    for i in range(0, len(ids), 500):
        q = select(o.c.outbox_id, o.c.report_id, o.c.destination_id, o.c.kind, o.c.status, o.c.attempts,
                   o.c.created_at, o.c.updated_at, o.c.delivered_at).where(
            o.c.tenant_id == tenant_id, o.c.report_id.in_(ids[i:i + 500])
        ).order_by(o.c.created_at, o.c.outbox_id)
        out.extend(dict(r) for r in conn.execute(q).mappings())
    return out


def update_outbox(conn: Connection, tenant_id: str, outbox_id: str, expect_status: str,
                  **values: Any) -> bool:
    """Update one row if it still has ``expect_status`` (two senders never both mark it)."""
    o = delivery_outbox
    res = conn.execute(update(o).where(o.c.tenant_id == tenant_id, o.c.outbox_id == outbox_id,
                                       o.c.status == expect_status).values(**values))
    return bool(res.rowcount)
