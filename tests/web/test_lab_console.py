"""The lab workflow on the console: the bench's technical validation and specimen
rejection, the biologist's validation of what was shown, publication, partial reports,
corrections shown to the patient, and workflow errors said in French."""

from __future__ import annotations

import re
import shutil
import subprocess
from html import unescape
from typing import Any

from fastapi.testclient import TestClient

from labvault.domain import lab as L
from tests.access.conftest import World
from tests.web.helpers import HIGH, analyser_order, csrf_in, form_login, order

HB = "Hémoglobine"   # the catalogue's French labels: what the console shows
K = "Potassium"
SHOWN = re.compile(r'name="shown" value="([^"]*)"')


def _text(r: Any) -> str:
    return unescape(r.text)


def _form_of(page: str, order_id: str) -> dict[str, str]:
    """The hidden fields of the validation form of one order, as the page has them."""
    at = page.index(f'action="/console/validation/{order_id}"')
    shown = SHOWN.search(page, at)
    assert shown is not None
    return {"csrf": csrf_in(page), "shown": shown.group(1)}


def _status(w: World, order_id: str) -> L.OrderStatus:
    return w.lv.lab.get_order(w.actor(w.a.emails["biologist"]), order_id).status


def _console(browser: TestClient, w: World, role: str) -> None:
    browser.cookies.clear()
    form_login(browser, w, w.a.emails[role])


def test_technician_validates_technically_from_the_bench_page(web: World,
                                                             browser: TestClient) -> None:
    a = web.a
    (hb, _k) = order(web, a, a.patients[0], step="preliminary", results=HIGH)
    crp = order(web, a, a.patients[1], step="preliminary",
                results=[{"code": "2823-3", "value": "4.2", "unit": "mmol/L"},
                         {"code": "1988-5", "value": 3.0, "unit": "mg/L"}])[0]
    _console(browser, web, "technician")
    assert "Validation technique" in browser.get("/console").text          # menu
    page = browser.get("/console/technique")
    assert page.status_code == 200
    text = _text(page)
    assert "5,8" in text and "haut" in text and "3,5-5,1" in text.replace(" ", "")
    assert "non demandé" in text                                   # CRP on a K order
    assert f"Analyses demandées sans résultat : {HB}" in text
    assert "Valider techniquement" in text and "Refuser le prélèvement" in text
    assert f'action="/console/technique/{hb.order_id}"' in page.text
    at = page.text.index(f'action="/console/technique/{hb.order_id}"')
    shown = SHOWN.search(page.text, at)
    assert shown is not None and shown.group(1).count(":1") == 2
    done = browser.post(f"/console/technique/{hb.order_id}",
                        data={"csrf": csrf_in(page.text), "shown": shown.group(1)})
    assert done.status_code == 200 and "validés techniquement" in _text(done)
    assert _status(web, hb.order_id) == L.OrderStatus.TECHNICALLY_VALIDATED
    assert f"/console/technique/{hb.order_id}" not in browser.get("/console/technique").text
    assert crp.order_id in browser.get("/console/technique").text
    _console(browser, web, "reception")
    assert browser.get("/console/technique").status_code == 403


def test_technician_rejects_a_haemolysed_specimen(web: World, browser: TestClient) -> None:
    a = web.a
    received = order(web, a, a.patients[0], step="received")
    (hb, _k) = order(web, a, a.patients[1], step="preliminary")
    _console(browser, web, "technician")
    page = browser.get("/console/technique")
    text = _text(page)
    assert "prélèvement hémolysé" in text and "Prélèvements reçus" in text
    assert text.count('value="hemolysed"') == 2                     # both orders
    token = csrf_in(page.text)
    r = browser.post(f"/console/demandes/{hb.order_id}/refus",
                     data={"csrf": token, "reason": "hemolysed", "comment": "tube rose"})
    assert r.status_code == 200 and "Prélèvement refusé (prélèvement hémolysé)" in _text(r)
    assert _status(web, hb.order_id) == L.OrderStatus.REJECTED
    again = browser.post(f"/console/demandes/{hb.order_id}/refus",
                         data={"csrf": token, "reason": "clotted"})
    assert again.status_code == 409
    assert "le prélèvement de cette demande a été refusé par vous le" in _text(again)
    odd = browser.post(f"/console/demandes/{received.order_id}/refus",
                       data={"csrf": token, "reason": "because"})
    assert odd.status_code == 400 and "motif de refus manquant ou inconnu" in _text(odd)
    assert browser.post(f"/console/demandes/{received.order_id}/refus",
                        data={"csrf": token, "reason": "unlabelled"}).status_code == 200
    assert _status(web, received.order_id) == L.OrderStatus.REJECTED


