"""The route × role × tenant matrix, generated from the application's own route table.

Every route of the app must have an entry in ``MATRIX`` (a new route without one fails
the suite). Each entry builds a request for a role of laboratory A against a target in
laboratory A ("own") and, where the route takes an id, in laboratory B ("other"), and
states the expected status for every role and for an anonymous caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from labvault.api.security import WEB_PREFIXES
from labvault.domain.actors import Actor
from tests.access.conftest import PASSWORD, Lab, World, patient_json

ROLES = ("reception", "technician", "biologist", "lab_admin", "dpo", "patient",
         "platform_operator")
ANON = "anonymous"
Expect = int | tuple[int, ...]
Req = tuple[str, dict[str, Any] | None]          # url, json body


def allow(roles: tuple[str, ...], ok: int, deny: Expect = 403, anon: Expect = 401,
          **override: Expect) -> dict[str, Expect]:
    out: dict[str, Expect] = {r: (ok if r in roles else deny) for r in ROLES}
    out[ANON] = anon
    out.update(override)
    return out


def everyone(ok: Expect, anon: Expect = 401) -> dict[str, Expect]:
    return {**{r: ok for r in ROLES}, ANON: anon}


@dataclass
class Ctx:
    w: World
    n: int = 0
    patient_ids: dict[str, str] = field(default_factory=dict)
    cache: dict[str, str] = field(default_factory=dict)

    def fresh_patient(self, lab: str = "a") -> str:
        self.n += 1
        tenant = (self.w.a if lab == "a" else self.w.b).tenant_id
        return self.w.lv.patients.register(Actor.operator(), tenant,
                                           patient_json(500 + self.n, seed=99))

    def fresh_account(self, lab: str = "a", enrolled: bool = True) -> str:
        self.n += 1
        tenant = (self.w.a if lab == "a" else self.w.b).tenant_id
        return str(self.w.lv.accounts.create(Actor.operator(), tenant, ["technician"],
                                             "Paul Renaud", f"paul.renaud{self.n}@example.org",
                                             password=PASSWORD if enrolled else None)["id"])

    def email(self, role: str) -> str:
        return self.w.platform_email if role == "platform_operator" else self.w.a.emails[role]

    def code(self, role: str) -> str | None:
        return None if role == "patient" else self.w.clock.code()

    def own_patient(self, role: str) -> str:
        return self.w.a.patients[0]


Build = Callable[[Ctx, str, str], Req]      # ctx, role, lab ("a" own | "b" other)


@dataclass
class Case:
    build: Build
    own: dict[str, Expect]
    other: dict[str, Expect] | None = None
    fresh_token: bool = False                # the call ends the session: use a new one
    form: bool = False                       # send the body as an HTML form (web door)


def _login(c: Ctx, role: str, lab: str) -> Req:
    if role == ANON:
        return "/api/v1/auth/login", {"email": "nobody.x@example.org", "password": "x"}
    return "/api/v1/auth/login", {"email": c.email(role), "password": PASSWORD,
                                  "totp": c.code(role)}


def _user_target(c: Ctx, role: str, lab: str) -> str:
    return c.fresh_account(lab)


def _patient_target(c: Ctx, role: str, lab: str) -> str:
    if lab == "b":
        return c.w.b.patients[0]
    return c.own_patient(role)


def _alert_store(c: Ctx) -> Any:
    from labvault.services.alerts import AlertService
    if not isinstance(c.w.lv.alerts, AlertService):   # the guard's alert store
        c.w.lv.alerts = c.w.lv.gate.alerts = AlertService(c.w.lv)
    return c.w.lv.alerts


def _panic_alert(c: Ctx, lab: str) -> str:
    """A fresh open panic-value alert of the lab (a clinical alert: biologists, DPO and
    lab administrators of that lab may acknowledge it; every call needs a new one)."""
    c.n += 1
    lab_ = c.w.a if lab == "a" else c.w.b
    with c.w.lv.begin() as conn:
        aid = _alert_store(c).raise_alert(
            conn, lab_.tenant_id, "panic-value", "critical", None,
            {"patient_id": lab_.patients[0], "order_id": f"ord_matrix{c.n}",
             "observation_id": f"obs_matrix{c.n}"}, subject=f"matrix-{c.n}")
    return str(aid)


def _merge_pair(c: Ctx, role: str, lab: str) -> Req:
    """A merge request: a fresh record of the lab and the same person registered again
    without identifiers (a duplicate), its id in the body."""
    c.n += 1
    tenant = (c.w.a if lab == "a" else c.w.b).tenant_id
    person = patient_json(1500 + c.n, seed=98)
    keep = c.w.lv.patients.register(Actor.operator(), tenant, person)
    dup = c.w.lv.patients.register(Actor.operator(), tenant, {
        k: v for k, v in person.items() if k not in ("nir", "ins", "external_id")})
    return (f"/api/v1/patients/{keep}/merge",
            {"duplicate_id": dup, "reason": "même patiente, enregistrée deux fois"})


def _merge_form(req: Req) -> Req:
    """``_merge_pair`` as the console's merge form sends it."""
    url, body = req
    assert body is not None
    return (url.replace("/api/v1/patients/", "/console/patients/").replace("/merge", "/fusion"),
            {"doublon": body["duplicate_id"], "motif": body["reason"]})


ALERT_READERS = ("biologist", "lab_admin", "dpo")
# the outbox to the prescribers' systems (policy resource ``delivery``)
OUTBOX_ROLES = ("biologist", "lab_admin")


def _failed_delivery(c: Ctx, role: str, lab: str) -> str:
    """A failed message of the lab: a fresh one for a role whose resend succeeds (it
    moves the message on), else the lab's one (a refusal leaves it failed)."""
    from tests.web.helpers import failed_delivery
    key = f"failed-delivery-{lab}"
    if (lab == "a" and role in OUTBOX_ROLES) or key not in c.cache:
        _alert_store(c)
        c.cache[key] = failed_delivery(c.w, c.w.a if lab == "a" else c.w.b)[0]
    return c.cache[key]


