"""Alerts: stored sealed, deduplicated, listed/acked by DPO and lab admin, sent to sinks."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest
from sqlalchemy import select

from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, ConfigurationError
from labvault.guard.alerts import (
    SIGNATURE_HEADER,
    AlertNotice,
    Dispatcher,
    EmailSink,
    WebhookSink,
    sinks_from_settings,
    verify,
)
from labvault.services.app import Labvault
from labvault.store.tables_guard import guard_alerts
from tests.guard.conftest import MemorySink, alerts_of, staff


def _raise(lv: Labvault, tenant_id: str, actor: Actor | None, kind: str = "access.off_hours",
           detail: dict[str, Any] | None = None) -> str | None:
    with lv.begin() as conn:
        return lv.alerts.raise_alert(conn, tenant_id, kind, "high", actor,
                                     detail or {"client": "192.0.2.55"})


def test_alert_stored_sealed_and_deduplicated(glv: Labvault, tenant_id: str,
                                              sink: MemorySink) -> None:
    thief = staff(tenant_id)
    a1 = _raise(glv, tenant_id, thief)
    a2 = _raise(glv, tenant_id, thief)
    other = _raise(glv, tenant_id, staff(tenant_id, ident="acct_other"))
    assert a1 == a2 and other != a1
    with glv.begin() as conn:
        rows = conn.execute(select(guard_alerts).where(
            guard_alerts.c.tenant_id == tenant_id)).mappings().all()
    assert len(rows) == 2
    for r in rows:
        assert b"192.0.2.55" not in r["detail_sealed"]          # sealed, not clear
    listed = {a["id"]: a for a in alerts_of(glv, tenant_id)}
    assert listed[a1]["count"] == 2 and listed[a1]["detail"]["detail"]["client"] == "192.0.2.55"
    assert listed[a1]["detail"]["actor"]["session_id"] == "sess_1"
    glv.alerts.flush()  # type: ignore[attr-defined]
    assert [n.alert_id for n in sink.notices].count(a1) == 1   # dispatched once


def test_only_dpo_and_lab_admin_of_the_lab_see_alerts(glv: Labvault, tenant_id: str) -> None:
    aid = _raise(glv, tenant_id, staff(tenant_id))
    dpo = staff(tenant_id, role="dpo", ident="acct_dpo")
    assert [a["id"] for a in glv.alerts.list(dpo, tenant_id)] == [aid]  # type: ignore[attr-defined]
    with pytest.raises(AccessDenied):
        glv.alerts.list(staff(tenant_id, role="reception", ident="acct_r"), tenant_id)  # type: ignore[attr-defined]
    with pytest.raises(AccessDenied):
        glv.alerts.list(Actor(kind="staff", id="acct_x", tenant_id="lab_other",  # type: ignore[attr-defined]
                              roles=frozenset({"dpo"})), tenant_id)
    acked = glv.alerts.ack(dpo, str(aid))  # type: ignore[attr-defined]
    assert acked["status"] == "acked"
    assert alerts_of(glv, tenant_id)[0]["acked_by"] == "acct_dpo"
    # after an ack, the same event opens a new alert
    assert _raise(glv, tenant_id, staff(tenant_id)) != aid


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def webhook() -> Iterator[str]:
    _Hook.received = []
    srv = HTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook"
    srv.shutdown()


def _notice(sev: str = "critical") -> AlertNotice:
    return AlertNotice("alrt_1", "lab_1", "canary.read", sev, "acct_1", "2026-01-01T00:00:00")


def test_webhook_is_signed(webhook: str) -> None:
    d = Dispatcher([WebhookSink(webhook, b"s3cret", "medium")])
    d.submit(_notice())
    d.submit(_notice("low"))   # below the sink's threshold: not sent
    assert d.flush()
    assert len(_Hook.received) == 1
    headers, body = _Hook.received[0]
    sig = headers[SIGNATURE_HEADER]
    assert verify(b"s3cret", sig, body)
    assert not verify(b"other", sig, body)
    assert not verify(b"s3cret", sig, body.replace(b"canary", b"xanary"))
    assert not verify(b"s3cret", sig, body, now=time.time() + 3600)   # replayed later
    assert json.loads(body)["kind"] == "canary.read"


def test_email_sink_with_local_smtp_server() -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    got: list[Any] = []

    class Keep(Message):
        def handle_message(self, message: Any) -> None:
            got.append(message)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = Controller(Keep(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        sinks = sinks_from_settings({"LABVAULT_ALERT_SMTP_HOST": "127.0.0.1",
                                     "LABVAULT_ALERT_SMTP_PORT": str(port),
                                     "LABVAULT_ALERT_EMAIL_TO": "dpo@example.org"})
        assert [s.name for s in sinks] == ["log", "email"]
        d = Dispatcher(sinks)
        d.submit(_notice())
        assert d.flush()
    finally:
        ctl.stop()
    assert len(got) == 1
    assert "canary.read" in got[0]["Subject"] and got[0]["To"] == "dpo@example.org"
    assert "alrt_1" in got[0].get_payload()


def test_failing_sink_is_recorded_not_fatal() -> None:
    d = Dispatcher([EmailSink("127.0.0.1", 1, "a@example.org", ["b@example.org"], "info", 1.0),
                    MemorySink()])
    d.submit(_notice())
    assert d.flush()
    assert d.failures and d.failures[0][0] == "email"
    assert len(d.sinks[1].notices) == 1  # type: ignore[attr-defined]


def test_bad_severity_setting() -> None:
    with pytest.raises(ConfigurationError):
        sinks_from_settings({"LABVAULT_ALERT_MIN_SEVERITY": "urgent"})


def test_a_second_ack_keeps_the_first(glv: Labvault, tenant_id: str) -> None:
    """QA report item 9: a second `alerts ack` overwrote who acknowledged and when."""
    aid = str(_raise(glv, tenant_id, staff(tenant_id)))
    first = glv.alerts.ack(staff(tenant_id, role="dpo", ident="acct_dpo"), aid)  # type: ignore[attr-defined]
    assert first["acked_by"] == "acct_dpo" and first["already_acked"] is False
    again = glv.alerts.ack(staff(tenant_id, role="lab_admin", ident="acct_adm"), aid)  # type: ignore[attr-defined]
    assert again["already_acked"] is True
    assert (again["acked_by"], again["acked_at"]) == (first["acked_by"], first["acked_at"])
    assert glv.alerts.ack(Actor.operator(), aid)["acked_by"] == "acct_dpo"  # type: ignore[attr-defined]
    (stored,) = alerts_of(glv, tenant_id)
    assert (stored["acked_by"], stored["acked_at"]) == ("acct_dpo", first["acked_at"])
