"""Original-mode acknowledgements (HL7 v2.5 §2.9.2): MSA-1 AA / AE / AR, one ERR per problem.

ERR (v2.5): ERR-2 error location (segment^sequence^field^repetition^component),
ERR-3 HL7 error code (table 0357), ERR-4 severity (E/W/I), ERR-8 user message. For
senders on v2.3/v2.4 the same is also written in ERR-1 (segment^sequence^field^code&text)
and MSA-3, which those versions read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from labvault.domain.inbound import ERR_TEXT, MessageError
from labvault.domain.outbound import escape  # one HL7 escaping for ACKs and ORU^R01

DEFAULT_SEPS = "|^~\\&"


@dataclass(frozen=True, slots=True)
class Header:
    """What an ACK needs from the incoming MSH (best effort on broken input)."""

    separators: str = DEFAULT_SEPS
    sending_app: str = ""
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    trigger: str = ""
    version: str = "2.5"
    processing_id: str = "P"
    charset: str = ""              # MSH-18 of the message: the ACK is written in it too


_SAFE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")


def sniff_header(raw: bytes | str) -> Header:
    """Read MSH fields without trusting the message (for an AR on unparseable input)."""
    try:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = text.lstrip("\ufeff\x0b\r\n ")
        if not text.startswith("MSH") or len(text) < 8:
            return Header()
        first = re.split(r"\r|\n", text, maxsplit=1)[0][:4096]
        fs = first[3]
        parts = first.split(fs)
        enc = parts[1] if len(parts) > 1 else ""
        seps = fs + enc[:4] if len(enc) >= 4 and len(set(fs + enc[:4])) == 5 and not any(
            c.isalnum() or not "\x21" <= c <= "\x7e" for c in fs + enc[:4]) else DEFAULT_SEPS
        cs = seps[1]

        def f(n: int, comp: int | None = None) -> str:
            v = parts[n - 1] if len(parts) > n - 1 else ""
            if comp is not None:
                c = v.split(cs)
                v = c[comp - 1] if len(c) >= comp else ""
            return _SAFE.sub("", v)[:199]
        version = f(12, 1) or "2.5"
        return Header(seps, f(3), f(4), f(5), f(6), f(10), f(9, 2), version, f(11, 1) or "P")
    except Exception:  # best effort only: an AR must always be producible
        return Header()


def _old_version(version: str) -> bool:
    return version.startswith(("2.1", "2.2", "2.3", "2.4"))


def build_ack(h: Header, code: str, errors: Sequence[MessageError] = (),
              ack_control_id: str = "", now: datetime | None = None) -> bytes:
    """The ACK bytes (UTF-8, segments separated by CR, no MLLP framing)."""
    seps = h.separators
    fs, cs, ss = seps[0], seps[1], seps[4]
    ts = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S+0000")

    def e(v: str) -> str:
        return escape(v, seps)
    msh = fs.join(["MSH", seps[1:], e(h.receiving_app), e(h.receiving_facility),
                   e(h.sending_app), e(h.sending_facility), ts, "",
                   cs.join(["ACK", e(h.trigger), "ACK"]) if h.trigger else "ACK",
                   e(ack_control_id or "ACK"), e(h.processing_id or "P"), e(h.version or "2.5")]
                  + (["", "", "", "", "", e(h.charset)] if h.charset else []))
    old = _old_version(h.version)
    first_error = next((x for x in errors if x.severity == "E"), None)
    msa_fields = ["MSA", code, e(h.control_id)]
    if old and first_error is not None:
        msa_fields.append(e(first_error.text)[:80])
    segments = [msh, fs.join(msa_fields)]
    for err in errors:
        loc = err.location
        erl = cs.join([loc.segment, str(loc.sequence), str(loc.field or ""), "",
                       str(loc.component or "")]).rstrip(cs) if loc else ""
        hl7code = cs.join([err.code, e(ERR_TEXT.get(err.code, "")), "HL70357"])
        err1 = ""
        if old and loc:
            err1 = cs.join([loc.segment, str(loc.sequence), str(loc.field or ""),
                            ss.join([err.code, e(ERR_TEXT.get(err.code, "")), "HL70357"])])
        segments.append(fs.join(["ERR", err1, erl, hl7code, err.severity,
                                 "", "", "", e(err.text)[:250]]))
    from labvault.interop.hl7.parse import CHARSETS
    codec = CHARSETS.get(h.charset.upper(), "utf-8")
    return ("\r".join(segments) + "\r").encode(codec, "replace")
