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
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from labvault.domain.actors import Actor
from labvault.domain.categories import Category
from labvault.errors import AccessDenied, InvalidRecord, NotFound, UserError
from labvault.interop.fhir import ids
from labvault.interop.fhir import mapping as m
from labvault.interop.fhir.outcome import FhirError, from_user_error, issue
from labvault.interop.fhir.validate import SUPPORTED, validate
from labvault.services.practitioners import PractitionerService

if TYPE_CHECKING:
    from labvault.services.app import Labvault

FHIR_VERSION = "4.0.1"
DEFAULT_COUNT = 20
MAX_COUNT = 100
MAX_BUNDLE_ENTRIES = 1000
COMMON_PARAMS = frozenset({"_count", "_offset", "_format", "_total", "_totalMethod"})
_DATE = re.compile(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)?(\d{4}(-\d{2}(-\d{2})?)?)(T.*)?")


@dataclass
class SearchResult:
    resources: list[dict[str, Any]]
    total: int


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

    def read(self, actor: Actor, fhir_id: str) -> dict[str, Any]: ...
    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str: ...
    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None: ...
    def search(self, actor: Actor, q: Query) -> SearchResult: ...


class _EntryError(FhirError):
    """A transaction entry's error whose expressions already name the entry."""


def tenant_of(actor: Actor) -> str:
    if actor.tenant_id is None:
        raise FhirError(403, "forbidden", "the FHIR API acts within a laboratory: use a "
                        "laboratory account's token")
    return actor.tenant_id


def not_found(rtype: str, fhir_id: str) -> FhirError:
    return FhirError(404, "not-found", f"{rtype}/{fhir_id} is not known", [rtype])


def parse_date_param(name: str, value: str) -> tuple[str, str]:
    """``[prefix]YYYY[-MM[-DD]]`` -> (prefix, date text)."""
    mt = _DATE.fullmatch(value)
    if not mt:
        raise FhirError(400, "invalid", f"{name}: {value!r} is not a FHIR date "
                        "([eq|gt|ge|lt|le]YYYY-MM-DD)", [name])
    return mt.group(1) or "eq", mt.group(2)


