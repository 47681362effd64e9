"""The web door: login, patient portal, staff console, CSRF, errors, headers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from fastapi.testclient import TestClient

from labvault.domain.actors import Actor
from labvault.services.audit import audit_of
from labvault.web.render import PARIS
from labvault.web.routes import router
from tests.access.conftest import PASSWORD, World
from tests.web.helpers import HIGH, csrf_in, form_login, order

PROTECTED_GET = ["/", "/portail", "/portail/acces", "/portail/donnees.json",
                 "/portail/effacement", "/portail/rapports/rep_x.pdf", "/console",
                 "/console/patients/pt_x", "/console/rapports/rep_x.pdf", "/console/validation",
                 "/console/alertes", "/console/technique", "/console/envois", "/console/fusion",
                 "/console/patients/pt_x/fusion"]
PROTECTED_POST = ["/logout", "/portail/effacement", "/console/recherche", "/console/validation",
                  "/console/validation/ord_x", "/console/alertes/al_x/prise-en-compte",
                  "/console/technique/ord_x", "/console/demandes/ord_x/refus",
                  "/console/diffusion/ord_x", "/console/demandes/ord_x/conclusion",
                  "/console/demandes/ord_x/correction", "/console/envois/out_x/renvoi",
                  "/console/patients/pt_x/fusion"]


def test_every_web_route_is_listed_here() -> None:
    """A new page must be added to the unauthenticated-redirect test below."""
    routes = {(m, r.path) for r in router.routes for m in r.methods}  # type: ignore[attr-defined]
    listed = ({("GET", p) for p in PROTECTED_GET} | {("POST", p) for p in PROTECTED_POST}
              | {("GET", "/login"), ("POST", "/login"), ("GET", "/enrol"), ("POST", "/enrol"),
                 ("GET", "/mfa"), ("POST", "/mfa")})
    normalised = {(m, p.replace("{report_id}", "rep_x").replace("{patient_id}", "pt_x")
                      .replace("{order_id}", "ord_x").replace("{alert_id}", "al_x")
                      .replace("{outbox_id}", "out_x"))
                  for m, p in routes}
    assert normalised == listed


def test_unauthenticated_requests_go_to_login(web: World, browser: TestClient) -> None:
    for path in PROTECTED_GET:
        r = browser.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    for path in PROTECTED_POST:
        r = browser.post(path, data={"csrf": "x"})
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    # a forged or expired cookie is no better than none
    browser.cookies.set("labvault_session", "forged-token")
    assert browser.get("/portail").headers["location"] == "/login"
    # only the login and enrolment pages, the stylesheet and the enrolment script are public
    assert browser.get("/login").status_code == 200
    assert browser.get("/enrol").status_code == 200
    assert browser.get("/static/enrol.js").status_code == 200
    css = browser.get("/static/labvault.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_enrolment_link_in_the_browser(web: World, browser: TestClient) -> None:
    """A new staff member opens the link, chooses a password, scans the QR code and logs
    in; the link is then spent. Wrong inputs give French messages and keep the form."""
    import re
    from urllib.parse import unquote

    import pyotp

    from labvault.domain.actors import Actor
    email = "ines.garnier.enrol@example.org"
    out = web.lv.accounts.create(Actor.operator(), web.a.tenant_id, ["technician"],
                                 "Inès Garnier", email)
    link = out["enrolment_link"]
    assert "/enrol#token=" in link
    token = unquote(link.split("#token=", 1)[1])
    page = browser.get("/enrol")
    assert page.status_code == 200 and 'src="/static/enrol.js"' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "script-src" not in browser.get("/login").headers["content-security-policy"]
    csrf = csrf_in(page.text)
    form = {"csrf": csrf, "token": token, "password": "Cerf-Volant-Bleu-Horizon-77"}
    r = browser.post("/enrol", data={**form, "again": "Cerf-Volant-Bleu-Horizon-78"})
    assert r.status_code == 422 and "diffèrent" in r.text and token in r.text
    r = browser.post("/enrol", data={**form, "csrf": csrf_in(r.text), "password": "motdepasse",
                                     "again": "motdepasse"})
    assert r.status_code == 422 and "Mot de passe refusé" in r.text
    r = browser.post("/enrol", data={**form, "csrf": csrf_in(r.text),
                                     "again": form["password"]})
    assert r.status_code == 200 and "<svg" in r.text and "Codes de secours" in r.text
    assert "Compte activé" in r.text and "Mot de passe changé" not in r.text
    assert r.headers["cache-control"] == "no-store"        # a secret and recovery codes
    secret = re.search(r"<code>([A-Z2-7]{16,})</code>", r.text)
    assert secret is not None
    codes = re.findall(r"<li><code>([^<]+)</code></li>", r.text)
    assert len(codes) >= 8
    web.lv.accounts.login(email, form["password"],
                          pyotp.TOTP(secret.group(1)).at(web.clock().timestamp()))
    page = browser.get("/enrol")                                   # the link is spent
    again = browser.post("/enrol", data={**form, "csrf": csrf_in(page.text),
                                         "again": form["password"]})
    assert again.status_code == 401 and "pas valable" in again.text
    missing = browser.post("/enrol", data={"csrf": csrf_in(browser.get("/enrol").text),
                                           "password": "x", "again": "x"})
    assert missing.status_code == 400 and "#token=" in missing.text
    forged = browser.post("/enrol", data={**form, "csrf": "forged", "again": form["password"]})
    assert forged.status_code == 403


def test_password_reset_link_in_the_browser(web: World, browser: TestClient) -> None:
    """The reset link opens the enrolment page, which then sets only the password: the
    authenticator the person already has keeps working, no new secret is shown."""
    from urllib.parse import unquote
    email, new = web.a.emails["technician"], "Cerf-Volant-Bleu-Horizon-77"
    out = web.lv.accounts.reset_password(Actor.operator(), web.a.accounts["technician"])
    token = unquote(out["enrolment_link"].split("#token=", 1)[1])
    r = browser.post("/enrol", data={"csrf": csrf_in(browser.get("/enrol").text),
                                     "token": token, "password": new, "again": new})
    assert r.status_code == 200 and "Mot de passe changé" in r.text
    assert "Compte activé" not in r.text
    assert "<svg" not in r.text and "Codes de secours" not in r.text
    assert web.lv.accounts.login(email, new, web.clock.code()).scope == "full"


def test_second_factor_again_after_a_reset(web: World, browser: TestClient) -> None:
    """After an administrator's MFA reset, the password alone opens /mfa and nothing else;
    a confirmed code ends that session and the new secret is the one that logs in."""
    import re

    import pyotp

    from labvault.domain.actors import Actor
    email = web.a.emails["technician"]
    web.lv.accounts.reset_mfa(Actor.operator(), web.a.accounts["technician"])
    page = browser.get("/login")
    r = browser.post("/login", data={"email": email, "password": PASSWORD, "totp": "",
                                     "csrf": csrf_in(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/mfa"
    assert browser.get("/console").headers["location"] == "/login"     # only /mfa
    page = browser.get("/mfa")
    assert page.status_code == 200 and "<svg" in page.text
    secret = re.search(r"<code>([A-Z2-7]{16,})</code>", page.text)
    assert secret is not None
    assert browser.post("/mfa", data={"csrf": "forged", "totp": "000000"}).status_code == 403
    bad = browser.post("/mfa", data={"csrf": csrf_in(page.text), "totp": "000000"})
    assert bad.status_code == 422 and "pas valable" in bad.text
    code = pyotp.TOTP(secret.group(1)).at(web.clock().timestamp())
    done = browser.post("/mfa", data={"csrf": csrf_in(page.text), "totp": code})
    assert done.status_code == 200 and "Codes de secours" in done.text
    assert browser.get("/mfa").headers["location"] == "/login"          # session ended
    web.clock.advance(seconds=30)
    web.lv.accounts.login(email, PASSWORD,
                          pyotp.TOTP(secret.group(1)).at(web.clock().timestamp()))


def test_login_flow_staff_and_logout(web: World, browser: TestClient) -> None:
    r = form_login(browser, web, web.a.emails["biologist"])
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "labvault_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    home = browser.get("/")
    assert home.status_code == 303 and home.headers["location"] == "/console"
    console = browser.get("/console")
    assert console.status_code == 200 and "Recherche de patient" in console.text
    assert "Validation" in console.text            # biologist menu
    out = browser.post("/logout", data={"csrf": csrf_in(console.text)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert browser.get("/console").status_code == 303        # session revoked


def test_login_flow_patient_and_wrong_password(web: World, browser: TestClient) -> None:
    page = browser.get("/login")
    bad = browser.post("/login", data={"email": web.a.emails["patient"],
                                       "password": "Mauvais-Mot-De-Passe-77",
                                       "csrf": csrf_in(page.text)})
    assert bad.status_code == 401 and "Connexion refusée" in bad.text
    assert "Mauvais-Mot-De-Passe-77" not in bad.text
    assert "labvault_session" not in bad.headers.get("set-cookie", "")
    r = form_login(browser, web, web.a.emails["patient"], staff=False)
    assert r.status_code == 303
    assert browser.get("/").headers["location"] == "/portail"
    assert browser.get("/portail").status_code == 200
    # a patient has no console, staff have no portal
    assert browser.get("/console").status_code == 403


def test_staff_without_totp_refused(web: World, browser: TestClient) -> None:
    page = browser.get("/login")
    r = browser.post("/login", data={"email": web.a.emails["technician"], "password": PASSWORD,
                                     "csrf": csrf_in(page.text)})
    assert r.status_code == 401 and "labvault_session" not in r.headers.get("set-cookie", "")


def test_login_without_csrf_refused(web: World, browser: TestClient) -> None:
    page = browser.get("/login")
    body = {"email": web.a.emails["patient"], "password": PASSWORD}
    assert browser.post("/login", data=body).status_code == 403                # no field
    assert browser.post("/login", data={**body, "csrf": "forged"}).status_code == 403
    browser.cookies.clear()                                                    # no cookie
    r = browser.post("/login", data={**body, "csrf": csrf_in(page.text)})
    assert r.status_code == 403 and "labvault_session" not in r.headers.get("set-cookie", "")


def test_session_forms_without_csrf_refused(web: World, browser: TestClient) -> None:
    form_login(browser, web, web.a.emails["patient"], staff=False)
    raised = web.lv.alerts.raised  # type: ignore[attr-defined]
    for token in (None, "", "0" * 64):
        data = {"reason": "je change de laboratoire"}
        if token is not None:
            data["csrf"] = token
        r = browser.post("/portail/effacement", data=data)
        assert r.status_code == 403 and "Accès refusé" in r.text
    assert not [a for a in raised if a[1] == "erasure-request"]
    # another session's token does not fit this one
    other = TestClient(browser.app, base_url="http://testserver", follow_redirects=False)
    form_login(other, web, web.a.emails["patient"], staff=False)
    foreign = csrf_in(other.get("/portail/effacement").text)
    assert browser.post("/portail/effacement", data={"csrf": foreign}).status_code == 403
    # with this session's token: recorded for the DPO (alert + audited event), nothing erased
    page = browser.get("/portail/effacement")
    ok = browser.post("/portail/effacement", data={"csrf": csrf_in(page.text),
                                                   "reason": "je change de laboratoire"})
    assert ok.status_code == 200 and "demande est enregistrée" in ok.text
    alerts = [a for a in raised if a[1] == "erasure-request"]
    assert len(alerts) == 1 and alerts[0][0] == web.a.tenant_id
    assert alerts[0][3]["patient_id"] == web.a.patients[0]
    assert web.lv.patients.show(web.actor(web.a.emails["biologist"]), web.a.patients[0])
    # a cross-origin post is refused even with a token
    page = browser.get("/portail/effacement")
    evil = browser.post("/portail/effacement", data={"csrf": csrf_in(page.text)},
                        headers={"Origin": "https://evil.example"})
    assert evil.status_code == 303 and evil.headers["location"] == "/login"


def test_patient_sees_only_own_published_results(web: World, browser: TestClient) -> None:
    a = web.a
    mine = order(web, a, a.patients[0], conclusion="Bilan rassurant, à contrôler dans un an")
    theirs = order(web, a, a.patients[1], results=HIGH)          # another patient, same lab
    draft = order(web, a, a.patients[0], step="final",
                  results=[{"code": "718-7", "value": 11.3, "unit": "g/dL"}])  # not published
    amended = order(web, a, a.patients[0])
    hb = next(o for o in amended.observations if o.observation.code == "718-7")
    web.lv.lab.amend(web.actor(a.emails["biologist"]), hb.observation_id,
                     {"code": "718-7", "value": 12.4, "unit": "g/dL"}, "erreur de saisie")
    form_login(browser, web, a.emails["patient"], staff=False)
    page = browser.get("/portail")
    assert page.status_code == 200
    assert "12,4" in page.text and "corrigée après publication" in page.text
    assert "13,1" in page.text and "g/dL" in page.text and "Bilan rassurant" in page.text
    assert "normal" in page.text and "12-16" in page.text.replace(" ", "")
    assert "13,7" not in page.text and "5,8" not in page.text      # other patient
    assert "11,3" not in page.text                                  # not yet published
    pdf = browser.get(f"/portail/rapports/{mine.report_id}.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["cache-control"] == "no-store"
    pages = set()
    for other in (theirs.report_id, draft.report_id, "rep_doesnotexist"):
        r = browser.get(f"/portail/rapports/{other}.pdf")
        assert r.status_code == 404 and "%PDF" not in r.text and "Introuvable" in r.text
        assert "pas disponible" in unescape(r.text) and "no such" not in r.text    # French
        pages.add(r.text)
    assert len(pages) == 1                  # the same page: nothing says which case it was
    data = browser.get("/portail/donnees.json")
    assert data.status_code == 200 and "attachment" in data.headers["content-disposition"]
    doc = json.loads(data.content)
    assert doc["record"]["id"] == a.patients[0]
    assert doc["record"]["nir"] == a.patient_data[0]["nir"]
    assert sorted(r["id"] for r in doc["reports"]) == sorted([mine.report_id,
                                                              amended.report_id])
    assert isinstance(doc["access_log"], list)


def test_access_log_shows_role_and_lab_of_each_access(web: World, browser: TestClient) -> None:
    a = web.a
    bio = TestClient(browser.app, base_url="http://testserver", follow_redirects=False)
    form_login(bio, web, a.emails["biologist"])
    assert bio.get(f"/console/patients/{a.patients[0]}").status_code == 200
    assert bio.get(f"/console/patients/{a.patients[1]}").status_code == 200   # someone else
    form_login(browser, web, a.emails["patient"], staff=False)
    page = browser.get("/portail/acces")
    assert page.status_code == 200
    assert "biologiste" in page.text and "Laboratoire a" in page.text
    patient = web.lv.accounts.resolve(browser.cookies["labvault_session"])
    rows = audit_of(web.lv).access_log(patient, a.patients[0])
    assert page.text.count("<tr") == len(rows) + 1                  # header + one per access
    # the biologist's look at the other patient is not in this patient's log
    staff_reads = [r for r in rows if r["actor_kind"] == "staff"]
    assert staff_reads and all(r["role"] == ["biologist"] for r in staff_reads)
    n = len(rows)
    assert bio.get(f"/console/patients/{a.patients[1]}").status_code == 200
    assert len(audit_of(web.lv).access_log(patient, a.patients[0])) == n


def test_staff_of_lab_a_cannot_open_lab_b_patient(web: World, browser: TestClient) -> None:
    for role in ("reception", "technician", "biologist", "lab_admin", "dpo"):
        browser.cookies.clear()
        form_login(browser, web, web.a.emails[role])
        other = browser.get(f"/console/patients/{web.b.patients[0]}")
        absent = browser.get("/console/patients/pt_0000000000000000000000000x")
        assert other.status_code == absent.status_code == 404, role
        assert other.text == absent.text
        assert web.b.patient_data[0]["birth_name"] not in other.text


def test_patient_page_shows_only_granted_categories(web: World, browser: TestClient) -> None:
    a = web.a
    order(web, a, a.patients[0])
    data = a.patient_data[0]
    seen: dict[str, str] = {}
    for role in ("reception", "technician", "biologist"):
        browser.cookies.clear()
        form_login(browser, web, a.emails[role])
        r = browser.get(f"/console/patients/{a.patients[0]}")
        assert r.status_code == 200, role
        seen[role] = r.text
    assert data["birth_name"] in seen["reception"] and data["nir"] in seen["reception"]
    assert "Comptes rendus" not in seen["reception"]               # no clinical data
    assert "Comptes rendus" in seen["technician"] and data["nir"] not in seen["technician"]
    assert data["nir"] in seen["biologist"] and "13,1" in seen["biologist"]
    for role in ("lab_admin", "dpo"):
        browser.cookies.clear()
        form_login(browser, web, a.emails[role])
        r = browser.get(f"/console/patients/{a.patients[0]}")
        assert r.status_code == 403 and data["birth_name"] not in r.text


def test_console_search(web: World, browser: TestClient) -> None:
    a, b = web.a, web.b
    form_login(browser, web, a.emails["reception"])
    token = csrf_in(browser.get("/console").text)
    r = browser.post("/console/recherche", data={"csrf": token, "nir": a.patient_data[1]["nir"]})
    assert r.status_code == 200 and f"/console/patients/{a.patients[1]}" in r.text
    d = a.patient_data[2]
    r = browser.post("/console/recherche", data={
        "csrf": token, "birth_name": d["birth_name"], "first_name": d["first_names"][0],
        "birth_date": d["birth_date"]})
    assert f"/console/patients/{a.patients[2]}" in r.text
    other = browser.post("/console/recherche", data={"csrf": token,
                                                     "nir": b.patient_data[0]["nir"]})
    assert other.status_code == 200 and "Aucun patient" in other.text
    assert b.patients[0] not in other.text
    empty = browser.post("/console/recherche", data={"csrf": token})
    assert empty.status_code == 422 and "Aucun critère de recherche" in empty.text
    assert 'action="/console/recherche"' in empty.text             # the form again
    assert browser.post("/console/recherche", data={"nir": "1"}).status_code == 403


@pytest.mark.parametrize(("sent", "field", "said"), [
    ({"birth_name": "MARTIN", "first_name": "Jeanne"}, "birth_date",
     "Date de naissance (AAAA-MM-JJ) : à donner avec les deux autres champs"),
    ({"nir": "1234"}, "nir", "N° de sécurité sociale (NIR) : "),
    ({"email": "pas-une-adresse"}, "email", "E-mail : n'est pas une adresse e-mail valable"),
])
def test_a_search_the_form_cannot_make_is_said_next_to_its_field(
        web: World, browser: TestClient, sent: dict[str, str], field: str, said: str) -> None:
    """QA: a name without its birth date, or a NIR that is not one, went to the generic
    error page in English ("birth name, first name and birth date go together") and the
    criteria typed were lost. Now the form comes back (422) with what was typed and the
    reason in French next to its field; nothing is searched."""
    form_login(browser, web, web.a.emails["reception"])
    token = csrf_in(browser.get("/console").text)
    r = browser.post("/console/recherche", data={"csrf": token, **sent})
    assert r.status_code == 422, r.text
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", r.text)).split())
    assert said in text and "Recherche non faite" in text
    assert f'id="{field}" name="{field}"' in r.text
    assert f'aria-describedby="err-{field}" aria-invalid="true"' in r.text
    for name, value in sent.items():
        assert f'value="{value}"' in r.text, name
    assert " go together" not in text and "not a valid" not in text     # never English


def test_validation_worklist_and_validate_all_normal(web: World, browser: TestClient) -> None:
    a = web.a
    normal = order(web, a, a.patients[0], step="technical")
    high = order(web, a, a.patients[1], step="technical", results=HIGH)
    form_login(browser, web, a.emails["biologist"])
    page = browser.get("/console/validation")
    assert page.status_code == 200 and "Valider tous les normaux" in page.text
    assert "à revoir" in page.text and "5,8" in page.text
    done = browser.post("/console/validation", data={"csrf": csrf_in(page.text)})
    assert done.status_code == 200 and "1 demande(s) validée(s)" in done.text
    bio = web.actor(a.emails["biologist"])
    assert web.lv.lab.get_order(bio, normal.order_id).status.value == "final"
    assert web.lv.lab.get_order(bio, high.order_id).status.value == "technically-validated"
    browser.cookies.clear()
    form_login(browser, web, a.emails["technician"])
    assert browser.get("/console/validation").status_code == 403


def test_validate_one_order_after_review(web: World, browser: TestClient) -> None:
    a = web.a
    high = order(web, a, a.patients[1], step="technical", results=HIGH)
    form_login(browser, web, a.emails["biologist"])
    page = browser.get("/console/validation")
    assert f'action="/console/validation/{high.order_id}"' in page.text
    token = csrf_in(page.text)
    forged = browser.post(f"/console/validation/{high.order_id}",
                          data={"csrf": "x", "conclusion": "x"})
    assert forged.status_code == 403
    done = browser.post(f"/console/validation/{high.order_id}",
                        data={"csrf": token, "conclusion": "Hyperkaliémie à contrôler"})
    assert done.status_code == 200 and "Demande validée avec votre conclusion" in done.text
    bio = web.actor(a.emails["biologist"])
    assert web.lv.lab.get_order(bio, high.order_id).status.value == "final"
    again = browser.post(f"/console/validation/{high.order_id}", data={"csrf": token})
    assert again.status_code in (400, 409) and "Traceback" not in again.text   # said plainly
    other = order(web, a, a.patients[2], step="technical")
    browser.cookies.clear()
    form_login(browser, web, a.emails["technician"])
    tech = browser.post(f"/console/validation/{other.order_id}",
                        data={"csrf": csrf_in(browser.get("/console").text)})
    assert tech.status_code == 403
    assert web.lv.lab.get_order(bio, other.order_id).status.value == "technically-validated"


def test_security_headers_and_friendly_errors(web: World, browser: TestClient) -> None:
    login = browser.get("/login")
    csp = login.headers["content-security-policy"]
    assert "script-src" not in csp and "unsafe-inline" not in csp
    assert "default-src 'none'" in csp and "form-action 'self'" in csp
    assert "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert login.headers["x-frame-options"] == "DENY"
    assert login.headers["cache-control"] == "no-store"
    assert "<script" not in login.text and "style=" not in login.text
    form_login(browser, web, web.a.emails["biologist"])
    r = browser.get("/console/patients/pt_0000000000000000000000000x")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "Introuvable" in r.text and "Que faire" in r.text and "Traceback" not in r.text
    assert r.headers["cache-control"] == "no-store"
    bad = browser.post("/console/recherche", data={"csrf": "x", "nir": "1" * 500})
    assert bad.status_code == 422 and "formulaire" in bad.text.lower()


@pytest.mark.parametrize("path", ["/portail", "/portail/acces", "/portail/donnees.json",
                                  "/portail/effacement"])
def test_staff_have_no_portal(web: World, browser: TestClient, path: str) -> None:
    form_login(browser, web, web.a.emails["biologist"])
    assert browser.get(path).status_code == 403


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs pdftotext (poppler-utils)")
def test_pdf_text_keeps_accents(web: World, browser: TestClient, tmp_path: object) -> None:
    rep = order(web, web.a, web.a.patients[0], conclusion="Légère élévation ; à contrôler")
    form_login(browser, web, web.a.emails["patient"], staff=False)
    pdf = browser.get(f"/portail/rapports/{rep.report_id}.pdf").content
    text = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True,
                          check=True).stdout.decode()
    assert "Compte rendu d'analyses de biologie médicale" in text
    assert "Légère élévation ; à contrôler" in text and "publiée" in text
    assert web.a.patient_data[0]["birth_name"].upper() in text       # NOM Prénoms


def test_alerts_page_for_dpo_and_lab_admin(web: World, browser: TestClient) -> None:
    from labvault.services.alerts import AlertService
    lv = web.lv
    form_login(browser, web, web.a.emails["dpo"])
    none = browser.get("/console/alertes")          # no alert store plugged: friendly 404
    assert none.status_code == 404 and "aucun registre" in none.text
    lv.alerts = AlertService(lv)
    lv.gate.alerts = lv.alerts
    patient = TestClient(browser.app, base_url="http://testserver", follow_redirects=False)
    form_login(patient, web, web.a.emails["patient"], staff=False)
    page = patient.get("/portail/effacement")
    assert patient.post("/portail/effacement", data={
        "csrf": csrf_in(page.text), "reason": "Je ne veux plus être suivi ici"}).status_code == 200
    for role in ("dpo", "lab_admin"):
        browser.cookies.clear()
        form_login(browser, web, web.a.emails[role])
        r = browser.get("/console/alertes")
        assert r.status_code == 200 and "demande d'effacement" in unescape(r.text), role
        assert web.a.patients[0] in r.text
        assert "Je ne veux plus" not in r.text           # free text stays sealed
    browser.cookies.clear()
    form_login(browser, web, web.b.emails["dpo"])      # another lab's DPO sees none of it
    other = browser.get("/console/alertes")
    assert other.status_code == 200 and "Aucune alerte" in other.text
    browser.cookies.clear()
    form_login(browser, web, web.a.emails["biologist"])   # clinical alerts only
    clinical = browser.get("/console/alertes")
    assert clinical.status_code == 200 and "Aucune alerte" in clinical.text
    assert "demande d'effacement" not in unescape(clinical.text)
    for role in ("technician", "reception"):
        browser.cookies.clear()
        form_login(browser, web, web.a.emails[role])
        assert browser.get("/console/alertes").status_code == 403
    # acknowledging from the page: the lab's DPO only, CSRF-checked, audited
    (alert,) = lv.alerts.list(web.actor(web.a.emails["dpo"]), web.a.tenant_id)
    ack = f"/console/alertes/{alert['id']}/prise-en-compte"
    token = csrf_in(browser.get("/console").text)
    assert browser.post(ack, data={"csrf": token}).status_code == 403      # reception
    browser.cookies.clear()
    form_login(browser, web, web.b.emails["dpo"])
    assert browser.post(ack, data={"csrf": csrf_in(browser.get("/console").text)}
                        ).status_code == 404                                # another lab
    browser.cookies.clear()
    form_login(browser, web, web.a.emails["dpo"])
    page = browser.get("/console/alertes")
    assert 'action="' + ack + '"' in page.text
    assert browser.post(ack, data={"csrf": "x"}).status_code == 403
    done = browser.post(ack, data={"csrf": csrf_in(page.text)})
    assert done.status_code == 303 and done.headers["location"] == "/console/alertes"
    after = browser.get("/console/alertes")
    assert ack not in after.text
    (acked,) = lv.alerts.list(web.actor(web.a.emails["dpo"]), web.a.tenant_id)
    assert acked["status"] == "acked" and acked["acked_by"] == web.actor(
        web.a.emails["dpo"]).id


def test_alerts_page_names_who_acknowledged(web: World, browser: TestClient) -> None:
    """The alerts page said who acknowledged an alert by account id (``acct_…``): it names
    the staff member, as the other console pages do, and shows the id only when there is
    no name (the CLI operator's acknowledgement)."""
    from labvault.services.alerts import AlertService
    lv = web.lv
    lv.alerts = AlertService(lv)
    lv.gate.alerts = lv.alerts
    with lv.begin() as conn:
        first, second = (lv.alerts.raise_alert(conn, web.a.tenant_id, "enumeration", "high",
                                               None, {"n": i}, subject=f"s{i}")
                         for i in range(2))
    assert first and second and first != second
    dpo = web.actor(web.a.emails["dpo"])
    operator = Actor.operator()
    lv.alerts.ack(operator, second)
    form_login(browser, web, web.a.emails["dpo"])
    page = browser.get("/console/alertes")
    done = browser.post(f"/console/alertes/{first}/prise-en-compte",
                        data={"csrf": csrf_in(page.text)})
    assert done.status_code == 303
    text = unescape(browser.get("/console/alertes").text)
    name = lv.accounts.name_of(dpo)
    assert name and f"par {name}" in text
    assert f"par <code>{dpo.id}</code>" not in text         # no longer the account id
    assert f"par <code>{operator.id}</code>" in text        # no name: the id
    listed = {a["id"]: a for a in lv.alerts.list(dpo, web.a.tenant_id)}
    assert (listed[first]["acked_by"], listed[first]["acked_by_name"]) == (dpo.id, name)
    assert listed[second]["acked_by_name"] is None


def test_biologists_see_reports_the_prescriber_did_not_get(web: World,
                                                          browser: TestClient) -> None:
    """A report the prescriber's system refused (or never received) must reach the doctor
    another way, which is the biologist's duty: the ``delivery-failed`` alert is a
    clinical one, listed on the biologist's alerts page with the link to the patient's
    page at the order; a security alert of the same lab stays the DPO's."""
    from labvault.services.alerts import AlertService
    lv = web.lv
    lv.alerts = lv.gate.alerts = AlertService(lv)
    pid = web.a.patients[0]
    with lv.begin() as conn:
        failed = lv.alerts.raise_alert(
            conn, web.a.tenant_id, "delivery-failed", "high", Actor.system("delivery"),
            {"outbox_id": "out_1", "report_id": "rep_1", "order_id": "ord_1",
             "patient_id": pid, "outcome": "refused"}, subject="delivery|out_1")
        security = lv.alerts.raise_alert(
            conn, web.a.tenant_id, "access.off_hours", "medium",
            Actor(kind="staff", id="acct_r", tenant_id=web.a.tenant_id,
                  roles=frozenset({"reception"})), {"n": 1})
    form_login(browser, web, web.a.emails["biologist"])
    page = browser.get("/console/alertes")
    text = unescape(page.text)
    assert page.status_code == 200 and "Alertes cliniques du laboratoire" in text
    assert "compte rendu non remis au système du prescripteur" in text
    assert f'href="/console/patients/{pid}#ord_1"' in page.text
    assert f"/console/alertes/{failed}/prise-en-compte" in page.text
    assert f"/console/alertes/{security}/prise-en-compte" not in page.text
    assert ">Alertes cliniques</a>" in page.text                  # the menu says so too
    done = browser.post(f"/console/alertes/{failed}/prise-en-compte",
                        data={"csrf": csrf_in(page.text)})
    assert done.status_code == 303
    (acked,) = [a for a in lv.alerts.list(Actor.operator(), web.a.tenant_id)
                if a["id"] == failed]
    assert acked["acked_by"] == web.actor(web.a.emails["biologist"]).id


def test_pages_work_under_the_guard(web: World, browser: TestClient) -> None:
    """With the guard plugged in as in production (budgets, anomaly rules, alert store)."""
    web.lv.guard.install()
    rep = order(web, web.a, web.a.patients[0])
    form_login(browser, web, web.a.emails["patient"], staff=False)
    for path in ("/portail", "/portail/acces", "/portail/donnees.json",
                 f"/portail/rapports/{rep.report_id}.pdf"):
        assert browser.get(path).status_code == 200, path
    browser.cookies.clear()
    form_login(browser, web, web.a.emails["biologist"])
    assert browser.get(f"/console/patients/{web.a.patients[0]}").status_code == 200
    assert browser.get("/console/validation").status_code == 200


def test_biologist_sees_open_panic_values_at_the_top_of_the_worklist(
        web: World, browser: TestClient) -> None:
    """QA finding 2: a panic value is put in front of the biologist at once -- at the top of
    the validation worklist while its order is still preliminary, with the link to the
    patient's order -- and "Prendre en compte" records who and when, then it leaves the
    list; the security alerts of the lab never show there."""
    from labvault.services.alerts import AlertService
    lv, a = web.lv, web.a
    lv.alerts = lv.gate.alerts = AlertService(lv)
    tech = web.actor(a.emails["technician"])
    o = lv.lab.create_order(web.actor(a.emails["biologist"]), a.tenant_id, a.patients[1],
                            {"tests": ["2823-3"], "priority": "stat"},
                            {"type": "BLD", "accession_number": "PANIC1",
                             "collected_at": "2026-03-01T08:30:00+01:00"})
    (k,) = lv.lab.enter_results(tech, o.order_id, [{"code": "2823-3", "value": "7.4", "unit": "mmol/L"}])
    with lv.begin() as conn:       # a security alert of the same lab: the DPO's only
        lv.alerts.raise_alert(conn, a.tenant_id, "access.off_hours", "medium", tech,
                              {"patient_id": a.patients[2]})
    form_login(browser, web, a.emails["biologist"])
    page = browser.get("/console/validation")
    assert page.status_code == 200
    top = page.text.index("Valeurs critiques à traiter")
    assert top < page.text.index("Demandes validées techniquement")
    link = f'href="/console/patients/{a.patients[1]}#{o.order_id}"'
    assert link in page.text and "7,4" in page.text and "critique" in page.text
    assert a.patients[2] not in page.text
    assert f'id="{o.order_id}"' in browser.get(f"/console/patients/{a.patients[1]}").text
    alerts_page = browser.get("/console/alertes")
    assert link in alerts_page.text and a.patients[2] not in alerts_page.text
    bio = web.actor(a.emails["biologist"])
    (alert,) = lv.alerts.list(bio, a.tenant_id)
    assert alert["kind"] == "panic-value"
    assert alert["detail"]["detail"]["observation_id"] == k.observation_id
    done = browser.post(f"/console/alertes/{alert['id']}/prise-en-compte",
                        data={"csrf": csrf_in(page.text), "retour": "/console/validation"})
    assert done.status_code == 303 and done.headers["location"] == "/console/validation"
    assert "Valeurs critiques à traiter" not in browser.get("/console/validation").text
    (acked,) = lv.alerts.list(bio, a.tenant_id)
    assert acked["status"] == "acked" and acked["acked_by"] == bio.id and acked["acked_at"]
    elsewhere = browser.post(f"/console/alertes/{alert['id']}/prise-en-compte",
                             data={"csrf": csrf_in(page.text), "retour": "https://evil.example"})
    assert elsewhere.headers["location"] == "/console/alertes"     # never an outside URL


def test_portal_reads_are_audited_as_the_patients_own_access(web: World,
                                                              browser: TestClient) -> None:
    """QA finding 15: every read the portal makes for the patient -- record, orders,
    reports, PDF, data download -- is audited with purpose ``patient-access`` (what
    ``labvault audit access --patient`` shows), never ``care``."""
    a = web.a
    rep = order(web, a, a.patients[0])
    amended = order(web, a, a.patients[0])
    hb = next(o for o in amended.observations if o.observation.code == "718-7")
    web.lv.lab.amend(web.actor(a.emails["biologist"]), hb.observation_id,
                     {"code": "718-7", "value": 12.4, "unit": "g/dL"}, "erreur de saisie")
    form_login(browser, web, a.emails["patient"], staff=False)
    for path in ("/portail", "/portail/donnees.json", f"/portail/rapports/{rep.report_id}.pdf"):
        assert browser.get(path).status_code == 200, path
    rows = audit_of(web.lv).access_log(Actor.operator(), a.patients[0])
    mine = [r for r in rows if r["actor_kind"] == "patient"]
    assert len(mine) >= 6                  # record, orders, reports (list and each), PDF
    assert {r["purpose"] for r in mine} == {"patient-access"}
    assert {r["resource"] for r in mine} == {"patient", "order", "report"}   # QA finding 20


def test_times_are_shown_in_paris_time_whatever_the_backend(web: World,
                                                            browser: TestClient) -> None:
    """QA finding 12: a report published at 05:19 UTC shows 06:19 in winter and 07:19 in
    summer (Europe/Paris) on the portal, in its PDF's source page and on the console; the
    data download carries the offset of every time (UTC)."""
    a = web.a
    for when, shown in ((datetime(2027, 1, 15, 5, 19, tzinfo=UTC), "15/01/2027 à 06:19"),
                        (datetime(2027, 7, 15, 5, 19, tzinfo=UTC), "15/07/2027 à 07:19")):
        web.clock.t = when - timedelta(minutes=30)
        rep = order(web, a, a.patients[0], step="final")
        bio = web.actor(a.emails["biologist"])
        web.clock.t = when
        web.lv.lab.publish(bio, rep.order_id)
        browser.cookies.clear()
        form_login(browser, web, a.emails["patient"], staff=False)
        page = browser.get("/portail").text
        assert f"Compte rendu du {shown}" in page, (shown, page[:2000])
        data = json.loads(browser.get("/portail/donnees.json").content)
        (mine,) = [r for r in data["reports"] if r["id"] == rep.report_id]
        assert datetime.fromisoformat(mine["issued_at"]) == when
        for key in ("issued_at", "created_at", "updated_at"):
            assert datetime.fromisoformat(mine[key]).utcoffset() is not None, key
        for obs in mine["observations"]:
            assert datetime.fromisoformat(obs["updated_at"]).utcoffset() is not None
        browser.cookies.clear()
        form_login(browser, web, a.emails["biologist"])
        console = unescape(browser.get(f"/console/patients/{a.patients[0]}").text)
        ordered = (when - timedelta(minutes=30)).astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")
        assert f"Demande du {ordered}" in console


def test_fr_datetime_reads_a_time_without_offset_as_utc() -> None:
    from labvault.web.render import fr_date, fr_datetime
    for naive, aware in ((datetime(2026, 1, 15, 23, 30), "16/01/2026 à 00:30"),
                         (datetime(2026, 7, 15, 5, 19), "15/07/2026 à 07:19")):
        assert fr_datetime(naive) == fr_datetime(naive.replace(tzinfo=UTC)) == aware
        assert fr_datetime(naive.isoformat()) == aware
        assert fr_datetime(naive.replace(tzinfo=UTC).isoformat()) == aware
        assert fr_date(naive) == aware[:10]
