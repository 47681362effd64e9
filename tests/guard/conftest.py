"""Guard fixtures: a core with the guard installed and a test policy granting staff roles
(until the access module's table policy is merged)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from labvault.domain.actors import Actor
from labvault.domain.categories import PATIENT_CATEGORIES, Action, Category
from labvault.guard.alerts import AlertNotice, Dispatcher, LogSink
from labvault.services.alerts import AlertService
from labvault.services.app import Labvault
from labvault.services.gate import Access, Decision
from labvault.synthetic import people

ROLE_CATEGORIES: dict[str, frozenset[Category]] = {
    "reception": frozenset({Category.IDENTITY, Category.CONTACT, Category.COVERAGE}),
    "biologist": frozenset(PATIENT_CATEGORIES),
    "lab_admin": frozenset(PATIENT_CATEGORIES),
    "dpo": frozenset(PATIENT_CATEGORIES),
    "identity_exporter": frozenset({Category.IDENTITY}),
}


class RolePolicy:
    """Staff of a lab may act on that lab with their roles' categories; denies the rest."""

    def decide(self, access: Access) -> Decision:
        a = access.actor
        if a.kind in ("operator", "system"):
            return Decision(True, access.categories, rule="operator")
        if a.kind != "staff" or a.tenant_id != access.tenant_id:
            return Decision(False, rule="default-deny")
        if "nobody" in a.roles:
            return Decision(False, rule="default-deny")
        glass = bool(access.reason and access.reason.startswith("break-glass"))
        cats: frozenset[Category] = frozenset()
        for r in a.roles:
            cats |= ROLE_CATEGORIES.get(r, frozenset())
        if access.action == Action.EXPORT and not cats & access.categories:
            return Decision(False, rule="default-deny")
        return Decision(True, access.categories & cats if access.categories else cats,
                        rule="test-roles", break_glass=glass)


class MemorySink:
    name = "memory"
    min_severity = "info"

    def __init__(self) -> None:
        self.notices: list[AlertNotice] = []

    def send(self, notice: AlertNotice) -> None:
        self.notices.append(notice)


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def glv(lv: Labvault, sink: MemorySink) -> Iterator[Labvault]:
    lv.gate.policy = RolePolicy()
    lv.alerts = AlertService(lv, Dispatcher([LogSink(), sink]))
    lv.guard.install()
    yield lv
    assert isinstance(lv.alerts, AlertService)
    lv.alerts.flush()


def staff(tenant_id: str, role: str = "reception", ident: str = "acct_thief",
          client: str | None = "10.0.0.7") -> Actor:
    return Actor(kind="staff", id=ident, tenant_id=tenant_id, roles=frozenset({role}),
                 display=f"{role} {ident}", client=client, session_id="sess_1")


def import_people(lv: Labvault, tenant_id: str, n: int, seed: int = 3, start: int = 0) -> list[str]:
    lines = (json.dumps({k: v for k, v in p.items() if v is not None})
             for p in people(n, seed=seed, start=start))
    report = lv.patients.import_lines(Actor.operator(), tenant_id, lines)
    assert report.imported == n, report.rejected
    return report.ids


def alerts_of(lv: Labvault, tenant_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    rows = lv.alerts.list(Actor.operator(), tenant_id)  # type: ignore[attr-defined]
    return [r for r in rows if kind is None or r["kind"] == kind]