def _fhir_cases() -> dict[tuple[str, str], Case]:
    """The FHIR door (docs/fhir.md): same tokens and policy; errors are OperationOutcomes.
    Platform accounts are refused (403) before any lookup; another lab's patient = 404."""
    from labvault.interop.fhir.ids import NIR_SYSTEM, to_fhir
    from labvault.interop.fhir.samples import patient_resource
    counter = iter(range(10_000))
    readers = ("reception", "technician", "biologist")

    def lab_of(c: Ctx, lab: str) -> Lab:
        return c.w.a if lab == "a" else c.w.b

    def search(c: Ctx, r: str, lab: str, path: str = "/fhir/R4/Patient") -> Req:
        return (f"{path}?identifier={NIR_SYSTEM}|{lab_of(c, lab).patient_data[0]['nir']}",
                None)

    def new_patient() -> dict[str, Any]:
        return patient_resource(patient_json(3000 + next(counter), seed=8))

    def bundle(c: Ctx, r: str, lab: str, path: str = "/fhir/R4") -> Req:
        return path, {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:0d9c2f7e-0000-4000-8000-000000000001",
             "resource": new_patient(), "request": {"method": "POST", "url": "Patient"}}]}

    def put(c: Ctx, r: str, lab: str) -> Req:
        fid = to_fhir(c.fresh_patient(lab))
        return f"/fhir/R4/Patient/{fid}", {**new_patient(), "id": fid}

    writers = ("reception", "biologist")
    out: dict[tuple[str, str], Case] = {
        ("GET", "/fhir/R4/metadata"): Case(lambda c, r, lab: ("/fhir/R4/metadata", None),
                                           allow(ROLES, 200, platform_operator=200)),
        ("GET", "/fhir/R4/{rtype}"): Case(search, allow(readers, 200), allow(readers, 200)),
        ("POST", "/fhir/R4/{rtype}/_search"): Case(
            lambda c, r, lab: search(c, r, lab, "/fhir/R4/Patient/_search"),
            allow(readers, 200), allow(readers, 200)),
        ("GET", "/fhir/R4/{rtype}/{fhir_id}"): Case(
            lambda c, r, lab: (f"/fhir/R4/Patient/{to_fhir(_patient_target(c, r, lab))}", None),
            allow((*readers, "patient"), 200), allow((), 0, deny=404, platform_operator=403)),
        ("POST", "/fhir/R4"): Case(bundle, allow(writers, 200)),
        ("POST", "/fhir/R4/"): Case(lambda c, r, lab: bundle(c, r, lab, "/fhir/R4/"),
                                    allow(writers, 200)),
        ("POST", "/fhir/R4/{rtype}"): Case(lambda c, r, lab: ("/fhir/R4/Patient", new_patient()),
                                           allow(writers, 201)),
        # a FHIR update rewrites the whole record: it needs every category (biologist);
        # another laboratory's patient is answered as an absent id: 405, update does not
        # create (http.html#update)
        ("PUT", "/fhir/R4/{rtype}/{fhir_id}"): Case(
            put, allow(("biologist",), 200), allow((), 0, deny=405, platform_operator=403)),
    }
    for method in ("GET", "POST", "PUT"):       # no FHIR endpoint at that path
        out[(method, "/fhir/R4/{rest:path}")] = Case(
            lambda c, r, lab: ("/fhir/R4/Patient/x/y/z", None),
            allow(ROLES, 404, platform_operator=404))
    for method in ("PATCH", "DELETE", "OPTIONS"):   # a resource's URL, not that method
        out[(method, "/fhir/R4/{rest:path}")] = Case(
            lambda c, r, lab: ("/fhir/R4/Patient/x", None),
            allow(ROLES, 405, platform_operator=405))
    return out


def _lab_cases() -> dict[tuple[str, str], Case]:
    """The lab workflow's REST steps (docs/lab.md): a fresh order at the right step per
    call of the patient that is not the portal account's. The role checks of the service
    come first (403 whatever the lab); then another lab's order answers 404 like an
    absent one, except to a platform account (403: no lab, refused by the gate)."""
    from tests.web.helpers import NORMAL, REQ, SPEC, import_issue, order

    def lab_of(c: Ctx, lab: str) -> Lab:
        return c.w.a if lab == "a" else c.w.b

    def at(step: str, path: str = "", body: dict[str, Any] | None = None) -> Build:
        def build(c: Ctx, r: str, lab: str) -> Req:
            o = order(c.w, lab_of(c, lab), lab_of(c, lab).patients[1], step=step)
            oid = o[0].order_id if isinstance(o, list) else o.order_id
            return f"/api/v1/orders/{oid}{path}", body
        return build

    def tube(c: Ctx, lab: str) -> dict[str, Any]:       # a fresh tube number each call
        c.n += 1
        return {**SPEC, "accession_number": f"MTX-API-{lab}-{c.n}"}

    def new_order(c: Ctx, r: str, lab: str) -> Req:
        return "/api/v1/orders", {"patient_id": lab_of(c, lab).patients[1], "request": REQ,
                                  "specimen": tube(c, lab)}

    def reception(c: Ctx, r: str, lab: str) -> Req:
        return at("registered", "/specimens", tube(c, lab))(c, r, lab)

    def amendment(c: Ctx, r: str, lab: str) -> Req:
        rep = order(c.w, lab_of(c, lab), lab_of(c, lab).patients[1])
        return (f"/api/v1/observations/{rep.observations[0].observation_id}/amendment",
                {"result": {"code": "718-7", "value": 12.9, "unit": "g/dL"},
                 "reason": "erreur de saisie"})

    def issue(path: str = "", body: dict[str, Any] | None = None) -> Build:
        def build(c: Ctx, r: str, lab: str) -> Req:
            (iid,) = import_issue(c.w, lab_of(c, lab)).issue_ids
            return f"/api/v1/import-issues/{iid}{path}", body
        return build

    other_lab = allow((), 0, deny=404, platform_operator=403)
    tech = ("technician", "biologist")
    # the queue: policy rows for reception (the patient as sent, no result), technicians
    # and biologists; storing or discarding results is a clinical write (not reception)
    queue = ("reception", *tech)
    return {
        ("GET", "/api/v1/import-issues"): Case(
            lambda c, r, lab: ("/api/v1/import-issues", None), allow(queue, 200)),
        ("GET", "/api/v1/import-issues/{issue_id}"): Case(issue(), allow(queue, 200),
                                                          other_lab),
        ("POST", "/api/v1/import-issues/{issue_id}/resolution"): Case(
            lambda c, r, lab: issue("/resolution", {"patient_id": lab_of(c, lab).patients[1]})(
                c, r, lab), allow(tech, 200), other_lab),
        ("POST", "/api/v1/import-issues/{issue_id}/discard"): Case(
            issue("/discard", {"reason": "doublon d'un résultat papier"}), allow(tech, 200),
            other_lab),
        # the policy's order writers; another lab's patient: 404 like an absent one
        ("POST", "/api/v1/orders"): Case(new_order, allow(("reception", "biologist"), 201),
                                         allow(("reception", "biologist"), 404)),
        # the order's awaited specimen: the roles the policy lets write specimens
        ("POST", "/api/v1/orders/{order_id}/specimens"): Case(
            reception, allow(("reception", *tech), 201), other_lab),
        ("POST", "/api/v1/orders/{order_id}/results"): Case(
            at("received", "/results", {"results": NORMAL}), allow(tech, 200), other_lab),
        ("GET", "/api/v1/orders/{order_id}"): Case(at("published"), allow(tech, 200),
                                                   other_lab),
        ("POST", "/api/v1/orders/{order_id}/technical-validation"): Case(
            at("preliminary", "/technical-validation", {}), allow(tech, 200),
            allow((), 0, deny=403, technician=404, biologist=404)),
        ("POST", "/api/v1/orders/{order_id}/biological-validation"): Case(
            at("technical", "/biological-validation", {"conclusion": "RAS"}),
            allow(("biologist",), 200), allow((), 0, deny=403, biologist=404)),
        ("POST", "/api/v1/orders/{order_id}/publication"): Case(
            at("final", "/publication", {}), allow(("biologist",), 200), other_lab),
        # a specimen decision: the desk, the bench, the biologist (before any result here)
        ("POST", "/api/v1/orders/{order_id}/rejection"): Case(
            at("received", "/rejection", {"reason": "hemolysed"}),
            allow(("reception", *tech), 200), other_lab),
        ("POST", "/api/v1/orders/{order_id}/conclusion"): Case(
            at("published", "/conclusion", {"conclusion": "RAS", "reason": "relecture"}),
            allow(("biologist",), 200), allow((), 0, deny=403, biologist=404)),
        ("POST", "/api/v1/observations/{observation_id}/amendment"): Case(
            amendment, allow(("biologist",), 200), allow((), 0, deny=403, biologist=404)),
    }


