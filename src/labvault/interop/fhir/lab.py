"""ServiceRequest, Specimen, Observation, DiagnosticReport over the lab service (``lv.lab``).

One labvault order is one ServiceRequest and one DiagnosticReport (its report); its
specimens are Specimens and its results Observations (docs/fhir.md, "lab mapping").
Everything goes through ``LabService`` (gate, audit, workflow rules): the FHIR door
never writes lab rows itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.errors import NotFound
from labvault.interop.fhir import ids
from labvault.interop.fhir import mapping as m
from labvault.interop.fhir.outcome import FhirError
from labvault.interop.fhir.server import split_token
from labvault.services.lab import ObservationView, OrderView, ReportView, SpecimenView
from labvault.services.practitioners import PractitionerService

if TYPE_CHECKING:
    from labvault.interop.fhir.server import Handler, Query, SearchResult
    from labvault.services.app import Labvault

SPECIMEN_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0487"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBS_CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory", "display": "Laboratory"}]}
REPORT_CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                               "code": "LAB", "display": "Laboratory"}]}
REPORT_CODE = {"coding": [{"system": ids.LOINC_SYSTEM, "code": "11502-2",
                           "display": "Laboratory report"}]}
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"

# order status -> ServiceRequest.status (request-status)
REQUEST_STATUS = {
    L.OrderStatus.REGISTERED: "active", L.OrderStatus.RECEIVED: "active",
    L.OrderStatus.PRELIMINARY: "active", L.OrderStatus.TECHNICALLY_VALIDATED: "active",
    L.OrderStatus.FINAL: "completed", L.OrderStatus.PUBLISHED: "completed",
    L.OrderStatus.AMENDED: "completed", L.OrderStatus.REJECTED: "revoked",
    L.OrderStatus.CANCELLED: "revoked",
}
SPECIMEN_STATUS = {"available": "available", "rejected": "unsatisfactory",
                   "cancelled": "unavailable"}
QUANTITY_COMPARATORS = ("<", "<=", ">", ">=")


def _ref(rtype: str, internal_id: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{ids.to_fhir(internal_id)}"}


def _instant(d: datetime | None) -> str | None:
    return m.instant(d) if d is not None else None


def _lab_id(fhir_id: str, prefix: str, rtype: str) -> str:
    found = ids.from_fhir(fhir_id, prefix)
    if found is None:
        raise FhirError(404, "not-found", f"{rtype}/{fhir_id} is not known", [rtype])
    return found


def _single(ref_list: object, rtype: str, prefix: str, where: str) -> str:
    if not isinstance(ref_list, list) or len(ref_list) != 1:
        raise m.invalid(where, f"exactly one reference to a {rtype} is required")
    return m.reference_id(ref_list[0], rtype, prefix, f"{where}[0]")


def _loinc_codes(cc: object, where: str) -> list[str]:
    codes = [str(c.get("code")) for c in m._codings(cc)
             if c.get("system") == ids.LOINC_SYSTEM and c.get("code")]
    if not codes:
        raise m.invalid(where, f"needs a LOINC coding (system {ids.LOINC_SYSTEM})")
    return codes


def _notes(notes: object) -> str | None:
    texts = [n["text"] for n in notes or [] if isinstance(n, Mapping) and n.get("text")] \
        if isinstance(notes, list) else []
    return "\n".join(texts) or None


# -- ServiceRequest -----------------------------------------------------------------------
def service_request_to_fhir(o: OrderView) -> dict[str, Any]:
    req = o.request
    res: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": ids.to_fhir(o.order_id),
        "meta": {"lastUpdated": _instant(o.updated_at)},
        "status": REQUEST_STATUS[o.status], "intent": "order", "priority": o.priority.value,
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007",
                                  "display": "Laboratory procedure"}]}],
        "code": {"coding": [{"system": ids.LOINC_SYSTEM, "code": t} for t in req.tests]},
        "subject": _ref("Patient", o.patient_id),
        "authoredOn": _instant(req.requested_at or o.created_at),
    }
    ident = []
    if req.placer_number:
        ident.append({"type": {"coding": [{"system": IDENTIFIER_TYPE, "code": "PLAC"}]},
                      "system": ids.PLACER_SYSTEM, "value": req.placer_number})
    if req.filler_number:
        ident.append({"type": {"coding": [{"system": IDENTIFIER_TYPE, "code": "FILL"}]},
                      "system": ids.FILLER_SYSTEM, "value": req.filler_number})
    if ident:
        res["identifier"] = ident
    if req.prescriber:
        res["requester"] = m.requester({"name": req.prescriber.name, "rpps": req.prescriber.rpps})
    if req.clinical_notes:
        res["note"] = [{"text": req.clinical_notes}]
    if o.specimens:
        res["specimen"] = [_ref("Specimen", s.specimen_id) for s in o.specimens]
    return res


class ServiceRequestHandler:
    rtype = "ServiceRequest"
    search_params: Mapping[str, str] = {"patient": "reference", "status": "token"}

    def __init__(self, lv: Labvault) -> None:
        self.lv = lv
        self.practitioners = PractitionerService(lv)

    def read(self, actor: Actor, fhir_id: str) -> dict[str, Any]:
        try:
            return service_request_to_fhir(self.lv.lab.get_order(
                actor, _lab_id(fhir_id, "ord", self.rtype)))
        except NotFound:
            raise FhirError(404, "not-found", f"ServiceRequest/{fhir_id} is not known") from None

    def _prescriber(self, actor: Actor, r: Mapping[str, Any]) -> dict[str, Any] | None:
        req = r.get("requester")
        if req is None:
            return None
        if isinstance(req, Mapping) and isinstance(req.get("reference"), str):
            pid = m.reference_id(req, "Practitioner", "pr", "ServiceRequest.requester")
            try:
                p = self.practitioners.get(actor, pid)
            except NotFound:
                raise m.invalid("ServiceRequest.requester", "no such Practitioner") from None
            return {"name": p["name"], "rpps": p.get("rpps")}
        ident = req.get("identifier") if isinstance(req, Mapping) else None
        if not isinstance(ident, Mapping) or ident.get("system") != ids.RPPS_SYSTEM \
                or not req.get("display"):
            raise m.invalid("ServiceRequest.requester", "a Practitioner reference, or an RPPS "
                            f"identifier ({ids.RPPS_SYSTEM}) with a display name")
        return {"name": req["display"], "rpps": ident.get("value")}

    def _request(self, actor: Actor, r: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if r.get("intent") != "order":
            raise m.not_supported("ServiceRequest.intent", "only intent = order is stored")
        if r.get("status") not in ("active", "draft"):
            raise m.not_supported("ServiceRequest.status", "a new order is active")
        patient_id = m.reference_id(r.get("subject"), "Patient", "pt", "ServiceRequest.subject")
        req: dict[str, Any] = {"tests": _loinc_codes(r.get("code"), "ServiceRequest.code"),
                               "priority": r.get("priority") or "routine"}
        if req["priority"] == "asap":
            req["priority"] = "urgent"
        prescriber = self._prescriber(actor, r)
        if prescriber:
            req["prescriber"] = prescriber
        notes = _notes(r.get("note"))
        if notes:
            req["clinical_notes"] = notes
        if r.get("authoredOn"):
            req["requested_at"] = r["authoredOn"]
        for i, ident in enumerate(r.get("identifier") or []):
            if ident.get("system") == ids.PLACER_SYSTEM:
                req["placer_number"] = ident.get("value")
            elif ident.get("system") == ids.FILLER_SYSTEM:
                req["filler_number"] = ident.get("value")
            else:
                raise m.not_supported(f"ServiceRequest.identifier[{i}].system",
                                      f"use {ids.PLACER_SYSTEM} or {ids.FILLER_SYSTEM}")
        return patient_id, req

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        from labvault.interop.fhir.server import tenant_of
        patient_id, req = self._request(actor, resource)
        return self.lv.lab.create_order(actor, tenant_of(actor), patient_id, req).order_id

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        """Only the status may change: ``revoked`` cancels the order."""
        order_id = _lab_id(fhir_id, "ord", self.rtype)
        current = self.read(actor, fhir_id)
        wanted = resource.get("status")
        if wanted == current["status"]:
            return
        if wanted == "revoked":
            self.lv.lab.cancel(actor, order_id, _notes(resource.get("note")))
            return
        raise FhirError(422, "business-rule", "an order's content is fixed once registered; "
                        "only status = revoked (cancellation) may be sent",
                        ["ServiceRequest.status"])

    def search(self, actor: Actor, q: Query) -> SearchResult:
        from labvault.interop.fhir.server import SearchResult, tenant_of
        patient_id = patient_param(q, required=True)
        status = q.one("status")
        orders = self.lv.lab.list_orders(actor, tenant_of(actor), patient_id=patient_id,
                                         limit=10_000)
        found = [service_request_to_fhir(o) for o in orders]
        if status:
            found = [r for r in found if r["status"] in status.split(",")]
        return SearchResult(found[q.offset:q.offset + q.count], len(found))


def patient_param(q: Query, required: bool) -> str | None:
    ref = q.one("patient") or q.one("subject")
    if ref is None:
        if required:
            raise FhirError(400, "not-supported", "this search needs patient=Patient/<id> "
                            "(laboratory-wide listings are offered by the worklists)",
                            ["patient"])
        return None
    pid = ids.from_fhir(ref.rsplit("/", 1)[-1], "pt")
    if pid is None:
        raise FhirError(400, "invalid", f"patient={ref!r} is not a Patient of this server",
                        ["patient"])
    return pid


# -- Specimen -----------------------------------------------------------------------------
def specimen_to_fhir(s: SpecimenView) -> dict[str, Any]:
    spec = s.specimen
    return {
        "resourceType": "Specimen", "id": ids.to_fhir(s.specimen_id),
        "status": SPECIMEN_STATUS.get(s.status, "available"),
        "accessionIdentifier": {"system": ids.ACCESSION_SYSTEM, "value": spec.accession_number},
        "type": {"coding": [{"system": SPECIMEN_TYPE_SYSTEM, "code": spec.type,
                             "display": L.SPECIMEN_TYPES[spec.type]}]},
        "subject": _ref("Patient", s.patient_id),
        "receivedTime": _instant(s.received_at),
        "request": [_ref("ServiceRequest", s.order_id)],
        "collection": {"collectedDateTime": _instant(spec.collected_at)},
    }


class SpecimenHandler:
    rtype = "Specimen"
    interactions = ("read", "search-type", "create")   # a received specimen is not changed
    search_params: Mapping[str, str] = {"patient": "reference"}

    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def read(self, actor: Actor, fhir_id: str) -> dict[str, Any]:
        try:
            return specimen_to_fhir(self.lv.lab.get_specimen(
                actor, _lab_id(fhir_id, "spc", self.rtype)))
        except NotFound:
            raise FhirError(404, "not-found", f"Specimen/{fhir_id} is not known") from None

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        r = resource
        order_id = _single(r.get("request"), "ServiceRequest", "ord", "Specimen.request")
        stype = None
        for c in m._codings(r.get("type")):
            if c.get("system") in (SPECIMEN_TYPE_SYSTEM, None):
                stype = c.get("code")
        acc = r.get("accessionIdentifier") or {}
        collection = r.get("collection") or {}
        spec = {"type": stype, "accession_number": acc.get("value"),
                "collected_at": collection.get("collectedDateTime")}
        try:
            view = self.lv.lab.receive_specimen(actor, order_id, spec)
        except NotFound:
            raise m.invalid("Specimen.request[0]", "no such ServiceRequest") from None
        if r.get("subject") is not None:
            subject = m.reference_id(r["subject"], "Patient", "pt", "Specimen.subject")
            if subject != view.patient_id:
                raise m.invalid("Specimen.subject", "is not the ServiceRequest's patient")
        return view.specimen_id

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        raise FhirError(422, "business-rule", "a received specimen is not changed; reject the "
                        "order (ServiceRequest status = revoked) or receive a new specimen",
                        ["Specimen"])

    def search(self, actor: Actor, q: Query) -> SearchResult:
        from labvault.interop.fhir.server import SearchResult, tenant_of
        patient_id = patient_param(q, required=True)
        found: list[dict[str, Any]] = []
        for o in self.lv.lab.list_orders(actor, tenant_of(actor), patient_id=patient_id,
                                         limit=10_000):
            for s in self.lv.lab.get_order(actor, o.order_id).specimens:
                found.append(specimen_to_fhir(s))
        return SearchResult(found[q.offset:q.offset + q.count], len(found))


# -- Observation ----------------------------------------------------------------------------
def observation_to_fhir(v: ObservationView) -> dict[str, Any]:
    o = v.observation
    res: dict[str, Any] = {
        "resourceType": "Observation", "id": ids.to_fhir(v.observation_id),
        "meta": {"lastUpdated": _instant(v.updated_at)},
        "status": v.status, "category": [OBS_CATEGORY],
        "code": {"coding": [{"system": ids.LOINC_SYSTEM, "code": o.code, "display": o.display}]},
        "subject": _ref("Patient", v.patient_id),
        "basedOn": [_ref("ServiceRequest", v.order_id)],
        "effectiveDateTime": _instant(o.observed_at or v.created_at),
        "issued": _instant(v.updated_at),
    }
    if o.kind == L.ValueKind.NUMERIC and o.numeric is not None:
        q: dict[str, Any] = {"value": o.numeric}
        if o.comparator:
            q["comparator"] = o.comparator
        if o.unit:
            q.update(unit=o.unit, system=ids.UCUM_SYSTEM, code=o.unit)
        res["valueQuantity"] = q
    elif o.kind == L.ValueKind.CODED and o.coded is not None:
        c: dict[str, Any] = {"code": o.coded.code}
        if o.coded.system:
            c["system"] = o.coded.system
        if o.coded.display:
            c["display"] = o.coded.display
        res["valueCodeableConcept"] = {"coding": [c]}
    elif o.text is not None:
        res["valueString"] = o.text
    if o.flag is not None:
        res["interpretation"] = [{"coding": [{"system": INTERPRETATION_SYSTEM,
                                              "code": o.flag.value}]}]
    if o.reference_range or o.range_low is not None or o.range_high is not None:
        rr: dict[str, Any] = {}
        for key, val in (("low", o.range_low), ("high", o.range_high)):
            if val is not None:
                rr[key] = {"value": val, **({"unit": o.unit, "system": ids.UCUM_SYSTEM,
                                              "code": o.unit} if o.unit else {})}
        if o.reference_range:
            rr["text"] = o.reference_range
        res["referenceRange"] = [rr]
    if o.comment:
        res["note"] = [{"text": o.comment}]
    return res


def result_from_fhir(r: Mapping[str, Any]) -> dict[str, Any]:
    """FHIR Observation -> the lab service's result input."""
    codes = _loinc_codes(r.get("code"), "Observation.code")
    out: dict[str, Any] = {"code": codes[0]}
    if "valueQuantity" in r:
        q = r["valueQuantity"]
        if q.get("value") is None:
            raise m.invalid("Observation.valueQuantity.value", "is required")
        comp = q.get("comparator")
        if comp is not None and comp not in QUANTITY_COMPARATORS:
            raise m.invalid("Observation.valueQuantity.comparator", "must be <, <=, > or >=")
        out["value"] = f"{comp}{q['value']}" if comp else float(q["value"])
        unit = q.get("code") or q.get("unit")
        if unit:
            out["unit"] = unit
    elif "valueCodeableConcept" in r:
        codings = m._codings(r["valueCodeableConcept"])
        if not codings:
            raise m.invalid("Observation.valueCodeableConcept", "needs a coding")
        c = codings[0]
        out["value"] = {k: c.get(k) for k in ("code", "display", "system") if c.get(k)}
    elif "valueString" in r:
        out["value"] = r["valueString"]
        out["kind"] = "text"
    else:
        raise m.not_supported("Observation.value[x]", "send valueQuantity, "
                              "valueCodeableConcept or valueString")
    if r.get("effectiveDateTime"):
        out["observed_at"] = r["effectiveDateTime"]
    note = _notes(r.get("note"))
    if note:
        out["comment"] = note
    return out


