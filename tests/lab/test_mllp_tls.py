"""MLLP inside TLS: a message sent over TLS is stored and acknowledged; with a client CA
only a sender whose certificate that CA signed gets in (nothing stored otherwise), and
what it sends is written and audited as that analyser (the certificate's CN); a
plaintext sender to a TLS port gets nothing; ``labvault mllp`` refuses to listen in clear
beyond loopback and says what to give, and refuses unusable certificate files (exit 2)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from labvault.domain.actors import Actor
from labvault.errors import UserError
from labvault.interop import tls
from labvault.interop.hl7.handler import Hl7Handler
from labvault.interop.hl7.mllp import MllpServer, send
from labvault.services.app import Labvault
from labvault.services.audit import audit_of, install_audit
from tests.doors import assert_refused
from tests.lab import hl7_samples as S
from tests.lab.serving import serving
from tests.lab.test_hl7 import counts, known, segs  # noqa: F401 - shared fixtures
from tests.pki import Pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _server(handler: Hl7Handler, ctx: ssl.SSLContext) -> MllpServer:
    return MllpServer(lambda raw: handler.handle(raw)[1], "127.0.0.1", 0,
                      reject=handler.reject, handle_many=handler.handle_many, ssl_context=ctx)


def _nothing_back(send_it: Callable[[], list[bytes]]) -> None:
    """The listener refused the sender: the connection fails or closes without an ACK."""
    try:
        got = send_it()
    except (ssl.SSLError, OSError):
        return
    assert got == []


@pytest.mark.parametrize("backend", ["sqlite"])   # a listener thread needs its own connections
def test_a_message_over_tls_is_stored_and_acknowledged(
        pki: Pki, lab_lv: Labvault, h: Hl7Handler, known: str,  # noqa: F811
        tenant_id: str, operator: Actor) -> None:
    before = counts(lab_lv, tenant_id, operator)
    with serving(_server(h, tls.server_context(pki.cert, pki.key))) as srv:
        acks = send("127.0.0.1", srv.port, [S.oru_numeric("T1").encode()],
                    ssl_context=tls.client_context(pki.ca[0]), server_hostname="localhost")
        assert [segs(a)["MSA"][0][1] for a in acks] == ["AA"]
        # a sender that does not speak TLS gets no ACK, and nothing is stored from it
        _nothing_back(lambda: send("127.0.0.1", srv.port, [S.oru_numeric("T2").encode()],
                                   timeout=3))
    after = counts(lab_lv, tenant_id, operator)
    assert (after[1] - before[1], after[2] - before[2]) == (5, 1)     # T1's results only


@pytest.mark.parametrize("backend", ["sqlite"])
def test_mutual_tls_admits_only_the_cas_analysers(
        pki: Pki, lab_lv: Labvault, h: Hl7Handler, known: str,  # noqa: F811
        tenant_id: str, operator: Actor, caplog: pytest.LogCaptureFixture) -> None:
    install_audit(lab_lv)
    before = counts(lab_lv, tenant_id, operator)
    ctx = tls.server_context(pki.cert, pki.key, client_ca=pki.ca[0])
    with serving(_server(h, ctx)) as srv:
        ok = send("127.0.0.1", srv.port, [S.oru_numeric("M1").encode()],
                  ssl_context=tls.client_context(pki.ca[0], *pki.analyser),
                  server_hostname="localhost")
        assert [segs(a)["MSA"][0][1] for a in ok] == ["AA"]
        for who in (None, pki.stranger):      # no certificate; one the CA did not sign
            client = tls.client_context(pki.ca[0], *(who or (None, None)))
            _nothing_back(lambda c=client: send(
                "127.0.0.1", srv.port, [S.oru_numeric("M2").encode()], timeout=3,
                ssl_context=c, server_hostname="localhost"))
    after = counts(lab_lv, tenant_id, operator)
    assert after[2] - before[2] == 1
    refusals = [r for r in caplog.records if r.name == "labvault.tls"
                and "handshake refused" in r.getMessage()]
    assert len(refusals) >= 2, [r.getMessage() for r in caplog.records]   # both, in the log
    # the message was written, and audited, as the analyser its certificate names
    report = audit_of(lab_lv).user_report(operator, "system:mllp:analyser-01")
    writes = [i for i in report["items"] if i["action"] == "write"]
    assert writes and all(i["outcome"] == "allowed" for i in writes)
    assert audit_of(lab_lv).user_report(operator, "system:mllp")["entries"] == 0


def test_the_listener_refuses_unusable_files(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        tls.server_context(tmp_path / "nope.pem", pki.key)
    with pytest.raises(UserError, match="cannot be used together"):
        tls.server_context(pki.cert, pki.analyser[1])          # another certificate's key
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    locked = tmp_path / "locked.key"
    locked.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase")))
    with pytest.raises(UserError, match="is encrypted"):      # refused, not prompted for
        tls.server_context(pki.cert, locked)
    expired = pki.listener(days=-1)
    with pytest.raises(UserError, match="expired on"):
        tls.server_context(*expired)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(UserError, match="not a PEM certificate"):
        tls.server_context(pki.cert, pki.key, client_ca=garbage)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False),  # noqa: S104
                                            ("10.1.2.3", False), ("lab-mllp.example", False)])
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert tls.is_loopback(host) is loopback


@pytest.mark.parametrize("args, says", [
    (["--host", "0.0.0.0"], "in clear would carry"),  # noqa: S104 - refused: the point
    (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-client-ca", "ca.pem"], "--tls-client-ca and --tls-crl need --tls-cert"),
    (["--tls-crl", "crl.pem"], "--tls-client-ca and --tls-crl need --tls-cert"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "does not exist"),
])
def test_cli_refuses_before_listening(args: list[str], says: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert_refused("mllp", args, says, tmp_path, monkeypatch)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_silent_connection_is_dropped_before_the_handshake_ends(
        pki: Pki, h: Hl7Handler, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that never starts its TLS handshake does not hold a descriptor for
    asyncio's default minute: it is dropped after ``HANDSHAKE_TIMEOUT``."""
    import socket
    import time

    from labvault.interop.hl7 import mllp
    monkeypatch.setattr(mllp, "HANDSHAKE_TIMEOUT", 0.5)
    with serving(_server(h, tls.server_context(pki.cert, pki.key))) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as silent:
        t0 = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert silent.recv(1024) == b""
        assert time.monotonic() - t0 < 5


