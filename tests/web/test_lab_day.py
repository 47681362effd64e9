"""A laboratory's working day on the console (QA as its technicians and biologists):
worklists that list every order at their step, urgent first, each card saying which tube
and whom the ranges are for; re-entered and corrected results shown with the values they
replaced; critical values waiting in the import queue; units as reports print them; the
console's refusals in French; a published result corrected from the console."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

from fastapi.testclient import TestClient

from labvault.domain import lab as L
from tests.access.conftest import World
from tests.web.helpers import SPEC, csrf_in, form_login, order

K = "2823-3"


def _text(r: Any) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", r.text)).split())


def _console(browser: TestClient, w: World, role: str) -> None:
    browser.cookies.clear()
    form_login(browser, w, w.a.emails[role])


def _section(page: str, title: str) -> str:
    """The part of a page after a heading (to the end)."""
    return page[page.index(title):]


def test_a_panic_value_waiting_in_the_import_queue_is_at_the_top_of_the_worklist(
        web: World, browser: TestClient) -> None:
    """QA lab 4: a critical potassium from an analyser for a patient labvault does not
    know raised its panic-value alert (naming the import issue), but the validation page
    listed only alerts naming a stored result: the biologist who works from that page
    never saw it. It is listed now, with the test, the value and the patient as sent."""
    from labvault.domain.actors import Actor
    from labvault.interop.hl7.handler import Hl7Handler
    from labvault.services.alerts import AlertService
    a, lv = web.a, web.lv
    lv.alerts = lv.gate.alerts = AlertService(lv)
    msg = "\r".join([
        "MSH|^~\\&|ANALYZER|LABO|LABVAULT|LABO|20260301083000||ORU^R01|Q1|P|2.5",
        "PID|1||999999^^^LABO^PI||INCONNU^Jeanne||19400312|F",
        "OBR|1|AQ1||2823-3^K^LN|||20260301080000",
        "OBX|1|NM|2823-3^K^LN||7.4|mmol/L|||||F", ""])
    out, _ack = Hl7Handler(lv, Actor.system("mllp"), a.tenant_id).handle(msg.encode())
    assert out.ack_code == "AA" and len(out.issue_ids) == 1
    issue_id = out.issue_ids[0]
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    text = _text(page)
    top = _section(text, "Valeurs critiques à traiter (1)")
    assert "7,4 mmol/L — très haut (critique)" in top
    assert "patient non reconnu" in top and "INCONNU Jeanne, né(e) le 12/03/1940" in top
    assert f"référence {issue_id}" in top
    bio = web.actor(a.emails["biologist"])
    (alert,) = [x for x in lv.alerts.list(bio, a.tenant_id) if x["kind"] == "panic-value"]
    done = browser.post(f"/console/alertes/{alert['id']}/prise-en-compte",
                        data={"csrf": csrf_in(page.text), "retour": "/console/validation"})
    assert done.status_code == 303
    assert "Valeurs critiques à traiter" not in browser.get("/console/validation").text


def test_console_refusals_are_said_in_french(web: World, browser: TestClient) -> None:
    """QA lab 6: a stale link to a patient or an order, a correction reason of blanks, the
    gate's refusal answered the console's users in the services' English ("no such
    patient — check the patient id", "reason: is required", "not allowed")."""
    a, lv = web.a, web.lv
    rep = order(web, a, a.patients[0])
    (hb, _k) = order(web, a, a.patients[1], step="preliminary")
    _console(browser, web, "biologist")
    gone = browser.get("/console/patients/pt_0000000000000000000000")
    assert gone.status_code == 404
    assert "ce patient n'existe pas dans votre laboratoire" in _text(gone)
    assert "no such" not in gone.text
    page = browser.get(f"/console/patients/{a.patients[0]}")
    token = csrf_in(page.text)
    stale = browser.post("/console/technique/ord_0000000000000000000000", data={"csrf": token})
    assert stale.status_code == 404
    assert "cette demande n'existe pas dans votre laboratoire" in _text(stale)
    blank = browser.post(f"/console/demandes/{rep.order_id}/conclusion",
                         data={"csrf": token, "conclusion": "Bilan normal", "reason": "   "})
    assert blank.status_code == 422
    assert "le champ « motif de la correction » est obligatoire" in _text(blank)
    assert "is required" not in blank.text
    # the reception desk refuses tubes before analysis only: once results are entered the
    # gate refuses it (results are cancelled with a rejection) -- in French
    _console(browser, web, "reception")
    token = csrf_in(browser.get("/console").text)
    late = browser.post(f"/console/demandes/{hb.order_id}/refus",
                        data={"csrf": token, "reason": "hemolysed"})
    assert late.status_code == 403
    assert "votre fonction ne permet pas cette action" in _text(late)
    assert "not allowed" not in late.text
    assert lv.lab.get_order(web.actor(a.emails["biologist"]), hb.order_id).status == \
        L.OrderStatus.PRELIMINARY


def test_units_are_printed_as_a_report_prints_them() -> None:
    """QA lab 10: the portal, the PDF sent to the prescriber and the console printed the
    UCUM codes as stored: "10*9/L", "umol/L", "m[IU]/L", "{INR}" (braces and all)."""
    from labvault.web.render import range_print, unit_print
    assert unit_print("10*9/L") == "10⁹/L" and unit_print("10*12/L") == "10¹²/L"
    assert unit_print("umol/L") == "µmol/L" and unit_print("ug/L") == "µg/L"
    assert unit_print("m[IU]/L") == "mUI/L" and unit_print("{INR}") == ""
    assert unit_print("mL/min/{1.73_m2}") == "mL/min/1.73 m2"
    for same in ("mmol/L", "g/dL", "U/L", "%", "fL", "mm/h", "s", None):
        assert unit_print(same) == (same or "")

    class Obs:
        reference_range = "4-10 10*9/L"
        unit = "10*9/L"
    assert range_print(Obs) == "4-10 10⁹/L"
    Obs.reference_range, Obs.unit = "<=0.04 ng/mL", "ng/mL"
    assert range_print(Obs) == "≤ 0,04 ng/mL"


def test_a_blood_count_reads_in_printed_units(web: World, browser: TestClient) -> None:
    """The same on the pages: the patient's portal and the console."""
    a = web.a
    bio = web.actor(a.emails["biologist"])
    o = web.lv.lab.create_order(bio, a.tenant_id, a.patients[0], {"tests": ["6690-2", "2276-4"]},
                                {**SPEC, "accession_number": "NFS-1"})
    web.lv.lab.enter_results(bio, o.order_id, [
        {"code": "6690-2", "value": 6.2, "unit": "10*9/L"},
        {"code": "2276-4", "value": 85, "unit": "ug/L"}])
    web.lv.lab.validate_final(bio, o.order_id)
    web.lv.lab.publish(bio, o.order_id)
    _console(browser, web, "patient")
    portal = _text(browser.get("/portail"))
    assert "6,2 10⁹/L" in portal and "85 µg/L" in portal
    assert "10*9" not in portal and "ug/L" not in portal
    _console(browser, web, "technician")
    assert "10⁹/L" in _text(browser.get(f"/console/patients/{a.patients[0]}"))
