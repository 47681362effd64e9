"""The delta check in biological validation (``services/lab.py``): "validate all normal"
holds an order whose result changed beyond its test's limit since the patient's previous
validated result (reason ``delta``, with the values), whatever its flag; the review read
shows each result's previous result to staff who validate, never to a patient; only the
same patient's validated results of other orders are compared; the worklist reads them in
one query, whatever the number of results."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event

from labvault.domain import delta as D
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.services.gate import Access, Decision
from labvault.services.lab import default_catalogue_data
from tests.lab.conftest import LabTestPolicy, patient_data

T0 = datetime(2026, 3, 1, 7, 30, tzinfo=UTC)
_N = itertools.count(1)
_SEED = itertools.count(100)


def _k(value: float | str, day: float, code: str = "2823-3", unit: str = "mmol/L"
       ) -> dict[str, Any]:
    return {"code": code, "value": value, "unit": unit,
            "observed_at": (T0 + timedelta(days=day)).isoformat()}


def _order(lv: Labvault, op: Actor, tenant_id: str, patient_id: str, tech: Actor,
           results: list[dict[str, Any]], step: str = "technical",
           bio: Actor | None = None) -> str:
    """An order of ``patient_id`` with ``results``, taken to ``step`` (preliminary,
    technical, final, published)."""
    oid = lv.lab.create_order(op, tenant_id, patient_id,
                              {"tests": sorted({r["code"] for r in results})},
                              {"type": "BLD", "collected_at": results[0]["observed_at"],
                               "accession_number": f"D{next(_N)}"}).order_id
    lv.lab.enter_results(tech, oid, results)
    if step == "preliminary":
        return oid
    lv.lab.validate_technical(tech, oid)
    if step in ("final", "published"):
        assert bio is not None
        lv.lab.validate_biological(bio, oid)
        if step == "published":
            lv.lab.publish(bio, oid)
    return oid


def _another_patient(lv: Labvault, op: Actor, tenant_id: str) -> str:
    return lv.patients.register(op, tenant_id, patient_data(seed=next(_SEED)))


def _wide_potassium(lv: Labvault, op: Actor, tenant_id: str) -> None:
    """A laboratory catalogue whose potassium range calls 6.0 normal (panic above 8): the
    delta check must not depend on the range."""
    data = copy.deepcopy(default_catalogue_data())
    data["version"] = "wide-k"
    for t in data["tests"]:
        if t["code"] == "2823-3":
            t["ranges"] = [{"low": 3.5, "high": 7.0}]
            t["panic_high"] = 8.0
    lv.lab.load_catalogue(op, tenant_id, data)


def test_validate_all_normal_holds_a_change_beyond_the_limit_whatever_the_flag(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    lv = lab_lv
    _wide_potassium(lv, operator, tenant_id)
    _order(lv, operator, tenant_id, patient_id, technician, [_k(4.0, 0)], "published",
           biologist)
    second = _order(lv, operator, tenant_id, patient_id, technician, [_k(6.0, 2)])
    view = lv.lab.get_report_by_order(biologist, second, previous=True)
    assert [o.observation.flag.value for o in view.observations] == ["N"]  # type: ignore[union-attr]
    done = lv.lab.validate_all_normal(biologist, tenant_id, expected={second: view.expected})
    assert done.validated == [] and done.skipped == [second]
    skip = done.reasons[second]
    assert skip.reason == "delta" and skip.tests == ("Potassium",)
    (d,) = skip.deltas
    assert d.previous.observation.numeric == 4.0 and d.current == 6.0
    assert d.previous.at == T0 and d.change == pytest.approx(2.0)
    assert skip.as_json()["deltas"] == [{
        "previous": 4.0, "previous_at": T0.isoformat(), "current": 6.0, "unit": "mmol/L",
        "change": pytest.approx(2.0), "relative": pytest.approx(50.0),
        "limit": {"absolute": 1.0, "days": 7}}]
    # the review read says the same, and shows the previous result
    assert view.review() == skip
    (prev,) = view.previous.values()
    assert prev.exceeded and prev.previous.observation.numeric == 4.0
    # the biologist, having looked, validates it one by one
    assert lv.lab.validate_biological(biologist, second, expected=view.expected).status == "final"


def test_a_change_within_the_limit_is_validated(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    lv = lab_lv
    _order(lv, operator, tenant_id, patient_id, technician, [_k(4.0, 0)], "final", biologist)
    second = _order(lv, operator, tenant_id, patient_id, technician, [_k(4.8, 2)])
    view = lv.lab.get_report_by_order(biologist, second, previous=True)
    (prev,) = view.previous.values()
    assert prev.outcome == D.Outcome.WITHIN and view.review() is None
    done = lv.lab.validate_all_normal(biologist, tenant_id, expected={second: view.expected})
    assert done.validated == [second]


def test_a_previous_result_out_of_the_window_is_shown_not_compared(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    lv = lab_lv
    _wide_potassium(lv, operator, tenant_id)
    _order(lv, operator, tenant_id, patient_id, technician, [_k(4.0, 0)], "final", biologist)
    second = _order(lv, operator, tenant_id, patient_id, technician, [_k(6.0, 30)])
    view = lv.lab.get_report_by_order(biologist, second, previous=True)
    (prev,) = view.previous.values()
    assert prev.outcome == D.Outcome.OUT_OF_WINDOW and view.review() is None
    assert lv.lab.validate_all_normal(biologist, tenant_id, expected={
        second: view.expected}).validated == [second]


def test_previous_results_are_read_back_to_the_lookback_only(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A patient followed for years: only results entered within the lookback are opened
    (each is an unseal), which still covers the longest delta window."""
    from labvault.domain import lab as L
    from labvault.services.lab import PRIOR_LOOKBACK_DAYS
    assert PRIOR_LOOKBACK_DAYS >= 2 * L.DELTA_MAX_DAYS
    lv = lab_lv
    _order(lv, operator, tenant_id, patient_id, technician, [_k(4.0, 0)], "final", biologist)
    second = _order(lv, operator, tenant_id, patient_id, technician, [_k(4.4, 2)])
    entered = datetime.now(UTC)
    for days, seen in ((PRIOR_LOOKBACK_DAYS - 1, 1), (PRIOR_LOOKBACK_DAYS + 1, 0)):
        monkeypatch.setattr(lv, "now", lambda d=days: entered + timedelta(days=d))
        view = lv.lab.get_report_by_order(biologist, second, previous=True)
        assert len(view.previous) == seen, days