def _web_cases() -> dict[tuple[str, str], Case]:
    """The web door (docs/web.md): HTML pages on the same sessions (a bearer token needs no
    CSRF field; cookie sessions do, see tests/web). Anonymous callers are sent to /login
    (303); the portal is for patient accounts, the console for laboratory staff (403)."""
    from tests.web.helpers import ORDER_FORM, import_issue, order, registration_form
    staff = ("reception", "technician", "biologist", "lab_admin", "dpo")
    readers = ("reception", "technician", "biologist")

    def lab_of(c: Ctx, lab: str) -> Lab:
        return c.w.a if lab == "a" else c.w.b

    def published(c: Ctx, lab: str) -> str:
        key = f"report-{lab}"
        if key not in c.cache:      # one published report of the lab's first patient
            c.cache[key] = order(c.w, lab_of(c, lab), lab_of(c, lab).patients[0]).report_id
        return c.cache[key]

    def report(c: Ctx, r: str, lab: str) -> Req:
        return f"/portail/rapports/{published(c, lab)}.pdf", None

    def staff_report(c: Ctx, r: str, lab: str) -> Req:
        return f"/console/rapports/{published(c, lab)}.pdf", None

    def get(path: str) -> Build:
        return lambda c, r, lab: (path, None)

    def alerts(c: Ctx, r: str, lab: str) -> Req:
        _alert_store(c)
        return "/console/alertes", None

    def at(step: str, path: str, body: dict[str, Any] | None = None) -> Build:
        def build(c: Ctx, r: str, lab: str) -> Req:
            o = order(c.w, lab_of(c, lab), lab_of(c, lab).patients[1], step=step)
            return path.format(o[0].order_id if isinstance(o, list) else o.order_id), body
        return build

    def correction(c: Ctx, r: str, lab: str) -> Req:
        rep = order(c.w, lab_of(c, lab), lab_of(c, lab).patients[1], step="published")
        k = next(o.observation_id for o in rep.observations
                 if o.observation.code == "2823-3")
        return (f"/console/demandes/{rep.order_id}/correction",
                {"observation_id": k, "value": "4,0", "reason": "relecture"})

    def new_patient(c: Ctx, r: str, lab: str) -> Req:      # a new person each call
        c.n += 1
        return "/console/nouveau-patient", registration_form(patient_json(700 + c.n, seed=97))

    def new_order(c: Ctx, r: str, lab: str) -> Req:
        return f"/console/patients/{_patient_target(c, r, lab)}/demande", ORDER_FORM

    def edit(c: Ctx, r: str, lab: str) -> Req:      # the record's form, a new phone number
        return (f"/console/patients/{_patient_target(c, r, lab)}/modifier",
                {**registration_form(lab_of(c, lab).patient_data[0]), "phone": "06 11 22 33 44"})

    def reception(c: Ctx, r: str, lab: str) -> Req:        # a fresh order and tube each call
        c.n += 1
        return (at("registered", "/console/demandes/{}/reception")(c, r, lab)[0],
                {"specimen_type": "BLD", "collected_at": "2026-03-01T08:30",
                 "accession_number": f"MTX-{lab}-{c.n}"})

    def issue(action: str, body: dict[str, Any]) -> Build:     # a fresh open issue per call
        def build(c: Ctx, r: str, lab: str) -> Req:
            (iid,) = import_issue(c.w, lab_of(c, lab)).issue_ids
            return f"/console/messages/{iid}/{action}", body
        return build

    desk = ("reception", "biologist")      # the roles the policy lets write patients, orders
    receivers = ("reception", "technician", "biologist")    # ... and specimens
    bench = ("technician", "biologist")    # the roles the policy lets store or discard results
    patient_only = allow(("patient",), 200, anon=303)
    return {
        ("GET", "/"): Case(get("/"), everyone(303, 303)),
        ("GET", "/login"): Case(get("/login"), everyone(200, 200)),
        # no login-CSRF cookie in these calls: every login form post is refused
        ("POST", "/login"): Case(
            lambda c, r, lab: ("/login", {"email": c.email(r) if r in ROLES else "x@example.org",
                                          "password": PASSWORD, "totp": c.code(r) or ""}),
            everyone(403, 403), form=True),
        # the enrolment link's page: public; without its CSRF cookie every post is refused
        ("GET", "/enrol"): Case(get("/enrol"), everyone(200, 200)),
        ("POST", "/enrol"): Case(
            lambda c, r, lab: ("/enrol", {"token": "not-a-link", "password": PASSWORD,
                                          "again": PASSWORD}),
            everyone(403, 403), form=True),
        # second factor (after a reset; patients may opt in): staff here have one (409
        # page), a patient gets a QR code and a wrong code is refused; anonymous: /login
        ("GET", "/mfa"): Case(get("/mfa"), allow(("patient",), 200, deny=409, anon=303)),
        ("POST", "/mfa"): Case(lambda c, r, lab: ("/mfa", {"totp": "000000"}),
                               allow(("patient",), 422, deny=409, anon=303), form=True),
        ("POST", "/logout"): Case(get("/logout"), everyone(303, 303), fresh_token=True,
                                  form=True),
        ("GET", "/portail"): Case(get("/portail"), patient_only),
        ("GET", "/portail/rapports/{report_id}.pdf"): Case(
            report, patient_only, allow((), 0, deny=403, patient=404)),
        ("GET", "/portail/acces"): Case(get("/portail/acces"), patient_only),
        ("GET", "/portail/donnees.json"): Case(get("/portail/donnees.json"), patient_only),
        ("GET", "/portail/effacement"): Case(get("/portail/effacement"), patient_only),
        ("POST", "/portail/effacement"): Case(get("/portail/effacement"), patient_only,
                                              form=True),
        ("GET", "/console"): Case(get("/console"), allow(staff, 200, anon=303)),
        ("POST", "/console/recherche"): Case(
            lambda c, r, lab: ("/console/recherche", {"nir": lab_of(c, lab).patient_data[0]["nir"]}),
            allow(readers, 200, anon=303), allow(readers, 200), form=True),
        ("GET", "/console/patients/{patient_id}"): Case(
            lambda c, r, lab: (f"/console/patients/{_patient_target(c, r, lab)}", None),
            allow(readers, 200, anon=303),
            allow((), 0, deny=404, platform_operator=403, patient=403)),
        # "Historique des résultats": the roles the policy lets read reports (the gate's
        # refusal for the others); another lab's patient: the same 404 as an absent one
        ("GET", "/console/patients/{patient_id}/historique"): Case(
            lambda c, r, lab: (f"/console/patients/{_patient_target(c, r, lab)}/historique",
                               None),
            allow(("technician", "biologist"), 200, anon=303),
            allow((), 0, deny=404, platform_operator=403, patient=403)),
        # the roles the policy lets read reports (resource report): to send to the prescriber
        ("GET", "/console/rapports/{report_id}.pdf"): Case(
            staff_report, allow(("technician", "biologist"), 200, anon=303),
            allow((), 0, deny=404, platform_operator=403, patient=403)),
        ("GET", "/console/validation"): Case(get("/console/validation"),
                                             allow(("biologist",), 200, anon=303)),
        ("POST", "/console/validation"): Case(get("/console/validation"),
                                              allow(("biologist",), 200, anon=303), form=True),
        # biologists: the clinical alerts (panic values); DPO and lab admins: every alert
        ("GET", "/console/alertes"): Case(alerts, allow(ALERT_READERS, 200, anon=303)),
        # a fresh technically validated order per call (validation moves it on)
        ("POST", "/console/validation/{order_id}"): Case(
            lambda c, r, lab: (f"/console/validation/{order(c.w, lab_of(c, lab), lab_of(c, lab).patients[1], step='technical').order_id}", None),  # noqa: E501
            allow(("biologist",), 200, anon=303), allow((), 0, deny=403, biologist=404),
            form=True),
        # the lab workflow's pages: a fresh order at the right step per call
        ("GET", "/console/technique"): Case(get("/console/technique"),
                                            allow(("technician", "biologist"), 200, anon=303)),
        ("POST", "/console/technique/{order_id}"): Case(
            at("preliminary", "/console/technique/{}"), allow(("technician", "biologist"), 200,
                                                              anon=303),
            allow((), 0, deny=403, technician=404, biologist=404), form=True),
        ("POST", "/console/demandes/{order_id}/refus"): Case(
            at("received", "/console/demandes/{}/refus", {"reason": "hemolysed"}),
            allow(("reception", "technician", "biologist"), 200, anon=303),
            allow(staff, 404, deny=403), form=True),
        ("POST", "/console/diffusion/{order_id}"): Case(
            at("final", "/console/diffusion/{}"), allow(("biologist",), 200, anon=303),
            allow((), 0, deny=403, biologist=404), form=True),
        ("POST", "/console/demandes/{order_id}/conclusion"): Case(
            at("published", "/console/demandes/{}/conclusion",
               {"conclusion": "RAS", "reason": "relecture"}),
            allow(("biologist",), 303, anon=303), allow((), 0, deny=403, biologist=404),
            form=True),
        ("POST", "/console/demandes/{order_id}/correction"): Case(
            correction, allow(("biologist",), 303, anon=303),
            allow((), 0, deny=403, biologist=404), form=True),
        # the reception desk: registration, and an order with its specimen (docs/web.md)
        ("GET", "/console/nouveau-patient"): Case(get("/console/nouveau-patient"),
                                                  allow(desk, 200, anon=303)),
        ("POST", "/console/nouveau-patient"): Case(new_patient, allow(desk, 200, anon=303),
                                                   form=True),
        ("GET", "/console/patients/{patient_id}/demande"): Case(
            lambda c, r, lab: (f"/console/patients/{_patient_target(c, r, lab)}/demande",
                               None),
            allow(desk, 200, anon=303), allow(desk, 404, deny=403)),
        ("POST", "/console/patients/{patient_id}/demande"): Case(
            new_order, allow(desk, 200, anon=303), allow(desk, 404, deny=403), form=True),
        # "Modifier" a record: the roles the policy lets write patients; then the record's page
        ("GET", "/console/patients/{patient_id}/modifier"): Case(
            lambda c, r, lab: (f"/console/patients/{_patient_target(c, r, lab)}/modifier",
                               None),
            allow(desk, 200, anon=303), allow(desk, 404, deny=403)),
        ("POST", "/console/patients/{patient_id}/modifier"): Case(
            edit, allow(desk, 303, anon=303), allow(desk, 404, deny=403), form=True),
        # an order's specimen received later: the roles the policy lets write specimens
        ("GET", "/console/demandes/{order_id}/reception"): Case(
            at("registered", "/console/demandes/{}/reception"),
            allow(receivers, 200, anon=303), allow(receivers, 404, deny=403)),
        ("POST", "/console/demandes/{order_id}/reception"): Case(
            reception, allow(receivers, 303, anon=303), allow(receivers, 404, deny=403),
            form=True),
        # the import-issues queue ("Messages d'automate"): the roles with an import-issue
        # row read it; storing or discarding results is the bench's and the biologist's;
        # the lab administrator (identity vigilance) sees its merge requests (ADT^A40) there
        ("GET", "/console/messages"): Case(get("/console/messages"),
                                           allow((*readers, "lab_admin"), 200, anon=303)),
        ("POST", "/console/messages/{issue_id}/recherche"): Case(
            issue("recherche", {"birth_name": "BARRAULT", "first_name": "Denis",
                                "birth_date": "1961-07-03"}),
            allow(bench, 200, anon=303), allow(bench, 404, deny=403), form=True),
        ("POST", "/console/messages/{issue_id}/rattacher"): Case(
            lambda c, r, lab: issue("rattacher", {"patient_id": lab_of(c, lab).patients[1]})(
                c, r, lab),
            allow(bench, 200, anon=303), allow(bench, 404, deny=403), form=True),
        ("POST", "/console/messages/{issue_id}/classer"): Case(
            issue("classer", {"reason": "doublon d'un résultat papier"}),
            # the lab administrator may decline a merge request: the service decides by
            # the issue's kind (these are results: refused), another lab's is absent
            allow(bench, 200, anon=303), allow((*bench, "lab_admin"), 404, deny=403),
            form=True),
        # "Transmissions aux prescripteurs": the outbox's roles (policy resource delivery)
        ("GET", "/console/envois"): Case(get("/console/envois"),
                                         allow(("biologist", "lab_admin"), 200, anon=303)),
        # "Renvoyer au prescripteur": the outbox's roles (policy resource delivery); back
        # to the patient's page for a biologist, a notice for a lab administrator (who
        # reads no report); another lab's message: the same 404 as an absent one
        ("POST", "/console/envois/{outbox_id}/renvoi"): Case(
            lambda c, r, lab: (f"/console/envois/{_failed_delivery(c, r, lab)}/renvoi",
                               {"motif": "patient créé dans le logiciel du cabinet"}),
            allow(("biologist",), 303, anon=303, lab_admin=200),
            allow(staff, 404, deny=403), form=True),
        # "Fusionner un doublon": the identity vigilance referent (patient-merge write);
        # another lab's record: the same 404 as an absent one
        ("GET", "/console/fusion"): Case(get("/console/fusion"),
                                         allow(("lab_admin",), 200, anon=303)),
        ("GET", "/console/patients/{patient_id}/fusion"): Case(
            lambda c, r, lab: (f"/console/patients/{_merge_pair(c, r, lab)[0].split('/')[4]}"
                               "/fusion", None),
            allow(("lab_admin",), 200, anon=303), allow(("lab_admin",), 404, deny=403)),
        ("POST", "/console/patients/{patient_id}/fusion"): Case(
            lambda c, r, lab: _merge_form(_merge_pair(c, r, lab)),
            allow(("lab_admin",), 200, anon=303), allow(("lab_admin",), 404, deny=403),
            form=True),
        # the DPO's pages (policy resource audit); another laboratory's patient or
        # account: the refusal of an absent id next to the field (422)
        ("GET", "/console/journal-patient"): Case(
            lambda c, r, lab: (f"/console/journal-patient?patient={_patient_target(c, r, lab)}"
                               "&refus=oui", None),
            allow(("dpo",), 200, anon=303), allow(("dpo",), 422, deny=403)),
        ("GET", "/console/activite-utilisateur"): Case(
            lambda c, r, lab: ("/console/activite-utilisateur?compte="
                               f"{lab_of(c, lab).accounts['biologist']}", None),
            allow(("dpo",), 200, anon=303), allow(("dpo",), 422, deny=403)),
        ("GET", "/console/integrite-journal"): Case(get("/console/integrite-journal"),
                                                    allow(("dpo",), 200, anon=303)),
        ("POST", "/console/integrite-journal"): Case(get("/console/integrite-journal"),
                                                     allow(("dpo",), 200, anon=303), form=True),
        # a fresh panic-value alert per call; another lab's: the same 404 as an absent one
        ("POST", "/console/alertes/{alert_id}/prise-en-compte"): Case(
            lambda c, r, lab: (f"/console/alertes/{_panic_alert(c, lab)}/prise-en-compte",
                               None),
            allow(ALERT_READERS, 303, anon=303),
            allow((), 0, deny=403, biologist=404, lab_admin=404, dpo=404), form=True),
    }


