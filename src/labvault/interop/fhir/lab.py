"""ServiceRequest, Specimen, Observation, DiagnosticReport over the lab service (``lv.lab``).

One labvault order is one ServiceRequest and one DiagnosticReport (its report); its
specimens are Specimens and its results Observations (docs/fhir.md, "lab mapping").
Everything goes through ``LabService`` (gate, audit, workflow rules): the FHIR door
never writes lab rows itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.errors import InvalidField, InvalidRecord, NotFound
from labvault.interop.fhir import ids
from labvault.interop.fhir import mapping as m
from labvault.interop.fhir.outcome import FhirError, issue
from labvault.interop.fhir.search import Token, date_window, tokens_in
from labvault.interop.fhir.server import not_found
from labvault.interop.fhir.versions import version_id, versioned
from labvault.services.lab import (
    FillerNumberTaken,
    ObservationView,
    OrderView,
    ReportView,
    SpecimenView,
)
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
REPORT_LOINC = "11502-2"
# ``coding.display`` is LOINC's own name (interoperability); ``text`` is the name people
# read, in French as on the laboratory's report (the catalogue's labels for tests)
REPORT_CODE = {"coding": [{"system": ids.LOINC_SYSTEM, "code": REPORT_LOINC,
                           "display": "Laboratory report"}],
               "text": "Compte rendu d'analyses de biologie médicale"}
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
REPORT_STATUSES = frozenset({"registered", "partial", "preliminary", "final", "amended",
                             "corrected", "appended", "cancelled", "entered-in-error",
                             "unknown"})


# Fields of the lab core's records -> the FHIR element they come from: an error names
# what the client sent (Specimen.collection.collectedDateTime), not labvault's own names.
SPECIMEN_ELEMENTS = {"type": "type", "accession_number": "accessionIdentifier",
                     "collected_at": "collection.collectedDateTime"}
RESULT_ELEMENTS = {"code": "code", "value": "value[x]", "kind": "value[x]",
                   "unit": "valueQuantity.unit", "comment": "note",
                   "observed_at": "effectiveDateTime", "status": "status",
                   "reason": "note"}


def element_of(field: str, elements: Mapping[str, str]) -> str:
    """``unit`` (or ``results[0].unit``) -> ``valueQuantity.unit``; unknown names pass."""
    name = field.rsplit("].", 1)[-1].split(".", 1)[0].split("[", 1)[0]
    return elements.get(name, field)


def number_taken(exc: FillerNumberTaken, element: str) -> FhirError:
    """409 ``duplicate``: the filler number (or the tube's number that would become it) is
    another order's already; the element that carries it named."""
    return FhirError(exc.http_status, "duplicate", f"{exc.message} ({exc.hint})", [element])


def fhir_invalid(exc: InvalidRecord, rtype: str, elements: Mapping[str, str]) -> FhirError:
    """A core ``InvalidRecord`` as a 422 whose issues name FHIR elements."""
    issues = []
    for e in exc.errors:
        path = f"{rtype}.{element_of(e.field, elements)}"
        hint = f" ({e.hint})" if e.hint else ""
        issues.append(issue("invalid", f"{path}: {e.rule}{hint}", [path]))
    return FhirError(exc.http_status, "invalid", "", issues=issues)


def _ref(rtype: str, internal_id: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{ids.to_fhir(internal_id)}"}


def _instant(d: datetime | None) -> str | None:
    return m.instant(d) if d is not None else None


def _lab_id(fhir_id: str, prefix: str, rtype: str) -> str:
    found = ids.from_fhir(fhir_id, prefix)
    if found is None:
        raise not_found(rtype, fhir_id)
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
        "code": {"coding": [{"system": ids.LOINC_SYSTEM, "code": t} for t in req.tests],
                 "text": ", ".join(o.test_name(t) for t in req.tests)},
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
    # every change of an order (a specimen received, a test added) moves its updated_at
    return versioned(res, *order_markers({"status": o.status.value,
                                          "updated_at": o.updated_at}))


# What each lab resource's version covers, from the views a read builds or from the lab
# service's ``change_markers`` (the same clear columns): one function each, so that a
# transaction's response.etag is the ETag a read then gives.
def order_markers(c: Mapping[str, Any]) -> tuple[object, ...]:
    return (c["status"], c["updated_at"])


def specimen_markers(c: Mapping[str, Any]) -> tuple[object, ...]:
    return (c["status"], c["received_at"])      # a received specimen changes only its status


def observation_markers(c: Mapping[str, Any]) -> tuple[object, ...]:
    return (c["status"], c["revision"], c["updated_at"])


def report_markers(c: Mapping[str, Any]) -> tuple[object, ...]:
    """The report's own, its results' (their revisions: the console's "results changed
    since you looked") and its specimens' (effective[x])."""
    return (c["status"], c["updated_at"], c["issued_at"], list(c["observations"]),
            list(c["specimens"]))


class ServiceRequestHandler:
    rtype = "ServiceRequest"
    search_params: Mapping[str, str] = {"patient": "reference", "status": "token"}

    def __init__(self, lv: Labvault) -> None:
        self.lv = lv
        self.practitioners = PractitionerService(lv)

    def version(self, actor: Actor, fhir_id: str) -> tuple[str, str | None]:
        try:
            c = self.lv.lab.change_markers(actor, "order", _lab_id(fhir_id, "ord", self.rtype))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None
        return version_id(self.rtype, fhir_id, *order_markers(c)), _instant(c["updated_at"])

    def read(self, actor: Actor, fhir_id: str, for_update: bool = False) -> dict[str, Any]:
        try:
            return service_request_to_fhir(self.lv.lab.get_order(
                actor, _lab_id(fhir_id, "ord", self.rtype), for_update=for_update))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None

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

    def _request(self, actor: Actor, r: Mapping[str, Any], new: bool = True
                 ) -> tuple[str, dict[str, Any]]:
        if r.get("intent") != "order":
            raise m.not_supported("ServiceRequest.intent", "only intent = order is stored")
        if new and r.get("status") not in ("active", "draft"):
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
        try:
            return self.lv.lab.create_order(actor, tenant_of(actor), patient_id, req).order_id
        except NotFound:   # a reference that points nowhere: the element is at fault (422)
            raise m.invalid("ServiceRequest.subject", "no such Patient") from None
        except FillerNumberTaken as exc:
            raise number_taken(exc, "ServiceRequest.identifier") from None

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        """Only the status may change: ``revoked`` cancels the order, with its reason in
        a ``note`` added to the order's own. Any other change is refused (a 200 must mean
        the change was stored, not silently dropped)."""
        order_id = _lab_id(fhir_id, "ord", self.rtype)
        try:
            order = self.lv.lab.get_order(actor, order_id)
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None
        current = service_request_to_fhir(order)
        wanted = resource.get("status")
        changed = self._changed(actor, order, resource, cancelling=wanted == "revoked")
        if changed is not None:
            raise FhirError(422, "business-rule", "an order's content is fixed once "
                            f"registered ({changed} differs from the stored order); only "
                            "status = revoked (cancellation, with the reason in note) may be "
                            "sent", [changed])
        if wanted == current["status"]:
            return
        if wanted == "revoked":
            self.lv.lab.cancel(actor, order_id, _cancel_reason(resource, current))
            return
        raise FhirError(422, "business-rule", "an order's content is fixed once registered; "
                        "only status = revoked (cancellation) may be sent",
                        ["ServiceRequest.status"])

    def _changed(self, actor: Actor, order: OrderView, r: Mapping[str, Any],
                 cancelling: bool) -> str | None:
        """The first element of ``r`` whose content differs from the stored order, compared
        as labvault stores it (a Practitioner reference and an RPPS identifier naming the
        same prescriber are equal); None when only the status may differ. The note of a
        cancellation is its reason, not the order's clinical notes."""
        patient_id, req = self._request(actor, r, new=False)
        stored = order.request
        prescriber = req.get("prescriber")
        same = {
            "ServiceRequest.subject": patient_id == order.patient_id,
            "ServiceRequest.code": sorted(set(req["tests"])) == sorted(stored.tests),
            "ServiceRequest.priority": str(req["priority"]) == order.priority.value,
            "ServiceRequest.requester": (prescriber or {}).get("rpps") == (
                stored.prescriber.rpps if stored.prescriber else None),
            # the filler number the laboratory gave the order after it was placed (its
            # tube's number, an analyser's): the placer's copy need not carry it
            "ServiceRequest.identifier": req.get("placer_number") == stored.placer_number
            and req.get("filler_number") in (None, stored.filler_number),
            "ServiceRequest.note": cancelling or req.get("clinical_notes") == stored.clinical_notes,
        }
        return next((where for where, ok in same.items() if not ok), None)

    def search(self, actor: Actor, q: Query) -> SearchResult:
        from labvault.interop.fhir.server import SearchResult, tenant_of
        patient_id = patient_param(q, required=True)
        status = q.one("status")
        orders = self.lv.lab.list_orders(actor, tenant_of(actor), patient_id=patient_id,
                                         limit=10_000, specimens=True)   # found as read
        found = [service_request_to_fhir(o) for o in orders]
        if status:
            found = [r for r in found if r["status"] in status.split(",")]
        return SearchResult(found[q.offset:q.offset + q.count], len(found))


def _cancel_reason(sent: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """The notes a revoked ServiceRequest adds to the order's clinical notes (which come
    back with the resource): the reason for the cancellation, required."""
    own = {n.get("text") for n in current.get("note") or []}
    own |= {line for text in list(own) if isinstance(text, str) for line in text.splitlines()}
    sent_notes = sent.get("note")
    added = [n for n in sent_notes if isinstance(n, Mapping) and n.get("text") not in own] \
        if isinstance(sent_notes, list) else []
    reason = _notes(added)
    if reason is None:
        raise m.invalid("ServiceRequest.note", "a cancellation (status revoked) needs its "
                        "reason: add a note saying why the order is cancelled")
    return reason


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
    return versioned({
        "resourceType": "Specimen", "id": ids.to_fhir(s.specimen_id),
        "status": SPECIMEN_STATUS.get(s.status, "available"),
        "accessionIdentifier": {"system": ids.ACCESSION_SYSTEM, "value": spec.accession_number},
        "type": {"coding": [{"system": SPECIMEN_TYPE_SYSTEM, "code": spec.type,
                             "display": L.SPECIMEN_TYPES[spec.type]}]},
        "subject": _ref("Patient", s.patient_id),
        "receivedTime": _instant(s.received_at),
        "request": [_ref("ServiceRequest", s.order_id)],
        "collection": {"collectedDateTime": _instant(spec.collected_at)},
    }, *specimen_markers({"status": s.status, "received_at": s.received_at}))


class SpecimenHandler:
    rtype = "Specimen"
    interactions = ("read", "search-type", "create")   # a received specimen is not changed
    search_params: Mapping[str, str] = {"patient": "reference"}

    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def version(self, actor: Actor, fhir_id: str) -> tuple[str, str | None]:
        try:
            c = self.lv.lab.change_markers(actor, "specimen", _lab_id(fhir_id, "spc", self.rtype))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None
        return version_id(self.rtype, fhir_id, *specimen_markers(c)), None

    def read(self, actor: Actor, fhir_id: str, for_update: bool = False) -> dict[str, Any]:
        try:
            return specimen_to_fhir(self.lv.lab.get_specimen(
                actor, _lab_id(fhir_id, "spc", self.rtype), for_update=for_update))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None

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
            # the tube's number becomes the order's filler number if it has none (as at the
            # desk): an analyser's results quoting the tube's barcode then find the order
            view = self.lv.lab.receive_specimen(actor, order_id, spec, tube_is_filler=True)
        except NotFound:
            raise m.invalid("Specimen.request[0]", "no such ServiceRequest") from None
        except FillerNumberTaken as exc:
            raise number_taken(exc, "Specimen.accessionIdentifier") from None
        except InvalidField as exc:
            raise fhir_invalid(InvalidRecord([exc]), self.rtype, SPECIMEN_ELEMENTS) from None
        except InvalidRecord as exc:
            raise fhir_invalid(exc, self.rtype, SPECIMEN_ELEMENTS) from None
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
                                         limit=10_000, specimens=True):
            found.extend(specimen_to_fhir(s) for s in o.specimens)
        return SearchResult(found[q.offset:q.offset + q.count], len(found))


# -- Observation ----------------------------------------------------------------------------
def observation_to_fhir(v: ObservationView) -> dict[str, Any]:
    o = v.observation
    res: dict[str, Any] = {
        "resourceType": "Observation", "id": ids.to_fhir(v.observation_id),
        "meta": {"lastUpdated": _instant(v.updated_at)},
        "status": v.status, "category": [OBS_CATEGORY],
        "code": {"coding": [{"system": ids.LOINC_SYSTEM, "code": o.code, "display": o.display}],
                 "text": o.name},
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
    return versioned(res, *observation_markers({"status": v.status, "revision": v.revision,
                                                "updated_at": v.updated_at}))


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


def _effective(v: ObservationView) -> datetime:
    """Observation.effective[x] as projected: when it was observed, else recorded (UTC)."""
    d = v.observation.observed_at or v.created_at
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


def _within(d: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or d >= since) and (until is None or d < until)


def _as_outcome(exc: InvalidRecord | InvalidField) -> FhirError:
    """422 naming ``Observation.<element>`` for each refused field (one resource)."""
    errors = exc.errors if isinstance(exc, InvalidRecord) else [exc]
    return fhir_invalid(InvalidRecord(list(errors)), "Observation", RESULT_ELEMENTS)


class ObservationHandler:
    rtype = "Observation"
    search_params: Mapping[str, str] = {"patient": "reference", "subject": "reference",
                                        "code": "token", "date": "date", "status": "token"}

    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def version(self, actor: Actor, fhir_id: str) -> tuple[str, str | None]:
        try:
            c = self.lv.lab.change_markers(actor, "observation", _lab_id(fhir_id, "obs", self.rtype))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None
        return version_id(self.rtype, fhir_id, *observation_markers(c)), _instant(c["updated_at"])

    def read(self, actor: Actor, fhir_id: str, for_update: bool = False) -> dict[str, Any]:
        try:
            return observation_to_fhir(self.lv.lab.get_observation(
                actor, _lab_id(fhir_id, "obs", self.rtype), for_update=for_update))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        try:
            return self.create_many(actor, [resource])[0]
        except InvalidRecord as exc:
            raise _as_outcome(exc) from None

    def create_many(self, actor: Actor, resources: Sequence[Mapping[str, Any]]) -> list[str]:
        """Results of one order entered together (one lab call: one gate decision)."""
        order_ids = {_order_of_observation(r) for r in resources}
        if len(order_ids) != 1:
            raise m.invalid("Observation.basedOn", "results entered together share one order")
        bad = [InvalidField(f"results[{k}].status", "results are entered preliminary; they "
                            "become final when the DiagnosticReport is validated", "")
               for k, r in enumerate(resources) if r.get("status") != "preliminary"]
        if bad:     # indexed, so that a transaction names each entry at fault
            raise InvalidRecord(bad)
        try:
            views = self.lv.lab.enter_results(actor, order_ids.pop(),
                                              [result_from_fhir(r) for r in resources])
        except NotFound:
            raise m.invalid("Observation.basedOn[0]", "no such ServiceRequest") from None
        except InvalidRecord as exc:
            if len(resources) > 1:
                raise        # a transaction locates each result's entry (server.py)
            raise fhir_invalid(exc, self.rtype, RESULT_ELEMENTS) from None
        return [v.observation_id for v in views]

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        """Before validation: re-enter the value. After publication (status amended or
        corrected): amend, with the reason in ``note``."""
        oid = _lab_id(fhir_id, "obs", self.rtype)
        try:
            current = self.lv.lab.get_observation(actor, oid)
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None
        result = result_from_fhir(resource)
        if result["code"] != current.observation.code:
            raise m.invalid("Observation.code", "the test code of a result does not change")
        status = resource.get("status")
        if status == "preliminary" and current.status == "preliminary":
            try:
                self.lv.lab.enter_results(actor, current.order_id, [result])
            except InvalidRecord as exc:
                raise _as_outcome(exc) from None
        elif status in ("amended", "corrected"):
            reason = result.pop("comment", None)
            if reason is None or not reason.strip():    # blank: no reason either
                raise m.invalid("Observation.note", "an amendment needs its reason in note")
            try:
                self.lv.lab.amend(actor, oid, result, reason)
            except (InvalidRecord, InvalidField) as exc:
                raise _as_outcome(exc) from None
        else:
            raise FhirError(422, "business-rule", f"a {current.status} result cannot be sent "
                            f"as {status}: re-enter preliminary results, or amend published "
                            "ones (status amended, reason in note)", ["Observation.status"])

    def search(self, actor: Actor, q: Query) -> SearchResult:
        from labvault.interop.fhir.server import SearchResult, tenant_of
        patient_id = patient_param(q, required=True)
        codes = loinc_codes(q)
        since, until = date_window("date", q.params.get("date") or [])
        # `date` is Observation.effective (search parameter observation-date): the time
        # sealed with the result, so it is compared after opening, as codes are
        views = self.lv.lab.list_observations(actor, tenant_of(actor), patient_id=patient_id,
                                              limit=10_000)
        status = q.one("status")
        found = [v for v in views if (status is None or v.status in status.split(","))
                 and coded_as(codes, v.observation.code)
                 and _within(_effective(v), since, until)]
        page = found[q.offset:q.offset + q.count]
        return SearchResult([observation_to_fhir(v) for v in page], len(found))


def loinc_codes(q: Query) -> list[Token] | None:
    """The ``code`` alternatives of a lab search (comma: or), or None without ``code``.
    labvault's tests are LOINC codes: another system is refused, not answered with 0."""
    value = q.one("code")
    return None if value is None else tokens_in("code", value, (ids.LOINC_SYSTEM,))


def coded_as(codes: list[Token] | None, *loinc: str) -> bool:
    """Whether a resource coded with these LOINC codes matches the ``code`` search
    (``http://loinc.org|`` matches any of them)."""
    return codes is None or any(t.matches(ids.LOINC_SYSTEM, c) for t in codes for c in loinc)


# -- DiagnosticReport -----------------------------------------------------------------------
def _report_effective(r: ReportView) -> datetime:
    """DiagnosticReport.effective[x] as projected: the clinically relevant time of a lab
    report, when its specimen was collected (the earliest, if several); without a specimen,
    when the order was entered."""
    d = r.collected_at or r.created_at
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


def report_issued(r: ReportView) -> datetime | None:
    """DiagnosticReport.issued: "the date and time that this version of the report was made
    available" (R4). Its publication; after an amendment (a result corrected, or the
    conclusion rewritten, after publication: available at once, the report stays
    published), the latest amendment's -- the workflow's ``amended`` step, whose last entry
    is the latest. None before publication (a validated report not yet published)."""
    if r.issued_at is None:
        return None
    amended = r.steps.get("amended")
    times = [r.issued_at] if amended is None else [r.issued_at, amended.at]
    return max(d if d.tzinfo is not None else d.replace(tzinfo=UTC) for d in times)


def diagnostic_report_to_fhir(r: ReportView) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": ids.to_fhir(r.report_id),
        "meta": {"lastUpdated": _instant(r.updated_at)},
        "status": r.status, "category": [REPORT_CATEGORY], "code": REPORT_CODE,
        "subject": _ref("Patient", r.patient_id),
        "basedOn": [_ref("ServiceRequest", r.order_id)],
        "effectiveDateTime": _instant(_report_effective(r)),
    }
    issued = report_issued(r)
    if issued is not None:
        res["issued"] = _instant(issued)
    results = [_ref("Observation", o.observation_id) for o in r.observations
               if o.status != "cancelled"]
    if results:
        res["result"] = results
    if r.conclusion:
        res["conclusion"] = r.conclusion
    return versioned(res, *report_markers({
        "status": r.status, "updated_at": r.updated_at, "issued_at": r.issued_at,
        "observations": [(o.observation_id, o.status, o.revision) for o in r.observations],
        "specimens": [s.specimen_id for s in r.specimens]}))


class DiagnosticReportHandler:
    rtype = "DiagnosticReport"
    search_params: Mapping[str, str] = {"patient": "reference", "subject": "reference",
                                        "code": "token", "date": "date", "status": "token"}

    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def version(self, actor: Actor, fhir_id: str) -> tuple[str, str | None]:
        try:
            c = self.lv.lab.change_markers(actor, "report", _lab_id(fhir_id, "rep", self.rtype))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None
        return version_id(self.rtype, fhir_id, *report_markers(c)), _instant(c["updated_at"])

    def read(self, actor: Actor, fhir_id: str, for_update: bool = False) -> dict[str, Any]:
        try:
            return diagnostic_report_to_fhir(self.lv.lab.get_report(
                actor, _lab_id(fhir_id, "rep", self.rtype), for_update=for_update))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None

    def _apply(self, actor: Actor, order_id: str, resource: Mapping[str, Any]) -> str:
        """Bring the order's report to the sent status: ``final`` = technical and
        biological validation (biologist) with the conclusion. Always called inside a
        transaction: a check that fails after the validation rolls it back."""
        status = resource.get("status")
        if status not in REPORT_STATUSES:
            # the R4B models do not check bound codes: an unknown status is not a transition
            raise FhirError(422, "code-invalid", f"DiagnosticReport.status {status!r} is not a "
                            "code of http://hl7.org/fhir/diagnostic-report-status",
                            ["DiagnosticReport.status"])
        try:
            order_status, report_id = self.lv.lab.order_status(actor, order_id)
        except NotFound:
            raise m.invalid("DiagnosticReport.basedOn[0]", "no such ServiceRequest") from None
        current = L.REPORT_STATUS[order_status]
        unchanged = status == current or (
            status in ("registered", "partial", "preliminary")
            and current in ("registered", "preliminary"))
        if unchanged:
            report = self.lv.lab.get_report_by_order(actor, order_id)
            # a report sent back as read is unchanged (PUT is idempotent); a new conclusion
            # is given with the biological validation, never slipped in afterwards
            if status != "cancelled" and (resource.get("conclusion") or None) not in (
                    None, report.conclusion):       # (a cancelled one's is its reason)
                raise m.not_supported("DiagnosticReport.conclusion", (
                    "the conclusion is given with the final report" if current != "final"
                    else "the conclusion of a validated report is not changed here"))
        elif status == "final" and current in ("registered", "preliminary"):
            # technical validation (if the results are preliminary), then biological
            report = self.lv.lab.validate_final(actor, order_id, resource.get("conclusion"))
        elif status == "cancelled":
            # R4 DiagnosticReport has no note: the reason comes in the conclusion
            reason = resource.get("conclusion")
            if not isinstance(reason, str) or not reason.strip():
                raise m.invalid("DiagnosticReport.conclusion", "a cancellation needs its "
                                "reason in conclusion (or revoke the ServiceRequest, reason "
                                "in note)")
            self.lv.lab.cancel(actor, order_id, reason)
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
        try:
            rep = self.lv.lab.get_report(actor, _lab_id(fhir_id, "rep", self.rtype))
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None
        self._apply(actor, rep.order_id, resource)

    def search(self, actor: Actor, q: Query) -> SearchResult:
        from labvault.interop.fhir.server import SearchResult, tenant_of
        patient_id = patient_param(q, required=True)
        status = q.one("status")
        codes = loinc_codes(q)
        # `date` is DiagnosticReport.effective (search parameter clinical-date): the
        # specimen's collection, sealed with it, so compared after opening, as shown
        since, until = date_window("date", q.params.get("date") or [])
        reports = self.lv.lab.list_reports(actor, tenant_of(actor), patient_id=patient_id,
                                           limit=10_000)
        found = []
        for r in reports:
            if status is not None and r.status not in status.split(","):
                continue
            if not coded_as(codes, REPORT_LOINC, *r.tests):
                continue
            if not _within(_report_effective(r), since, until):
                continue
            found.append(r)
        page = found[q.offset:q.offset + q.count]
        return SearchResult([diagnostic_report_to_fhir(r) for r in page], len(found))


def lab_handlers(lv: Labvault) -> Iterable[Handler]:
    return (ServiceRequestHandler(lv), SpecimenHandler(lv), ObservationHandler(lv),
            DiagnosticReportHandler(lv))
