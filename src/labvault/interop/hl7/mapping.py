"""HL7 v2 segments -> inbound records, following the HL7 v2-to-FHIR mapping (docs/hl7.md):

PID -> Patient, PV1 -> (encounter: only the visit number is kept, for context),
ORC/OBR -> ServiceRequest, OBR-7/SPM -> Specimen, OBX -> Observation, NTE -> notes.

Pure: no storage. Content problems raise ``ContentError`` with one ``MessageError`` per
problem, each naming segment/field (-> ERR in an AE); unsupported message types raise
``Rejected`` (-> AR).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from stdnum import luhn

from labvault.domain import inbound as I
from labvault.domain.inbound import Location, MessageError
from labvault.domain.lab import CodedValue, Priority, ServiceRequest, Specimen
from labvault.domain.patient import PatientRecord
from labvault.errors import InvalidRecord
from labvault.interop.hl7.parse import Message, Segment

SUPPORTED = {("ADT", "A04"), ("ADT", "A08"), ("ADT", "A01"), ("ADT", "A28"), ("ADT", "A31"),
             ("ADT", "A40"), ("ORM", "O01"), ("OML", "O21"), ("ORU", "R01")}
# ADT^A40 (merge patient -- patient identifier list; message structure ADT_A39: MSH, EVN,
# PID, MRG): PID names the record kept, MRG-1 the duplicate. Never merged automatically:
# a merge request for the laboratory's identity vigilance (services/lab_messages.py).
MERGE_TRIGGERS = ("A40",)
VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
NIR_OIDS = ("1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.10")   # INS-NIR, INS-NIR (test)
NIR_TYPES = ("NH", "INS", "INS-NIR", "SS")
DEFAULT_TZ = ZoneInfo("Europe/Paris")
NULL = '""'     # HL7 null value: delete what the receiver holds (v2.5 §2.5.3)
NOT_PRODUCTION = {"T": "training", "D": "debugging"}     # MSH-11, HL7 table 0103
# OBX-11 statuses that carry no value (table 0085): results cannot be obtained, deleted,
# wrong, pending, not asked, order detail only.
NO_VALUE = ("X", "D", "W", "I", "N", "O")


class Rejected(Exception):
    """Readable, but not a message labvault accepts (-> AR with this ERR)."""

    def __init__(self, error: MessageError) -> None:
        super().__init__(error.text)
        self.error = error


_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?"
                  r"([+-]\d{4})?")


def parse_dtm(value: str, tz: tzinfo = DEFAULT_TZ) -> datetime:
    """HL7 DTM ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``; raises ValueError."""
    m = _DTM.fullmatch(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not an HL7 date/time (YYYYMMDDHHMMSS[+ZZZZ])")
    y, mo, d, h, mi, s, frac, off = m.groups()
    zone: tzinfo = tz
    if off:
        sign = 1 if off[0] == "+" else -1
        hours, mins = int(off[1:3]), int(off[3:5])
        if hours > 14 or mins > 59:
            raise ValueError(f"{value!r} has an invalid time zone offset")
        zone = timezone(sign * timedelta(hours=hours, minutes=mins))
    try:
        dt = datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0),
                      int(s or 0), int((frac or "0").ljust(6, "0")[:6]), tzinfo=zone)
    except ValueError as exc:       # "month must be in 1..12": say which value
        raise ValueError(f"{value!r} is not a valid date/time ({exc}); expected "
                         "YYYYMMDDHHMMSS[+ZZZZ]") from None
    if dt.year < 1880 or dt.year > 2200:
        raise ValueError(f"{value!r} is out of range")
    return dt.astimezone(UTC)


def _identifiers(seg: Segment, field: int) -> list[I.PatientIdentifier]:
    """A CX list (PID-3, MRG-1): value, type code (CX.5), assigning authority (CX.4)."""
    ids: list[I.PatientIdentifier] = []
    for rep in seg.reps(field):
        value = rep[0][0].strip() if rep and rep[0] else ""
        if not value or value == NULL:
            continue
        authority = "&".join(x for x in rep[3] if x) if len(rep) > 3 else ""
        type_code = rep[4][0] if len(rep) > 4 and rep[4] else ""
        ids.append(I.PatientIdentifier(value, type_code or None, authority or None))
    return ids


def _nir_and_others(ids: list[I.PatientIdentifier]) -> tuple[str | None, tuple[str, ...]]:
    """The NIR (INS-NIR) among ``ids``, and the sender's other identifiers."""
    nir = next((i.value for i in ids if (i.type_code or "").upper() in NIR_TYPES
                or any(o in (i.authority or "") for o in NIR_OIDS)), None)
    return nir, tuple(i.value for i in ids if i.value != nir)


