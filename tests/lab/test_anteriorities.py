"""The compte rendu's "Antériorité" column (``ReportView.anteriorities``,
``services/lab.py``): beside each number or code of a published report, the patient's
previous *published* result of the test at this laboratory (value, unit, date), within
``PRIOR_LOOKBACK_DAYS``; an amended one with its corrected value, a merged duplicate's
too; never a result not yet published. A result typed in without an observation time is
dated by its specimen's collection, for the report as for the delta check. The read of a
report opens one window of the patient's history, in one query. Both backends."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from labvault.domain import delta as D
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.services.lab import PRIOR_LOOKBACK_DAYS, ReportView
from tests.lab.conftest import patient_data
from tests.lab.test_delta_validation import _statements

T0 = datetime(2026, 3, 1, 7, 30, tzinfo=UTC)
_N = itertools.count(1)


def _k(value: float | str, code: str = "2823-3", unit: str = "mmol/L") -> dict[str, Any]:
    """A result typed in at the bench: no observation time."""
    return {"code": code, "value": value, "unit": unit}


def _order(lv: Labvault, tenant_id: str, patient_id: str, staff: tuple[Actor, Actor],
           results: list[dict[str, Any]], day: float, step: str = "published") -> str:
    """An order of ``patient_id`` whose specimen was collected ``day`` days after T0,
    with ``results``, taken to ``step`` (preliminary, technical, final, published)."""
    tech, bio = staff
    oid = lv.lab.create_order(bio, tenant_id, patient_id,
                              {"tests": sorted({r["code"] for r in results})},
                              {"type": "BLD", "collected_at": (T0 + timedelta(days=day))
                               .isoformat(), "accession_number": f"AN{next(_N)}"}).order_id
    lv.lab.enter_results(tech, oid, results)
    if step == "preliminary":
        return oid
    lv.lab.validate_technical(tech, oid)
    if step in ("final", "published"):
        lv.lab.validate_biological(bio, oid)
    if step == "published":
        lv.lab.publish(bio, oid)
    return oid


def _printed(lv: Labvault, who: Actor, order_id: str) -> ReportView:
    """The report as the PDF sent to the prescriber prints it."""
    rid = lv.lab.get_report_by_order(who, order_id).report_id
    return lv.lab.get_published_report(who, rid, anteriorities=True)


def _column(view: ReportView) -> dict[str, tuple[Any, datetime]]:
    """The "Antériorité" column: test code -> (previous value shown, its time)."""
    codes = {o.observation_id: o.observation.code for o in view.observations}
    return {codes[k]: (a.previous.observation.value_display(), a.previous.at)
            for k, a in view.anteriorities.items()}


@pytest.fixture
def staff(technician: Actor, biologist: Actor) -> tuple[Actor, Actor]:
    return technician, biologist


def test_a_published_report_prints_the_previous_published_result_dated_by_its_specimen(
        lab_lv: Labvault, tenant_id: str, patient_id: str,
        staff: tuple[Actor, Actor], biologist: Actor) -> None:
    """Typed in without an observation time, the previous potassium is dated by when its
    blood was drawn (T0), not when it was typed (today); haemoglobin had none before."""
    lv = lab_lv
    first = _order(lv, tenant_id, patient_id, staff, [_k("4.2")], 0)
    second = _order(lv, tenant_id, patient_id, staff,
                    [_k("4.8"), _k(13.1, "718-7", "g/dL")], 2)
    assert _column(_printed(lv, biologist, second)) == {"2823-3": ("4.2", T0)}
    assert _printed(lv, biologist, first).anteriorities == {}        # nothing before it
    rid = lv.lab.get_report_by_order(biologist, second).report_id
    # asked only: FHIR, HL7 and the REST read build their own answers without it
    assert lv.lab.get_published_report(biologist, rid).anteriorities == {}
    assert lv.lab.get_report(biologist, rid).anteriorities == {}
    (listed,) = [r for r in lv.lab.list_reports(biologist, tenant_id, patient_id=patient_id,
                                                anteriorities=True) if r.order_id == second]
    assert _column(listed) == {"2823-3": ("4.2", T0)}


def test_a_previous_result_not_published_is_not_printed(
        lab_lv: Labvault, tenant_id: str, patient_id: str,
        staff: tuple[Actor, Actor], biologist: Actor) -> None:
    """Validated by the biologist but not published yet (the patient has not read it, the
    prescriber has not received it), technically validated, typed in: none is printed --
    though the delta check, for whoever validates, compares with the validated one."""
    lv = lab_lv
    _order(lv, tenant_id, patient_id, staff, [_k("3.9")], 0)              # published
    validated = _order(lv, tenant_id, patient_id, staff, [_k("4.4")], 1, "final")
    _order(lv, tenant_id, patient_id, staff, [_k("5.0")], 1.5, "technical")
    _order(lv, tenant_id, patient_id, staff, [_k("5.1")], 1.7, "preliminary")
    current = _order(lv, tenant_id, patient_id, staff, [_k("4.5")], 2)
    assert _column(_printed(lv, biologist, current)) == {"2823-3": ("3.9", T0)}
    (d,) = lv.lab.get_report_by_order(biologist, current, previous=True).previous.values()
    assert d.previous.observation.numeric == 4.4
    lv.lab.publish(biologist, validated)
    assert _column(_printed(lv, biologist, current)) == {
        "2823-3": ("4.4", T0 + timedelta(days=1))}


def test_an_amended_previous_result_is_printed_corrected(
        lab_lv: Labvault, tenant_id: str, patient_id: str,
        staff: tuple[Actor, Actor], biologist: Actor) -> None:
    lv = lab_lv
    first = _order(lv, tenant_id, patient_id, staff, [_k("4.2")], 0)
    (k,) = lv.lab.get_report_by_order(biologist, first).observations
    lv.lab.amend(biologist, k.observation_id, _k("3.6"), "erreur de saisie")
    current = _order(lv, tenant_id, patient_id, staff, [_k("4.0")], 2)
    assert _column(_printed(lv, biologist, current)) == {"2823-3": ("3.6", T0)}


def test_only_within_the_lookback(
        lab_lv: Labvault, tenant_id: str, patient_id: str,
        staff: tuple[Actor, Actor], biologist: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result older than ``PRIOR_LOOKBACK_DAYS`` before this one is not printed; one
    older than any delta window but within the lookback is. (Each typed in an hour after
    its blood was drawn: the read opens the results entered within the lookback.)"""
    lv = lab_lv

    def at(day: int) -> int:
        monkeypatch.setattr(lv, "now", lambda: T0 + timedelta(days=day, hours=1))
        return day

    _order(lv, tenant_id, patient_id, staff, [_k("4.2")], at(0))
    far = PRIOR_LOOKBACK_DAYS + 1
    beyond = _order(lv, tenant_id, patient_id, staff, [_k("4.4")], at(far))
    assert _printed(lv, biologist, beyond).anteriorities == {}
    within = _order(lv, tenant_id, patient_id, staff, [_k("4.6")], at(far + 400))
    assert _column(_printed(lv, biologist, within)) == {
        "2823-3": ("4.4", T0 + timedelta(days=far))}
    # read years later, the report prints the same (its own time's window)
    at(far + 3000)
    assert _column(_printed(lv, biologist, within)) == {
        "2823-3": ("4.4", T0 + timedelta(days=far))}


