"""A laboratory's working day on the console (QA as its technicians and biologists):
worklists that list every order at their step, urgent first, each card saying which tube
and whom the ranges are for; re-entered and corrected results shown with the values they
replaced; critical values waiting in the import queue; units as reports print them; the
console's refusals in French; a published result corrected from the console."""

from __future__ import annotations

import re
from datetime import date, timedelta
from html import unescape
from typing import Any

import pytest
from fastapi.testclient import TestClient

from labvault.domain import lab as L
from labvault.web import routes
from tests.access.conftest import World, patient_json
from tests.web.helpers import NORMAL, REQ, SPEC, csrf_in, form_login, order

K = "2823-3"


def _text(r: Any) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", r.text)).split())


def _console(browser: TestClient, w: World, role: str) -> None:
    browser.cookies.clear()
    form_login(browser, w, w.a.emails[role])


def _section(page: str, title: str) -> str:
    """The part of a page after a heading (to the end)."""
    return page[page.index(title):]


def test_worklists_list_every_order_at_their_step_urgent_first(
        web: World, browser: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """QA lab 1: the validation page took the 200 oldest reports whose FHIR status was
    "final" -- published ones included -- and kept the validated ones: once 200 reports
    were published, "Validées, à diffuser" was empty for good; likewise the worklist and
    the bench shared the 200 oldest "preliminary" reports. Each list now asks for its own
    step, stat orders first, and says when it shows only the first ones."""
    monkeypatch.setattr(routes, "WORKLIST_LIMIT", 2)
    a, lv = web.a, web.lv
    bio = web.actor(a.emails["biologist"])
    for i in range(3):                      # older: published, and waiting at the bench
        order(web, a, a.patients[i % 3])
        order(web, a, a.patients[i % 3], step="preliminary")
    final = order(web, a, a.patients[0], step="final")
    waiting = order(web, a, a.patients[1], step="technical")
    stat = lv.lab.create_order(bio, a.tenant_id, a.patients[2], {**REQ, "priority": "stat"},
                               {**SPEC, "accession_number": "STAT-42"})
    lv.lab.enter_results(bio, stat.order_id, NORMAL)
    lv.lab.validate_technical(bio, stat.order_id)
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    assert page.status_code == 200
    html = page.text
    # the stat order first, marked; the routine one after it; both shown
    assert html.index(f'action="/console/validation/{stat.order_id}"') < html.index(
        f'action="/console/validation/{waiting.order_id}"')
    assert "très urgent" in _text(page) and "Prélèvement n° STAT-42" in _text(page)
    to_publish = _section(html, "Validées, à diffuser")
    assert f'action="/console/diffusion/{final.order_id}"' in to_publish
    # the bench: 3 orders waiting for technical validation, 2 shown and the rest said
    _console(browser, web, "technician")
    bench = browser.get("/console/technique")
    assert bench.text.count('action="/console/technique/') == 2
    assert "Seules les 2 premières demandes" in _text(bench)
    # the service itself: a listing by step counts only that step
    rows = lv.lab.list_reports(bio, a.tenant_id, limit=1,
                               order_status=L.OrderStatus.FINAL.value)
    assert [r.order_id for r in rows] == [final.order_id]


def test_worklist_cards_say_which_tube_and_whom_the_ranges_are_for(
        web: World, browser: TestClient) -> None:
    """QA lab 2: every card read "Demande du 01/03/2026 à 08:30" and nothing else: the
    bench could not tell which tube to refuse, the biologist not that the ranges shown
    were a child's. Each card now gives the tube's number and type, and the patient's sex
    and age at collection (from what the order keeps: no read of the record)."""
    a, lv = web.a, web.lv
    bio = web.actor(a.emails["biologist"])
    collected = date(2026, 3, 1)
    child = {**patient_json(7), "birth_date": (collected - timedelta(days=5 * 365 + 40))
             .isoformat(), "sex": "F"}
    child.pop("nir", None)
    child.pop("ins", None)
    baby = {**patient_json(8), "birth_date": "2024-09-10", "sex": "M"}
    baby.pop("nir", None)
    baby.pop("ins", None)
    kid_id = lv.patients.register(bio, a.tenant_id, child)
    baby_id = lv.patients.register(bio, a.tenant_id, baby)
    hb = [{"code": "718-7", "value": 11.8, "unit": "g/dL",
           "observed_at": "2026-03-01T09:00:00+01:00"}]
    o = lv.lab.create_order(bio, a.tenant_id, kid_id, {"tests": ["718-7"]},
                            {**SPEC, "accession_number": "TUBE-5A"})
    lv.lab.enter_results(bio, o.order_id, hb)
    received = lv.lab.create_order(bio, a.tenant_id, baby_id, {"tests": ["718-7"],
                                                                "priority": "urgent"},
                                   {**SPEC, "accession_number": "TUBE-18M"})
    _console(browser, web, "technician")
    text = _text(browser.get("/console/technique"))
    assert "Prélèvement n° TUBE-5A (sang total) du 01/03/2026 à 08:30" in text
    assert "Patient : sexe féminin, 5 ans" in text
    assert "11,5-15" in text                   # the 2-15 years range, not an adult's
    assert "urgent Prélèvement n° TUBE-18M" in text and "sexe masculin, 17 mois" in text
    assert f'href="/console/patients/{kid_id}#{o.order_id}"' in browser.get(
        "/console/technique").text
    lv.lab.validate_technical(bio, o.order_id)
    _console(browser, web, "biologist")
    assert "Patient : sexe féminin, 5 ans" in _text(browser.get("/console/validation"))
    assert received.order_id


def test_a_result_entered_again_shows_the_value_it_replaced_to_staff_only(
        web: World, browser: TestClient) -> None:
    """QA lab 3: a potassium entered 6.9 (critical), then entered again 4.2 after a
    rerun, reached the biologist as a plain normal 4.2 -- "tous les résultats sont
    normaux", nothing saying that the value changed. The bench, the worklist and the
    patient page now say when it was entered again and the value it replaced; the
    patient's portal and PDF do not (what was validated is what they get)."""
    a, lv = web.a, web.lv
    tech = web.actor(a.emails["technician"])
    (hb, k) = order(web, a, a.patients[0], step="preliminary",
                    results=[{"code": "718-7", "value": 13.1, "unit": "g/dL"},
                             {"code": K, "value": 6.9, "unit": "mmol/L"}])
    lv.lab.enter_results(tech, hb.order_id, [{"code": K, "value": 4.2, "unit": "mmol/L"}])
    said = "ressaisi le "
    replaced = "valeur remplacée : 6,9 mmol/L (très haut (critique))"
    _console(browser, web, "technician")
    bench = _text(browser.get("/console/technique"))
    assert said in bench and replaced in bench
    lv.lab.validate_technical(tech, hb.order_id)
    _console(browser, web, "biologist")
    page = _text(browser.get("/console/validation"))
    assert replaced in page and "4,2" in page
    assert replaced in _text(browser.get(f"/console/patients/{a.patients[0]}"))
    bio = web.actor(a.emails["biologist"])
    lv.lab.validate_biological(bio, hb.order_id)
    rep = lv.lab.publish(bio, hb.order_id)
    assert set(rep.reentries) == {k.observation_id} and not rep.corrections
    (was,) = rep.as_json()["reentries"][k.observation_id]        # the REST door's review
    assert was["previous"]["value"] == 6.9 and was["previous"]["flag"] == "HH"
    assert "reentries" not in rep.as_json(staff_names=False)     # the patient's download
    _console(browser, web, "patient")
    portal = _text(browser.get("/portail"))
    assert "4,2" in portal and said not in portal and "6,9" not in portal
    from labvault.web.pdf import report_html
    assert said not in report_html(rep, {}, "Laboratoire a")


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


def test_validate_all_normal_sent_twice_does_not_count_validated_orders_as_left(
        web: World, browser: TestClient) -> None:
    """QA lab 8: "Valider tous les normaux" clicked twice answered the second time "0
    demande(s) validée(s) ; 1 laissée(s) pour revue" -- an order validated a second
    earlier, counted as waiting for review while the list below no longer had it."""
    a = web.a
    view = order(web, a, a.patients[0], step="technical")
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    form = {"csrf": csrf_in(page.text),
            "shown": [v for v in re.findall(r'name="shown" value="([^"]*)"', page.text)
                      if "=" in v]}
    first = _text(browser.post("/console/validation", data=form))
    assert "1 demande(s) validée(s) ; 0 laissée(s) pour revue." in first
    second = _text(browser.post("/console/validation", data=form))
    assert "0 demande(s) validée(s) ; 0 laissée(s) pour revue ; 1 n'attendai(en)t plus" in second
    assert web.lv.lab.get_order(web.actor(a.emails["biologist"]), view.order_id).status == \
        L.OrderStatus.FINAL


def test_a_report_corrected_after_publication_says_to_send_it_again(
        web: World, browser: TestClient) -> None:
    """QA lab 9: after a correction the patient's page offered the PDF "à transmettre au
    prescripteur" exactly as before: nothing said that the doctor may hold the previous
    version. It says so now, with when the last correction was made."""
    a = web.a
    rep = order(web, a, a.patients[0])
    _console(browser, web, "biologist")
    page = browser.get(f"/console/patients/{a.patients[0]}")
    assert "corrigé après sa diffusion" not in _text(page)
    k = next(o.observation_id for o in rep.observations if o.observation.code == K)
    web.lv.lab.amend(web.actor(a.emails["biologist"]), k,
                     {"code": K, "value": 3.1, "unit": "mmol/L"}, "erreur de saisie")
    text = _text(browser.get(f"/console/patients/{a.patients[0]}"))
    assert "Compte rendu corrigé après sa diffusion (dernière correction le " in text
    assert "transmettez-lui la version corrigée" in text


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


def test_the_biologist_corrects_a_published_result_from_the_console(
        web: World, browser: TestClient) -> None:
    """QA lab 11: a result found wrong after publication could be corrected only through
    the REST API with a bearer token -- nothing on the console a biologist works in. The
    patient's page now has "Corriger un résultat diffusé": the same amendment (reason
    required, previous value kept and shown, the report marked corrected)."""
    a = web.a
    rep = order(web, a, a.patients[0])
    k = next(o.observation_id for o in rep.observations if o.observation.code == K)
    hb = next(o.observation_id for o in rep.observations if o.observation.code != K)
    _console(browser, web, "biologist")
    page = browser.get(f"/console/patients/{a.patients[0]}")
    assert "Corriger un résultat diffusé" in _text(page)
    url = f"/console/demandes/{rep.order_id}/correction"
    token = csrf_in(page.text)
    no_reason = browser.post(url, data={"csrf": token, "observation_id": k, "value": "3,1"})
    assert no_reason.status_code == 422
    assert "le champ « motif de la correction » est obligatoire" in _text(no_reason)
    word = browser.post(url, data={"csrf": token, "observation_id": k, "value": "bas",
                                   "reason": "erreur de saisie"})
    assert word.status_code == 422 and "valeur corrigée" in _text(word)
    elsewhere = browser.post(f"/console/demandes/{order(web, a, a.patients[1]).order_id}"
                             "/correction", data={"csrf": token, "observation_id": k,
                                                  "value": "3,1", "reason": "x"})
    assert elsewhere.status_code == 404
    r = browser.post(url, data={"csrf": token, "observation_id": k, "value": "3,1",
                                "reason": "erreur de saisie"})
    assert r.status_code == 303
    assert r.headers["location"] == f"/console/patients/{a.patients[0]}#{rep.order_id}"
    text = _text(browser.get(f"/console/patients/{a.patients[0]}"))
    assert "valeur précédente : 4,2 mmol/L (normal) — motif : erreur de saisie" in text
    assert "3,1" in text and "Compte rendu corrigé après sa diffusion" in text
    bio = web.actor(a.emails["biologist"])
    assert web.lv.lab.get_observation(bio, k).status == "amended"
    assert web.lv.lab.get_observation(bio, hb).status == "final"
    _console(browser, web, "technician")
    tech_page = browser.get(f"/console/patients/{a.patients[0]}")
    assert "Corriger un résultat diffusé" not in _text(tech_page)
    assert browser.post(url, data={"csrf": csrf_in(tech_page.text), "observation_id": k,
                                   "value": "3,2", "reason": "x"}).status_code == 403


def test_the_patient_page_says_why_an_order_was_closed(web: World,
                                                       browser: TestClient) -> None:
    """QA lab 12: a refused specimen or a cancelled order read "— refusée" / "— annulée"
    on the patient's page and nothing else: not why, when, nor by whom -- what the desk
    needs to tell the patient before taking a new sample."""
    a, lv = web.a, web.lv
    (hb, _k) = order(web, a, a.patients[0], step="preliminary")
    lv.lab.reject(web.actor(a.emails["technician"]), hb.order_id, "hemolysed", "tube rose")
    gone = order(web, a, a.patients[0], step="received")
    lv.lab.cancel(web.actor(a.emails["biologist"]), gone.order_id, "demande en double")
    _console(browser, web, "biologist")
    text = _text(browser.get(f"/console/patients/{a.patients[0]}"))
    assert "Prélèvement refusé le " in text
    assert "par Hugo Lefebvre : prélèvement hémolysé — tube rose." in text
    assert "Demande annulée le " in text and ": demande en double." in text


def test_the_patient_page_reads_identity_first_and_phones_as_written(
        web: World, browser: TestClient) -> None:
    """QA lab 13: the record opened on "Données médicales", then contact and insurance,
    the identity last (the service lists categories alphabetically); the phone read
    "+33600000000"."""
    from labvault.web.render import phone_fr
    a = web.a
    _console(browser, web, "biologist")
    text = _text(browser.get(f"/console/patients/{a.patients[0]}"))
    order_ = [text.index(h) for h in ("Identité", "Coordonnées", "Assurance maladie",
                                      "Données médicales")]
    assert order_ == sorted(order_)
    assert "ce que votre fonction permet : identité, coordonnées, assurance maladie, " \
           "données médicales." in text
    phone = str(a.patient_data[0]["phone"])
    assert phone_fr(phone) in text and phone_fr(phone) != phone
    assert phone_fr("+33612345678") == "06 12 34 56 78"
    assert phone_fr("+41223456789") == "+41 22 345 67 89"
    assert phone_fr("pas un numéro") == "pas un numéro"


def test_a_refused_correction_keeps_what_the_biologist_typed(
        web: World, browser: TestClient) -> None:
    """QA: a correction or a conclusion refused (no reason, a value that is no number)
    went to the generic error page, "revenez en arrière" -- and a page that is never
    cached came back empty. Now the patient's page comes back (422) with the refusal next
    to its field and what was typed kept; nothing changed."""
    a = web.a
    rep = order(web, a, a.patients[0], conclusion="Bilan normal.")
    k = next(o.observation_id for o in rep.observations if o.observation.code == K)
    _console(browser, web, "biologist")
    page = browser.get(f"/console/patients/{a.patients[0]}")
    token = csrf_in(page.text)
    url = f"/console/demandes/{rep.order_id}/correction"
    r = browser.post(url, data={"csrf": token, "observation_id": k, "value": "  ",
                                "reason": "tube du voisin, recontrôlé"})
    assert r.status_code == 422
    form = r.text.split(f'id="correction-{rep.order_id}"', 1)[1].split("</form>", 1)[0]
    assert "Valeur corrigée : la valeur corrigée manque" in unescape(form)
    assert 'value="tube du voisin, recontrôlé"' in unescape(form)
    assert f'<option value="{k}" selected>' in form
    assert f'aria-describedby="err-value-{rep.order_id}" aria-invalid="true"' in form
    r = browser.post(url, data={"csrf": token, "observation_id": k, "value": "bas",
                                "reason": "tube du voisin, recontrôlé"})
    assert r.status_code == 422
    form = r.text.split(f'id="correction-{rep.order_id}"', 1)[1].split("</form>", 1)[0]
    assert 'value="bas"' in form and "Valeur corrigée : " in unescape(form)
    text = "Bilan à contrôler : hémolyse probable sur le tube."
    r = browser.post(f"/console/demandes/{rep.order_id}/conclusion",
                     data={"csrf": token, "conclusion": text, "reason": " "})
    assert r.status_code == 422
    form = r.text.split(f'id="conclusion-{rep.order_id}"', 1)[1].split("</form>", 1)[0]
    assert f">{text}</textarea>" in unescape(form)
    assert "Motif de la correction : le champ « motif de la correction » est obligatoire" \
        in unescape(form)
    bio = web.actor(a.emails["biologist"])
    assert web.lv.lab.get_observation(bio, k).status == "final"           # nothing changed
