"""The console's entry per role (docs/web.md, "/console"): after login each staff member
lands on what the policy lets them do -- the patient search for the roles that search
patients, an "Accueil" page listing their pages for the others (lab administrators, the
DPO), never a search form that refuses them. The menu offers only the pages the user may
use, and every link it offers answers."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.access.conftest import World
from tests.web.helpers import form_login

SEARCH, HOME = "Recherche de patient", "Accueil"
# what each role's menu offers, in order (after the search or "Accueil" entry)
MENUS: dict[str, tuple[str, list[str]]] = {
    "reception": (SEARCH, ["Nouveau patient", "Messages d'automate"]),
    "technician": (SEARCH, ["Validation technique", "Messages d'automate"]),
    "biologist": (SEARCH, ["Nouveau patient", "Validation technique",
                           "Validation biologique", "Messages d'automate",
                           "Transmissions aux prescripteurs", "Alertes cliniques"]),
    "lab_admin": (HOME, ["Messages d'automate", "Fusionner un doublon",
                         "Transmissions aux prescripteurs", "Alertes"]),
    "dpo": (HOME, ["Alertes", "Journal d'un patient", "Activité d'un utilisateur",
                   "Intégrité du journal"]),
}


def _menu(page: str) -> list[tuple[str, str]]:
    nav = page.split("<nav>", 1)[1].split("</nav>", 1)[0]
    return [(href, unescape(label)) for href, label in
            re.findall(r'<a href="([^"]+)">([^<]+)</a>', nav)]


def _text(r: Any) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", r.text)).split())


@pytest.fixture
def alerting(web: World) -> World:
    """The guard's alert store plugged in, as ``labvault serve`` does (the alerts page
    answers only with it)."""
    from labvault.services.alerts import AlertService
    web.lv.alerts = web.lv.gate.alerts = AlertService(web.lv)
    return web


@pytest.mark.parametrize("role", sorted(MENUS))
def test_each_role_lands_on_what_it_may_do_and_every_menu_link_answers(
        alerting: World, browser: TestClient, role: str) -> None:
    w = alerting
    login = form_login(browser, w, w.a.emails[role])
    assert login.status_code == 303 and login.headers["location"] == "/"
    assert browser.get("/").headers["location"] == "/console"
    landing = browser.get("/console")
    assert landing.status_code == 200, _text(landing)
    first, entries = MENUS[role]
    menu = _menu(landing.text)
    assert menu[0] == ("/console", first)
    assert [label for _href, label in menu[1:]] == entries
    text = _text(landing)
    if first == SEARCH:
        assert 'action="/console/recherche"' in landing.text
    else:         # no search form that would refuse them: their pages, as links
        assert 'action="/console/recherche"' not in landing.text
        assert "Vos tâches" in text
        for href, label in menu[1:]:
            assert f'<a href="{href}">{label}</a>' in unescape(landing.text)
    for href, label in menu:
        page = browser.get(href)
        assert page.status_code == 200, (role, href, label, _text(page))


def test_no_alerts_link_without_an_alert_store(web: World, browser: TestClient) -> None:
    """Without the guard's alert store the alerts page answers 404: the menu does not
    offer it, rather than a dead link (the DPO's "Accueil" lists its other pages)."""
    form_login(browser, web, web.a.emails["dpo"])
    page = browser.get("/console")
    assert page.status_code == 200
    assert "/console/alertes" not in page.text
    assert [label for _href, label in _menu(page.text)[1:]] == MENUS["dpo"][1][1:]


def test_a_role_that_searches_nobody_is_refused_the_search_itself(
        web: World, browser: TestClient) -> None:
    """The search form is gone from their landing page; the search itself is still the
    gate's to refuse (recorded), whatever a form sends."""
    from tests.web.helpers import csrf_in
    form_login(browser, web, web.a.emails["lab_admin"])
    token = csrf_in(browser.get("/console").text)
    r = browser.post("/console/recherche", data={
        "csrf": token, "nir": web.a.patient_data[0]["nir"]})
    assert r.status_code == 403
    assert web.a.patient_data[0]["birth_name"] not in r.text
