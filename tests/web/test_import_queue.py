"""The import-issues queue on the console, "Messages d'automate" (docs/web.md): the
laboratory's staff see the analyser results labvault could not store, each role what the
policy opens (a technician no NIR, reception no result); technicians and biologists find
the patient an unknown-patient issue belongs to and attach it, say which catalogue test
an unknown code is, or discard an issue with a reason -- every refusal in French on the
issue's card, another laboratory's issue answering like an absent one."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

from fastapi.testclient import TestClient

from labvault.domain.actors import Actor
from labvault.web.queue import split_name
from tests.access.conftest import Lab, World
from tests.web.helpers import STRANGER_NIR, csrf_in, form_login, import_issue

QUEUE = "/console/messages"
K_HIGH = "OBX|1|NM|2823-3^K^LN||6.9|mmol/L|||||F"          # beyond the panic limit (6.2)
NA = "OBX|2|NM|2951-2^Na^LN||139|mmol/L|||||F"


def _text(r: Any) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", r.text)).split())


def _console(browser: TestClient, w: World, role: str) -> None:
    browser.cookies.clear()
    assert form_login(browser, w, w.a.emails[role]).status_code == 303


def _card(page: Any, issue_id: str) -> str:
    """The text of one issue's card."""
    m = re.search(rf'<section class="card" id="{issue_id}">(.*?)</section>', page.text, re.S)
    assert m, f"no card for {issue_id}"
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", m.group(1))).split())


def _alert(page: Any) -> str:
    """The refusal said on a card."""
    m = re.search(r'<div class="alert" role="alert">(.*?)</div>', page.text, re.S)
    assert m, "no refusal on the page"
    return unescape(m.group(1))


def _pid(lab: Lab, i: int, ident: str) -> str:
    """A PID naming the lab's patient ``i`` as an analyser does (name in capitals), under
    an identifier labvault does not know: the patient is not recognised."""
    p = lab.patient_data[i]
    return (f"PID|1||{ident}^^^^PI||{p['birth_name'].upper()}^{p['first_names'][0]}||"
            f"{p['birth_date'].replace('-', '')}|{p['sex']}")


def _known_pid(lab: Lab, i: int = 0) -> str:
    p = lab.patient_data[i]
    return (f"PID|1||{p['nir']}^^^^NH||{p['birth_name']}^{p['first_names'][0]}||"
            f"{p['birth_date'].replace('-', '')}|{p['sex']}")


def _open(w: World, lab: Lab) -> list[dict[str, Any]]:
    return w.lv.lab.messages.list_issues(Actor.operator(), lab.tenant_id)


def test_a_technician_sees_the_queue_without_identifiers(web: World,
                                                         browser: TestClient) -> None:
    (iid,) = import_issue(web, web.a, obx=(K_HIGH,)).issue_ids
    _console(browser, web, "technician")
    page = browser.get(QUEUE)
    assert page.status_code == 200, page.text
    assert f'href="{QUEUE}"' in page.text                    # the menu's entry
    card = _card(page, iid)
    assert "Patient non reconnu" in card and "Reçu le" in card
    assert "BARRAULT Denis, né(e) le 03/07/1961, sexe masculin" in card
    assert "2823-3 — K" in card and "6,9 — valeur critique" in card and "mmol/L" in card
    assert "Identifiants masqués pour votre rôle" in card
    assert STRANGER_NIR not in page.text and "MRN77" not in page.text
    # the patient's search, filled in with what the analyser sent
    assert 'name="birth_name" maxlength="200" autocomplete="off" value="BARRAULT"' in page.text
    assert 'value="Denis"' in page.text and 'value="1961-07-03"' in page.text
    assert f'action="{QUEUE}/{iid}/classer"' in page.text


def test_reception_sees_the_patient_as_sent_but_no_result(web: World,
                                                          browser: TestClient) -> None:
    (iid,) = import_issue(web, web.a, obx=(K_HIGH,)).issue_ids
    _console(browser, web, "reception")
    page = browser.get(QUEUE)
    assert page.status_code == 200, page.text
    card = _card(page, iid)
    assert STRANGER_NIR in card and "BARRAULT Denis" in card     # to find the record
    assert "Résultats non visibles pour votre rôle" in card
    assert "6,9" not in page.text and "6.9" not in page.text and "2823-3" not in page.text
    assert "/classer" not in page.text and "/recherche" not in page.text
    assert "revient à un technicien ou à un biologiste" in card


