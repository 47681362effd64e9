"""The report as the patient and the prescribing doctor read it (QA pass of the patient and
doctor side): who prescribed it, who validated it, the laboratory's identity, times said in
Paris time, French numbers, a withdrawn result without its value; and the pages around it
(enrolment refusals in French, the console's coverage)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from html import unescape
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from labvault.domain.actors import Actor
from labvault.web.pdf import report_html
from tests.access.conftest import PASSWORD, World
from tests.web.helpers import REQ, csrf_in, form_login, order, text_of

PRESCRIBER = f"{REQ['prescriber']['name']} (RPPS {REQ['prescriber']['rpps']})"



def test_each_report_names_the_doctor_who_ordered_it(web: World, browser: TestClient) -> None:
    """The order's prescriber (name and RPPS), not the patient record's usual doctor, is
    on the portal, the PDF, the biologist's worklist and the patient's page in the console:
    the doctor to phone about a critical value."""
    a = web.a
    usual = a.patient_data[0]["prescriber"]["name"]
    assert usual != REQ["prescriber"]["name"]
    rep = order(web, a, a.patients[0])
    waiting = order(web, a, a.patients[0], step="technical")
    assert rep.prescriber == REQ["prescriber"]
    assert rep.as_json()["prescriber"] == REQ["prescriber"]
    form_login(browser, web, a.emails["patient"], staff=False)
    assert f"Prescrit par {PRESCRIBER}" in text_of(browser.get("/portail").text)
    patient = web.lv.accounts.resolve(browser.cookies["labvault_session"])
    mine = browser.app.state.portal.my_report(patient, rep.report_id)  # type: ignore[attr-defined]
    assert f"Prescripteur : {PRESCRIBER}" in text_of(report_html(mine, {}, "Laboratoire a"))
    bio = TestClient(browser.app, base_url="http://testserver", follow_redirects=False)
    form_login(bio, web, a.emails["biologist"])
    page = text_of(bio.get(f"/console/patients/{a.patients[0]}").text)
    assert f"Prescripteur de cette demande : {PRESCRIBER}" in page
    worklist = text_of(bio.get("/console/validation").text)
    assert waiting.order_id and f"Prescripteur : {PRESCRIBER}" in worklist


def test_pdf_names_the_lab_the_validating_biologist_and_the_time_zone(
        web: World, browser: TestClient) -> None:
    a = web.a
    rep = order(web, a, a.patients[0], results=[{"code": "2823-3", "value": "3.9",
                                                 "unit": "mmol/L"}])
    form_login(browser, web, a.emails["patient"], staff=False)
    pdf = browser.get(f"/portail/rapports/{rep.report_id}.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    patient = web.lv.accounts.resolve(browser.cookies["labvault_session"])
    portal = browser.app.state.portal  # type: ignore[attr-defined]
    mine, record = portal.my_report(patient, rep.report_id), portal.my_record(patient)
    lab = web.lv.tenants.get(a.tenant_id)
    words = text_of(report_html(mine, record, lab.name, lab.finess,
                               portal.my_specimens(patient, mine)))
    biologist = web.lv.accounts.name_of(web.actor(a.emails["biologist"]))
    assert f"FINESS {lab.finess}" in words
    assert f"Validé par {biologist}, biologiste, le " in words
    assert "heure de Paris" in words
    assert a.patient_data[0]["birth_name"].upper() in words       # NOM Prénoms
    assert "3,9" in words and "3,5-5,1 mmol/L" in words and "3.5" not in words
    # when the blood was drawn (SPEC: 08:30 Paris time), not only when the order was typed
    assert "Prélèvement (sang total) du 01/03/2026 à 08:30" in words
    if shutil.which("pdftotext") is not None:       # the route prints the same page
        text = " ".join(subprocess.run(["pdftotext", "-", "-"], input=pdf.content,
                                       capture_output=True, check=True).stdout.decode().split())
        for said in (f"FINESS {lab.finess}", "Prélèvement (sang total) du 01/03/2026 à 08:30",
                     f"Validé par {biologist}", f"Prescripteur : {PRESCRIBER}"):
            assert said in text, said


def test_a_withdrawn_result_shows_no_value_to_the_patient(web: World,
                                                         browser: TestClient) -> None:
    """A result its sender withdrew (OBX-11 D/W) is listed as cancelled, without the
    withdrawn number: on paper (pdftotext) the strike-through is lost and 4,1 reads as a
    result. Staff still see it."""
    a = web.a
    rep = order(web, a, a.patients[0], results=[{"code": "718-7", "value": 13.1,
                                                 "unit": "g/dL"},
                                                {"code": "2823-3", "value": "4.1",
                                                 "unit": "mmol/L"}])
    withdrawn = replace(rep, observations=[
        replace(o, status="cancelled") if o.observation.code == "2823-3" else o
        for o in rep.observations])
    portal = text_of(report_html(withdrawn, {}, "Laboratoire a"))
    assert "annulé" in portal and "4,1" not in portal and "13,1" in portal
    from labvault.web.render import ENV
    staff = text_of(ENV.get_template("_results.html").render(report=withdrawn, staff=True))
    assert "4,1" in staff and "annulé" in staff


def test_enrolment_refuses_a_guessable_password_in_french(web: World,
                                                          browser: TestClient) -> None:
    """zxcvbn's refusal ("too easy to guess") was shown in English on the French page."""
    out = web.lv.accounts.create(Actor.operator(), web.a.tenant_id, ["patient"],
                                 "Paul Renard", "paul.renard.portail@example.org",
                                 patient_id=web.a.patients[1])
    token = unquote(out["enrolment_link"].split("#token=", 1)[1])
    for _ in range(2):
        page = browser.get("/enrol")
        r = browser.post("/enrol", data={"token": token, "password": "Aaaaaaaaaaa1!",
                                         "again": "Aaaaaaaaaaa1!", "csrf": csrf_in(page.text)})
        assert r.status_code == 422
        assert "Mot de passe refusé : il est trop facile à deviner" in unescape(r.text)
        assert "is too easy" not in r.text


