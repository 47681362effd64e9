"""Results reach the prescriber's system: a published (or corrected) report is queued,
sealed, as an HL7 ORU^R01 in the publication's transaction, then sent over MLLP to a fake
receiver on loopback that answers AA, AE, or drops the connection (docs/hl7.md
"Outbound", docs/lab.md "What reaches the prescriber")."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from sqlalchemy import select

from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, UserError
from labvault.interop import tls
from labvault.interop.hl7.mllp import FrameReader, frame
from labvault.interop.hl7.outbound import send_due
from labvault.interop.hl7.parse import read_message
from labvault.services.app import Labvault
from labvault.services.gate import LogAlerts, MemoryAudit
from labvault.store.tables_delivery import delivery_outbox
from labvault.synthetic import make_finess
from tests.lab.conftest import cli_laboratory, patient_data, staff
from tests.pki import Pki

RPPS = "10003456786"          # Dr Paul Durand (valid Luhn key)
OTHER_RPPS = "10000000041"
REQ = {"tests": ["718-7", "2823-3"], "placer_number": "PL|77", "filler_number": "F-77",
       "prescriber": {"name": "Dr Paul Durand", "rpps": RPPS}}
SPEC = {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00", "accession_number": "A1"}
HB = {"code": "718-7", "value": 13.1, "unit": "g/dL"}
K = {"code": "2823-3", "value": "5.6", "unit": "mmol/L", "comment": "hémolyse légère"}


class Receiver:
    """The prescriber's (or hospital's) system: an asyncio MLLP server on loopback that
    records every message and answers ``AA``, ``AE`` (with an ERR), ``drop`` (closes the
    connection without answering) or ``silent`` (never answers)."""

    def __init__(self, mode: str = "AA", ssl_context: ssl.SSLContext | None = None) -> None:
        self.mode = mode
        self.received: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", 0, ssl=ssl_context),
            self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fr = FrameReader()
        try:
            while data := await reader.read(65536):
                for payload, _ in fr.feed(data):
                    self.received.append(payload)
                    if self.mode == "drop":
                        return
                    if self.mode == "silent":
                        continue
                    control = str(hl7.parse(payload.decode()).segment("MSH")[10])
                    ack = (f"MSH|^~\\&|DPI|CHU|LABVAULT|LAB|20260301120000||ACK^R01|A1|P|2.5\r"
                           f"MSA|{self.mode}|{control}\r")
                    if self.mode == "AE":
                        ack += ("ERR||OBX^1^5|102^Data type error^HL70357|E||||"
                                "patient inconnu dans le DPI\r")
                    writer.write(frame(ack.encode()))
                    await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def bio(tenant_id: str) -> Actor:
    return staff(tenant_id, "biologist", name="bio")


def _final(lv: Labvault, tenant_id: str, patient_id: str, req: dict[str, Any] = REQ) -> str:
    """An order biologically validated (not yet published); the patient's first is F-77,
    the next ones F-77-2... (one filler number, one order of the laboratory)."""
    op = Actor.operator()
    tech, bio = staff(tenant_id, "technician", name="tech"), staff(tenant_id, "biologist")
    n = len(lv.lab.list_orders(op, tenant_id, patient_id=patient_id))
    if n:
        req = {**req, "filler_number": f"{req['filler_number']}-{n + 1}"}
    oid = lv.lab.create_order(op, tenant_id, patient_id, req, SPEC).order_id
    lv.lab.enter_results(tech, oid, [HB, K])
    lv.lab.validate_technical(tech, oid)
    lv.lab.validate_biological(bio, oid, "Hyperkaliémie | à contrôler.")
    return oid


def _to(lv: Labvault, tenant_id: str, port: int, **kw: Any) -> str:
    args: dict[str, Any] = {"rpps": [RPPS], **kw}
    if "tls_ca" not in args:
        args["insecure_plaintext"] = True
    return str(lv.delivery.add_destination(Actor.operator(), tenant_id, "CHU de test",
                                           "127.0.0.1", port, **args)["id"])


def _rows(lv: Labvault, tenant_id: str | None = None) -> list[dict[str, Any]]:
    q = select(delivery_outbox).order_by(delivery_outbox.c.created_at)
    if tenant_id is not None:
        q = q.where(delivery_outbox.c.tenant_id == tenant_id)
    with lv.begin() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def _closed_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_publication_queues_one_sealed_message(lab_lv: Labvault, tenant_id: str,
                                               patient_id: str, bio: Actor,
                                               receiver: Receiver, backend: str) -> None:
    lv = lab_lv
    _to(lv, tenant_id, receiver.port)
    oid = _final(lv, tenant_id, patient_id)
    assert _rows(lv) == []                        # validated is not published: nothing yet
    view = lv.lab.publish(bio, oid)
    assert view.queued == 1
    rows = _rows(lv)
    assert len(rows) == 1 and rows[0]["status"] == "pending" and rows[0]["kind"] == "final"
    assert rows[0]["report_id"] == view.report_id and rows[0]["patient_id"] == patient_id
    nir = str(patient_data()["nir"])
    secrets = [b"MARTIN", b"Jeanne", nir.encode(), nir[:13].encode(), b"Durand", RPPS.encode(),
               b"PL|77", "Hyperkaliémie".encode()]
    stored = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in rows[0].values())
    assert not [s for s in secrets if s in stored]
    if backend == "sqlite":
        db = Path(str(lv.engine.url.database))
        files = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        assert not [s for s in secrets if s in files], "personal data in clear in the database"


def test_send_delivers_and_the_receiver_reads_the_report(
        lab_lv: Labvault, tenant_id: str, patient_id: str, bio: Actor, receiver: Receiver) -> None:
    lv = lab_lv
    lv.gate.audit = audit = MemoryAudit()
    dest = _to(lv, tenant_id, receiver.port)
    oid = _final(lv, tenant_id, patient_id)
    view = lv.lab.publish(bio, oid)
    done = send_due(lv, timeout=5)
    assert (done.delivered, done.refused, done.retrying, done.failed) == (1, 0, 0, 0)
    row = _rows(lv)[0]
    assert row["status"] == "delivered" and row["ack_code"] == "AA" and row["attempts"] == 1
    assert send_due(lv).delivered == 0            # delivered once, not again
    assert len(receiver.received) == 1
    msg = hl7.parse(receiver.received[0].decode())
    msh = msg.segment("MSH")
    tenant = lv.tenants.get(tenant_id)
    assert str(msh[9]) == "ORU^R01^ORU_R01" and str(msh[4]) == tenant.finess
    assert str(msh[10]) == row["outbox_id"] and str(msh[12]) == "2.5"
    pid = msg.segment("PID")
    nir = str(patient_data()["nir"])
    ids = str(pid[3])
    assert f"{patient_id}^^^{tenant.finess}^PI" in ids and f"{nir}^^^^NH" in ids
    assert str(pid[5]).startswith("MARTIN^Jeanne") and str(pid[7]) == "19800517"
    assert str(pid[8]) == "F"
    orc, obr = msg.segment("ORC"), msg.segment("OBR")
    assert str(orc[2]) == "PL\\F\\77" and str(orc[3]) == "F-77"     # escaped as HL7 says
    assert str(orc[12]).startswith(f"{RPPS}^Dr Paul Durand")
    assert str(obr[16]).startswith(RPPS) and str(obr[25]) == "F"
    obx = msg.segments("OBX")
    assert [str(o[3]).split("^")[0] for o in obx] == ["718-7", "2823-3"]
    assert [str(o[5]) for o in obx] == ["13.1", "5.6"]
    assert [str(o[6]) for o in obx] == ["g/dL^^UCUM", "mmol/L^^UCUM"]
    assert [str(o[8]) for o in obx] == ["N", "H"] and {str(o[11]) for o in obx} == {"F"}
    assert str(obx[0][7]) == "12-16"
    # the project's own parser unescapes: the conclusion and the comment come back as written
    parsed = read_message(receiver.received[0])
    notes = [s.get(3) for s in parsed.segments if s.id == "NTE"]
    assert notes == ["Hyperkaliémie | à contrôler.", "hémolyse légère"]
    assert parsed.first("ORC") is not None and parsed.first("ORC").get(2) == "PL|77"  # type: ignore[union-attr]
    sent = [e for e in audit.events if e[1] == "delivery.send"]
    assert len(sent) == 1 and sent[0][2] == "success"
    assert {k: sent[0][4][k] for k in ("destination_id", "report_id", "patient_id")} == {
        "destination_id": dest, "report_id": view.report_id, "patient_id": patient_id}
    reads = [a for a, _d, _o in audit.entries
             if a.actor.id == "system:delivery" and a.resource == "report"]
    assert len(reads) == 1 and reads[0].patient_ids == (patient_id,) and reads[0].purpose == "care"


def test_an_amendment_sends_a_corrected_message(lab_lv: Labvault, tenant_id: str,
                                                patient_id: str, bio: Actor,
                                                receiver: Receiver) -> None:
    lv = lab_lv
    _to(lv, tenant_id, receiver.port)
    oid = _final(lv, tenant_id, patient_id)
    view = lv.lab.publish(bio, oid)
    send_due(lv, timeout=5)
    k_id = next(o.observation_id for o in view.observations if o.observation.code == "2823-3")
    lv.lab.amend(bio, k_id, {"code": "2823-3", "value": "4.1", "unit": "mmol/L"},
                 "prélèvement hémolysé, recontrôlé")
    rows = _rows(lv)
    assert [r["kind"] for r in rows] == ["final", "corrected"]
    assert send_due(lv, timeout=5).delivered == 1
    msg = hl7.parse(receiver.received[1].decode())
    obx = {str(o[3]).split("^")[0]: o for o in msg.segments("OBX")}
    assert str(obx["2823-3"][5]) == "4.1" and str(obx["2823-3"][11]) == "C"
    assert str(obx["718-7"][11]) == "F" and str(msg.segment("OBR")[25]) == "C"
    # a conclusion revised after publication is a correction too
    assert lv.lab.revise_conclusion(bio, oid, "Kaliémie normale.", "contrôle").queued == 1


def test_an_ae_marks_failed_with_the_receivers_words_and_is_not_retried(
        lab_lv: Labvault, tenant_id: str, patient_id: str, bio: Actor) -> None:
    lv = lab_lv
    lv.alerts = lv.gate.alerts = alerts = LogAlerts()
    refusing = Receiver("AE")
    try:
        _to(lv, tenant_id, refusing.port)
        oid = _final(lv, tenant_id, patient_id)
        lv.lab.publish(bio, oid)
        done = send_due(lv, timeout=5, backoff=0)
        assert done.refused == 1 and len(refusing.received) == 1
        assert send_due(lv, timeout=5, backoff=0).refused == 0      # not sent again
        assert len(refusing.received) == 1
    finally:
        refusing.close()
    row = _rows(lv)[0]
    assert row["status"] == "failed" and row["ack_code"] == "AE"
    failed = lv.delivery.status(Actor.operator(), tenant_id, ["failed"])
    assert len(failed) == 1 and "AE" in failed[0]["error"]
    assert "patient inconnu dans le DPI" in failed[0]["error"]
    # the alert names the order: the biologist's link to the patient's page, at the report
    assert [(k, d["report_id"], d["order_id"], d["patient_id"])
            for _t, k, _s, d in alerts.raised] == [
        ("delivery-failed", row["report_id"], oid, patient_id)]


def test_connection_refused_is_retried_with_backoff_then_alerted(
        lab_lv: Labvault, tenant_id: str, patient_id: str, bio: Actor) -> None:
    lv = lab_lv
    lv.alerts = lv.gate.alerts = alerts = LogAlerts()
    _to(lv, tenant_id, _closed_port())
    lv.lab.publish(bio, _final(lv, tenant_id, patient_id))
    done = send_due(lv, max_attempts=3, backoff=0, timeout=2)
    assert done.retrying == 1 and alerts.raised == []
    assert send_due(lv, max_attempts=3, backoff=3600, timeout=2).retrying == 1
    row = _rows(lv)[0]
    assert row["status"] == "pending" and row["attempts"] == 2
    # exponential backoff: the third attempt waits 2 x 3600 s, capped at an hour
    assert (row["next_attempt_at"] - row["updated_at"]).total_seconds() == 3600
    assert send_due(lv, max_attempts=3, timeout=2).retrying == 0       # not due yet
    from labvault.services.delivery import backoff_delay
    assert [backoff_delay(n, 30) for n in (1, 2, 3, 10)] == [30, 60, 120, 3600]
    with lv.begin() as conn:                                            # an hour later
        conn.execute(delivery_outbox.update().values(next_attempt_at=row["updated_at"]))
    assert send_due(lv, max_attempts=3, timeout=2).failed == 1
    row = _rows(lv)[0]
    assert row["status"] == "failed" and row["attempts"] == 3
    assert [k for _t, k, _s, _d in alerts.raised] == ["delivery-failed"]
    error = lv.delivery.status(Actor.operator(), tenant_id, ["failed"])[0]["error"]
    assert "ConnectionRefusedError" in error


@pytest.mark.parametrize("mode", ["drop", "silent"])
def test_no_ack_is_retried(lab_lv: Labvault, tenant_id: str, patient_id: str, bio: Actor,
                           mode: str) -> None:
    lv = lab_lv
    mute = Receiver(mode)
    try:
        _to(lv, tenant_id, mute.port)
        lv.lab.publish(bio, _final(lv, tenant_id, patient_id))
        assert send_due(lv, timeout=0.5, backoff=0).retrying == 1
        assert send_due(lv, timeout=0.5, backoff=0).retrying == 1
        assert len(mute.received) == 2
        # the resend is the same message, under the same MSH-10
        assert mute.received[0] == mute.received[1]
    finally:
        mute.close()
    assert _rows(lv)[0]["status"] == "pending"


def test_another_labs_destination_never_receives_this_labs_reports(
        lab_lv: Labvault, tenant_id: str, patient_id: str, bio: Actor,
        receiver: Receiver) -> None:
    lv = lab_lv
    other = lv.tenants.add(Actor.operator(), "Autre laboratoire",
                           make_finess(random.Random(9))).tenant_id
    _to(lv, other, receiver.port, rpps=[], all_orders=True)
    _to(lv, other, receiver.port)                 # same prescriber, other lab
    view = lv.lab.publish(bio, _final(lv, tenant_id, patient_id))
    assert view.queued == 0 and _rows(lv) == []
    assert send_due(lv, timeout=5).delivered == 0 and receiver.received == []


def test_no_matching_destination_queues_nothing(lab_lv: Labvault, tenant_id: str,
                                                patient_id: str, bio: Actor,
                                                receiver: Receiver) -> None:
    lv = lab_lv
    _to(lv, tenant_id, receiver.port, rpps=[OTHER_RPPS])
    assert lv.lab.publish(bio, _final(lv, tenant_id, patient_id)).queued == 0
    no_rpps = {**REQ, "prescriber": {"name": "Dr Sans Numéro"}}
    assert lv.lab.publish(bio, _final(lv, tenant_id, patient_id, no_rpps)).queued == 0
    assert _rows(lv) == []
    # a destination taking every order of the lab gets both
    _to(lv, tenant_id, receiver.port, rpps=[], all_orders=True)
    assert lv.lab.publish(bio, _final(lv, tenant_id, patient_id, no_rpps)).queued == 1


def test_publication_and_its_message_are_one_transaction(
        lab_lv: Labvault, tenant_id: str, patient_id: str, bio: Actor, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    lv = lab_lv
    _to(lv, tenant_id, receiver.port)
    oid = _final(lv, tenant_id, patient_id)
    from labvault.domain import outbound

    def broken(_report: object) -> bytes:
        raise RuntimeError("composer failed")
    monkeypatch.setattr(outbound, "compose_oru", broken)
    with pytest.raises(RuntimeError):
        lv.lab.publish(bio, oid)
    assert lv.lab.get_order(bio, oid).status.value == "final" and _rows(lv) == []
    monkeypatch.undo()
    assert lv.lab.publish(bio, oid).queued == 1


def test_removed_destination_and_erased_patient_are_failed_not_sent(
        lab_lv: Labvault, tenant_id: str, patient_id: str, bio: Actor,
        receiver: Receiver) -> None:
    lv = lab_lv
    lv.alerts = lv.gate.alerts = alerts = LogAlerts()
    op = Actor.operator()
    dest = _to(lv, tenant_id, receiver.port)
    lv.lab.publish(bio, _final(lv, tenant_id, patient_id))
    assert lv.delivery.remove_destination(op, tenant_id, dest)["status"] == "removed"
    assert lv.delivery.list_destinations(op, tenant_id) == []
    assert send_due(lv, timeout=5).failed == 1 and receiver.received == []
    with pytest.raises(UserError):
        lv.delivery.remove_destination(op, tenant_id, dest)
    _to(lv, tenant_id, receiver.port)
    lv.lab.publish(bio, _final(lv, tenant_id, patient_id))
    lv.patients.erase(op, patient_id, "demande du patient (art. 17)")
    assert send_due(lv, timeout=5).failed == 1 and receiver.received == []
    errors = [r["error"] for r in lv.delivery.status(op, tenant_id, ["failed"])]
    assert errors == ["destination removed before delivery",
                      "the patient's record was erased before delivery"]
    assert len(alerts.raised) == 2


def test_over_tls_the_receivers_certificate_is_checked(
        lab_lv: Labvault, tenant_id: str, patient_id: str, bio: Actor, tmp_path: Path) -> None:
    lv = lab_lv
    pki = Pki(tmp_path)
    # the receiver asks for labvault's client certificate (mutual TLS)
    secure = Receiver(ssl_context=tls.server_context(pki.cert, pki.key, client_ca=pki.ca[0]))
    op = Actor.operator()
    try:
        lv.delivery.add_destination(op, tenant_id, "CHU TLS", "localhost", secure.port,
                                    [RPPS], tls_ca=pki.ca[0], tls_cert=pki.analyser[0],
                                    tls_key=pki.analyser[1])
        # the receiver's certificate is not signed by this CA / labvault presents none
        lv.delivery.add_destination(op, tenant_id, "CHU inconnu", "localhost", secure.port,
                                    [RPPS], tls_ca=pki.stranger[0], tls_cert=pki.analyser[0],
                                    tls_key=pki.analyser[1])
        lv.delivery.add_destination(op, tenant_id, "CHU sans certificat", "localhost",
                                    secure.port, [RPPS], tls_ca=pki.ca[0])
        assert lv.lab.publish(bio, _final(lv, tenant_id, patient_id)).queued == 3
        done = send_due(lv, timeout=5, backoff=0)
        assert (done.delivered, done.retrying) == (1, 2)
        assert len(secure.received) == 1
    finally:
        secure.close()
    errors = [r["error"] for r in lv.delivery.status(op, tenant_id, ["pending"])]
    assert len(errors) == 2 and any("CERTIFICATE_VERIFY_FAILED" in e for e in errors), errors


def test_destinations_are_checked(lab_lv: Labvault, tenant_id: str, tmp_path: Path) -> None:
    lv, op = lab_lv, Actor.operator()

    def add(**kw: Any) -> None:
        args: dict[str, Any] = {"rpps": [RPPS], "insecure_plaintext": True, **kw}
        lv.delivery.add_destination(op, tenant_id, "X", args.pop("host", "h.example"),
                                    args.pop("port", 2575), **args)
    for kw, says in [({"rpps": []}, "say which reports"),
                     ({"all_orders": True}, "say which reports"),
                     ({"rpps": ["10003456787"]}, "check digit"),
                     ({"port": 0}, "not a TCP port"),
                     ({"host": "a b"}, "host"),
                     ({"insecure_plaintext": False}, "--tls-ca"),
                     ({"tls_ca": tmp_path / "none.pem"}, "contradict"),
                     ({"tls_ca": tmp_path / "none.pem", "insecure_plaintext": False},
                      "does not exist")]:
        with pytest.raises(UserError) as e:
            add(**kw)
        assert says in str(e.value.message) + str(getattr(e.value, "field", "")), kw
    from labvault.access.policy import TablePolicy
    lv.gate.policy = TablePolicy()                 # no policy row: staff may not route reports
    for role in ("biologist", "lab_admin"):
        with pytest.raises(AccessDenied):
            lv.delivery.add_destination(staff(tenant_id, role), tenant_id, "X", "h", 1,
                                        [RPPS], insecure_plaintext=True)
    assert _rows(lv) == [] and lv.delivery.list_destinations(op, tenant_id) == []


def test_cli_delivery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      receiver: Receiver) -> None:
    from labvault.cli import app
    from labvault.config import Settings
    from labvault.services.wiring import open_labvault
    with cli_laboratory(tmp_path, monkeypatch) as (r, _lv, tid):
        pass
    res = r.invoke(app, ["delivery", "add", "--tenant", tid, "--name", "CHU", "--host",
                         "10.0.0.1", "--port", "2575", "--all"])
    assert res.exit_code == 2 and "--tls-ca" in res.output
    res = r.invoke(app, ["delivery", "add", "--tenant", tid, "--name", "CHU [test]",
                         "--host", "127.0.0.1", "--port", str(receiver.port), "--rpps", RPPS,
                         "--insecure-plaintext", "--json"])
    assert res.exit_code == 0, res.output
    assert "in clear" in res.output
    dest = json.loads(res.stdout)["id"]
    res = r.invoke(app, ["delivery", "list", "--tenant", tid, "--json"])
    listed = json.loads(res.stdout)
    assert [(d["id"], d["name"], d["prescribers"]) for d in listed] == [(dest, "CHU [test]", 1)]
    res = r.invoke(app, ["delivery", "list", "--tenant", tid])
    assert dest in res.stdout and "CHU [test]" in res.stdout     # as given, not Rich markup
    lv = open_labvault(Settings.from_env())
    try:
        pid = lv.patients.register(Actor.operator(), tid, patient_data())
        lv.lab.publish(staff(tid, "biologist"), _final(lv, tid, pid))
    finally:
        lv.close()
    res = r.invoke(app, ["delivery", "status", "--tenant", tid, "--pending", "--json"])
    pending = json.loads(res.stdout)
    assert len(pending) == 1 and pending[0]["status"] == "pending"
    assert "MARTIN" not in res.stdout and "message" not in pending[0]
    res = r.invoke(app, ["delivery", "send", "--once", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["delivered"] == 1, res.output
    assert len(receiver.received) == 1
    res = r.invoke(app, ["delivery", "status", "--tenant", tid, "--pending", "--json"])
    assert json.loads(res.stdout) == []
    res = r.invoke(app, ["delivery", "remove", "--tenant", tid, dest])
    assert res.exit_code == 0
    res = r.invoke(app, ["delivery", "remove", "--tenant", tid, dest])
    assert res.exit_code == 2 and "no active destination" in res.output


def test_the_composer_escapes_and_maps_every_kind_of_value() -> None:
    """Pure: separators in any text are escaped (python-hl7 and labvault's parser read them
    back), a comparator makes an SN, coded and text values their types, the INS and the
    NIR their PID-3 repetitions, the used name a D name."""
    from datetime import UTC, datetime

    from labvault.domain import lab as L
    from labvault.domain import outbound as O

    def obs(kind: L.ValueKind, **kw: Any) -> L.Observation:
        base: dict[str, Any] = {
            "code": "718-7", "display": "Hémoglobine", "kind": kind, "numeric": None,
            "coded": None, "text": None, "unit": None, "comparator": None,
            "reference_range": None, "range_low": None, "range_high": None, "flag": None,
            "comment": None, "observed_at": None, "catalogue_version": "t"}
        return L.Observation(**{**base, **kw})
    at = datetime(2026, 3, 1, 7, 30, tzinfo=UTC)
    rep = O.OutboundReport(
        "out_1", at, "590000000", "Lab", "pt_1",
        {"birth_name": "DUPONT^X", "used_name": "MARTIN", "first_names": ["Anne", "Marie"],
         "birth_date": "1970-01-02", "sex": "F", "nir": "270012A00100101",
         "ins": "270012A00100102"},
        "rep_1", None, "F~1", {"name": "Dr A & B", "rpps": RPPS}, False, at, at,
        [O.OutboundResult(obs(L.ValueKind.NUMERIC, numeric=0.5, comparator="<", unit="mg/L",
                              range_high=5.0, flag=L.Flag.NORMAL)),
         O.OutboundResult(obs(L.ValueKind.CODED, coded=L.CodedValue("A+", "A Rh+", "local"))),
         O.OutboundResult(obs(L.ValueKind.TEXT, text="ligne 1\nligne|2"), corrected=True),
         O.OutboundResult(obs(L.ValueKind.NUMERIC, numeric=1234567.0))],
        "Conclusion \\ avec ^ et ~")
    raw = O.compose_oru(rep)
    msg = hl7.parse(raw.decode())
    pid = msg.segment("PID")
    assert str(pid[3]).split("~")[1:] == [
        "270012A00100102^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS",
        "270012A00100101^^^^NH"]
    assert str(pid[5]) == "DUPONT\\S\\X^Anne^Marie^^^^L~MARTIN^Anne^^^^^D"
    obx = msg.segments("OBX")
    assert [str(o[2]) for o in obx] == ["SN", "CWE", "TX", "NM"]
    assert [str(o[5]) for o in obx] == ["<^0.5", "A+^A Rh+^local", "ligne 1\\.br\\ligne\\F\\2",
                                        "1234567"]
    assert str(obx[0][7]) == "<=5" and [str(o[11]) for o in obx] == ["F", "F", "C", "F"]
    parsed = read_message(raw)
    assert parsed.first("ORC").get(3) == "F~1"  # type: ignore[union-attr]
    assert parsed.first("NTE").get(3) == "Conclusion \\ avec ^ et ~"  # type: ignore[union-attr]
    assert parsed.first("ORC").get(12, 2) == "Dr A & B"  # type: ignore[union-attr]


def test_a_due_message_is_leased_to_one_sender(lab_lv: Labvault, tenant_id: str,
                                               patient_id: str, bio: Actor,
                                               receiver: Receiver) -> None:
    lv = lab_lv
    _to(lv, tenant_id, receiver.port)
    lv.lab.publish(bio, _final(lv, tenant_id, patient_id))
    first = lv.delivery.due(lease=60)
    assert len(first) == 1 and lv.delivery.due() == []      # a second sender gets nothing
    with lv.begin() as conn:                                  # the lease ran out
        conn.execute(delivery_outbox.update().values(next_attempt_at=_rows(lv)[0]["created_at"]))
    assert [d.outbox_id for d in lv.delivery.due()] == [first[0].outbox_id]


def test_serve_deliver_runs_one_sender_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              receiver: Receiver) -> None:
    """``labvault serve --deliver``: the sender thread sends while the server runs, and
    stops with it."""
    import time

    import uvicorn

    from labvault.cli import app
    with cli_laboratory(tmp_path, monkeypatch, "Lab", 6) as (r, lv, tid):
        _to(lv, tid, receiver.port)
        pid = lv.patients.register(Actor.operator(), tid, patient_data())
        lv.lab.publish(staff(tid, "biologist"), _final(lv, tid, pid))
    threads: list[str] = []

    def serving(*_a: Any, **_kw: Any) -> None:       # uvicorn.run: until the report is sent
        threads.extend(t.name for t in threading.enumerate())
        for _ in range(100):
            if receiver.received:
                return
            time.sleep(0.1)
    monkeypatch.setattr(uvicorn, "run", serving)
    res = r.invoke(app, ["serve", "--deliver"])
    assert res.exit_code == 0, res.output
    assert "labvault-delivery" in threads and len(receiver.received) == 1
    assert "labvault-delivery" not in {t.name for t in threading.enumerate()}
    res = r.invoke(app, ["delivery", "status", "--tenant", tid, "--json"])
    assert [m["status"] for m in json.loads(res.stdout)] == ["delivered"]


# -- sending a failed message again (docs/hl7.md "Outbound", "Sending again") -------------------
def _failed(lv: Labvault, tenant_id: str, patient_id: str, bio: Actor,
            req: dict[str, Any] = REQ) -> str:
    """A report published and its message failed (an AE, or no answer with one attempt
    allowed); the outbox row's id."""
    view = lv.lab.publish(bio, _final(lv, tenant_id, patient_id, req))
    send_due(lv, timeout=5, max_attempts=1, backoff=0)
    (row,) = [r for r in _rows(lv) if r["report_id"] == view.report_id]
    assert row["status"] == "failed", row
    return str(row["outbox_id"])


