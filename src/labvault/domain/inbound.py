"""Inbound messages after parsing, before storage (pure).

A door (the HL7 v2 mapper, a file drop) turns a message into an ``InboundMessage``;
the lab service stores it in one transaction and answers with an ``IngestOutcome``
the door turns into an acknowledgement. Locations (segment, repetition, field) travel
with every part so an error names where it comes from (HL7 ERR-2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from labvault.domain.lab import CodedValue, ServiceRequest, Specimen
from labvault.domain.patient import PatientRecord
from labvault.errors import InvalidRecord


@dataclass(frozen=True, slots=True)
class Location:
    """Where in the message: segment id, its position among segments of that id (1-based),
    field number, component (HL7 ERL data type)."""

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None

    def __str__(self) -> str:
        s = f"{self.segment}[{self.sequence}]"
        if self.field is not None:
            s += f"-{self.field}"
            if self.component is not None:
                s += f".{self.component}"
        return s


@dataclass(frozen=True, slots=True)
class PatientIdentifier:
    value: str
    type_code: str | None = None            # CX-5 (NH, PI, MR, INS...)
    authority: str | None = None            # CX-4 (namespace or OID)


@dataclass(frozen=True, slots=True)
class PatientChanges:
    """What a PID says about a patient, field by field, in the record's own field names
    (HL7 v2.5 §2.5.3): a field the message leaves empty is in neither ``values`` nor
    ``cleared`` (no change); the null value ``""`` puts it in ``cleared`` (delete). A
    field sent replaces all its repetitions (PID-13: phone and e-mail together).
    ``where``: the PID field each record field comes from, for ERR-2."""

    values: Mapping[str, Any]
    cleared: frozenset[str] = frozenset()
    where: Mapping[str, Location] = field(default_factory=dict)

    def applied_to(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """The stored record (import shape) with these changes."""
        out = {k: v for k, v in stored.items() if k not in self.cleared}
        out.update(self.values)
        return out

    def errors(self, exc: InvalidRecord, record: Mapping[str, Any],
               default: Location) -> list[MessageError]:
        """One ERR per field error of ``PatientRecord.parse(record)``, each at its PID
        field, naming the value sent."""
        out = []
        for e in exc.errors:
            root = e.field.split(".")[0].split("[")[0]
            value = _value_at(record, e.field) if root in self.values else None
            shown = f" ({value!r})" if isinstance(value, str) else ""
            hint = f"; {e.hint}" if e.hint else ""
            where = self.where.get(root, default)
            out.append(MessageError(where, ERR_DATA_TYPE,
                                    f"{_pid_name(where)}{e.field}{shown}: {e.rule}{hint}"))
        return out


def _value_at(record: Mapping[str, Any], path: str) -> Any:
    """``address.postal_code``, ``first_names[0]`` -> that value of ``record`` (or None)."""
    value: Any = record
    for part in re.findall(r"[^.\[\]]+", path):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _pid_name(where: Location) -> str:
    return f"{where.segment}-{where.field} " if where.field is not None else ""


@dataclass(frozen=True, slots=True)
class InboundPatient:
    identifiers: tuple[PatientIdentifier, ...]
    nir: str | None                          # NIR/INS found among the identifiers
    external_ids: tuple[str, ...]            # other identifiers (the sender's ids)
    record: PatientRecord | None             # full demographics when PID allowed one
    record_error: str | None = None          # why PID could not make a PatientRecord
    location: Location = field(default_factory=lambda: Location("PID", 1, 3))
    summary: dict[str, str] = field(default_factory=dict)   # name, birth date, sex as sent
    changes: PatientChanges | None = None    # field by field, for an update (ADT^A08)
    record_errors: tuple[MessageError, ...] = ()   # record_error, one ERR per PID field


@dataclass(frozen=True, slots=True)
class InboundResult:
    """One OBX, as sent: code may be LOINC or the analyzer's own."""

    location: Location
    code: str
    code_system: str | None
    display: str | None
    value_type: str                          # HL7 OBX-2: NM, SN, ST, TX, FT, CE, CWE ...
    numeric: str | None = None               # NM/SN as text ("5.4", "<0.5")
    coded: CodedValue | None = None
    text: str | None = None
    unit: str | None = None
    reference_range: str | None = None       # OBX-7 as sent (kept, not trusted)
    flags: str | None = None                 # OBX-8 as sent
    status: str | None = None                # OBX-11 (F, P, C, X ...)
    observed_at: datetime | None = None      # OBX-14
    comments: tuple[str, ...] = ()           # NTE after the OBX

    @staticmethod
    def from_json(d: dict[str, Any]) -> InboundResult:
        loc = d.get("location_parts") or ["OBX", 1, 5, None]
        c = d.get("coded")
        return InboundResult(
            Location(loc[0], loc[1], loc[2], loc[3]), d["code"], d.get("code_system"),
            d.get("display"), d.get("value_type", "ST"), d.get("numeric"),
            CodedValue(c["code"], c.get("display"), c.get("system")) if c else None,
            d.get("text"), d.get("unit"), d.get("reference_range"), d.get("flags"),
            d.get("status"),
            datetime.fromisoformat(d["observed_at"]) if d.get("observed_at") else None,
            tuple(d.get("comments") or ()))

    def as_json(self) -> dict[str, Any]:
        return {"location": str(self.location),
                "location_parts": [self.location.segment, self.location.sequence,
                                   self.location.field, self.location.component],
                "code": self.code,
                "code_system": self.code_system, "display": self.display,
                "value_type": self.value_type, "numeric": self.numeric,
                "coded": ({"code": self.coded.code, "display": self.coded.display,
                           "system": self.coded.system} if self.coded else None),
                "text": self.text, "unit": self.unit, "reference_range": self.reference_range,
                "flags": self.flags, "status": self.status,
                "observed_at": self.observed_at.isoformat() if self.observed_at else None,
                "comments": list(self.comments)}


