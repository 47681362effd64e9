"""Retention purge: patients past their retention period are crypto-shredded."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Connection

from labvault.domain.actors import Actor
from labvault.errors import NotFound
from labvault.guard.retention import DEFAULT_RULES, years_for
from labvault.services.app import Labvault
from labvault.store import repositories_guard as grepo
from labvault.store.schema import patients
from tests.guard.conftest import import_people


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