def _alert_store(lv: Labvault) -> Any:
    from labvault.services.alerts import AlertService
    lv.alerts = lv.gate.alerts = AlertService(lv)
    return lv.alerts


def test_a_refused_message_is_sent_again_once_the_doctor_knows_the_patient(
        lab_lv: Labvault, tenant_id: str, patient_id: str, bio: Actor) -> None:
    """The typical case: the doctor's software refused the report (patient unknown there);
    once the secretary created the patient, a biologist sends it again -- the same message
    under the same MSH-10, pending and due now, its alert acknowledged, the resend audited
    with who and why; the next pass delivers it."""
    from labvault.access.policy import TablePolicy
    lv = lab_lv
    alerts = _alert_store(lv)
    lv.gate.audit = audit = MemoryAudit()
    receiver = Receiver("AE")
    try:
        _to(lv, tenant_id, receiver.port)
        oid = _failed(lv, tenant_id, patient_id, bio)
        (alert,) = alerts.list(Actor.operator(), tenant_id, status="open")
        assert alert["kind"] == "delivery-failed"
        lv.gate.policy = TablePolicy()              # the production table: a biologist may
        done = lv.delivery.resend(bio, tenant_id, oid, "  patiente créée dans le DPI  ")
        assert (done["id"], done["status"], done["attempts"], done["alert_acked"]) == (
            oid, "pending", 0, alert["id"])
        row = _rows(lv)[0]
        assert (row["status"], row["attempts"], row["ack_code"], row["error_sealed"]) == (
            "pending", 0, None, None)
        assert row["next_attempt_at"] <= lv.now()   # due now: no backoff, no lease
        (acked,) = alerts.list(Actor.operator(), tenant_id)
        assert (acked["status"], acked["acked_by"]) == ("acked", bio.id)
        (event,) = [e for e in audit.events if e[1] == "delivery.resend"]
        assert event[0] == bio and event[2] == "success" and event[3] == tenant_id
        assert event[4]["reason"] == "patiente créée dans le DPI"
        assert "patient inconnu dans le DPI" in event[4]["previous_error"]   # kept there
        assert (event[4]["outbox_id"], event[4]["patient_id"]) == (oid, patient_id)
        decided = [a for a, d, o in audit.entries if a.resource == "delivery"]
        assert [(a.action.value, a.purpose, a.patient_ids) for a in decided] == [
            ("write", "care", (patient_id,))]
        receiver.mode = "AA"                         # the doctor's software knows her now
        assert send_due(lv, timeout=5).delivered == 1
        assert len(receiver.received) == 2 and receiver.received[0] == receiver.received[1]
    finally:
        receiver.close()
    assert _rows(lv)[0]["status"] == "delivered"
    assert lv.delivery.status(Actor.operator(), tenant_id, ["failed"]) == []


