"""A throwaway PKI for the TLS tests (and ``bench/mllp.py --tls``): a CA, a listener
certificate for ``localhost``, an analyser certificate the CA signed and a self-signed
stranger, written as PEM files. Test material only: EC P-256 keys, valid for a day."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
           issuer_key: ec.EllipticCurvePrivateKey, ca: bool, server: bool = False,
           days: float = 1) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(days=2))
         .not_valid_after(now + dt.timedelta(days=days))
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
        ca_key = self._ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _issue("Lab test CA", ca_key, "Lab test CA", ca_key, ca=True, days=400)
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

    def listener(self, days: float) -> tuple[Path, Path]:
        """Another listener certificate (and key), valid ``days`` more (negative: expired)."""
        key = ec.generate_private_key(ec.SECP256R1())
        return self._write(f"listener-{days}.pem", _issue(
            "localhost", key, "Lab test CA", self._ca_key, ca=False, server=True, days=days),
            key)

    def another_analyser(self, cn: str) -> tuple[Path, Path]:
        """One more analyser certificate (and key) the CA signed."""
        key = ec.generate_private_key(ec.SECP256R1())
        return self._write(f"{cn}.pem", _issue(cn, key, "Lab test CA", self._ca_key, ca=False),
                           key)

    def revoke(self, cert_path: Path, days: float = 7) -> Path:
        """The CA's revocation list (PEM) naming the certificate at ``cert_path``, next
        updated in ``days`` (negative: a list already out of date)."""
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        now = dt.datetime.now(dt.UTC)
        revoked = (x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                   .revocation_date(now - dt.timedelta(minutes=1)).build())
        crl = (x509.CertificateRevocationListBuilder().issuer_name(_name("Lab test CA"))
               .last_update(now - dt.timedelta(days=10))
               .next_update(now + dt.timedelta(days=days)).add_revoked_certificate(revoked)
               .sign(self._ca_key, hashes.SHA256()))
        out = self.dir / "ca.crl.pem"
        out.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return out

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
