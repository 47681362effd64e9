"""The laboratory workflow: orders, specimens, results, reports (pure; no I/O).

FHIR names are used for the four records (ServiceRequest, Specimen, Observation,
DiagnosticReport) because the FHIR door projects them one to one.

Workflow of an order (one order = one DiagnosticReport)::

    registered ──receive──▶ received ──enter results──▶ preliminary
        │                      │                           │  ▲ (more results)
        │                      │                           ▼  │
        │                      │                technically-validated
        │                      │                           │ (biologist only)
        │                      │                           ▼
        │                      │                         final ──publish──▶ published
        │                      │                                               │ amend
        ▼                      ▼                                               ▼
    cancelled (reason) / rejected (reason from REJECTION_REASONS)           amended ⟲ amend
    (also from preliminary; from technically-validated: cancelled, by a biologist only)

Rules: only a biologist validates biologically (``BIOLOGIST_ROLE``); validation records
who and when; after publication a result is never overwritten — an amendment keeps
the previous value in the observation's history with who, when and why.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from stdnum import luhn

from labvault.domain import validation as v
from labvault.errors import AccessDenied, Conflict, InvalidField, InvalidRecord

BIOLOGIST_ROLE = "biologist"            # médecin/pharmacien biologiste: signs results
TECHNICAL_ROLES = frozenset({"technician", BIOLOGIST_ROLE})


class Priority(StrEnum):
    """FHIR ServiceRequest.priority subset; HL7 v2 OBR-27/TQ1-9: R, A (→ urgent), S."""

    ROUTINE = "routine"
    URGENT = "urgent"
    STAT = "stat"


class OrderStatus(StrEnum):
    REGISTERED = "registered"
    RECEIVED = "received"
    PRELIMINARY = "preliminary"
    TECHNICALLY_VALIDATED = "technically-validated"
    FINAL = "final"                      # biologically validated
    PUBLISHED = "published"
    AMENDED = "amended"                  # corrected after publication (still published)
    REJECTED = "rejected"
    CANCELLED = "cancelled"


TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.REGISTERED: frozenset({OrderStatus.RECEIVED, OrderStatus.REJECTED,
                                       OrderStatus.CANCELLED}),
    OrderStatus.RECEIVED: frozenset({OrderStatus.RECEIVED, OrderStatus.PRELIMINARY,
                                     OrderStatus.REJECTED, OrderStatus.CANCELLED}),
    OrderStatus.PRELIMINARY: frozenset({OrderStatus.PRELIMINARY,
                                        OrderStatus.TECHNICALLY_VALIDATED,
                                        OrderStatus.REJECTED, OrderStatus.CANCELLED}),
    # -> CANCELLED: a biologist only (check_cancel)
    OrderStatus.TECHNICALLY_VALIDATED: frozenset({OrderStatus.FINAL, OrderStatus.PRELIMINARY,
                                                  OrderStatus.CANCELLED}),
    OrderStatus.FINAL: frozenset({OrderStatus.PUBLISHED}),
    OrderStatus.PUBLISHED: frozenset({OrderStatus.AMENDED}),
    OrderStatus.AMENDED: frozenset({OrderStatus.AMENDED}),
    OrderStatus.REJECTED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
}

# FHIR status of the DiagnosticReport / Observations for each order state.
REPORT_STATUS: Mapping[OrderStatus, str] = {
    OrderStatus.REGISTERED: "registered", OrderStatus.RECEIVED: "registered",
    OrderStatus.PRELIMINARY: "preliminary", OrderStatus.TECHNICALLY_VALIDATED: "preliminary",
    OrderStatus.FINAL: "final", OrderStatus.PUBLISHED: "final", OrderStatus.AMENDED: "amended",
    OrderStatus.REJECTED: "cancelled", OrderStatus.CANCELLED: "cancelled",
}


class InvalidTransition(Conflict):
    code = "invalid-transition"


def check_transition(current: OrderStatus, target: OrderStatus) -> None:
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (terminal state)"
        raise InvalidTransition(f"an order that is {current} cannot become {target}",
                                f"allowed next states: {allowed}")


# Cancelling withdraws an order and its results. Once the results are technically
# validated, that is a decision about verified results -- the biologist's, as an amendment
# is -- not the reception's or the placer's. Not forbidden outright: a duplicate or
# wrong-patient order found at that point must still be withdrawable, and the only way
# round would be re-entering a result to send it back to preliminary, hiding the decision.
CANCELLED_BY_BIOLOGIST_ONLY = frozenset({OrderStatus.TECHNICALLY_VALIDATED})


def check_cancel(current: OrderStatus, roles: frozenset[str]) -> None:
    """May an actor with ``roles`` cancel an order that is ``current``?"""
    check_transition(current, OrderStatus.CANCELLED)
    if current in CANCELLED_BY_BIOLOGIST_ONLY and BIOLOGIST_ROLE not in roles:
        raise AccessDenied(f"an order that is {current} may be cancelled by a biologist only "
                           "(its results are technically validated)",
                           "ask a biologist of the laboratory to cancel it, with the reason")


# Reasons a specimen/order is rejected (non-conformity list of the pre-analytical phase).
REJECTION_REASONS: Mapping[str, str] = {
    "hemolysed": "specimen hemolysed",
    "clotted": "specimen clotted",
    "insufficient-volume": "insufficient volume",
    "wrong-container": "wrong tube or container",
    "unlabelled": "specimen not labelled",
    "identity-mismatch": "identity on specimen and order do not match",
    "transport-delay": "delay or temperature out of limits during transport",
    "leaked": "container broken or leaked",
    "no-prescription": "no valid prescription",
}

# HL7 table 0487 (specimen type) subset, also used as FHIR Specimen.type code.
SPECIMEN_TYPES: Mapping[str, str] = {
    "BLD": "whole blood", "SER": "serum", "PLAS": "plasma", "UR": "urine",
    "CSF": "cerebrospinal fluid", "STL": "stool", "SAL": "saliva", "SWAB": "swab",
    "BLDA": "arterial blood", "BLDV": "venous blood", "BLDCAP": "capillary blood",
}


class Flag(StrEnum):
    """Interpretation (HL7 table 0078 / FHIR v3-ObservationInterpretation)."""

    NORMAL = "N"
    LOW = "L"
    HIGH = "H"
    CRITICAL_LOW = "LL"
    CRITICAL_HIGH = "HH"
    ABNORMAL = "A"
    # A value with a comparator ("<10") whose interval straddles a limit: it may be normal
    # or not, so it is never called normal (HL7 0078 / v3 ObservationInterpretation IND).
    INDETERMINATE = "IND"

    @property
    def is_panic(self) -> bool:
        return self in (Flag.CRITICAL_LOW, Flag.CRITICAL_HIGH)


class ValueKind(StrEnum):
    NUMERIC = "numeric"
    CODED = "coded"
    TEXT = "text"


# -- field checks -------------------------------------------------------------------------
_LOINC = re.compile(r"\d{1,7}-\d")
_UCUM = re.compile(r"[!-~]{1,40}")


def loinc(value: object, field_: str = "code") -> str:
    """LOINC code: 1-7 digits, hyphen, mod-10 check digit (the Luhn algorithm)."""
    if not isinstance(value, str) or not _LOINC.fullmatch(value.strip()):
        raise InvalidField(field_, "must be a LOINC code (digits-checkdigit)", "e.g. 2345-7")
    code = value.strip()
    if not luhn.is_valid(code.replace("-", "")):
        raise InvalidField(field_, "LOINC check digit does not match", "check the code")
    return code


def ucum(value: object, field_: str = "unit") -> str:
    """UCUM unit, case-sensitive form: printable ASCII without spaces, balanced brackets."""
    if isinstance(value, str):
        # The micro sign (or Greek mu) is UCUM's print symbol for the prefix whose code is
        # u: French analysers print µmol/l. It has no other meaning in a unit, so it is read
        # as u (umol/l is then the catalogue's umol/L, ``same_unit``), never refused.
        value = value.replace("\u00b5", "u").replace("\u03bc", "u")
    if not isinstance(value, str) or not _UCUM.fullmatch(value.strip()):
        raise InvalidField(field_, "must be a UCUM unit", "e.g. mmol/L, g/dL, 10*9/L, %")
    u = value.strip()
    depth = 0
    for c in u:
        depth += {"[": 1, "]": -1, "(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            break
    if depth != 0:
        raise InvalidField(field_, "has unbalanced brackets", "e.g. m[IU]/L")
    return u


# UCUM's litre has two symbols, ``l`` and ``L`` (the one atom spelt either way: analysers
# send mmol/l, g/l, 10*9/l, mg/dl). Every other symbol is case-sensitive -- m is milli, M
# mega -- so nothing else is folded. A litre term: an optional prefix then l/L, between
# term boundaries (start, ``.``, ``/``, brackets, an exponent); ``[...]`` and ``{...}`` are
# matched first so that nothing inside them is taken for a litre.
_LITRE = re.compile(r"(\[[^\]]*\]|\{[^}]*\})"
                    r"|(?<![^./(])(da|[YZEPTGMkhdcmunpfazy])?[lL](?![^./)\d+-])")


def _litre_as_l(unit: str) -> str:
    return _LITRE.sub(lambda m: m.group(1) or (m.group(2) or "") + "L", unit)


def same_unit(sent: str, catalogue: str) -> bool:
    """Whether a result's unit is the catalogue's: equal, case-sensitive, except the litre
    atom (``mmol/l`` is ``mmol/L``, ``mg/dl`` is ``mg/dL``; ``Mmol/L`` is not ``mmol/L``)."""
    return sent == catalogue or _litre_as_l(sent) == _litre_as_l(catalogue)


def aware(value: object, field_: str) -> datetime:
    """A timestamp with a time zone (naive ones are taken as UTC)."""
    if isinstance(value, datetime):
        d = value
    elif isinstance(value, str):
        try:
            d = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidField(field_, "must be an ISO 8601 date-time",
                               "e.g. 2026-03-01T08:30:00+01:00") from None
    else:
        raise InvalidField(field_, "must be an ISO 8601 date-time", "e.g. 2026-03-01T08:30:00+01:00")
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    if d.year < 1900 or d.year > 2200:
        raise InvalidField(field_, "is out of range", "check the year")
    return d


def _collect(errors: list[InvalidField], fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except InvalidField as exc:
        errors.append(exc)
        return None


def _unknown(data: Mapping[str, Any], allowed: frozenset[str], errors: list[InvalidField],
             prefix: str = "") -> None:
    for k in sorted(set(data) - allowed):
        errors.append(InvalidField(f"{prefix}{k}", "is not a known field",
                                   "allowed: " + ", ".join(sorted(allowed))))


# -- records --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OrderPrescriber:
    name: str
    rpps: str | None = None   # RPPS: national registry number of health professionals


@dataclass(frozen=True, slots=True)
class ServiceRequest:
    """An order: who prescribed which tests, how urgently, with which clinical notes."""

    tests: tuple[str, ...]                       # LOINC codes requested
    priority: Priority = Priority.ROUTINE
    prescriber: OrderPrescriber | None = None
    clinical_notes: str | None = None
    placer_number: str | None = None             # ORC-2/OBR-2: the prescriber's order number
    filler_number: str | None = None             # ORC-3/OBR-3: the laboratory's number
    requested_at: datetime | None = None

    FIELDS = frozenset({"tests", "priority", "prescriber", "clinical_notes", "placer_number",
                        "filler_number", "requested_at"})

    @staticmethod
    def parse(data: object) -> ServiceRequest:
        if isinstance(data, ServiceRequest):
            return data
        if not isinstance(data, Mapping):
            raise InvalidRecord([InvalidField("(order)", "must be an object", "")])
        errors: list[InvalidField] = []
        _unknown(data, ServiceRequest.FIELDS, errors)
        raw_tests = data.get("tests")
        tests: list[str] = []
        if not isinstance(raw_tests, list | tuple) or not raw_tests:
            errors.append(InvalidField("tests", "must be a non-empty list of LOINC codes",
                                       '["718-7", "2345-7"]'))
        else:
            for i, t in enumerate(raw_tests):
                code = _collect(errors, loinc, t, f"tests[{i}]")
                if code and code not in tests:
                    tests.append(code)
        prio_raw = data.get("priority") or "routine"
        try:
            priority = Priority(str(prio_raw).lower())
        except ValueError:
            errors.append(InvalidField("priority", "must be routine, urgent or stat", ""))
            priority = Priority.ROUTINE
        prescriber = None
        raw_p = data.get("prescriber")
        if raw_p is not None:
            if not isinstance(raw_p, Mapping):
                errors.append(InvalidField("prescriber", "must be an object", '{"name", "rpps"}'))
            else:
                _unknown(raw_p, frozenset({"name", "rpps"}), errors, "prescriber.")
                pname = _collect(errors, v.text, raw_p.get("name"), "prescriber.name", 100, True)
                prpps = _collect(errors, v.rpps, raw_p["rpps"]) if raw_p.get("rpps") else None
                if pname:
                    prescriber = OrderPrescriber(pname, prpps)
        notes = _collect(errors, v.text, data.get("clinical_notes"), "clinical_notes", 4000)
        placer = _collect(errors, v.text, data.get("placer_number"), "placer_number", 64)
        filler = _collect(errors, v.text, data.get("filler_number"), "filler_number", 64)
        req = (_collect(errors, aware, data["requested_at"], "requested_at")
               if data.get("requested_at") else None)
        if errors:
            raise InvalidRecord(errors)
        return ServiceRequest(tuple(tests), priority, prescriber, notes, placer, filler, req)

    def as_json(self) -> dict[str, Any]:
        return {"tests": list(self.tests), "priority": self.priority.value,
                "prescriber": ({"name": self.prescriber.name, "rpps": self.prescriber.rpps}
                               if self.prescriber else None),
                "clinical_notes": self.clinical_notes, "placer_number": self.placer_number,
                "filler_number": self.filler_number,
                "requested_at": self.requested_at.isoformat() if self.requested_at else None}


# the characters of a generated accession number: digits and capitals people cannot misread
# (no I, L, O, U: Crockford's base 32)
ACCESSION_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_accession_number(day: date) -> str:
    """A specimen number for a tube labelled at the desk: ``A`` + the day (YYMMDD) + 5
    random characters (``A260301-7K2QX``: 32⁵ per day, a repeat improbable), short enough
    to write on a tube by hand."""
    tail = "".join(secrets.choice(ACCESSION_ALPHABET) for _ in range(5))
    return f"A{day:%y%m%d}-{tail}"


@dataclass(frozen=True, slots=True)
class Specimen:
    type: str                                    # SPECIMEN_TYPES code
    collected_at: datetime
    accession_number: str                        # the laboratory's specimen number (barcode)

    FIELDS = frozenset({"type", "collected_at", "accession_number"})

    @staticmethod
    def parse(data: object) -> Specimen:
        if isinstance(data, Specimen):
            return data
        if not isinstance(data, Mapping):
            raise InvalidRecord([InvalidField("(specimen)", "must be an object", "")])
        errors: list[InvalidField] = []
        _unknown(data, Specimen.FIELDS, errors)
        stype = str(data.get("type") or "").strip().upper()
        if stype not in SPECIMEN_TYPES:
            errors.append(InvalidField("type", "is not a known specimen type",
                                       "one of " + ", ".join(SPECIMEN_TYPES)))
        collected = _collect(errors, aware, data.get("collected_at"), "collected_at")
        acc = _collect(errors, v.text, data.get("accession_number"), "accession_number", 64, True)
        if errors:
            raise InvalidRecord(errors)
        return Specimen(stype, collected, acc)

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type, "collected_at": self.collected_at.isoformat(),
                "accession_number": self.accession_number}


@dataclass(frozen=True, slots=True)
class CodedValue:
    code: str
    display: str | None = None
    system: str | None = None


@dataclass(frozen=True, slots=True)
class ResultInput:
    """One result as entered by a technician or sent by an analyzer (before interpretation)."""

    code: str                                    # LOINC
    kind: ValueKind
    numeric: float | None = None
    coded: CodedValue | None = None
    text: str | None = None
    unit: str | None = None
    comparator: str | None = None                # <, <=, >, >= ("<0.5")
    comment: str | None = None
    observed_at: datetime | None = None
    local_code: str | None = None                # the analyzer's code, when it was mapped

    FIELDS = frozenset({"code", "value", "unit", "comment", "observed_at", "kind", "local_code"})

    @staticmethod
    def parse(data: object, where: str = "") -> ResultInput:
        """``{"code": "2345-7", "value": 5.4, "unit": "mmol/L"}``; value a number (numeric),
        ``{"code":..,"display":..,"system":..}`` (coded) or a string (text, or numeric
        with an optional comparator like ``"<0.5"`` when it reads as one)."""
        if isinstance(data, ResultInput):
            return data
        if not isinstance(data, Mapping):
            raise InvalidRecord([InvalidField(f"{where}(result)", "must be an object", "")])
        errors: list[InvalidField] = []
        _unknown(data, ResultInput.FIELDS, errors, where)
        code = _collect(errors, loinc, data.get("code"), f"{where}code")
        raw = data.get("value")
        unit = _collect(errors, ucum, data["unit"], f"{where}unit") if data.get("unit") else None
        comment = _collect(errors, v.text, data.get("comment"), f"{where}comment", 4000)
        observed = (_collect(errors, aware, data["observed_at"], f"{where}observed_at")
                    if data.get("observed_at") else None)
        local = _collect(errors, v.text, data.get("local_code"), f"{where}local_code", 64)
        forced = data.get("kind")
        kind = ValueKind.TEXT
        numeric: float | None = None
        coded: CodedValue | None = None
        text: str | None = None
        comparator: str | None = None
        if isinstance(raw, bool) or raw is None:
            errors.append(InvalidField(f"{where}value", "is required (number, code or text)", ""))
        elif isinstance(raw, int | float):
            kind, numeric = ValueKind.NUMERIC, float(raw)
        elif isinstance(raw, Mapping):
            c = raw.get("code")
            if not isinstance(c, str) or not c.strip() or len(c) > 64:
                errors.append(InvalidField(f"{where}value.code", "must be a code", ""))
            else:
                kind = ValueKind.CODED
                coded = CodedValue(c.strip(), _collect(errors, v.text, raw.get("display"),
                                                        f"{where}value.display", 200),
                                   _collect(errors, v.text, raw.get("system"),
                                            f"{where}value.system", 200))
        elif isinstance(raw, str):
            parsed = parse_numeric(raw) if forced != ValueKind.TEXT else None
            if parsed is not None:
                kind, (comparator, numeric) = ValueKind.NUMERIC, parsed
            else:
                kind = ValueKind.TEXT
                text = _collect(errors, v.text, raw, f"{where}value", 4000, True)
        else:
            errors.append(InvalidField(f"{where}value", "must be a number, a code or text", ""))
        if numeric is not None and not math.isfinite(numeric):
            errors.append(InvalidField(f"{where}value", "must be a finite number", ""))
        if errors:
            raise InvalidRecord(errors)
        assert code is not None
        return ResultInput(code, kind, numeric, coded, text, unit, comparator, comment, observed,
                           local)


_NUM = re.compile(r"\s*(<=|>=|<|>)?\s*([+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?)\s*")


def parse_numeric(raw: str) -> tuple[str | None, float] | None:
    """'5.4' -> (None, 5.4); '<0,5' -> ('<', 0.5); anything else -> None."""
    m = _NUM.fullmatch(raw)
    if not m:
        return None
    try:
        value = float(m.group(2).replace(",", "."))
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return m.group(1), value


# -- reference ranges and interpretation -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class RangeRule:
    sex: str | None             # F, M or None (any)
    age_min: float              # years, inclusive
    age_max: float | None       # years, exclusive; None = no limit
    low: float | None
    high: float | None
    text: str | None = None

    def matches(self, sex: str | None, age: float | None) -> bool:
        if self.sex is not None and self.sex != sex:
            return False
        if age is None:
            return self.age_min == 0 and self.age_max is None
        return self.age_min <= age and (self.age_max is None or age < self.age_max)

    def as_json(self) -> dict[str, Any]:
        """As in the catalogue file (``Catalogue.parse`` reads it back)."""
        return {"sex": self.sex, "age_min": self.age_min, "age_max": self.age_max,
                "low": self.low, "high": self.high, "text": self.text}

    def band(self) -> str:
        """Whom the range is for: "F, 15 y and over", "any sex, 2 to 12 y"."""
        who = self.sex or "any sex"
        if self.age_max is not None:
            return f"{who}, {self.age_min:g} to {self.age_max:g} y"
        return f"{who}, {self.age_min:g} y and over" if self.age_min else f"{who}, all ages"

    def display(self, unit: str | None) -> str:
        if self.text:
            return self.text
        u = f" {unit}" if unit else ""
        if self.low is not None and self.high is not None:
            return f"{self.low:g}-{self.high:g}{u}"
        if self.low is not None:
            return f">={self.low:g}{u}"
        if self.high is not None:
            return f"<={self.high:g}{u}"
        return ""


LABEL_MAX = 80       # a French test name fits one line of a report's results table
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def french_label(value: object, field_: str = "label", test: object = None) -> str | None:
    """A test's French name as a French report prints it ("Hémoglobine glyquée (HbA1c)"):
    optional (None: absent), else non-blank text on one line, at most ``LABEL_MAX``
    characters. ``test``: the test's code, named in the error."""
    if value is None:
        return None
    of = f" (test {str(test).strip()})" if isinstance(test, str) and test.strip() else ""
    example = 'e.g. "label": "Hémoglobine"'
    if not isinstance(value, str):
        raise InvalidField(field_, f"must be text, the test's French name{of}", example)
    text = value.strip()
    if not text:
        raise InvalidField(field_, f"is empty{of}", f"give the test's French name ({example}) "
                           "or leave the key out (the LOINC display is shown then)")
    if _CONTROL.search(text):
        raise InvalidField(field_, f"must be one line without control characters{of}", example)
    if len(text) > LABEL_MAX:
        raise InvalidField(field_, f"is longer than {LABEL_MAX} characters ({len(text)}){of}",
                           "shorten it: it is the name printed on one line of the report")
    return text


