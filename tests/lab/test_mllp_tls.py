"""MLLP inside TLS: a message sent over TLS is stored and acknowledged; with a client CA
only a sender whose certificate that CA signed gets in (nothing stored otherwise); a
plaintext sender to a TLS port gets nothing; ``labvault mllp`` refuses to listen in clear
beyond loopback and says what to give, and refuses unusable certificate files (exit 2)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from labvault.domain.actors import Actor
from labvault.errors import UserError
from labvault.interop.hl7 import tls
from labvault.interop.hl7.handler import Hl7Handler
from labvault.interop.hl7.mllp import MllpServer, send
from labvault.services.app import Labvault
from tests.lab import hl7_samples as S
from tests.lab.test_hl7 import counts, h, known, segs  # noqa: F401 - shared fixtures


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
           issuer_key: ec.EllipticCurvePrivateKey, ca: bool, server: bool = False
           ) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


class Pki:
    """A throwaway CA, the listener's certificate, and two analysers: one signed by the CA,
    one self-signed (a stranger)."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _issue("Lab test CA", ca_key, "Lab test CA", ca_key, ca=True)
        self.ca = self._write("ca.pem", ca, None)
        srv_key = ec.generate_private_key(ec.SECP256R1())
        self.cert, self.key = self._write("listener.pem", _issue(
            "localhost", srv_key, "Lab test CA", ca_key, ca=False, server=True), srv_key)
        a_key = ec.generate_private_key(ec.SECP256R1())
        self.analyser = self._write("analyser.pem", _issue(
            "analyser-01", a_key, "Lab test CA", ca_key, ca=False), a_key)
        s_key = ec.generate_private_key(ec.SECP256R1())
        self.stranger = self._write("stranger.pem", _issue(
            "stranger", s_key, "stranger", s_key, ca=False), s_key)

    def _write(self, name: str, cert: x509.Certificate,
               key: ec.EllipticCurvePrivateKey | None) -> tuple[Path, Path]:
        c = self.dir / name
        c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k = self.dir / (name + ".key")
        if key is not None:
            k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
        return c, k


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@contextmanager
def _serve(srv: MllpServer) -> Iterator[MllpServer]:
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(srv.start())
        started.set()
        loop.run_forever()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(10)
    try:
        yield srv
    finally:
        asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()
        srv.close()


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
    with _serve(_server(h, tls.server_context(pki.cert, pki.key))) as srv:
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
        tenant_id: str, operator: Actor) -> None:
    before = counts(lab_lv, tenant_id, operator)
    ctx = tls.server_context(pki.cert, pki.key, client_ca=pki.ca[0])
    with _serve(_server(h, ctx)) as srv:
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


def test_the_listener_refuses_unusable_files(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        tls.server_context(tmp_path / "nope.pem", pki.key)
    with pytest.raises(UserError, match="cannot be used together"):
        tls.server_context(pki.cert, pki.analyser[1])          # another certificate's key
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
    (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "does not exist"),
])
def test_cli_refuses_before_listening(args: list[str], says: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from labvault.cli import app
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABVAULT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LABVAULT_KEY_FILE", str(tmp_path / "root.key"))
    res = CliRunner().invoke(app, ["mllp", "--port", "0", *args])
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split())
    assert not (tmp_path / "var").exists()      # refused before anything was opened