class _Mapper:
    def __init__(self, msg: Message, tz: tzinfo) -> None:
        self.msg = msg
        self.tz = tz
        self.errors: list[MessageError] = []

    def err(self, seg: Segment | str, field: int | None, code: str, text: str,
            component: int | None = None) -> None:
        loc = Location(seg.id, seg.sequence, field, component) if isinstance(seg, Segment) \
            else Location(seg, 1, field, component)
        self.errors.append(MessageError(loc, code, text))

    def dtm(self, seg: Segment, field: int, value: str, component: int | None = None
            ) -> datetime | None:
        if not value:
            return None
        try:
            return parse_dtm(value, self.tz)
        except (ValueError, OverflowError) as exc:
            self.err(seg, field, I.ERR_DATA_TYPE, str(exc), component)
            return None

    # -- PID -----------------------------------------------------------------------------------
    def patient(self, pid: Segment, with_record: bool = True) -> I.InboundPatient:
        ids = _identifiers(pid, 3)
        if not ids and pid.get(2) and pid.get(2) != NULL:   # v2.3 external id
            ids.append(I.PatientIdentifier(pid.get(2), pid.get(2, 5) or None,
                                           pid.get(2, 4) or None))
        if not ids:
            self.err(pid, 3, I.ERR_REQUIRED_FIELD_MISSING, "PID-3 (patient identifier) is empty")
        nir, external = _nir_and_others(ids)
        changes: I.PatientChanges | None = None
        record: PatientRecord | None = None
        record_errors: tuple[MessageError, ...] = ()
        if with_record:
            changes = self.patient_changes(pid, nir, external)
            record, record_errors = self.registration(pid, changes)
        elif pid.get(7) and pid.get(7) != NULL:
            # results never register a patient: PID-7 is only kept for a human to match
            self.dtm(pid, 7, pid.get(7))
        summary = {"name": " ".join(x for x in (pid.get(5, 1), pid.get(5, 2)) if x)[:200],
                   "birth_date": pid.get(7)[:8], "sex": pid.get(8)[:1]}
        return I.InboundPatient(tuple(ids), nir, external, record,
                                "; ".join(e.text for e in record_errors) or None,
                                Location("PID", pid.sequence, 3), summary, changes,
                                record_errors)

    def merged(self, mrg: Segment) -> I.InboundPatient:
        """MRG-1 (prior patient identifier list, CX like PID-3): the duplicate an ADT^A40
        names, matched as PID-3 is (NIR, else the sender's identifiers)."""
        ids = _identifiers(mrg, 1)
        if not ids:
            self.err(mrg, 1, I.ERR_REQUIRED_FIELD_MISSING,
                     "MRG-1 (prior patient identifier list) is empty")
        nir, external = _nir_and_others(ids)
        return I.InboundPatient(tuple(ids), nir, external, None,
                                location=Location("MRG", mrg.sequence, 1))

    def patient_changes(self, pid: Segment, nir: str | None, external: tuple[str, ...]
                        ) -> I.PatientChanges:
        """PID field by field (HL7 v2.5 §2.5.3): empty = no change, ``""`` = delete. PID-3
        only adds or changes identifiers (it is what the patient is matched by)."""
        values: dict[str, Any] = {}
        cleared: set[str] = set()
        where: dict[str, Location] = {}

        def at(field: int, *names: str) -> None:
            for n in names:
                where[n] = Location("PID", pid.sequence, field)
        at(3, "nir", "ins", "external_id")
        if nir:
            values["nir"] = nir
        if external:
            values["external_id"] = external[0]
        at(5, "birth_name", "used_name", "first_names")
        self._names(pid, values, cleared)
        at(7, "birth_date")
        self._birth_date(pid, values)
        at(8, "sex")
        self._sex(pid, values)
        at(11, "address")
        self._address(pid, values, cleared)
        at(13, "phone", "email")
        self._telecom(pid, values, cleared)
        return I.PatientChanges(values, frozenset(cleared), where)

    def _required_not_null(self, pid: Segment, field: int, name: str, what: str) -> bool:
        """False (and an ERR) when a field the record cannot lose is sent as ``""``."""
        if pid.get(field) != NULL:
            return True
        self.err(pid, field, I.ERR_REQUIRED_FIELD_MISSING,
                 f'PID-{field} ({name}) is "" (delete), but a patient cannot lose it: '
                 f"send {what}, or leave the field empty to keep the one on record")
        return False

    def _names(self, pid: Segment, values: dict[str, Any], cleared: set[str]) -> None:
        if not pid.reps(5) or not self._required_not_null(pid, 5, "patient name",
                                                           "the name"):
            return
        birth_name = used_name = None
        first_names: list[str] = []
        for rep in pid.reps(5):
            family = rep[0][0] if rep and rep[0] else ""
            ntype = rep[6][0] if len(rep) > 6 and rep[6] else ""
            if ntype == "D" and family:
                used_name = family
            elif family and birth_name is None:
                birth_name = family
            if not first_names and len(rep) > 1 and rep[1] and rep[1][0]:
                first_names = [rep[1][0]]
                if len(rep) > 2 and rep[2] and rep[2][0]:
                    first_names += [x for x in re.split(r"[ ,]+", rep[2][0]) if x]
        if birth_name:
            values["birth_name"] = birth_name
        if first_names:
            values["first_names"] = first_names
        # PID-5 sent replaces all its repetitions: no D (used) name any more -> none
        if used_name and used_name != (birth_name or ""):
            values["used_name"] = used_name
        else:
            cleared.add("used_name")

    def _birth_date(self, pid: Segment, values: dict[str, Any]) -> None:
        raw = pid.get(7).strip()
        if not raw or not self._required_not_null(pid, 7, "birth date", "the birth date"):
            return
        if re.fullmatch(r"\d{4}(\d{2})?", raw):
            # A day invented here would change the identity used for matching and the
            # age used for the reference ranges.
            self.err(pid, 7, I.ERR_DATA_TYPE,
                     f"PID-7 {raw!r} is a birth date without a day: labvault needs the full "
                     "date (YYYYMMDD) to identify the patient; send it, or leave PID-7 empty")
            return
        if self.dtm(pid, 7, raw) is not None:
            values["birth_date"] = f"{raw[:4]}-{raw[4:6]}-{raw[6:8]}"

    def _sex(self, pid: Segment, values: dict[str, Any]) -> None:
        raw = pid.get(8)
        if raw and self._required_not_null(pid, 8, "administrative sex", "F, M or U"):
            values["sex"] = {"F": "F", "M": "M"}.get(raw.upper(), "U")

    def _address(self, pid: Segment, values: dict[str, Any], cleared: set[str]) -> None:
        if pid.get(11) == NULL:
            cleared.add("address")
            return
        addr = pid.reps(11)
        if not addr or not addr[0]:
            return
        a = addr[0]

        def comp(i: int) -> str:
            return a[i][0] if len(a) > i and a[i] else ""
        # An address without street, city and postal code is not kept (nor applied).
        if comp(0) and comp(2) and comp(4):
            values["address"] = {"line": " ".join(x for x in (comp(0), comp(1)) if x),
                                 "city": comp(2), "postal_code": comp(4),
                                 "country": {"FRA": "FR", "": "FR"}.get(comp(5), comp(5)[:2])}

    def _telecom(self, pid: Segment, values: dict[str, Any], cleared: set[str]) -> None:
        if not pid.reps(13):
            return
        found: dict[str, str] = {}
        for rep in pid.reps(13):
            use = rep[2][0] if len(rep) > 2 and rep[2] else ""
            if use in ("Internet", "NET", "X.400") and len(rep) > 3 and rep[3] and rep[3][0]:
                found.setdefault("email", rep[3][0])
            elif rep and rep[0] and rep[0][0] and rep[0][0] != NULL:
                found.setdefault("phone", rep[0][0])
            elif len(rep) > 11 and rep[11] and rep[11][0]:
                found.setdefault("phone", rep[11][0])
        values.update(found)
        # PID-13 sent (or "") replaces all its repetitions: what it no longer has is gone
        cleared.update(k for k in ("phone", "email") if k not in found)

    def registration(self, pid: Segment, changes: I.PatientChanges
                     ) -> tuple[PatientRecord | None, tuple[MessageError, ...]]:
        """The record a new patient gets from this PID (sex U when PID-8 is empty)."""
        data = {"sex": "U", **changes.values}
        try:
            return PatientRecord.parse(data), ()
        except InvalidRecord as exc:
            return None, tuple(changes.errors(exc, data, Location("PID", pid.sequence)))

    # -- orders --------------------------------------------------------------------------------
    def tests_of(self, obr: Segment) -> list[I.InboundTest]:
        out = []
        for rep in obr.reps(4):
            code = rep[0][0] if rep and rep[0] else ""
            if code:
                out.append(I.InboundTest(code, rep[2][0] if len(rep) > 2 and rep[2] else None,
                                         rep[1][0] if len(rep) > 1 and rep[1] else None,
                                         Location("OBR", obr.sequence, 4)))
        return out

    def prescriber(self, seg: Segment, field: int) -> dict[str, Any] | None:
        f = seg.reps(field)
        if not f or not f[0]:
            return None
        x = f[0]

        def c(i: int) -> str:
            return x[i][0] if len(x) > i and x[i] else ""
        name = " ".join(p for p in (c(5), c(2), c(1)) if p)   # prefix given family
        ident = c(0)
        rpps = ident if re.fullmatch(r"\d{11}", ident) and luhn.is_valid(ident) else None
        if not name:
            return None
        return {"name": name[:100], "rpps": rpps} if rpps else {"name": name[:100]}

    def priority(self, orc: Segment | None, obr: Segment, tq1: Segment | None) -> Priority:
        raw = (tq1.get(9) if tq1 else "") or obr.get(27, 6) or (orc.get(7, 6) if orc else "") \
            or obr.get(5)
        return {"S": Priority.STAT, "A": Priority.URGENT, "ASAP": Priority.URGENT,
                "STAT": Priority.STAT}.get(raw.upper(), Priority.ROUTINE)

    def result(self, obx: Segment, notes: list[str]) -> I.InboundResult | None:
        vt = obx.get(2).upper()
        code = obx.get(3, 1)
        if not code:
            self.err(obx, 3, I.ERR_REQUIRED_FIELD_MISSING, "OBX-3 (observation identifier) is empty")
            return None
        system = obx.get(3, 3) or None
        if system not in ("LN", "LOINC") and obx.get(3, 6) in ("LN", "LOINC") and obx.get(3, 4):
            alt = obx.get(3, 4)   # alternate identifier is LOINC: prefer it
            code, system = alt, "LN"
        reps = obx.reps(5)
        numeric = text = None
        coded = None
        loc = Location("OBX", obx.sequence, 5)
        if vt in ("NM",):
            numeric = obx.get(5).strip() or None
        elif vt == "SN":
            comp = obx.get(5, 1)
            comp = "" if comp == "=" else comp      # "=": equals, the number itself
            n1 = obx.get(5, 2)
            sep = obx.get(5, 3)
            n2 = obx.get(5, 4)
            numeric = (comp + n1 + (sep + n2 if sep else "")).strip() or None
        elif vt in ("CE", "CWE", "CNE", "CF"):
            c = obx.get(5, 1)
            if c:
                coded = CodedValue(c, obx.get(5, 2) or None, obx.get(5, 3) or None)
        elif vt in ("ST", "TX", "FT", ""):
            parts = ["^".join(s[0] if s else "" for s in rep).rstrip("^") for rep in reps]
            text = "\n".join(p for p in parts if p) or None
        else:
            self.err(obx, 2, I.ERR_TABLE_VALUE_NOT_FOUND,
                     f"OBX-2 value type {vt!r} is not supported (NM, SN, ST, TX, FT, CE, CWE)")
            return None
        status = obx.get(11).upper() or None
        if numeric is None and coded is None and text is None and status not in NO_VALUE:
            self.err(obx, 5, I.ERR_REQUIRED_FIELD_MISSING,
                     f"OBX-5 (value) is empty, but OBX-11 is {status or 'empty'}: send the "
                     "value, or OBX-11 I (pending), X (cannot be obtained), D (delete)")
            return None
        observed = self.dtm(obx, 14, obx.get(14))
        # OBX-8 repeats (table 0078 codes, CWE from v2.7: the code is the first component)
        flags = "~".join(f for i in range(len(obx.reps(8))) if (f := obx.get(8, 1, i)))
        return I.InboundResult(loc, code, system, obx.get(3, 2) or None, vt or "ST", numeric,
                               coded, text, obx.get(6, 1) or None, obx.get(7) or None,
                               flags or None, status, observed, tuple(notes))

    def specimen(self, obr: Segment, spm: Segment | None, placer: str | None,
                 filler: str | None) -> Specimen | None:
        accession = (spm.get(2, 2) or spm.get(2, 1)) if spm else ""
        accession = accession or filler or placer or ""
        collected = None
        stype = ""
        if spm is not None:
            stype = spm.get(4, 1)
            collected = self.dtm(spm, 17, spm.get(17, 1), 1)
        if collected is None:
            collected = self.dtm(obr, 7, obr.get(7))
        if not stype:
            stype = obr.get(15, 1)            # v2.3 specimen source
        stype = stype.upper() or "BLD"
        from labvault.domain.lab import SPECIMEN_TYPES
        if stype not in SPECIMEN_TYPES:
            stype = {"WB": "BLD", "S": "SER", "P": "PLAS", "U": "UR"}.get(stype, "")
            if not stype:
                seg = spm or obr
                self.err(seg, 4 if spm else 15, I.ERR_TABLE_VALUE_NOT_FOUND,
                         "specimen type is not known (HL7 table 0487: BLD, SER, PLAS, UR ...)")
                return None
        if collected is None or not accession:
            return None
        return Specimen(stype, collected, accession[:64])

    def orders(self, segs: list[Segment], with_results: bool) -> list[I.InboundOrder]:
        """Groups: ORC? [TQ1] OBR [TQ1] [SPM] [NTE*] [OBX [NTE*]]*. An ORC belongs to the
        OBR that follows it only (ORU_R01 ORDER_OBSERVATION, ORM_O01 ORDER): an OBR without
        its own ORC is its own order, named by its OBR-2/OBR-3 — unless it has neither, in
        which case it continues the order before it (more tests of that order)."""
        groups: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        pending_orc: Segment | None = None
        pending_tq1: Segment | None = None
        last_obx_notes: list[str] | None = None
        for s in segs:
            if s.id == "ORC":
                pending_orc, pending_tq1, last_obx_notes = s, None, None
            elif s.id == "OBR":
                current = {"orc": pending_orc, "obr": s, "tq1": pending_tq1, "spm": None,
                           "notes": [], "obx": [], **_numbers(pending_orc, s)}
                if pending_orc is None and not (s.get(2) or s.get(3)) and groups:
                    last = groups[-1]            # no number of its own: that order again
                    current.update(orc=last["orc"], placer=last["placer"],
                                   filler=last["filler"])
                groups.append(current)
                pending_orc, pending_tq1, last_obx_notes = None, None, None
            elif s.id == "TQ1" and (current is None or pending_orc is not None):
                pending_tq1 = s       # ORC TQ1 OBR (OML_O21 timing group)
            elif current is None:
                continue
            elif s.id == "TQ1" and current["tq1"] is None:
                current["tq1"] = s
            elif s.id == "SPM" and current["spm"] is None:
                current["spm"] = s
            elif s.id == "OBX":
                last_obx_notes = []
                current["obx"].append((s, last_obx_notes))
            elif s.id == "NTE":
                note = "\n".join(
                    "^".join(c[0] if c else "" for c in rep).rstrip("^") for rep in s.reps(3))
                if note:
                    (last_obx_notes if last_obx_notes is not None else current["notes"]).append(
                        note)
        out: list[I.InboundOrder] = []
        merged: dict[str, int] = {}
        for g in groups:
            obr: Segment = g["obr"]
            orc: Segment | None = g["orc"]
            placer, filler = g["placer"], g["filler"]
            if not placer and not filler:
                self.err(obr, 2, I.ERR_REQUIRED_FIELD_MISSING,
                         "no order number: OBR-2 (placer) or OBR-3 (filler) is required")
                continue
            tests = self.tests_of(obr)
            if not tests:
                self.err(obr, 4, I.ERR_REQUIRED_FIELD_MISSING, "OBR-4 (universal service id) "
                         "is empty")
                continue
            control = (orc.get(1) if orc else "") or ("RE" if with_results else "NW")
            requested = self.dtm(orc, 9, orc.get(9)) if orc else None
            presc = (self.prescriber(orc, 12) if orc else None) or self.prescriber(obr, 16)
            notes = list(g["notes"])
            clinical = obr.get(13)
            if clinical:
                notes.insert(0, clinical)
            results = []
            if with_results:
                for obx, obx_notes in g["obx"]:
                    r = self.result(obx, obx_notes)
                    if r is not None:
                        results.append(r)
            # ORM: the specimen is not at the lab yet; OML (SPM) and ORU: it is.
            spec = (self.specimen(obr, g["spm"], placer or None, filler or None)
                    if with_results or g["spm"] is not None else None)
            key = placer or filler
            req_data = {"priority": self.priority(orc, obr, g["tq1"]).value,
                        "placer_number": placer[:64] or None,
                        "filler_number": filler[:64] or None,
                        "clinical_notes": "\n".join(notes)[:4000] or None,
                        "prescriber": presc,
                        "requested_at": requested}
            reason = (orc.get(16, 2) or orc.get(16, 1)) if orc else ""
            order = I.InboundOrder(Location("OBR", obr.sequence), control.upper(),
                                   placer or None, filler or None, tuple(tests),
                                   _request(req_data), spec, tuple(results), tuple(notes),
                                   Location("ORC", orc.sequence) if orc else None,
                                   reason.strip()[:2000] or None)
            if key in merged:   # several OBRs of one order number: one order, several tests
                prev = out[merged[key]]
                out[merged[key]] = I.InboundOrder(
                    prev.location, prev.control, prev.placer_number, prev.filler_number,
                    prev.tests + order.tests, prev.request, prev.specimen or order.specimen,
                    prev.results + order.results, prev.notes + order.notes, prev.orc,
                    prev.control_reason or order.control_reason)
            else:
                merged[key] = len(out)
                out.append(order)
        return out


