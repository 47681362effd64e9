"""A patient as the import format, the REST API and the gate see it.

``PatientRecord.parse`` validates one import line / API body (docs/formats.md) and
collects *every* field error, so a migration report says all that is wrong with a
line at once. ``categories()`` splits the record into the sealed category blobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, TypeVar

from labvault.domain import validation as v
from labvault.domain.categories import Category
from labvault.errors import InvalidField, InvalidRecord, TooManyFormerIds

IMPORT_FIELDS = frozenset({
    "external_id", "birth_name", "used_name", "first_names", "birth_date", "sex",
    "birth_place_insee", "nir", "ins", "address", "phone", "email", "coverage",
    "blood_group", "prescriber", "former_ids",
})
# the category each field of the import shape is sealed in (``PatientRecord.categories``)
FIELD_CATEGORIES: Mapping[str, Category] = {
    **dict.fromkeys(("external_id", "birth_name", "used_name", "first_names", "birth_date",
                     "sex", "birth_place_insee", "nir", "ins", "former_ids"), Category.IDENTITY),
    **dict.fromkeys(("address", "phone", "email"), Category.CONTACT),
    "coverage": Category.COVERAGE,
    **dict.fromkeys(("blood_group", "prescriber"), Category.CLINICAL),
}
assert set(FIELD_CATEGORIES) == IMPORT_FIELDS
ADDRESS_FIELDS = frozenset({"line", "postal_code", "city", "country"})
COVERAGE_FIELDS = frozenset({"amo", "amc", "member_id"})
PRESCRIBER_FIELDS = frozenset({"name", "rpps"})
# Former identifiers: the external ids of duplicates merged into a record (services/
# merge.py), kept so that a system still sending one finds the record kept. Bounded: a
# record that absorbed more duplicates than this has an identity problem for a person.
MAX_FORMER_IDS = 20

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Address:
    line: str
    postal_code: str
    city: str
    country: str = "FR"


@dataclass(frozen=True, slots=True)
class Prescriber:
    name: str
    rpps: str | None  # RPPS: national registry number of health professionals


@dataclass(frozen=True, slots=True)
class PatientRecord:
    birth_name: str
    first_names: tuple[str, ...]
    birth_date: date
    sex: str
    external_id: str | None = None
    used_name: str | None = None
    birth_place_insee: str | None = None   # INSEE code of the birth commune
    nir: str | None = None                 # NIR: social security number
    ins: str | None = None                 # INS: national health identifier
    address: Address | None = None
    phone: str | None = None               # E.164
    email: str | None = None
    amo: str | None = None                 # AMO: mandatory health insurer
    amc: str | None = None                 # AMC: complementary insurer
    member_id: str | None = None
    blood_group: str | None = None
    prescriber: Prescriber | None = None
    # external ids of the duplicates merged into this record: set by a merge only
    # (``with_former_ids``); never the record's own ``external_id``
    former_ids: tuple[str, ...] = ()
    extra_clinical: Mapping[str, Any] = field(default_factory=dict)

    # -- parsing ---------------------------------------------------------------------
    @staticmethod
    def parse(data: object) -> PatientRecord:
        if not isinstance(data, Mapping):
            raise InvalidRecord([InvalidField("(line)", "must be a JSON object",
                                              "one patient object per line")])
        errors: list[InvalidField] = []

        def check(fn: Callable[[], T]) -> T | None:
            try:
                return fn()
            except InvalidField as exc:
                errors.append(exc)
                return None

        unknown = sorted(set(data) - IMPORT_FIELDS)
        for k in unknown:
            errors.append(InvalidField(str(k), "is not a known field",
                                       "allowed: " + ", ".join(sorted(IMPORT_FIELDS))))

        birth_name = check(lambda: v.name(data.get("birth_name"), "birth_name"))
        used_name = check(lambda: v.name(data.get("used_name"), "used_name", required=False))
        firsts = data.get("first_names")
        first_names: tuple[str, ...] = ()
        if isinstance(firsts, str):
            firsts = [firsts]
        if not isinstance(firsts, list) or not firsts:
            errors.append(InvalidField("first_names", "must be a non-empty list of first names",
                                       'e.g. ["Jeanne", "Marie"]'))
        else:
            parsed: list[str] = []
            for i, f in enumerate(firsts):
                try:
                    n = v.name(f, f"first_names[{i}]")
                except InvalidField as exc:
                    errors.append(exc)
                else:
                    if n:
                        parsed.append(n)
            first_names = tuple(parsed)
        bdate = check(lambda: v.birth_date(data.get("birth_date")))
        sex = check(lambda: v.sex(data.get("sex")))
        external_id = check(lambda: v.text(data.get("external_id"), "external_id", 64))
        former_ids = check(lambda: distinct_former_ids(data.get("former_ids"), external_id)) or ()
        insee = (check(lambda: v.insee_commune(data["birth_place_insee"]))
                 if data.get("birth_place_insee") else None)
        nir = (check(lambda: v.nir(data["nir"], "nir", sex, bdate)) if data.get("nir") else None)
        ins = check(lambda: v.ins(data["ins"])) if data.get("ins") else None
        phone = check(lambda: v.phone(data["phone"])) if data.get("phone") else None
        email = check(lambda: v.email(data["email"])) if data.get("email") else None
        blood = check(lambda: v.blood_group(data["blood_group"])) if data.get("blood_group") else None

        address = None
        raw_addr = data.get("address")
        if raw_addr is not None:
            if not isinstance(raw_addr, Mapping):
                errors.append(InvalidField("address", "must be an object",
                                           '{"line", "postal_code", "city", "country"}'))
            else:
                for k in sorted(set(raw_addr) - ADDRESS_FIELDS):
                    errors.append(InvalidField(f"address.{k}", "is not a known field",
                                               "allowed: line, postal_code, city, country"))
                line = check(lambda: v.text(raw_addr.get("line"), "address.line", 200, True))
                city = check(lambda: v.text(raw_addr.get("city"), "address.city", 100, True))
                country = (check(lambda: v.text(raw_addr.get("country"), "address.country", 2))
                           or "FR").upper()
                postal = check(lambda: v.text(raw_addr.get("postal_code"),
                                              "address.postal_code", 10, True))
                if postal and country == "FR" and not (len(postal) == 5 and postal.isdigit()):
                    errors.append(InvalidField("address.postal_code",
                                               "must be 5 digits for a French address",
                                               "e.g. 59000"))
                if line and city and postal:
                    address = Address(line, postal, city, country)

        amo = amc = member_id = None
        raw_cov = data.get("coverage")
        if raw_cov is not None:
            if not isinstance(raw_cov, Mapping):
                errors.append(InvalidField("coverage", "must be an object",
                                           '{"amo", "amc", "member_id"}'))
            else:
                for k in sorted(set(raw_cov) - COVERAGE_FIELDS):
                    errors.append(InvalidField(f"coverage.{k}", "is not a known field",
                                               "allowed: amo, amc, member_id"))
                amo = check(lambda: v.text(raw_cov.get("amo"), "coverage.amo", 100))
                amc = check(lambda: v.text(raw_cov.get("amc"), "coverage.amc", 100))
                member_id = check(lambda: v.text(raw_cov.get("member_id"),
                                                 "coverage.member_id", 40))

        prescriber = None
        raw_p = data.get("prescriber")
        if raw_p is not None:
            if not isinstance(raw_p, Mapping):
                errors.append(InvalidField("prescriber", "must be an object", '{"name", "rpps"}'))
            else:
                for k in sorted(set(raw_p) - PRESCRIBER_FIELDS):
                    errors.append(InvalidField(f"prescriber.{k}", "is not a known field",
                                               "allowed: name, rpps"))
                pname = check(lambda: v.text(raw_p.get("name"), "prescriber.name", 100, True))
                prpps = check(lambda: v.rpps(raw_p["rpps"])) if raw_p.get("rpps") else None
                if pname:
                    prescriber = Prescriber(pname, prpps)

        if errors:
            raise InvalidRecord(errors)
        assert birth_name and bdate and sex and first_names
        return PatientRecord(
            birth_name=birth_name, first_names=first_names, birth_date=bdate, sex=sex,
            external_id=external_id, used_name=used_name, birth_place_insee=insee, nir=nir,
            ins=ins, address=address, phone=phone, email=email, amo=amo, amc=amc,
            member_id=member_id, blood_group=blood, prescriber=prescriber,
            former_ids=former_ids)

    def with_former_ids(self, ids: Iterable[str]) -> PatientRecord:
        """This record with ``ids`` as its former identifiers: duplicates and its own
        ``external_id`` left out, at most ``MAX_FORMER_IDS`` (``TooManyFormerIds``)."""
        return replace(self, former_ids=distinct_former_ids(list(ids), self.external_id))

    def keeping_former_ids(self, stored: Sequence[str],
                           stored_external_id: str | None) -> PatientRecord:
        """This record as a rewrite of a stored one stores it: with the stored record's
        former identifiers (no write door changes them: they are a merge's). When this
        record's ``external_id`` is one of them -- a system still sending a merged
        duplicate's id, applied as the record's id by an HL7 update -- the external id it
        replaces joins them: every id that found the record still finds it."""
        kept = list(stored)
        if (self.external_id and self.external_id in kept and stored_external_id
                and stored_external_id != self.external_id):
            kept.append(stored_external_id)
        return self.with_former_ids(kept)

    # -- categories --------------------------------------------------------------------
    def categories(self) -> dict[Category, dict[str, Any]]:
        """The sealed blobs, one per category. ``None`` fields are left out."""
        def compact(d: dict[str, Any]) -> dict[str, Any]:
            return {k: val for k, val in d.items() if val is not None}

        return {
            Category.IDENTITY: compact({
                "birth_name": self.birth_name, "used_name": self.used_name,
                "first_names": list(self.first_names), "birth_date": self.birth_date.isoformat(),
                "sex": self.sex, "birth_place_insee": self.birth_place_insee, "nir": self.nir,
                "ins": self.ins, "external_id": self.external_id,
                "former_ids": list(self.former_ids) or None}),
            Category.CONTACT: compact({
                "address": ({"line": self.address.line, "postal_code": self.address.postal_code,
                             "city": self.address.city, "country": self.address.country}
                            if self.address else None),
                "phone": self.phone, "email": self.email}),
            Category.COVERAGE: compact({"amo": self.amo, "amc": self.amc,
                                        "member_id": self.member_id}),
            Category.CLINICAL: compact({
                "blood_group": self.blood_group,
                "prescriber": ({"name": self.prescriber.name, "rpps": self.prescriber.rpps}
                               if self.prescriber else None),
                **dict(self.extra_clinical)}),
        }

    @staticmethod
    def from_sealed(identity: Mapping[str, Any], contact: Mapping[str, Any] | None
                    ) -> PatientRecord:
        """The identity and contact of a record as ``categories`` sealed them -- validated
        when written -- rebuilt without validating again (``parse`` costs half of a bulk
        re-indexing: services/rekey.py). Coverage and clinical fields are left empty."""
        c = contact or {}
        a = c.get("address")
        return PatientRecord(
            identity["birth_name"], tuple(identity["first_names"]),
            date.fromisoformat(identity["birth_date"]), identity["sex"],
            external_id=identity.get("external_id"), used_name=identity.get("used_name"),
            birth_place_insee=identity.get("birth_place_insee"), nir=identity.get("nir"),
            ins=identity.get("ins"), former_ids=tuple(identity.get("former_ids") or ()),
            address=Address(a["line"], a["postal_code"], a["city"], a.get("country", "FR"))
            if a else None,
            phone=c.get("phone"), email=c.get("email"))

    @staticmethod
    def from_categories(cats: Mapping[Category, Mapping[str, Any]]) -> dict[str, Any]:
        """Flatten opened category blobs back into the import/API shape (only what was opened)."""
        out: dict[str, Any] = {}
        ident = cats.get(Category.IDENTITY)
        if ident:
            out.update(ident)
        contact = cats.get(Category.CONTACT)
        if contact:
            out.update(contact)
        cov = cats.get(Category.COVERAGE)
        if cov:
            out["coverage"] = dict(cov)
        clin = cats.get(Category.CLINICAL)
        if clin:
            out.update(clin)
        return out


def distinct_former_ids(value: object, external_id: str | None) -> tuple[str, ...]:
    """A list of former external ids (the stored shape), each as ``external_id`` is
    validated; repeats and the record's own ``external_id`` left out; more than
    ``MAX_FORMER_IDS``: ``TooManyFormerIds``."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise InvalidField("former_ids", "must be a list of identifiers",
                           "it is the list a read of the record gave; leave it out to keep it")
    out: list[str] = []
    for i, raw in enumerate(value):
        one = v.text(raw, f"former_ids[{i}]", 64, required=True)
        if one and one != external_id and one not in out:
            out.append(one)
    if len(out) > MAX_FORMER_IDS:
        raise TooManyFormerIds(len(out), MAX_FORMER_IDS)
    return tuple(out)