def test_a_biologist_sees_the_identifiers(web: World, browser: TestClient) -> None:
    (iid,) = import_issue(web, web.a, obx=(K_HIGH,)).issue_ids
    _console(browser, web, "biologist")
    card = _card(browser.get(QUEUE), iid)
    assert f"{STRANGER_NIR} (NH), MRN77 (PI)" in card and "6,9 — valeur critique" in card
    assert "masqué" not in card and "non visible" not in card


def test_an_unknown_patient_is_found_by_the_search_step_and_attached(
        web: World, browser: TestClient) -> None:
    a, lv = web.a, web.lv
    (iid,) = import_issue(web, a, _pid(a, 1, "MRN991"), (K_HIGH,)).issue_ids
    p = a.patient_data[1]
    _console(browser, web, "technician")
    page = browser.get(QUEUE)
    token = csrf_in(page.text)
    # the card's form, as filled in from the analyser's PID
    assert split_name(f"{p['birth_name'].upper()} {p['first_names'][0]}") == (
        p["birth_name"].upper(), p["first_names"][0])
    found = browser.post(f"{QUEUE}/{iid}/recherche", data={
        "csrf": token, "birth_name": p["birth_name"].upper(),
        "first_name": p["first_names"][0], "birth_date": p["birth_date"]})
    assert found.status_code == 200, _text(found)
    assert "Patients trouvés" in _text(found)
    assert f'name="patient_id" value="{a.patients[1]}"' in found.text
    assert p["nir"] not in found.text                        # minimal identity only
    done = browser.post(f"{QUEUE}/{iid}/rattacher",
                        data={"csrf": csrf_in(found.text), "patient_id": a.patients[1]})
    assert done.status_code == 200, _text(done)
    assert "1 résultat enregistré dans le dossier du patient." in _text(done)
    assert "Aucun message en attente." in _text(done)
    obs = lv.lab.list_observations(Actor.operator(), a.tenant_id)
    assert [(o.patient_id, o.observation.code) for o in obs] == [(a.patients[1], "2823-3")]
    handled = browser.get(f"{QUEUE}?statut=traites")
    assert "Rattaché : résultats enregistrés le" in _card(handled, iid)
    # nobody by that name: said, and the way to register them
    (other,) = import_issue(web, a, obx=(K_HIGH,)).issue_ids
    none = browser.post(f"{QUEUE}/{other}/recherche", data={
        "csrf": token, "birth_name": "BARRAULT", "first_name": "Denis",
        "birth_date": "1961-07-03"})
    assert "Aucun patient de votre laboratoire ne correspond" in _text(none)
    half = browser.post(f"{QUEUE}/{other}/recherche", data={"csrf": token,
                                                            "birth_name": "BARRAULT"})
    assert half.status_code == 422
    assert "Donnez le nom de naissance, le prénom et la date de naissance." in _text(half)


def test_an_unknown_code_is_mapped_to_a_catalogue_test(web: World,
                                                      browser: TestClient) -> None:
    a, lv = web.a, web.lv
    (iid,) = import_issue(web, a, _known_pid(a),
                          ("OBX|1|NM|GLUX^Glucose^L||1.05|g/L|||||F",)).issue_ids
    _console(browser, web, "biologist")
    page = browser.get(QUEUE)
    assert "Code d'analyse inconnu" in _card(page, iid)
    assert 'name="code_GLUX"' in page.text and '<option value="2345-7">' in page.text
    token = csrf_in(page.text)
    nothing = browser.post(f"{QUEUE}/{iid}/rattacher", data={"csrf": token, "code_GLUX": ""})
    assert nothing.status_code == 422
    assert "choisissez le patient, ou l'analyse que désigne chaque code inconnu" in \
        _card(nothing, iid)
    wrong = browser.post(f"{QUEUE}/{iid}/rattacher", data={"csrf": token, "code_GLUX": "1-8"})
    assert wrong.status_code == 400
    assert "1-8 n'est pas une analyse du catalogue du laboratoire" in _card(wrong, iid)
    assert "is not in" not in _alert(wrong)
    done = browser.post(f"{QUEUE}/{iid}/rattacher", data={"csrf": token, "code_GLUX": "2345-7"})
    assert done.status_code == 200, _text(done)
    assert "1 résultat enregistré" in _text(done)
    obs = lv.lab.list_observations(Actor.operator(), a.tenant_id)
    assert [(o.patient_id, o.observation.code) for o in obs] == [(a.patients[0], "2345-7")]