def _numbers(orc: Segment | None, obr: Segment) -> dict[str, str]:
    """The group's placer and filler numbers: its own ORC-2/ORC-3, else OBR-2/OBR-3."""
    return {"placer": (orc.get(2) if orc else "") or obr.get(2),
            "filler": (orc.get(3) if orc else "") or obr.get(3)}


def _request(data: dict[str, Any]) -> ServiceRequest | None:
    """The order part that does not depend on test codes (resolved against the catalogue
    by the service). Tests are filled in by the service."""
    clean = {k: v for k, v in data.items() if v is not None}
    clean["tests"] = ["718-7"]  # placeholder to satisfy parsing; replaced by the service
    try:
        req = ServiceRequest.parse(clean)
    except InvalidRecord:
        clean.pop("prescriber", None)
        try:
            req = ServiceRequest.parse(clean)
        except InvalidRecord:
            return None
    return ServiceRequest((), req.priority, req.prescriber, req.clinical_notes,
                          req.placer_number, req.filler_number, req.requested_at)


def header(msg: Message) -> tuple[str, str, str, str, str]:
    """(type, trigger, control id, sending app^facility, version) — checked."""
    msh = msg.msh
    mtype, trigger = msh.get(9, 1).upper(), msh.get(9, 2).upper()
    control = msh.get(10).strip()
    version = msh.get(12, 1).strip()
    sending = f"{msh.get(3)}^{msh.get(4)}"
    if not mtype:
        raise Rejected(MessageError(Location("MSH", 1, 9), I.ERR_REQUIRED_FIELD_MISSING,
                                    "MSH-9 (message type) is empty"))
    if not control:
        raise Rejected(MessageError(Location("MSH", 1, 10), I.ERR_REQUIRED_FIELD_MISSING,
                                    "MSH-10 (message control id) is empty"))
    if len(control) > 199:
        raise Rejected(MessageError(Location("MSH", 1, 10), I.ERR_DATA_TYPE,
                                    "MSH-10 (message control id) is too long"))
    if (mtype, trigger) not in SUPPORTED:
        code = I.ERR_UNSUPPORTED_MESSAGE_TYPE if mtype not in {t for t, _ in SUPPORTED} \
            else I.ERR_UNSUPPORTED_EVENT
        raise Rejected(MessageError(Location("MSH", 1, 9), code,
                                    f"message type {mtype}^{trigger} is not supported "
                                    "(ADT^A04/A08/A40, ORM^O01, OML^O21, ORU^R01)"))
    if version and version not in VERSIONS:
        raise Rejected(MessageError(Location("MSH", 1, 12), I.ERR_UNSUPPORTED_VERSION,
                                    f"HL7 version {version} is not supported (2.3 to 2.8)"))
    pid = msh.get(11, 1).upper()
    if pid in NOT_PRODUCTION:
        # Stored, a training or debugging message would be a real patient's result.
        raise Rejected(MessageError(Location("MSH", 1, 11), I.ERR_UNSUPPORTED_PROCESSING_ID,
                                    f"processing id {pid} ({NOT_PRODUCTION[pid]}): labvault "
                                    "stores production messages (P) only; send training and "
                                    "test messages to a test installation"))
    if pid and pid != "P":
        raise Rejected(MessageError(Location("MSH", 1, 11), I.ERR_UNSUPPORTED_PROCESSING_ID,
                                    f"processing id {pid} is not P (production)"))
    return mtype, trigger, control, sending, version