def test_only_validated_results_of_other_orders_count(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    """A preliminary result, one technically validated only, and one of a cancelled order
    are no previous result: none of them was validated by a biologist."""
    lv = lab_lv
    _order(lv, operator, tenant_id, patient_id, technician, [_k(2.0, 0)], "preliminary")
    cancelled = _order(lv, operator, tenant_id, patient_id, technician, [_k(9.0, 0.5)],
                       "preliminary")
    lv.lab.cancel(biologist, cancelled, "demande en double")
    waiting = _order(lv, operator, tenant_id, patient_id, technician, [_k(7.0, 1)])
    second = _order(lv, operator, tenant_id, patient_id, technician, [_k(4.5, 2)])
    view = lv.lab.get_report_by_order(biologist, second, previous=True)
    assert view.previous == {} and view.review() is None
    done = lv.lab.validate_all_normal(biologist, tenant_id, expected={second: view.expected})
    assert done.validated == [second]
    assert lv.lab.get_report_by_order(biologist, waiting, previous=True).previous == {}


def test_the_order_s_own_results_are_never_its_previous_results(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    lv = lab_lv
    oid = _order(lv, operator, tenant_id, patient_id, technician,
                 [_k(4.0, 0), _k(13.0, 0, "718-7", "g/dL")], "published", biologist)
    assert lv.lab.get_report_by_order(biologist, oid, previous=True).previous == {}


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.floats(3.5, 5.1), current=st.floats(3.5, 5.1),
       others=st.lists(st.sampled_from([1.2, 2.0, 6.9, 9.5, 4.3]), min_size=1, max_size=3))
def test_another_patient_s_results_change_nothing(
        lab_lv: Labvault, operator: Actor, tenant_id: str, technician: Actor,
        biologist: Actor, first: float, current: float, others: list[float]) -> None:
    """Whatever another patient's potassium (extreme values, closer in time), a patient's
    order is held for the delta check exactly when its own change is beyond 1 mmol/L."""
    lv = lab_lv
    me, other = (_another_patient(lv, operator, tenant_id) for _ in range(2))
    _order(lv, operator, tenant_id, me, technician, [_k(round(first, 2), 0)], "final",
           biologist)
    for i, v in enumerate(others):
        _order(lv, operator, tenant_id, other, technician, [_k(v, 1 + i / 10)], "final",
               biologist)
    mine = _order(lv, operator, tenant_id, me, technician, [_k(round(current, 2), 2)])
    view = lv.lab.get_report_by_order(biologist, mine, previous=True)
    (prev,) = view.previous.values()
    assert prev.previous.observation.numeric == round(first, 2)
    held = abs(round(current, 2) - round(first, 2)) > 1.0 + 1e-9
    done = lv.lab.validate_all_normal(biologist, tenant_id, expected={mine: view.expected})
    assert (done.reasons.get(mine) is not None
            and done.reasons[mine].reason == "delta") is held
    assert (done.validated == [mine]) is (not held)


def test_a_blood_group_that_differs_from_the_previous_determination_is_held(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    """The transfusion-safety check of a second determination: a person's group does not
    change, so another one is a wrong tube or a wrong patient."""
    from labvault.web.lab_text import skip_tests
    lv = lab_lv

    def aborh(code: str, display: str, day: float) -> dict[str, Any]:
        return {"code": "882-1", "value": {"code": code, "display": display},
                "observed_at": (T0 + timedelta(days=day)).isoformat()}
    _order(lv, operator, tenant_id, patient_id, technician, [aborh("A+", "A RhD+", 0)],
           "final", biologist)
    same = _order(lv, operator, tenant_id, patient_id, technician,
                  [aborh("A+", "A RhD+", 30)])
    other = _order(lv, operator, tenant_id, patient_id, technician,
                   [aborh("B+", "B RhD+", 31)])
    views = {o: lv.lab.get_report_by_order(biologist, o, previous=True) for o in (same, other)}
    (kept,) = views[same].previous.values()
    assert kept.outcome == D.Outcome.WITHIN
    done = lv.lab.validate_all_normal(biologist, tenant_id,
                                      expected={o: v.expected for o, v in views.items()})
    skip = done.reasons[other]
    assert skip.reason == "delta"
    (d,) = skip.deltas
    assert skip.as_json()["deltas"][0]["previous"] == "A RhD+"
    assert skip.as_json()["deltas"][0]["current"] == "B RhD+"
    assert d.previous.observation.coded is not None
    words = skip_tests(skip)
    assert "différent de la détermination du" in words and "A RhD+ → B RhD+" in words
    assert same not in done.reasons or done.reasons[same].reason != "delta"


class _WithPatients(LabTestPolicy):
    """The test policy, and a patient reading its own records (as the table policy)."""

    def decide(self, access: Access) -> Decision:
        a = access.actor
        if a.kind == "patient" and access.patient_ids == (a.patient_id,):
            return Decision(True, access.categories, rule="test-self")
        return super().decide(access)


def test_previous_results_are_for_staff_who_validate_only(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    """A patient reading its own report (portal, FHIR) never gets them, asked or not; the
    reception desk neither."""
    lv = lab_lv
    lv.gate.policy = _WithPatients()
    _order(lv, operator, tenant_id, patient_id, technician, [_k(4.0, 0)], "published",
           biologist)
    second = _order(lv, operator, tenant_id, patient_id, technician, [_k(6.0, 2)],
                    "published", biologist)
    assert lv.lab.get_report_by_order(technician, second, previous=True).previous
    assert lv.lab.get_report_by_order(biologist, second).previous == {}   # not asked
    me = Actor(kind="patient", id="acc_me", tenant_id=tenant_id, patient_id=patient_id)
    desk = Actor(kind="staff", id="acc_desk", tenant_id=tenant_id,
                 roles=frozenset({"reception"}))
    for who in (me, desk):
        view = lv.lab.get_report_by_order(who, second, previous=True)
        assert view.previous == {}
        assert "previous" not in view.as_json(staff_names=False)
        (rep,) = [r for r in lv.lab.list_reports(who, tenant_id, patient_id=patient_id,
                                                  previous=True)
                  if r.order_id == second]
        assert rep.previous == {}


@contextmanager
def _statements(lv: Labvault) -> Iterator[list[str]]:
    """Every SQL statement the store runs in the block (SQLite's trace of each
    connection checked out; the DBAPI-level ones included)."""
    seen: list[str] = []
    active = [True]
    engine = lv.engine

    def record(statement: str) -> None:
        if active[0]:               # the callback stays on the connection afterwards
            seen.append(statement)

    def trace(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.set_trace_callback(record)

    event.listen(engine, "checkout", trace)
    try:
        yield seen
    finally:
        active[0] = False
        event.remove(engine, "checkout", trace)


def test_the_worklist_reads_previous_results_in_one_query_not_one_per_result(
        lab_lv: Labvault, operator: Actor, tenant_id: str, technician: Actor,
        biologist: Actor) -> None:
    """Two worklists of two orders of two patients: one whose patients have one previous
    result each, one whose patients have many (several orders, several tests): the same
    number of statements."""
    lv = lab_lv
    if lv.engine.dialect.name != "sqlite":
        pytest.skip("counted with SQLite's statement trace")
    tests = [_k(13.0, 0, "718-7", "g/dL"), _k(140, 0, "2951-2"), _k(4.0, 0),
             _k(90, 0, "14682-9", "umol/L")]

    def worklist(previous_orders: int, per_order: int) -> int:
        orders = []
        for _ in range(2):
            p = _another_patient(lv, operator, tenant_id)
            for j in range(previous_orders):
                _order(lv, operator, tenant_id, p, technician,
                       [{**r, "observed_at": (T0 + timedelta(days=j / 10)).isoformat()}
                        for r in tests[:per_order]], "final", biologist)
            orders.append(_order(lv, operator, tenant_id, p, technician,
                                 [{**r, "observed_at": (T0 + timedelta(days=2)).isoformat()}
                                  for r in tests[:per_order]]))
        with _statements(lv) as seen:
            views = lv.lab.list_reports(biologist, tenant_id,
                                        order_status="technically-validated", previous=True)
        mine = [v for v in views if v.order_id in orders]
        assert len(mine) == 2 and all(len(v.previous) == per_order for v in mine)
        for oid in [v.order_id for v in views]:      # out of the next worklist
            lv.lab.validate_biological(biologist, oid)
        return sum(1 for s in seen if s.lstrip().upper().startswith(("SELECT", "WITH")))

    few = worklist(1, 1)
    many = worklist(4, 4)
    assert few == many, (few, many)
    with_previous = few
    # and the previous results cost one query for the whole list
    orders = [_order(lv, operator, tenant_id, _another_patient(lv, operator, tenant_id),
                     technician, [_k(4.0, 2)]) for _ in range(2)]
    with _statements(lv) as seen:
        lv.lab.list_reports(biologist, tenant_id, order_status="technically-validated")
    without = sum(1 for s in seen if s.lstrip().upper().startswith(("SELECT", "WITH")))
    assert with_previous - without == 1, (with_previous, without)
    assert orders