MATRIX: dict[tuple[str, str], Case] = {
    ("GET", "/health"): Case(lambda c, r, lab: ("/health", None), everyone(200, 200)),
    ("GET", "/openapi.json"): Case(lambda c, r, lab: ("/openapi.json", None), everyone(200, 200)),
    ("GET", "/docs"): Case(lambda c, r, lab: ("/docs", None), everyone(200, 200)),
    ("GET", "/docs/oauth2-redirect"): Case(lambda c, r, lab: ("/docs/oauth2-redirect", None),
                                           everyone(200, 200)),
    ("GET", "/redoc"): Case(lambda c, r, lab: ("/redoc", None), everyone(200, 200)),
    ("POST", "/api/v1/auth/login"): Case(_login, everyone(200, 401)),
    ("POST", "/api/v1/auth/enrol"): Case(
        lambda c, r, lab: ("/api/v1/auth/enrol", {"token": "not-a-link", "password": PASSWORD}),
        everyone(401, 401)),
    ("POST", "/api/v1/auth/logout"): Case(lambda c, r, lab: ("/api/v1/auth/logout", None),
                                          everyone(204), fresh_token=True),
    ("POST", "/api/v1/auth/logout-all"): Case(
        lambda c, r, lab: ("/api/v1/auth/logout-all", None), everyone(200), fresh_token=True),
    ("POST", "/api/v1/auth/password"): Case(
        lambda c, r, lab: ("/api/v1/auth/password", {"current_password": "Wrong-Pass-123!",
                                                     "new_password": "Granit-Mouette-73-Cerf",
                                                     "totp": None}),
        everyone(401)),      # reaches the handler: wrong current password (own-session check)
    ("POST", "/api/v1/auth/reauth"): Case(
        lambda c, r, lab: ("/api/v1/auth/reauth", {"password": PASSWORD, "totp": c.code(r)}),
        everyone(204)),
    ("POST", "/api/v1/auth/mfa"): Case(lambda c, r, lab: ("/api/v1/auth/mfa", None),
                                       allow(("patient",), 200, deny=409)),
    ("POST", "/api/v1/auth/mfa/verify"): Case(
        lambda c, r, lab: ("/api/v1/auth/mfa/verify", {"totp": "000000"}),
        allow(("patient",), (401, 409), deny=409)),
    ("POST", "/api/v1/users"): Case(
        lambda c, r, lab: ("/api/v1/users", {"roles": ["technician"], "name": "Marc Vidal",
                                             "email": f"marc.vidal{c.n + 1000}{r}@example.org"}),
        allow(("lab_admin",), 201)),
    ("GET", "/api/v1/users"): Case(lambda c, r, lab: ("/api/v1/users?limit=5", None),
                                   allow(("lab_admin", "dpo"), 200)),
    ("GET", "/api/v1/users/{account_id}"): Case(
        lambda c, r, lab: (f"/api/v1/users/{(c.w.a if lab == 'a' else c.w.b).accounts['dpo']}",
                           None),
        allow(("lab_admin", "dpo"), 200), allow(("lab_admin", "dpo"), 404)),
    ("PUT", "/api/v1/users/{account_id}/roles"): Case(
        lambda c, r, lab: (f"/api/v1/users/{_user_target(c, r, lab)}/roles",
                           {"roles": ["technician", "reception"]}),
        allow(("lab_admin",), 200), allow(("lab_admin",), 404)),
    **{("POST", f"/api/v1/users/{{account_id}}/{op}"): Case(
        (lambda op_: lambda c, r, lab: (f"/api/v1/users/{_user_target(c, r, lab)}/{op_}",
                                        None))(op),
        allow(("lab_admin",), 200), allow(("lab_admin",), 404))
       for op in ("disable", "enable", "unlock", "reset-mfa", "reset-password")},
    ("POST", "/api/v1/users/{account_id}/reissue-enrolment"): Case(
        lambda c, r, lab: (f"/api/v1/users/{c.fresh_account(lab, enrolled=False)}"
                           "/reissue-enrolment", None),
        allow(("lab_admin",), 200), allow(("lab_admin",), 404)),
    ("POST", "/api/v1/patients"): Case(
        lambda c, r, lab: ("/api/v1/patients", patient_json(700 + c.n + ROLES.index(r)
                                                            if r in ROLES else 799, seed=5)),
        allow(("reception", "biologist"), 201)),
    ("GET", "/api/v1/patients"): Case(
        lambda c, r, lab: (f"/api/v1/patients?nir="
                           f"{(c.w.a if lab == 'a' else c.w.b).patient_data[0]['nir']}", None),
        allow(("reception", "technician", "biologist"), 200),
        allow(("reception", "technician", "biologist"), 200)),   # other lab: empty result
    ("GET", "/api/v1/patients/{patient_id}"): Case(
        lambda c, r, lab: (f"/api/v1/patients/{_patient_target(c, r, lab)}", None),
        allow(("reception", "technician", "biologist", "patient"), 200, platform_operator=404),
        allow((), 0, deny=404)),
    ("PUT", "/api/v1/patients/{patient_id}"): Case(
        lambda c, r, lab: (f"/api/v1/patients/{c.fresh_patient(lab)}",
                           patient_json(900 + c.n, seed=6)),
        allow(("reception", "biologist"), 204, platform_operator=404), allow((), 0, deny=404)),
    ("DELETE", "/api/v1/patients/{patient_id}"): Case(
        lambda c, r, lab: (f"/api/v1/patients/{c.fresh_patient(lab)}", None),
        allow(("biologist",), 200, platform_operator=404), allow((), 0, deny=404)),
    ("POST", "/api/v1/patients/{patient_id}/break-glass"): Case(
        lambda c, r, lab: (f"/api/v1/patients/{c.fresh_patient(lab)}/break-glass",
                           {"reason": "emergency: patient transferred to ICU tonight",
                            "password": PASSWORD, "totp": c.code(r)}),
        allow(("biologist", "dpo"), 200, platform_operator=404), allow((), 0, deny=404)),
    # identity vigilance: the lab administrator merges a fresh duplicate (the same person
    # registered again without identifiers) into a fresh record; another laboratory's
    # record is absent (404) to everyone, before any policy decision
    ("POST", "/api/v1/patients/{patient_id}/merge"): Case(
        _merge_pair, allow(("lab_admin",), 200, platform_operator=404),
        allow((), 0, deny=404)),
    # a patient's results over time: the roles the policy lets read reports (the gate
    # refuses the others); another laboratory's patient is absent (404) to its staff
    ("GET", "/api/v1/patients/{patient_id}/results"): Case(
        lambda c, r, lab: (f"/api/v1/patients/{_patient_target(c, r, lab)}/results", None),
        allow(("technician", "biologist"), 200),
        allow((), 0, deny=404, patient=403, platform_operator=403)),
    ("GET", "/api/v1/me"): Case(lambda c, r, lab: ("/api/v1/me", None), everyone(200)),
    ("GET", "/api/v1/me/access-log"): Case(lambda c, r, lab: ("/api/v1/me/access-log", None),
                                           allow(("patient",), 200)),
    **{key: case for key, case in _fhir_cases().items()},
    **{key: case for key, case in _web_cases().items()},
    **{key: case for key, case in _lab_cases().items()},
    # guard: the caller's lab's alerts (no lab in the path: the other-lab column is moot)
    ("GET", "/api/v1/alerts"): Case(lambda c, r, lab: ("/api/v1/alerts", None),
                                    allow(ALERT_READERS, 200)),
    ("POST", "/api/v1/alerts/{alert_id}/ack"): Case(
        lambda c, r, lab: (f"/api/v1/alerts/{_panic_alert(c, lab)}/ack", None),
        allow(ALERT_READERS, 200), allow((), 0, deny=403, biologist=404, lab_admin=404,
                                         dpo=404)),
    # the outbox to the prescribers' systems: the lab's biologists and lab administrators
    # (policy resource delivery); another lab's message answers 404 like an absent id,
    # except to a platform account (no laboratory: 403 before any lookup)
    ("GET", "/api/v1/deliveries"): Case(
        lambda c, r, lab: ("/api/v1/deliveries?status=failed", None), allow(OUTBOX_ROLES, 200)),
    ("POST", "/api/v1/deliveries/{outbox_id}/resend"): Case(
        lambda c, r, lab: (f"/api/v1/deliveries/{_failed_delivery(c, r, lab)}/resend",
                           {"reason": "patient créé dans le logiciel du cabinet"}),
        allow(OUTBOX_ROLES, 200), allow((), 0, deny=404, platform_operator=403)),
}