def test_validation_refused_when_results_changed_after_display(web: World,
                                                              browser: TestClient) -> None:
    """QA 6: the page showed K 4.2; it was re-entered as 6.9 and validated technically
    again; the conclusion written while looking at 4.2 is not attached to 6.9."""
    a = web.a
    view = order(web, a, a.patients[0], step="technical")
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    form = _form_of(page.text, view.order_id)
    tech = web.actor(a.emails["technician"])
    web.lv.lab.enter_results(tech, view.order_id, [{"code": "2823-3", "value": 6.9, "unit": "mmol/L"}])
    web.lv.lab.validate_technical(tech, view.order_id)
    r = browser.post(f"/console/validation/{view.order_id}",
                     data={**form, "conclusion": "RAS, kaliémie normale"})
    assert r.status_code == 409
    assert "les résultats ont changé depuis l'ouverture de la page : relisez-les" in _text(r)
    rep = web.lv.lab.get_report_by_order(web.actor(a.emails["biologist"]), view.order_id)
    assert rep.order_status == L.OrderStatus.TECHNICALLY_VALIDATED and rep.conclusion is None
    page = browser.get("/console/validation")
    assert "6,9" in page.text and "valeur critique" in _text(page)
    ok = browser.post(f"/console/validation/{view.order_id}",
                      data={**_form_of(page.text, view.order_id),
                            "conclusion": "Hyperkaliémie menaçante"})
    assert ok.status_code == 200 and "Demande validée avec votre conclusion" in _text(ok)


def test_validate_all_normal_takes_the_orders_shown_and_says_why(web: World,
                                                                browser: TestClient) -> None:
    a = web.a
    normal = order(web, a, a.patients[0], step="technical")
    high = order(web, a, a.patients[1], step="technical", results=HIGH)
    (k_only,) = order(web, a, a.patients[2], step="preliminary",
                      results=[{"code": "2823-3", "value": "4.2", "unit": "mmol/L"}])
    web.lv.lab.validate_technical(web.actor(a.emails["technician"]), k_only.order_id)
    changed = order(web, a, a.patients[0], step="technical")
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    assert "à revoir : résultat hors des valeurs de référence" in _text(page)
    assert f"à revoir : analyses demandées sans résultat ({HB})" in _text(page)
    shown = [v for v in SHOWN.findall(page.text) if "=" in v]
    assert len(shown) == 4
    late = order(web, a, a.patients[1], step="technical")          # never on the page
    tech = web.actor(a.emails["technician"])
    web.lv.lab.enter_results(tech, changed.order_id, [{"code": "2823-3", "value": 4.4, "unit": "mmol/L"}])
    web.lv.lab.validate_technical(tech, changed.order_id)
    done = browser.post("/console/validation", data={"csrf": csrf_in(page.text),
                                                     "shown": shown})
    text = _text(done)
    assert done.status_code == 200 and "1 demande(s) validée(s) ; 3 laissée(s)" in text
    assert f"résultat hors des valeurs de référence ({K})" in text
    assert f"analyses demandées sans résultat ({HB})" in text
    assert "les résultats ont changé depuis l'ouverture de la page" in text
    assert _status(web, normal.order_id) == L.OrderStatus.FINAL
    for oid in (high.order_id, k_only.order_id, changed.order_id, late.order_id):
        assert _status(web, oid) == L.OrderStatus.TECHNICALLY_VALIDATED, oid
    assert f'action="/console/validation/{late.order_id}"' in done.text     # still listed
    assert "Validées, à diffuser" in text and f"/console/diffusion/{normal.order_id}" in text