def test_a_resolution_refused_is_said_in_french_on_the_card(web: World,
                                                           browser: TestClient) -> None:
    (iid,) = import_issue(web, web.a, obx=(K_HIGH,)).issue_ids
    _console(browser, web, "technician")
    token = csrf_in(browser.get(QUEUE).text)
    r = browser.post(f"{QUEUE}/{iid}/rattacher",
                     data={"csrf": token, "patient_id": "pt_0000000000000000000000000v"})
    assert r.status_code == 404
    assert "Refusé : ce patient n'existe pas dans votre laboratoire." in _card(r, iid)
    assert "no patient" not in _alert(r)
    assert [i["id"] for i in _open(web, web.a)] == [iid]


def test_discard_needs_a_reason(web: World, browser: TestClient) -> None:
    (iid,) = import_issue(web, web.a, obx=(K_HIGH,)).issue_ids
    _console(browser, web, "technician")
    token = csrf_in(browser.get(QUEUE).text)
    blank = browser.post(f"{QUEUE}/{iid}/classer", data={"csrf": token, "reason": "  "})
    assert blank.status_code == 400
    assert "Refusé : le motif est obligatoire pour classer un message." in _card(blank, iid)
    assert "needs a reason" not in _alert(blank)
    assert [i["id"] for i in _open(web, web.a)] == [iid]
    done = browser.post(f"{QUEUE}/{iid}/classer",
                        data={"csrf": token, "reason": "doublon d'un résultat papier"})
    assert done.status_code == 200, _text(done)
    assert "Message classé sans enregistrer ses résultats (1 résultat écarté)" in _text(done)
    assert _open(web, web.a) == []
    handled = browser.get(f"{QUEUE}?statut=traites")
    assert "Classé sans enregistrer ses résultats le" in _card(handled, iid)


def test_several_results_are_discarded_only_with_the_tick(web: World,
                                                          browser: TestClient) -> None:
    (iid,) = import_issue(web, web.a, obx=(K_HIGH, NA)).issue_ids
    _console(browser, web, "biologist")
    page = browser.get(QUEUE)
    assert "classer tous les résultats (2)" in _card(page, iid)
    token = csrf_in(page.text)
    r = browser.post(f"{QUEUE}/{iid}/classer", data={"csrf": token, "reason": "doublon"})
    assert r.status_code == 400
    card = _card(r, iid)
    assert "ce message contient 2 résultats (2823-3, 2951-2) : le classer les écarte tous" in card
    assert "cochez « classer tous les résultats »" in card and "all_results" not in _alert(r)
    assert "doublon</textarea>" in r.text                     # what was typed is kept
    done = browser.post(f"{QUEUE}/{iid}/classer",
                        data={"csrf": token, "reason": "doublon", "all_results": "oui"})
    assert done.status_code == 200
    assert "(2 résultats écartés)" in _text(done)


def test_another_laboratorys_issue_answers_like_an_absent_one(web: World,
                                                             browser: TestClient) -> None:
    (iid,) = import_issue(web, web.b, obx=(K_HIGH,)).issue_ids
    _console(browser, web, "biologist")
    page = browser.get(QUEUE)
    assert iid not in page.text
    token = csrf_in(page.text)
    for action, data in (("rattacher", {"patient_id": web.a.patients[1]}),
                         ("classer", {"reason": "doublon"}),
                         ("recherche", {"birth_name": "BARRAULT", "first_name": "Denis",
                                        "birth_date": "1961-07-03"})):
        other = browser.post(f"{QUEUE}/{iid}/{action}", data={"csrf": token, **data})
        absent = browser.post(f"{QUEUE}/iss_0000000000000000000000000v/{action}",
                              data={"csrf": token, **data})
        assert other.status_code == absent.status_code == 404, (action, _text(other))
        assert _text(other) == _text(absent)
        assert "ce message d'automate n'est pas en attente dans votre laboratoire" in \
            _text(other)
    assert [i["id"] for i in _open(web, web.b)] == [iid]