def test_a_resend_is_refused_with_what_to_do(lab_lv: Labvault, tenant_id: str,
                                            patient_id: str, bio: Actor,
                                            receiver: Receiver) -> None:
    from labvault.errors import InvalidField, NotFound
    from labvault.services.delivery import DeliveryErased, DeliveryNotFailed, DestinationRemoved
    from labvault.services.gate import ABSENT_RECORD
    lv = lab_lv
    lv.gate.audit = audit = MemoryAudit()
    closed = _to(lv, tenant_id, _closed_port())
    failed = _failed(lv, tenant_id, patient_id, bio)
    with pytest.raises(InvalidField):
        lv.delivery.resend(bio, tenant_id, failed, "   ")
    lv.delivery.resend(bio, tenant_id, failed, "le cabinet a rouvert")
    with pytest.raises(DeliveryNotFailed) as pending:          # sent again already
        lv.delivery.resend(bio, tenant_id, failed, "deux fois")
    assert pending.value.http_status == 409 and "pending" in pending.value.message
    # delivered: nothing to send again
    lv.delivery.remove_destination(Actor.operator(), tenant_id, closed)
    accepting = _to(lv, tenant_id, receiver.port)
    lv.lab.publish(bio, _final(lv, tenant_id, patient_id))
    send_due(lv, timeout=5)
    (delivered,) = lv.delivery.status(Actor.operator(), tenant_id, ["delivered"])
    with pytest.raises(DeliveryNotFailed) as done:
        lv.delivery.resend(bio, tenant_id, delivered["id"], "au cas où")
    assert "delivered" in done.value.message
    # the first one failed again (its destination was removed): nowhere to send it
    (removed,) = lv.delivery.status(Actor.operator(), tenant_id, ["failed"])
    assert removed["id"] == failed and removed["error"] == "destination removed before delivery"
    with pytest.raises(DestinationRemoved) as gone:
        lv.delivery.resend(bio, tenant_id, failed, "nouvel essai")
    assert gone.value.http_status == 409 and "delivery add" in gone.value.hint
    # the patient erased: the message went with the data key
    other = lv.patients.register(Actor.operator(), tenant_id, patient_data(seed=5))
    lv.delivery.remove_destination(Actor.operator(), tenant_id, accepting)
    refusing = Receiver("AE")
    try:
        _to(lv, tenant_id, refusing.port)
        erased = _failed(lv, tenant_id, other, bio, {**REQ, "filler_number": "F-88"})
    finally:
        refusing.close()
    lv.patients.erase(Actor.operator(), other, "demande du patient (art. 17)")
    with pytest.raises(DeliveryErased) as gone_with_key:
        lv.delivery.resend(bio, tenant_id, erased, "nouvel essai")
    assert gone_with_key.value.http_status == 410
    # another laboratory's message and an id nobody has: one answer, one refusal each
    lab_b = lv.tenants.add(Actor.operator(), "Autre laboratoire",
                           make_finess(random.Random(9))).tenant_id
    theirs = _to(lv, lab_b, refusing.port)
    assert theirs
    with lv.begin() as conn:                    # lab B's copy of a failed row
        row = {**_rows(lv, tenant_id)[0], "tenant_id": lab_b, "outbox_id": "out_" + "7" * 26,
               "destination_id": theirs, "status": "failed"}
        conn.execute(delivery_outbox.insert().values(**row))
    answers = []
    for asked in ("out_" + "7" * 26, "out_" + "0" * 26):
        before = len(audit.entries)
        with pytest.raises(NotFound) as e:
            lv.delivery.resend(bio, tenant_id, asked, "sonde")
        answers.append((e.value.message, e.value.hint))
        (refusal,) = [(a, d) for a, d, o in audit.entries[before:] if o == "denied"]
        assert refusal[1].rule == ABSENT_RECORD and refusal[0].tenant_id == tenant_id
        assert refusal[0].resource == "delivery" and refusal[0].patient_ids == ()
    assert answers[0] == answers[1] and "out_" not in answers[0][0] + answers[0][1]
    with pytest.raises(NotFound):                 # naming lab B explicitly changes nothing
        lv.delivery.resend(bio, lab_b, "out_" + "7" * 26, "sonde")
    assert [r["status"] for r in _rows(lv, lab_b)] == ["failed"]