def split_token(value: str) -> tuple[str | None, str]:
    """``system|code`` -> (system, code); ``code`` -> (None, code)."""
    if "|" in value:
        system, _, code = value.partition("|")
        return system or None, code
    return None, value


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
             categories: Iterable[Category] | None = None) -> dict[str, Any]:
        try:
            return self.lv.patients.show(actor, patient_id, categories)
        except NotFound:
            raise not_found(self.rtype, ids.to_fhir(patient_id)) from None

    def read(self, actor: Actor, fhir_id: str) -> dict[str, Any]:
        return m.patient_to_fhir(self.show(actor, self._id(fhir_id),
                                           (Category.IDENTITY, Category.CONTACT)))

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        return self.lv.patients.register(actor, tenant_of(actor), m.patient_from_fhir(resource))

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        pid = self._id(fhir_id)
        incoming = m.patient_from_fhir(resource)
        with self.lv.begin():
            current = self.show(actor, pid)
            merged = keep_all_categories(current)
            for k in m.IDENTITY_CONTACT:
                merged.pop(k, None)
            merged.update({k: v for k, v in incoming.items() if v is not None})
            self.lv.patients.update(actor, pid, merged)

    def find_ids(self, actor: Actor, q: Query) -> list[str]:
        tenant = tenant_of(actor)
        sets: list[list[str]] = []
        if "_id" in q.params:
            wanted = [ids.from_fhir(v, "pt") for v in ",".join(q.params["_id"]).split(",")]
            found = []
            for pid in wanted:
                if pid is None:
                    continue
                try:
                    self.lv.patients.tenant_of(actor, pid)
                except NotFound:
                    continue
                found.append(pid)
            sets.append(found)
        identifier = q.one("identifier")
        if identifier is not None:
            sets.append(self._by_identifier(actor, tenant, identifier))
        family, given, birth = q.one("family"), q.one("given"), q.one("birthdate")
        if family or given or birth:
            if not (family and given and birth):
                raise FhirError(400, "not-supported",
                                "Patient search by name needs family, given and birthdate "
                                "together (names are found through a keyed index of "
                                "name + first name + birth date); or search by identifier",
                                ["family", "given", "birthdate"])
            prefix, day = parse_date_param("birthdate", birth)
            if prefix != "eq" or len(day) != 10:
                raise FhirError(400, "not-supported", "birthdate must be a full date "
                                "(YYYY-MM-DD) without a comparator", ["birthdate"])
            found_names: list[str] = []
            for fam in family.split(","):
                for giv in given.split(","):
                    for pid in self.lv.patients.find(actor, tenant, birth_name=fam,
                                                     first_name=giv, birth_date=day):
                        if pid not in found_names:
                            found_names.append(pid)
            sets.append(found_names)
        if not sets:
            raise FhirError(400, "not-supported",
                            "a Patient search needs identifier=system|value, or family + given "
                            "+ birthdate, or _id (listing all patients is not offered)",
                            ["Patient"])
        result = sets[0]
        for other in sets[1:]:
            result = [p for p in result if p in other]
        return result

    def _by_identifier(self, actor: Actor, tenant: str, value: str) -> list[str]:
        system, code = split_token(value)
        if not code:
            raise FhirError(400, "invalid", "identifier needs a value", ["identifier"])
        try:
            if system in (ids.NIR_SYSTEM, ids.INS_NIA_SYSTEM):
                return self.lv.patients.find(actor, tenant, nir=code)
            if system == ids.EXTERNAL_ID_SYSTEM:
                return self.lv.patients.find(actor, tenant, external_id=code)
            if system is None:
                try:
                    return self.lv.patients.find(actor, tenant, nir=code)
                except AccessDenied:
                    raise
                except UserError:
                    return self.lv.patients.find(actor, tenant, external_id=code)
        except AccessDenied:
            raise
        except UserError:
            return []   # a malformed NIR matches nobody
        raise FhirError(400, "not-supported", f"identifier system {system!r} is not searchable; "
                        f"use {ids.NIR_SYSTEM}, {ids.INS_NIA_SYSTEM} or {ids.EXTERNAL_ID_SYSTEM}",
                        ["identifier"])

    def search(self, actor: Actor, q: Query) -> SearchResult:
        found = self.find_ids(actor, q)
        page = found[q.offset:q.offset + q.count]
        return SearchResult([self.read(actor, ids.to_fhir(p)) for p in page], len(found))


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

    def read(self, actor: Actor, fhir_id: str) -> dict[str, Any]:
        try:
            return m.practitioner_to_fhir(self.svc.get(actor, self._id(fhir_id), tenant_of(actor)))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        return self.svc.add(actor, m.practitioner_from_fhir(resource), tenant_of(actor))

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        try:
            self.svc.update(actor, self._id(fhir_id), m.practitioner_from_fhir(resource),
                            tenant_of(actor))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None

    def search(self, actor: Actor, q: Query) -> SearchResult:
        rpps = None
        identifier = q.one("identifier")
        if identifier is not None:
            system, rpps = split_token(identifier)
            if system not in (None, ids.RPPS_SYSTEM):
                raise FhirError(400, "not-supported", f"Practitioner identifiers are RPPS "
                                f"numbers ({ids.RPPS_SYSTEM})", ["identifier"])
            try:
                from labvault.domain.validation import rpps as check_rpps
                check_rpps(rpps, "identifier")
            except UserError:
                return SearchResult([], 0)
        rows, total = self.svc.find(actor, rpps=rpps, offset=q.offset, limit=q.count,
                                    tenant_id=tenant_of(actor))
        return SearchResult([m.practitioner_to_fhir(r) for r in rows], total)