@dataclass(frozen=True, slots=True)
class InboundTest:
    code: str
    code_system: str | None
    display: str | None
    location: Location


@dataclass(frozen=True, slots=True)
class InboundOrder:
    """One order group (ORC/OBR [+SPM] [+NTE] [+OBX...])."""

    location: Location
    control: str                             # ORC-1: NW new, CA cancel, SC/RE status/results
    placer_number: str | None
    filler_number: str | None
    tests: tuple[InboundTest, ...]
    request: ServiceRequest | None           # built when tests map (codes resolved later)
    specimen: Specimen | None
    results: tuple[InboundResult, ...] = ()
    notes: tuple[str, ...] = ()
    orc: Location | None = None              # the group's own ORC, if it has one

    def at(self, field: int) -> Location:
        """This group's OBR field ``field`` (ERR-2)."""
        return Location(self.location.segment, self.location.sequence, field)

    def number_location(self) -> Location:
        """Where the order number that identifies this group was read."""
        if self.orc is not None:
            return Location("ORC", self.orc.sequence, 2 if self.placer_number else 3)
        return self.at(2 if self.placer_number else 3)

    def control_location(self) -> Location:
        """ORC-1 (order control) of this group; OBR-2 when it has no ORC."""
        return Location("ORC", self.orc.sequence, 1) if self.orc is not None else self.at(2)
    control_reason: str | None = None        # ORC-16 (text, else code): why, for a cancel


@dataclass(frozen=True, slots=True)
class InboundMessage:
    message_type: str                        # ADT, ORM, OML, ORU
    trigger: str                             # A04, A08, O01, O21, R01
    control_id: str                          # MSH-10
    sending: str                             # MSH-3 ^ MSH-4 (part of the idempotency key)
    version: str
    patient: InboundPatient | None
    orders: tuple[InboundOrder, ...] = ()
    merged: InboundPatient | None = None     # ADT^A40: MRG-1, the duplicate named

    @property
    def kind(self) -> str:
        return f"{self.message_type}^{self.trigger}"


# HL7 table 0357 (message error condition codes) used in ERR-3.
ERR_ACCEPTED = "0"                  # with severity I: a note on a message accepted
ERR_SEGMENT_SEQUENCE = "100"
ERR_REQUIRED_FIELD_MISSING = "101"
ERR_DATA_TYPE = "102"
ERR_TABLE_VALUE_NOT_FOUND = "103"
ERR_UNSUPPORTED_MESSAGE_TYPE = "200"
ERR_UNSUPPORTED_EVENT = "201"
ERR_UNSUPPORTED_PROCESSING_ID = "202"
ERR_UNSUPPORTED_VERSION = "203"
ERR_UNKNOWN_KEY = "204"
ERR_DUPLICATE_KEY = "205"
ERR_RECORD_CHANGED = "206"          # HL7 table 0357 "application record locked": send again
ERR_INTERNAL = "207"

ERR_TEXT = {
    "0": "Message accepted", "100": "Segment sequence error",
    "101": "Required field missing", "102": "Data type error",
    "103": "Table value not found", "200": "Unsupported message type",
    "201": "Unsupported event code", "202": "Unsupported processing id",
    "203": "Unsupported version id", "204": "Unknown key identifier",
    "205": "Duplicate key identifier", "206": "Application record locked",
    "207": "Application internal error",
}


@dataclass(frozen=True, slots=True)
class MessageError:
    """One ERR segment: where, which HL7 error code, severity, and a human message."""

    location: Location | None
    code: str
    text: str
    severity: Literal["E", "W", "I"] = "E"


class ContentError(Exception):
    """The message is readable but its content cannot be stored (-> AE, nothing stored)."""

    def __init__(self, errors: list[MessageError]) -> None:
        super().__init__("; ".join(f"{e.location}: {e.text}" for e in errors))
        self.errors = errors


@dataclass
class IngestOutcome:
    ack_code: Literal["AA", "AE", "AR"]
    errors: list[MessageError] = field(default_factory=list)    # ERR segments (incl. warnings)
    patient_id: str | None = None
    order_ids: list[str] = field(default_factory=list)
    observation_ids: list[str] = field(default_factory=list)
    issue_ids: list[str] = field(default_factory=list)
    message_id: str | None = None
    duplicate: bool = False
    kept: bool = False          # an AE whose record for review (an import issue) is kept
