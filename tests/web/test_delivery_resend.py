""""Renvoyer au prescripteur" on the patient's page: a report the prescriber's system did
not get is sent again by a biologist, with a reason, once its cause is fixed (the same
call as ``POST /api/v1/deliveries/{id}/resend``), then the page confirms it."""

from __future__ import annotations

import re
from html import unescape

from fastapi.testclient import TestClient

from labvault.domain.actors import Actor
from tests.access.conftest import World
from tests.api.helpers import bearer
from tests.web.helpers import csrf_in, failed_delivery, form_login

BUTTON = "Renvoyer au prescripteur"


def _alerts(web: World) -> None:
    from labvault.services.alerts import AlertService
    web.lv.alerts = web.lv.gate.alerts = AlertService(web.lv)


def test_a_biologist_sends_a_refused_report_again(web: World, browser: TestClient) -> None:
    a = web.a
    _alerts(web)
    oid, rep = failed_delivery(web, a)
    form_login(browser, web, a.emails["biologist"])
    page = browser.get(f"/console/patients/{rep.patient_id}")
    text = unescape(page.text)
    assert page.status_code == 200 and "non remis" in text and BUTTON in text
    form = re.search(rf'<form method="post" action="/console/envois/{oid}/renvoi">(.*?)</form>',
                     page.text, re.S)
    assert form, "no resend form beside the report"
    assert re.search(r'<input id="motif-[^"]+" name="motif"[^>]* required', form.group(1))
    assert 'name="csrf"' in form.group(1) and ">Motif</label>" in form.group(1)
    # without the form's CSRF value: refused, nothing sent again
    refused = browser.post(f"/console/envois/{oid}/renvoi", data={"motif": "patient créé"})
    assert refused.status_code == 403
    # without a reason: the page again, said next to the field, nothing sent again
    empty = browser.post(f"/console/envois/{oid}/renvoi",
                         data={"csrf": csrf_in(page.text), "motif": "  "})
    assert empty.status_code == 422
    form = re.search(rf'<form method="post" action="/console/envois/{oid}/renvoi">(.*?)</form>',
                     empty.text, re.S)
    assert form, "the page again, with the form"
    assert "Motif : le motif manque" in unescape(form.group(1))
    assert 'aria-invalid="true"' in form.group(1) and "Rien n'a été renvoyé" in unescape(
        form.group(1))
    assert web.lv.delivery.status(Actor.operator(), a.tenant_id, ["failed"])[0]["id"] == oid
    done = browser.post(f"/console/envois/{oid}/renvoi",
                        data={"csrf": csrf_in(page.text),
                              "motif": "patient créé dans le logiciel du cabinet"})
    assert done.status_code == 303
    assert done.headers["location"] == (f"/console/patients/{rep.patient_id}?renvoi={oid}"
                                        f"#{rep.order_id}")
    after = unescape(browser.get(done.headers["location"]).text)
    assert "Renvoyé : le compte rendu est de nouveau en file d'envoi" in after
    assert "en file d'envoi vers le système du prescripteur" in after and BUTTON not in after
    (row,) = web.lv.delivery.status(Actor.operator(), a.tenant_id)
    assert (row["status"], row["attempts"]) == ("pending", 0)
    assert not [x for x in web.lv.alerts.list(Actor.operator(), a.tenant_id, status="open")  # type: ignore[attr-defined]
                if x["kind"] == "delivery-failed"]
    # sent again already: the console says so in French
    twice = browser.post(f"/console/envois/{oid}/renvoi",
                         data={"csrf": csrf_in(page.text), "motif": "encore"})
    assert twice.status_code == 409
    assert "déjà en file d'envoi" in unescape(twice.text)


def test_only_the_outbox_roles_get_the_form(web: World, browser: TestClient) -> None:
    a = web.a
    oid, rep = failed_delivery(web, a)
    form_login(browser, web, a.emails["technician"])      # reads reports, not the outbox
    page = unescape(browser.get(f"/console/patients/{rep.patient_id}").text)
    assert "non remis" in page and BUTTON not in page
    r = browser.post(f"/console/envois/{oid}/renvoi",
                     headers=bearer(web, a, "technician"), data={"motif": "essai"})
    assert r.status_code == 403
    # a lab administrator reads no report: the confirmation alone
    r = browser.post(f"/console/envois/{oid}/renvoi", headers=bearer(web, a, "lab_admin"),
                     data={"motif": "le cabinet a redémarré son serveur"})
    assert r.status_code == 200 and "Compte rendu remis en file d'envoi" in unescape(r.text)
    # a removed destination: what to do, in French
    other, _rep = failed_delivery(web, a, a.patients[2])
    (dest,) = web.lv.delivery.list_destinations(Actor.operator(), a.tenant_id)
    web.lv.delivery.remove_destination(Actor.operator(), a.tenant_id, dest["id"])
    r = browser.post(f"/console/envois/{other}/renvoi", headers=bearer(web, a, "biologist"),
                     data={"motif": "essai"})
    assert r.status_code == 409 and "destinataire de ce compte rendu a été retiré" in unescape(
        r.text)
