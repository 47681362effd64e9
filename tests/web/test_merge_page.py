""""Fusionner un doublon" on the console (docs/web.md, "Identity vigilance"): the lab
administrator names the duplicate of a record, sees both compared -- ids and which traits
differ, never an identity the policy does not let it read -- writes a reason, forces only
when the traits that say "two people" differ, and gets what moved, counted. Other roles:
the console's refusal; another laboratory's record: the same 404 as an absent one; a form
without its CSRF token: refused, nothing merged."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
from fastapi.testclient import TestClient

from labvault.domain.actors import Actor
from tests.access.conftest import World, patient_json
from tests.web.helpers import csrf_in, form_login, order


def _text(r: Any) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", r.text)).split())


def _console(browser: TestClient, w: World, role: str) -> None:
    browser.cookies.clear()
    assert form_login(browser, w, w.a.emails[role]).status_code == 303


def _pair(w: World, i: int, **changes: Any) -> tuple[str, str, dict[str, Any]]:
    """A record of laboratory A and the same person registered again without identifiers
    (``changes``: what the second registration got wrong)."""
    person = patient_json(1700 + i, seed=61)
    op = Actor.operator()
    keep = w.lv.patients.register(op, w.a.tenant_id, person)
    dup = w.lv.patients.register(op, w.a.tenant_id, {
        **{k: v for k, v in person.items() if k not in ("nir", "ins", "external_id")},
        **changes})
    return keep, dup, person


def _status(w: World, pid: str) -> str:
    from labvault.store import repositories_merge as mrepo
    with w.lv.begin() as conn:
        st = mrepo.patient_state(conn, pid)
    assert st is not None
    return str(st["status"])


def test_lab_admin_merges_a_duplicate_and_sees_what_moved(web: World,
                                                          browser: TestClient) -> None:
    keep, dup, person = _pair(web, 1)
    order(web, web.a, dup)                      # a published report on the duplicate
    _console(browser, web, "lab_admin")
    home = browser.get("/console")
    assert 'href="/console/fusion"' in home.text                  # the menu offers it
    start = browser.get(f"/console/fusion?conserve={keep}&doublon={dup}")
    assert start.status_code == 303
    assert start.headers["location"] == f"/console/patients/{keep}/fusion?doublon={dup}"
    page = browser.get(start.headers["location"])
    assert page.status_code == 200, _text(page)
    text = _text(page)
    assert keep in text and dup in text and "Comparaison des traits" in text
    # a lab administrator reads no identity: ids and the comparison only
    assert person["birth_name"] not in page.text and person["nir"] not in page.text
    assert "ne permet pas de lire l'identité" in text
    assert 'name="forcer"' not in page.text           # nothing that says "two people"
    done = browser.post(f"/console/patients/{keep}/fusion", data={
        "csrf": csrf_in(page.text), "doublon": dup, "motif": "même patiente, saisie deux fois"})
    assert done.status_code == 200, _text(done)
    text = _text(done)
    assert "Fusion faite" in text
    assert re.search(r"demandes d'analyses 1\b", text) and re.search(r"comptes rendus 1\b", text)
    assert _status(web, dup) == "merged"
    reports = web.lv.lab.list_reports(web.actor(web.a.emails["biologist"]), web.a.tenant_id,
                                      patient_id=keep)
    assert len(reports) == 1


def test_the_duplicate_s_external_id_kept_is_said_and_shown(web: World,
                                                            browser: TestClient) -> None:
    """The confirmation says the duplicate's external id was kept; the biologist sees it
    on the record kept as "Identifiants antérieurs (fusion)" (never the lab admin, who
    reads no identity: only the count)."""
    keep, dup, _ = _pair(web, 4, external_id="ANCIEN-DOSSIER-77")
    _console(browser, web, "lab_admin")
    page = browser.get(f"/console/patients/{keep}/fusion?doublon={dup}")
    done = browser.post(f"/console/patients/{keep}/fusion", data={
        "csrf": csrf_in(page.text), "doublon": dup, "motif": "même patiente, saisie deux fois"})
    text = _text(done)
    assert "Fusion faite" in text and "ANCIEN-DOSSIER-77" not in text
    assert "1 identifiant du doublon" in text and "identifiant antérieur" in text
    _console(browser, web, "biologist")
    record = _text(browser.get(f"/console/patients/{keep}"))
    assert "Identifiants antérieurs (fusion) ANCIEN-DOSSIER-77" in record


def test_traits_that_say_two_people_need_forcer_and_a_reason(web: World,
                                                             browser: TestClient) -> None:
    keep, dup, _ = _pair(web, 2, birth_date="1950-01-01")
    _console(browser, web, "lab_admin")
    url = f"/console/patients/{keep}/fusion"
    page = browser.get(f"{url}?doublon={dup}")
    assert page.status_code == 200
    assert "date de naissance : différent — la fusion est refusée" in _text(page).lower()
    assert 'name="forcer"' in page.text
    csrf = csrf_in(page.text)
    # no reason: the form again, refused in French next to the field, nothing merged
    r = browser.post(url, data={"csrf": csrf, "doublon": dup, "motif": "", "forcer": "oui"})
    assert r.status_code == 422 and "Motif de la fusion : le motif manque" in _text(r)
    # not forced: refused in French, the form again
    r = browser.post(url, data={"csrf": csrf, "doublon": dup, "motif": "erreur de saisie"})
    assert r.status_code == 409
    assert "diffèrent sur : date de naissance" in _text(r) and "Rien n'a été modifié" in _text(r)
    assert _status(web, dup) == "active"
    r = browser.post(url, data={"csrf": csrf, "doublon": dup, "motif": "erreur de saisie",
                                "forcer": "oui"})
    assert r.status_code == 200 and "Fusion forcée" in _text(r)
    assert _status(web, dup) == "merged"
    # merged already: said so, in French
    again = browser.get(f"{url}?doublon={dup}")
    assert again.status_code == 409
    assert f"le dossier {dup} a déjà été fusionné dans le dossier {keep}" in _text(again)


def test_same_record_twice_is_refused_in_french(web: World, browser: TestClient) -> None:
    keep, _, _ = _pair(web, 3)
    _console(browser, web, "lab_admin")
    page = browser.get(f"/console/patients/{keep}/fusion")
    r = browser.post(f"/console/patients/{keep}/fusion", data={
        "csrf": csrf_in(page.text), "doublon": keep, "motif": "même patiente"})
    assert r.status_code == 409
    assert "le dossier conservé et le doublon sont le même dossier" in _text(r)


def test_without_csrf_nothing_is_merged(web: World, browser: TestClient) -> None:
    keep, dup, _ = _pair(web, 4)
    _console(browser, web, "lab_admin")
    r = browser.post(f"/console/patients/{keep}/fusion", data={
        "csrf": "forged", "doublon": dup, "motif": "même patiente"})
    assert r.status_code == 403
    assert _status(web, dup) == "active"


@pytest.mark.parametrize("role", ["reception", "technician", "biologist", "dpo"])
def test_other_roles_are_refused(web: World, browser: TestClient, role: str) -> None:
    keep, dup, _ = _pair(web, 5)
    _console(browser, web, role)
    assert 'href="/console/fusion"' not in browser.get("/console").text
    assert browser.get(f"/console/patients/{keep}/fusion?doublon={dup}").status_code == 403
    assert browser.get("/console/fusion").status_code == 403


def test_another_labs_record_answers_like_an_absent_one(web: World,
                                                        browser: TestClient) -> None:
    keep, _dup, _ = _pair(web, 6)
    _console(browser, web, "lab_admin")
    other = browser.get(f"/console/patients/{web.b.patients[0]}/fusion")
    absent = browser.get("/console/patients/pt_0000000000000000000000000x/fusion")
    assert other.status_code == absent.status_code == 404
    assert _text(other) == _text(absent)
    # a duplicate of another laboratory, named in the form: the same 404
    page = browser.get(f"/console/patients/{keep}/fusion")
    r = browser.post(f"/console/patients/{keep}/fusion", data={
        "csrf": csrf_in(page.text), "doublon": web.b.patients[0], "motif": "même patiente"})
    assert r.status_code == 404
    assert _status(web, web.b.patients[0]) == "active"


def test_lab_admin_works_a40_merge_requests_from_the_queue(web: World,
                                                           browser: TestClient) -> None:
    """"Messages d'automate" shows the lab administrator the merge requests (ADT^A40):
    ids, sender, MSH-10; "Comparer et fusionner" opens the merge form prefilled, and the
    merge closes the request; another is declined ("Classer sans fusionner")."""
    from tests.web.helpers import merge_request
    keep, dup, iid = merge_request(web, web.a, 1)
    keep2, _dup2, iid2 = merge_request(web, web.a, 2)
    _console(browser, web, "lab_admin")
    assert 'href="/console/messages"' in browser.get("/console").text
    queue = browser.get("/console/messages")
    assert queue.status_code == 200, _text(queue)
    text = _text(queue)
    assert "Demandes de fusion" in text and iid in text and iid2 in text
    link = f"/console/patients/{keep}/fusion?doublon={dup}"
    assert f'href="{link}"' in queue.text
    page = browser.get(link)
    assert page.status_code == 200
    done = browser.post(f"/console/patients/{keep}/fusion", data={
        "csrf": csrf_in(page.text), "doublon": dup, "motif": "demande du serveur d'identités"})
    assert done.status_code == 200 and iid in _text(done) and "est close" in _text(done)
    op = Actor.operator()
    assert web.lv.lab.messages.get_issue(op, iid)["status"] == "resolved"
    # declined with a reason
    queue = browser.get("/console/messages")
    assert iid not in _text(queue) and iid2 in _text(queue)
    r = browser.post(f"/console/messages/{iid2}/classer", data={
        "csrf": csrf_in(queue.text), "reason": "deux personnes distinctes, vérifié"})
    assert r.status_code == 200, _text(r)
    assert web.lv.lab.messages.get_issue(op, iid2)["status"] == "discarded"
    assert _status(web, keep2) == "active"


def test_other_roles_see_a_merge_request_but_leave_it_to_identity_vigilance(
        web: World, browser: TestClient) -> None:
    _keep, dup, iid = merge_request_of(web, 3)
    _console(browser, web, "biologist")
    queue = browser.get("/console/messages")
    assert queue.status_code == 200
    card = queue.text.split(f'id="{iid}"', 1)[1].split("</section>", 1)[0]
    assert "identitovigilance" in card and "/classer" not in card
    r = browser.post(f"/console/messages/{iid}/classer", data={
        "csrf": csrf_in(queue.text), "reason": "pas pour moi"})
    assert r.status_code == 403
    assert web.lv.lab.messages.get_issue(Actor.operator(), iid)["status"] == "open"
    assert _status(web, dup) == "active"


def merge_request_of(w: World, i: int) -> tuple[str, str, str]:
    from tests.web.helpers import merge_request
    return merge_request(w, w.a, i)


def test_the_ids_typed_stay_within_the_console(web: World, browser: TestClient) -> None:
    _console(browser, web, "lab_admin")
    r = browser.get("/console/fusion", params={"conserve": "//evil.example/x?y",
                                               "doublon": "a&b"})
    assert r.status_code == 303
    assert r.headers["location"] == ("/console/patients/%2F%2Fevil.example%2Fx%3Fy/fusion"
                                     "?doublon=a%26b")
    form = browser.get("/console/fusion")
    assert form.status_code == 200 and 'name="conserve"' in form.text


def test_the_comparison_is_the_gates_decision_audited(web: World,
                                                      browser: TestClient) -> None:
    """Opening the comparison makes the merge's two gate decisions (``patient-merge``,
    purpose administration), recorded in the laboratory's chain; nothing is merged."""
    import json

    from sqlalchemy import select

    from labvault.store.tables_audit import audit_entries as E
    keep, dup, _ = _pair(web, 7)
    _console(browser, web, "lab_admin")

    def merge_decisions() -> list[dict[str, Any]]:
        with web.lv.begin() as conn:
            rows = conn.execute(select(E.c.body, E.c.outcome)
                                .where(E.c.tenant_id == web.a.tenant_id)).all()
        return [{**json.loads(r.body), "outcome": r.outcome} for r in rows
                if json.loads(r.body).get("resource") == "patient-merge"]

    before = len(merge_decisions())
    assert browser.get(f"/console/patients/{keep}/fusion?doublon={dup}").status_code == 200
    new = merge_decisions()[before:]
    assert sorted(p for e in new for p in e["patients"]) == sorted([keep, dup])
    assert {e["outcome"] for e in new} == {"allowed"}
    assert {e["purpose"] for e in new} == {"administration"}
    assert _status(web, dup) == "active"