def test_a_reentered_result_is_left_for_review_on_the_validation_page(
        web: World, browser: TestClient) -> None:
    """A re-run result (entered again before validation, normal both times) was validated
    by "Valider tous les normaux" like any normal one: the page now says it is to be
    looked at, and the bulk validation leaves it."""
    a = web.a
    normal = order(web, a, a.patients[0], step="technical")
    (_hb, k) = order(web, a, a.patients[1], step="preliminary")
    bio = web.actor(a.emails["biologist"])
    web.lv.lab.enter_results(bio, k.order_id, [{"code": "2823-3", "value": "4.3",
                                                "unit": "mmol/L"}])
    web.lv.lab.validate_technical(bio, k.order_id)
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    assert (f"à revoir : résultat ressaisi avant validation (nouvelle mesure ou correction "
            f"de saisie) : comparez-le à la valeur remplacée ({K})") in _text(page)
    shown = [v for v in SHOWN.findall(page.text) if "=" in v]
    done = browser.post("/console/validation", data={"csrf": csrf_in(page.text),
                                                     "shown": shown})
    text = _text(done)
    assert "1 demande(s) validée(s) ; 1 laissée(s)" in text
    assert "résultat ressaisi avant validation" in text
    assert _status(web, normal.order_id) == L.OrderStatus.FINAL
    assert _status(web, k.order_id) == L.OrderStatus.TECHNICALLY_VALIDATED


def test_no_reference_range_is_said_as_such(web: World, browser: TestClient) -> None:
    """QA 17: haemoglobin of a patient of unknown sex has no range: the summary says so
    rather than "out of the reference range"."""
    from labvault.domain.actors import Actor
    from tests.access.conftest import patient_json
    a = web.a
    data = {**patient_json(77, seed=3), "sex": "U"}
    data.pop("nir", None)
    pid = web.lv.patients.register(Actor.operator(), a.tenant_id, data)
    order(web, a, pid, step="technical")
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    done = browser.post("/console/validation", data={"csrf": csrf_in(page.text),
                                                     "shown": SHOWN.findall(page.text)[0]})
    text = _text(done)
    assert f"pas de valeurs de référence pour ce patient ({HB})" in text
    assert "hors des valeurs de référence" not in text


def test_validate_and_publish_then_publish_from_the_list(web: World,
                                                         browser: TestClient) -> None:
    a = web.a
    first = order(web, a, a.patients[0], step="technical", results=HIGH)
    second = order(web, a, a.patients[0], step="technical")
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    assert "Valider et diffuser" in page.text
    r = browser.post(f"/console/validation/{first.order_id}",
                     data={**_form_of(page.text, first.order_id), "diffuser": "1",
                           "conclusion": "Hyperkaliémie modérée"})
    assert r.status_code == 200 and "et diffusée" in _text(r)
    assert _status(web, first.order_id) == L.OrderStatus.PUBLISHED
    r = browser.post(f"/console/validation/{second.order_id}",
                     data=_form_of(page.text, second.order_id))
    assert "pas encore diffusé" in _text(r) and f"/console/diffusion/{second.order_id}" in r.text
    page = browser.get("/console/validation")
    assert "Validées, à diffuser" in _text(page)
    r = browser.post(f"/console/diffusion/{second.order_id}", data={"csrf": csrf_in(page.text)})
    assert r.status_code == 200 and "Compte rendu diffusé" in _text(r)
    again = browser.post(f"/console/diffusion/{second.order_id}",
                         data={"csrf": csrf_in(page.text)})
    assert again.status_code == 409 and "déjà diffusée par vous le " in _text(again)
    _console(browser, web, "patient")
    portal = _text(browser.get("/portail"))
    assert "Hyperkaliémie modérée" in portal and portal.count("Compte rendu du") == 2
    download = browser.get("/portail/donnees.json").text       # staff are never named
    assert '"biological"' in download and "Léa Moreau" not in download