def readable_name(label: str | None, display: str) -> str:
    """The name a person reads for a test -- on the portal, the PDF report, the console,
    the patient's data download: the laboratory's French label, else the LOINC display
    (a laboratory catalogue without labels, a result stored before labels existed). The
    one place that decides it: interoperability (FHIR ``coding.display``, HL7) keeps the
    LOINC display."""
    return label or display


@dataclass(frozen=True, slots=True)
class DeltaLimit:
    """How far a result may move from the patient's previous validated result of the same
    test before a biologist looks at it (the delta check, ``domain/delta.py``): by more
    than ``absolute`` (in the catalogue's unit) or more than ``percent`` of the previous
    value -- either limit given is enough -- compared only with a previous result of the
    last ``days`` days. At least one limit; both may be given. A coded test has
    ``identical`` instead: any other code than the previous result's is held (a blood
    group never changes: a different one is a wrong tube or a wrong patient)."""

    absolute: float | None
    percent: float | None
    days: int
    identical: bool = False

    def as_json(self) -> dict[str, Any]:
        """As in the catalogue file (only the limits given: it loads back as it is)."""
        return {**({"absolute": self.absolute} if self.absolute is not None else {}),
                **({"percent": self.percent} if self.percent is not None else {}),
                **({"identical": True} if self.identical else {}),
                "days": self.days}


