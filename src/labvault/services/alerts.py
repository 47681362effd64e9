"""Alerts: stored (sealed details), deduplicated, dispatched to log / webhook / e-mail.

Implements the gate's ``AlertSink``. Plugged as ``lv.alerts`` by ``services/wiring.py``.
Reading and acknowledging alerts is for the lab's DPO and lab administrators (every alert,
resource ``alert``), its biologists (the clinical alerts, resource ``clinical-alert``) and
the CLI operator; each read and ack passes the gate and is audited.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from labvault.domain.actors import Actor
from labvault.domain.categories import Action
from labvault.errors import AccessDenied, NotFound
from labvault.guard.alerts import (
    CLINICAL_KINDS,
    Dispatcher,
    is_clinical,
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
SECURITY_ROLES = frozenset({"dpo", "lab_admin"})   # every alert of their lab
CLINICAL_ROLES = frozenset({"biologist"})          # the clinical alerts (panic values)
EVER = datetime(2000, 1, 1, tzinfo=UTC)    # "seen since": any open alert, however old
NOT_YOURS = ("alerts are for the lab's biologists (panic values), DPO and lab "
             "administrators")


@dataclass(frozen=True, slots=True)
class Reach:
    """The alerts a reader may read and acknowledge, and the gate resource it asks for."""

    resource: str
    purpose: str
    kinds: frozenset[str] | None          # None: every kind

    def covers(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


EVERY_ALERT = Reach("alert", "security", None)
CLINICAL_ALERTS = Reach("clinical-alert", "care", CLINICAL_KINDS)


def reach(actor: Actor) -> Reach:
    """The DPO and lab administrators read every alert of their lab; a biologist only the
    clinical ones: security alerts name staff accounts and are the DPO's. Technicians get
    none (the policy table grants them no alert: the bench sees the flag as it enters the
    value; calling the prescriber about it is the biologist's duty)."""
    if actor.kind in ("operator", "system") or SECURITY_ROLES & actor.roles:
        return EVERY_ALERT
    if CLINICAL_ROLES & actor.roles:
        return CLINICAL_ALERTS
    raise AccessDenied("not allowed", NOT_YOURS)


def _listed(row: Mapping[str, Any], detail: Any) -> dict[str, Any]:
    return {"id": row["alert_id"], "tenant_id": row["tenant_id"], "kind": row["kind"],
            "severity": row["severity"], "status": row["status"], "actor_id": row["actor_id"],
            "count": row["count"], "created_at": row["created_at"].isoformat(),
            "last_seen_at": row["last_seen_at"].isoformat(), "acked_by": row["acked_by"],
            "acked_by_name": None,
            "acked_at": row["acked_at"].isoformat() if row["acked_at"] else None,
            "detail": detail}


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
                    actor: Actor | None, detail: Mapping[str, Any],
                    subject: str | None = None) -> str | None:
        """Store (or merge into a recent open alert) and dispatch; in the caller's transaction.
        ``subject``: what the alert is about (e.g. one result and its value); alerts about
        the same subject are merged, whoever raised them (see ``_repeats``)."""
        return self._raise(conn, conn, tenant_id, kind, severity, actor, detail,
                           subject=subject)

    def _repeats(self, conn: Connection, tenant_id: str | None, kind: str,
                 actor_id: str | None, subject: str | None,
                 since: datetime) -> tuple[dict[str, Any] | None, bytes | None]:
        """The open alert this one repeats (or None), and this one's subject digest.

        With a subject: the alert about the same subject. Without: a security alert
        repeats the same kind from the same account (a flood from one account is one
        alert); a clinical alert repeats nothing -- one account (an analyser) sends every
        patient's results, and each panic value must be named and sent."""
        if subject is not None and tenant_id is not None:
            digest = self.lv.guard.digest(conn, tenant_id, "alert-subject", subject)
            return grepo.open_alert_about(conn, tenant_id, kind, digest, since), digest
        if is_clinical(kind):
            return None, None
        return grepo.open_alert_since(conn, tenant_id or PLATFORM, kind, actor_id, since), None

    def _raise(self, read: Connection, write: Connection, tenant_id: str | None, kind: str,
               severity: str, actor: Actor | None, detail: Mapping[str, Any],
               dispatch: bool = True, subject: str | None = None) -> str | None:
        severity = normalise_severity(severity)
        lv = self.lv
        now = lv.now()
        tenant = tenant_id or PLATFORM
        actor_id = actor.id if actor else None
        key = (tenant, kind, actor_id)
        mono = time.monotonic()
        existing, digest = self._repeats(write, tenant_id, kind, actor_id, subject,
                                         now - self.dedup)
        if existing is not None:
            grepo.bump_alert(write, tenant, existing["alert_id"], now)
            if digest is None:
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
               "last_seen_at": now, "detail_sealed": sealed, "subject_digest": digest}
        grepo.insert_alert(write, row)
        lv.gate.audit.event(write, actor or Actor.system("guard"), "alert.raised", "ok",
                            tenant_id, {"alert_id": alert_id, "kind": kind,
                                        "severity": severity})
        if digest is None and not is_clinical(kind):
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
                   action: Action) -> Reach:
        """Which alerts ``actor`` may read or acknowledge in ``tenant_id`` (gate decision,
        audited). Defence in depth on top of the policy: only the roles of ``reach``, and
        only in their own laboratory."""
        r = reach(actor)
        if actor.kind not in ("operator", "system") and (
                tenant_id is None or actor.tenant_id != tenant_id):
            raise AccessDenied("not allowed", NOT_YOURS)
        if tenant_id is not None:
            self.lv.gate.check(conn, Access(actor, action, tenant_id, frozenset(),
                                            purpose=r.purpose, resource=r.resource))
        return r

    def list(self, actor: Actor, tenant_id: str | None = None, status: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        """The alerts ``actor`` may read, newest first: every alert of the lab for its DPO
        and lab administrators, the clinical ones (panic values) for its biologists."""
        lv = self.lv
        if tenant_id is None and actor.kind not in ("operator", "system"):
            tenant_id = actor.tenant_id
        with lv.begin() as conn:
            r = self._authorise(conn, actor, tenant_id, Action.READ)
            rows = grepo.list_alerts(conn, tenant_id, status, max(1, min(limit, 1000)),
                                     r.kinds)
            out = []
            for row in rows:
                detail: Any = None
                if row["detail_sealed"] is not None and row["tenant_id"] != PLATFORM:
                    if tenant_id is None:   # operator listing every lab: one check per lab
                        lv.gate.check(conn, Access(actor, Action.READ, row["tenant_id"],
                                                   frozenset(), purpose=r.purpose,
                                                   resource=r.resource))
                    detail = json.loads(lv.gate.open_tenant_value_checked(
                        conn, row["tenant_id"], "guard_alerts", "detail_sealed",
                        row["alert_id"], row["detail_sealed"]))
                out.append(_listed(row, detail))
            self._name_ackers(conn, out)
            return out

    def _name_ackers(self, conn: Connection, listed: Sequence[dict[str, Any]]) -> None:
        """``acked_by_name``: the name of the laboratory's staff member who acknowledged
        each alert (the console names staff; ``acked_by`` keeps the account id). None for
        an account of no laboratory (the CLI operator), a deleted one, or a platform
        alert: the id is then what there is."""
        by_lab: dict[str, set[str]] = {}
        for a in listed:
            if a["acked_by"] and a["tenant_id"] != PLATFORM:
                by_lab.setdefault(a["tenant_id"], set()).add(a["acked_by"])
        names = {(t, i): n for t, ids in by_lab.items()
                 for i, n in self.lv.accounts.staff_names(conn, t, ids).items()}
        for a in listed:
            a["acked_by_name"] = names.get((a["tenant_id"], a["acked_by"]))

    def ack(self, actor: Actor, alert_id: str) -> dict[str, Any]:
        """Acknowledge an alert: who and when are recorded (and audited, ``alert.acked``).
        An alert of another lab, or one the actor may not read (a security alert for a
        biologist), is answered as absent."""
        lv = self.lv
        r = reach(actor)
        with lv.begin() as conn:
            row = grepo.get_alert(conn, alert_id)
            tenant = None if row is None or row["tenant_id"] == PLATFORM else row["tenant_id"]
            if row is None or (actor.kind not in ("operator", "system")
                               and actor.tenant_id != tenant) or not r.covers(row["kind"]):
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

    def ack_about(self, conn: Connection, actor: Actor, tenant_id: str, kind: str,
                  subject: str) -> str | None:
        """Acknowledge, in the caller's transaction, the open alert of ``kind`` about
        ``subject`` (the ``subject`` it was raised with), as ``ack`` does: when the work
        that answers the alert is done (a failed report sent again). Returns its id, or
        None when none is open or ``actor`` may not acknowledge that kind (nothing done)."""
        try:
            which = reach(actor)
        except AccessDenied:
            return None
        if not which.covers(kind):
            return None
        digest = self.lv.guard.digest(conn, tenant_id, "alert-subject", subject)
        row = grepo.open_alert_about(conn, tenant_id, kind, digest, EVER)
        if row is None:
            return None
        self._authorise(conn, actor, tenant_id, Action.WRITE)
        if not grepo.ack_alert(conn, tenant_id, row["alert_id"], actor.id, self.lv.now()):
            return None
        self.lv.gate.audit.event(conn, actor, "alert.acked", "ok", tenant_id,
                                 {"alert_id": row["alert_id"], "kind": kind})
        return str(row["alert_id"])

    def close_about(self, conn: Connection, by: Actor, tenant_id: str, kind: str,
                    subject: str, note: Mapping[str, Any]) -> str | None:
        """Acknowledge, in the caller's transaction, the open alert of ``kind`` about
        ``subject`` because the work it stood for is done and the alert has nothing left
        to ask (an import issue holding a panic value, resolved or discarded). ``by``, who
        did that work, is recorded as who took the alert in hand -- the gate allowed the
        work, whatever alerts ``by`` may read (a technician resolves issues, reads no
        alert) -- and ``note`` (ids and codes only: which work) is added to the alert's
        sealed detail (``closed``) and to the audit event. Returns the alert's id, or None
        when none is open."""
        digest = self.lv.guard.digest(conn, tenant_id, "alert-subject", subject)
        row = grepo.open_alert_about(conn, tenant_id, kind, digest, EVER)
        if row is None or not grepo.ack_alert(conn, tenant_id, row["alert_id"], by.id,
                                              self.lv.now()):
            return None
        alert_id = str(row["alert_id"])
        gate = self.lv.gate
        body: dict[str, Any] = {"detail": {}, "actor": {}}
        if row["detail_sealed"] is not None:
            body = json.loads(gate.open_tenant_value_checked(
                conn, tenant_id, "guard_alerts", "detail_sealed", alert_id,
                row["detail_sealed"]))
        body["closed"] = dict(note)
        grepo.set_alert_detail(conn, tenant_id, alert_id, gate.seal_tenant_value(
            conn, tenant_id, "guard_alerts", "detail_sealed", alert_id,
            json.dumps(body, default=str, sort_keys=True).encode()))
        gate.audit.event(conn, by, "alert.acked", "ok", tenant_id,
                         {"alert_id": alert_id, "kind": kind, "closed": dict(note)})
        return alert_id

    def flush(self, timeout: float = 10.0) -> bool:
        return self.dispatcher.flush(timeout)