def test_who_may_see_the_outbox_and_resend(lab_lv: Labvault, tenant_id: str,
                                          patient_id: str, bio: Actor) -> None:
    """The production table: the lab's biologists (purpose care) and lab administrators
    (purpose administration) read the outbox and send a failed message again; the desk,
    the bench and the DPO do not; destinations stay the CLI operator's."""
    from labvault.access.policy import TablePolicy
    lv = lab_lv
    _to(lv, tenant_id, _closed_port())
    failed = [_failed(lv, tenant_id, patient_id, bio) for _ in range(2)]
    lv.gate.policy = TablePolicy()
    lv.gate.audit = audit = MemoryAudit()
    admin = staff(tenant_id, "lab_admin", name="admin")
    for who in (bio, admin):
        assert lv.delivery.may_resend(who)
        listed = lv.delivery.status(who, tenant_id, ["failed"])
        assert {r["id"] for r in listed} == set(failed)
        assert {r["destination"] for r in listed} == {"CHU de test"}
        assert all("ConnectionRefusedError" in r["error"] for r in listed)
    lv.delivery.resend(admin, tenant_id, failed[0], "le cabinet a redémarré son serveur")
    assert [a.purpose for a, _d, o in audit.entries
            if a.resource == "delivery" and a.action.value == "write" and o == "allowed"] == [
        "administration"]
    for role in ("reception", "technician", "dpo"):
        who = staff(tenant_id, role, name=role)
        assert not lv.delivery.may_resend(who)
        with pytest.raises(AccessDenied):
            lv.delivery.status(who, tenant_id)
        with pytest.raises(AccessDenied):
            lv.delivery.resend(who, tenant_id, failed[1], "pas mon rôle")
    with pytest.raises(AccessDenied):             # another laboratory's outbox
        lv.delivery.status(staff("ten_other", "biologist"), tenant_id)
    for who in (bio, admin):
        with pytest.raises(AccessDenied):
            lv.delivery.list_destinations(who, tenant_id)
        with pytest.raises(AccessDenied):
            lv.delivery.remove_destination(who, tenant_id, _rows(lv)[0]["destination_id"])
    assert [d["status"] for d in lv.delivery.list_destinations(Actor.operator(),
                                                               tenant_id)] == ["active"]