DELTA_FIELDS = frozenset({"absolute", "percent", "identical", "days"})
DELTA_MAX_DAYS = 366       # a delta check compares recent results; a year is plenty


def _parse_delta(raw: object, where: str, kind: ValueKind, code: object,
                 errors: list[InvalidField]) -> DeltaLimit | None:
    """A test's ``delta`` (``where`` = ``tests[i].delta``), or None (absent, or its
    problems added to ``errors``, each naming the test)."""
    if raw is None:
        return None
    of = f" (test {code.strip()})" if isinstance(code, str) and code.strip() else ""
    example = ('"delta": {"identical": true, "days": 366}' if kind == ValueKind.CODED
               else '"delta": {"absolute": 1.0, "percent": 20, "days": 7}')
    if not isinstance(raw, Mapping):
        errors.append(InvalidField(where, f"must be an object{of}", example))
        return None
    before = len(errors)
    _unknown(raw, DELTA_FIELDS, errors, where + ".")
    identical = raw.get("identical")
    if identical is not None and identical is not True:
        errors.append(InvalidField(f"{where}.identical", f"must be true when given{of}",
                                   example))
    if kind == ValueKind.TEXT:
        errors.append(InvalidField(where, f"applies to numeric and coded tests only{of}",
                                   "a text result has no change to measure: leave the key "
                                   "out"))
    elif kind == ValueKind.CODED:
        if raw.get("absolute") is not None or raw.get("percent") is not None:
            errors.append(InvalidField(where, f"absolute and percent apply to numeric tests "
                                       f"only{of}", example))
        elif identical is not True:
            errors.append(InvalidField(where, f"a coded test's delta check is identical: "
                                       f"true{of}", example))
    elif identical is not None:
        errors.append(InvalidField(f"{where}.identical", f"applies to coded tests only{of}",
                                   "a number is checked with absolute and/or percent"))
    limits: dict[str, float | None] = {}
    for key in ("absolute", "percent"):
        x = raw.get(key)
        if x is not None and (isinstance(x, bool) or not isinstance(x, int | float)
                              or not math.isfinite(x) or x <= 0):
            errors.append(InvalidField(f"{where}.{key}", f"must be a number above 0{of}",
                                       example))
            x = None
        limits[key] = float(x) if x is not None else None
    if (kind == ValueKind.NUMERIC and raw.get("absolute") is None
            and raw.get("percent") is None):
        errors.append(InvalidField(where, f"gives neither absolute nor percent{of}",
                                   "give the change that needs a look: " + example))
    days = raw.get("days")
    if (isinstance(days, bool) or not isinstance(days, int)
            or not 1 <= days <= DELTA_MAX_DAYS):
        errors.append(InvalidField(f"{where}.days", f"must be a whole number of days from 1 "
                                   f"to {DELTA_MAX_DAYS}{of}", "the window within which "
                                   "the previous result is compared, e.g. 7"))
    if len(errors) > before:
        return None
    assert isinstance(days, int)
    return DeltaLimit(limits["absolute"], limits["percent"], days, identical is True)