def test_roles_without_the_queue_are_refused(web: World, browser: TestClient) -> None:
    (iid,) = import_issue(web, web.a, obx=(K_HIGH,)).issue_ids
    _console(browser, web, "dpo")
    assert f'href="{QUEUE}"' not in browser.get("/console").text
    r = browser.get(QUEUE)
    assert r.status_code == 403
    assert "votre fonction ne donne pas accès aux messages d'automate" in _text(r)
    # the lab administrator gets its merge requests there (ADT^A40), never the results
    _console(browser, web, "lab_admin")
    r = browser.get(QUEUE)
    assert r.status_code == 200 and iid not in r.text and "6,9" not in _text(r)
    r = browser.post(f"{QUEUE}/{iid}/classer", data={"csrf": csrf_in(r.text),
                                                     "reason": "doublon"})
    assert r.status_code == 403
    _console(browser, web, "reception")
    token = csrf_in(browser.get(QUEUE).text)
    r = browser.post(f"{QUEUE}/{iid}/classer", data={"csrf": token, "reason": "doublon"})
    assert r.status_code == 403
    assert "votre fonction ne permet pas de rattacher ni de classer" in _text(r)
    assert [i["id"] for i in _open(web, web.a)] == [iid]


def test_a_form_without_its_csrf_token_is_refused(web: World, browser: TestClient) -> None:
    (iid,) = import_issue(web, web.a, obx=(K_HIGH,)).issue_ids
    _console(browser, web, "technician")
    for action, data in (("classer", {"reason": "doublon"}),
                         ("rattacher", {"patient_id": web.a.patients[1]}),
                         ("recherche", {"birth_name": "BARRAULT", "first_name": "Denis",
                                        "birth_date": "1961-07-03"})):
        r = browser.post(f"{QUEUE}/{iid}/{action}", data=data)
        assert r.status_code == 403, (action, _text(r))
        assert "le formulaire a expiré" in _text(r)
    assert [i["id"] for i in _open(web, web.a)] == [iid]


def test_split_name() -> None:
    assert split_name("BARRAULT Denis") == ("BARRAULT", "Denis")
    assert split_name("LE GALL Marie Anne") == ("LE GALL", "Marie Anne")
    assert split_name("DUPONT JEAN") == ("DUPONT", "JEAN")
    assert split_name("Martin Paul") == ("Martin", "Paul")
    assert split_name("DUPONT") == ("DUPONT", "")


def test_every_refusal_of_the_queue_has_french_words() -> None:
    """The console says the service's refusals by their kind (``IssueRefused``): a kind
    raised in the service without French words here would show the English detail."""
    import inspect
    import re as _re

    from labvault.services import lab_messages
    from labvault.web.queue import _REFUSALS_FR
    raised = set(_re.findall(r'IssueRefused\(\s*"([a-z-]+)"', inspect.getsource(lab_messages)))
    raised.add(lab_messages.IssuePatientAbsent("pt_x").kind)
    assert {"reason-needed", "several-results", "patient-needed", "cannot-store"} <= raised
    assert raised <= set(_REFUSALS_FR)


def test_every_kind_of_issue_has_french_words() -> None:
    """The console says why an issue waits by its kind (the service's ISSUE_KINDS): a kind
    the service creates without French words here would show the English reason."""
    import inspect

    from labvault.services import lab_messages
    from labvault.web.queue import REASONS_FR
    from labvault.web.render import ISSUE_KIND_FR
    source = inspect.getsource(lab_messages)
    created = set(re.findall(r'"kind": "([a-z-]+)"', source)) | set(
        re.findall(r'self\._issue\(\s*ctx,\s*"([a-z-]+)"', source))
    assert {"unknown-patient", "unknown-code", "invalid-value", "order-closed",
            "reused-control-id"} <= created
    assert created <= set(lab_messages.ISSUE_KINDS)
    assert set(lab_messages.ISSUE_KINDS) <= set(REASONS_FR) & set(ISSUE_KIND_FR)
    for kind in lab_messages.ISSUE_KINDS:
        # an issue kept before ``params`` were recorded still gets French words
        general = REASONS_FR[kind]({}, {"kind": kind})
        assert general and not re.search(r"\b(the|is|not|found)\b", general), (kind, general)


