""""Transmissions aux prescripteurs" (``/console/envois``): the laboratory's outbox on the
console for its biologists and lab administrators -- failed messages first with the
receiver's error and "Renvoyer au prescripteur", then the waiting ones, then the last
delivered -- never a message's content nor a patient's name; another laboratory sees
nothing of it."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

from fastapi.testclient import TestClient

from labvault.domain.actors import Actor
from labvault.services.delivery import Due
from tests.access.conftest import World
from tests.web.helpers import (
    DELIVERY_DESTINATION,
    REFUSED,
    csrf_in,
    failed_delivery,
    form_login,
)

PAGE = "/console/envois"
TITLE = "Transmissions aux prescripteurs"
FAILED = "Non remis — à renvoyer ou à transmettre autrement"
BUTTON = "Renvoyer au prescripteur"


def _sections(text: str) -> tuple[str, str, str]:
    """The page's failed, pending and delivered sections."""
    _, rest = text.split(f"<h2>{FAILED}</h2>")
    failed, rest = rest.split("<h2>En attente</h2>")
    pending, delivered = rest.split("<h2>Remis")
    return failed, pending, delivered


def _resend_form(page: str, oid: str) -> str:
    form = re.search(rf'<form method="post" action="/console/envois/{oid}/renvoi">(.*?)</form>',
                     page, re.S)
    assert form, "no resend form on the failed row"
    return form.group(1)


def test_a_biologist_sees_the_failed_report_with_a_link_to_the_order(
        web: World, browser: TestClient) -> None:
    a = web.a
    oid, rep = failed_delivery(web, a)
    form_login(browser, web, a.emails["biologist"])
    page = browser.get(PAGE)
    text = unescape(page.text)
    assert page.status_code == 200 and f'<a href="{PAGE}">{TITLE}</a>' in text      # menu
    failed, pending, delivered = _sections(text)
    assert oid in failed and oid not in pending + delivered
    assert DELIVERY_DESTINATION in failed and REFUSED in failed and "compte rendu" in failed
    assert f'href="/console/patients/{rep.patient_id}#{rep.order_id}"' in failed
    form = _resend_form(page.text, oid)
    assert re.search(r'<input id="motif-[^"]+" name="motif"[^>]* required', form)
    assert 'name="csrf"' in form and 'name="retour" value="/console/envois"' in form
    # neither the patient's name nor the message (its PID segment names the patient)
    data = a.patient_data[1]
    assert data["birth_name"] not in text and data["nir"] not in text and "PID|" not in text
    assert "Aucun envoi en attente." in pending


def test_a_lab_admin_sees_it_without_patient_links(web: World, browser: TestClient) -> None:
    a = web.a
    oid, rep = failed_delivery(web, a)
    form_login(browser, web, a.emails["lab_admin"])
    page = browser.get(PAGE)
    text = unescape(page.text)
    assert page.status_code == 200 and f'<a href="{PAGE}">{TITLE}</a>' in text
    failed, _pending, _delivered = _sections(text)
    assert oid in failed and REFUSED in failed and DELIVERY_DESTINATION in failed
    assert "/console/patients/" not in text and rep.order_id not in text
    assert BUTTON in failed and _resend_form(page.text, oid)


def test_roles_without_the_outbox_are_refused(web: World, browser: TestClient) -> None:
    a = web.a
    failed_delivery(web, a)
    for role in ("technician", "reception"):
        browser.cookies.clear()
        form_login(browser, web, a.emails[role])
        assert TITLE not in unescape(browser.get("/console").text), role      # no menu entry
        r = browser.get(PAGE)
        text = unescape(r.text)
        assert r.status_code == 403, role
        assert "réservées aux biologistes et aux administrateurs du laboratoire" in text
        assert DELIVERY_DESTINATION not in text and REFUSED not in text