# Where an age band without an upper bound ends when bands are compared by width: past
# any lifespan on record (122 y), so that "18 y and over" is narrower than "0-120 y"
OPEN_BAND_END = 130.0


@dataclass(frozen=True, slots=True)
class CatalogueTest:
    code: str                               # LOINC
    display: str                            # LOINC long common name (English)
    kind: ValueKind
    unit: str | None
    ranges: tuple[RangeRule, ...] = ()
    panic_low: float | None = None
    panic_high: float | None = None
    normal_codes: tuple[str, ...] = ()      # coded tests: codes that are not abnormal
    local_codes: tuple[str, ...] = ()       # analyzer codes that mean this test
    specimen: str | None = None
    label: str | None = None                # French name on reports ("Hémoglobine")
    delta: DeltaLimit | None = None         # the delta check's limit (None: not checked)

    @property
    def name(self) -> str:
        """What people read for this test (``readable_name``)."""
        return readable_name(self.label, self.display)

    def as_json(self) -> dict[str, Any]:
        """As in the catalogue file: what was loaded, for a biologist to check (``label``
        only when the catalogue gives one: it loads back as it is)."""
        return {"code": self.code, "display": self.display,
                **({"label": self.label} if self.label is not None else {}),
                "kind": self.kind.value,
                "unit": self.unit, "ranges": [r.as_json() for r in self.ranges],
                "panic_low": self.panic_low, "panic_high": self.panic_high,
                "normal_codes": list(self.normal_codes), "local_codes": list(self.local_codes),
                "specimen": self.specimen,
                **({"delta": self.delta.as_json()} if self.delta is not None else {})}

    def range_for(self, sex: str | None, age: float | None) -> RangeRule | None:
        """Most specific rule first: the narrowest matching age band, then sex-specific
        before any-sex; of rules alike in both, the first listed. Age before sex: with
        "M, 0-120 y" and "any sex, 0-17 y", a boy of 10 gets the children's range, not
        the adult men's. An open band ("18 y and over") reaches OPEN_BAND_END: it is
        narrower than one starting earlier ("M, 18 y and over" wins over "any sex, 0-120
        y" for a man of 30) and wider than a closed band from the same age."""
        candidates = [r for r in self.ranges if r.matches(sex, age)]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (
            (OPEN_BAND_END if r.age_max is None else r.age_max) - r.age_min, r.sex is None))

    def interpret(self, value: ResultInput, sex: str | None, age: float | None
                  ) -> tuple[Flag | None, RangeRule | None]:
        rng = self.range_for(sex, age)
        if value.kind == ValueKind.NUMERIC and value.numeric is not None:
            return self._numeric_flag(ValueInterval.of(value.numeric, value.comparator), rng), rng
        if value.kind == ValueKind.CODED and value.coded is not None and self.normal_codes:
            return (Flag.NORMAL if value.coded.code in self.normal_codes else Flag.ABNORMAL), rng
        return None, rng

    def _numeric_flag(self, values: ValueInterval, rng: RangeRule | None) -> Flag | None:
        """A flag only when every value the result may stand for gets it: "<10" against
        a range <=5 could be 4 or 9, so it is indeterminate, never normal."""
        if self.panic_low is not None and values.below(self.panic_low):
            return Flag.CRITICAL_LOW
        if self.panic_high is not None and values.above(self.panic_high):
            return Flag.CRITICAL_HIGH
        if not ((self.panic_low is None or values.at_least(self.panic_low))
                and (self.panic_high is None or values.at_most(self.panic_high))):
            return Flag.INDETERMINATE           # may or may not be a panic value
        if rng is None:
            return None                         # no range: only the panic limits speak
        if rng.low is not None and values.below(rng.low):
            return Flag.LOW
        if rng.high is not None and values.above(rng.high):
            return Flag.HIGH
        if ((rng.low is None or values.at_least(rng.low))
                and (rng.high is None or values.at_most(rng.high))):
            return Flag.NORMAL
        return Flag.INDETERMINATE


