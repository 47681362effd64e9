"""The guard under the access module's table policy (the production policy)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import pytest
from pyrage import x25519

from labvault.access.policy import TablePolicy
from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, BudgetExceeded
from labvault.guard.alerts import Dispatcher
from labvault.services.alerts import AlertService
from labvault.services.app import Labvault
from labvault.services.audit import install_audit
from tests.guard.conftest import MemorySink, import_people, staff


@pytest.fixture
def tlv(lv: Labvault, sink: MemorySink) -> Iterator[Labvault]:
    lv.gate.policy = TablePolicy()
    install_audit(lv)
    lv.alerts = AlertService(lv, Dispatcher([sink]))
    lv.guard.install()
    yield lv
    lv.guard.alerts.flush()


def test_roles_of_the_table(tlv: Labvault, tenant_id: str) -> None:
    op = Actor.operator()
    tlv.guard.set_config(op, tenant_id, "budget.reception.10m", "3")
    ids = import_people(tlv, tenant_id, 5)
    desk = staff(tenant_id, "reception", "acct_desk")
    with pytest.raises(BudgetExceeded):
        for pid in ids:
            tlv.patients.show(desk, pid)
    dpo = staff(tenant_id, "dpo", "acct_dpo")
    admin = staff(tenant_id, "lab_admin", "acct_admin")
    assert [a["kind"] for a in tlv.guard.alerts.list(dpo)] == ["budget.exceeded"]
    assert tlv.guard.suspensions(admin, tenant_id)[0]["account_id"] == "acct_desk"
    with pytest.raises(AccessDenied):
        tlv.guard.release(desk, tenant_id, "acct_desk")
    tlv.guard.release(admin, tenant_id, "acct_desk")
    # Exports: a biologist requests (re-authenticated), the DPO approves, nobody else.
    tlv.settings.extra["LABVAULT_EXPORT_APPROVAL_MIN_PATIENTS"] = "2"
    try:
        bio = staff(tenant_id, "biologist", "acct_bio")
        key = x25519.Identity.generate()
        today = date.today()
        with pytest.raises(AccessDenied):
            tlv.guard.exports.create(desk, tenant_id, "x", ["birth_name"], today, today,
                                     str(key.to_public()), reauthenticated=True)
        req = tlv.guard.exports.create(bio, tenant_id, "transfer", ["birth_name", "blood_group"],
                                       today - timedelta(days=1), today, str(key.to_public()),
                                       reauthenticated=True)
        assert req["status"] == "pending_approval"
        with pytest.raises(AccessDenied):
            tlv.guard.exports.approve(bio, req["export_id"], reauthenticated=True)
        done = tlv.guard.exports.approve(dpo, req["export_id"], reauthenticated=True)
        assert done["status"] == "ready"
        found = tlv.guard.exports.identify(dpo, b'{"row_id": "x"}\n')
        assert found["export_id"] is None
    finally:
        del tlv.settings.extra["LABVAULT_EXPORT_APPROVAL_MIN_PATIENTS"]
    tlv.guard.plant(dpo, tenant_id, 1)
    with pytest.raises(AccessDenied):
        tlv.guard.plant(bio, tenant_id, 1)
