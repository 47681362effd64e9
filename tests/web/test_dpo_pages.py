"""The DPO's pages on the console (docs/web.md, "The DPO's pages"): "Journal d'un patient"
(who accessed a record: ``labvault audit access``), "Activité d'un utilisateur" (one
account's activity: ``labvault audit report``, this laboratory's chain) and "Intégrité du
journal" (the laboratory's chain verified). Offered to the role the policy lets read the
audit trail (the DPO); every other role gets the console's refusal; each read is itself
audited; ids the laboratory does not hold are refused next to their field (422)."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from labvault.domain.actors import Actor
from labvault.domain.categories import Category
from labvault.errors import AccessDenied
from labvault.services.audit import audit_of
from labvault.store.tables_audit import audit_entries as E
from tests.access.conftest import World
from tests.web.helpers import csrf_in, form_login

PAGES = ("/console/journal-patient", "/console/activite-utilisateur",
         "/console/integrite-journal")
OTHERS = ("reception", "technician", "biologist", "lab_admin")


def _text(r: Any) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", r.text)).split())


def _console(browser: TestClient, w: World, role: str) -> None:
    browser.cookies.clear()
    assert form_login(browser, w, w.a.emails[role]).status_code == 303


def _dpo_reads(w: World) -> list[dict[str, Any]]:
    """The DPO's entries about the audit trail in laboratory A's chain (``audit_of``
    flushes queued reads first)."""
    audit_of(w.lv)
    with w.lv.begin() as conn:
        rows = conn.execute(select(E.c.action, E.c.outcome, E.c.patient_id, E.c.body).where(
            E.c.tenant_id == w.a.tenant_id, E.c.actor_id == w.a.accounts["dpo"])).all()
    return [{"action": r.action, "outcome": r.outcome, "patient_id": r.patient_id,
             "body": r.body} for r in rows if '"audit"' in r.body]


def test_the_dpo_home_and_menu_offer_its_pages(web: World, browser: TestClient) -> None:
    _console(browser, web, "dpo")
    home = browser.get("/console")
    assert home.status_code == 200
    for href in PAGES:
        assert f'href="{href}"' in home.text
    text = _text(home)
    assert "Journal d'un patient" in text and "Intégrité du journal" in text
    for role in OTHERS:          # the policy opens the audit trail to the DPO alone
        _console(browser, web, role)
        page = browser.get("/console").text
        assert not any(f'href="{href}"' in page for href in PAGES), role


def test_patient_log_lists_who_accessed_the_record_newest_first(web: World,
                                                                 browser: TestClient) -> None:
    lv, a = web.lv, web.a
    pid = a.patients[0]
    lv.patients.show(web.actor(a.emails["biologist"]), pid, categories=[Category.CLINICAL])
    lv.patients.show(web.actor(a.emails["reception"]), pid, categories=[Category.CONTACT])
    with pytest.raises(AccessDenied):          # a lab administrator reads no record
        lv.patients.show(web.actor(a.emails["lab_admin"]), pid,
                         categories=[Category.IDENTITY])
    _console(browser, web, "dpo")
    before = len(_dpo_reads(web))
    page = browser.get(f"/console/journal-patient?patient={pid}")
    assert page.status_code == 200
    text = _text(page)
    # account id, role and laboratory of each access; the newest first
    bio, rec, adm = (a.accounts[r] for r in ("biologist", "reception", "lab_admin"))
    assert bio in text and rec in text
    assert text.index(rec) < text.index(bio)
    assert "biologiste" in text and "accueil" in text and "données médicales" in text
    assert adm not in text                                  # refusals only when asked
    denied = _text(browser.get(f"/console/journal-patient?patient={pid}&refus=oui"))
    assert adm in denied and "refusé" in denied
    # the DPO's reads of the log are themselves in the trail, naming the patient
    reads = _dpo_reads(web)[before:]
    assert len(reads) == 2 and all(r["outcome"] == "allowed" and r["patient_id"] == pid
                                   for r in reads)


def test_patient_log_period_filter_and_its_refusals(web: World, browser: TestClient) -> None:
    pid = web.a.patients[0]
    web.lv.patients.show(web.actor(web.a.emails["biologist"]), pid)
    _console(browser, web, "dpo")
    future = _text(browser.get(f"/console/journal-patient?patient={pid}&depuis=2999-01-01"))
    assert "Aucun accès enregistré sur cette période" in future
    past = _text(browser.get(f"/console/journal-patient?patient={pid}&jusqua=2000-01-01"))
    assert "Aucun accès enregistré sur cette période" in past
    wide = _text(browser.get(f"/console/journal-patient?patient={pid}&depuis=2000-01-01"
                             "&jusqua=2999-12-31"))
    assert web.a.accounts["biologist"] in wide
    backwards = browser.get(f"/console/journal-patient?patient={pid}&depuis=2026-05-02"
                            "&jusqua=2026-05-01")
    assert backwards.status_code == 422
    assert "la fin de la période est avant son début" in _text(backwards)
    assert 'value="2026-05-02"' in backwards.text                  # what was typed, kept
    missing = browser.get("/console/journal-patient?depuis=2026-05-01")
    assert missing.status_code == 422 and "l'identifiant du patient manque" in _text(missing)


def test_patient_log_refuses_ids_the_laboratory_does_not_hold_alike(
        web: World, browser: TestClient) -> None:
    _console(browser, web, "dpo")
    other = web.b.patients[0]
    absent = "pt_" + "0" * 25 + "v"
    pages = [browser.get(f"/console/journal-patient?patient={pid}") for pid in (other, absent)]
    assert [p.status_code for p in pages] == [422, 422]
    said = [_text(p).replace(pid, "ID") for p, pid in zip(pages, (other, absent), strict=True)]
    assert said[0] == said[1]
    assert "aucun dossier de votre laboratoire ne porte cet identifiant" in said[0]
    assert f'value="{other}"' in pages[0].text
    # each miss recorded in laboratory A's chain, none in laboratory B's
    audit_of(web.lv)
    with web.lv.begin() as conn:
        rules = [r.body for r in conn.execute(select(E.c.body).where(
            E.c.tenant_id == web.a.tenant_id, E.c.actor_id == web.a.accounts["dpo"],
            E.c.outcome == "denied"))]
        in_b = conn.execute(select(E.c.seq).where(
            E.c.tenant_id == web.b.tenant_id, E.c.actor_id == web.a.accounts["dpo"])).all()
    assert sum("absent-record" in b for b in rules) == 2 and not in_b


def test_user_activity_counts_then_every_entry(web: World, browser: TestClient) -> None:
    a = web.a
    bio = web.actor(a.emails["biologist"])
    web.lv.patients.show(bio, a.patients[1], categories=[Category.CLINICAL])
    adm = web.actor(a.emails["lab_admin"])
    with pytest.raises(AccessDenied):
        web.lv.patients.show(adm, a.patients[1], categories=[Category.IDENTITY])
    _console(browser, web, "dpo")
    before = len(_dpo_reads(web))
    page = browser.get(f"/console/activite-utilisateur?compte={a.accounts['biologist']}")
    assert page.status_code == 200
    text = _text(page)
    assert f"Compte {a.accounts['biologist']}" in text
    assert "consultation" in text and a.patients[1] in text
    refused = _text(browser.get(f"/console/activite-utilisateur?compte={a.accounts['lab_admin']}"))
    assert "refusé" in refused and re.search(r"dont [1-9]\d* refus", refused)
    future = _text(browser.get(f"/console/activite-utilisateur?compte={a.accounts['biologist']}"
                               "&depuis=2999-01-01"))
    assert "Rien dans le journal pour ce compte sur cette période" in future
    assert len(_dpo_reads(web)) - before == 3                      # each report audited


def test_user_activity_refuses_an_unknown_account_next_to_the_field(
        web: World, browser: TestClient) -> None:
    _console(browser, web, "dpo")
    for typed in ("acct_nobody", web.b.accounts["biologist"]):    # unknown, another lab's
        page = browser.get(f"/console/activite-utilisateur?compte={typed}")
        assert page.status_code == 422
        text = _text(page)
        assert "aucun compte de votre laboratoire ne porte cet identifiant" in text
        assert 'aria-invalid="true"' in page.text and f'value="{typed}"' in page.text
    bad_day = browser.get("/console/activite-utilisateur?compte=acct_x&depuis=2026-13-45")
    assert bad_day.status_code == 422 and "ce n'est pas une date" in _text(bad_day)


def test_integrity_shows_the_chain_and_verifies_it(web: World, browser: TestClient) -> None:
    web.lv.patients.show(web.actor(web.a.emails["biologist"]), web.a.patients[0])
    _console(browser, web, "dpo")
    page = browser.get("/console/integrite-journal")
    assert page.status_code == 200
    assert re.search(r"\d+ entrées écrites", _text(page)) and "Vérifier maintenant" in page.text
    done = browser.post("/console/integrite-journal", data={"csrf": csrf_in(page.text)})
    assert done.status_code == 200
    assert re.search(r"Journal intact : [1-9]\d* entrées vérifiées", _text(done))
    assert any(r["action"] == "read" for r in _dpo_reads(web))


def test_integrity_finds_an_edited_entry(web: World, browser: TestClient) -> None:
    web.lv.patients.show(web.actor(web.a.emails["biologist"]), web.a.patients[0])
    audit_of(web.lv)
    with web.lv.begin() as conn:        # someone with database access edits an entry
        conn.execute(update(E).where(E.c.tenant_id == web.a.tenant_id, E.c.seq == 1)
                     .values(actor_id="acc_forged"))
    _console(browser, web, "dpo")
    page = browser.get("/console/integrite-journal")
    done = browser.post("/console/integrite-journal", data={"csrf": csrf_in(page.text)})
    text = _text(done)
    assert "Journal altéré" in text and "à la position 1" in text


def test_integrity_long_chain_is_left_to_the_operator(web: World, browser: TestClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from labvault.web import dpo
    web.lv.patients.show(web.actor(web.a.emails["biologist"]), web.a.patients[0])
    monkeypatch.setattr(dpo, "VERIFY_MAX", 0)
    _console(browser, web, "dpo")
    page = browser.get("/console/integrite-journal")
    assert "Vérifier maintenant" not in page.text
    assert f"labvault audit verify --tenant {web.a.tenant_id}" in _text(page)
    sent = browser.post("/console/integrite-journal", data={"csrf": csrf_in(page.text)})
    assert sent.status_code == 200 and "Journal intact" not in _text(sent)


def test_verify_needs_the_csrf_token(web: World, browser: TestClient) -> None:
    _console(browser, web, "dpo")
    for data in ({}, {"csrf": "forged"}):
        r = browser.post("/console/integrite-journal", data=data)
        assert r.status_code == 403 and "Journal intact" not in r.text


@pytest.mark.parametrize("role", OTHERS)
def test_other_roles_get_the_console_refusal(web: World, browser: TestClient,
                                             role: str) -> None:
    _console(browser, web, role)
    for href in (f"{PAGES[0]}?patient={web.a.patients[0]}",
                 f"{PAGES[1]}?compte={web.a.accounts['biologist']}", PAGES[2]):
        r = browser.get(href)
        assert r.status_code == 403, (role, href)
        assert "réservé au délégué à la protection des données" in _text(r)
    page = browser.get("/console")
    r = browser.post(PAGES[2], data={"csrf": csrf_in(page.text)})
    assert r.status_code == 403


def test_a_patient_gets_the_consoles_refusal(web: World, browser: TestClient) -> None:
    browser.cookies.clear()
    assert form_login(browser, web, web.a.emails["patient"], staff=False).status_code == 303
    for href in PAGES:
        assert browser.get(href).status_code == 403


def test_the_cli_report_is_unchanged_for_the_operator(web: World) -> None:
    """``labvault audit report`` (the operator, every chain) still answers across
    laboratories; the console's is one laboratory's chain."""
    bio_b = web.actor(web.b.emails["biologist"])
    web.lv.patients.show(bio_b, web.b.patients[0])
    rep = audit_of(web.lv).user_report(Actor.operator(), web.b.accounts["biologist"])
    assert rep["entries"] > 0
