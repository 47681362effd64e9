"""The demo's seeded history raises no alert that no person caused (services/demo_lab.py):
a first run at night or on a Sunday acts in the demo staff accounts' names, which the guard
used to take for people working off hours -- a new user opening "Alertes" saw alerts nobody
caused. The same accounts, logged in afterwards, are watched as anyone."""

from __future__ import annotations

from typing import Any

import pyotp
import pytest

from labvault.access.policy import TablePolicy
from labvault.domain.actors import SEEDING_CLIENT, Actor
from labvault.services.app import Labvault
from labvault.services.demo import DEMO_PASSWORD, DEMO_TOTP_SECRET, seed_demo
from labvault.services.guard import GuardService
from tests.guard.conftest import alerts_of

# what a person's behaviour raises (the rules the seeding must not trip)
BEHAVIOUR = {"access.off_hours", "access.new_client", "enumeration.patients",
             "enumeration.searches", "enumeration.misses", "budget.exceeded"}


def _analyser(lv: Labvault) -> Any:
    from labvault.interop.hl7.handler import Hl7Handler
    return lambda tenant_id, raw: Hl7Handler(lv, Actor.system("mllp"),
                                             tenant_id).handle(raw)[0]


@pytest.fixture
def night(glv: Labvault, monkeypatch: pytest.MonkeyPatch) -> Labvault:
    """The guard with the real policy table, the laboratory closed (a Sunday night)."""
    glv.gate.policy = TablePolicy()
    monkeypatch.setattr(GuardService, "is_open", lambda *_a: False)
    return glv


def test_seeding_at_night_raises_no_alert_but_the_same_account_at_night_does(
        night: Labvault) -> None:
    lv = night
    summary = seed_demo(lv, 1, 8, analyser=_analyser(lv))
    (lab,) = summary["laboratories"]
    assert lab["lab_day"]["orders"] >= 6           # the morning's work was seeded
    tenant_id = lab["id"]
    kinds = {a["kind"] for a in alerts_of(lv, tenant_id)}
    assert not kinds & BEHAVIOUR, kinds
    assert "panic-value" in kinds            # the seeded critical potassium: a real result
    bio = next(a for a in lab["accounts"] if a["role"] == "biologist")
    reports = lv.lab.list_reports(Actor.operator(), tenant_id)
    assert reports
    # the same biologist, logged in: a person reading a record at night is alerted
    res = lv.accounts.login(bio["email"], DEMO_PASSWORD, pyotp.TOTP(DEMO_TOTP_SECRET).now(),
                            "10.0.0.8")
    person = lv.accounts.resolve(res.token)
    assert not person.seeded
    lv.patients.show(person, reports[0].patient_id)
    (alert,) = alerts_of(lv, tenant_id, "access.off_hours")
    assert alert["actor_id"] == bio["id"]


def test_only_the_seeding_passes_for_the_seeding() -> None:
    """A seeded action has no session: a request's actor always has one, so a client
    claiming the seeding's name is a person like any other."""
    seeded = Actor(kind="staff", id="acct_1", tenant_id="lab_1", client=SEEDING_CLIENT)
    claimed = Actor(kind="staff", id="acct_1", tenant_id="lab_1", client=SEEDING_CLIENT,
                    session_id="sess_1")
    assert seeded.seeded and not claimed.seeded
    assert not Actor(kind="patient", id="acct_2", tenant_id="lab_1",
                     client=SEEDING_CLIENT).seeded
