"""What ``/fhir/R4`` does, independent of HTTP: read, search, create, update,
transaction Bundles, CapabilityStatement.

Every read and write goes through the core services (``lv.patients``, ``lv.lab``, the
practitioner directory), so every access passes the gate and is audited. A
transaction Bundle runs inside one ``lv.begin()``: the services' own transactions
join it, and any error rolls every entry back.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode

from labvault.domain import validation
from labvault.domain.actors import Actor
from labvault.domain.categories import Category
from labvault.domain.patient import PatientRecord
from labvault.errors import (
    IdentifierTaken,
    InvalidField,
    InvalidRecord,
    NotFound,
    PatientMerged,
    RppsTaken,
    UserError,
)
from labvault.interop.fhir import ids, versions
from labvault.interop.fhir import mapping as m
from labvault.interop.fhir.outcome import FhirError, from_user_error, issue
from labvault.interop.fhir.search import Token, any_of, checked, parse_date, tokens_in
from labvault.interop.fhir.validate import SUPPORTED, validate
from labvault.services import identity
from labvault.services.practitioners import Practitioner, PractitionerService

if TYPE_CHECKING:
    from labvault.services.app import Labvault

FHIR_VERSION = "4.0.1"
DEFAULT_COUNT = 20
MAX_COUNT = 100
MAX_BUNDLE_ENTRIES = 1000
COMMON_PARAMS = frozenset({"_count", "_offset", "_format", "_total", "_totalMethod"})


@dataclass
class SearchResult:
    resources: list[dict[str, Any]]
    total: int
    notes: list[dict[str, Any]] = field(default_factory=list)  # OperationOutcome issues


@dataclass
class Query:
    """Parsed search parameters (repeats kept)."""

    params: dict[str, list[str]]
    count: int
    offset: int
    raw: list[tuple[str, str]] = field(default_factory=list)

    def one(self, name: str) -> str | None:
        vals = self.params.get(name)
        if not vals:
            return None
        if len(vals) > 1:
            raise FhirError(400, "not-supported", f"search parameter {name} may be given once",
                            [name])
        return vals[0]


class Handler(Protocol):
    rtype: str
    search_params: Mapping[str, str]  # name -> FHIR search param type

    def read(self, actor: Actor, fhir_id: str, for_update: bool = False) -> dict[str, Any]:
        """``for_update``: read as the first step of a write in the open transaction (the
        service locks the record before reading it, until the transaction ends)."""
        ...

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str: ...
    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None: ...
    def search(self, actor: Actor, q: Query) -> SearchResult: ...

    def version(self, actor: Actor, fhir_id: str) -> tuple[str, str | None]:
        """(``meta.versionId``, ``meta.lastUpdated`` or None) as a read would give them, from
        the record's clear change markers, without reading it (no unsealing, no audited
        read): the ``etag`` and ``lastModified`` of a transaction's response entries."""
        ...


@runtime_checkable
class ConditionalCreate(Protocol):
    """A handler that offers conditional create (http.html#ccreate): ``If-None-Exist`` on
    a POST, ``ifNoneExist`` on a transaction entry. The condition is a search its
    indexes answer exactly (an identifier), nothing fuzzier."""

    def condition(self, value: str) -> None:
        """Check the ``identifier`` value of a condition as its search would (a 400 naming
        ``identifier`` when it is malformed), before anything is read."""
        ...

    def existing(self, actor: Actor, q: Query, resource: Mapping[str, Any]
                 ) -> dict[str, Any] | None:
        """The resource the condition ``q`` names, as a read gives it (the match is that
        read, through the gate), or None when it names none (create). Several: 412; one
        that is not the same as ``resource`` (a patient whose identity differs): 409."""
        ...


def tenant_of(actor: Actor) -> str:
    if actor.tenant_id is None:
        raise FhirError(403, "forbidden", "the FHIR API acts within a laboratory: use a "
                        "laboratory account's token")
    return actor.tenant_id


def not_found(rtype: str, fhir_id: str) -> FhirError:
    return FhirError(404, "not-found", f"{rtype}/{fhir_id} is not known", [rtype])


def birth_date_param(value: str) -> date:
    """``birthdate``: one full date without comparator (the index holds the exact date),
    a real calendar day that passes the core's birth date rule -- else a 400 naming it."""
    when = parse_date("birthdate", value)
    if when.prefix != "eq" or when.precision != "day":
        raise FhirError(400, "not-supported", "birthdate must be a full date "
                        "(YYYY-MM-DD) without a comparator", ["birthdate"])
    return checked("birthdate", validation.birth_date, when.start.date().isoformat())