def _walk(routes: Any, prefix: str = "") -> Any:
    for r in routes:
        included = getattr(r, "original_router", None)      # FastAPI's included routers
        if included is not None:
            yield from _walk(included.routes, prefix + r.include_context.prefix)
        elif isinstance(r, APIRoute | Route):
            yield prefix + r.path, r.methods or set()


def app_routes(client: TestClient) -> set[tuple[str, str]]:
    """Every (method, path) the application serves, from its own route table."""
    out = {(m, path) for path, methods in _walk(client.app.routes)  # type: ignore[attr-defined]
           for m in methods if m != "HEAD"}
    spec = client.app.openapi()  # type: ignore[attr-defined]
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert documented <= out, "the route walk missed routes the OpenAPI document lists"
    return out


def test_matrix_covers_every_route(client: TestClient) -> None:
    routes = app_routes(client)
    missing = routes - set(MATRIX)
    assert not missing, f"routes without a matrix entry: {sorted(missing)}"
    assert not set(MATRIX) - routes, "matrix entries for routes that no longer exist"


def _call(client: TestClient, method: str, url: str, body: dict[str, Any] | None,
          token: str | None, form: bool = False) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client.cookies.clear()
    if form:
        return client.request(method, url, data=body or {}, headers=headers,
                              follow_redirects=False)
    return client.request(method, url, json=body, headers=headers, follow_redirects=False)