def test_the_card_says_why_in_french(web: World, browser: TestClient) -> None:
    a = web.a
    (patient,) = import_issue(web, a, obx=(K_HIGH,)).issue_ids
    (code,) = import_issue(web, a, _known_pid(a),
                           ("OBX|1|NM|GLUX^Glucose^L||1.05|g/L|||||F",)).issue_ids
    (unit,) = import_issue(web, a, _known_pid(a),
                           ("OBX|1|NM|2823-3^K^LN||4.0|meq/L|||||F",)).issue_ids
    assert import_issue(web, a, _known_pid(a), (NA,), control="IQR").ack_code == "AA"
    (reused,) = import_issue(web, a, _known_pid(a), (K_HIGH,), control="IQR").issue_ids
    _console(browser, web, "biologist")
    page = browser.get(QUEUE)
    assert ("Motif : aucun patient du laboratoire ne porte le NIR ni l'identifiant envoyés "
            "par l'automate (PID-3).") in _card(page, patient)
    assert ("Motif : le code d'analyse « GLUX » (code local) envoyé par l'automate n'est pas "
            "dans le catalogue du laboratoire.") in _card(page, code)
    assert ("Motif : l'unité envoyée pour 2823-3 (« meq/L », OBX-6) n'est pas celle du "
            "catalogue (mmol/L) : labvault ne convertit pas les unités.") in _card(page, unit)
    said = _card(page, reused)
    assert "Motif : le numéro de message IQR (MSH-10) désigne déjà un autre message de cet " \
           "expéditeur, reçu le " in said
    assert "n'a pas été enregistré" in said
    # the English reason is the technical detail only, folded away
    for iid, english in ((patient, "patient not found by NIR or identifier"),
                         (code, "code GLUX (L) is not in catalogue")):
        m = re.search(rf'id="{iid}">.*?<details><summary>Détail technique[^<]*</summary>'
                      rf'<p class="meta">([^<]*)</p>', page.text, re.S)
        assert m and english in unescape(m.group(1)), iid
    # reception: neither the reason nor its French words (they name the codes sent)
    _console(browser, web, "reception")
    desk = _card(browser.get(QUEUE), code)
    assert "Motif :" not in desk and "GLUX" not in desk
    assert "Motif détaillé non visible pour votre rôle" in desk


def test_the_handled_issues_say_who_when_and_why(web: World, browser: TestClient) -> None:
    a = web.a
    (kept,) = import_issue(web, a, obx=(K_HIGH,)).issue_ids
    (dropped,) = import_issue(web, a, obx=(NA,)).issue_ids
    tech = web.actor(a.emails["technician"])
    bio = web.actor(a.emails["biologist"])
    web.lv.lab.messages.resolve_issue(tech, kept, patient_id=a.patients[1])
    web.lv.lab.messages.discard_issue(bio, dropped, "doublon d'un résultat papier")
    tech_name = web.lv.accounts.name_of(tech)
    bio_name = web.lv.accounts.name_of(bio)
    assert tech_name != bio_name
    _console(browser, web, "biologist")
    page = browser.get(f"{QUEUE}?statut=traites")
    assert page.status_code == 200, _text(page)
    assert re.search(rf"Rattaché : résultats enregistrés le \d\d/\d\d/\d{{4}} à \d\d:\d\d "
                     rf"par {tech_name}\.", _card(page, kept))
    dropped_card = _card(page, dropped)
    assert re.search(rf"Classé sans enregistrer ses résultats le [0-9/]+ à [0-9:]+ "
                     rf"par {bio_name}\.", dropped_card)
    assert "Motif du classement : doublon d'un résultat papier" in dropped_card
    # reception: who and when, not the reason (it speaks of the results)
    _console(browser, web, "reception")
    desk = _card(browser.get(f"{QUEUE}?statut=traites"), dropped)
    assert f"par {bio_name}." in desk
    assert "doublon" not in desk and "Motif du classement :" not in desk
    assert "Motif du classement non visible pour votre rôle" in desk
    # the CLI operator has no name in the laboratory: the account id is what there is
    (other,) = import_issue(web, a, obx=(NA,)).issue_ids
    web.lv.lab.messages.discard_issue(Actor.operator(), other, "essai")
    _console(browser, web, "biologist")
    page = browser.get(f"{QUEUE}?statut=traites")
    assert re.search(rf'id="{other}">.*? par <code>{re.escape(Actor.operator().id)}</code>\.',
                     page.text, re.S)