@dataclass(frozen=True, slots=True)
class ValueInterval:
    """The values a numeric result stands for: "5.4" is [5.4, 5.4], "<10" is (-inf, 10),
    ">=2" is [2, +inf). ``<=``/``>=`` are ``<``/``>`` plus the bound itself."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    @staticmethod
    def of(value: float, comparator: str | None) -> ValueInterval:
        if comparator in ("<", "<="):
            return ValueInterval(-math.inf, value, True, comparator == "<")
        if comparator in (">", ">="):
            return ValueInterval(value, math.inf, comparator == ">", True)
        return ValueInterval(value, value)

    def below(self, limit: float) -> bool:
        """Every value is < limit."""
        return self.high < limit or (self.high == limit and self.high_open)

    def above(self, limit: float) -> bool:
        """Every value is > limit."""
        return self.low > limit or (self.low == limit and self.low_open)

    def at_least(self, limit: float) -> bool:
        """Every value is >= limit."""
        return self.low >= limit

    def at_most(self, limit: float) -> bool:
        """Every value is <= limit."""
        return self.high <= limit


@dataclass(frozen=True, slots=True)
class Catalogue:
    version: str
    tests: Mapping[str, CatalogueTest]
    by_local: Mapping[str, str] = field(default_factory=dict)   # local code -> LOINC

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "tests": [t.as_json() for t in self.tests.values()]}

    def get(self, code: str) -> CatalogueTest | None:
        t = self.tests.get(code)
        if t is None and code in self.by_local:
            t = self.tests.get(self.by_local[code])
        return t

    def name_of(self, code: str) -> str:
        """What people read for a requested test (``readable_name``); the code itself
        when this catalogue no longer has it."""
        t = self.get(code)
        return t.name if t is not None else code

    @staticmethod
    def parse(data: object) -> Catalogue:
        """The catalogue JSON (docs/lab.md): ``{"version": ..., "tests": [...]}``. Every
        problem is refused with its path (``tests[0].ranges[1].age_minimum``): a typo or
        an inverted bound would otherwise change which results are called normal."""
        if not isinstance(data, Mapping):
            raise InvalidRecord([InvalidField("(catalogue)", "must be an object", "")])
        errors: list[InvalidField] = []
        version = _collect(errors, v.text, data.get("version"), "version", 40, True)
        raw_tests = data.get("tests")
        if not isinstance(raw_tests, list) or not raw_tests:
            errors.append(InvalidField("tests", "must be a non-empty list", ""))
            raw_tests = []
        tests: dict[str, CatalogueTest] = {}
        by_local: dict[str, str] = {}
        for i, t in enumerate(raw_tests):
            test = _parse_test(t, f"tests[{i}]", errors)
            if test is not None:
                tests[test.code] = test
                by_local.update((lc, test.code) for lc in test.local_codes)
        _no_duplicates(raw_tests, errors)
        if errors:
            raise InvalidRecord(errors)
        assert version is not None
        return Catalogue(version, tests, by_local)


TEST_FIELDS = frozenset({"code", "display", "label", "kind", "unit", "ranges", "panic_low",
                         "panic_high", "normal_codes", "local_codes", "specimen", "delta"})
RANGE_FIELDS = frozenset({"sex", "age_min", "age_max", "low", "high", "text"})


def _no_duplicates(raw_tests: Sequence[object], errors: list[InvalidField]) -> None:
    """A test code, or an analyzer's local code, names one test: a second entry would
    silently replace the first."""
    first: dict[str, str] = {}
    for i, t in enumerate(raw_tests):
        if not isinstance(t, Mapping):
            continue
        raw_locals = t.get("local_codes")
        locals_ = raw_locals if isinstance(raw_locals, list) else []
        named = [(t.get("code"), f"tests[{i}].code"),
                 *((lc, f"tests[{i}].local_codes[{k}]") for k, lc in enumerate(locals_))]
        for key, where in named:
            if not isinstance(key, str) or not key.strip():
                continue
            if key.strip() in first:
                errors.append(InvalidField(where, f"{key.strip()} is already used by "
                                           f"{first[key.strip()]}",
                                           "one entry per test: merge the two"))
            first.setdefault(key.strip(), where)


def _number(data: Mapping[str, Any], key: str, where: str,
            errors: list[InvalidField]) -> float | None:
    x = data.get(key)
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        errors.append(InvalidField(f"{where}.{key}", "must be a number", ""))
        return None
    return float(x)


def _parse_test(t: object, where: str, errors: list[InvalidField]) -> CatalogueTest | None:
    """One test of the catalogue, or None (its problems added to ``errors``)."""
    if not isinstance(t, Mapping):
        errors.append(InvalidField(where, "must be an object", ""))
        return None
    before = len(errors)
    _unknown(t, TEST_FIELDS, errors, where + ".")
    code = _collect(errors, loinc, t.get("code"), where + ".code")
    display = _collect(errors, v.text, t.get("display"), where + ".display", 200, True)
    name = _collect(errors, french_label, t.get("label"), where + ".label", t.get("code"))
    try:
        kind = ValueKind(t.get("kind", "numeric"))
    except ValueError:
        errors.append(InvalidField(where + ".kind", "must be numeric, coded or text", ""))
        return None
    unit = _collect(errors, ucum, t["unit"], where + ".unit") if t.get("unit") else None
    raw_ranges = t.get("ranges") or []
    if not isinstance(raw_ranges, list):
        errors.append(InvalidField(where + ".ranges", "must be a list", ""))
        raw_ranges = []
    ranges = [(j, r) for j, raw in enumerate(raw_ranges)
              if (r := _parse_range(raw, f"{where}.ranges[{j}]", kind, errors)) is not None]
    panic_low = _number(t, "panic_low", where, errors)
    panic_high = _number(t, "panic_high", where, errors)
    _check_panic(panic_low, panic_high, ranges, where, errors)
    normal_codes = _codes(t, "normal_codes", where, errors)
    local_codes = _codes(t, "local_codes", where, errors)
    delta = _parse_delta(t.get("delta"), where + ".delta", kind, t.get("code"), errors)
    if len(errors) > before or code is None or display is None:
        return None
    return CatalogueTest(code, display, kind, unit, tuple(r for _, r in ranges), panic_low,
                         panic_high, normal_codes, local_codes, t.get("specimen"), name, delta)


def _codes(t: Mapping[str, Any], key: str, where: str,
           errors: list[InvalidField]) -> tuple[str, ...]:
    raw = t.get(key) or []
    if not isinstance(raw, list) or not all(
            isinstance(c, str | int) and not isinstance(c, bool) and str(c).strip()
            for c in raw):
        errors.append(InvalidField(f"{where}.{key}", "must be a list of codes", '["HGB"]'))
        return ()
    return tuple(str(c).strip() for c in raw)


def _parse_range(r: object, where: str, kind: ValueKind,
                 errors: list[InvalidField]) -> RangeRule | None:
    """One reference range (``where`` = ``tests[i].ranges[j]``), or None."""
    if not isinstance(r, Mapping):
        errors.append(InvalidField(where, "must be an object", ""))
        return None
    before = len(errors)
    _unknown(r, RANGE_FIELDS, errors, where + ".")
    sex = r.get("sex")
    if sex not in (None, "F", "M"):
        errors.append(InvalidField(where + ".sex", "must be F, M or absent", ""))
    age_min, age_max, low, high = (_number(r, k, where, errors)
                                   for k in ("age_min", "age_max", "low", "high"))
    text = _collect(errors, v.text, r.get("text"), where + ".text", 200)
    if age_min is not None and age_min < 0:
        errors.append(InvalidField(where + ".age_min", "must be 0 or more", "years"))
    if age_max is not None and age_max <= (age_min or 0.0):
        errors.append(InvalidField(where + ".age_min", f"must be below age_max ({age_max:g}); "
                                   f"the band from {age_min or 0:g} to {age_max:g} is empty",
                                   "age_min is inclusive, age_max exclusive, in years"))
    if low is not None and high is not None and low > high:
        errors.append(InvalidField(where + ".low", f"must not be above high ({low:g} > {high:g})",
                                   "swap them or correct the typo"))
    if kind == ValueKind.NUMERIC and low is None and high is None:
        errors.append(InvalidField(where, "gives neither low nor high",
                                   "a range without limits would call every value normal"))
    if len(errors) > before:
        return None
    return RangeRule(sex, age_min or 0.0, age_max, low, high, text)


def _check_panic(panic_low: float | None, panic_high: float | None,
                 ranges: Sequence[tuple[int, RangeRule]], where: str,
                 errors: list[InvalidField]) -> None:
    """Panic limits lie beyond every reference range: a value the range calls normal must
    never raise a panic alert, and the other way round."""
    if panic_low is not None and panic_high is not None and panic_low >= panic_high:
        errors.append(InvalidField(where + ".panic_low", f"must be below panic_high "
                                   f"({panic_low:g} >= {panic_high:g})", "swap them"))
        return
    for j, r in ranges:
        bounds = [b for b in (r.low, r.high) if b is not None]
        if panic_low is not None and any(panic_low > b for b in bounds):
            errors.append(InvalidField(where + ".panic_low", f"{panic_low:g} is inside the "
                                       f"reference range ranges[{j}] ({r.display(None)})",
                                       "a panic limit lies below the range's low limit"))
        if panic_high is not None and any(panic_high < b for b in bounds):
            errors.append(InvalidField(where + ".panic_high", f"{panic_high:g} is inside the "
                                       f"reference range ranges[{j}] ({r.display(None)})",
                                       "a panic limit lies above the range's high limit"))


def birthday(birth_date: date, year: int) -> date:
    """The birthday in ``year``; someone born on 29 February has it on 1 March in other
    years (they have not completed the year on 28 February: the day has not come)."""
    try:
        return birth_date.replace(year=year)
    except ValueError:                      # 29 February in a common year
        return date(year, 3, 1)


def age_years(birth_date: date | None, at: datetime | date) -> float | None:
    """Calendar age: completed years (a whole number from the birthday on, so a band's
    ``age_min`` applies on that very day), plus the part of the current year of life
    already lived, for the bands with a fraction of a year (0.5 = 6 months)."""
    if birth_date is None:
        return None
    d = at.date() if isinstance(at, datetime) else at
    if d <= birth_date:
        return 0.0
    years = d.year - birth_date.year - (1 if d < birthday(birth_date, d.year) else 0)
    last = birthday(birth_date, birth_date.year + years)
    following = birthday(birth_date, birth_date.year + years + 1)
    return years + (d - last).days / (following - last).days


def _require_unit(result: ResultInput, test: CatalogueTest) -> None:
    """A number without its unit is refused, never read in the catalogue's unit: 8.0
    creatinine meant in mg/dL (renal failure) would otherwise be 8 umol/L, "low"."""
    if result.kind == ValueKind.NUMERIC and test.unit and not result.unit:
        raise InvalidField("unit", f"is missing: {test.code} ({test.display}) is reported "
                           f"in {test.unit}", f"send the unit with the value ({test.unit}); "
                           "a value in another unit must be converted first")


@dataclass(frozen=True, slots=True)
class Observation:
    """A result after interpretation, as stored (sealed) and shown."""

    code: str
    display: str
    kind: ValueKind
    numeric: float | None
    coded: CodedValue | None
    text: str | None
    unit: str | None
    comparator: str | None
    reference_range: str | None
    range_low: float | None
    range_high: float | None
    flag: Flag | None
    comment: str | None
    observed_at: datetime | None
    catalogue_version: str
    local_code: str | None = None
    # What the analyser itself said (HL7 OBX-7, OBX-8), as sent: shown to the biologist
    # beside labvault's own range and flag, which are the ones that count.
    analyser_range: str | None = None
    analyser_flag: str | None = None
    # the catalogue's French name when the result was interpreted (None: the catalogue had
    # none, or the result was stored before labels): the report keeps the name it was
    # issued with, like ``display`` and the range
    label: str | None = None

    @property
    def name(self) -> str:
        """What people read for this result's test (``readable_name``)."""
        return readable_name(self.label, self.display)

    @staticmethod
    def interpret(result: ResultInput, test: CatalogueTest, catalogue_version: str,
                  sex: str | None, birth_date: date | None, now: datetime) -> Observation:
        if result.unit and test.unit and not same_unit(result.unit, test.unit):
            raise InvalidField("unit", f"{result.unit} is not the catalogue unit {test.unit} "
                               f"for {test.code}", "convert the value or fix the catalogue")
        if test.kind == ValueKind.NUMERIC and result.kind != ValueKind.NUMERIC:
            raise InvalidField("value", f"{test.code} expects a number", "")
        _require_unit(result, test)
        at = result.observed_at or now
        flag, rng = test.interpret(result, sex, age_years(birth_date, at))
        return Observation(
            result.code if result.code == test.code else test.code, test.display, result.kind,
            result.numeric, result.coded, result.text,
            test.unit if result.unit and test.unit else result.unit,   # the catalogue's spelling
            result.comparator, rng.display(test.unit) if rng else None,
            rng.low if rng else None, rng.high if rng else None, flag, result.comment,
            result.observed_at, catalogue_version, result.local_code, label=test.label)

    def value_display(self) -> str:
        if self.kind == ValueKind.NUMERIC and self.numeric is not None:
            return f"{self.comparator or ''}{self.numeric:g}"
        if self.kind == ValueKind.CODED and self.coded is not None:
            return self.coded.display or self.coded.code
        return self.text or ""

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code, "display": self.display,
            **({"label": self.label} if self.label is not None else {}),
            "kind": self.kind.value,
            "value": (self.numeric if self.kind == ValueKind.NUMERIC else
                      {"code": self.coded.code, "display": self.coded.display,
                       "system": self.coded.system} if self.coded else self.text),
            "unit": self.unit, "comparator": self.comparator,
            "reference_range": self.reference_range, "range_low": self.range_low,
            "range_high": self.range_high, "flag": self.flag.value if self.flag else None,
            "comment": self.comment,
            "observed_at": self.observed_at.isoformat() if self.observed_at else None,
            "catalogue_version": self.catalogue_version, "local_code": self.local_code,
            # only when sent: a result without them is stored as before
            **({"analyser_range": self.analyser_range} if self.analyser_range else {}),
            **({"analyser_flag": self.analyser_flag} if self.analyser_flag else {}),
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Observation:
        kind = ValueKind(d["kind"])
        val = d.get("value")
        coded = (CodedValue(val["code"], val.get("display"), val.get("system"))
                 if kind == ValueKind.CODED and isinstance(val, Mapping) else None)
        return Observation(
            d["code"], d["display"], kind,
            float(val) if kind == ValueKind.NUMERIC and val is not None else None, coded,
            val if kind == ValueKind.TEXT else None, d.get("unit"), d.get("comparator"),
            d.get("reference_range"), d.get("range_low"), d.get("range_high"),
            Flag(d["flag"]) if d.get("flag") else None, d.get("comment"),
            datetime.fromisoformat(d["observed_at"]) if d.get("observed_at") else None,
            d.get("catalogue_version", ""), d.get("local_code"), d.get("analyser_range"),
            d.get("analyser_flag"), d.get("label"))

    def with_analyser(self, reference_range: str | None, flags: str | None) -> Observation:
        """This result with the analyser's own range and flag (OBX-7, OBX-8) as sent,
        stripped and bounded (a range is a few characters; a flag, codes of table 0078)."""
        if not reference_range and not flags:
            return self
        return replace(self, analyser_range=(reference_range or "").strip()[:200] or None,
                       analyser_flag=(flags or "").strip()[:40] or None)

    def analyser_disagrees(self) -> bool:
        """Whether the analyser's flag contradicts labvault's: one calls the value normal and
        the other not, or they point opposite ways (L against H). Flags of other kinds
        (microbiology S/R, deltas U/D...) and a result labvault could not flag say nothing."""
        if not self.analyser_flag or self.flag is None or self.flag == Flag.INDETERMINATE:
            return False
        sent = {c.strip().upper() for c in self.analyser_flag.split("~")}
        if sent & ANALYSER_ABNORMAL:
            return (self.flag == Flag.NORMAL
                    or bool(sent & ANALYSER_LOW and self.flag in (Flag.HIGH, Flag.CRITICAL_HIGH))
                    or bool(sent & ANALYSER_HIGH and self.flag in (Flag.LOW, Flag.CRITICAL_LOW)))
        return "N" in sent and self.flag != Flag.NORMAL