def test_a_blood_group_prints_its_previous_determination(
        lab_lv: Labvault, tenant_id: str, patient_id: str,
        staff: tuple[Actor, Actor], biologist: Actor) -> None:
    from labvault.web.lab_text import anteriority_fr
    lv = lab_lv
    group = {"code": "882-1", "value": {"code": "A+", "display": "A RhD+"}}
    _order(lv, tenant_id, patient_id, staff, [group, _k("4.2")], 0)
    second = _order(lv, tenant_id, patient_id, staff, [group, _k("4.3")], 40)
    view = _printed(lv, biologist, second)
    said = {o.observation.code: anteriority_fr(view.anteriorities[o.observation_id])
            for o in view.observations}
    assert said == {"882-1": "Déjà déterminé le 01/03/2026 : A RhD+",
                    "2823-3": "4,2 mmol/L le 01/03/2026"}


def test_a_merged_duplicate_s_published_result_is_printed(
        lab_lv: Labvault, tenant_id: str, patient_id: str, operator: Actor,
        staff: tuple[Actor, Actor], biologist: Actor) -> None:
    lv = lab_lv
    duplicate = lv.patients.register(operator, tenant_id, patient_data(seed=77))
    _order(lv, tenant_id, duplicate, staff, [_k("4.2")], 0)
    current = _order(lv, tenant_id, patient_id, staff, [_k("4.4")], 2)
    assert _printed(lv, biologist, current).anteriorities == {}
    lv.merges.merge(operator, patient_id, duplicate, "même patiente, enregistrée deux fois",
                    force=True)
    assert _column(_printed(lv, biologist, current)) == {"2823-3": ("4.2", T0)}


