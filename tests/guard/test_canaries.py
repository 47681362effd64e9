"""Honeytoken patients: impossible NIR, invisible in the database, loud when touched."""

from __future__ import annotations

import random
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from labvault.domain import validation as v
from labvault.domain.actors import Actor
from labvault.domain.categories import PATIENT_CATEGORIES, Action
from labvault.guard.canaries import canary_nir, canary_person, is_canary_nir
from labvault.interop.hl7.archive import archived_control_key
from labvault.services.app import Labvault
from labvault.services.gate import Access
from labvault.store import repositories as repo
from labvault.store.tables_guard import guard_canaries
from labvault.synthetic import people
from tests.guard.conftest import MemorySink, alerts_of, import_people, staff


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["F", "M"]), st.dates(date(1920, 1, 1), date(2025, 12, 31)),
       st.integers(0, 2**32))
def test_canary_nir_is_valid_but_never_real(sex: str, birth: date, seed: int) -> None:
    nir = canary_nir(sex, birth, random.Random(seed))
    assert v.nir(nir, "nir", sex, birth) == nir          # passes every validator
    assert is_canary_nir(nir) and nir[5:7] == "00"       # department 00: assigned to nobody


def test_synthetic_people_are_never_in_the_canary_range() -> None:
    assert not any(is_canary_nir(p["nir"]) for p in people(5000, seed=11))


def test_canary_person_looks_like_a_patient() -> None:
    from labvault.domain.patient import PatientRecord
    p = canary_person(random.Random(5))
    real = next(people(1, seed=5))
    assert set(p) <= set(real) and {"nir", "email", "phone", "blood_group"} <= set(p)
    PatientRecord.parse(p)


def _plant(lv: Labvault, tenant_id: str, n: int = 2) -> list[str]:
    lv.guard.plant(Actor.operator(), tenant_id, n)
    with lv.begin() as conn:
        return lv.guard.canary_ids(conn, tenant_id)


def test_canaries_hidden_in_db_and_absent_from_counts(glv: Labvault, tenant_id: str) -> None:
    real = import_people(glv, tenant_id, 5)
    canaries = _plant(glv, tenant_id, 2)
    assert len(canaries) == 2 and not set(canaries) & set(real)
    with glv.begin() as conn:
        raw = conn.execute(select(guard_canaries)).all()
        assert repo.count_patients(conn, tenant_id) == 7
        assert glv.guard.patient_count(conn, tenant_id) == 5
        assert glv.guard.without_canaries(conn, tenant_id, real + canaries) == real
        assert all(glv.guard.is_canary(conn, tenant_id, c) for c in canaries)
        assert not any(glv.guard.is_canary(conn, tenant_id, p) for p in real)
    blob = b"".join(bytes(c) for row in raw for c in row if isinstance(c, bytes | memoryview))
    assert not any(c.encode() in blob for c in canaries)      # no canary id in clear
    (lab,) = [t for t in glv.tenants.list() if t["id"] == tenant_id]
    assert lab["patients"] == 5


def test_canary_read_search_export_raise_critical_alerts(glv: Labvault, tenant_id: str,
                                                         sink: MemorySink) -> None:
    import_people(glv, tenant_id, 3)
    canary = _plant(glv, tenant_id, 1)[0]
    assert not alerts_of(glv, tenant_id)
    curious = staff(tenant_id, role="biologist", ident="acct_curious")
    record = glv.patients.show(curious, canary)                 # reads like any patient
    assert record["nir"] and record["blood_group"]
    (read,) = alerts_of(glv, tenant_id, "canary.read")
    assert read["severity"] == "critical" and read["actor_id"] == "acct_curious"
    assert read["detail"]["detail"]["patients"] == [canary]
    assert glv.patients.find(curious, tenant_id, nir=record["nir"]) == [canary]
    assert alerts_of(glv, tenant_id, "canary.search")[0]["actor_id"] == "acct_curious"
    with glv.begin() as conn:                                   # a bulk door exporting it
        glv.gate.read_patients(conn, Access(Actor.operator(), Action.EXPORT, tenant_id,
                                            frozenset(PATIENT_CATEGORIES), purpose="export",
                                            patient_ids=(canary,)))
    assert alerts_of(glv, tenant_id, "canary.export")
    glv.alerts.flush()  # type: ignore[attr-defined]
    assert {n.kind for n in sink.notices} >= {"canary.read", "canary.search", "canary.export"}


def test_canary_orders_stay_out_of_worklists(glv: Labvault, tenant_id: str) -> None:
    """Even if a decoy gets an order (planted or sent by an instrument), no worklist shown
    to real users lists it."""
    op = Actor.operator()
    real = import_people(glv, tenant_id, 2)
    canaries = _plant(glv, tenant_id, 1)
    order = {"tests": ["718-7"], "priority": "routine"}
    for pid in (*real, *canaries):
        glv.lab.create_order(op, tenant_id, pid, order)
    listed = {row["patient_id"] for row in glv.lab.worklist(op, tenant_id)}
    assert listed == set(real)


def test_each_honeytoken_an_account_touches_is_named(glv: Labvault, tenant_id: str) -> None:
    """QA (DPO): a second honeytoken read by the same account within the merge window only
    bumped the first one's alert, which named the first honeytoken alone."""
    import_people(glv, tenant_id, 3)
    first, second = _plant(glv, tenant_id, 2)
    thief = staff(tenant_id, role="biologist", ident="acct_thief")
    glv.patients.show(thief, first)
    glv.patients.show(thief, second)
    glv.patients.show(thief, first)                      # the same one again: merged
    reads = alerts_of(glv, tenant_id, "canary.read")
    named = {tuple(a["detail"]["detail"]["patients"]): a["count"] for a in reads}
    assert named == {(first,): 2, (second,): 1}
    assert {a["actor_id"] for a in reads} == {"acct_thief"}
    glv.patients.show(staff(tenant_id, role="biologist", ident="acct_other"), first)
    assert len(alerts_of(glv, tenant_id, "canary.read")) == 3   # another account: its own


def test_index_rotation_keeps_canaries_findable_and_silent(glv: Labvault, tenant_id: str) -> None:
    """`keys rotate --index` opens every record, honeytokens included, to recompute its
    digests: no alert (nobody read them), and a search still finds them -- and alerts."""
    real = import_people(glv, tenant_id, 3)
    canary = _plant(glv, tenant_id, 1)[0]
    nir = glv.patients.show(Actor.operator(), canary)["nir"]     # the test's own read...
    before = alerts_of(glv, tenant_id)
    out = glv.keys.rotate_index(Actor.operator(), tenant_id, archived_control_key)
    assert out["patients"] == len(real) + 1
    assert alerts_of(glv, tenant_id) == before                    # ...the rotation's: none
    curious = staff(tenant_id, role="biologist", ident="acct_curious")
    assert glv.patients.find(curious, tenant_id, nir=nir) == [canary]
    assert alerts_of(glv, tenant_id, "canary.search")