# -- Patient ------------------------------------------------------------------------------
class PatientHandler:
    rtype = "Patient"
    search_params: Mapping[str, str] = {"_id": "token", "identifier": "token", "family": "string",
                     "given": "string", "birthdate": "date"}

    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def _id(self, fhir_id: str) -> str:
        pid = ids.from_fhir(fhir_id, "pt")
        if pid is None:
            raise not_found(self.rtype, fhir_id)
        return pid

    def show(self, actor: Actor, patient_id: str,
             categories: Iterable[Category] | None = None,
             for_update: bool = False) -> dict[str, Any]:
        try:
            return self.lv.patients.show(actor, patient_id, categories, for_update=for_update)
        except PatientMerged as merged:
            # a duplicate merged into another record, asked by someone who may read that
            # one: 410 Gone naming it (docs/fhir.md, "Merged patients")
            raise FhirError(410, "deleted", f"Patient/{ids.to_fhir(patient_id)} was merged "
                            f"into Patient/{ids.to_fhir(merged.survivor_id)}: read that "
                            "one") from None
        except NotFound:
            raise not_found(self.rtype, ids.to_fhir(patient_id)) from None

    def read(self, actor: Actor, fhir_id: str, for_update: bool = False) -> dict[str, Any]:
        return m.patient_to_fhir(self.show(actor, self._id(fhir_id),
                                           (Category.IDENTITY, Category.CONTACT), for_update))

    def version(self, actor: Actor, fhir_id: str) -> tuple[str, str | None]:
        try:
            t = self.lv.patients.change_markers(actor, self._id(fhir_id))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None
        return (versions.version_id(self.rtype, fhir_id, *m.patient_markers(t)),
                m.instant(t["updated_at"] or t["created_at"]))

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        return self.lv.patients.register(actor, tenant_of(actor), m.patient_from_fhir(resource))

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        pid = self._id(fhir_id)
        incoming = m.patient_from_fhir(resource)
        with self.lv.begin():
            # locked until the write: a change of another category committed meanwhile
            # (coverage at the desk) is kept, not overwritten with what was read before it
            current = self.show(actor, pid, for_update=True)
            merged = keep_all_categories(current)
            for k in m.IDENTITY_CONTACT:
                merged.pop(k, None)
            merged.update({k: v for k, v in incoming.items() if v is not None})
            self.lv.patients.update(actor, pid, merged)

    def find_ids(self, actor: Actor, q: Query) -> list[str]:
        tenant = tenant_of(actor)
        sets: list[list[str]] = []
        id_list = q.one("_id")
        if id_list is not None:
            sets.append(self._by_id(actor, any_of("_id", id_list)))
        identifier = q.one("identifier")
        if identifier is not None:
            sets.append(self._by_identifier(actor, tenant, identifier))
        family, given, birth = q.one("family"), q.one("given"), q.one("birthdate")
        if family is not None or given is not None or birth is not None:
            sets.append(self._by_name(actor, tenant, family, given, birth))
        if not sets:
            raise FhirError(400, "not-supported",
                            "a Patient search needs identifier=system|value, or family + given "
                            "+ birthdate, or _id (listing all patients is not offered)",
                            ["Patient"])
        result = sets[0]
        for other in sets[1:]:
            result = [p for p in result if p in other]
        return result

    def _by_name(self, actor: Actor, tenant: str, family: str | None, given: str | None,
                 birth: str | None) -> list[str]:
        """Patients by (birth or used) name + first name + birth date: the one name key of
        the blind indexes (``name_dob``); comma alternatives of family and given are ORed."""
        if family is None or given is None or birth is None:
            raise FhirError(400, "not-supported",
                            "Patient search by name needs family, given and birthdate "
                            "together (names are found through a keyed index of "
                            "name + first name + birth date); or search by identifier",
                            ["family", "given", "birthdate"])
        born = birth_date_param(birth)
        found: list[str] = []
        for fam in any_of("family", family):
            for giv in any_of("given", given):
                pids = self.lv.patients.find(actor, tenant, birth_name=fam, first_name=giv,
                                             birth_date=born)
                found.extend(p for p in pids if p not in found)
        return found

    def _by_id(self, actor: Actor, fhir_ids: list[str]) -> list[str]:
        """The records among ``fhir_ids`` (comma: or) that exist in the actor's laboratory."""
        found = []
        for pid in (ids.from_fhir(f, "pt") for f in fhir_ids):
            if pid is None or pid in found:
                continue
            try:
                self.lv.patients.tenant_of(actor, pid)
            except NotFound:
                continue
            found.append(pid)
        return found

    @staticmethod
    def _lookups(value: str) -> list[tuple[bool, str]]:
        return [identifier_lookup(t) for t in
                tokens_in("identifier", value, PATIENT_IDENTIFIER_SYSTEMS)]

    def _by_identifier(self, actor: Actor, tenant: str, value: str) -> list[str]:
        """Patients with any of the identifiers (comma: or). Every value is checked before
        the first lookup: a malformed one is a 400, never a silently shorter answer."""
        lookups = self._lookups(value)
        found: list[str] = []
        for by_nir, code in lookups:
            pids = (self.lv.patients.find(actor, tenant, nir=code) if by_nir
                    else self.lv.patients.find(actor, tenant, external_id=code))
            found.extend(p for p in pids if p not in found)
        return found

    # -- conditional create ------------------------------------------------------------
    def condition(self, value: str) -> None:
        self._lookups(value)

    def existing(self, actor: Actor, q: Query, resource: Mapping[str, Any]
                 ) -> dict[str, Any] | None:
        """The patient the identifier condition names, if its identity is the one sent.

        The match is the Patient search by identifier (its gate decision, its tenant
        scoping: another laboratory's patient is never found), then one read of the
        patient found (identity and contact: what a read of the Patient gives, audited,
        counted in the read budgets). Its traits are then compared with those sent
        (``services.identity``): an identifier that names a registered patient whose
        birth name, first given name, birth date or sex -- or another identifier -- differ
        is a 409 naming the elements sent that differ, never the stored values. An order
        attached to the wrong person is the worst error a laboratory can make: the
        prescriber's system must check the identity, not have it reconciled here."""
        sent = PatientRecord.parse(m.patient_from_fhir(resource))   # 422 before any read
        found = self.find_ids(actor, q)
        if not found:
            return None
        if len(found) > 1:
            raise several_match(self.rtype, len(found))
        shown = self.show(actor, found[0], (Category.IDENTITY, Category.CONTACT))
        if identity.unreadable_traits(shown):
            raise FhirError(403, "forbidden", "this account may not read the identity traits "
                            "of the patient the condition names (birth name, first name, "
                            "birth date, sex): the identity cannot be checked")
        differ = identity.differing(shown, sent)
        if differ:
            raise FhirError(409, "conflict", "the identifier matches a patient registered in "
                            "this laboratory whose identity differs ("
                            + ", ".join(identity.TRAIT_WORDS[d] for d in differ) + "): check the "
                            "patient's identity with the prescriber (identity vigilance); "
                            "nothing was stored and nothing was attached to that record",
                            [trait_element(resource, d) for d in differ])
        return m.patient_to_fhir(shown)

    def search(self, actor: Actor, q: Query) -> SearchResult:
        found = self.find_ids(actor, q)
        page = found[q.offset:q.offset + q.count]
        # An empty name search is where the index's limits mislead (a second first name,
        # the start of a name): said in the Bundle, before a duplicate is registered.
        notes = [NAME_SEARCH_LIMITS] if not found and "given" in q.params else []
        return SearchResult([self.read(actor, ids.to_fhir(p)) for p in page], len(found), notes)


# Names are found through the ``name_dob`` blind index: folded birth (or used) name +
# folded FIRST first name + birth date. Indexing every first name was not chosen: rows
# of patients already registered hold the first one only and cannot be recomputed without
# unsealing every record (no migration can: it has no keys), breach triage and the
# documented index (docs/security-model.md) use the first first name as identity
# vigilance does, and one row per first name would tell a stolen database how many first
# names each patient has.
NAME_SEARCH_LIMITS = issue(
    "informational", "no patient found with this family name (whole birth or used name) + "
    "FIRST given name + birth date. Names are compared whole after folding (case, accents, "
    "spaces, punctuation), not as 'starts with', and only the first given name is indexed: "
    "a patient registered as 'Noémi Océane' is found with given=Noémi, not given=Océane. "
    "Search by identifier (NIR/INS) before registering the patient as new.",
    ["family", "given"], severity="warning")
PATIENT_IDENTIFIER_SYSTEMS = (ids.NIR_SYSTEM, ids.INS_NIA_SYSTEM, ids.EXTERNAL_ID_SYSTEM)
_TRAIT_SYSTEMS = {"nir": ids.NIR_SYSTEM, "ins": ids.INS_NIA_SYSTEM,
                  "external_id": ids.EXTERNAL_ID_SYSTEM}