def _order_of_observation(r: Mapping[str, Any]) -> str:
    return _single(r.get("basedOn"), "ServiceRequest", "ord", "Observation.basedOn")


class ObservationHandler:
    rtype = "Observation"
    search_params: Mapping[str, str] = {"patient": "reference", "subject": "reference",
                                        "code": "token", "date": "date", "status": "token"}

    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def read(self, actor: Actor, fhir_id: str) -> dict[str, Any]:
        try:
            return observation_to_fhir(self.lv.lab.get_observation(
                actor, _lab_id(fhir_id, "obs", self.rtype)))
        except NotFound:
            raise FhirError(404, "not-found", f"Observation/{fhir_id} is not known") from None

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        return self.create_many(actor, [resource])[0]

    def create_many(self, actor: Actor, resources: Sequence[Mapping[str, Any]]) -> list[str]:
        """Results of one order entered together (one lab call: one gate decision)."""
        order_ids = {_order_of_observation(r) for r in resources}
        if len(order_ids) != 1:
            raise m.invalid("Observation.basedOn", "results entered together share one order")
        for r in resources:
            if r.get("status") != "preliminary":
                raise m.not_supported("Observation.status", "results are entered preliminary; "
                                      "they become final when the DiagnosticReport is validated")
        try:
            views = self.lv.lab.enter_results(actor, order_ids.pop(),
                                              [result_from_fhir(r) for r in resources])
        except NotFound:
            raise m.invalid("Observation.basedOn[0]", "no such ServiceRequest") from None
        return [v.observation_id for v in views]

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        """Before validation: re-enter the value. After publication (status amended or
        corrected): amend, with the reason in ``note``."""
        oid = _lab_id(fhir_id, "obs", self.rtype)
        current = self.lv.lab.get_observation(actor, oid)
        result = result_from_fhir(resource)
        if result["code"] != current.observation.code:
            raise m.invalid("Observation.code", "the test code of a result does not change")
        status = resource.get("status")
        if status == "preliminary" and current.status == "preliminary":
            self.lv.lab.enter_results(actor, current.order_id, [result])
        elif status in ("amended", "corrected"):
            reason = result.pop("comment", None)
            if reason is None or not reason.strip():    # blank: no reason either
                raise m.invalid("Observation.note", "an amendment needs its reason in note")
            self.lv.lab.amend(actor, oid, result, reason)
        else:
            raise FhirError(422, "business-rule", f"a {current.status} result cannot be sent "
                            f"as {status}: re-enter preliminary results, or amend published "
                            "ones (status amended, reason in note)", ["Observation.status"])

    def search(self, actor: Actor, q: Query) -> SearchResult:
        from labvault.interop.fhir.server import SearchResult, tenant_of
        patient_id = patient_param(q, required=True)
        code = q.one("code")
        loinc = None
        if code is not None:
            system, loinc = split_token(code)
            if system not in (None, ids.LOINC_SYSTEM):
                raise FhirError(400, "not-supported", "Observation codes are LOINC", ["code"])
        since, until = date_range(q.params.get("date") or [])
        views = self.lv.lab.list_observations(actor, tenant_of(actor), patient_id=patient_id,
                                              code=loinc, since=since, until=until,
                                              limit=10_000)
        status = q.one("status")
        found = [v for v in views if status is None or v.status in status.split(",")]
        page = found[q.offset:q.offset + q.count]
        return SearchResult([observation_to_fhir(v) for v in page], len(found))


