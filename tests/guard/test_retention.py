"""Retention purge: patients past their retention period are crypto-shredded."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Connection

from labvault.domain.actors import Actor
from labvault.errors import InvalidField, MassErasureRefused, NotFound
from labvault.guard.retention import DEFAULT_RULES, years_for
from labvault.services.app import Labvault
from labvault.store import repositories_guard as grepo
from labvault.store.schema import patients
from tests.guard.conftest import alerts_of, import_people


def _age(lv: Labvault, tenant_id: str, ids: Sequence[str], years: float) -> None:
    with lv.begin() as conn:
        conn.execute(update(patients).where(patients.c.tenant_id == tenant_id,
                                            patients.c.patient_id.in_(list(ids))).values(
            updated_at=lv.now() - timedelta(days=365.25 * years)))


def test_defaults_cite_their_source() -> None:
    assert years_for("lab_report", {}) == 10 and years_for("genetic_report", {}) == 30
    assert all(r.source for r in DEFAULT_RULES.values())
    assert years_for("lab_report", {"retention.lab_report": "12"}) == 12


def test_retention_purge_shreds_expired_patients(glv: Labvault, tenant_id: str) -> None:
    ids = import_people(glv, tenant_id, 6)
    old, genetic, recent = ids[:3], ids[3:4], ids[4:]
    _age(glv, tenant_id, old + genetic, 11)
    _age(glv, tenant_id, recent[:1], 9)

    def genetic_source(conn: Connection, t: str, pids: Sequence[str]) -> dict[str, set[str]]:
        return {p: {"genetic_report"} for p in pids if p in genetic}

    glv.guard.retention.add_source(genetic_source)
    dry = glv.guard.purge(dry_run=True)["patients"]
    assert dry["expired"] == 3 and dry["erased"] == 0
    glv.patients.show(Actor.operator(), old[0])                  # dry run erased nothing
    steps: list[tuple[int, int]] = []
    res = glv.guard.purge(progress=lambda d, t: steps.append((d, t)))["patients"]
    assert res["erased"] == 3 and res["by_tenant"] == {tenant_id: 3} and steps[-1] == (3, 3)
    for pid in old:
        with pytest.raises(NotFound):
            glv.patients.show(Actor.operator(), pid)
        with glv.begin() as conn:
            assert glv.gate.keyring is not None
            from labvault.store import repositories as repo
            assert repo.patient_dek(conn, tenant_id, pid) is None   # data key destroyed
    for pid in genetic + recent:
        assert glv.patients.show(Actor.operator(), pid)["id"] == pid
    with glv.begin() as conn:
        deleted = {d["object_id"]: d["rule"] for d in grepo.list_deletions(conn, tenant_id)}
    assert deleted == dict.fromkeys(old, "retention:lab_report")
    assert glv.guard.purge()["patients"]["expired"] == 0
    # A lab that must keep reports longer says so; nothing more is shredded.
    _age(glv, tenant_id, recent, 11)
    glv.guard.set_config(Actor.operator(), tenant_id, "retention.lab_report", "20")
    assert glv.guard.purge(dry_run=True)["patients"]["expired"] == 0


@pytest.mark.parametrize("name,value", [
    ("retention.lab_report", "0"),           # read as "forever" elsewhere; here: shred all
    ("retention.lab_report", "4"),           # below the floor (5 years, the 1999 GBEA)
    ("retention.amp_report", "1"),
    ("retention.genetic_report", "29"),      # R1131-20 says 30 years
    ("retention.lab_report", "101"),         # a typo would overflow the dates
    ("retention.lab_report", "-3"),
    ("retention.lab_report", "ten"),
])
def test_retention_settings_below_the_floor_are_refused(glv: Labvault, tenant_id: str,
                                                        name: str, value: str) -> None:
    with pytest.raises(InvalidField) as refused:
        glv.guard.set_config(Actor.operator(), tenant_id, name, value)
    assert "crypto-shred" in refused.value.hint
    assert name not in glv.guard.get_config(Actor.operator(), tenant_id)


def test_retention_settings_within_bounds_are_kept(glv: Labvault, tenant_id: str) -> None:
    op = Actor.operator()
    glv.guard.set_config(op, tenant_id, "retention.lab_report", "5")
    glv.guard.set_config(op, tenant_id, "retention.genetic_report", "40")
    assert glv.guard.get_config(op, tenant_id) == {"retention.lab_report": "5",
                                                   "retention.genetic_report": "40"}


@pytest.mark.parametrize("name", ["budget.nobody.10m", "rule.nope.10m", "retention.foo",
                                  "budget.reception.week", "hours.lunch"])
def test_unknown_guard_settings_are_refused_with_the_valid_names(
        glv: Labvault, tenant_id: str, name: str) -> None:
    with pytest.raises(InvalidField) as refused:
        glv.guard.set_config(Actor.operator(), tenant_id, name, "3")
    hint = refused.value.hint
    assert "retention.lab_report|genetic_report|amp_report" in hint
    assert "rule.enumeration.10m" in hint and "reception" in hint
    with pytest.raises(InvalidField):
        glv.guard.set_config(Actor.operator(), tenant_id, name, None)


def test_an_unknown_setting_stored_earlier_can_be_unset(glv: Labvault, tenant_id: str) -> None:
    with glv.begin() as conn:      # written before names were checked
        grepo.set_config(conn, tenant_id, "retention.foo", "3", glv.now())
    glv.guard.set_config(Actor.operator(), tenant_id, "retention.foo", None)
    assert glv.guard.get_config(Actor.operator(), tenant_id) == {}


def _limit(lv: Labvault, patients: int, percent: int = 0) -> None:
    lv.settings = replace(lv.settings, extra={
        "LABVAULT_PURGE_MAX_ERASE_PATIENTS": str(patients),
        "LABVAULT_PURGE_MAX_ERASE_PERCENT": str(percent)})


def test_purge_refuses_a_mass_erasure_without_confirmation(glv: Labvault,
                                                           tenant_id: str) -> None:
    ids = import_people(glv, tenant_id, 6)
    _age(glv, tenant_id, ids[:5], 11)
    _limit(glv, 2)
    with pytest.raises(MassErasureRefused) as refused:
        glv.guard.purge()
    assert refused.value.total == 5
    assert refused.value.held == {tenant_id: {"expired": 5, "active": 6, "limit": 2}}
    assert "--confirm-mass-erasure 5" in refused.value.hint
    for pid in ids:                                     # nothing erased
        assert glv.patients.show(Actor.operator(), pid)["id"] == pid
    dry = glv.guard.purge(dry_run=True)["patients"]     # the dry run says what would happen
    assert dry["expired"] == 5 and dry["mass_erasure"] == refused.value.held
    with pytest.raises(MassErasureRefused, match="does not match"):
        glv.guard.purge(confirm_mass_erasure=4)         # a count, not a blanket yes
    assert glv.guard.purge(confirm_mass_erasure=5)["patients"]["erased"] == 5
    with pytest.raises(NotFound):
        glv.patients.show(Actor.operator(), ids[0])


def test_mass_erasure_limit_is_the_larger_of_count_and_share(glv: Labvault) -> None:
    assert glv.guard.mass_erasure_limit(100) == 25            # defaults: 25 patients or 2 %
    assert glv.guard.mass_erasure_limit(100_000) == 2_000
    _limit(glv, 3, 10)
    assert glv.guard.mass_erasure_limit(10) == 3 and glv.guard.mass_erasure_limit(500) == 50


def test_scheduled_purge_raises_a_critical_alert_instead_of_erasing(
        glv: Labvault, tenant_id: str, backend: str, caplog: pytest.LogCaptureFixture) -> None:
    if backend != "sqlite":
        pytest.skip("the purge thread needs its own connections (the PostgreSQL core is "
                    "bound to the test's transaction)")
    from datetime import date

    from pyrage import x25519
    ids = import_people(glv, tenant_id, 4)
    _age(glv, tenant_id, ids, 11)
    _limit(glv, 1)
    export = glv.guard.exports.create(
        Actor.operator(), tenant_id, "transfer", ["birth_name"], date(2000, 1, 1),
        date(2100, 1, 1), str(x25519.Identity.generate().to_public()), "1h")
    real_now = glv.now
    glv.now = lambda: real_now() + timedelta(hours=2)  # type: ignore[method-assign]
    stop = glv.guard.start_purge_job(interval=0.05)
    try:
        deadline = time.monotonic() + 20
        while not alerts_of(glv, tenant_id, "retention.mass_erasure"):
            assert time.monotonic() < deadline, "no mass-erasure alert"
            time.sleep(0.05)
    finally:
        stop()
    alert = alerts_of(glv, tenant_id, "retention.mass_erasure")[0]
    assert alert["severity"] == "critical" and alert["detail"]["detail"]["expired"] == 4
    assert any(r.levelname == "CRITICAL" and "no patient erased" in r.getMessage()
               for r in caplog.records)
    for pid in ids:
        assert glv.patients.show(Actor.operator(), pid)["id"] == pid
    with glv.begin() as conn:             # expired exports are deleted all the same
        assert grepo.get_export(conn, export["export_id"])["status"] == "purged"  # type: ignore[index]