def test_the_french_reasons_name_what_the_params_carry() -> None:
    from labvault.web.queue import REASONS_FR
    several = REASONS_FR["unknown-patient"]({"matched": "several"}, {})
    assert several.startswith("plusieurs patients du laboratoire") and "fusionner" in several
    closed = REASONS_FR["order-closed"]({"status": "published", "retraction": "yes"},
                                        {"order": {"filler_number": "F42"}})
    assert closed == ("la demande n° F42 est déjà publiée : le retrait d'un résultat validé "
                      "(OBX-11 D ou W) passe par un biologiste")
    assert REASONS_FR["invalid-value"]({"code": "2160-0", "field": "unit", "unit": "",
                                        "expected": "µmol/L"}, {}) == (
        "le résultat 2160-0 est envoyé sans unité (OBX-6) ; le catalogue l'exprime en µmol/L")
    assert "(codes envoyés : X1, X2)" in REASONS_FR["unknown-code"]({"codes": "X1, X2"}, {})


def test_an_identity_mismatch_says_why_in_french_and_is_attached_by_a_person(
        web: World, browser: TestClient) -> None:
    """An analyser's PID-3 names patient 0, its birth date says someone else: the results
    wait (identity-mismatch); the card says which trait differs -- never the value on
    record -- and offers the patient's search; a person attaches them."""
    a = web.a
    p = a.patient_data[0]
    year = int(p["birth_date"][:4])
    other_day = f"{year - 1}{p['birth_date'][5:7]}{p['birth_date'][8:10]}"
    pid = (f"PID|1||{p['nir']}^^^^NH||{p['birth_name']}^{p['first_names'][0]}||"
           f"{other_day}|{p['sex']}")
    (iid,) = import_issue(web, a, pid, (K_HIGH,)).issue_ids
    _console(browser, web, "biologist")
    page = browser.get(QUEUE)
    card = _card(page, iid)
    assert "Identité discordante" in card
    assert ("Motif : l'identifiant envoyé par l'automate (PID-3) désigne un patient du "
            "laboratoire dont la date de naissance diffère de ce qui a été envoyé : les "
            "résultats n'ont pas été enregistrés dans son dossier.") in card
    assert "Que faire : vérifiez l'identité envoyée par l'automate" in card
    assert p["birth_date"] not in page.text                   # not the record's value
    assert f'value="{year - 1}-{p["birth_date"][5:]}"' in page.text   # the search, as sent
    # the record PID-3 names, to open (through the gate) and compare before attaching
    assert "Dossier désigné par l'identifiant envoyé ouvrir ce dossier pour comparer" in card
    assert f'<a href="/console/patients/{a.patients[0]}">ouvrir ce dossier</a>' in page.text
    done = browser.post(f"{QUEUE}/{iid}/rattacher",
                        data={"csrf": csrf_in(page.text), "patient_id": a.patients[0]})
    assert done.status_code == 200, _text(done)
    assert "1 résultat enregistré dans le dossier du patient." in _text(done)


def test_a_queued_panic_values_alert_closes_with_its_issue_on_the_console(
        web: World, browser: TestClient) -> None:
    """A critical value waiting in the queue is the biologist's at once (an alert, listed
    at the top of "Validation biologique"); once a technician attaches it to the patient,
    that alert is closed with a note saying so -- off the biologist's list -- and the value,
    now the patient's result, has the results' own alert, linked to the patient's order."""
    from labvault.services.alerts import AlertService
    a, lv = web.a, web.lv
    lv.alerts = lv.gate.alerts = AlertService(lv)
    (iid,) = import_issue(web, a, _pid(a, 1, "MRN992"), (K_HIGH,)).issue_ids
    _console(browser, web, "biologist")
    assert iid in browser.get("/console/validation").text
    _console(browser, web, "technician")
    page = browser.get(QUEUE)
    done = browser.post(f"{QUEUE}/{iid}/rattacher",
                        data={"csrf": csrf_in(page.text), "patient_id": a.patients[1]})
    assert done.status_code == 200, _text(done)
    _console(browser, web, "biologist")
    worklist = browser.get("/console/validation")
    assert iid not in worklist.text                             # the issue's alert: closed
    assert f'href="/console/patients/{a.patients[1]}#' in worklist.text   # the result's
    alerts = _text(browser.get("/console/alertes"))
    assert (f"close avec le message d'automate {iid}, rattaché au dossier du patient"
            in alerts)
    assert "prise en compte le" in alerts and "Hugo Lefebvre" in alerts   # the technician
