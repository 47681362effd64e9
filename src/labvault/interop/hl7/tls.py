"""TLS for the MLLP listener (IHE ATNA "secure node": TLS, and with a client CA, only
peers whose certificate that CA signed — mutual authentication of the analyser).

HL7 v2 carries names, NIRs and results: on anything but the loopback interface the
listener refuses to run in clear unless told so (``--insecure-plaintext``: a VPN or a
TLS-terminating proxy protects the link). The contexts are the standard library's, set
to TLS 1.2 or later with its default (secure) cipher choice; nothing here is
cryptography of our own.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from labvault.errors import UserError

MINIMUM = ssl.TLSVersion.TLSv1_2


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


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The listener's context: its certificate chain and private key (PEM); with
    ``client_ca``, a client certificate signed by that CA is required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM
    cert_s = _readable(cert, "the certificate", "--tls-cert")
    key_s = _readable(key, "the private key", "--tls-key")
    try:
        ctx.load_cert_chain(cert_s, key_s)
    except ssl.SSLError as exc:
        raise UserError(f"the certificate {cert} and the private key {key} cannot be used "
                        f"together ({exc.reason or exc})",
                        "give a PEM certificate chain and the unencrypted PEM key that "
                        "matches it") from None
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
    return ctx


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