def test_another_laboratory_sees_nothing_of_it(web: World, browser: TestClient) -> None:
    oid, _rep = failed_delivery(web, web.a)
    for role in ("biologist", "lab_admin"):
        browser.cookies.clear()
        form_login(browser, web, web.b.emails[role])
        r = browser.get(PAGE)
        text = unescape(r.text)
        assert r.status_code == 200 and "Aucun envoi." in text, role
        assert oid not in text and DELIVERY_DESTINATION not in text and REFUSED not in text
        assert BUTTON not in text


def _resend_from_page(web: World, browser: TestClient, role: str, motif: str,
                      retour: str = PAGE) -> tuple[str, Any, Any]:
    """A failed delivery of lab A, sent again by ``role`` from the outbox page's form:
    (its outbox id, its report, the response)."""
    oid, rep = failed_delivery(web, web.a)
    form_login(browser, web, web.a.emails[role])
    page = browser.get(PAGE)
    done = browser.post(f"/console/envois/{oid}/renvoi",
                        data={"csrf": csrf_in(page.text), "retour": retour, "motif": motif})
    assert done.status_code == 303
    return oid, rep, done


def test_resend_from_the_page_comes_back_here_and_the_row_waits(
        web: World, browser: TestClient) -> None:
    a = web.a
    oid, rep, done = _resend_from_page(web, browser, "biologist",
                                       "patient créé dans le logiciel du cabinet")
    assert done.headers["location"] == f"{PAGE}?renvoi={oid}#envoi-{oid}"
    after = browser.get(done.headers["location"])
    failed, pending, _delivered = _sections(unescape(after.text))
    assert oid in pending and oid not in failed and "Aucun envoi non remis." in failed
    assert "Renvoyé : le compte rendu est de nouveau en file d'envoi" in pending
    assert BUTTON not in after.text and REFUSED not in after.text   # the error went with it
    (row,) = web.lv.delivery.status(Actor.operator(), a.tenant_id)
    assert (row["status"], row["attempts"]) == ("pending", 0)
    # delivered at the next attempt: in the last section, with when it was received
    assert web.lv.delivery.record(Due(a.tenant_id, oid, rep.report_id, rep.patient_id, 0,
                                      None, rep.order_id), "delivered", "AA") == "delivered"
    failed, pending, delivered = _sections(unescape(browser.get(PAGE).text))
    assert oid in delivered and oid not in failed + pending


def test_a_return_outside_the_allow_list_goes_to_the_patient_page(
        web: World, browser: TestClient) -> None:
    oid, rep, done = _resend_from_page(web, browser, "biologist", "essai",
                                       retour="https://evil.example/")
    assert done.headers["location"] == (f"/console/patients/{rep.patient_id}?renvoi={oid}"
                                        f"#{rep.order_id}")


def test_a_lab_admin_resends_from_the_page_and_comes_back_here(
        web: World, browser: TestClient) -> None:
    oid, _rep, done = _resend_from_page(web, browser, "lab_admin",
                                        "le cabinet a redémarré son serveur")
    assert done.headers["location"].startswith(f"{PAGE}?renvoi=")
    _failed, pending, _delivered = _sections(unescape(browser.get(done.headers["location"]).text))
    assert oid in pending and "Renvoyé" in pending


def test_a_resend_without_a_reason_comes_back_here_said_next_to_the_field(
        web: World, browser: TestClient) -> None:
    """QA: a reason of spaces went to the generic error page. The outbox page comes back
    (422), the refusal next to that row's reason; nothing sent again."""
    oid, _rep = failed_delivery(web, web.a)
    form_login(browser, web, web.a.emails["lab_admin"])
    page = browser.get(PAGE)
    r = browser.post(f"/console/envois/{oid}/renvoi",
                     data={"csrf": csrf_in(page.text), "retour": PAGE, "motif": "   "})
    assert r.status_code == 422
    text = unescape(r.text)
    row = text.split(f'id="envoi-{oid}"', 1)[1].split("</tr>", 1)[0]
    assert "Motif : le motif manque" in row and "Rien n'a été renvoyé" in row
    assert f'aria-describedby="err-motif-{oid}" aria-invalid="true"' in row
    (still,) = web.lv.delivery.status(Actor.operator(), web.a.tenant_id, ["failed"])
    assert still["id"] == oid