def test_console_shows_the_patients_coverage(web: World, browser: TestClient) -> None:
    """The "Assurance maladie" section was always empty: the record keeps its coverage as
    one object, the page looked for top-level fields."""
    a = web.a
    form_login(browser, web, a.emails["biologist"])
    page = text_of(browser.get(f"/console/patients/{a.patients[0]}").text)
    cov = a.patient_data[0]["coverage"]
    assert f"caisse d'assurance maladie (AMO) {cov['amo']}" in page
    assert f"n° d'adhérent {cov['member_id']}" in page


def test_publishing_does_not_claim_the_prescriber_has_the_report(web: World,
                                                                 browser: TestClient) -> None:
    """labvault sends nothing to prescribers: "Diffuser" and "Valider et diffuser" said the
    prescriber could read the report; they now say the patient can, and that the lab must
    send it to the prescriber itself."""
    a = web.a
    first = order(web, a, a.patients[0], step="final")
    second = order(web, a, a.patients[0], step="technical")
    form_login(browser, web, a.emails["biologist"])
    token = csrf_in(browser.get("/console").text)
    done = [browser.post(f"/console/diffusion/{first.order_id}", data={"csrf": token}),
            browser.post(f"/console/validation/{second.order_id}",
                         data={"csrf": token, "diffuser": "1"})]
    for r in done:
        said = text_of(r.text)
        assert r.status_code == 200 and "le patient peut l" in said and "sur son portail" in said
        assert "ne l'envoie pas au prescripteur" in said
        assert "le prescripteur et le patient" not in said