# -- Coverage -----------------------------------------------------------------------------
class CoverageHandler:
    rtype = "Coverage"
    search_params: Mapping[str, str] = {"beneficiary": "reference", "patient": "reference"}

    def __init__(self, lv: Labvault, patients: PatientHandler) -> None:
        self.lv = lv
        self.patients = patients

    def read(self, actor: Actor, fhir_id: str) -> dict[str, Any]:
        found = m.coverage_from_id(fhir_id)
        if found is None:
            raise not_found(self.rtype, fhir_id)
        pid, _kind = found
        p = self.patients.show(actor, pid, (Category.COVERAGE,))
        for res in m.coverages_to_fhir(pid, p.get("coverage")):
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
            current = keep_all_categories(self.patients.show(actor, pid))
            cov = dict(current.get("coverage") or {})
            cov[kind] = values["insurer"]
            if values.get("member_id"):
                cov["member_id"] = values["member_id"]
            current["coverage"] = cov
            self.lv.patients.update(actor, pid, current)
        return m.coverage_id(pid, kind)

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
        found = m.coverages_to_fhir(pid, p.get("coverage"))
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

    def _offers(self, h: Handler, interaction: str) -> None:
        offered = getattr(h, "interactions", ("read", "search-type", "create", "update"))
        if interaction not in offered:
            raise FhirError(405, "not-supported", f"{h.rtype} does not offer {interaction} "
                            f"here (offered: {', '.join(offered)}; see /fhir/R4/metadata)",
                            [h.rtype])

    def create(self, actor: Actor, rtype: str, resource: object) -> tuple[str, dict[str, Any]]:
        tenant_of(actor)
        h = self.handler(rtype)
        self._offers(h, "create")
        validate(resource, rtype)
        assert isinstance(resource, Mapping)
        with self.lv.begin():
            new = ids.to_fhir(h.create(actor, resource))
        return new, h.read(actor, new)

    def update(self, actor: Actor, rtype: str, fhir_id: str, resource: object) -> dict[str, Any]:
        tenant_of(actor)
        h = self.handler(rtype)
        self._offers(h, "update")
        validate(resource, rtype)
        assert isinstance(resource, Mapping)
        if resource.get("id") != fhir_id:
            raise FhirError(400, "invalid", "the resource id must equal the id in the URL",
                            [f"{rtype}.id"])
        with self.lv.begin():
            h.update(actor, fhir_id, resource)
        return h.read(actor, fhir_id)

    def parse_query(self, rtype: str, items: Sequence[tuple[str, str]]) -> Query:
        h = self.handler(rtype)
        params: dict[str, list[str]] = {}
        for k, v in items:
            name = k.split(":", 1)[0]
            if k != name and not (name in ("family", "given") and k.endswith(":exact")):
                raise FhirError(400, "not-supported", f"search modifier {k!r} is not supported",
                                [k])
            if name not in h.search_params and name not in COMMON_PARAMS:
                raise FhirError(400, "not-supported",
                                f"{rtype} search parameter {name!r} is not supported; supported: "
                                + ", ".join(sorted(h.search_params)), [name])
            params.setdefault(name, []).append(v)
        count = DEFAULT_COUNT
        offset = 0
        try:
            if "_count" in params:
                count = max(0, min(MAX_COUNT, int(params["_count"][-1])))
            if "_offset" in params:
                offset = max(0, int(params["_offset"][-1]))
        except ValueError:
            raise FhirError(400, "invalid", "_count and _offset must be integers",
                            ["_count"]) from None
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
            return searchset(base, rtype, q, [], res.total)
        res = h.search(actor, q)
        return searchset(base, rtype, q, res.resources, res.total)

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
        if len(entries) > MAX_BUNDLE_ENTRIES:
            raise FhirError(413, "too-costly", f"at most {MAX_BUNDLE_ENTRIES} entries per "
                            "transaction", ["Bundle.entry"])
        plans = [self._plan(i, e) for i, e in enumerate(entries)]
        full_urls = [p.full_url for p in plans if p.full_url]
        if len(set(full_urls)) != len(full_urls):
            raise FhirError(400, "invalid", "two entries have the same fullUrl",
                            ["Bundle.entry.fullUrl"])
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
                if p.method == "POST" and many is not None:
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
                        status_code, oo = from_user_error(exc, f"Bundle.entry[{j}]")
                        raise FhirError(status_code, "invalid", "",
                                        issues=oo["issue"]) from None
                try:
                    if p.method == "POST" and many is not None:
                        # its errors already name their entries: not prefixed again below
                        news = self._create_grouped(actor, many, group, bodies)
                        status = "201 Created"
                    elif p.method == "POST":
                        news = [ids.to_fhir(h.create(actor, bodies[0]))]
                        status = "201 Created"
                    else:
                        assert p.target_id is not None
                        h.update(actor, p.target_id, bodies[0])
                        news = [p.target_id]
                        status = "200 OK"
                except _EntryError:
                    raise
                except FhirError as exc:
                    status_code, oo = from_user_error(exc, f"Bundle.entry[{i}]")
                    raise FhirError(status_code, "invalid", "", issues=oo["issue"]) from None
                except UserError as exc:
                    status_code, oo = from_user_error(exc, f"Bundle.entry[{i}].resource")
                    raise FhirError(status_code, "invalid", "", issues=oo["issue"]) from None
                for j, new in zip(group, news, strict=True):
                    fu = plans[j].full_url
                    if fu:
                        resolved[fu] = f"{plans[j].rtype}/{new}"
                    results[j] = (plans[j].rtype, new, status)
        out = []
        for i in range(len(plans)):
            rtype, new, status = results[i]
            out.append({"fullUrl": f"{base}/{rtype}/{new}",
                        "response": {"status": status, "location": f"{rtype}/{new}/_history/1"}})
        return {"resourceType": "Bundle", "id": str(uuid.uuid4()),
                "type": "transaction-response", "entry": out}

    @staticmethod
    def _create_grouped(actor: Actor, many: Callable[..., list[str]], group: list[int],
                        bodies: list[dict[str, Any]]) -> list[str]:
        """Create same-type entries in batches per target (``create_many`` wants one order
        per call); error expressions name the entry at fault."""
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
                    issues.append(issue("invalid", f"{mt.group(2) if mt else e.field}: {e.rule}",
                                        [f"Bundle.entry[{entry}].resource"]))
                raise _EntryError(exc.http_status, "invalid", "", issues=issues) from None
            except UserError as exc:
                status_code, oo = from_user_error(exc, f"Bundle.entry[{group[members[0]]}]")
                raise _EntryError(status_code, "invalid", "", issues=oo["issue"]) from None
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
            if "ifNoneExist" in req:
                raise FhirError(400, "not-supported", "conditional create is not supported",
                                [where + ".request.ifNoneExist"])
            return _Plan(rtype, "POST", resource, full_url, None)
        if method == "PUT":
            parts = url.split("/")
            if len(parts) != 2 or parts[0] != rtype or resource.get("id") != parts[1]:
                raise FhirError(400, "invalid", f"request.url must be {rtype}/<id> with the "
                                "resource's id", [where + ".request.url"])
            return _Plan(rtype, "PUT", resource, full_url, parts[1])
        raise FhirError(400, "not-supported", "transaction entries may be POST or PUT",
                        [where + ".request.method"])

    # -- CapabilityStatement ---------------------------------------------------------------
    def capability(self, base: str) -> dict[str, Any]:
        resources = []
        for rtype in (*SUPPORTED, *sorted(set(self.handlers) - set(SUPPORTED))):
            h = self.handlers.get(rtype)
            if h is None:
                continue
            resources.append({
                "type": rtype,
                "interaction": [{"code": c} for c in getattr(
                    h, "interactions", ("read", "search-type", "create", "update"))],
                "versioning": "no-version", "readHistory": False, "updateCreate": False,
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


@dataclass(frozen=True)
class _Plan:
    rtype: str
    method: str
    resource: Mapping[str, Any]
    full_url: str | None
    target_id: str | None


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
              total: int) -> dict[str, Any]:
    def link(offset: int) -> str:
        return f"{base}/{rtype}?" + urlencode([*q.raw, ("_count", str(q.count)),
                                               ("_offset", str(offset))])
    links = [{"relation": "self", "url": link(q.offset)}]
    if q.count and q.offset + q.count < total:
        links.append({"relation": "next", "url": link(q.offset + q.count)})
    if q.count and q.offset > 0:
        links.append({"relation": "previous", "url": link(max(0, q.offset - q.count))})
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset",
            "total": total, "link": links,
            "entry": [{"fullUrl": f"{base}/{rtype}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]}


def dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()