def test_partial_report_needs_a_tick_and_is_marked_for_the_patient(
        web: World, browser: TestClient) -> None:
    """QA 18: a K-only result on a Hb + K order: said on the page, validated only with
    the tick, and the published report says it is partial (portal and PDF)."""
    a = web.a
    (k,) = order(web, a, a.patients[0], step="preliminary",
                 results=[{"code": "2823-3", "value": "4.2", "unit": "mmol/L"}])
    web.lv.lab.validate_technical(web.actor(a.emails["technician"]), k.order_id)
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    assert "valider un compte rendu partiel" in _text(page)
    form = _form_of(page.text, k.order_id)
    r = browser.post(f"/console/validation/{k.order_id}", data=form)
    assert r.status_code == 409 and f"pas encore de résultat pour : {HB}" in _text(r)
    assert "valider un compte rendu partiel" in _text(r)
    r = browser.post(f"/console/validation/{k.order_id}",
                     data={**form, "partial": "1", "diffuser": "1"})
    assert r.status_code == 200 and "partiel" in _text(r)
    _console(browser, web, "patient")
    assert f"Compte rendu partiel : pas encore de résultat pour {HB}" in _text(
        browser.get("/portail"))
    patient = web.lv.accounts.resolve(browser.cookies["labvault_session"])
    report_id = web.lv.lab.get_report_by_order(patient, k.order_id).report_id
    _pdf_says(web, browser, report_id, f"Compte rendu partiel : pas encore de résultat pour {HB}")


def test_correction_after_publication_is_shown(web: World, browser: TestClient) -> None:
    """QA 8: the corrected line says when, the previous value and why; the old conclusion
    is flagged until the biologist rewrites it, then shown as corrected too."""
    a = web.a
    rep = order(web, a, a.patients[0], results=[{"code": "718-7", "value": 13.1,
                                                 "unit": "g/dL"},
                                                {"code": "2823-3", "value": "5.6", "unit": "mmol/L"}],
                conclusion="Hyperkaliémie")
    kid = next(o.observation_id for o in rep.observations if o.observation.code == "2823-3")
    web.lv.lab.amend(web.actor(a.emails["biologist"]), kid,
                     {"code": "2823-3", "value": 1.9, "unit": "mmol/L"}, "inversion de tubes")
    _console(browser, web, "patient")
    portal = _text(browser.get("/portail"))
    assert "corrigé le " in portal and "valeur précédente : 5,6 mmol/L (haut)" in portal
    assert "motif : inversion de tubes" in portal and "1,9" in portal
    assert "rédigée avant la correction" in portal
    _pdf_says(web, browser, rep.report_id, "valeur précédente : 5,6 mmol/L")
    _console(browser, web, "biologist")
    page = browser.get(f"/console/patients/{a.patients[0]}")
    assert "valeur précédente : 5,6" in _text(page) and "Corriger la conclusion" in _text(page)
    url = f"/console/demandes/{rep.order_id}/conclusion"
    missing = browser.post(url, data={"csrf": csrf_in(page.text), "conclusion": "Hypokaliémie"})
    assert missing.status_code == 422
    r = browser.post(url, data={"csrf": csrf_in(page.text), "conclusion": "Hypokaliémie sévère",
                                "reason": "conclusion revue après correction"})
    assert r.status_code == 303 and r.headers["location"] == f"/console/patients/{a.patients[0]}"
    _console(browser, web, "patient")
    portal = _text(browser.get("/portail"))
    assert "Conclusion du biologiste : Hypokaliémie sévère" in portal.replace("</strong>", "")
    assert "Conclusion corrigée le " in portal
    assert "conclusion précédente : « Hyperkaliémie »" in portal
    assert "rédigée avant la correction" not in portal
    _pdf_says(web, browser, rep.report_id, "conclusion précédente")