def date_range(values: Iterable[str]) -> tuple[datetime | None, datetime | None]:
    """FHIR date params (``ge2026-01-01``, ``lt2026-02``, ``2026-01-15``) -> [since, until)."""
    from labvault.interop.fhir.server import parse_date_param
    since: datetime | None = None
    until: datetime | None = None
    for v in values:
        prefix, text = parse_date_param("date", v)
        parts = [int(x) for x in text.split("-")]
        try:
            start = datetime(parts[0], parts[1] if len(parts) > 1 else 1,
                             parts[2] if len(parts) > 2 else 1, tzinfo=UTC)
        except ValueError:
            raise FhirError(400, "invalid", f"date: {v!r} is not a calendar date",
                            ["date"]) from None
        if len(parts) == 3:
            end = start + timedelta(days=1)
        elif len(parts) == 2:
            end = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
        else:
            end = datetime(start.year + 1, 1, 1, tzinfo=UTC)
        if prefix == "eq":
            since, until = start, end
        elif prefix == "ge":
            since = start
        elif prefix == "gt":
            since = end
        elif prefix == "lt":
            until = start
        elif prefix == "le":
            until = end
        else:
            raise FhirError(400, "not-supported", f"date prefix {prefix} is not supported "
                            "(eq, ge, gt, le, lt)", ["date"])
    return since, until