def trait_element(resource: Mapping[str, Any], trait: str) -> str:
    """The element of a Patient resource that carries ``trait`` (``Patient.birthDate``,
    ``Patient.name[0].family``, ``Patient.identifier[1]``)."""
    if trait == "birth_date":
        return "Patient.birthDate"
    if trait == "sex":
        return "Patient.gender"
    if trait in ("birth_name", "first_name"):
        at = m.official_name(resource)
        return f"Patient.name[{at}]." + ("family" if trait == "birth_name" else "given[0]")
    system = _TRAIT_SYSTEMS[trait]
    for i, ident in enumerate(resource.get("identifier") or []):
        if ident.get("system") == system:
            return f"Patient.identifier[{i}]"
    return "Patient.identifier"


def several_match(rtype: str, n: int) -> FhirError:
    """http.html#ccreate: a condition that names several resources is a 412."""
    return FhirError(412, "multiple-matches", f"the condition matches {n} {rtype} resources "
                     "of this laboratory: nothing was created; make the condition name one "
                     "(one identifier)")


def identifier_lookup(token: Token) -> tuple[bool, str]:
    """(by NIR?, value) for one Patient identifier value; a NIR is checked here (control
    key) so that a typo is answered as one."""
    if token.code is None:
        raise FhirError(400, "not-supported", f"identifier={token.system}| would list every "
                        "patient with such an identifier (not offered); send system|value",
                        ["identifier"])
    code = token.code.strip()
    if not code:
        raise FhirError(400, "invalid", "identifier needs a value", ["identifier"])
    if token.system in (ids.NIR_SYSTEM, ids.INS_NIA_SYSTEM):
        return True, checked("identifier", validation.nir, code)
    if token.system == ids.EXTERNAL_ID_SYSTEM:
        return False, code
    try:        # no system: a NIR when it reads as one, else the laboratory's own id
        return True, validation.nir(code, "identifier")
    except InvalidField:
        return False, code


def keep_all_categories(current: Mapping[str, Any]) -> dict[str, Any]:
    """The patient in the import shape, refusing to rewrite a record the actor may not
    read whole (a partial view written back would erase the hidden categories)."""
    cats = set(current.get("categories") or [])
    missing = {c.value for c in (Category.IDENTITY, Category.CONTACT, Category.COVERAGE,
                                 Category.CLINICAL)} - cats
    if missing:
        raise FhirError(403, "forbidden", "updating this record needs access to all its "
                        "categories (" + ", ".join(sorted(missing)) + " not readable)")
    return {k: v for k, v in current.items()
            if k not in ("id", "tenant_id", "categories", "created_at", "updated_at")}


# -- Practitioner -------------------------------------------------------------------------
class PractitionerHandler:
    rtype = "Practitioner"
    search_params: Mapping[str, str] = {"identifier": "token"}

    def __init__(self, lv: Labvault) -> None:
        self.svc = PractitionerService(lv)

    def _id(self, fhir_id: str) -> str:
        pid = ids.from_fhir(fhir_id, "pr")
        if pid is None:
            raise not_found(self.rtype, fhir_id)
        return pid

    def read(self, actor: Actor, fhir_id: str, for_update: bool = False) -> dict[str, Any]:
        try:
            return m.practitioner_to_fhir(self.svc.get(actor, self._id(fhir_id),
                                                       tenant_of(actor), for_update))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None

    def version(self, actor: Actor, fhir_id: str) -> tuple[str, str | None]:
        try:
            t = self.svc.change_markers(actor, self._id(fhir_id), tenant_of(actor))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None
        return (versions.version_id(self.rtype, fhir_id, *m.practitioner_markers(t)),
                m.instant(t["updated_at"]))

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        return self.svc.add(actor, m.practitioner_from_fhir(resource), tenant_of(actor))

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        try:
            self.svc.update(actor, self._id(fhir_id), m.practitioner_from_fhir(resource),
                            tenant_of(actor))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None

    def search(self, actor: Actor, q: Query) -> SearchResult:
        identifier = q.one("identifier")
        rpps = None if identifier is None else self._rpps_of(identifier)
        rows, total = self.svc.find(actor, rpps=rpps, offset=q.offset, limit=q.count,
                                    tenant_id=tenant_of(actor))
        return SearchResult([m.practitioner_to_fhir(r) for r in rows], total)

    def _rpps_of(self, value: str) -> list[str]:
        return [self._rpps(t) for t in tokens_in("identifier", value, (ids.RPPS_SYSTEM,))]

    # -- conditional create ------------------------------------------------------------
    def condition(self, value: str) -> None:
        self._rpps_of(value)

    def existing(self, actor: Actor, q: Query, resource: Mapping[str, Any]
                 ) -> dict[str, Any] | None:
        """The directory entry with the RPPS number of the condition: the search by RPPS
        (one audited read of the directory). An RPPS number is one health professional's,
        nationally: the entry is reused as it is (no name compared)."""
        Practitioner.parse(m.practitioner_from_fhir(resource))    # 422 before any read
        identifier = q.one("identifier")
        assert identifier is not None
        rows, total = self.svc.find(actor, rpps=self._rpps_of(identifier), offset=0, limit=2,
                                    tenant_id=tenant_of(actor))
        if total > 1:
            raise several_match(self.rtype, total)
        return m.practitioner_to_fhir(rows[0]) if rows else None

    @staticmethod
    def _rpps(token: Token) -> str:
        if token.code is None:
            raise FhirError(400, "not-supported", "identifier needs an RPPS number (no "
                            "parameter lists the laboratory's directory)", ["identifier"])
        return checked("identifier", validation.rpps, token.code)