def test_publishing_says_when_the_report_was_queued_for_the_prescribers_system(
        web: World, browser: TestClient) -> None:
    """With a delivery destination for the order's prescriber, "Diffuser" and "Valider et
    diffuser" say the report was queued for the prescriber's system (and no longer that
    labvault sends nothing); a destination for another prescriber changes nothing."""
    a, op = web.a, Actor.operator()
    rpps = str(REQ["prescriber"]["rpps"])  # type: ignore[index]
    orders = [order(web, a, a.patients[0], step=s) for s in ("final", "final", "technical")]
    form_login(browser, web, a.emails["biologist"])
    token = csrf_in(browser.get("/console").text)

    def destination(number: str) -> None:
        web.lv.delivery.add_destination(op, a.tenant_id, "CHU", "127.0.0.1", 2575, [number],
                                        insecure_plaintext=True)
    destination("10000000041")                     # another prescriber's system
    said = text_of(browser.post(f"/console/diffusion/{orders[0].order_id}",
                               data={"csrf": token}).text)
    assert "ne l'envoie pas au prescripteur" in said and "file d'envoi" not in said
    destination(rpps)
    done = [browser.post(f"/console/diffusion/{orders[1].order_id}", data={"csrf": token}),
            browser.post(f"/console/validation/{orders[2].order_id}",
                         data={"csrf": token, "diffuser": "1"})]
    for r in done:
        said = text_of(r.text)
        assert r.status_code == 200 and "sur son portail" in said
        assert "mis en file d'envoi vers le système du prescripteur" in said
        assert "ne l'envoie pas au prescripteur" not in said
    assert len(web.lv.delivery.status(op, a.tenant_id, ["pending"])) == 2


def test_the_patient_page_says_whether_each_report_reached_the_prescribers_system(
        web: World, browser: TestClient) -> None:
    """The patient page told staff, beside every published report, that labvault does not
    send it to the prescriber, even with a delivery destination taking this prescriber's
    reports. It now says, per report, that it is queued, received (with when) or not
    delivered (to be sent by hand), and only without a destination that none is sent."""
    a, op = web.a, Actor.operator()
    rpps = str(REQ["prescriber"]["rpps"])  # type: ignore[index]
    pid = a.patients[0]
    form_login(browser, web, a.emails["biologist"])
    token = csrf_in(browser.get("/console").text)
    first = order(web, a, pid, step="final")
    browser.post(f"/console/diffusion/{first.order_id}", data={"csrf": token})
    page = text_of(browser.get(f"/console/patients/{pid}").text)
    assert "aucun envoi automatique n'est prévu pour ce prescripteur" in page
    web.lv.delivery.add_destination(op, a.tenant_id, "CHU", "127.0.0.1", 2575, [rpps],
                                    insecure_plaintext=True)
    second, third = order(web, a, pid, step="final"), order(web, a, pid, step="final")
    for o in (second, third):
        browser.post(f"/console/diffusion/{o.order_id}", data={"csrf": token})
    page = text_of(browser.get(f"/console/patients/{pid}").text)
    assert page.count("en file d'envoi vers le système du prescripteur") == 2
    due = {d.report_id: d for d in web.lv.delivery.due(a.tenant_id)}
    assert len(due) == 2
    got, lost = sorted(due.values(), key=lambda d: d.outbox_id)
    web.lv.delivery.record(got, "delivered", ack_code="AA")
    web.lv.delivery.record(lost, "refused", ack_code="AE", error="patient inconnu")
    page = text_of(browser.get(f"/console/patients/{pid}").text)
    assert "reçu par le système du prescripteur le" in page
    assert "non remis au système du prescripteur" in page
    assert "patient inconnu" not in page                     # the error stays in the CLI/alert
    assert page.count("aucun envoi automatique n'est prévu pour ce prescripteur") == 1


def test_patients_find_the_second_factor_page(web: World, browser: TestClient) -> None:
    """Patients may protect their account with a second factor (/mfa), but no page led
    there: the portal's menu now does."""
    form_login(browser, web, web.a.emails["patient"], staff=False)
    assert 'href="/mfa"' in browser.get("/portail").text
    assert browser.get("/mfa").status_code == 200


def test_every_interpretation_flag_is_said_in_french(web: World, browser: TestClient) -> None:
    """A CRP "<10" mg/L (range <=5) is indeterminate: the portal showed the code "IND"."""
    from labvault.domain.lab import Flag
    from labvault.web.render import FLAG_FR
    assert set(FLAG_FR) == {f.value for f in Flag}
    a = web.a
    order(web, a, a.patients[0], results=[{"code": "1988-5", "value": "<10", "unit": "mg/L"}])
    form_login(browser, web, a.emails["patient"], staff=False)
    page = text_of(browser.get("/portail").text)
    assert "indéterminé" in page and " IND " not in f" {page} "


