"""The patient's own data on the portal (QA pass of "qui a consulté mon dossier" and the
data download): other people's accesses listed, the patient's own reads only counted; a
complete, French, per-patient download; the real lockout duration; comparators as signs;
the second-factor page inside the portal's layout."""

from __future__ import annotations

import json
from datetime import datetime

from fastapi.testclient import TestClient

from labvault.access.throttle import ACCOUNT_RULES
from labvault.domain.actors import Actor
from labvault.services.audit import audit_of
from tests.access.conftest import PASSWORD, World
from tests.web.helpers import REQ, SPEC, csrf_in, form_login, order, text_of


def test_access_log_lists_others_and_counts_the_patients_own_reads(
        web: World, browser: TestClient) -> None:
    """The list was filled with the patient's own portal reads (several per page view): it
    could never say that nobody had looked, and staff accesses drowned among them."""
    a = web.a
    form_login(browser, web, a.emails["patient"], staff=False)
    for _ in range(3):
        assert browser.get("/portail").status_code == 200
    page = text_of(browser.get("/portail/acces").text)
    assert "Personne n'a encore consulté votre dossier, à part vous." in page
    patient = web.lv.accounts.resolve(browser.cookies["labvault_session"])
    rows = audit_of(web.lv).access_log(Actor.operator(), a.patients[0])
    mine = [r for r in rows if r["actor_kind"] == "patient"]
    assert len(mine) == len(rows) >= 3
    assert f"Vous-même (portail patient) : {len(mine)} lectures de votre dossier" in page
    bio = TestClient(browser.app, base_url="http://testserver", follow_redirects=False)
    form_login(bio, web, a.emails["biologist"])
    assert bio.get(f"/console/patients/{a.patients[0]}").status_code == 200
    web.lv.patients.show(Actor.operator(), a.patients[0], purpose="breach")
    html = browser.get("/portail/acces").text
    page = text_of(html)
    others = [r for r in audit_of(web.lv).access_log(patient, a.patients[0])
              if r["actor_kind"] != "patient"]
    assert {r["actor_kind"] for r in others} == {"staff", "operator"}
    assert html.count("<tr") == len(others) + 1        # header + every access by others
    assert "Personne n'a encore" not in page
    assert "information après une violation de données" in page and "biologiste" in page
    assert "vous (portail patient)" not in page        # own reads: the summary line only
    assert "Vous-même (portail patient) :" in page


def _closed_orders(w: World) -> tuple[str, str, str]:
    """Patient 0 of lab a: an order whose specimen was rejected, one cancelled, one still
    in progress; their ids."""
    a = w.a
    bio = w.actor(a.emails["biologist"])
    lab = w.lv.lab
    rejected = order(w, a, a.patients[0], step="received")
    lab.reject(bio, rejected.order_id, "hemolysed", "tube arrivé hémolysé")
    cancelled = order(w, a, a.patients[0], step="received")
    lab.cancel(bio, cancelled.order_id, "prescription en double")
    waiting = order(w, a, a.patients[0], step="technical")
    return rejected.order_id, cancelled.order_id, waiting.order_id


def test_data_download_is_complete_french_and_the_patients_own(
        web: World, browser: TestClient) -> None:
    """donnees.json lacked the portal account, the specimens, the orders closed without a
    report (and why), the prescriber's notes, and said who accessed the record in English;
    nothing of another patient may be in it (patient 1 of the same lab has orders too)."""
    a = web.a
    bio = web.actor(a.emails["biologist"])
    lab = web.lv.lab
    mine = lab.create_order(bio, a.tenant_id, a.patients[0],
                            {**REQ, "clinical_notes": "Bilan avant chirurgie"},
                            {**SPEC, "accession_number": "DL1"})
    lab.enter_results(bio, mine.order_id, [{"code": "718-7", "value": 13.1, "unit": "g/dL"},
                                           {"code": "2823-3", "value": "4.2",
                                            "unit": "mmol/L"}])
    lab.validate_technical(bio, mine.order_id)
    lab.validate_biological(bio, mine.order_id, None)
    lab.publish(bio, mine.order_id)
    theirs = lab.create_order(bio, a.tenant_id, a.patients[1],
                              {**REQ, "clinical_notes": "Suivi de grossesse"},
                              {**SPEC, "accession_number": "DL2"})
    lab.reject(bio, theirs.order_id, "clotted")
    other_published = order(web, a, a.patients[1])
    rejected, cancelled, waiting = _closed_orders(web)
    web.lv.patients.show(bio, a.patients[0])            # a staff access, in the log
    form_login(browser, web, a.emails["patient"], staff=False)
    r = browser.get("/portail/donnees.json")
    assert r.status_code == 200
    body = r.content.decode()
    doc = json.loads(body)
    assert doc["format"] == "labvault-patient-export/2"
    account = doc["account"]
    assert account["email"] == a.emails["patient"] and account["name"]
    assert account["second_factor"] is False and account["created_at"]
    assert set(account) == {"email", "name", "created_at", "enrolled_at",
                            "password_changed_at", "second_factor"}
    assert "$argon2" not in body and "otpauth" not in body          # never secrets or hashes
    orders = {o["id"]: o for o in doc["orders"]}
    assert set(orders) == {mine.order_id, rejected, cancelled}      # not the one in progress
    got = orders[mine.order_id]
    assert got["clinical_notes"] == "Bilan avant chirurgie" and got["closed"] is None
    assert got["report_id"] and got["status_fr"] == "publiée"
    (spec,) = got["specimens"]
    assert spec["type"] == "BLD" and spec["type_fr"] == "sang total"
    assert spec["collected_at"] == "2026-03-01T07:30:00+00:00"
    assert orders[rejected]["closed"]["reason"] == "hemolysed"
    assert orders[rejected]["closed"]["reason_fr"] == "prélèvement hémolysé"
    assert orders[rejected]["closed"]["comment"] == "tube arrivé hémolysé"
    assert orders[rejected]["report_id"] is None and orders[rejected]["status_fr"] == "refusée"
    assert orders[cancelled]["closed"]["reason"] == "prescription en double"
    assert orders[cancelled]["status"] == "cancelled"
    assert "name" not in json.dumps(orders[rejected]["closed"])     # staff never named
    # never another patient's data
    for other in (theirs.order_id, other_published.report_id, other_published.order_id,
                  "Suivi de grossesse", "DL2", a.patients[1], a.patient_data[1]["nir"],
                  waiting):
        assert other not in body, other
    # who accessed the record, in French; the patient's own reads counted, as on the page
    whos = {row["who"] for row in doc["access_log"]}
    assert "biologiste — Laboratoire a" in whos
    assert not any("you" in w or "biologist —" in w for w in whos)
    assert all(row["actor_kind"] != "patient" for row in doc["access_log"])
    said = {(row["action_fr"], row["purpose_fr"]) for row in doc["access_log"]}
    assert ("consultation", "soins") in said and ("modification", "soins") in said
    assert doc["own_accesses"]["count"] >= 1 and doc["own_accesses"]["last_at"]