# -- Coverage -----------------------------------------------------------------------------
class CoverageHandler:
    rtype = "Coverage"
    search_params: Mapping[str, str] = {"beneficiary": "reference", "patient": "reference"}

    def __init__(self, lv: Labvault, patients: PatientHandler) -> None:
        self.lv = lv
        self.patients = patients

    def read(self, actor: Actor, fhir_id: str, for_update: bool = False) -> dict[str, Any]:
        found = m.coverage_from_id(fhir_id)
        if found is None:
            raise not_found(self.rtype, fhir_id)
        pid, _kind = found
        p = self.patients.show(actor, pid, (Category.COVERAGE,), for_update)
        for res in m.coverages_to_fhir(pid, p.get("coverage"), p.get("updated_at")):
            if res["id"] == fhir_id:
                return res
        raise not_found(self.rtype, fhir_id)

    def _write(self, actor: Actor, resource: Mapping[str, Any],
               expect: tuple[str, str] | None = None) -> str:
        pid, kind, values = m.coverage_from_fhir(resource)
        if expect is not None and (pid, kind) != expect:
            raise FhirError(400, "invalid", "the beneficiary and type of a Coverage cannot "
                            "change (its id is derived from them)", ["Coverage.beneficiary"])
        with self.lv.begin():
            try:
                shown = self.patients.show(actor, pid, for_update=True)   # kept: see Patient
            except FhirError as exc:
                if exc.http_status != 404:
                    raise
                if expect is not None:      # updating the Coverage of no patient: no such one
                    raise not_found(self.rtype, m.coverage_id(pid, kind)) from None
                raise m.invalid("Coverage.beneficiary", "no such Patient") from None
            current = keep_all_categories(shown)
            cov = dict(current.get("coverage") or {})
            cov[kind] = values["insurer"]
            if values.get("member_id"):
                cov["member_id"] = values["member_id"]
            current["coverage"] = cov
            self.lv.patients.update(actor, pid, current)
        return m.coverage_id(pid, kind)

    def version(self, actor: Actor, fhir_id: str) -> tuple[str, str | None]:
        found = m.coverage_from_id(fhir_id)
        if found is None:
            raise not_found(self.rtype, fhir_id)
        try:
            t = self.lv.patients.change_markers(actor, found[0])
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None
        # a Coverage carries no meta.lastUpdated (the record's last change may be another
        # category's)
        return versions.version_id(self.rtype, fhir_id, *m.coverage_markers(t["updated_at"])), None

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        return self._write(actor, resource)

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        found = m.coverage_from_id(fhir_id)
        if found is None:
            raise not_found(self.rtype, fhir_id)
        self._write(actor, resource, found)

    def search(self, actor: Actor, q: Query) -> SearchResult:
        ref = q.one("beneficiary") or q.one("patient")
        if ref is None:
            raise FhirError(400, "not-supported", "a Coverage search needs beneficiary "
                            "(or patient)=Patient/<id>", ["beneficiary"])
        pid = ids.from_fhir(ref.rsplit("/", 1)[-1], "pt")
        if pid is None:
            return SearchResult([], 0)
        try:
            p = self.lv.patients.show(actor, pid, (Category.COVERAGE,))
        except NotFound:
            return SearchResult([], 0)
        found = m.coverages_to_fhir(pid, p.get("coverage"), p.get("updated_at"))
        return SearchResult(found[q.offset:q.offset + q.count], len(found))


# -- the server ---------------------------------------------------------------------------
# Order in which a transaction creates resources so that references resolve.
CREATE_ORDER = {t: i for i, t in enumerate(
    ("Practitioner", "Patient", "Coverage", "ServiceRequest", "Specimen", "Observation",
     "DiagnosticReport"))}