# -- DiagnosticReport -----------------------------------------------------------------------
def diagnostic_report_to_fhir(r: ReportView) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": ids.to_fhir(r.report_id),
        "meta": {"lastUpdated": _instant(r.updated_at)},
        "status": r.status, "category": [REPORT_CATEGORY], "code": REPORT_CODE,
        "subject": _ref("Patient", r.patient_id),
        "basedOn": [_ref("ServiceRequest", r.order_id)],
        "effectiveDateTime": _instant(r.created_at),
    }
    if r.issued_at is not None:
        res["issued"] = _instant(r.issued_at)
    results = [_ref("Observation", o.observation_id) for o in r.observations
               if o.status != "cancelled"]
    if results:
        res["result"] = results
    if r.conclusion:
        res["conclusion"] = r.conclusion
    return res


class DiagnosticReportHandler:
    rtype = "DiagnosticReport"
    search_params: Mapping[str, str] = {"patient": "reference", "subject": "reference",
                                        "code": "token", "date": "date", "status": "token"}

    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def read(self, actor: Actor, fhir_id: str) -> dict[str, Any]:
        try:
            return diagnostic_report_to_fhir(self.lv.lab.get_report(
                actor, _lab_id(fhir_id, "rep", self.rtype)))
        except NotFound:
            raise FhirError(404, "not-found", f"DiagnosticReport/{fhir_id} is not known") from None

    def _apply(self, actor: Actor, order_id: str, resource: Mapping[str, Any]) -> str:
        """Bring the order's report to the sent status: ``final`` = technical and
        biological validation (biologist) with the conclusion. Always called inside a
        transaction: a check that fails after the validation rolls it back."""
        status = resource.get("status")
        try:
            order_status, report_id = self.lv.lab.order_status(actor, order_id)
        except NotFound:
            raise m.invalid("DiagnosticReport.basedOn[0]", "no such ServiceRequest") from None
        current = L.REPORT_STATUS[order_status]
        unchanged = status == current or (
            status in ("registered", "partial", "preliminary")
            and current in ("registered", "preliminary"))
        if unchanged:
            if resource.get("conclusion"):
                raise m.not_supported("DiagnosticReport.conclusion",
                                      "the conclusion is given with the final report")
            report = self.lv.lab.get_report_by_order(actor, order_id)
        elif status == "final" and current in ("registered", "preliminary"):
            # technical validation (if the results are preliminary), then biological
            report = self.lv.lab.validate_final(actor, order_id, resource.get("conclusion"))
        elif status == "cancelled":
            self.lv.lab.cancel(actor, order_id, None)
            return report_id
        else:
            raise FhirError(422, "business-rule", f"a {current} report cannot become "
                            f"{status} here (publication and amendment go through the lab "
                            "workflow)", ["DiagnosticReport.status"])
        mine = {o.observation_id for o in report.observations}
        for i, ref in enumerate(resource.get("result") or []):
            oid = m.reference_id(ref, "Observation", "obs", f"DiagnosticReport.result[{i}]")
            if oid not in mine:
                raise m.invalid(f"DiagnosticReport.result[{i}]",
                                "is not a result of this report's ServiceRequest")
        return report.report_id

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        """Every order already has its report: creating one for an order reports on it
        (and validates it when ``status`` is final)."""
        order_id = _single(resource.get("basedOn"), "ServiceRequest", "ord",
                           "DiagnosticReport.basedOn")
        return self._apply(actor, order_id, resource)

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        rep = self.lv.lab.get_report(actor, _lab_id(fhir_id, "rep", self.rtype))
        self._apply(actor, rep.order_id, resource)

    def search(self, actor: Actor, q: Query) -> SearchResult:
        from labvault.interop.fhir.server import SearchResult, tenant_of
        patient_id = patient_param(q, required=True)
        status = q.one("status")
        code = q.one("code")
        since, until = date_range(q.params.get("date") or [])
        reports = self.lv.lab.list_reports(actor, tenant_of(actor), patient_id=patient_id,
                                           limit=10_000)
        found = []
        for r in reports:
            if status is not None and r.status not in status.split(","):
                continue
            if code is not None and split_token(code)[1] not in ("11502-2", *r.tests):
                continue
            when = r.created_at if r.created_at.tzinfo else r.created_at.replace(tzinfo=UTC)
            if (since and when < since) or (until and when >= until):
                continue
            found.append(r)
        page = found[q.offset:q.offset + q.count]
        return SearchResult([diagnostic_report_to_fhir(r) for r in page], len(found))


def lab_handlers(lv: Labvault) -> Iterable[Handler]:
    return (ServiceRequestHandler(lv), SpecimenHandler(lv), ObservationHandler(lv),
            DiagnosticReportHandler(lv))
