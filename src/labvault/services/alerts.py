"""Alerts: stored (sealed details), deduplicated, dispatched to log / webhook / e-mail.

Implements the gate's ``AlertSink``. Plugged as ``lv.alerts`` by ``services/wiring.py``.
Reading and acknowledging alerts is for the lab's DPO and lab administrators (and the
CLI operator); each read and ack passes the gate (resource ``alert``) and is audited.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from labvault.domain.actors import Actor
from labvault.domain.categories import Action
from labvault.errors import AccessDenied, NotFound
from labvault.guard.alerts import (
    Dispatcher,
    normalise_severity,
    notice_from_row,
    sinks_from_settings,
)
from labvault.services.gate import Access
from labvault.store import repositories_guard as grepo
from labvault.store.ids import new_id

if TYPE_CHECKING:
    from labvault.services.app import Labvault

PLATFORM = "platform"                 # tenant_id of alerts that concern no lab
ALERT_ROLES = frozenset({"dpo", "lab_admin"})


def has_written(conn: Connection) -> bool:
    """True if ``conn`` is SQLite and its transaction already wrote (holds the write lock)."""
    if conn.dialect.name != "sqlite":
        return False
    dbapi = conn.connection.dbapi_connection
    return dbapi is not None and bool(getattr(dbapi, "in_transaction", False))


def actor_summary(actor: Actor | None) -> dict[str, Any]:
    if actor is None:
        return {}
    return {"id": actor.id, "kind": actor.kind, "display": actor.display,
            "roles": sorted(actor.roles), "client": actor.client,
            "session_id": actor.session_id, "request_id": actor.request_id}


class AlertService:
    def __init__(self, lv: Labvault, dispatcher: Dispatcher | None = None) -> None:
        self.lv = lv
        self.dispatcher = dispatcher or Dispatcher(sinks_from_settings(lv.settings.extra))
        self.dedup = timedelta(
            seconds=lv.settings.whole_number("LABVAULT_ALERT_DEDUP_SECONDS", 0))
        self._recent: dict[tuple[str, str, str | None], float] = {}
        self._lock = threading.Lock()

    # -- raising ---------------------------------------------------------------------------
    def raise_alert(self, conn: Connection, tenant_id: str | None, kind: str, severity: str,
                    actor: Actor | None, detail: Mapping[str, Any]) -> str | None:
        """Store (or merge into a recent open alert) and dispatch; in the caller's transaction."""
        return self._raise(conn, conn, tenant_id, kind, severity, actor, detail)

    def _raise(self, read: Connection, write: Connection, tenant_id: str | None, kind: str,
               severity: str, actor: Actor | None, detail: Mapping[str, Any],
               dispatch: bool = True) -> str | None:
        severity = normalise_severity(severity)
        lv = self.lv
        now = lv.now()
        tenant = tenant_id or PLATFORM
        actor_id = actor.id if actor else None
        key = (tenant, kind, actor_id)
        mono = time.monotonic()
        existing = grepo.open_alert_since(write, tenant, kind, actor_id, now - self.dedup)
        if existing is not None:
            grepo.bump_alert(write, tenant, existing["alert_id"], now)
            with self._lock:
                self._recent[key] = mono
            return str(existing["alert_id"])
        alert_id = new_id("alrt")
        sealed = None
        if tenant_id is not None:
            body = json.dumps({"detail": dict(detail), "actor": actor_summary(actor)},
                              default=str, sort_keys=True).encode()
            sealed = lv.gate.seal_tenant_value(read, tenant_id, "guard_alerts", "detail_sealed",
                                               alert_id, body)
        row = {"tenant_id": tenant, "alert_id": alert_id, "kind": kind, "severity": severity,
               "status": "open", "actor_id": actor_id, "count": 1, "created_at": now,
               "last_seen_at": now, "detail_sealed": sealed}
        grepo.insert_alert(write, row)
        lv.gate.audit.event(write, actor or Actor.system("guard"), "alert.raised", "ok",
                            tenant_id, {"alert_id": alert_id, "kind": kind,
                                        "severity": severity})
        with self._lock:
            self._recent[key] = mono
        if dispatch:
            self.dispatcher.submit(notice_from_row(row))
        return alert_id

    def recently_raised(self, tenant_id: str | None, kind: str, actor_id: str | None) -> bool:
        """True if this process raised (or merged) the same alert within the dedup window:
        lets hot paths skip the database for an alert already open."""
        with self._lock:
            at = self._recent.get((tenant_id or PLATFORM, kind, actor_id))
        return at is not None and time.monotonic() - at < self.dedup.total_seconds() / 2

    # -- reading -----------------------------------------------------------------------------
    def _authorise(self, conn: Connection, actor: Actor, tenant_id: str | None,
                   action: Action) -> None:
        # Defence in depth on top of the policy: only DPO / lab admin of that very lab.
        if actor.kind not in ("operator", "system") and (
                not (ALERT_ROLES & actor.roles) or tenant_id is None
                or actor.tenant_id != tenant_id):
            raise AccessDenied("not allowed", "alerts are for the lab's DPO and lab administrators")
        if tenant_id is not None:
            self.lv.gate.check(conn, Access(actor, action, tenant_id, frozenset(),
                                            purpose="security", resource="alert"))

    def list(self, actor: Actor, tenant_id: str | None = None, status: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        lv = self.lv
        if tenant_id is None and actor.kind not in ("operator", "system"):
            tenant_id = actor.tenant_id
        with lv.begin() as conn:
            self._authorise(conn, actor, tenant_id, Action.READ)
            rows = grepo.list_alerts(conn, tenant_id, status, max(1, min(limit, 1000)))
            out = []
            for r in rows:
                detail: Any = None
                if r["detail_sealed"] is not None and r["tenant_id"] != PLATFORM:
                    if tenant_id is None:   # operator listing every lab: one check per lab
                        lv.gate.check(conn, Access(actor, Action.READ, r["tenant_id"],
                                                   frozenset(), purpose="security",
                                                   resource="alert"))
                    detail = json.loads(lv.gate.open_tenant_value_checked(
                        conn, r["tenant_id"], "guard_alerts", "detail_sealed", r["alert_id"],
                        r["detail_sealed"]))
                out.append({"id": r["alert_id"], "tenant_id": r["tenant_id"],
                            "kind": r["kind"], "severity": r["severity"],
                            "status": r["status"], "actor_id": r["actor_id"],
                            "count": r["count"], "created_at": r["created_at"].isoformat(),
                            "last_seen_at": r["last_seen_at"].isoformat(),
                            "acked_by": r["acked_by"],
                            "acked_at": r["acked_at"].isoformat() if r["acked_at"] else None,
                            "detail": detail})
            return out

    def ack(self, actor: Actor, alert_id: str) -> dict[str, Any]:
        lv = self.lv
        if actor.kind not in ("operator", "system") and not (ALERT_ROLES & actor.roles):
            raise AccessDenied("not allowed", "alerts are for the lab's DPO and lab administrators")
        with lv.begin() as conn:
            row = grepo.get_alert(conn, alert_id)
            tenant = None if row is None or row["tenant_id"] == PLATFORM else row["tenant_id"]
            if row is None or (actor.kind not in ("operator", "system")
                               and actor.tenant_id != tenant):
                raise NotFound(f"no alert {alert_id}", "list alerts with `labvault alerts list`")
            self._authorise(conn, actor, tenant, Action.WRITE)
            now = lv.now()
            # The first acknowledgement is the record (who took the alert in hand, when):
            # a second one, or one racing it, answers it and overwrites nothing.
            if row["status"] == "acked" or not grepo.ack_alert(conn, row["tenant_id"],
                                                                alert_id, actor.id, now):
                first = grepo.get_alert(conn, alert_id) or row
                return {"id": alert_id, "status": "acked", "acked_by": first["acked_by"],
                        "acked_at": first["acked_at"].isoformat(), "already_acked": True}
            lv.gate.audit.event(conn, actor, "alert.acked", "ok", tenant,
                                {"alert_id": alert_id, "kind": row["kind"]})
        return {"id": alert_id, "status": "acked", "acked_by": actor.id,
                "acked_at": now.isoformat(), "already_acked": False}

    def flush(self, timeout: float = 10.0) -> bool:
        return self.dispatcher.flush(timeout)