class FhirServer:
    def __init__(self, lv: Labvault,
                 extra: Callable[[Labvault], Iterable[Handler]] | None = None) -> None:
        self.lv = lv
        patients = PatientHandler(lv)
        handlers: list[Handler] = [patients, PractitionerHandler(lv), CoverageHandler(lv, patients)]
        from labvault.interop.fhir.audit import AuditEventHandler
        from labvault.interop.fhir.lab import lab_handlers
        handlers.extend(lab_handlers(lv))
        handlers.append(AuditEventHandler(lv))
        if extra is not None:
            handlers.extend(extra(lv))
        self.handlers: dict[str, Handler] = {h.rtype: h for h in handlers}

    def handler(self, rtype: str) -> Handler:
        h = self.handlers.get(rtype)
        if h is None:
            raise FhirError(404, "not-supported", f"resource type {rtype!r} is not served here; "
                            "see /fhir/R4/metadata", [rtype])
        return h

    # -- interactions ------------------------------------------------------------------
    def read(self, actor: Actor, rtype: str, fhir_id: str) -> dict[str, Any]:
        tenant_of(actor)   # platform accounts: refused before anything is looked up
        h = self.handler(rtype)
        if not ids.is_fhir_id(fhir_id):
            raise not_found(rtype, fhir_id)
        return h.read(actor, fhir_id)

    def read_if_changed(self, actor: Actor, rtype: str, fhir_id: str,
                        if_none_match: str | None) -> tuple[dict[str, Any], bool]:
        """A read with the client's ``If-None-Match`` (http.html#cread, RFC 9110 §13.1.2):
        (the resource, whether it is at none of the versions named -- False: the door
        answers ``304 Not Modified`` without a body). The header is checked before anything
        is read (a malformed one is a 400); the read itself is the same one, through the
        gate and audited: a 304 only tells a client the version it already holds is still
        the current one, but only someone allowed to read the resource learns even that
        (anyone else gets the read's 403 or 404)."""
        excluded = (None if if_none_match is None
                    else versions.accepted(if_none_match, header="If-None-Match"))
        if if_none_match is not None and self._versioning(self.handler(rtype)) == "no-version":
            raise FhirError(400, "not-supported", f"a {rtype} has no version (it never "
                            "changes): If-None-Match cannot apply; read without it",
                            ["If-None-Match"])
        resource = self.read(actor, rtype, fhir_id)
        if if_none_match is None:
            return resource, True
        return resource, not versions.is_current(excluded, resource)

    @staticmethod
    def _versioning(h: Handler) -> str:
        """CapabilityStatement ``versioning``: meta.versionId on every read; If-Match
        honoured on update (R4: "using e-tags for version integrity")."""
        offered = getattr(h, "interactions", ("read", "search-type", "create", "update"))
        default = "versioned-update" if "update" in offered else "versioned"
        return str(getattr(h, "versioning", default))

    def _offers(self, h: Handler, interaction: str) -> None:
        offered = getattr(h, "interactions", ("read", "search-type", "create", "update"))
        if interaction not in offered:
            raise FhirError(405, "not-supported", f"{h.rtype} does not offer {interaction} "
                            f"here (offered: {', '.join(offered)}; see /fhir/R4/metadata)",
                            [h.rtype])

    def create(self, actor: Actor, rtype: str, resource: object,
               conditions: Mapping[str, str] | None = None
               ) -> tuple[str, dict[str, Any], bool]:
        """(id, the resource as read, whether it was created). ``conditions``: the
        request's ``If-None-Exist`` / ``If-None-Match`` headers, if any.

        ``If-None-Exist`` is a conditional create (http.html#ccreate) for the types that
        offer it (Patient, Practitioner: ``identifier=system|value``): no match, the
        resource is created; one match, nothing is created and the existing resource is
        the answer (False); several, 412. ``If-None-Match`` on a create, or a condition
        on another type, is a 400, never dropped (the client would get the duplicate it
        asked not to make)."""
        tenant_of(actor)
        h = self.handler(rtype)
        self._offers(h, "create")
        conditions = dict(conditions or {})
        if "If-None-Match" in conditions:
            raise FhirError(400, "not-supported", "If-None-Match is not supported on create "
                            "(a resource being created has no version): a conditional create "
                            "is If-None-Exist: identifier=<system>|<value>", ["If-None-Match"])
        unknown = sorted(set(conditions) - {"If-None-Exist"})
        if unknown:
            raise FhirError(400, "not-supported", f"{unknown[0]} is not a condition of a "
                            "create", [unknown[0]])
        condition = (None if "If-None-Exist" not in conditions
                     else self._condition(h, conditions["If-None-Exist"], "If-None-Exist"))
        validate(resource, rtype)
        assert isinstance(resource, Mapping)
        if condition is not None:
            found = self._match(actor, h, condition, resource)
            if found is not None:
                return str(found["id"]), found, False
        try:
            with self.lv.begin():
                new = ids.to_fhir(h.create(actor, resource))
        except (IdentifierTaken, RppsTaken):
            # registered by another request since the match (the same conditional create
            # sent twice at once): the match, once more, answers with it
            found = None if condition is None else self._match(actor, h, condition, resource)
            if found is None:
                raise
            return str(found["id"]), found, False
        return new, h.read(actor, new), True

    def _condition(self, h: Handler, value: object, where: str) -> Query:
        """The search a conditional create names (``If-None-Exist``, an entry's
        ``ifNoneExist``): exactly ``identifier=<system>|<value>`` (comma: alternatives, as
        in the search), checked as the ``identifier`` search checks it. Anything else --
        names, birth date, several parameters, a modifier, another type -- is a 400 naming
        ``where``: those searches are not exact on sealed data (a name search is a folded
        name + first first name + birth date), and a condition is never dropped."""
        if not isinstance(h, ConditionalCreate):
            raise FhirError(400, "not-supported", f"conditional create is not offered for "
                            f"{h.rtype} (only Patient and Practitioner, by identifier): "
                            "search first, then create without the condition", [where])
        if not isinstance(value, str):
            raise FhirError(400, "structure", "the condition must be a string "
                            "(identifier=<system>|<value>)", [where])
        query = value.strip()
        query = query.removeprefix(f"{h.rtype}?").removeprefix("?")
        items = parse_qsl(query, keep_blank_values=True)
        names = [k for k, _v in items]
        if names != ["identifier"]:
            systems = (", ".join(PATIENT_IDENTIFIER_SYSTEMS) if h.rtype == "Patient"
                       else ids.RPPS_SYSTEM)
            raise FhirError(400, "not-supported", f"a conditional create of a {h.rtype} takes "
                            f"exactly one condition, identifier=<system>|<value> ({systems}); "
                            f"got {', '.join(names) or 'none'}. Names and birth dates are not "
                            "an exact match here: search, then create", [where])
        try:
            h.condition(items[0][1])
        except FhirError as exc:
            if exc.http_status != 400:
                raise
            raise FhirError(400, exc.issue_code, f"condition: {exc.message}", [where]) from None
        return Query({"identifier": [items[0][1]]}, MAX_COUNT, 0, items)

    def _match(self, actor: Actor, h: Handler, condition: Query,
               resource: Mapping[str, Any]) -> dict[str, Any] | None:
        """The resource ``condition`` names (``ConditionalCreate.existing``), looked for in
        a transaction of its own that commits whatever it finds: the reads it made (the
        search, the read of the patient whose identity was compared) stay in the audit
        trail even when the answer is a 409 or a 412 and nothing else is stored."""
        assert isinstance(h, ConditionalCreate)
        failure: UserError | None = None
        found: dict[str, Any] | None = None
        with self.lv.begin():
            try:
                found = h.existing(actor, condition, resource)
            except UserError as exc:       # raised once the reads are committed
                failure = exc
        if failure is not None:
            raise failure
        return found

    def update(self, actor: Actor, rtype: str, fhir_id: str, resource: object,
               if_match: str | None = None, if_none_match: str | None = None
               ) -> dict[str, Any]:
        """``if_match``: the ``If-Match`` header (http.html#concurrency): the update is made
        only if the resource is still at that version, else 412 and nothing is written.
        ``if_none_match``: the ``If-None-Match`` header: 412 if the resource is at one of
        those versions (``*``: if it exists -- always, since an update never creates)."""
        tenant_of(actor)
        h = self.handler(rtype)
        self._offers(h, "update")
        wanted = None if if_match is None else versions.accepted(if_match)
        excluded = (None if if_none_match is None
                    else versions.accepted(if_none_match, header="If-None-Match"))
        validate(resource, rtype)
        assert isinstance(resource, Mapping)
        if resource.get("id") != fhir_id:
            raise FhirError(400, "invalid", "the resource id must equal the id in the URL",
                            [f"{rtype}.id"])
        try:
            with self.lv.begin():
                if if_match is not None or if_none_match is not None:
                    # read for update: the service locks the record before reading it, so
                    # the version checked is still the one written over when this commits
                    now = h.read(actor, fhir_id, for_update=True)
                    if if_match is not None:
                        versions.check(wanted, now)
                    if if_none_match is not None:
                        versions.check_none_match(excluded, now)
                h.update(actor, fhir_id, resource)
        except FhirError as exc:
            if exc.http_status == 404 and exc.message == not_found(rtype, fhir_id).message:
                # http.html#update: no client-defined ids (updateCreate false) -> 405
                raise FhirError(405, "not-supported", f"{rtype}/{fhir_id} does not exist, and "
                                "an update does not create: POST the resource (the server "
                                "assigns its id)", [f"{rtype}.id"]) from None
            raise
        return h.read(actor, fhir_id)

    def parse_query(self, rtype: str, items: Sequence[tuple[str, str]]) -> Query:
        h = self.handler(rtype)
        params: dict[str, list[str]] = {}
        for k, v in items:
            name = k.split(":", 1)[0]
            if k != name:   # :exact, :contains, :missing...: the indexes cannot honour them
                raise FhirError(400, "not-supported", f"search modifier {k!r} is not supported",
                                [k])
            if name not in h.search_params and name not in COMMON_PARAMS:
                raise FhirError(400, "not-supported",
                                f"{rtype} search parameter {name!r} is not supported; supported: "
                                + ", ".join(sorted(h.search_params)), [name])
            params.setdefault(name, []).append(v)
        count = min(MAX_COUNT, paging_number(params, "_count", DEFAULT_COUNT))
        offset = paging_number(params, "_offset", 0)
        fmt = (params.get("_format") or ["json"])[-1]
        if "json" not in fmt:
            raise FhirError(406, "not-supported", "only JSON is served", ["_format"])
        kept = [(k, v) for k, v in items if k.split(":", 1)[0] not in COMMON_PARAMS]
        return Query({k: v for k, v in params.items() if k not in COMMON_PARAMS},
                     count, offset, kept)

    def search(self, actor: Actor, rtype: str, items: Sequence[tuple[str, str]],
               base: str) -> dict[str, Any]:
        tenant_of(actor)
        q = self.parse_query(rtype, items)
        h = self.handler(rtype)
        if q.count == 0:
            # _count=0: only the total
            res = h.search(actor, Query(q.params, 1, 0, q.raw))
            return searchset(base, rtype, q, [], res.total, res.notes)
        res = h.search(actor, q)
        return searchset(base, rtype, q, res.resources, res.total, res.notes)

    # -- transaction Bundles ------------------------------------------------------------
    def transaction(self, actor: Actor, bundle: object, base: str) -> dict[str, Any]:
        """All-or-nothing: validate every entry, then run them in one transaction."""
        tenant_of(actor)
        if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
            raise FhirError(400, "invalid", "POST /fhir/R4 takes a Bundle of type transaction",
                            ["Bundle"])
        if bundle.get("type") != "transaction":
            raise FhirError(400, "not-supported", "only Bundle.type = transaction is processed "
                            "here (batch is not offered: a laboratory order is all-or-nothing)",
                            ["Bundle.type"])
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise FhirError(400, "structure", "Bundle.entry must be a list", ["Bundle.entry"])
        _known_keys(bundle, BUNDLE_KEYS, "Bundle")
        for i, e in enumerate(entries):
            if isinstance(e, Mapping):
                _known_keys(e, ENTRY_KEYS, f"Bundle.entry[{i}]")
        if len(entries) > MAX_BUNDLE_ENTRIES:
            raise FhirError(413, "too-costly", f"at most {MAX_BUNDLE_ENTRIES} entries per "
                            "transaction", ["Bundle.entry"])
        plans = [self._plan(i, e) for i, e in enumerate(entries)]
        full_urls = [p.full_url for p in plans if p.full_url]
        if len(set(full_urls)) != len(full_urls):
            raise FhirError(400, "invalid", "two entries have the same fullUrl",
                            ["Bundle.entry.fullUrl"])
        try:
            return self._run(actor, plans, base, retry=True)
        except _ConditionRaced:
            # a conditional create's resource was registered by another request between
            # its match and its create (the same Bundle sent twice at once): run again,
            # the match now finds it
            return self._run(actor, plans, base, retry=False)

    def _run(self, actor: Actor, plans: list[_Plan], base: str,
             retry: bool) -> dict[str, Any]:
        """The Bundle's entries, planned and checked: conditional creates matched, then
        every entry in one transaction. ``retry``: an entry whose condition matched nothing
        but whose create finds its identifier taken since raises ``_ConditionRaced`` (the
        caller runs the Bundle once more) instead of failing the Bundle."""
        # Conditional creates first, each in a transaction of its own (``_match``: the reads
        # they make stay audited whatever the Bundle's fate); an entry whose condition
        # names an existing resource creates nothing and its fullUrl resolves to it.
        existing: dict[int, str] = {}
        for i, p in enumerate(plans):
            if p.condition is None:
                continue
            try:
                found = self._match(actor, self.handler(p.rtype), p.condition, p.resource)
            except UserError as exc:
                raise at_entry(exc, i, p.rtype) from None
            if found is not None:
                existing[i] = str(found["id"])
        resolved: dict[str, str] = {}
        results: dict[int, tuple[str, str, str]] = {}
        order = sorted(range(len(plans)),
                       key=lambda i: (plans[i].method != "POST", CREATE_ORDER[plans[i].rtype], i))
        with self.lv.begin():
            k = 0
            while k < len(order):
                i = order[k]
                p = plans[i]
                group = [i]
                h = self.handler(p.rtype)
                many = getattr(h, "create_many", None)
                if p.method == "POST" and many is not None and i not in existing:
                    # results of one order are entered together (one lab call)
                    while k + len(group) < len(order):
                        nxt = plans[order[k + len(group)]]
                        if nxt.method != "POST" or nxt.rtype != p.rtype:
                            break
                        group.append(order[k + len(group)])
                k += len(group)
                bodies = []
                for j in group:      # an unresolved reference names its own entry
                    try:
                        bodies.append(rewrite_references(plans[j].resource, resolved))
                    except FhirError as exc:
                        raise at_entry(exc, j, plans[j].rtype) from None
                try:
                    if i in existing:            # its condition named this one: no create
                        news = [existing[i]]
                        status = "200 OK"
                    elif p.method == "POST" and many is not None:
                        news = self._create_grouped(actor, many, group, bodies)
                        status = "201 Created"
                    elif p.method == "POST":
                        news = [ids.to_fhir(h.create(actor, bodies[0]))]
                        status = "201 Created"
                    else:
                        assert p.target_id is not None
                        if p.if_match is not None or p.if_none_match is not None:
                            # as it is now, after the creates; locked until the commit
                            now = h.read(actor, p.target_id, for_update=True)
                            if p.if_match is not None:
                                versions.check(p.if_match, now,
                                               [f"Bundle.entry[{i}].request.ifMatch"])
                            if p.if_none_match is not None:
                                versions.check_none_match(versions.accepted(
                                    p.if_none_match, header="If-None-Match"), now,
                                    [f"Bundle.entry[{i}].request.ifNoneMatch"])
                        h.update(actor, p.target_id, bodies[0])
                        news = [p.target_id]
                        status = "200 OK"
                except (IdentifierTaken, RppsTaken) as exc:
                    if retry and p.condition is not None:
                        raise _ConditionRaced from None
                    raise at_entry(exc, i, p.rtype) from None
                except UserError as exc:
                    raise at_entry(exc, i, p.rtype) from None
                for j, new in zip(group, news, strict=True):
                    fu = plans[j].full_url
                    if fu:
                        resolved[fu] = f"{plans[j].rtype}/{new}"
                    results[j] = (plans[j].rtype, new, status)
            # Each entry's version as committed: taken last, inside the transaction (a later
            # entry changes earlier ones: a Specimen its ServiceRequest, a final report its
            # Observations), from the change markers (no second, audited read of each).
            stamps = {(rtype, new): self.handler(rtype).version(actor, new)
                      for rtype, new, _status in results.values()}
        out = []
        for i in range(len(plans)):
            rtype, new, status = results[i]
            response = {"status": status, "location": f"{rtype}/{new}"}
            version, last_modified = stamps[(rtype, new)]
            response["etag"] = f'W/"{version}"'        # the ETag a read of it gives
            if last_modified is not None:
                response["lastModified"] = last_modified
            out.append({"fullUrl": f"{base}/{rtype}/{new}", "response": response})
        resp: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4()),
                                "type": "transaction-response"}
        if out:                       # FHIR JSON has no empty arrays (json.html)
            resp["entry"] = out
        return resp

    @staticmethod
    def _create_grouped(actor: Actor, many: Callable[..., list[str]], group: list[int],
                        bodies: list[dict[str, Any]]) -> list[str]:
        """Create same-type entries in batches per target (``create_many`` wants one order
        per call); error expressions name the entry at fault."""
        from labvault.interop.fhir.lab import RESULT_ELEMENTS, element_of  # lab imports us
        by_target: dict[str, list[int]] = {}
        for n, b in enumerate(bodies):
            key = json.dumps(b.get("basedOn"), sort_keys=True, default=str)
            by_target.setdefault(key, []).append(n)
        out: dict[int, str] = {}
        for members in by_target.values():
            try:
                made = many(actor, [bodies[n] for n in members])
            except InvalidRecord as exc:
                issues = []
                for e in exc.errors:
                    mt = re.match(r"results\[(\d+)\]\.?(.*)", e.field)
                    entry = group[members[int(mt.group(1))]] if mt else group[members[0]]
                    element = element_of(e.field, RESULT_ELEMENTS)
                    issues.append(issue("invalid", f"Observation.{element}: {e.rule}",
                                        [f"Bundle.entry[{entry}].resource.{element}"]))
                raise FhirError(exc.http_status, "invalid", "", issues=issues) from None
            except UserError as exc:
                raise at_entry(exc, group[members[0]], "Observation") from None
            for n, new in zip(members, made, strict=True):
                out[n] = ids.to_fhir(new)
        return [out[n] for n in range(len(bodies))]

    def _plan(self, i: int, entry: object) -> _Plan:
        where = f"Bundle.entry[{i}]"
        if not isinstance(entry, Mapping):
            raise FhirError(400, "structure", "each entry must be an object", [where])
        req = entry.get("request")
        if not isinstance(req, Mapping):
            raise FhirError(400, "required", "a transaction entry needs request.method and "
                            "request.url", [where + ".request"])
        _known_keys(req, REQUEST_KEYS, where + ".request")
        if "ifModifiedSince" in req:        # dropped, it would read as "no condition"
            raise FhirError(400, "not-supported", "ifModifiedSince is a condition of a read; "
                            "entries here are POST or PUT (for an update: ifMatch)",
                            [where + ".request.ifModifiedSince"])
        method = req.get("method")
        url = str(req.get("url") or "").strip("/")
        resource = entry.get("resource")
        rtype = validate(resource, None, where + ".resource")
        assert isinstance(resource, Mapping)
        full_url = entry.get("fullUrl")
        if full_url is not None and not isinstance(full_url, str):
            raise FhirError(400, "structure", "fullUrl must be a string", [where + ".fullUrl"])
        if method == "POST":
            if url.split("?", 1)[0] != rtype:
                raise FhirError(400, "invalid", f"request.url must be {rtype} for a POST of a "
                                f"{rtype}", [where + ".request.url"])
            if "?" in url:          # a search there would be a condition silently dropped
                raise FhirError(400, "not-supported", f"request.url of a POST is {rtype}, "
                                "without a query: a conditional create's search goes in "
                                "request.ifNoneExist", [where + ".request.url"])
            if "ifNoneMatch" in req:
                raise FhirError(400, "not-supported", "ifNoneMatch on a POST is not supported "
                                "(a resource being created has no version): a conditional "
                                "create is ifNoneExist: identifier=<system>|<value>",
                                [where + ".request.ifNoneMatch"])
            if "ifMatch" in req:
                raise FhirError(400, "not-supported", "ifMatch applies to an update (PUT): a "
                                "created resource has no version yet", [where + ".request.ifMatch"])
            condition = (None if "ifNoneExist" not in req else self._condition(
                self.handler(rtype), req["ifNoneExist"], where + ".request.ifNoneExist"))
            return _Plan(rtype, "POST", resource, full_url, None, condition=condition)
        if method == "PUT":
            parts = url.split("/")
            if len(parts) != 2 or parts[0] != rtype or resource.get("id") != parts[1]:
                raise FhirError(400, "invalid", f"request.url must be {rtype}/<id> with the "
                                "resource's id", [where + ".request.url"])
            none_match = req.get("ifNoneMatch")
            if none_match is not None:          # checked now: a 400 before anything runs
                self._if_match(none_match, where + ".request.ifNoneMatch", "If-None-Match")
            return _Plan(rtype, "PUT", resource, full_url, parts[1],
                         self._if_match(req.get("ifMatch"), where + ".request.ifMatch"),
                         none_match)
        raise FhirError(400, "not-supported", "transaction entries may be POST or PUT",
                        [where + ".request.method"])

    @staticmethod
    def _if_match(value: object, where: str,
                  header: str = "If-Match") -> frozenset[str] | None:
        """The versions an entry's ``request.ifMatch`` (or ``ifNoneMatch``) names (None: no
        condition, or ``*``)."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise FhirError(400, "structure", f"{where.rsplit('.', 1)[-1]} must be a string "
                            '(W/"<versionId>")', [where])
        return versions.accepted(value, [where], header)

    # -- CapabilityStatement ---------------------------------------------------------------
    def capability(self, base: str) -> dict[str, Any]:
        resources = []
        for rtype in (*SUPPORTED, *sorted(set(self.handlers) - set(SUPPORTED))):
            h = self.handlers.get(rtype)
            if h is None:
                continue
            offered = getattr(h, "interactions", ("read", "search-type", "create", "update"))
            versioning = self._versioning(h)
            resources.append({
                "type": rtype,
                "interaction": [{"code": c} for c in offered],
                # versionId on every resource read; If-Match honoured on update (R4: "using
                # e-tags for version integrity"; R5: "supports version-aware updates"); no
                # vread, no history
                "versioning": versioning,
                "readHistory": False, "updateCreate": False,
                # If-None-Match on read (304); not If-Modified-Since: a version is exact,
                # a time to the second is not
                "conditionalRead": "not-supported" if versioning == "no-version"
                else "not-match",
                # If-None-Exist by identifier where offered (Patient, Practitioner); If-Match
                # is not a conditional update (that is PUT [type]?search)
                "conditionalCreate": isinstance(h, ConditionalCreate),
                "conditionalUpdate": False,
                "searchParam": [{"name": n, "type": t} for n, t in h.search_params.items()],
            })
        return {
            "resourceType": "CapabilityStatement", "id": "labvault",
            "status": "active", "date": date.today().isoformat(), "kind": "instance",
            "publisher": "labvault",
            "software": {"name": "labvault", "version": "0.1.0"},
            "implementation": {"description": "labvault FHIR R4 door", "url": base},
            "fhirVersion": FHIR_VERSION, "format": ["json"],
            "rest": [{
                "mode": "server",
                "security": {"cors": False, "description": "Bearer token of a staff account "
                             "(same as the REST API); every read is audited."},
                "resource": resources,
                "interaction": [{"code": "transaction"}],
            }],
        }


class _ConditionRaced(Exception):
    """A conditional create matched nothing, then found its identifier taken when it
    created: another request registered the resource in between."""


@dataclass(frozen=True)
class _Plan:
    rtype: str
    method: str
    resource: Mapping[str, Any]
    full_url: str | None
    target_id: str | None
    if_match: frozenset[str] | None = None      # request.ifMatch: the versions accepted
    if_none_match: str | None = None            # request.ifNoneMatch, as sent (checked)
    condition: Query | None = None              # request.ifNoneExist (a POST), checked


# The elements of a Bundle and of its entries (R4 bundle.html): anything else is refused,
# as an unknown element of a resource is (the R4B models check resources, not the Bundle
# around them, which is not validated whole: each entry's resource is, once).
BUNDLE_KEYS = frozenset({"resourceType", "id", "meta", "implicitRules", "language",
                         "identifier", "type", "timestamp", "total", "link", "entry",
                         "signature"})
ENTRY_KEYS = frozenset({"id", "extension", "link", "fullUrl", "resource", "search",
                        "request", "response"})
REQUEST_KEYS = frozenset({"id", "extension", "method", "url", "ifNoneMatch",
                          "ifModifiedSince", "ifMatch", "ifNoneExist"})


def _known_keys(node: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(k for k in node if k not in known)
    if unknown:
        raise FhirError(400, "structure", f"unknown element {unknown[0]!r} (R4 bundle.html)",
                        [f"{where}.{unknown[0]}"])


def at_entry(exc: UserError, i: int, rtype: str) -> FhirError:
    """``exc``, raised for entry ``i`` (a ``rtype``), with every expression placed in the
    Bundle once: ``Observation.basedOn[0]`` and ``resource.subject.reference`` become
    ``Bundle.entry[i].resource...``; an expression already in the Bundle stays as it is."""
    status, oo = from_user_error(exc)
    where = f"Bundle.entry[{i}].resource"
    for iss in oo["issue"]:
        out = []
        for e in iss.get("expression") or [""]:
            if e.startswith("Bundle."):
                out.append(e)
            elif e == rtype or e.startswith((f"{rtype}.", f"{rtype}[")):
                out.append(where + e[len(rtype):])
            elif e == "resource" or e.startswith("resource."):
                out.append(f"Bundle.entry[{i}].{e}")
            else:
                out.append(f"{where}.{e}" if e else where)
        iss["expression"] = out
    return FhirError(status, "invalid", "", issues=oo["issue"])


def rewrite_references(resource: Mapping[str, Any], resolved: Mapping[str, str]
                       ) -> dict[str, Any]:
    """Copy of ``resource`` with ``urn:uuid:``/``urn:oid:`` references replaced by the
    ``Type/id`` of the entry that carried that fullUrl. An unresolved ``urn:`` reference
    is an error (it would point nowhere), located relative to its entry
    (``resource.subject.reference``: the transaction prefixes ``Bundle.entry[i]``)."""
    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            out = {}
            for k, v in node.items():
                if k == "reference" and isinstance(v, str) and v.startswith("urn:"):
                    if v not in resolved:
                        raise FhirError(422, "invalid", f"reference {v!r} names no entry of "
                                        "this Bundle (or one created after it)",
                                        [f"resource{_path_of(resource, v)}.reference"])
                    out[k] = resolved[v]
                else:
                    out[k] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    result: dict[str, Any] = walk(resource)
    return result


def _path_of(node: Any, reference: str, path: str = "") -> str:
    """Where ``reference`` sits in ``node`` (``.subject``, ``.basedOn[0]``): built only for
    the error, not for every element of every resource of a Bundle."""
    if isinstance(node, Mapping):
        if node.get("reference") == reference:
            return path
        items: Any = ((f"{path}.{k}", v) for k, v in node.items())
    elif isinstance(node, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(node))
    else:
        return ""
    for sub, v in items:
        if found := _path_of(v, reference, sub):
            return found
    return ""


def searchset(base: str, rtype: str, q: Query, resources: list[dict[str, Any]],
              total: int, notes: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The Bundle of one page; ``notes`` (warnings about the search) come as an
    OperationOutcome entry with ``search.mode = outcome`` (R4 search.html#errors), which
    clients keep apart from the matches."""
    def link(offset: int) -> str:
        return f"{base}/{rtype}?" + urlencode([*q.raw, ("_count", str(q.count)),
                                               ("_offset", str(offset))])
    links = [{"relation": "self", "url": link(q.offset)}]
    if q.count and q.offset + q.count < total:
        links.append({"relation": "next", "url": link(q.offset + q.count)})
    if q.count and q.offset > 0:
        links.append({"relation": "previous",
                      "url": link(previous_offset(q.offset, q.count, total))})
    entries = [{"fullUrl": f"{base}/{rtype}/{r['id']}", "resource": r,
                "search": {"mode": "match"}} for r in resources]
    if notes:
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}",
                        "resource": {"resourceType": "OperationOutcome", "issue": list(notes)},
                        "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4()),
                              "type": "searchset", "total": total, "link": links}
    if entries:                  # FHIR JSON has no empty arrays (json.html)
        bundle["entry"] = entries
    return bundle


def paging_number(params: Mapping[str, list[str]], name: str, default: int) -> int:
    """``_count`` or ``_offset`` (the last one given): a whole number, 0 or more. A negative
    one is refused rather than read as 0: ``_count=-5`` would silently mean "only the
    total"."""
    values = params.get(name)
    if not values:
        return default
    if not re.fullmatch(r"-?\d{1,9}", values[-1]):
        raise FhirError(400, "invalid", f"{name} must be a whole number", [name])
    number = int(values[-1])
    if number < 0:
        raise FhirError(400, "invalid", f"{name} must be 0 or more (got {number})", [name])
    return number


def previous_offset(offset: int, count: int, total: int) -> int:
    """Where the page before ``offset`` starts; from past the end, the last page that has
    matches (a 'previous' page past the end would hold nothing either)."""
    last_page = (total - 1) // count * count if total else 0
    return max(0, min(offset - count, last_page))


def dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()