def test_route_role_tenant_matrix(world: World, client: TestClient) -> None:
    from labvault.services.audit import install_audit
    install_audit(world.lv)              # the real, tamper-evident audit log behind the gate
    c = Ctx(world)
    tokens: dict[str, str] = {}
    for role in ROLES:
        tokens[role] = world.lv.accounts.login(c.email(role), PASSWORD, c.code(role)).token
    failures: list[str] = []
    for (method, path), case in sorted(MATRIX.items()):
        for lab, expect in (("a", case.own), ("b", case.other)):
            if expect is None:
                continue
            for role in (*ROLES, ANON):
                if lab == "b" and role == ANON:
                    continue
                token = None
                if role != ANON:
                    token = (world.lv.accounts.login(c.email(role), PASSWORD, c.code(role)).token
                             if case.fresh_token else tokens[role])
                url, body = case.build(c, role, lab)
                if (method, path) == ("POST", "/api/v1/auth/login"):
                    token = None
                resp = _call(client, method, url, body, token, case.form)
                if case.fresh_token and role != ANON:    # logout-all ended every session
                    tokens[role] = world.lv.accounts.login(c.email(role), PASSWORD,
                                                           c.code(role)).token
                want = expect[role]
                ok = resp.status_code in (want if isinstance(want, tuple) else (want,))
                if not ok:
                    failures.append(f"{method} {path} lab={lab} role={role}: "
                                    f"{resp.status_code} (want {want}) {resp.text[:160]}")
                if resp.status_code >= 400 and resp.status_code != 413:
                    assert resp.headers["content-type"].startswith(
                        "application/fhir+json" if path.startswith("/fhir/")
                        else "text/html" if path == "/" or path.startswith(WEB_PREFIXES)
                        else "application/problem+json")
                if path.startswith("/api/"):
                    assert resp.headers["cache-control"] == "no-store"
    assert not failures, "\n".join(failures)


def test_other_lab_patient_indistinguishable_from_absent(world: World,
                                                         client: TestClient) -> None:
    c = Ctx(world)
    for role in ("reception", "technician", "biologist", "dpo", "lab_admin", "patient"):
        tok = world.lv.accounts.login(c.email(role), PASSWORD, c.code(role)).token
        other = _call(client, "GET", f"/api/v1/patients/{world.b.patients[1]}", None, tok)
        absent = _call(client, "GET", "/api/v1/patients/pt_0000000000000000000000000x", None, tok)
        assert other.status_code == absent.status_code == 404
        assert other.json() == absent.json()
        for method in ("PUT", "DELETE"):
            r = _call(client, method, f"/api/v1/patients/{world.b.patients[1]}",
                      patient_json(1, seed=3) if method == "PUT" else None, tok)
            assert r.status_code == 404
    # and lab B's data was never written nor opened by a lab A actor
    lab_a_ids = {a for a in world.a.accounts.values()}
    for access, _d, outcome in world.lv.gate.audit.entries:  # type: ignore[attr-defined]
        if access.actor.id in lab_a_ids:
            assert access.tenant_id != world.b.tenant_id or outcome == "denied"


def test_each_role_sees_exactly_its_categories(world: World, client: TestClient) -> None:
    c = Ctx(world)
    want = {"reception": ["contact", "coverage", "identity"],
            "technician": ["clinical", "identity"],
            "biologist": ["clinical", "contact", "coverage", "identity"],
            "patient": ["clinical", "contact", "coverage", "identity"]}
    fields = {"contact": "phone", "coverage": "coverage", "identity": "birth_name",
              "clinical": "blood_group"}
    for role, cats in want.items():
        tok = world.lv.accounts.login(c.email(role), PASSWORD, c.code(role)).token
        r = _call(client, "GET", f"/api/v1/patients/{world.a.patients[0]}", None, tok)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["categories"] == cats
        for cat, f in fields.items():
            if world.a.patient_data[0].get(f) is not None:
                assert (f in body) == (cat in cats), (role, f)
        # technicians get minimal identity only: no NIR, INS, birth place, legacy id
        for f in ("nir", "birth_place_insee", "external_id"):
            if world.a.patient_data[0].get(f) is not None:
                assert (f in body) == (role != "technician"), (role, f)


def test_security_headers_size_limit_and_public_paths(world: World, client: TestClient) -> None:
    r = client.get("/health")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "strict-transport-security" not in r.headers        # no TLS here
    assert "access-control-allow-origin" not in client.options(
        "/api/v1/me", headers={"Origin": "https://evil.example", "Access-Control-Request-Method":
                               "GET"}).headers
    big = client.post("/api/v1/auth/login", content=b"{" + b" " * 2_000_000 + b"}",
                      headers={"content-type": "application/json"})
    assert big.status_code == 413
    unauth = client.get(f"/api/v1/patients/{world.a.patients[0]}")
    assert unauth.status_code == 401 and unauth.headers["www-authenticate"] == "Bearer"
    assert "Traceback" not in unauth.text
    tls = TestClient(client.app, base_url="https://testserver")
    assert "strict-transport-security" in tls.get("/health").headers


def test_login_contract_and_no_secret_echo(world: World, client: TestClient) -> None:
    c = Ctx(world)
    r = client.post("/api/v1/auth/login", json={"email": c.email("biologist"),
                                                "password": PASSWORD, "totp": c.code("biologist")})
    assert r.status_code == 200 and set(r.json()) == {"token", "expires_at", "scope"}
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    bad = client.post("/api/v1/auth/login", json={"email": c.email("biologist"),
                                                  "password": "Secret-Guess-9876!", "totp": "1"})
    assert bad.status_code == 401 and "Secret-Guess-9876!" not in bad.text
    weak = _call(client, "POST", "/api/v1/auth/password",
                 {"current_password": PASSWORD, "new_password": "Password1234!",
                  "totp": c.code("biologist")}, r.json()["token"])
    assert weak.status_code == 422 and "Password1234!" not in weak.text