@pytest.mark.parametrize("motif", ["", "   ", "dup"])
def test_a_missing_or_short_reason_shows_the_form_again_with_what_was_typed(
        web: World, browser: TestClient, motif: str) -> None:
    """QA: an empty or short reason went to the generic error page (the form and the ids
    lost). Now the form comes back (422): both ids, the reason typed and "forcer" kept,
    the refusal in French next to the reason's field; nothing merged."""
    from labvault.services.merge import MIN_REASON
    keep, dup, _ = _pair(web, 8, birth_date="1950-01-01")
    _console(browser, web, "lab_admin")
    url = f"/console/patients/{keep}/fusion"
    page = browser.get(f"{url}?doublon={dup}")
    r = browser.post(url, data={"csrf": csrf_in(page.text), "doublon": dup, "motif": motif,
                                "forcer": "oui"})
    assert r.status_code == 422, _text(r)
    text = _text(r)
    assert f"le motif manque ou est trop court (au moins {MIN_REASON} caractères)" in text
    assert "Rien n'a été modifié" in text and "Que faire" not in text    # not the error page
    assert 'aria-describedby="err-motif" aria-invalid="true"' in r.text
    assert f'action="{url}"' in r.text and f'name="doublon" value="{dup}"' in r.text
    assert f">{motif}</textarea>" in r.text
    assert 'name="forcer" value="oui" checked' in r.text
    assert _status(web, dup) == "active"


def test_a_refused_merge_keeps_the_reason_typed(web: World, browser: TestClient) -> None:
    keep, dup, _ = _pair(web, 9, birth_date="1950-01-01")
    _console(browser, web, "lab_admin")
    url = f"/console/patients/{keep}/fusion"
    page = browser.get(f"{url}?doublon={dup}")
    r = browser.post(url, data={"csrf": csrf_in(page.text), "doublon": dup,
                                "motif": "erreur de saisie à l'accueil"})
    assert r.status_code == 409 and "diffèrent sur : date de naissance" in _text(r)
    assert ">erreur de saisie à l&#39;accueil</textarea>" in r.text


def test_a_form_without_the_duplicate_id_asks_for_it(web: World, browser: TestClient) -> None:
    keep, _dup, _ = _pair(web, 10)
    _console(browser, web, "lab_admin")
    url = f"/console/patients/{keep}/fusion"
    page = browser.get(url)
    r = browser.post(url, data={"csrf": csrf_in(page.text), "doublon": " ",
                                "motif": "même patiente"})
    assert r.status_code == 422
    assert "l'identifiant du doublon manque" in _text(r)
    assert 'name="doublon"' in r.text and f'action="{url}"' in r.text
