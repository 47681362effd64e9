"""A patient's results over time (``LabService.results_history``, docs/lab.md): the
patient's validated results only, newest first, dated as the delta check dates them, a
corrected result with its corrected value marked, the period (default the lookback, at
most ``HISTORY_MAX_DAYS``), one gate decision and one query whatever the number of
results, and another laboratory's patient answering like an absent id."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from labvault.domain.actors import Actor
from labvault.errors import InvalidField, NotFound
from labvault.services.app import Labvault
from labvault.services.gate import Access, Decision
from labvault.services.lab import PRIOR_LOOKBACK_DAYS, absent
from labvault.services.lab_history import HISTORY_MAX_DAYS
from labvault.synthetic import make_finess
from tests.lab.conftest import LabTestPolicy, patient_data, staff
from tests.lab.test_delta_validation import _statements

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
_N = itertools.count(1)
_SEED = itertools.count(300)


def _at(lv: Labvault, monkeypatch: pytest.MonkeyPatch, when: datetime) -> None:
    monkeypatch.setattr(lv, "now", lambda: when)


def _order(lv: Labvault, mp: pytest.MonkeyPatch, op: Actor, tech: Actor, bio: Actor,
           patient_id: str, collected: datetime, results: list[dict[str, Any]],
           step: str = "published") -> str:
    """An order collected at ``collected``, its results typed in an hour later (no
    observation time: dated by the collection), taken to ``step``."""
    _at(lv, mp, collected + timedelta(hours=1))
    oid = lv.lab.create_order(op, tenant_of(lv, patient_id), patient_id,
                              {"tests": sorted({r["code"] for r in results})},
                              {"type": "BLD", "collected_at": collected.isoformat(),
                               "accession_number": f"H{next(_N)}"}).order_id
    lv.lab.enter_results(tech, oid, results)
    if step != "preliminary":
        lv.lab.validate_technical(tech, oid)
    if step in ("final", "published"):
        lv.lab.validate_biological(bio, oid)
    if step == "published":
        lv.lab.publish(bio, oid)
    _at(lv, mp, NOW)
    return oid


def tenant_of(lv: Labvault, patient_id: str) -> str:
    with lv.begin() as conn:
        from labvault.store import repositories as repo
        tid = repo.patient_tenant(conn, patient_id)
    assert tid is not None
    return tid


def _crea(value: float) -> dict[str, Any]:
    return {"code": "14682-9", "value": value, "unit": "umol/L"}


def _k(value: str) -> dict[str, Any]:
    return {"code": "2823-3", "value": value, "unit": "mmol/L"}


def test_validated_results_newest_first_dated_by_collection(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    lv, mp = lab_lv, monkeypatch
    day = timedelta(days=1)
    t1, t2, t3 = NOW - 300 * day, NOW - 100 * day, NOW - 10 * day
    _order(lv, mp, operator, technician, biologist, patient_id, t1, [_crea(80), _k("4.1")])
    _order(lv, mp, operator, technician, biologist, patient_id, t2, [_crea(95)], "final")
    _order(lv, mp, operator, technician, biologist, patient_id, t3, [_crea(140)])
    # not validated: typed in, technically validated only -- never in the history
    _order(lv, mp, operator, technician, biologist, patient_id, NOW - 5 * day, [_crea(300)],
           "preliminary")
    _order(lv, mp, operator, technician, biologist, patient_id, NOW - 4 * day, [_crea(310)],
           "technical")
    h = lv.lab.results_history(biologist, tenant_id, patient_id)
    got = [(r.observation.code, r.observation.numeric, r.at) for r in h.results]
    assert got[:2] == [("14682-9", 140, t3), ("14682-9", 95, t2)]
    assert sorted(got[2:]) == [("14682-9", 80, t1), ("2823-3", 4.1, t1)]   # one specimen
    assert {r.status for r in h.results} == {"final"} and not any(r.corrected
                                                                 for r in h.results)
    assert h.names == {"14682-9": "Créatinine", "2823-3": "Potassium"}
    assert h.tests() == [("14682-9", "Créatinine"), ("2823-3", "Potassium")]
    # the default period: the lookback, up to now
    assert h.until == NOW and h.since == NOW - timedelta(days=PRIOR_LOOKBACK_DAYS)
    # one test: its results only; the other tests of the period are still named
    only = lv.lab.results_history(biologist, tenant_id, patient_id, code="14682-9")
    assert [r.observation.numeric for r in only.results] == [140, 95, 80]
    assert only.names == h.names
    out = only.as_json()
    assert out["results"][0]["label"] == "Créatinine" and out["results"][0]["value"] == 140
    assert out["results"][0]["at"] == t3.isoformat() and out["results"][0]["corrected"] is False


def test_an_amended_result_shows_its_corrected_value(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    lv, mp = lab_lv, monkeypatch
    oid = _order(lv, mp, operator, technician, biologist, patient_id,
                 NOW - timedelta(days=20), [_k("6.4")])
    (obs,) = lv.lab.get_report_by_order(biologist, oid).observations
    lv.lab.amend(biologist, obs.observation_id, _k("4.4"), "erreur de saisie")
    (r,) = lv.lab.results_history(biologist, tenant_id, patient_id).results
    assert r.corrected and r.status == "amended" and r.observation.numeric == 4.4
    assert r.as_json()["corrected"] is True


def test_the_period_and_its_bounds(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    lv, mp = lab_lv, monkeypatch
    old = NOW - timedelta(days=PRIOR_LOOKBACK_DAYS + 30)
    recent = NOW - timedelta(days=30)
    _order(lv, mp, operator, technician, biologist, patient_id, old, [_crea(70)])
    _order(lv, mp, operator, technician, biologist, patient_id, recent, [_crea(90)])
    # by default, the lookback only
    assert [r.at for r in lv.lab.results_history(biologist, tenant_id, patient_id).results
            ] == [recent]
    # a period asked: its results only (the end excluded)
    asked = lv.lab.results_history(biologist, tenant_id, patient_id,
                                   since=old - timedelta(days=1), until=recent)
    assert [r.at for r in asked.results] == [old]
    longest = lv.lab.results_history(biologist, tenant_id, patient_id,
                                     since=NOW - timedelta(days=HISTORY_MAX_DAYS))
    assert [r.at for r in longest.results] == [recent, old]
    # a result entered long after it was taken (a history imported from another system):
    # in the period it was taken in
    _at(lv, mp, NOW)
    taken = NOW - timedelta(days=PRIOR_LOOKBACK_DAYS + 200)
    imported = lv.lab.create_order(operator, tenant_id, patient_id, {"tests": ["2823-3"]},
                                   {"type": "BLD", "collected_at": taken.isoformat(),
                                    "accession_number": f"H{next(_N)}"}).order_id
    lv.lab.enter_results(technician, imported, [_k("3.9")])
    lv.lab.validate_final(biologist, imported, None)
    back_then = lv.lab.results_history(biologist, tenant_id, patient_id,
                                       since=taken - timedelta(days=10),
                                       until=taken + timedelta(days=10))
    assert [(r.at, r.observation.code) for r in back_then.results] == [(taken, "2823-3")]
    for since, until in ((NOW - timedelta(days=HISTORY_MAX_DAYS + 1), None),
                         (NOW, NOW - timedelta(days=1)), (NOW, NOW)):
        with pytest.raises(InvalidField) as exc:
            lv.lab.results_history(biologist, tenant_id, patient_id, since=since,
                                   until=until)
        assert exc.value.field == "since"
    with pytest.raises(InvalidField):
        lv.lab.results_history(biologist, tenant_id, patient_id,
                               since=datetime(2026, 1, 1))      # no offset


def test_a_patient_reads_its_published_results_only(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    lv, mp = lab_lv, monkeypatch
    _order(lv, mp, operator, technician, biologist, patient_id, NOW - timedelta(days=9),
           [_crea(90)])
    _order(lv, mp, operator, technician, biologist, patient_id, NOW - timedelta(days=2),
           [_crea(95)], "final")
    me = Actor(kind="patient", id="acc_me", tenant_id=tenant_id, patient_id=patient_id)
    mp.setattr(lv.gate, "policy", _Allow())
    assert [r.observation.numeric for r in lv.lab.results_history(
        me, tenant_id, patient_id).results] == [90]
    assert [r.observation.numeric for r in lv.lab.results_history(
        biologist, tenant_id, patient_id).results] == [95, 90]


class _Allow(LabTestPolicy):
    def decide(self, access: Access) -> Decision:
        return Decision(True, access.categories, rule="test")


class _Recording(LabTestPolicy):
    def __init__(self) -> None:
        self.seen: list[Access] = []

    def decide(self, access: Access) -> Decision:
        self.seen.append(access)
        return super().decide(access)


def test_one_gate_decision_and_one_query_whatever_the_number_of_results(
        lab_lv: Labvault, operator: Actor, tenant_id: str, technician: Actor,
        biologist: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    lv, mp = lab_lv, monkeypatch
    if lv.engine.dialect.name != "sqlite":
        pytest.skip("counted with SQLite's statement trace")

    def history(orders: int, tests: int) -> int:
        p = lv.patients.register(operator, tenant_id, patient_data(seed=next(_SEED)))
        for i in range(orders):
            _order(lv, mp, operator, technician, biologist, p,
                   NOW - timedelta(days=10 * (i + 1)),
                   [_crea(80 + i), _k("4.1"), {"code": "718-7", "value": 13, "unit": "g/dL"},
                    {"code": "2951-2", "value": 140, "unit": "mmol/L"}][:tests])
        policy = _Recording()
        mp.setattr(lv.gate, "policy", policy)
        lv.lab.results_history(biologist, tenant_id, p)    # the catalogue cached
        policy.seen.clear()
        with _statements(lv) as seen:
            h = lv.lab.results_history(biologist, tenant_id, p)
        mp.setattr(lv.gate, "policy", LabTestPolicy())
        assert len(h.results) == orders * tests
        (decision,) = policy.seen
        assert (decision.action.value, decision.resource, decision.patient_ids) == (
            "read", "report", (p,))
        assert {c.value for c in decision.categories} == {"clinical"}
        return sum(1 for s in seen if s.lstrip().upper().startswith(("SELECT", "WITH")))

    assert history(1, 1) == history(5, 4)


def test_another_laboratorys_patient_answers_like_an_absent_one(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    lv, mp = lab_lv, monkeypatch
    _order(lv, mp, operator, technician, biologist, patient_id, NOW - timedelta(days=3),
           [_crea(90)])
    other = lv.tenants.add(operator, "Autre laboratoire", make_finess(random.Random(7)))
    them = staff(other.tenant_id, "biologist", name="bio_b")
    answers = []
    for pid in (patient_id, "pat_doesnotexist"):
        with pytest.raises(NotFound) as exc:
            lv.lab.results_history(them, other.tenant_id, pid)
        answers.append((exc.value.message, exc.value.hint))
    assert answers == [(absent("patient").message, absent("patient").hint)] * 2
    # and naming another laboratory is refused as such, before anything is read
    with pytest.raises(NotFound) as exc:
        lv.lab.results_history(them, tenant_id, patient_id)
    assert exc.value.message == absent("laboratory").message
