"""The guard with the real audit log: refused reads leave the suspension, the alert and a
verifiable chain behind (nothing lost to the rollback, no lock taken twice)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, BudgetExceeded
from labvault.guard.alerts import Dispatcher
from labvault.services.alerts import AlertService
from labvault.services.app import Labvault
from labvault.services.audit import audit_of, install_audit
from tests.guard.conftest import MemorySink, RolePolicy, alerts_of, import_people, staff


@pytest.fixture
def alv(lv: Labvault, sink: MemorySink) -> Iterator[Labvault]:
    lv.gate.policy = RolePolicy()
    install_audit(lv)
    lv.alerts = AlertService(lv, Dispatcher([sink]))
    lv.guard.install()
    yield lv
    lv.guard.alerts.flush()


def test_breach_with_audit_log(alv: Labvault, tenant_id: str) -> None:
    alv.guard.set_config(Actor.operator(), tenant_id, "budget.reception.10m", "5")
    ids = import_people(alv, tenant_id, 8)
    thief = staff(tenant_id)
    got = 0
    with pytest.raises(BudgetExceeded):
        for pid in ids:
            alv.patients.show(thief, pid)
            got += 1
    assert got == 5
    with alv.begin() as conn:
        assert alv.guard.is_suspended(conn, thief.id, tenant_id)
    (alert,) = alerts_of(alv, tenant_id, "budget.exceeded")
    assert alert["count"] == 1
    intruder = staff(tenant_id, role="nobody", ident="acct_nobody")
    for _ in range(5):
        with pytest.raises(AccessDenied):
            alv.patients.show(intruder, ids[0])
    assert alerts_of(alv, tenant_id, "access.denied.repeated")
    report = audit_of(alv).verify(tenant_id)
    assert report["ok"] and report["entries_checked"] > 10, report
