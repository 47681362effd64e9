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

from tests.access.conftest import World
from tests.web.helpers import SPEC, form_login

K = "2823-3"


def _text(r: Any) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", r.text)).split())


def _console(browser: TestClient, w: World, role: str) -> None:
    browser.cookies.clear()
    form_login(browser, w, w.a.emails[role])


def _section(page: str, title: str) -> str:
    """The part of a page after a heading (to the end)."""
    return page[page.index(title):]


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
