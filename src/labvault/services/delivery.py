"""Result delivery: each published or corrected report goes to the prescriber's or the
hospital's system as an HL7 v2.5 ORU^R01 over MLLP (docs/lab.md "What reaches the
prescriber", docs/hl7.md "Outbound").

- **Destinations** (``delivery add``): a receiver's address (host, port, TLS files) and
  what goes there: every order of the laboratory, or the orders of some prescribers
  (their RPPS numbers kept only as blind-index digests). Its label is sealed.
- **Outbox**: ``enqueue`` runs inside the transaction that publishes or amends a report:
  for each matching destination it composes the message (``domain/outbound.py``) and
  writes it sealed under the patient's data key -- with the publication, or not at all.
- **Sending** is a door's work (``interop/hl7/outbound.py``): it takes the due rows
  (``due``), opens each message through the gate as ``system:delivery`` (purpose care,
  resource report: ``open_message``), sends it and reports the outcome (``record``),
  which marks the row, writes an audit event naming destination, report and patient and,
  when the message will not arrive, raises a ``delivery-failed`` alert.
- **Sending again** (``resend``): a failed message goes back to pending, for the lab's
  biologists and lab administrators (policy resource ``delivery``) -- once the cause is
  fixed (e.g. the doctor's software now knows the patient). Destinations stay the CLI
  operator's (resource ``delivery-destination``: no policy row).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from labvault.crypto import SealContext
from labvault.domain import outbound as O
from labvault.domain import validation as v
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.errors import Conflict, InvalidField, NotFound, UserError
from labvault.services.gate import Access
from labvault.store import repositories as repo
from labvault.store import repositories_delivery as drepo
from labvault.store.ids import new_id

if TYPE_CHECKING:
    from labvault.services.app import Labvault
    from labvault.services.lab import ReportView, _Order

SYSTEM = Actor.system("delivery")
RPPS_INDEX = "rpps"            # the practitioner directory's blind-index kind, same digests
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_BACKOFF = 30.0         # seconds before the 2nd attempt; doubled each time
MAX_BACKOFF = 3600.0
ALERT_KIND = "delivery-failed"
STATUSES = ("pending", "delivered", "failed")
ALERT_SUBJECT = "delivery|{}"          # a message's delivery-failed alert is about it
DESTINATIONS = "delivery-destination"  # no policy row: the CLI operator's (TLS file paths)
OUTBOX = "delivery"                    # policy rows: the lab's biologists and lab admins
CLINICAL = frozenset({Category.CLINICAL})
IDENTITY = frozenset({Category.IDENTITY})


@dataclass(frozen=True, slots=True)
class Destination:
    """Where to connect (clear columns: no personal data)."""

    destination_id: str
    tenant_id: str
    host: str
    port: int
    transport: str               # tls | plaintext
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None

    @staticmethod
    def from_row(r: dict[str, Any]) -> Destination:
        return Destination(r["destination_id"], r["tenant_id"], r["host"], r["port"],
                           r["transport"], r["tls_ca"], r["tls_cert"], r["tls_key"])


@dataclass(frozen=True, slots=True)
class Due:
    """An outbox row to send now: ids only, and where to send it."""

    tenant_id: str
    outbox_id: str
    report_id: str
    patient_id: str
    attempts: int
    destination: Destination | None      # None: removed since the message was queued
    order_id: str                        # named by the alert: the biologist's link to it


class DeliveryNotFailed(Conflict):
    """A resend of a message that has not failed: pending (it will be sent) or delivered."""

    code = "delivery-not-failed"

    def __init__(self, status: str) -> None:
        self.status = status
        super().__init__(
            f"this message is {status}: only a failed message is sent again",
            "it is sent at its next attempt (`labvault delivery send`); nothing to do"
            if status == "pending" else
            "the prescriber's system acknowledged it; nothing to send again")

    def details(self) -> dict[str, Any]:
        return {"delivery_status": self.status}


class DestinationRemoved(Conflict):
    """A resend of a message whose destination was removed since it was queued."""

    code = "destination-removed"

    def __init__(self) -> None:
        super().__init__("the destination this message was for was removed: there is "
                         "nowhere to send it again",
                         "ask the CLI operator to add the prescriber's destination "
                         "(`labvault delivery add`) for the next reports, and transmit this "
                         "one yourself (its PDF from the patient's page)")


class DeliveryErased(UserError):
    """A resend of a message whose patient was erased: it went with the data key."""

    code = "delivery-erased"
    http_status = 410

    def __init__(self) -> None:
        super().__init__("the patient's record was erased: the message went with its data "
                         "key, there is nothing left to send",
                         "nothing to do: an erased patient's reports are not sent")


def no_such_message() -> NotFound:
    """The one answer for an outbox id the laboratory does not hold (absent or another
    laboratory's): the same bytes, the id not echoed."""
    return NotFound("no such message in the laboratory's outbox",
                    "list them with GET /api/v1/deliveries or `labvault delivery status`")


def outbox_purpose(actor: Actor) -> str:
    """The purpose the outbox is used for: care for a biologist (who answers for results
    reaching the prescriber), administration for everyone else (the lab administrator;
    the CLI operator and system jobs, whom the policy admits for any purpose)."""
    return "care" if "biologist" in actor.roles else "administration"


def backoff_delay(attempts: int, base: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: base, 2 base, 4 base...
    capped at an hour."""
    return float(min(base * (2 ** max(attempts - 1, 0)), MAX_BACKOFF))


def _existing_file(value: Path | None, option: str) -> str | None:
    if value is None:
        return None
    if not value.is_file():
        raise UserError(f"{option} {value} does not exist or is not a file",
                        f"give the PEM file with {option}")
    return str(value.resolve())


class DeliveryService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    # == destinations ==========================================================================
    def _admin(self, conn: Connection, actor: Actor, tenant_id: str, action: Action) -> None:
        # No policy row names ``delivery-destination``: only the CLI operator (and system
        # jobs) manage destinations, which name files of the server (TLS certificates and
        # keys); staff accounts are refused (audited) by default deny.
        self.lv.gate.check(conn, Access(actor, action, tenant_id, frozenset(),
                                        purpose="administration", resource=DESTINATIONS))

    def _outbox(self, conn: Connection, actor: Actor, tenant_id: str, action: Action,
                patient_ids: tuple[str, ...] = ()) -> None:
        """The outbox (where messages stand; a failed one sent again): policy resource
        ``delivery``, no category (the message stays sealed), audited."""
        self.lv.gate.check(conn, Access(actor, action, tenant_id, frozenset(),
                                        purpose=outbox_purpose(actor),
                                        patient_ids=patient_ids, resource=OUTBOX))

    def may_resend(self, actor: Actor) -> bool:
        """Whether the policy lets ``actor`` send its laboratory's failed messages again
        (no decision recorded: which forms to show; ``resend`` still asks the gate)."""
        return self._may(actor, Action.WRITE)

    def may_view(self, actor: Actor) -> bool:
        """Whether the policy lets ``actor`` read where its laboratory's messages stand
        (no decision recorded: which menu entries to offer; ``status`` still asks the
        gate)."""
        return self._may(actor, Action.READ)

    def _may(self, actor: Actor, action: Action) -> bool:
        if actor.kind != "staff" or actor.tenant_id is None:
            return False
        return self.lv.gate.policy.decide(Access(
            actor, action, actor.tenant_id, frozenset(), purpose=outbox_purpose(actor),
            resource=OUTBOX)).allowed

    def add_destination(self, actor: Actor, tenant_id: str, name: str, host: str, port: int,
                        rpps: Sequence[str] = (), all_orders: bool = False,
                        tls_ca: Path | None = None, tls_cert: Path | None = None,
                        tls_key: Path | None = None,
                        insecure_plaintext: bool = False) -> dict[str, Any]:
        label = v.text(name, "name", 200, required=True)
        assert label is not None
        host = (host or "").strip()
        if not host or len(host) > 255 or any(c.isspace() for c in host):
            raise InvalidField("host", "must be a host name or an address",
                               "give the receiver's host, e.g. --host hl7.chu.example")
        if not 1 <= port <= 65535:
            raise InvalidField("port", f"{port} is not a TCP port", "give 1 to 65535")
        if all_orders == bool(rpps):
            raise UserError("say which reports go to this destination",
                            "give --rpps NUMBER (once per prescriber) or --all (every order "
                            "of the laboratory), not both")
        numbers = [v.rpps(r, "rpps") for r in rpps]
        if (tls_cert is None) != (tls_key is None):
            raise UserError("--tls-cert and --tls-key go together",
                            "give labvault's client certificate and its private key, or "
                            "neither")
        if tls_ca is None and (tls_cert is not None or not insecure_plaintext):
            raise UserError("a destination needs --tls-ca (the CA that signed the receiver's "
                            "certificate)",
                            "give --tls-ca PEM, or --insecure-plaintext if a VPN protects the "
                            "link (reports would cross the network in clear)")
        if tls_ca is not None and insecure_plaintext:
            raise UserError("--insecure-plaintext and --tls-ca contradict each other",
                            "give one of them")
        ca, cert, key = (_existing_file(tls_ca, "--tls-ca"),
                         _existing_file(tls_cert, "--tls-cert"),
                         _existing_file(tls_key, "--tls-key"))
        self.lv.tenants.get(tenant_id)
        did = new_id("dst")
        with self.lv.begin() as conn:
            self._admin(conn, actor, tenant_id, Action.WRITE)
            digests = [self.lv.lab.digest(conn, tenant_id, RPPS_INDEX, n) for n in numbers]
            sealed = self.lv.gate.seal_tenant_value(conn, tenant_id, "delivery_destinations",
                                                    "label_sealed", did, label.encode())
            prescribers = self.lv.gate.seal_tenant_value(
                conn, tenant_id, "delivery_destinations", "prescribers_sealed", did,
                json.dumps(numbers).encode()) if numbers else None
            drepo.insert_destination(conn, {
                "tenant_id": tenant_id, "destination_id": did, "status": "active",
                "host": host, "port": port,
                "transport": "plaintext" if insecure_plaintext else "tls",
                "tls_ca": ca, "tls_cert": cert, "tls_key": key,
                "routing": "all" if all_orders else "rpps", "created_at": self.lv.now(),
                "removed_at": None, "label_sealed": sealed,
                "prescribers_sealed": prescribers}, digests)
            self.lv.gate.audit.event(conn, actor, "delivery.destination.add", "success",
                                     tenant_id, {"destination_id": did, "host": host,
                                                 "port": port, "prescribers": len(numbers),
                                                 "all": all_orders})
        return {"id": did, "name": label, "host": host, "port": port,
                "transport": "plaintext" if insecure_plaintext else "tls",
                "routing": "all" if all_orders else "rpps", "prescribers": len(numbers)}

    def list_destinations(self, actor: Actor, tenant_id: str,
                          include_removed: bool = False) -> list[dict[str, Any]]:
        self.lv.tenants.get(tenant_id)
        with self.lv.begin() as conn:
            self._admin(conn, actor, tenant_id, Action.READ)
            counts = drepo.route_counts(conn, tenant_id)
            out = []
            for r in drepo.destinations(conn, tenant_id, active_only=not include_removed):
                label = self.lv.gate.open_tenant_value_checked(
                    conn, tenant_id, "delivery_destinations", "label_sealed",
                    r["destination_id"], r["label_sealed"]).decode()
                out.append({"id": r["destination_id"], "name": label, "status": r["status"],
                            "host": r["host"], "port": r["port"], "transport": r["transport"],
                            "tls_ca": r["tls_ca"], "tls_cert": r["tls_cert"],
                            "routing": r["routing"],
                            "prescribers": counts.get(r["destination_id"], 0),
                            "created_at": r["created_at"], "removed_at": r["removed_at"]})
            return out

    def remove_destination(self, actor: Actor, tenant_id: str,
                           destination_id: str) -> dict[str, Any]:
        """Stop sending there. Messages already queued for it are not sent: the sender
        marks them failed (``destination removed``) and raises an alert."""
        self.lv.tenants.get(tenant_id)
        with self.lv.begin() as conn:
            self._admin(conn, actor, tenant_id, Action.WRITE)
            if not drepo.remove_destination(conn, tenant_id, destination_id, self.lv.now()):
                raise NotFound(f"no active destination {destination_id} in this laboratory",
                               "see `labvault delivery list --tenant ID`")
            pending = len(drepo.outbox(conn, tenant_id, ("pending",)))
            self.lv.gate.audit.event(conn, actor, "delivery.destination.remove", "success",
                                     tenant_id, {"destination_id": destination_id})
        return {"id": destination_id, "status": "removed", "pending_in_laboratory": pending}

    # == outbox: written with the publication ==================================================
    def enqueue(self, conn: Connection, order: _Order, report: Callable[[], ReportView],
                corrected: bool) -> int:
        """Compose and queue (sealed) one ORU^R01 per destination this report goes to, in
        the caller's transaction. Returns how many were queued (0: no destination).
        ``report`` builds the report's view (its results unsealed) only when a destination
        matches: a correction in a laboratory without delivery opens nothing more."""
        tenant_id = order.tenant_id
        prescriber = order.request.get("prescriber") or {}
        rpps = prescriber.get("rpps")
        digest = self.lv.lab.digest(conn, tenant_id, RPPS_INDEX, rpps) if rpps else None
        found = drepo.matching_destinations(conn, tenant_id, digest)
        if not found:
            return 0
        view = report()
        # The message names the patient: the identity is read through the gate, audited
        # as the delivery job composing it.
        opened = self.lv.gate.read_patients(conn, Access(
            SYSTEM, Action.READ, tenant_id, IDENTITY, patient_ids=(order.patient_id,),
            resource="patient"))
        identity = opened.get(order.patient_id, {}).get(Category.IDENTITY, {})
        tenant = repo.get_tenant(conn, tenant_id)
        assert tenant is not None
        now = self.lv.now()
        results = [O.OutboundResult(o.observation, corrected and o.status == "amended")
                   for o in view.observations if o.status != "cancelled"]
        rows = []
        for dest in found:
            oid = new_id("out")
            msg = O.compose_oru(O.OutboundReport(
                oid, now, tenant["finess"], tenant["name"], order.patient_id, identity,
                view.report_id, order.request.get("placer_number"),
                order.request.get("filler_number"), prescriber or None, corrected,
                view.collected_at, view.issued_at, results, view.conclusion))
            rows.append({
                "tenant_id": tenant_id, "outbox_id": oid,
                "destination_id": dest["destination_id"], "report_id": view.report_id,
                "order_id": order.order_id, "patient_id": order.patient_id,
                "kind": "corrected" if corrected else "final", "status": "pending",
                "attempts": 0, "created_at": now, "next_attempt_at": now, "updated_at": now,
                "delivered_at": None, "ack_code": None,
                "message_sealed": order.dek.seal(
                    SealContext(tenant_id, "delivery_outbox", "message_sealed", oid), msg),
                "error_sealed": None})
        drepo.insert_outbox(conn, rows)
        return len(rows)

    # == sending (called by the door that speaks MLLP) =========================================
    def due(self, tenant_id: str | None = None, limit: int = 100,
            lease: float = 120.0) -> list[Due]:
        """The pending messages whose next attempt is due, oldest first (no unsealing),
        each leased to the caller for ``lease`` seconds: another sender does not take them
        meanwhile, and if this one stops before recording an outcome they are due again
        when the lease ends."""
        now = self.lv.now()
        with self.lv.begin() as conn:
            rows = drepo.due(conn, now, tenant_id, limit)
            dests: dict[tuple[str, str], Destination | None] = {}
            out = []
            for r in rows:
                if not drepo.claim(conn, r["tenant_id"], r["outbox_id"], now,
                                   now + timedelta(seconds=lease)):
                    continue
                k = (r["tenant_id"], r["destination_id"])
                if k not in dests:
                    d = drepo.destination(conn, *k)
                    dests[k] = Destination.from_row(d) if d and d["status"] == "active" \
                        else None
                out.append(Due(r["tenant_id"], r["outbox_id"], r["report_id"],
                               r["patient_id"], r["attempts"], dests[k], r["order_id"]))
            return out

    def open_message(self, item: Due) -> bytes | None:
        """The message to send, opened through the gate (``system:delivery``, purpose care,
        resource report: an audited read naming the patient). None: the patient was erased
        since (the message went with the data key)."""
        with self.lv.begin() as conn:
            row = drepo.outbox_row(conn, item.tenant_id, item.outbox_id)
            if row is None or row["status"] != "pending":
                return None
            self.lv.gate.check(conn, Access(SYSTEM, Action.READ, item.tenant_id, CLINICAL,
                                            purpose="care", patient_ids=(item.patient_id,),
                                            resource="report"))
            try:
                dek = self.lv.gate.patient_key(conn, item.tenant_id, item.patient_id)
            except NotFound:
                return None
            return self.lv.gate.open_patient_value(dek, item.tenant_id, "delivery_outbox",
                                                   "message_sealed", item.outbox_id,
                                                   row["message_sealed"])

    def record(self, item: Due, outcome: str, ack_code: str | None = None,
               error: str | None = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               backoff: float = DEFAULT_BACKOFF) -> str:
        """Mark an attempt. ``outcome``: ``delivered`` (MSA-1 AA/CA), ``refused`` (AE/AR:
        the receiver will not take it; not retried), ``unsent`` (connection refused, timeout,
        no ACK: retried with exponential backoff until ``max_attempts``) or ``undeliverable``
        (destination removed, patient erased). Returns the row's new status."""
        now = self.lv.now()
        attempts = item.attempts + (0 if outcome == "undeliverable" else 1)
        values: dict[str, Any] = {"attempts": attempts, "updated_at": now, "ack_code": ack_code}
        if outcome == "delivered":
            values.update(status="delivered", delivered_at=now)
        elif outcome == "unsent" and attempts < max_attempts:
            values.update(status="pending",
                          next_attempt_at=now + timedelta(seconds=backoff_delay(attempts,
                                                                                backoff)))
        elif outcome in ("refused", "unsent", "undeliverable"):
            values["status"] = "failed"
        else:
            raise ValueError(f"unknown delivery outcome {outcome!r}")
        with self.lv.begin() as conn:
            if error:
                values["error_sealed"] = self.lv.gate.seal_tenant_value(
                    conn, item.tenant_id, "delivery_outbox", "error_sealed", item.outbox_id,
                    error[:2000].encode())
            if not drepo.update_outbox(conn, item.tenant_id, item.outbox_id, "pending",
                                       **values):
                return "gone"          # another sender marked it meanwhile
            ids = {"outbox_id": item.outbox_id, "report_id": item.report_id,
                   "order_id": item.order_id, "patient_id": item.patient_id,
                   "destination_id": item.destination.destination_id
                   if item.destination else None,
                   "attempt": attempts, "ack": ack_code, "status": values["status"]}
            self.lv.gate.audit.event(conn, SYSTEM, "delivery.send",
                                     "success" if outcome == "delivered" else "failure",
                                     item.tenant_id, {**ids, "outcome": outcome,
                                                      "resource": "report", "purpose": "care"})
            if values["status"] == "failed":
                self.lv.alerts.raise_alert(conn, item.tenant_id, ALERT_KIND, "high", SYSTEM,
                                           {**ids, "outcome": outcome},
                                           subject=ALERT_SUBJECT.format(item.outbox_id))
        return str(values["status"])

    # == what staff see of it =====================================================================
    def of_reports(self, actor: Actor, tenant_id: str, patient_id: str,
                   report_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """For the console's patient page: where each of the patient's reports stands on
        its way to the prescriber's system (kind, status, attempts, times; no message, no
        error text), for staff who may read the patient's reports (gate: resource
        ``report``, purpose care). Reports with no message are absent: nothing was queued
        (no destination takes this prescriber's reports)."""
        with self.lv.begin() as conn:
            self.lv.gate.check(conn, Access(actor, Action.READ, tenant_id, CLINICAL,
                                            purpose="care", patient_ids=(patient_id,),
                                            resource="report"))
            out: dict[str, list[dict[str, Any]]] = {}
            for r in drepo.outbox_of_reports(conn, tenant_id, report_ids):
                out.setdefault(r["report_id"], []).append(
                    {k: r[k] for k in ("outbox_id", "destination_id", "kind", "status",
                                       "attempts", "created_at", "updated_at",
                                       "delivered_at")})
            return out

    # == status ================================================================================
    def status(self, actor: Actor, tenant_id: str, statuses: Sequence[str] = (),
               report_id: str | None = None, limit: int = 500,
               newest_first: bool = False) -> list[dict[str, Any]]:
        """The outbox rows (ids, state, attempts, times, the destination's name; the
        receiver's error, opened through the gate, for failed ones), for the CLI operator,
        the lab's biologists and lab administrators (resource ``delivery``). No personal
        data in clear: the message stays sealed."""
        for s in statuses:
            if s not in STATUSES:
                raise InvalidField("status", f"{s!r} is not a delivery status",
                                   f"use one of {', '.join(STATUSES)}")
        self.lv.tenants.get(tenant_id)
        with self.lv.begin() as conn:
            self._outbox(conn, actor, tenant_id, Action.READ)
            names: dict[str, str | None] = {}
            out = []
            for r in drepo.outbox(conn, tenant_id, statuses, report_id, limit, newest_first):
                error = None
                if r["error_sealed"] is not None:
                    error = self.lv.gate.open_tenant_value_checked(
                        conn, tenant_id, "delivery_outbox", "error_sealed", r["outbox_id"],
                        r["error_sealed"]).decode()
                did = r["destination_id"]
                if did not in names:
                    names[did] = self._label(conn, tenant_id, did)
                out.append({"id": r["outbox_id"], "destination_id": did,
                            "destination": names[did],
                            "report_id": r["report_id"], "order_id": r["order_id"],
                            "patient_id": r["patient_id"], "kind": r["kind"],
                            "status": r["status"], "attempts": r["attempts"],
                            "created_at": r["created_at"],
                            "next_attempt_at": r["next_attempt_at"],
                            "updated_at": r["updated_at"],
                            "delivered_at": r["delivered_at"], "ack": r["ack_code"],
                            "error": error})
            return out

    def _label(self, conn: Connection, tenant_id: str, destination_id: str) -> str | None:
        """A destination's name as given at ``delivery add`` (None: no such row)."""
        d = drepo.destination(conn, tenant_id, destination_id)
        if d is None:
            return None
        return self.lv.gate.open_tenant_value_checked(
            conn, tenant_id, "delivery_destinations", "label_sealed", destination_id,
            d["label_sealed"]).decode()

    # == sending a failed message again ===========================================================
    def resend(self, actor: Actor, tenant_id: str | None, outbox_id: str,
               reason: str) -> dict[str, Any]:
        """Send a failed message again: back to ``pending`` (attempts 0, due now, no
        lease), the same sealed message under the same MSH-10. The row's error and ACK
        code are cleared -- the next attempt writes its own -- and kept, sealed, in the
        ``delivery.resend`` audit event with who and why (``reason``: free text, sealed
        by the audit log). The message's open ``delivery-failed`` alert is acknowledged
        by the same person. ``tenant_id`` None: the actor's laboratory (the CLI operator:
        whichever holds the id). Refused: not failed (409), destination removed (409),
        patient erased (410); an id the laboratory does not hold: ``NotFound``, its
        refusal recorded (``Gate.refuse_absent``)."""
        why = v.text(reason, "reason", 2000, required=True)
        assert why is not None
        with self.lv.begin() as conn:
            row = self._held(conn, actor, tenant_id, outbox_id, Action.WRITE)
            lab, patient_id = row["tenant_id"], row["patient_id"]
            self._outbox(conn, actor, lab, Action.WRITE, (patient_id,))
            if row["status"] != "failed":
                raise DeliveryNotFailed(row["status"])
            dest = drepo.destination(conn, lab, row["destination_id"])
            if dest is None or dest["status"] != "active":
                raise DestinationRemoved()
            if repo.patient_dek(conn, lab, patient_id) is None:
                raise DeliveryErased()
            previous = None
            if row["error_sealed"] is not None:
                previous = self.lv.gate.open_tenant_value_checked(
                    conn, lab, "delivery_outbox", "error_sealed", outbox_id,
                    row["error_sealed"]).decode()
            now = self.lv.now()
            if not drepo.update_outbox(conn, lab, outbox_id, "failed", status="pending",
                                       attempts=0, next_attempt_at=now, updated_at=now,
                                       ack_code=None, error_sealed=None):
                raise DeliveryNotFailed("pending")     # another person sent it again first
            ids = {"outbox_id": outbox_id, "report_id": row["report_id"],
                   "order_id": row["order_id"], "patient_id": patient_id,
                   "destination_id": row["destination_id"]}
            self.lv.gate.audit.event(conn, actor, "delivery.resend", "success", lab,
                                     {**ids, "resource": OUTBOX,
                                      "purpose": outbox_purpose(actor),
                                      "attempts": row["attempts"], "ack": row["ack_code"],
                                      "reason": why, "previous_error": previous})
            acked = self._ack_alert(conn, actor, lab, outbox_id)
        return {"id": outbox_id, **{k: v_ for k, v_ in ids.items() if k != "outbox_id"},
                "tenant_id": lab, "status": "pending", "attempts": 0,
                "next_attempt_at": now, "alert_acked": acked}

    def _held(self, conn: Connection, actor: Actor, tenant_id: str | None, outbox_id: str,
              action: Action) -> dict[str, Any]:
        """The outbox row ``outbox_id`` if the actor's laboratory holds it. Absent and
        another laboratory's answer alike (``no_such_message``), the refusal recorded in
        the actor's laboratory's chain (the operator's: the one it named, or the
        platform's)."""
        oid = outbox_id[:64]
        staff = actor.kind not in ("operator", "system")
        lab = actor.tenant_id if staff else tenant_id
        row: dict[str, Any] | None = None
        if not staff and lab is None:
            row = drepo.outbox_row_of_any_lab(conn, oid)
        elif lab is not None and tenant_id in (None, lab):     # staff: their own lab only
            row = drepo.outbox_row(conn, lab, oid)
        if row is None:
            self.lv.gate.refuse_absent(conn, Access(
                actor, action, lab, frozenset(), purpose=outbox_purpose(actor),
                resource=OUTBOX), "delivery", oid)
            raise no_such_message()
        return row

    def _ack_alert(self, conn: Connection, actor: Actor, tenant_id: str,
                   outbox_id: str) -> str | None:
        """Acknowledge the message's open ``delivery-failed`` alert (the guard's alert
        store; with another sink -- log lines -- there is nothing stored to acknowledge)."""
        ack_about = getattr(self.lv.alerts, "ack_about", None)
        if ack_about is None:
            return None
        acked: str | None = ack_about(conn, actor, tenant_id, ALERT_KIND,
                                      ALERT_SUBJECT.format(outbox_id))
        return acked