def test_every_purpose_of_an_access_is_said_in_french() -> None:
    """"Qui a consulté mon dossier" said "breach" (the Art. 34 letters read the patient's
    address), "guard", "backup"... in English: every purpose the code audits has its words."""
    import pathlib

    import labvault
    from labvault.web.render import ENV, PURPOSE_FR
    src = pathlib.Path(labvault.__file__).parent
    used = {m for f in src.rglob("*.py")
            for m in re.findall(r'purpose="([a-z-]+)"', f.read_text(encoding="utf-8"))}
    assert used and used <= set(PURPOSE_FR), sorted(used - set(PURPOSE_FR))
    row = {"at": "2026-03-01T08:00:00+00:00", "actor_kind": "operator", "lab": None,
           "action": "read", "categories": ["contact"], "purpose": "breach",
           "break_glass": False}
    page = text_of(ENV.get_template("access_log.html").render(
        user=None, rows=[row], dpo={"name": "", "email": "", "phone": ""}))
    assert "information après une violation de données" in page and "breach" not in page


def test_each_pdf_link_says_which_report_it_downloads(web: World, browser: TestClient) -> None:
    """Screen readers list links out of context: "Télécharger en PDF" five times said
    nothing of which report (WCAG 2.4.4); each link's name now carries its report's date."""
    a = web.a
    for _ in range(2):
        order(web, a, a.patients[0])
        web.clock.advance(seconds=120)
    form_login(browser, web, a.emails["patient"], staff=False)
    names = re.findall(r'aria-label="(Télécharger en PDF le compte rendu du [^"]+)"',
                       unescape(browser.get("/portail").text))
    assert len(names) == 2 and len(set(names)) == 2


def test_an_erased_patient_has_no_portal_account_left(web: World, browser: TestClient) -> None:
    """After crypto-shredding, the portal account still logged in (to an English "no such
    patient" page) and kept the name, e-mail and password hash the erasure was asked for."""
    from labvault.errors import AuthenticationFailed, NotFound
    a = web.a
    form_login(browser, web, a.emails["patient"], staff=False)
    assert browser.get("/portail").status_code == 200
    web.lv.patients.erase(Actor.operator(), a.patients[0])
    assert browser.get("/portail").headers["location"] == "/login"   # its session ended
    with pytest.raises(AuthenticationFailed):
        web.lv.accounts.login(a.emails["patient"], PASSWORD)
    with pytest.raises(NotFound):
        web.lv.accounts.get(Actor.operator(), a.accounts["patient"])
    # staff accounts and other patients' accounts are untouched
    assert web.lv.accounts.get(Actor.operator(), a.accounts["biologist"])["status"] == "active"


def test_an_unknown_page_address_answers_a_french_page(web: World,
                                                       browser: TestClient) -> None:
    """A mistyped or stale address under /portail or /console answered problem+json."""
    form_login(browser, web, web.a.emails["patient"], staff=False)
    for path in ("/portail/resultats", "/console/nulle-part"):
        r = browser.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert "cette page n'existe pas" in unescape(r.text)
    api = browser.get("/api/v1/nowhere")                # the API keeps its problem+json
    assert api.status_code == 404
    assert api.headers["content-type"] == "application/problem+json"


def test_the_portal_says_how_to_reach_the_dpo(web: World, browser: TestClient,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """"Qui a consulté mon dossier" and the erasure page sent the patient to the DPO
    without saying how to reach them (GDPR Art. 13): the configured contact is shown."""
    form_login(browser, web, web.a.emails["patient"], staff=False)
    assert "demandez ses coordonnées au laboratoire" in unescape(
        browser.get("/portail/acces").text)
    monkeypatch.setenv("LABVAULT_DPO_NAME", "Claire Fabre")
    monkeypatch.setenv("LABVAULT_DPO_EMAIL", "dpo@labo-flandres.example.org")
    for path in ("/portail/acces", "/portail/effacement"):
        page = text_of(browser.get(path).text)
        assert ("Délégué à la protection des données : Claire Fabre — "
                "dpo@labo-flandres.example.org.") in page