def test_data_download_says_when_the_account_was_enrolled(web: World,
                                                          browser: TestClient) -> None:
    """A patient account activated from its enrolment link: the download says when."""
    a = web.a
    email = "zoe.garnier.portal@example.org"
    link = web.lv.accounts.create(Actor.operator(), a.tenant_id, ["patient"], "Zoé Garnier",
                                  email, patient_id=a.patients[2])
    web.clock.advance(seconds=3600)
    web.lv.accounts.enrol(link["enrolment_token"], PASSWORD)
    form_login(browser, web, email, staff=False)
    account = json.loads(browser.get("/portail/donnees.json").content)["account"]
    assert account["email"] == email and account["name"] == "Zoé Garnier"
    # the audit log's own clock says when (the test clock moves the account's times only)
    assert datetime.fromisoformat(account["enrolled_at"]).utcoffset() is not None
    assert account["password_changed_at"] > account["created_at"]


def test_login_refusal_says_the_real_lockout_duration(web: World,
                                                      browser: TestClient) -> None:
    """"Après plusieurs échecs, attendez quelques minutes" for a 30-minute lockout."""
    page = browser.get("/login")
    r = browser.post("/login", data={"email": web.a.emails["patient"], "password": "faux",
                                     "csrf": csrf_in(page.text)})
    said = text_of(r.text)
    assert r.status_code == 401 and "quelques minutes" not in said
    assert (f"Après {ACCOUNT_RULES.lock_after} échecs de suite, le compte est bloqué "
            f"{ACCOUNT_RULES.lock_minutes} minutes") in said


def test_comparators_are_shown_as_signs(web: World, browser: TestClient) -> None:
    """A CRP "<=5" mg/L with range "<=5 mg/L" read "<=5" on the portal and in the PDF."""
    from labvault.web.pdf import report_html
    from labvault.web.render import people
    assert people("<=5 mg/L") == "≤ 5 mg/L" and people(">=5.5") == "≥ 5,5"
    assert people("<10") == "< 10" and people("3.5-5.1 mmol/L") == "3,5-5,1 mmol/L"
    a = web.a
    rep = order(web, a, a.patients[0], results=[{"code": "1988-5", "value": "<=5",
                                                 "unit": "mg/L"}])
    (obs,) = [o.observation for o in rep.observations]
    assert obs.comparator == "<=" and obs.value_display() == "<=5"   # stored unchanged
    form_login(browser, web, a.emails["patient"], staff=False)
    portal = text_of(browser.get("/portail").text)
    patient = web.lv.accounts.resolve(browser.cookies["labvault_session"])
    mine = browser.app.state.portal.my_report(patient, rep.report_id)  # type: ignore[attr-defined]
    pdf = text_of(report_html(mine, {}, "Laboratoire a"))
    for page in (portal, pdf):
        assert "≤ 5 mg/L" in page and "<=" not in page and "&lt;=" not in page


def test_second_factor_page_has_the_portal_menu(web: World, browser: TestClient) -> None:
    """/mfa had no navigation for a logged-in patient; a session limited to enrolment
    (after a reset) still gets none: its other pages send it to /login."""
    form_login(browser, web, web.a.emails["patient"], staff=False)
    page = browser.get("/mfa").text
    assert page.count('href="/portail') >= 3 and 'action="/logout"' in page
    assert 'class="qr"' in page
    web.lv.accounts.reset_mfa(Actor.operator(), web.a.accounts["technician"])
    tech = TestClient(browser.app, base_url="http://testserver", follow_redirects=False)
    login = tech.get("/login")
    assert tech.post("/login", data={"email": web.a.emails["technician"], "password": PASSWORD,
                                     "csrf": csrf_in(login.text)}).headers["location"] == "/mfa"
    limited = tech.get("/mfa")
    assert limited.status_code == 200 and "<nav>" not in limited.text