def test_workflow_errors_are_french_and_say_what_to_do(web: World,
                                                       browser: TestClient) -> None:
    """QA 17: the states are said as steps, with who and when, in French."""
    a = web.a
    (hb, _k) = order(web, a, a.patients[0], step="preliminary")
    _console(browser, web, "biologist")
    token = csrf_in(browser.get("/console").text)
    r = browser.post(f"/console/validation/{hb.order_id}", data={"csrf": token})
    assert r.status_code == 409
    assert ("validation technique manquante : un technicien doit d'abord valider ces "
            "résultats") in _text(r) and "allowed next states" not in r.text
    web.lv.lab.validate_technical(web.actor(a.emails["technician"]), hb.order_id)
    r = browser.post(f"/console/technique/{hb.order_id}", data={"csrf": token})
    assert "déjà validée techniquement par Hugo Lefebvre le " in _text(r)
    assert browser.post(f"/console/validation/{hb.order_id}",
                        data={"csrf": token}).status_code == 200
    r = browser.post(f"/console/validation/{hb.order_id}", data={"csrf": token})
    assert r.status_code == 409 and "déjà validée par vous le " in _text(r)
    forged = browser.post(f"/console/validation/{hb.order_id}", data={"csrf": "x"})
    assert forged.status_code == 403 and ("le formulaire a expiré ou ne vient pas de "
                                          "labvault : rechargez la page") in _text(forged)
    assert "did not come from" not in forged.text


