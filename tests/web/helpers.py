"""Builders shared by the web tests and the API matrix: lab orders at a given step."""

from __future__ import annotations

import itertools
import re
from html import unescape
from typing import Any

from fastapi.testclient import TestClient

from tests.access.conftest import PASSWORD, Lab, World

REQ = {"tests": ["718-7", "2823-3"], "priority": "routine",
       "prescriber": {"name": "Dr Hélène Lefèvre", "rpps": "10003456786"}}
SPEC = {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00"}
NORMAL = [{"code": "718-7", "value": 13.1, "unit": "g/dL"},
          {"code": "2823-3", "value": "4.2", "unit": "mmol/L"}]
HIGH = [{"code": "718-7", "value": 13.7, "unit": "g/dL"},
        {"code": "2823-3", "value": "5.8", "unit": "mmol/L"}]


def order(w: World, lab: Lab, patient_id: str, step: str = "published",
          results: list[dict[str, Any]] | None = None, conclusion: str | None = None,
          request: dict[str, Any] | None = None) -> Any:
    """An order of ``patient_id`` (``request``: what is asked, ``REQ`` by default) taken
    to ``step`` (registered: awaiting its specimen | received | preliminary | technical |
    final | published) by the lab's biologist; returns the report view (the order view
    at ``registered``, ``received`` and ``technical``, the results at ``preliminary``)."""
    bio = w.actor(lab.emails["biologist"])
    lv = w.lv
    o = lv.lab.create_order(bio, lab.tenant_id, patient_id, request or REQ,
                            None if step == "registered"
                            else {**SPEC, "accession_number": f"W{next(_ACCESSION)}"})
    if step in ("registered", "received"):
        return o
    entered = lv.lab.enter_results(bio, o.order_id, results or NORMAL)
    if step == "preliminary":
        return entered
    view: Any = lv.lab.validate_technical(bio, o.order_id)
    if step == "technical":
        return view
    view = lv.lab.validate_biological(bio, o.order_id, conclusion)
    if step == "final":
        return view
    return lv.lab.publish(bio, o.order_id)


_ACCESSION = itertools.count(1)

# a prescriber whose reports go to the laboratory's delivery destination (failed_delivery)
DELIVERY_RPPS = "10000000041"
DELIVERY_DESTINATION = "Cabinet du Dr Durand"
REFUSED = "AE: 204 patient inconnu dans le logiciel du cabinet"


def failed_delivery(w: World, lab: Lab, patient_id: str | None = None) -> tuple[str, Any]:
    """A published report of ``lab`` whose message the prescriber's system refused (AE):
    the destination (added once per laboratory by the CLI operator, routed to
    ``DELIVERY_RPPS``; never connected to), an order of that prescriber published, its
    message marked as the sender marks a refusal (failed, the receiver's words, a
    ``delivery-failed`` alert). Returns the outbox row's id and the report view."""
    from labvault.domain.actors import Actor
    from labvault.services.delivery import Due
    lv, op = w.lv, Actor.operator()
    if not lv.delivery.list_destinations(op, lab.tenant_id):
        lv.delivery.add_destination(op, lab.tenant_id, DELIVERY_DESTINATION, "127.0.0.1", 9,
                                    [DELIVERY_RPPS], insecure_plaintext=True)
    rep = order(w, lab, patient_id or lab.patients[1], request={
        **REQ, "prescriber": {"name": "Dr Paul Durand", "rpps": DELIVERY_RPPS}})
    (row,) = lv.delivery.status(op, lab.tenant_id, ["pending"], rep.report_id)
    assert lv.delivery.record(Due(lab.tenant_id, row["id"], rep.report_id, rep.patient_id, 0,
                                  None, rep.order_id), "refused", "AE", REFUSED) == "failed"
    return str(row["id"]), rep
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_in(page: str) -> str:
    m = CSRF.search(page)
    assert m, "no CSRF field in the page"
    return m.group(1)


def form_login(client: TestClient, w: World, email: str, staff: bool = True) -> Any:
    page = client.get("/login")
    assert page.status_code == 200
    return client.post("/login", data={"email": email, "password": PASSWORD,
                                       "totp": w.clock.code() if staff else "",
                                       "csrf": csrf_in(page.text)})


def analyser_order(w: World, lab: Lab, i: int, *obx: str, control: str = "W1",
                   number: str | None = None) -> str:
    """An analyser's ORU^R01 (HL7, as the MLLP listener stores it) for ``lab``'s patient
    ``i``, technically validated; its order id. ``obx``: the OBX segments; ``number``:
    the order's (OBR-2; ``A`` + ``control`` by default): a second message for an order."""
    from labvault.domain.actors import Actor
    from labvault.interop.hl7.handler import Hl7Handler
    p = lab.patient_data[i]
    msg = "\r".join([
        f"MSH|^~\\&|ANALYZER|LABO|LABVAULT|LABO|20260301083000||ORU^R01|{control}|P|2.5",
        f"PID|1||{p['nir']}^^^^NH||{p['birth_name']}^{p['first_names'][0]}||"
        f"{p['birth_date'].replace('-', '')}|{p['sex']}",
        f"OBR|1|{number or 'A' + control}||2823-3^K^LN|||20260301080000", *obx, ""])
    out, _ack = Hl7Handler(w.lv, Actor.system("mllp"), lab.tenant_id).handle(msg.encode())
    assert out.ack_code == "AA" and out.patient_id == lab.patients[i], out
    w.lv.lab.validate_technical(w.actor(lab.emails["technician"]), out.order_ids[0])
    return str(out.order_ids[0])


STRANGER_NIR = "161073306311891"         # synthetic (make_nir): no laboratory registers it
STRANGER_PID = f"PID|1||{STRANGER_NIR}^^^^NH~MRN77^^^^PI||BARRAULT^Denis||19610703|M"
_CONTROL = itertools.count(1)


def import_issue(w: World, lab: Lab, pid: str = STRANGER_PID,
                 obx: tuple[str, ...] = ("OBX|1|NM|2823-3^K^LN||6.9|mmol/L|||||F",),
                 control: str | None = None) -> Any:
    """An analyser's ORU^R01 for ``lab`` whose results wait in the import-issues queue
    (by default: a patient no laboratory here registered); the ingest outcome (its
    ``issue_ids``)."""
    from labvault.domain.actors import Actor
    from labvault.interop.hl7.handler import Hl7Handler
    control = control or f"IQ{next(_CONTROL)}"
    msg = "\r".join([f"MSH|^~\\&|ANALYZER|LABO|LABVAULT|LABO|20260301083000||ORU^R01|"
                     f"{control}|P|2.5", pid,
                     f"OBR|1|P{control}||2823-3^K^LN|||20260301080000", *obx, ""])
    outcome, _ack = Hl7Handler(w.lv, Actor.system("mllp"), lab.tenant_id).handle(msg.encode())
    return outcome


def merge_request(w: World, lab: Lab, i: int) -> tuple[str, str, str]:
    """An identity server's ADT^A40 for ``lab``: a record registered with its NIR and
    external id, the same person registered again under another external id, and the
    A40 merging the second into the first, kept as a ``merge-request`` import issue.
    (survivor id, duplicate id, issue id)."""
    from labvault.domain.actors import Actor
    from labvault.interop.hl7.handler import Hl7Handler
    from tests.access.conftest import patient_json
    person = patient_json(1900 + i, seed=67)
    op = Actor.operator()
    keep = w.lv.patients.register(op, lab.tenant_id, {**person, "external_id": f"HX{i}A"})
    dup = w.lv.patients.register(op, lab.tenant_id, {
        **{k: v for k, v in person.items() if k not in ("nir", "ins", "external_id")},
        "external_id": f"HX{i}B"})
    msg = "\r".join([f"MSH|^~\\&|IDSRV|HOPITAL|LABVAULT|LABO|20260301083000||ADT^A40^ADT_A39|"
                     f"MR{next(_CONTROL)}|P|2.5", "EVN|A40|20260301083000",
                     f"PID|1||HX{i}A^^^H^PI||X^Y", f"MRG|HX{i}B^^^H^PI", ""])
    outcome, ack = Hl7Handler(w.lv, Actor.system("mllp"), lab.tenant_id).handle(msg.encode())
    assert outcome.ack_code == "AA", ack
    (iid,) = outcome.issue_ids
    return keep, dup, str(iid)


def registration_form(p: dict[str, Any]) -> dict[str, str]:
    """A patient (``patient_json``) as the console's "Nouveau patient" form sends it."""
    addr, cov, doc = p.get("address") or {}, p.get("coverage") or {}, p.get("prescriber") or {}
    return {k: v for k, v in {
        "birth_name": p["birth_name"], "used_name": p.get("used_name") or "",
        "first_names": ", ".join(p["first_names"]), "birth_date": p["birth_date"],
        "sex": p["sex"], "birth_place_insee": p.get("birth_place_insee") or "",
        "nir": p.get("nir") or "", "ins": p.get("ins") or "",
        "blood_group": p.get("blood_group") or "", "address_line": addr.get("line", ""),
        "postal_code": addr.get("postal_code", ""), "city": addr.get("city", ""),
        "country": addr.get("country", ""), "phone": p.get("phone") or "",
        "email": p.get("email") or "", "doctor_name": doc.get("name", ""),
        "doctor_rpps": doc.get("rpps") or "", "amo": cov.get("amo") or "",
        "amc": cov.get("amc") or "", "member_id": cov.get("member_id") or ""}.items() if v}


# the console's "Nouvelle demande" form: two tests, the prescriber, a blood tube taken now
ORDER_FORM: dict[str, Any] = {
    "tests": ["718-7", "2823-3"], "prescriber_name": "Dr Hélène Lefèvre",
    "prescriber_rpps": "10003456786", "priority": "urgent",
    "clinical_notes": "sous anticoagulant", "collected": "oui", "specimen_type": "BLD",
    "collected_at": "2026-03-01T08:30"}


def text_of(page: str) -> str:
    """A page's text as read: tags dropped, entities decoded, white space collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page)).split())


def logged_in_as(web: World, browser: TestClient, role: str, lab: str = "a") -> TestClient:
    """A client of ``browser``'s app logged in as ``role`` of lab ``a`` or ``b``."""
    client = TestClient(browser.app, base_url="http://testserver", follow_redirects=False)
    form_login(client, web, (web.a if lab == "a" else web.b).emails[role],
               staff=role != "patient")
    return client


def staff_accesses(web: World, patient_id: str) -> list[dict[str, Any]]:
    """The patient's access log, staff entries (not a test's own reads of the log)."""
    from labvault.domain.actors import Actor
    from labvault.services.audit import audit_of
    return [e for e in audit_of(web.lv).access_log(Actor.operator(), patient_id,
                                                   include_denied=True)
            if e["actor_kind"] == "staff"]
