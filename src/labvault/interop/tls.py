"""TLS for the doors that listen: the MLLP listener (IHE ATNA "secure node": TLS, and
with a client CA only peers whose certificate that CA signed — mutual authentication of
the analyser) and ``labvault serve`` (HTTPS).

HL7 messages and API responses carry names, NIRs and results: on anything but the
loopback interface a door refuses to run in clear unless told so (``--insecure-plaintext``:
a VPN or a TLS-terminating proxy protects the link). The contexts are the standard
library's, set to TLS 1.2 or later with its default (secure) cipher choice; nothing here
is cryptography of our own.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from labvault.errors import UserError

MINIMUM = ssl.TLSVersion.TLSv1_2
log = logging.getLogger("labvault.tls")


class _RefusalsLogged(ssl.SSLObject):
    """asyncio drops a failed server handshake silently (it logs only in debug mode); a
    sender refused for want of a good certificate is what a security log is for."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise                     # the non-blocking handshake is under way
        except ssl.SSLError as exc:
            why = getattr(exc, "verify_message", None)     # e.g. "certificate revoked"
            log.warning("TLS handshake refused: %s%s", exc.reason or exc,
                        f" ({why})" if why else "")
            raise


def _readable(path: Path, what: str, option: str) -> str:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist or is not a file",
                        f"give the PEM file with {option}")
    try:
        path.read_bytes()
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror})",
                        "check the file's permissions for the user running labvault") from None
    return str(path)


def server_context(cert: Path, key: Path, client_ca: Path | None = None,
                   crl: Path | None = None) -> ssl.SSLContext:
    """The listener's context: its certificate chain and private key (PEM); with
    ``client_ca``, a client certificate signed by that CA is required, and with ``crl``
    (that CA's revocation list, PEM) one it revoked is refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM
    ctx.sslobject_class = _RefusalsLogged
    cert_s = _readable(cert, "the certificate", "--tls-cert")
    key_s = _readable(key, "the private key", "--tls-key")

    def encrypted() -> str:
        # Without a callback OpenSSL would prompt on the terminal (a service would hang).
        raise UserError(f"the private key {key} is encrypted (it asks for a passphrase)",
                        "give an unencrypted PEM key, readable only by the account that runs "
                        "labvault (e.g. openssl pkey -in KEY -out KEY.plain)")

    try:
        ctx.load_cert_chain(cert_s, key_s, password=encrypted)
    except ssl.SSLError as exc:
        raise UserError(f"the certificate {cert} and the private key {key} cannot be used "
                        f"together ({exc.reason or exc})",
                        "give a PEM certificate chain and the unencrypted PEM key that "
                        "matches it") from None
    info = certificate_info(cert)
    if info.days_left() <= 0:
        raise UserError(f"the certificate {cert} ({info.subject}) expired on "
                        f"{info.not_after:%Y-%m-%d}",
                        "renew it: every sender would refuse the connection")
    if client_ca is not None:
        ca_s = _readable(client_ca, "the client CA", "--tls-client-ca")
        try:
            ctx.load_verify_locations(cafile=ca_s)
        except ssl.SSLError as exc:
            raise UserError(f"the client CA {client_ca} is not a PEM certificate "
                            f"({exc.reason or exc})",
                            "give the PEM certificate of the CA that signs your analysers' "
                            "certificates") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    if crl is not None:
        if client_ca is None:
            raise UserError("--tls-crl needs --tls-client-ca",
                            "a revocation list applies to the analysers' certificates")
        crl_s = _readable(crl, "the revocation list", "--tls-crl")
        from cryptography import x509
        try:       # load_verify_locations would take a certificate here without a word
            parsed = x509.load_pem_x509_crl(crl.read_bytes())
        except ValueError as exc:
            raise UserError(f"the revocation list {crl} is not a PEM CRL ({exc})",
                            "give the CRL your CA publishes, in PEM") from None
        nxt = parsed.next_update_utc
        if nxt is not None and nxt <= datetime.now(UTC):
            raise UserError(f"the revocation list {crl} expired on {nxt:%Y-%m-%d %H:%M} UTC: "
                            "every sender would be refused",
                            "fetch the current CRL from your CA")
        ctx.load_verify_locations(cafile=crl_s)
        # the sender's certificate is checked against the list; a certificate the CA
        # revoked (an instrument retired, a key lost) is refused in the handshake
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator needs to know of the listener's certificate: whose, and until when."""

    subject: str
    not_after: datetime

    def days_left(self, now: datetime | None = None) -> float:
        return (self.not_after - (now or datetime.now(UTC))).total_seconds() / 86400


def certificate_info(path: Path) -> CertificateInfo:
    """The first certificate of a PEM chain file (the listener's own)."""
    from cryptography import x509
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise UserError(f"{path} is not a PEM certificate ({exc})",
                        "give the listener's certificate chain in PEM") from None
    return CertificateInfo(cert.subject.rfc4514_string(), cert.not_valid_after_utc)


def expiry_lines(info: CertificateInfo) -> list[str]:
    """The start-up lines about the certificate: its subject and end of validity, and a
    warning when fewer than EXPIRY_WARNING_DAYS are left — an expired certificate stops
    every analyser at once, and renewing one takes a laboratory days."""
    days = info.days_left()
    lines = [f"certificate {info.subject}, valid until {info.not_after:%Y-%m-%d %H:%M} UTC "
             f"({max(days, 0):.0f} days)"]
    if days < EXPIRY_WARNING_DAYS:
        lines.append(f"warning: the certificate expires in {max(days, 0):.0f} days: renew it "
                     "before the senders refuse it")
    return lines


def listening_context(host: str, cert: Path | None, key: Path | None,
                      client_ca: Path | None, insecure_plaintext: bool, carries: str,
                      crl: Path | None = None) -> ssl.SSLContext | None:
    """A door's TLS context from its options, or None to listen in clear — only on
    loopback unless ``--insecure-plaintext`` says a VPN or a TLS proxy protects the link.
    ``carries``: what would cross the network in clear (for the refusal's message)."""
    if (cert is None) != (key is None):
        raise UserError("--tls-cert and --tls-key go together",
                        "give the listener's PEM certificate and its private key")
    if cert is None:
        if client_ca is not None or crl is not None:
            raise UserError("--tls-client-ca and --tls-crl need --tls-cert and --tls-key",
                            "client certificates are checked inside TLS: give the listener's "
                            "own certificate and key too")
        if not is_loopback(host) and not insecure_plaintext:
            raise UserError(f"listening on {host} in clear would carry {carries} across the "
                            "network unencrypted",
                            "give --tls-cert and --tls-key, or --insecure-plaintext if a VPN "
                            "or a TLS proxy protects the link")
        return None
    assert key is not None
    return server_context(cert, key, client_ca, crl)


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None
                   ) -> ssl.SSLContext:
    """A sender's context (``send``, tests, benchmarks): trusts ``ca`` for the listener's
    certificate and presents ``cert``/``key`` when the listener asks for one."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = MINIMUM
    if cert is not None:
        ctx.load_cert_chain(str(cert), None if key is None else str(key))
    return ctx


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (an address of 127.0.0.0/8 or ::1, or
    ``localhost``); any other name or address may be reachable from the network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def peer_name(ssl_object: ssl.SSLObject | None) -> str | None:
    """The subject CN of a verified client certificate (for the listener's log), if any."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    subject = cert.get("subject", ())
    for rdn in subject if isinstance(subject, tuple) else ():
        for pair in rdn:
            if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == "commonName":
                return str(pair[1])
    return None