def _pdf_says(web: World, browser: TestClient, report_id: str, words: str) -> None:
    """The portal's PDF of a report contains ``words``: the page it is printed from always,
    the PDF's own text too when the machine has pdftotext (as test_web's accents test)."""
    from labvault.web.pdf import report_html
    pdf = browser.get(f"/portail/rapports/{report_id}.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    patient = web.lv.accounts.resolve(browser.cookies["labvault_session"])
    rep = browser.app.state.portal.my_report(patient, report_id)  # type: ignore[attr-defined]
    source = re.sub(r"<[^>]+>", " ", unescape(report_html(rep, {}, "Laboratoire a")))
    assert words in " ".join(source.split())
    if shutil.which("pdftotext") is None:
        return
    text = subprocess.run(["pdftotext", "-", "-"], input=pdf.content, capture_output=True,
                          check=True).stdout.decode()
    assert words in " ".join(text.split()), text


def test_the_analyser_s_range_and_flag_are_shown_and_a_contradiction_is_left_for_review(
        web: World, browser: TestClient) -> None:
    """OBX-7/8 beside labvault's range and flag, for staff only; an analyser's H on a
    value the catalogue calls normal is not validated with "valider tous les normaux"."""
    a = web.a
    flagged = analyser_order(web, a, 0, "OBX|1|NM|2823-3^K^LN||4.2|mmol/l|3.4-4.0|H|||F",
                             control="W1")
    agreed = analyser_order(web, a, 1, "OBX|1|NM|2823-3^K^LN||4.3|mmol/L|3.5-5.1|N|||F",
                            control="W2")
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    text = _text(page)
    assert "automate : 3.4-4.0" in text and "automate : H (ne concorde pas)" in text
    assert "automate : 3.5-5.1" in text and "automate : N" in text
    why = f"{K} : l'automate l'a signalé H, le catalogue dit normal"
    assert f"à revoir : l'automate et le catalogue ne concordent pas ({why})" in text
    done = browser.post("/console/validation", data={
        "csrf": csrf_in(page.text), "shown": [v for v in SHOWN.findall(page.text) if "=" in v]})
    text = _text(done)
    assert "1 demande(s) validée(s) ; 1 laissée(s)" in text
    assert f"l'automate et le catalogue ne concordent pas ({why})" in text
    assert _status(web, flagged) == L.OrderStatus.TECHNICALLY_VALIDATED
    assert _status(web, agreed) == L.OrderStatus.FINAL
    assert "automate :" in _text(browser.get(f"/console/patients/{a.patients[0]}"))
    # the patient's portal shows labvault's interpretation only
    web.lv.lab.validate_final(web.actor(a.emails["biologist"]), flagged, None)
    web.lv.lab.publish(web.actor(a.emails["biologist"]), flagged)
    _console(browser, web, "patient")
    portal = _text(browser.get("/portail"))
    assert "4,2" in portal and "automate" not in portal and "3.4-4.0" not in portal


def test_a_withdrawn_result_refused_in_french() -> None:
    """The console says an amendment of a withdrawn result (``ResultWithdrawn``) in the
    laboratory's words: who withdrew it and when, and what to do -- amend the result in
    force, or, when the report has none for that test, a new order."""
    from datetime import UTC, datetime

    from labvault.services.lab import ResultWithdrawn, Step
    from labvault.web.lab_text import french
    step = Step("acc_t", datetime(2026, 3, 6, 9, 30, tzinfo=UTC), {"name": "Hugo Lefebvre"})
    message, hint = french(ResultWithdrawn(L.OrderStatus.PUBLISHED, "2823-3", step,
                                           "obs_now"), None) or ("", "")
    assert message.startswith("ce résultat a été retiré par Hugo Lefebvre le ")
    assert "il n'y a rien à corriger" in message
    assert hint == "corrigez le résultat en vigueur de cette analyse"
    _message, hint = french(ResultWithdrawn(L.OrderStatus.AMENDED, "2823-3", step, None),
                            "acc_t") or ("", "")
    assert _message.startswith("ce résultat a été retiré par vous le ")
    assert "une nouvelle mesure demande une nouvelle demande" in hint


def test_previous_results_and_the_delta_hold_on_the_validation_page(
        web: World, browser: TestClient) -> None:
    """Under each result, the patient's previous validated result of the test
    ("Antériorité : …"); a change beyond the test's limit (potassium 4.2 -> 6.0: 1 mmol/L)
    is said, and keeps the order out of "Valider tous les normaux". On the portal, the
    compte rendu's "Antériorité" column only: the previous value and date, never the
    delta check's words (tests/web/test_anteriorities.py)."""
    a = web.a
    order(web, a, a.patients[0])                          # published: K 4.2, Hb 13.1
    held = order(web, a, a.patients[0], step="technical",
                 results=[{"code": "718-7", "value": 13.4, "unit": "g/dL"},
                          {"code": "2823-3", "value": "6.0", "unit": "mmol/L"}])
    _console(browser, web, "biologist")
    page = browser.get("/console/validation")
    text = _text(page)
    when = r"\d\d/\d\d/\d{4} à \d\d:\d\d"
    assert re.search(rf"Antériorité : 4,2 mmol/L le {when} \(normal\)", text)
    assert re.search(rf"Antériorité : 13,1 g/dL le {when} \(normal\)", text)
    delta = (rf"écart avec l'antériorité du {when} : 4,2 → 6 mmol/L \(limite ± 1 mmol/L\) : "
             r"vérifiez l'identité du tube et le patient")
    assert re.search(delta, text)
    assert re.search(rf"à revoir : écart avec l'antériorité \({K} : {delta}\)", text)
    shown = [v for v in SHOWN.findall(page.text) if "=" in v]
    done = browser.post("/console/validation", data={"csrf": csrf_in(page.text),
                                                     "shown": shown})
    assert "0 demande(s) validée(s) ; 1 laissée(s)" in _text(done)
    assert re.search(rf"{K} : {delta}", _text(done))
    assert _status(web, held.order_id) == L.OrderStatus.TECHNICALLY_VALIDATED
    # validated one by one, published: the patient's portal prints the previous published
    # result as the compte rendu does (same collection time: the one entered first is the
    # previous), never the delta check's hold
    bio = web.actor(a.emails["biologist"])
    web.lv.lab.validate_biological(bio, held.order_id)
    web.lv.lab.publish(bio, held.order_id)
    portal = TestClient(browser.app, base_url="http://testserver", follow_redirects=False)
    form_login(portal, web, a.emails["patient"], staff=False)
    mine = " ".join(_text(portal.get("/portail")).split())
    assert "13,4" in mine and "4,2 mmol/L le 01/03/2026" in mine
    assert "Antériorité :" not in mine and "écart avec l'antériorité" not in mine