def test_startup_says_until_when_the_certificate_is_valid(pki: Pki) -> None:
    """An expired certificate stops every analyser at once: the start-up lines name the
    certificate and its end, and warn when fewer than 30 days are left."""
    far = tls.expiry_lines(tls.certificate_info(pki.listener(days=200)[0]))
    assert len(far) == 1 and "CN=localhost" in far[0] and "(200 days)" in far[0]
    near = tls.expiry_lines(tls.certificate_info(pki.listener(days=12)[0]))
    assert near[1].startswith("warning: the certificate expires in 12 days")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_revoked_analyser_is_refused(
        pki: Pki, lab_lv: Labvault, h: Hl7Handler, known: str,  # noqa: F811
        tenant_id: str, operator: Actor, caplog: pytest.LogCaptureFixture) -> None:
    """With the CA's revocation list, an analyser whose certificate was revoked (retired,
    its key lost) is refused in the handshake; another of the CA's analysers still gets in."""
    crl = pki.revoke(pki.analyser[0])
    ctx = tls.server_context(pki.cert, pki.key, client_ca=pki.ca[0], crl=crl)
    other = pki.another_analyser("analyser-02")
    before = counts(lab_lv, tenant_id, operator)
    with serving(_server(h, ctx)) as srv:
        _nothing_back(lambda: send("127.0.0.1", srv.port, [S.oru_numeric("R1").encode()],
                                   timeout=3, server_hostname="localhost",
                                   ssl_context=tls.client_context(pki.ca[0], *pki.analyser)))
        ok = send("127.0.0.1", srv.port, [S.oru_numeric("R2").encode()],
                  ssl_context=tls.client_context(pki.ca[0], *other),
                  server_hostname="localhost")
        assert [segs(a)["MSA"][0][1] for a in ok] == ["AA"]
    assert counts(lab_lv, tenant_id, operator)[2] - before[2] == 1
    assert any("revoked" in r.getMessage().lower() for r in caplog.records
               if r.name == "labvault.tls"), [r.getMessage() for r in caplog.records]
    with pytest.raises(UserError, match="needs --tls-client-ca"):
        tls.server_context(pki.cert, pki.key, crl=crl)
    with pytest.raises(UserError, match="not a PEM CRL"):        # a certificate, not a CRL
        tls.server_context(pki.cert, pki.key, client_ca=pki.ca[0], crl=pki.ca[0])
    stale = pki.revoke(pki.analyser[0], days=-1)
    with pytest.raises(UserError, match=r"expired on .* every sender would be refused"):
        tls.server_context(pki.cert, pki.key, client_ca=pki.ca[0], crl=stale)