def to_inbound(msg: Message, tz: tzinfo = DEFAULT_TZ) -> I.InboundMessage:
    """Map a parsed message; raises ``Rejected`` (AR) or ``ContentError`` (AE)."""
    mtype, trigger, control, sending, version = header(msg)
    m = _Mapper(msg, tz)
    body = list(msg.segments[1:])
    pid = next((s for s in body if s.id == "PID"), None)
    merging = mtype == "ADT" and trigger in MERGE_TRIGGERS
    patient = (m.patient(pid, with_record=mtype != "ORU" and not merging)
               if pid is not None else None)
    if patient is None:
        m.err("PID", None, I.ERR_SEGMENT_SEQUENCE, f"{mtype}^{trigger} needs a PID segment")
    merged: I.InboundPatient | None = None
    if merging:
        mrg = next((s for s in body if s.id == "MRG"), None)
        if mrg is None:
            m.err("MRG", None, I.ERR_SEGMENT_SEQUENCE,
                  f"{mtype}^{trigger} needs an MRG segment (MRG-1: the duplicate's identifiers)")
        else:
            merged = m.merged(mrg)
    orders: list[I.InboundOrder] = []
    if mtype in ("ORM", "OML", "ORU"):
        orders = m.orders(body, with_results=mtype == "ORU")
        if not orders and not m.errors:
            m.err("OBR", None, I.ERR_SEGMENT_SEQUENCE, f"{mtype}^{trigger} needs an OBR segment")
    if m.errors:
        raise I.ContentError(m.errors)
    return I.InboundMessage(mtype, trigger, control, sending, version, patient, tuple(orders),
                            merged)
