"""The compte rendu's "Antériorité" column, as the prescriber and the patient read it: the
PDF (portal and console, its printed text through pdftotext), the portal's page and the
console's patient page print beside each result the patient's previous *published*
result of the test (value, unit, date); a report with none has no column; a result
validated but not yet published never shows through it. The validation page dates a
previous result typed in by when its blood was drawn (docs/lab.md, "Previous results
and the delta check")."""

from __future__ import annotations

import shutil
import subprocess
from html import unescape
from typing import Any

from fastapi.testclient import TestClient

from labvault.web.pdf import report_html
from tests.access.conftest import World
from tests.web.helpers import REQ, form_login, text_of

FIRST = "2026-02-10T09:15:00+01:00"       # Paris time: 10/02/2026 à 09:15
UNPUBLISHED = "2026-02-20T10:00:00+01:00"
NOW = "2026-03-01T08:30:00+01:00"
_N = iter(range(1, 10_000))



def _order(web: World, collected: str, k: str, hb: float, step: str = "published") -> Any:
    """An order of lab A's first patient, typed in at the bench (no observation time),
    its blood drawn at ``collected``; the report view at ``step``."""
    a, lv = web.a, web.lv
    bio = web.actor(a.emails["biologist"])
    o = lv.lab.create_order(bio, a.tenant_id, a.patients[0], REQ,
                            {"type": "BLD", "collected_at": collected,
                             "accession_number": f"ANT{next(_N)}"})
    lv.lab.enter_results(bio, o.order_id, [{"code": "718-7", "value": hb, "unit": "g/dL"},
                                           {"code": "2823-3", "value": k,
                                            "unit": "mmol/L"}])
    view: Any = lv.lab.validate_technical(bio, o.order_id)
    if step == "technical":
        return view
    view = lv.lab.validate_biological(bio, o.order_id)
    return view if step == "final" else lv.lab.publish(bio, o.order_id)


def _client(web: World, browser: TestClient, role: str) -> TestClient:
    c = TestClient(browser.app, base_url="http://testserver", follow_redirects=False)
    form_login(c, web, web.a.emails[role], staff=role != "patient")
    return c


def _pdf_text(pdf: bytes) -> str | None:
    if shutil.which("pdftotext") is None:
        return None
    return " ".join(subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True,
                                   check=True).stdout.decode().split())


def test_the_report_prints_the_previous_published_results(web: World,
                                                          browser: TestClient) -> None:
    first = _order(web, FIRST, "4.2", 13.1)
    _order(web, UNPUBLISHED, "6.1", 11.0, step="final")       # validated, not published
    current = _order(web, NOW, "4.8", 13.4)
    said = ("Antériorité", "4,2 mmol/L le 10/02/2026", "13,1 g/dL le 10/02/2026")
    patient, bio = _client(web, browser, "patient"), _client(web, browser, "biologist")
    # the patient's PDF and the one the laboratory sends the prescriber
    for client, url in ((patient, f"/portail/rapports/{current.report_id}.pdf"),
                        (bio, f"/console/rapports/{current.report_id}.pdf")):
        pdf = client.get(url)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF"), url
        text = _pdf_text(pdf.content)
        if text is not None:
            assert all(s in text for s in said), text
            assert "6,1" not in text and "11,0" not in text and "20/02/2026" not in text
    # the page it is printed from, likewise
    me = web.lv.accounts.resolve(patient.cookies["labvault_session"])
    portal = browser.app.state.portal  # type: ignore[attr-defined]
    page = text_of(report_html(portal.my_report(me, current.report_id), {}, "Laboratoire a"))
    assert all(s in page for s in said) and "6,1" not in page
    # a report with no previous result has no column
    earliest = portal.my_report(me, first.report_id)
    assert earliest.anteriorities == {}
    assert "Antériorité" not in text_of(report_html(earliest, {}, "Laboratoire a"))
    text = _pdf_text(patient.get(f"/portail/rapports/{first.report_id}.pdf").content)
    assert text is None or "Antériorité" not in text
    # the portal's page: the same column, never the unpublished result
    mine = text_of(patient.get("/portail").text)
    assert all(s in mine for s in said)
    assert "6,1" not in mine and "20/02/2026" not in mine
    # the console's patient page: the published report as printed (the unpublished one
    # is listed for staff, but never as a previous result)
    staff = text_of(bio.get(f"/console/patients/{web.a.patients[0]}").text)
    assert all(s in staff for s in said)
    assert "6,1 mmol/L le 20/02/2026" not in staff


def test_the_validation_page_dates_a_typed_in_previous_result_by_its_specimen(
        web: World, browser: TestClient) -> None:
    """The previous potassium was typed in today; the page says when the blood was drawn."""
    _order(web, FIRST, "4.2", 13.1, step="final")
    _order(web, NOW, "4.6", 13.3, step="technical")
    page = unescape(_client(web, browser, "biologist").get("/console/validation").text)
    assert "Antériorité : 4,2 mmol/L le 10/02/2026 à 09:15 (normal)" in text_of(page)
    assert "Antériorité" not in page.split("<thead>", 1)[1].split("</thead>", 1)[0]
