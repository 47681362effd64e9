"""Audit events in a patient's "Qui a consulté mon dossier": said in French, never as
the code labvault logs (``delivery.send`` showed as such once reports reached prescribers)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

import labvault
from labvault.domain.actors import Actor
from labvault.web.render import EVENT_FR, action_fr
from tests.access.conftest import World
from tests.web.helpers import form_login

SRC = Path(labvault.__file__).parent
LITERAL = re.compile(r'(f?)"([^"]*)"')
OUTCOMES = {"success", "failure", "ok", "recorded", "allowed", "denied"}


def _logged_events() -> set[str]:
    """The event code of every ``….event(conn, actor, "code", …)`` call in the sources: the
    call's first string literal (a call naming its event by a variable or an f-string has
    its outcome first: left out, and covered by ``action_fr``'s fallback)."""
    out = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for call in re.finditer(r"\.event\(\s*conn,", text):
            m = LITERAL.search(text, call.end(), call.end() + 300)
            if m and not m.group(1) and m.group(2) not in OUTCOMES:
                out.add(m.group(2))
    return out


def test_every_event_labvault_logs_has_a_french_name() -> None:
    events = _logged_events()
    assert {"delivery.send", "erasure.request", "login"} <= events     # the scan finds them
    assert sorted(events - set(EVENT_FR)) == []
    assert action_fr("breach.case_opened") == "traitement d'une violation de données"
    assert action_fr("user.reset-mfa") == "opération technique"         # never the code


def test_a_report_sent_to_the_prescriber_is_said_in_french(web: World,
                                                           browser: TestClient) -> None:
    a = web.a
    with web.lv.begin() as conn:
        web.lv.gate.audit.event(conn, Actor.system("delivery"), "delivery.send", "success",
                                a.tenant_id, {"patient_id": a.patients[0], "resource": "report",
                                              "purpose": "care", "outcome": "delivered"})
    form_login(browser, web, a.emails["patient"], staff=False)
    page = browser.get("/portail/acces")
    assert page.status_code == 200
    assert "envoi du compte rendu au logiciel du prescripteur" in page.text
    assert "delivery.send" not in page.text
