"""Sending queued ORU^R01 messages to the prescribers' and hospitals' systems over MLLP
(docs/hl7.md "Outbound"): ``labvault delivery send`` and the sender thread of
``labvault serve``.

The messages were composed and sealed with the publication (``services/delivery.py``);
here each due one is opened through the gate, framed (``0x0B … 0x1C 0x0D``, the
listener's ``frame``/``FrameReader``), sent inside TLS (``interop/tls.py``, the receiver's
certificate checked against ``--tls-ca`` and the host name) or in clear when the
destination was added with ``--insecure-plaintext``, and its ACK awaited with a timeout:

- MSA-1 ``AA``/``CA``: delivered;
- MSA-1 ``AE``/``AR`` (``CE``/``CR``): failed, with the receiver's ERR text — not sent
  again: the receiver refused this message and a resend would be refused the same way;
  an alert tells the laboratory that a doctor did not get these results;
- no connection, a timeout, a connection closed before the ACK, an ACK that is not one
  for this message: tried again later with exponential backoff, the same MSH-10 each
  time (a receiver that had stored it recognises the resend); after ``max_attempts``
  the message is failed and alerted.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from labvault.interop import tls
from labvault.interop.hl7.mllp import DEFAULT_MAX_BYTES, FrameReader, frame
from labvault.interop.hl7.parse import Unparseable, read_message
from labvault.services.app import Labvault
from labvault.services.delivery import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_ATTEMPTS,
    Destination,
    Due,
)

log = logging.getLogger("labvault.delivery")
DEFAULT_TIMEOUT = 30.0          # seconds to connect, and to wait for the ACK
DELIVERED = ("AA", "CA")
REFUSED = ("AE", "AR", "CE", "CR")


class NoAck(Exception):
    """The exchange ended without a usable ACK (retried later)."""


@dataclass
class Report:
    """What one pass did (counts only: ids and outcomes are in the audit log)."""

    delivered: int = 0
    refused: int = 0
    retrying: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)   # ids and reasons, no personal data

    def as_json(self) -> dict[str, object]:
        return {"delivered": self.delivered, "refused": self.refused,
                "retrying": self.retrying, "failed": self.failed, "errors": self.errors}


def context_for(dest: Destination) -> ssl.SSLContext | None:
    """The TLS context of a destination (None: it was added ``--insecure-plaintext``)."""
    if dest.transport == "plaintext":
        return None
    if dest.tls_ca is None:
        raise NoAck(f"destination {dest.destination_id} has no TLS CA")
    return tls.client_context(Path(dest.tls_ca),
                              Path(dest.tls_cert) if dest.tls_cert else None,
                              Path(dest.tls_key) if dest.tls_key else None)


def exchange(dest: Destination, payload: bytes, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """Send one framed message and return the first frame answered (the ACK). Raises
    ``OSError`` (refused, unreachable, timeout, TLS failure) or ``NoAck``."""
    context = context_for(dest)
    raw = socket.create_connection((dest.host, dest.port), timeout=timeout)
    try:
        s = raw if context is None else context.wrap_socket(raw, server_hostname=dest.host)
    except BaseException:
        raw.close()
        raise
    with s:
        s.settimeout(timeout)
        s.sendall(frame(payload))
        reader = FrameReader(DEFAULT_MAX_BYTES)
        while True:
            data = s.recv(65536)
            if not data:
                raise NoAck("the receiver closed the connection before acknowledging")
            for ack, status in reader.feed(data):
                if status == "ok":
                    return ack


def read_ack(ack: bytes, control_id: str) -> tuple[str, str | None]:
    """(MSA-1, the receiver's error text). Raises ``NoAck`` for an unreadable ACK or one
    that acknowledges another message (MSA-2 is not our MSH-10)."""
    try:
        msg = read_message(ack)
    except Unparseable as exc:
        raise NoAck(f"unreadable ACK ({exc.reason})") from None
    msa = msg.first("MSA")
    if msa is None:
        raise NoAck("the answer has no MSA segment")
    if msa.get(2) != control_id:
        raise NoAck(f"the ACK is for message {msa.get(2)[:40]!r}, not {control_id}")
    texts = [t for s in msg.segments if s.id == "ERR" for t in (s.get(8), s.get(3, 2)) if t]
    if msa.get(3):
        texts.append(msa.get(3))
    return msa.get(1).upper(), "; ".join(dict.fromkeys(texts)) or None


def send_one(lv: Labvault, item: Due, max_attempts: int, backoff: float,
             timeout: float) -> str:
    """Send one due message; returns the outcome recorded."""
    svc = lv.delivery
    if item.destination is None:
        svc.record(item, "undeliverable", error="destination removed before delivery")
        return "failed"
    payload = svc.open_message(item)
    if payload is None:
        svc.record(item, "undeliverable",
                   error="the patient's record was erased before delivery")
        return "failed"
    dest = item.destination
    try:
        code, text = read_ack(exchange(dest, payload, timeout), item.outbox_id)
    except (OSError, NoAck) as exc:
        why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, NoAck) else str(exc)
        status = svc.record(item, "unsent", error=f"{dest.host}:{dest.port}: {why}",
                            max_attempts=max_attempts, backoff=backoff)
        log.warning("delivery %s to %s:%s not sent (%s), %s", item.outbox_id, dest.host,
                    dest.port, why, "will retry" if status == "pending" else "given up")
        return "retrying" if status == "pending" else "failed"
    if code in DELIVERED:
        svc.record(item, "delivered", ack_code=code)
        return "delivered"
    if code in REFUSED:
        svc.record(item, "refused", ack_code=code,
                   error=f"the receiver answered {code}" + (f": {text}" if text else ""))
        log.warning("delivery %s refused by %s:%s (%s): not retried", item.outbox_id,
                    dest.host, dest.port, code)
        return "refused"
    status = svc.record(item, "unsent", ack_code=code[:2] or None,
                        error=f"unexpected MSA-1 {code[:10]!r}",
                        max_attempts=max_attempts, backoff=backoff)
    return "retrying" if status == "pending" else "failed"


def send_due(lv: Labvault, tenant_id: str | None = None,
             max_attempts: int = DEFAULT_MAX_ATTEMPTS, backoff: float = DEFAULT_BACKOFF,
             timeout: float = DEFAULT_TIMEOUT, limit: int = 100) -> Report:
    """One pass over the messages due now."""
    out = Report()
    # leased for the longest a send can take (connect + ACK) and a margin
    for item in lv.delivery.due(tenant_id, limit, lease=2 * timeout + 60):
        outcome = send_one(lv, item, max_attempts, backoff, timeout)
        setattr(out, outcome, getattr(out, outcome) + 1)
        if outcome != "delivered":
            out.errors.append(f"{item.outbox_id}: {outcome}")
    return out


class Sender:
    """Sends due messages every ``interval`` seconds in a thread until ``stop``."""

    def __init__(self, lv: Labvault, interval: float = 10.0,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, backoff: float = DEFAULT_BACKOFF,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.lv = lv
        self.interval = interval
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                send_due(self.lv, max_attempts=self.max_attempts, backoff=self.backoff,
                         timeout=self.timeout)
            except Exception:   # a bad pass must not end delivery; logged, tried again
                log.exception("delivery pass failed")
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="labvault-delivery",
                                        daemon=True)
        self._thread.start()

    def stop(self, wait: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)
