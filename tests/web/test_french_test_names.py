"""Test names in French wherever a person reads them: the portal, the PDF report, the
console (results, validation, bench worklist), the patient's data download; a laboratory
whose own catalogue has no labels shows the LOINC display (docs/lab.md, "Test names")."""

from __future__ import annotations

import json
import shutil
import subprocess

from fastapi.testclient import TestClient

from labvault.web.pdf import report_html
from tests.access.conftest import World
from tests.web.helpers import form_login, order, text_of

HB_FR, HB_LOINC = "Hémoglobine", "Hemoglobin [Mass/volume] in Blood"
K_LOINC = "Potassium [Moles/volume] in Serum or Plasma"



def test_patient_and_staff_read_the_french_names(web: World, browser: TestClient) -> None:
    from labvault.services.alerts import AlertService
    a = web.a
    web.lv.alerts = web.lv.gate.alerts = AlertService(web.lv)     # the panic values' list
    rep = order(web, a, a.patients[0])                       # Hb + K, published
    waiting = order(web, a, a.patients[0], step="technical")  # on the biologist's list
    received = order(web, a, a.patients[1], step="received")  # on the bench's list
    panic = order(web, a, a.patients[1], step="technical",     # a critical haemoglobin
                  results=[{"code": "718-7", "value": 6.5, "unit": "g/dL"},
                           {"code": "2823-3", "value": "4.2", "unit": "mmol/L"}])
    assert waiting.order_id and received.order_id and panic.order_id
    form_login(browser, web, a.emails["patient"], staff=False)
    portal = text_of(browser.get("/portail").text)
    assert HB_FR in portal and HB_LOINC not in portal and K_LOINC not in portal
    patient = web.lv.accounts.resolve(browser.cookies["labvault_session"])
    mine = browser.app.state.portal.my_report(patient, rep.report_id)  # type: ignore[attr-defined]
    pdf_page = text_of(report_html(mine, {}, "Laboratoire a"))
    assert HB_FR in pdf_page and HB_LOINC not in pdf_page
    pdf = browser.get(f"/portail/rapports/{rep.report_id}.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    if shutil.which("pdftotext") is not None:        # the route prints the same page
        text = " ".join(subprocess.run(["pdftotext", "-", "-"], input=pdf.content,
                                       capture_output=True, check=True).stdout.decode().split())
        assert HB_FR in text and HB_LOINC not in text
    doc = json.loads(browser.get("/portail/donnees.json").content)
    (got,) = [r for r in doc["reports"] if r["id"] == rep.report_id]
    names = {o["code"]: (o["label"], o["display"]) for o in got["observations"]}
    assert names == {"718-7": (HB_FR, HB_LOINC), "2823-3": ("Potassium", K_LOINC)}
    (mine_order,) = [o for o in doc["orders"] if o["id"] == rep.order_id]
    assert mine_order["tests"] == ["718-7", "2823-3"]
    assert mine_order["test_labels"] == [HB_FR, "Potassium"]

    staff = TestClient(browser.app, base_url="http://testserver", follow_redirects=False)
    form_login(staff, web, a.emails["biologist"])
    for url in (f"/console/patients/{a.patients[0]}", "/console/validation"):
        page = text_of(staff.get(url).text)
        assert HB_FR in page and HB_LOINC not in page and K_LOINC not in page, url
    validation = text_of(staff.get("/console/validation").text)
    assert f"{HB_FR} : 6,5 g/dL — très bas (critique)" in validation      # the panic list
    assert f"à revoir : valeur critique ({HB_FR})" in validation
    staff.cookies.clear()
    form_login(staff, web, a.emails["technician"])
    bench = text_of(staff.get("/console/technique").text)
    assert f"Analyses demandées : {HB_FR}, Potassium" in bench and HB_LOINC not in bench


def test_a_lab_catalogue_without_labels_shows_the_loinc_display(
        web: World, browser: TestClient) -> None:
    a = web.a
    bio = web.actor(a.emails["biologist"])
    plain = {"version": "own-1", "tests": [
        {"code": "718-7", "display": HB_LOINC, "unit": "g/dL",
         "ranges": [{"low": 12.0, "high": 16.0}]},
        {"code": "2823-3", "display": K_LOINC, "unit": "mmol/L",
         "ranges": [{"low": 3.5, "high": 5.1}]}]}
    web.lv.lab.load_catalogue(bio, a.tenant_id, plain)
    rep = order(web, a, a.patients[0])
    form_login(browser, web, a.emails["patient"], staff=False)
    portal = text_of(browser.get("/portail").text)
    assert HB_LOINC in portal and K_LOINC in portal and HB_FR not in portal
    patient = web.lv.accounts.resolve(browser.cookies["labvault_session"])
    mine = browser.app.state.portal.my_report(patient, rep.report_id)  # type: ignore[attr-defined]
    assert HB_LOINC in text_of(report_html(mine, {}, "Laboratoire a"))
    doc = json.loads(browser.get("/portail/donnees.json").content)
    (got,) = [r for r in doc["reports"] if r["id"] == rep.report_id]
    assert {o["label"] for o in got["observations"]} == {HB_LOINC, K_LOINC}