def test_cli_delivery_resend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labvault.cli import app
    from labvault.config import Settings
    from labvault.services.wiring import open_labvault
    with cli_laboratory(tmp_path, monkeypatch) as (r, lv, tid):
        _to(lv, tid, _closed_port())
        pid = lv.patients.register(Actor.operator(), tid, patient_data())
    lv = open_labvault(Settings.from_env())
    try:
        oid = _failed(lv, tid, pid, staff(tid, "biologist"))
    finally:
        lv.close()
    res = r.invoke(app, ["delivery", "resend", oid, "--reason", "   "])
    assert res.exit_code == 2 and "reason" in res.output
    res = r.invoke(app, ["delivery", "resend", oid, "--tenant", "ten_" + "0" * 26,
                         "--reason", "essai"])
    assert res.exit_code == 2 and "no such message" in res.output
    res = r.invoke(app, ["delivery", "resend", oid, "--reason", "patient créé [DPI]",
                         "--json"])
    assert res.exit_code == 0, res.output
    done = json.loads(res.stdout)
    assert (done["id"], done["status"], done["attempts"], done["tenant_id"]) == (
        oid, "pending", 0, tid)
    assert done["alert_acked"]                 # `labvault serve`'s wiring: the alert store
    res = r.invoke(app, ["delivery", "resend", oid, "--tenant", tid, "--reason", "encore"])
    assert res.exit_code == 2 and "only a failed message is sent again" in res.output
    res = r.invoke(app, ["delivery", "status", "--tenant", tid, "--pending", "--json"])
    assert [m["id"] for m in json.loads(res.stdout)] == [oid]
