""""Historique des résultats" on the console (web/history.py, docs/web.md): linked from
the patient's page for the roles the policy lets read reports, a table of the patient's
validated results (one row per test, one column per day, newest first, flags in French,
a corrected value marked), filtered by test and period, paged by days; refused by the
gate (and recorded) for the other roles; another laboratory's patient answers like an
absent id."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

from fastapi.testclient import TestClient

from labvault.domain.actors import Actor
from labvault.web.history import HISTORY_COLUMNS
from tests.access.conftest import Lab, World
from tests.web.helpers import HIGH, logged_in_as, order, staff_accesses, text_of

_N = itertools.count(1)
RANGE_K = "3,5-5,1 mmol/L"





def _published(web: World, lab: Lab, patient_id: str, collected: datetime,
               results: list[dict[str, Any]]) -> str:
    """A published order collected at ``collected`` (its results typed in: dated by it)."""
    bio = web.actor(lab.emails["biologist"])
    lv = web.lv
    oid = lv.lab.create_order(bio, lab.tenant_id, patient_id,
                              {"tests": sorted({r["code"] for r in results})},
                              {"type": "BLD", "collected_at": collected.isoformat(),
                               "accession_number": f"HP{next(_N)}"}).order_id
    lv.lab.enter_results(bio, oid, results)
    lv.lab.validate_technical(bio, oid)
    lv.lab.validate_biological(bio, oid)
    lv.lab.publish(bio, oid)
    return oid


def _row(page: str, code: str) -> str:
    found = re.search(rf'<tr id="test-{re.escape(code)}">(.*?)</tr>', page, re.S)
    assert found is not None, code
    return text_of(found.group(1))


def test_the_biologist_reads_the_patients_results_over_time(web: World,
                                                            browser: TestClient) -> None:
    a = web.a
    pid = a.patients[0]
    order(web, a, pid)                                  # 01/03/2026: 13,1 g/dL, 4,2 mmol/L
    later = datetime(2026, 6, 2, 7, 15, tzinfo=UTC)
    oid = _published(web, a, pid, later, HIGH)          # 13,7 and 5,8 (high)
    # a value corrected after publication: shown corrected, marked
    bio = web.actor(a.emails["biologist"])
    (k,) = [o for o in web.lv.lab.get_report_by_order(bio, oid).observations
            if o.observation.code == "2823-3"]
    web.lv.lab.amend(bio, k.observation_id, {"code": "2823-3", "value": "6.1",
                                             "unit": "mmol/L"}, "erreur de saisie")
    # not validated yet: never in the history
    order(web, a, pid, step="technical", results=[{"code": "718-7", "value": 9.9,
                                                   "unit": "g/dL"}])
    staff = logged_in_as(web, browser, "biologist")
    patient_page = staff.get(f"/console/patients/{pid}").text
    href = f"/console/patients/{pid}/historique"
    assert f'href="{href}"' in patient_page and "Historique des résultats" in patient_page
    before = len(staff_accesses(web, pid))
    r = staff.get(href)
    assert r.status_code == 200, r.text
    page = r.text
    words = text_of(page)
    assert "Historique des résultats" in words
    assert a.patient_data[0]["birth_name"] in words          # whose history it is
    # one column per day, newest first
    assert words.index("02/06/2026") < words.index("01/03/2026")
    assert _row(page, "718-7").startswith("Hémoglobine g/dL 13,7 13,1")
    k_row = _row(page, "2823-3")
    assert k_row.startswith("Potassium mmol/L 6,1 (haut) corrigé 4,2")
    assert "9,9" not in words                                 # not validated
    # the reference range of the latest result
    assert k_row.endswith(RANGE_K), k_row
    # one report read (care, the patient named) and one identity read, audited
    new = staff_accesses(web, pid)[before:]
    assert [(e["resource"], e["action"], e["outcome"]) for e in new] == [
        ("report", "read", "allowed"), ("patient", "read", "allowed")]
    assert new[0]["purpose"] == "care"
    # filtered by test: that row only; the choice keeps every test of the period
    one = staff.get(href, params={"analyse": "718-7"}).text
    assert 'id="test-718-7"' in one and 'id="test-2823-3"' not in one
    assert '<option value="2823-3">Potassium</option>' in one
    assert '<option value="718-7" selected>Hémoglobine</option>' in one
    # a test without a result in the period: kept as asked, said
    none = text_of(staff.get(href, params={"analyse": "14682-9"}).text)
    assert "14682-9 (aucun résultat sur la période)" in none
    assert "Aucun résultat validé sur cette période pour cette analyse." in none
    # a period without the first order
    june = staff.get(href, params={"depuis": "2026-04-01", "jusqu_au": "2026-12-31"}).text
    assert "02/06/2026" in june and "01/03/2026" not in text_of(june).split("Afficher", 1)[1]


def test_the_technician_reads_it_too_others_are_refused_and_recorded(
        web: World, browser: TestClient) -> None:
    a = web.a
    pid = a.patients[0]
    order(web, a, pid)
    href = f"/console/patients/{pid}/historique"
    assert logged_in_as(web, browser, "technician").get(href).status_code == 200
    for role in ("reception", "lab_admin", "dpo"):
        before = len(staff_accesses(web, pid))
        client = logged_in_as(web, browser, role)
        r = client.get(href)
        assert r.status_code == 403, role
        assert "13,1" not in r.text
        new = staff_accesses(web, pid)[before:]
        assert [(e["resource"], e["outcome"]) for e in new] == [("report", "denied")], role
    # the desk reads no report: no link on its patient page
    assert href not in logged_in_as(web, browser, "reception").get(f"/console/patients/{pid}").text
    # a patient account: not the console
    assert logged_in_as(web, browser, "patient").get(href).status_code == 403


def test_another_laboratorys_patient_answers_like_an_absent_one(
        web: World, browser: TestClient) -> None:
    order(web, web.b, web.b.patients[0])
    staff = logged_in_as(web, browser, "biologist")
    theirs = staff.get(f"/console/patients/{web.b.patients[0]}/historique")
    absent = staff.get("/console/patients/pat_doesnotexist/historique")
    assert theirs.status_code == absent.status_code == 404
    assert text_of(theirs.text) == text_of(absent.text)
    assert "13,1" not in theirs.text


def test_a_period_the_page_cannot_read_is_said_in_french(web: World,
                                                         browser: TestClient) -> None:
    a = web.a
    pid = a.patients[0]
    order(web, a, pid)
    staff = logged_in_as(web, browser, "biologist")
    href = f"/console/patients/{pid}/historique"
    for params, said in (({"depuis": "hier"}, "Du : ce n'est pas une date"),
                         ({"depuis": "2026-05-01", "jusqu_au": "2026-04-01"},
                          "la date de début doit précéder la date de fin"),
                         ({"depuis": "2015-01-01", "jusqu_au": "2026-11-01"},
                          "Période trop longue")):
        r = staff.get(href, params=params)
        assert r.status_code == 422, params
        assert said in text_of(r.text), params
        assert "13,1" not in r.text
        assert f'value="{params["depuis"]}"' in r.text          # what was typed, kept


def test_older_days_are_on_the_next_page(web: World, browser: TestClient) -> None:
    a = web.a
    pid = a.patients[1]
    first = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
    days = HISTORY_COLUMNS + 2
    for i in range(days):
        _published(web, a, pid, first + timedelta(days=i),
                   [{"code": "718-7", "value": 12 + i / 10, "unit": "g/dL"}])
    staff = logged_in_as(web, browser, "biologist")
    page = staff.get(f"/console/patients/{pid}/historique").text
    shown = re.findall(r"<th>(\d\d/\d\d/\d{4})</th>", page)
    assert len(shown) == HISTORY_COLUMNS and shown[0] == "26/01/2026"
    assert "05/01/2026" not in shown
    link = re.search(r'<a href="([^"]+)">Résultats plus anciens</a>', page)
    assert link is not None
    older = staff.get(unescape(link.group(1))).text
    rest = re.findall(r"<th>(\d\d/\d\d/\d{4})</th>", older)
    assert rest == ["06/01/2026", "05/01/2026"]
    assert "Résultats plus anciens" not in older


def test_a_merged_duplicate_says_where_its_results_went(web: World,
                                                        browser: TestClient) -> None:
    """A duplicate merged since answers as the patient page does: merged into the record
    kept (for whoever may read that record), not a bare "no such patient"."""
    a = web.a
    keep = a.patients[0]
    p = a.patient_data[0]
    dup = web.lv.patients.register(Actor.operator(), a.tenant_id, {
        "birth_name": p["birth_name"] + "X", "first_names": p["first_names"],
        "birth_date": p["birth_date"], "sex": p["sex"]})
    web.lv.patients.merge(web.actor(a.emails["lab_admin"]), keep, dup, "doublon d'accueil")
    r = logged_in_as(web, browser, "biologist").get(f"/console/patients/{dup}/historique")
    assert r.status_code == 404
    assert f"a été fusionné dans le dossier {keep}" in text_of(r.text)
