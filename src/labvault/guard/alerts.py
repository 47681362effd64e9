"""Alert notices and the sinks that carry them out of labvault: log, webhook, e-mail.

A notice carries no personal data: ids, kind, severity, counts and times only. The
details (client address, patient ids, rule figures) stay sealed in the database and
are read through ``labvault alerts list`` or the API by a DPO / lab administrator.

Webhook bodies are signed: header ``X-Labvault-Signature: t=<unix time>,v1=<hex>``
where ``v1 = HMAC-SHA256(secret, "<t>." + body)``; the receiver recomputes it and
rejects a body older than a few minutes (replay).

Sending happens on a background thread (``Dispatcher``) so a slow SMTP server never
slows a patient read; ``flush()`` waits for the queue (tests, shutdown).
"""

from __future__ import annotations

import json
import logging
import queue
import smtplib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Any, Protocol

import httpx

from labvault.config import SETTINGS
from labvault.crypto.digests import hmac_sha256
from labvault.errors import ConfigurationError

log = logging.getLogger("labvault.alerts")

SEVERITIES = ("info", "low", "medium", "high", "critical")
SIGNATURE_HEADER = "X-Labvault-Signature"


def severity_rank(severity: str) -> int:
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ConfigurationError(f"unknown severity {severity!r}",
                                 f"use one of {', '.join(SEVERITIES)}") from None


# Clinical alerts: a patient's result needs a biologist now -- a critical value to phone
# in, or a published report that the prescriber's system refused or never received (the
# results must reach the doctor another way: the biologist answers for their delivery).
# Each is about one subject (a result's value, an outbox message): never merged with
# another subject's, read and acknowledged by the lab's biologists (and the DPO and lab
# administrators, who read every alert). Every other kind is a security alert (it names
# staff accounts): the DPO's.
CLINICAL_KINDS = frozenset({"panic-value", "delivery-failed"})


def is_clinical(kind: str) -> bool:
    return kind in CLINICAL_KINDS


ALIASES = {"warning": "medium", "warn": "medium", "notice": "low", "error": "high",
           "severe": "high", "fatal": "critical"}


def normalise_severity(severity: str) -> str:
    """A known severity for any module's word for it (an alert must never fail its caller)."""
    s = (severity or "").strip().lower()
    s = ALIASES.get(s, s)
    return s if s in SEVERITIES else "medium"


def setting(extra: Mapping[str, str], name: str) -> str:
    """A guard setting: the environment value, else its documented default."""
    return extra.get(name) or SETTINGS[name][0]


@dataclass(frozen=True, slots=True)
class AlertNotice:
    alert_id: str
    tenant_id: str
    kind: str
    severity: str
    actor_id: str | None
    created_at: str
    count: int = 1

    def body(self) -> bytes:
        return json.dumps({"type": "labvault.alert", **asdict(self)}, sort_keys=True,
                          separators=(",", ":")).encode()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac_sha256(secret, str(timestamp).encode() + b"." + body).hex()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str, body: bytes, max_age: int = 300,
           now: float | None = None) -> bool:
    """Receiver side of ``sign`` (documented for integrators, used by the tests)."""
    from labvault.crypto.digests import constant_time_equal
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
        given = bytes.fromhex(parts["v1"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - ts) > max_age:
        return False
    return constant_time_equal(given, hmac_sha256(secret, str(ts).encode() + b"." + body))


class Sink(Protocol):
    name: str
    min_severity: str

    def send(self, notice: AlertNotice) -> None: ...


class LogSink:
    name = "log"

    def __init__(self, min_severity: str = "info") -> None:
        self.min_severity = min_severity

    def send(self, notice: AlertNotice) -> None:
        log.warning("ALERT %s %s alert=%s tenant=%s actor=%s count=%d", notice.severity,
                    notice.kind, notice.alert_id, notice.tenant_id, notice.actor_id, notice.count)


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str, secret: bytes, min_severity: str = "medium",
                 timeout: float = 5.0) -> None:
        self.url = url
        self.secret = secret
        self.min_severity = min_severity
        self.timeout = timeout

    def send(self, notice: AlertNotice) -> None:
        body = notice.body()
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign(self.secret, int(time.time()), body)}
        resp = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout)
        resp.raise_for_status()


class EmailSink:
    name = "email"

    def __init__(self, host: str, port: int, sender: str, recipients: Sequence[str],
                 min_severity: str = "medium", timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = list(recipients)
        self.min_severity = min_severity
        self.timeout = timeout

    def send(self, notice: AlertNotice) -> None:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = f"[labvault] {notice.severity.upper()} alert: {notice.kind}"
        msg.set_content(
            f"labvault raised a {notice.severity} alert.\n\n"
            f"kind:       {notice.kind}\nlaboratory: {notice.tenant_id}\n"
            f"account:    {notice.actor_id or '-'}\nalert id:   {notice.alert_id}\n"
            f"first seen: {notice.created_at}\n\n"
            "Details are sealed in labvault: `labvault alerts list --tenant "
            f"{notice.tenant_id}` or the console's alert page.\n")
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.send_message(msg)


def sinks_from_settings(extra: Mapping[str, str]) -> list[Sink]:
    minimum = setting(extra, "LABVAULT_ALERT_MIN_SEVERITY")
    severity_rank(minimum)
    sinks: list[Sink] = [LogSink()]
    url = setting(extra, "LABVAULT_ALERT_WEBHOOK_URL")
    if url:
        sinks.append(WebhookSink(url, setting(extra, "LABVAULT_ALERT_WEBHOOK_SECRET").encode(),
                                 minimum))
    host = setting(extra, "LABVAULT_ALERT_SMTP_HOST")
    to = [a.strip() for a in setting(extra, "LABVAULT_ALERT_EMAIL_TO").split(",") if a.strip()]
    if host and to:
        sinks.append(EmailSink(host, int(setting(extra, "LABVAULT_ALERT_SMTP_PORT")),
                               setting(extra, "LABVAULT_ALERT_EMAIL_FROM"), to, minimum))
    return sinks


class Dispatcher:
    """Sends notices to every sink whose threshold they reach, on one daemon thread."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        self.failures: list[tuple[str, str, str]] = []   # (sink, alert id, error)
        self._queue: queue.Queue[AlertNotice] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, notice: AlertNotice) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="labvault-alerts",
                                                daemon=True)
                self._thread.start()
        self._queue.put(notice)

    def _run(self) -> None:
        while True:
            notice = self._queue.get()
            try:
                self.deliver(notice)
            finally:
                self._queue.task_done()

    def deliver(self, notice: AlertNotice) -> None:
        rank = severity_rank(notice.severity)
        for sink in self.sinks:
            if rank < severity_rank(sink.min_severity):
                continue
            try:
                sink.send(notice)
            except Exception as exc:  # a sink down must not stop the others; it is logged
                self.failures.append((sink.name, notice.alert_id, type(exc).__name__))
                log.error("alert sink %s failed for %s: %s", sink.name, notice.alert_id,
                          type(exc).__name__)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted notice went through its sinks."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def notice_from_row(row: Mapping[str, Any]) -> AlertNotice:
    return AlertNotice(row["alert_id"], row["tenant_id"], row["kind"], row["severity"],
                       row["actor_id"], row["created_at"].isoformat(), int(row["count"]))
