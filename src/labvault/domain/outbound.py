"""Outbound HL7 v2.5 ORU^R01: a published (or corrected) report as the prescriber's or
the hospital's system receives it (pure: text in, bytes out; no I/O).

It lives in the domain rather than in ``interop/hl7`` because it is composed inside the
core's publication transaction (the row that holds it is written with the publication,
or neither is): the core may not call a door, and the doors (``interop``) already build
on the domain. The escaping is the one the ACKs use (``interop/hl7/ack.py`` imports
``escape`` from here), and the mapping mirrors the inbound one (docs/hl7.md) in reverse:
PID-3 carries the INS / NIR with the type codes the inbound mapping reads as a NIR
(``INS``, ``NH``), PID-5 the birth name (``L``) and the used name (``D``), ORC-12 and
OBR-16 the prescriber (RPPS), one OBX per result (OBX-11 ``F``, or ``C`` for a result
corrected after publication), NTE the conclusion and the results' comments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from labvault.domain.lab import Observation, ValueKind

SEPARATORS = "|^~\\&"
CHARSET = "UNICODE UTF-8"                    # MSH-18: the message is UTF-8
REPORT_CODE = "11502-2^Laboratory report^LN"  # OBR-4: LOINC "Laboratory report"
INS_AUTHORITY = "ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO"   # INS-NIR (ANS)
RPPS_AUTHORITY = "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"       # RPPS (ANS)


def escape(value: str, seps: str = SEPARATORS) -> str:
    """HL7 v2 escaping of a field value (§2.7): the separators as ``\\F\\ \\S\\ \\R\\ \\T\\
    \\E\\``, line breaks as ``\\.br\\``, other control characters dropped."""
    fs, cs, rs, esc, ss = seps[0], seps[1], seps[2], seps[3], seps[4]
    out = []
    for c in value:
        if c == esc:
            out.append(f"{esc}E{esc}")
        elif c == fs:
            out.append(f"{esc}F{esc}")
        elif c == cs:
            out.append(f"{esc}S{esc}")
        elif c == rs:
            out.append(f"{esc}R{esc}")
        elif c == ss:
            out.append(f"{esc}T{esc}")
        elif c in "\r\n":
            out.append(f"{esc}.br{esc}")
        elif ord(c) < 0x20:
            continue
        else:
            out.append(c)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class OutboundResult:
    observation: Observation
    corrected: bool = False          # amended after publication: OBX-11 C


@dataclass(frozen=True, slots=True)
class OutboundReport:
    """Everything an ORU^R01 says, gathered by the core after its gate decisions."""

    control_id: str                   # MSH-10 (the outbox row's random id)
    sent_at: datetime                 # MSH-7
    finess: str                       # MSH-4: the laboratory (FINESS number)
    lab_name: str
    patient_id: str                   # PID-3, the laboratory's own identifier
    identity: Mapping[str, Any]       # the patient's identity category, as sealed
    report_id: str
    placer_number: str | None         # ORC-2/OBR-2: the prescriber's order number
    filler_number: str | None         # ORC-3/OBR-3: the laboratory's
    prescriber: Mapping[str, Any] | None   # {"name", "rpps"}
    corrected: bool                   # OBR-25 C (a correction) or F
    collected_at: datetime | None     # OBR-7
    issued_at: datetime | None        # OBR-22
    results: Sequence[OutboundResult]
    conclusion: str | None


def _ts(d: datetime | None) -> str:
    if d is None:
        return ""
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _number(x: float) -> str:
    """An HL7 NM: digits and a point, never an exponent."""
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return format(Decimal(repr(x)), "f")


def _segment(seg_id: str, fields: Mapping[int, str]) -> str:
    n = max(fields, default=0)
    return "|".join([seg_id, *(fields.get(i, "") for i in range(1, n + 1))])


def _prescriber(p: Mapping[str, Any] | None) -> str:
    """XCN: RPPS^name (the whole name as family name, as it is stored)^...^RPPS authority
    (XCN-9)^...^identifier type RPPS (XCN-13)."""
    if not p or not p.get("name"):
        return ""
    rpps = p.get("rpps") or ""
    parts = [escape(rpps), escape(str(p["name"]))] + [""] * 11
    if rpps:
        parts[8], parts[12] = RPPS_AUTHORITY, "RPPS"
    return "^".join(parts).rstrip("^")


def _identifiers(patient_id: str, ident: Mapping[str, Any], finess: str) -> str:
    reps = [f"{escape(patient_id)}^^^{escape(finess)}^PI"]
    ins, nir = ident.get("ins"), ident.get("nir")
    if ins:
        reps.append(f"{escape(ins)}^^^{INS_AUTHORITY}^INS")
    if nir and nir != ins:
        reps.append(f"{escape(nir)}^^^^NH")
    return "~".join(reps)


def _names(ident: Mapping[str, Any]) -> str:
    firsts = [escape(str(f)) for f in ident.get("first_names") or ()]
    first = firsts[0] if firsts else ""
    others = " ".join(firsts[1:])
    reps = [f"{escape(str(ident.get('birth_name') or ''))}^{first}^{others}^^^^L"]
    if ident.get("used_name"):
        reps.append(f"{escape(str(ident['used_name']))}^{first}^^^^^D")
    return "~".join(reps)


def _range(o: Observation) -> str:
    if o.range_low is not None and o.range_high is not None:
        return f"{_number(o.range_low)}-{_number(o.range_high)}"
    if o.range_low is not None:
        return f">={_number(o.range_low)}"
    if o.range_high is not None:
        return f"<={_number(o.range_high)}"
    return escape(o.reference_range or "")


def _value(o: Observation) -> tuple[str, str]:
    """(OBX-2 value type, OBX-5 value)."""
    if o.kind == ValueKind.NUMERIC and o.numeric is not None:
        if o.comparator:
            return "SN", f"{escape(o.comparator)}^{_number(o.numeric)}"
        return "NM", _number(o.numeric)
    if o.kind == ValueKind.CODED and o.coded is not None:
        c = o.coded
        return "CWE", "^".join([escape(c.code), escape(c.display or ""),
                                escape(c.system or "")]).rstrip("^")
    text = o.text or ""
    return ("TX" if "\n" in text or "\r" in text else "ST"), escape(text)


def compose_oru(r: OutboundReport) -> bytes:
    """The ORU^R01 message (UTF-8, segments separated by CR, without MLLP framing)."""
    e = escape
    status = "C" if r.corrected else "F"
    ident = r.identity
    segments = [
        _segment("MSH", {1: SEPARATORS[1:], 2: "LABVAULT", 3: e(r.finess), 6: _ts(r.sent_at),
                         8: "ORU^R01^ORU_R01", 9: e(r.control_id), 10: "P", 11: "2.5",
                         17: CHARSET}),
        _segment("PID", {1: "1", 3: _identifiers(r.patient_id, ident, r.finess),
                         5: _names(ident),
                         7: str(ident.get("birth_date") or "").replace("-", "")[:8],
                         8: e(str(ident.get("sex") or ""))}),
        _segment("ORC", {1: "RE", 2: e(r.placer_number or ""), 3: e(r.filler_number or ""),
                         5: "CM", 9: _ts(r.sent_at), 12: _prescriber(r.prescriber)}),
        _segment("OBR", {1: "1", 2: e(r.placer_number or ""), 3: e(r.filler_number or ""),
                         4: REPORT_CODE, 7: _ts(r.collected_at), 16: _prescriber(r.prescriber),
                         22: _ts(r.issued_at), 24: "LAB", 25: status}),
    ]
    if r.conclusion:
        segments.append(_segment("NTE", {1: "1", 2: "L", 3: e(r.conclusion)}))
    for i, res in enumerate(r.results, start=1):
        o = res.observation
        vt, value = _value(o)
        segments.append(_segment("OBX", {
            1: str(i), 2: vt, 3: f"{e(o.code)}^{e(o.display)}^LN", 5: value,
            6: f"{e(o.unit)}^^UCUM" if o.unit else "", 7: _range(o),
            8: e(o.flag.value) if o.flag else "", 11: "C" if res.corrected else "F",
            14: _ts(o.observed_at)}))
        if o.comment:
            segments.append(_segment("NTE", {1: "1", 2: "L", 3: e(o.comment)}))
    return ("\r".join(segments) + "\r").encode("utf-8")