@pytest.mark.parametrize("path", ["/api/v1/me", "/api/v1/users", "/api/v1/patients?nir=1"])
def test_garbage_tokens_rejected(client: TestClient, world: World, path: str) -> None:
    for tok in ("x", "a" * 300, "Bearer", "%00%ff"):
        r = client.get(path, headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 401


def test_cookie_session_refuses_cross_origin_writes(world: World, client: TestClient) -> None:
    c = Ctx(world)
    r = client.post("/api/v1/auth/login", json={"email": c.email("reception"),
                                                "password": PASSWORD, "totp": c.code("reception")})
    assert r.status_code == 200 and client.cookies.get("labvault_session")
    assert client.get("/api/v1/me").status_code == 200            # cookie works
    body = patient_json(42, seed=8)
    evil = client.post("/api/v1/patients", json=body, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 401
    same = client.post("/api/v1/patients", json=body, headers={"Origin": "http://testserver"})
    assert same.status_code == 201


# -- another laboratory's record answers exactly like an absent one ----------------------------
# Every route whose path names a record (an ``*_id`` or FHIR id parameter, found in the route
# table; each FHIR resource type of the CapabilityStatement with its read/update): asked
# about a record of laboratory B and about an id that does not exist, every role of
# laboratory A gets the same status and the same bytes (the id itself aside) -- nothing
# tells that the other laboratory's record exists.
RANDOM = re.compile(r"\b([a-z]{1,8})([_-])([0-9a-hjkmnp-tv-z]{26})\b")
NOWHERE = "0" * 25 + "v"


def _absent(real: str) -> str:
    """The same id with its random part replaced: a well-formed id nobody has."""
    return RANDOM.sub(lambda m: m.group(1) + m.group(2) + NOWHERE, real)


def _id_params(path: str) -> list[str]:
    return [p for p in re.findall(r"\{(\w+)(?::\w+)?\}", path)
            if p.endswith("_id") or p == "fhir_id"]


def _lab_b_fhir(c: Ctx, client: TestClient) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Per FHIR type: the id of one laboratory B resource and a body to PUT it with (read
    back by laboratory B's own staff, as a client would send it)."""
    from labvault.interop.fhir.ids import to_fhir
    from tests.web.helpers import order
    b = c.w.b

    def as_b(role: str, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        tok = c.w.lv.accounts.login(b.emails[role], PASSWORD, c.code(role)).token
        r = _call(client, method, url, body, tok)
        assert r.status_code < 300, (url, r.text)
        return r.json()

    rep = order(c.w, b, b.patients[0])
    obs = rep.observations[0].observation_id
    spec = c.w.lv.lab.get_order(c.w.actor(b.emails["biologist"]), rep.order_id).specimens[0]
    pid = to_fhir(b.patients[0])
    prac = as_b("biologist", "POST", "/fhir/R4/Practitioner", {
        "resourceType": "Practitioner", "name": [{"family": "Lefèvre", "given": ["Hélène"]}],
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "10003456786"}]})
    cov = as_b("biologist", "GET", f"/fhir/R4/Coverage?beneficiary=Patient/{pid}")
    audit = as_b("dpo", "GET", f"/fhir/R4/AuditEvent?patient=Patient/{pid}")
    found = {"Patient": pid, "Practitioner": prac["id"],
             "Coverage": cov["entry"][0]["resource"]["id"],
             "ServiceRequest": to_fhir(rep.order_id), "Specimen": to_fhir(spec.specimen_id),
             "Observation": to_fhir(obs), "DiagnosticReport": to_fhir(rep.report_id),
             "AuditEvent": audit["entry"][0]["resource"]["id"]}
    edits: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "ServiceRequest": lambda r: {**r, "status": "revoked"},
        "Observation": lambda r: {**r, "status": "amended", "note": [{"text": "erreur"}]},
    }
    out: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for rtype, fid in found.items():
        res = as_b("dpo" if rtype == "AuditEvent" else "biologist", "GET",
                   f"/fhir/R4/{rtype}/{fid}")
        res.pop("meta", None)
        out[rtype] = (fid, edits.get(rtype, lambda r: r)(res))
    return out


def _id_routes(c: Ctx, client: TestClient) -> dict[tuple[str, str], list[Req]]:
    """For each route naming a record: the requests about laboratory B's records (one per
    FHIR type for the FHIR routes); the absent twin of each is derived by ``_absent``."""
    from tests.web.helpers import ORDER_FORM, import_issue, order, registration_form
    b = c.w.b
    spec = client.get("/fhir/R4/metadata", headers={
        "Authorization": f"Bearer {c.w.lv.accounts.login(c.email('biologist'), PASSWORD, c.code('biologist')).token}"}).json()  # noqa: E501
    offered = {r["type"]: {i["code"] for i in r["interaction"]}
               for r in spec["rest"][0]["resource"]}
    fhir = _lab_b_fhir(c, client)
    missing = set(offered) - set(fhir)
    assert not missing, f"FHIR types without a laboratory B record in this test: {missing}"
    alert = _panic_alert(c, "b")
    failed = _failed_delivery(c, "biologist", "b")
    (issue,) = import_issue(c.w, b).issue_ids
    account = b.accounts["technician"]
    patient = b.patients[0]
    return {
        ("GET", "/fhir/R4/{rtype}/{fhir_id}"): [
            (f"/fhir/R4/{t}/{fid}", None) for t, (fid, _) in fhir.items()
            if "read" in offered[t]],
        ("PUT", "/fhir/R4/{rtype}/{fhir_id}"): [
            (f"/fhir/R4/{t}/{fid}", body) for t, (fid, body) in fhir.items()
            if "update" in offered[t]],
        ("GET", "/api/v1/users/{account_id}"): [(f"/api/v1/users/{account}", None)],
        ("PUT", "/api/v1/users/{account_id}/roles"): [
            (f"/api/v1/users/{account}/roles", {"roles": ["technician", "reception"]})],
        **{("POST", f"/api/v1/users/{{account_id}}/{op}"): [
            (f"/api/v1/users/{account}/{op}", None)]
           for op in ("disable", "enable", "unlock", "reset-mfa", "reset-password",
                      "reissue-enrolment")},
        ("GET", "/api/v1/patients/{patient_id}"): [(f"/api/v1/patients/{patient}", None)],
        ("GET", "/api/v1/patients/{patient_id}/results"): [
            (f"/api/v1/patients/{patient}/results", None)],
        ("PUT", "/api/v1/patients/{patient_id}"): [
            (f"/api/v1/patients/{patient}", patient_json(950, seed=6))],
        ("DELETE", "/api/v1/patients/{patient_id}"): [(f"/api/v1/patients/{patient}", None)],
        ("POST", "/api/v1/patients/{patient_id}/merge"): [
            (f"/api/v1/patients/{patient}/merge",
             {"duplicate_id": c.w.a.patients[2], "reason": "même patient"})],
        ("POST", "/api/v1/patients/{patient_id}/break-glass"): [
            (f"/api/v1/patients/{patient}/break-glass",
             {"reason": "emergency: patient transferred to ICU tonight", "password": PASSWORD,
              "totp": None})],
        ("POST", "/api/v1/alerts/{alert_id}/ack"): [(f"/api/v1/alerts/{alert}/ack", None)],
        ("POST", "/api/v1/deliveries/{outbox_id}/resend"): [
            (f"/api/v1/deliveries/{failed}/resend", {"reason": "patient créé"})],
        ("POST", "/console/envois/{outbox_id}/renvoi"): [
            (f"/console/envois/{failed}/renvoi", {"motif": "patient créé"})],
        ("GET", "/portail/rapports/{report_id}.pdf"): [
            (f"/portail/rapports/{order(c.w, b, patient).report_id}.pdf", None)],
        ("GET", "/console/patients/{patient_id}"): [(f"/console/patients/{patient}", None)],
        ("GET", "/console/patients/{patient_id}/historique"): [
            (f"/console/patients/{patient}/historique", None)],
        ("GET", "/console/patients/{patient_id}/fusion"): [
            (f"/console/patients/{patient}/fusion", None)],
        ("POST", "/console/patients/{patient_id}/fusion"): [
            (f"/console/patients/{patient}/fusion",
             {"doublon": c.w.a.patients[2], "motif": "même patient"})],
        ("GET", "/console/patients/{patient_id}/demande"): [
            (f"/console/patients/{patient}/demande", None)],
        ("POST", "/console/patients/{patient_id}/demande"): [
            (f"/console/patients/{patient}/demande", ORDER_FORM)],
        ("GET", "/console/patients/{patient_id}/modifier"): [
            (f"/console/patients/{patient}/modifier", None)],
        ("POST", "/console/patients/{patient_id}/modifier"): [
            (f"/console/patients/{patient}/modifier",
             {**registration_form(b.patient_data[0]), "phone": "06 11 22 33 44"})],
        ("GET", "/console/rapports/{report_id}.pdf"): [
            (f"/console/rapports/{order(c.w, b, patient).report_id}.pdf", None)],
        ("POST", "/console/validation/{order_id}"): [
            (f"/console/validation/{order(c.w, b, b.patients[1], step='technical').order_id}",
             {"conclusion": "RAS"})],
        ("POST", "/console/alertes/{alert_id}/prise-en-compte"): [
            (f"/console/alertes/{alert}/prise-en-compte", None)],
        ("GET", "/api/v1/import-issues/{issue_id}"): [(f"/api/v1/import-issues/{issue}", None)],
        ("POST", "/api/v1/import-issues/{issue_id}/resolution"): [
            (f"/api/v1/import-issues/{issue}/resolution", {"patient_id": c.w.a.patients[1]})],
        ("POST", "/api/v1/import-issues/{issue_id}/discard"): [
            (f"/api/v1/import-issues/{issue}/discard", {"reason": "doublon",
                                                        "all_results": True})],
        ("POST", "/console/messages/{issue_id}/recherche"): [
            (f"/console/messages/{issue}/recherche",
             {"birth_name": "BARRAULT", "first_name": "Denis", "birth_date": "1961-07-03"})],
        ("POST", "/console/messages/{issue_id}/rattacher"): [
            (f"/console/messages/{issue}/rattacher", {"patient_id": c.w.a.patients[1]})],
        ("POST", "/console/messages/{issue_id}/classer"): [
            (f"/console/messages/{issue}/classer", {"reason": "doublon",
                                                    "all_results": "oui"})],
        # the lab workflow's steps: laboratory B's order at the step each one acts on
        **_workflow_id_routes(c),
    }


def _workflow_id_routes(c: Ctx) -> dict[tuple[str, str], list[Req]]:
    from tests.web.helpers import NORMAL, SPEC, order
    b = c.w.b
    prelim = order(c.w, b, b.patients[1], step="preliminary")[0].order_id
    registered = order(c.w, b, b.patients[1], step="registered").order_id
    received = order(c.w, b, b.patients[1], step="received").order_id
    technical = order(c.w, b, b.patients[1], step="technical").order_id
    final = order(c.w, b, b.patients[1], step="final").order_id
    published = order(c.w, b, b.patients[1], step="published")
    obs = published.observations[0].observation_id
    api = "/api/v1/orders"
    return {
        ("GET", f"{api}/{{order_id}}"): [(f"{api}/{technical}", None)],
        ("POST", f"{api}/{{order_id}}/specimens"): [
            (f"{api}/{registered}/specimens", {**SPEC, "accession_number": "MTX-API-B"})],
        ("POST", f"{api}/{{order_id}}/results"): [
            (f"{api}/{received}/results", {"results": NORMAL})],
        ("POST", f"{api}/{{order_id}}/technical-validation"): [
            (f"{api}/{prelim}/technical-validation", {})],
        ("POST", f"{api}/{{order_id}}/biological-validation"): [
            (f"{api}/{technical}/biological-validation", {"conclusion": "RAS"})],
        ("POST", f"{api}/{{order_id}}/publication"): [(f"{api}/{final}/publication", {})],
        ("POST", f"{api}/{{order_id}}/rejection"): [
            (f"{api}/{received}/rejection", {"reason": "hemolysed"})],
        ("POST", f"{api}/{{order_id}}/conclusion"): [
            (f"{api}/{published.order_id}/conclusion",
             {"conclusion": "RAS", "reason": "relecture"})],
        ("POST", "/api/v1/observations/{observation_id}/amendment"): [
            (f"/api/v1/observations/{obs}/amendment",
             {"result": {"code": "718-7", "value": 12.0, "unit": "g/dL"}, "reason": "typo"})],
        ("POST", "/console/technique/{order_id}"): [(f"/console/technique/{prelim}", None)],
        ("POST", "/console/demandes/{order_id}/refus"): [
            (f"/console/demandes/{received}/refus", {"reason": "hemolysed"})],
        ("GET", "/console/demandes/{order_id}/reception"): [
            (f"/console/demandes/{registered}/reception", None)],
        ("POST", "/console/demandes/{order_id}/reception"): [
            (f"/console/demandes/{registered}/reception",
             {"specimen_type": "BLD", "collected_at": "2026-03-01T08:30",
              "accession_number": "MTX-B"})],
        ("POST", "/console/diffusion/{order_id}"): [(f"/console/diffusion/{final}", None)],
        ("POST", "/console/demandes/{order_id}/conclusion"): [
            (f"/console/demandes/{published.order_id}/conclusion",
             {"conclusion": "RAS", "reason": "relecture"})],
        ("POST", "/console/demandes/{order_id}/correction"): [
            (f"/console/demandes/{published.order_id}/correction",
             {"observation_id": obs, "value": "12,0", "reason": "typo"})],
    }


def test_other_lab_records_answer_exactly_like_absent_ids(world: World,
                                                          client: TestClient) -> None:
    from labvault.services.audit import install_audit
    install_audit(world.lv)              # AuditEvent reads need the real audit log
    c = Ctx(world)
    cases = _id_routes(c, client)
    naming = {(m, p) for m, p in app_routes(client) if _id_params(p)}
    assert naming == set(cases), (f"routes naming a record without a case here: "
                                  f"{sorted(naming - set(cases))}")
    failures = []
    for (method, path), requests in sorted(cases.items()):
        form = path.startswith(WEB_PREFIXES)
        for url, body in requests:
            for role in ROLES:
                token = world.lv.accounts.login(c.email(role), PASSWORD, c.code(role)).token
                if body is not None and "totp" in body:      # a fresh code for each call
                    body = {**body, "totp": c.code(role)}
                other = _call(client, method, url, body, token, form)
                real = RANDOM.search(url)
                assert real is not None
                nowhere_url = url.replace(real.group(0), _absent(real.group(0)))
                nowhere_body = (json.loads(json.dumps(body).replace(
                    real.group(3), NOWHERE)) if body is not None else None)
                if body is not None and "totp" in body:
                    nowhere_body = {**(nowhere_body or {}), "totp": c.code(role)}
                nowhere = _call(client, method, nowhere_url, nowhere_body, token, form)
                seen = (other.status_code, other.text.replace(real.group(3), NOWHERE))
                if seen != (nowhere.status_code, nowhere.text) or other.status_code < 400:
                    failures.append(f"{method} {url} as {role}: other lab {other.status_code} "
                                    f"{other.text[:120]!r} / absent {nowhere.status_code} "
                                    f"{nowhere.text[:120]!r}")
    assert not failures, "\n".join(failures)
