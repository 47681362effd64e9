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


def _raise_kinds(lv: Labvault, tenant_id: str, kinds: list[str]) -> dict[str, str]:
    """One alert per kind (distinct subjects / accounts), alert id -> kind."""
    out = {}
    with lv.begin() as conn:
        for i, kind in enumerate(kinds):
            actor = staff(tenant_id, "reception", f"acct_{i}")
            aid = lv.alerts.raise_alert(conn, tenant_id, kind, "high", actor,
                                        {"patient_id": f"pt_{i}"}, subject=f"s{i}")
            assert aid is not None
            out[aid] = kind
    return out


def test_biologists_read_and_acknowledge_clinical_alerts_only(tlv: Labvault,
                                                              tenant_id: str) -> None:
    """QA finding 2: a biologist reads the lab's panic-value alerts (the policy's
    ``clinical-alert`` row) and acknowledges them (who and when recorded, audited); the
    security alerts (they name staff accounts) stay the DPO's and lab admins': a biologist
    acknowledging one gets the same answer as for an alert that does not exist."""
    from labvault.errors import NotFound
    ids = _raise_kinds(tlv, tenant_id, ["panic-value", "access.off_hours", "panic-value",
                                        "canary.read"])
    clinical = {a for a, k in ids.items() if k == "panic-value"}
    bio = staff(tenant_id, "biologist", "acct_bio")
    dpo = staff(tenant_id, "dpo", "acct_dpo")
    assert {a["id"] for a in tlv.guard.alerts.list(bio)} == clinical
    assert {a["id"] for a in tlv.guard.alerts.list(dpo)} == set(ids)
    for role in ("technician", "reception", "patient_like"):
        with pytest.raises(AccessDenied):
            tlv.guard.alerts.list(staff(tenant_id, role, f"acct_{role}"))
    security = next(a for a, k in ids.items() if k == "access.off_hours")
    with pytest.raises(NotFound) as absent:
        tlv.guard.alerts.ack(bio, "alrt_doesnotexist")
    with pytest.raises(NotFound) as hidden:
        tlv.guard.alerts.ack(bio, security)
    assert (absent.value.message, absent.value.hint) == (
        hidden.value.message.replace(security, "alrt_doesnotexist"), hidden.value.hint)
    panic = sorted(clinical)[0]
    done = tlv.guard.alerts.ack(bio, panic)
    assert done["acked_by"] == "acct_bio" and done["acked_at"]
    listed = {a["id"]: a for a in tlv.guard.alerts.list(dpo)}
    assert listed[panic]["status"] == "acked" and listed[panic]["acked_by"] == "acct_bio"
    assert listed[security]["status"] == "open"
    other_lab_bio = Actor(kind="staff", id="acct_x", tenant_id="lab_other",
                          roles=frozenset({"biologist"}))
    with pytest.raises(NotFound):
        tlv.guard.alerts.ack(other_lab_bio, sorted(clinical)[1])


@pytest.mark.parametrize("roles", [("biologist",), ("dpo",), ("lab_admin",),
                                   ("biologist", "dpo"), ("technician",), ("reception",)])
def test_property_each_role_reads_exactly_its_alert_kinds(tlv: Labvault, tenant_id: str,
                                                          roles: tuple[str, ...]) -> None:
    """For a mix of every kind the product raises: the DPO and lab admins read all, a
    biologist exactly the clinical ones, anybody else nothing; the same holds for
    acknowledging (an alert one cannot read cannot be acknowledged)."""
    from labvault.errors import NotFound
    from labvault.guard.alerts import CLINICAL_KINDS
    from labvault.guard.rules import RULES
    kinds = sorted({*RULES, "panic-value", "break-glass", "import-issue", "erasure-request",
                    "delivery-failed"})
    ids = _raise_kinds(tlv, tenant_id, kinds)
    who = Actor(kind="staff", id="acct_who", tenant_id=tenant_id, roles=frozenset(roles))
    if {"dpo", "lab_admin"} & set(roles):
        readable = set(ids)
    elif "biologist" in roles:
        readable = {a for a, k in ids.items() if k in CLINICAL_KINDS}
    else:
        with pytest.raises(AccessDenied):
            tlv.guard.alerts.list(who)
        with pytest.raises(AccessDenied):
            tlv.guard.alerts.ack(who, next(iter(ids)))
        return
    assert {a["id"] for a in tlv.guard.alerts.list(who, limit=1000)} == readable
    for aid in ids:
        if aid in readable:
            assert tlv.guard.alerts.ack(who, aid)["status"] == "acked"
        else:
            with pytest.raises(NotFound):
                tlv.guard.alerts.ack(who, aid)