def test_the_patient_s_own_read_prints_only_what_it_may_read(
        lab_lv: Labvault, tenant_id: str, patient_id: str,
        staff: tuple[Actor, Actor], biologist: Actor) -> None:
    """The portal's read (a patient, its own published report): the previous published
    result; a validated one not yet published never shows through the column."""
    from tests.lab.test_delta_validation import _WithPatients
    lv = lab_lv
    lv.gate.policy = _WithPatients()
    me = Actor(kind="patient", id="acc_me", tenant_id=tenant_id, patient_id=patient_id)
    _order(lv, tenant_id, patient_id, staff, [_k("3.9")], 0)
    _order(lv, tenant_id, patient_id, staff, [_k("6.1")], 1, "final")
    current = _order(lv, tenant_id, patient_id, staff, [_k("4.5")], 2)
    rid = lv.lab.get_report_by_order(biologist, current).report_id
    assert _column(lv.lab.get_report(me, rid, anteriorities=True)) == {"2823-3": ("3.9", T0)}
    (mine,) = [r for r in lv.lab.list_reports(me, tenant_id, patient_id=patient_id,
                                              anteriorities=True) if r.order_id == current]
    assert _column(mine) == {"2823-3": ("3.9", T0)}


def test_the_delta_check_dates_a_typed_in_result_by_its_specimen(
        lab_lv: Labvault, tenant_id: str, patient_id: str,
        staff: tuple[Actor, Actor], biologist: Actor) -> None:
    """The blood of the previous order was drawn first but its result typed in after the
    current one's: it is still the previous result (by entry time it came after), dated
    by its specimen; the current result too is dated by its own specimen (two days
    later: within the potassium's 7-day window)."""
    lv, bio = lab_lv, biologist
    current = _order(lv, tenant_id, patient_id, staff, [_k("6.0")], 2, "technical")
    _order(lv, tenant_id, patient_id, staff, [_k("4.0")], 0, "final")
    (d,) = lv.lab.get_report_by_order(bio, current, previous=True).previous.values()
    assert d.previous.at == T0 and d.previous.observation.numeric == 4.0
    assert d.outcome == D.Outcome.EXCEEDED
    done = lv.lab.validate_all_normal(bio, tenant_id, order_ids=[current])
    assert done.reasons[current].reason == "delta"
    assert done.reasons[current].as_json()["deltas"][0]["previous_at"] == T0.isoformat()


def test_the_report_read_opens_one_window_in_one_query(
        lab_lv: Labvault, operator: Actor, tenant_id: str,
        staff: tuple[Actor, Actor], biologist: Actor) -> None:
    """The PDF's read of a report whose patient has one previous result and of one whose
    patient has many (several orders, several tests, one long ago): the same number of
    statements, one more than without the column."""
    lv = lab_lv
    if lv.engine.dialect.name != "sqlite":
        pytest.skip("counted with SQLite's statement trace")
    tests = [_k("4.2"), _k(13.1, "718-7", "g/dL"), _k(140, "2951-2"),
             _k(90, "14682-9", "umol/L")]

    def read(previous_orders: int, per_order: int, column: bool = True) -> int:
        p = lv.patients.register(operator, tenant_id, patient_data(seed=next(_N) + 500))
        _order(lv, tenant_id, p, staff, tests[:per_order], -PRIOR_LOOKBACK_DAYS * 3)
        for j in range(previous_orders):
            _order(lv, tenant_id, p, staff, tests[:per_order], j / 10)
        current = _order(lv, tenant_id, p, staff, tests[:per_order], 2)
        rid = lv.lab.get_report_by_order(biologist, current).report_id
        lv.lab.get_published_report(biologist, rid, anteriorities=column)  # warm caches
        with _statements(lv) as seen:
            view = lv.lab.get_published_report(biologist, rid, anteriorities=column)
        assert len(view.anteriorities) == (per_order if column and previous_orders else 0)
        return sum(1 for s in seen if s.lstrip().upper().startswith(("SELECT", "WITH")))

    few, many = read(1, 1), read(5, 4)
    assert few == many, (few, many)
    assert few - read(1, 1, column=False) == 1