# An analyser's abnormal flags (HL7 table 0078): low, high, and abnormal without direction
# (``<``/``>``: below/above the instrument's scale).
ANALYSER_LOW = frozenset({"L", "LL", "<"})
ANALYSER_HIGH = frozenset({"H", "HH", ">"})
ANALYSER_ABNORMAL = ANALYSER_LOW | ANALYSER_HIGH | {"A", "AA"}


@dataclass(frozen=True, slots=True)
class DiagnosticReport:
    """The report of one order: its results and the biologist's conclusion."""

    order_id: str
    status: str
    observations: Sequence[str]
    conclusion: str | None = None


class ReviewReason(StrEnum):
    """Why a result is left for a biologist's review instead of being validated in bulk
    ("validate all normal"); the words a page shows for them are the door's."""

    PANIC_VALUE = "panic-value"                          # LL, HH
    # The analyser's own flag (OBX-8) contradicts the catalogue's: H where labvault says N,
    # N where it says L, L where it says H -- a wrong range, unit or analyser to look at.
    ANALYSER_DISAGREES = "analyser-disagrees"
    OUTSIDE_REFERENCE_RANGE = "outside-reference-range"  # L, H
    ABNORMAL_CODE = "abnormal-code"                      # A
    INDETERMINATE = "indeterminate"                      # IND: a comparator across a limit
    # Nothing to compare it with: no range for this patient (a sex-specific test and the
    # sex unknown), or a text / coded result without normal codes. Not "outside".
    NO_REFERENCE_RANGE = "no-reference-range"
    NO_RESULTS = "no-results"                            # an order without results


def review_reason(obs: Observation) -> ReviewReason | None:
    """None when the result may be validated in bulk; else why it needs a review."""
    if obs.flag is not None and obs.flag.is_panic:
        return ReviewReason.PANIC_VALUE
    if obs.analyser_disagrees():
        return ReviewReason.ANALYSER_DISAGREES
    if obs.flag == Flag.NORMAL:
        return None
    if obs.flag is None:
        return ReviewReason.NO_REFERENCE_RANGE
    return {Flag.ABNORMAL: ReviewReason.ABNORMAL_CODE,
            Flag.INDETERMINATE: ReviewReason.INDETERMINATE}.get(
                obs.flag, ReviewReason.OUTSIDE_REFERENCE_RANGE)


def review_reasons(observations: Sequence[Observation]) -> list[ReviewReason]:
    """Why an order's results cannot be validated in bulk, most serious first (empty:
    they can)."""
    if not observations:
        return [ReviewReason.NO_RESULTS]
    found = {review_reason(o) for o in observations}
    return [r for r in ReviewReason if r in found]


def is_normal(obs: Observation) -> bool:
    """True when the result may be validated in bulk ("validate all normal")."""
    return review_reason(obs) is None
