"""Validation checks every door gets from the service: what was shown is what is validated
(``expected``), completeness (``partial``), workflow errors that say why, the reasons of
"validate all normal", rejection of a specimen, and corrections after publication."""

from __future__ import annotations

from typing import Any

import pytest

from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, InvalidField
from labvault.services.app import Labvault
from labvault.services.lab import IncompleteOrder, ResultsChanged, WorkflowConflict
from tests.lab.conftest import patient_data

REQ = {"tests": ["718-7", "2823-3"]}
SPEC = {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00"}
HB = {"code": "718-7", "value": 13.1, "unit": "g/dL"}
K = {"code": "2823-3", "value": 4.2, "unit": "mmol/L"}
_N = iter(range(1, 10_000))


def _order(lv: Labvault, op: Actor, tenant_id: str, patient_id: str, tech: Actor,
           results: list[dict[str, Any]] | None = None, technical: bool = True,
           tests: list[str] | None = None) -> str:
    oid = lv.lab.create_order(op, tenant_id, patient_id, {"tests": tests or REQ["tests"]},
                              {**SPEC, "accession_number": f"V{next(_N)}"}).order_id
    lv.lab.enter_results(tech, oid, results if results is not None else [HB, K])
    if technical:
        lv.lab.validate_technical(tech, oid)
    return oid


def test_biological_validation_refused_when_results_changed_after_display(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    """QA 6: the biologist reviews K 4.2; meanwhile it is re-entered as 6.9 and validated
    technically again; the form still on screen must not validate 6.9."""
    lv = lab_lv
    oid = _order(lv, operator, tenant_id, patient_id, technician)
    shown = lv.lab.get_report_by_order(biologist, oid).expected
    assert set(shown.values()) == {1}
    lv.lab.enter_results(technician, oid, [{"code": "2823-3", "value": 6.9, "unit": "mmol/L"}])
    lv.lab.validate_technical(technician, oid)
    with pytest.raises(ResultsChanged) as exc:
        lv.lab.validate_biological(biologist, oid, "RAS, kaliémie normale", expected=shown)
    assert exc.value.http_status == 409 and exc.value.code == "results-changed"
    assert lv.lab.get_order(biologist, oid).status == L.OrderStatus.TECHNICALLY_VALIDATED
    again = lv.lab.get_report_by_order(biologist, oid)
    rep = lv.lab.validate_biological(biologist, oid, "Hyperkaliémie", expected=again.expected)
    assert rep.status == "final" and rep.conclusion == "Hyperkaliémie"


def test_technical_validation_refused_when_results_changed(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor) -> None:
    lv = lab_lv
    oid = _order(lv, operator, tenant_id, patient_id, technician, [HB], technical=False)
    shown = lv.lab.get_report_by_order(technician, oid).expected
    lv.lab.enter_results(technician, oid, [K])                 # a result added meanwhile
    with pytest.raises(ResultsChanged):
        lv.lab.validate_technical(technician, oid, expected=shown)
    view = lv.lab.validate_technical(
        technician, oid, expected=lv.lab.get_report_by_order(technician, oid).expected)
    assert view.status == L.OrderStatus.TECHNICALLY_VALIDATED


def test_workflow_errors_say_why_and_who(lab_lv: Labvault, operator: Actor, tenant_id: str,
                                         patient_id: str, technician: Actor,
                                         biologist: Actor) -> None:
    lv = lab_lv
    oid = _order(lv, operator, tenant_id, patient_id, technician, technical=False)
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.validate_biological(biologist, oid)
    assert exc.value.kind == "technical-missing" and exc.value.http_status == 409
    assert "technical validation missing" in exc.value.message
    assert isinstance(exc.value, L.InvalidTransition)          # the FHIR door's mapping
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.publish(biologist, oid)
    assert exc.value.kind == "biological-missing"
    lv.lab.validate_technical(technician, oid)
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.validate_technical(technician, oid)
    assert exc.value.kind == "already-technical" and exc.value.step is not None
    assert exc.value.step.by == technician.id and "tech" in exc.value.message
    lv.lab.validate_biological(biologist, oid)
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.validate_biological(biologist, oid)
    step = exc.value.step
    assert exc.value.kind == "already-biological" and step is not None
    assert step.by == biologist.id and step.detail["name"] == biologist.display
    assert f"by {biologist.display} at {step.at.isoformat()}" in exc.value.message
    lv.lab.publish(biologist, oid)
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.publish(biologist, oid)
    assert exc.value.kind == "already-published"
    fresh = lv.lab.create_order(operator, tenant_id, patient_id, REQ).order_id
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.validate_technical(technician, fresh)
    assert exc.value.kind == "no-results"


def test_completeness_on_validation_and_publication(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    """QA 18: a requested test without result is said, and validated only on purpose."""
    lv = lab_lv
    crp = {"code": "1988-5", "value": 3.0, "unit": "mg/L"}     # not requested: accepted
    oid = _order(lv, operator, tenant_id, patient_id, technician, [K, crp])
    rep = lv.lab.get_report_by_order(biologist, oid)
    assert rep.missing == {"718-7": "Hémoglobine"}
    assert [rep.requested(o) for o in rep.observations] == [True, False]
    with pytest.raises(IncompleteOrder) as exc:
        lv.lab.validate_biological(biologist, oid, partial=False)
    assert exc.value.missing == rep.missing and exc.value.details() == {"missing": ["718-7"]}
    assert lv.lab.get_order(biologist, oid).status == L.OrderStatus.TECHNICALLY_VALIDATED
    rep = lv.lab.validate_biological(biologist, oid, partial=True)
    assert rep.steps["biological"].detail["partial"] == ["718-7"]
    rep = lv.lab.publish(biologist, oid, partial=False)       # accepted at validation
    assert rep.order_status == L.OrderStatus.PUBLISHED and rep.as_json()["partial"] is True
    other = _order(lv, operator, tenant_id, patient_id, technician, [K])
    lv.lab.validate_biological(biologist, other)               # partial not looked at
    with pytest.raises(IncompleteOrder):
        lv.lab.publish(biologist, other, partial=False)
    assert lv.lab.publish(biologist, other, partial=True).steps["published"].detail[
        "partial"] == ["718-7"]
    complete = _order(lv, operator, tenant_id, patient_id, technician)
    assert lv.lab.validate_biological(biologist, complete, partial=False).missing == {}


def test_validate_all_normal_takes_only_what_was_shown_and_says_why(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    lv = lab_lv
    normal = _order(lv, operator, tenant_id, patient_id, technician)
    high = _order(lv, operator, tenant_id, patient_id, technician,
                  [HB, {"code": "2823-3", "value": 5.8, "unit": "mmol/L"}])
    panic = _order(lv, operator, tenant_id, patient_id, technician,
                   [HB, {"code": "2823-3", "value": 7.4, "unit": "mmol/L"}])
    incomplete = _order(lv, operator, tenant_id, patient_id, technician, [K])
    changed = _order(lv, operator, tenant_id, patient_id, technician)
    unknown = lv.patients.register(operator, tenant_id, {
        k: v for k, v in patient_data("U", seed=5).items() if k != "nir"})
    no_range = _order(lv, operator, tenant_id, unknown, technician)   # Hb has sexed ranges
    gone = _order(lv, operator, tenant_id, patient_id, technician)
    never_shown = _order(lv, operator, tenant_id, patient_id, technician)
    shown = {oid: lv.lab.get_report_by_order(biologist, oid).expected
             for oid in (normal, high, panic, incomplete, changed, no_range, gone)}
    lv.lab.enter_results(technician, changed, [{"code": "2823-3", "value": 4.4, "unit": "mmol/L"}])
    lv.lab.validate_technical(technician, changed)
    lv.lab.validate_biological(biologist, gone)                # validated by a colleague
    res = lv.lab.validate_all_normal(biologist, tenant_id, expected=shown, partial=False)
    assert res.validated == [normal]
    why = {oid: (s.reason, s.tests) for oid, s in res.reasons.items()}
    assert why == {
        high: ("out-of-range", ("Potassium",)),
        panic: ("panic", ("Potassium",)),
        incomplete: ("incomplete", ("Hémoglobine",)),
        changed: ("changed", ()),
        no_range: ("no-reference-range", ("Hémoglobine",)),
        gone: ("not-waiting", ())}
    assert sorted(res.skipped) == sorted(why)
    assert lv.lab.get_order(biologist, never_shown).status == L.OrderStatus.TECHNICALLY_VALIDATED
    assert res.as_json()["reasons"][high]["reason"] == "out-of-range"
    assert lv.lab.validate_all_normal(biologist, tenant_id, expected={}).validated == []


def test_a_reentered_result_is_left_for_review_not_validated_in_bulk(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    """A re-run (a result entered again before validation) means the value was doubted:
    "validate all normal" validated the order all the same when the new value was normal.
    It is left for the biologist (``re-entered``, the test named), whatever its flag, and
    the review read says so; an order without re-entry still goes in bulk."""
    lv = lab_lv
    normal = _order(lv, operator, tenant_id, patient_id, technician)
    rerun = _order(lv, operator, tenant_id, patient_id, technician, technical=False)
    lv.lab.enter_results(technician, rerun, [{"code": "2823-3", "value": 4.3, "unit": "mmol/L"}])
    lv.lab.validate_technical(technician, rerun)
    both = _order(lv, operator, tenant_id, patient_id, technician, technical=False)
    lv.lab.enter_results(technician, both, [{"code": "2823-3", "value": 5.8, "unit": "mmol/L"},
                                            {"code": "718-7", "value": 13.3, "unit": "g/dL"}])
    lv.lab.validate_technical(technician, both)
    report = lv.lab.get_report_by_order(biologist, rerun)
    assert report.order_status == L.OrderStatus.TECHNICALLY_VALIDATED
    assert all(o.observation.flag == L.Flag.NORMAL for o in report.observations)
    review = report.review()
    assert review is not None and (review.reason, review.tests) == ("re-entered",
                                                                    ("Potassium",))
    assert lv.lab.get_report_by_order(biologist, normal).review() is None
    shown = {oid: lv.lab.get_report_by_order(biologist, oid).expected
             for oid in (normal, rerun, both)}
    res = lv.lab.validate_all_normal(biologist, tenant_id, expected=shown)
    assert res.validated == [normal]
    assert res.as_json()["reasons"] == {
        rerun: {"reason": "re-entered", "tests": ["Potassium"]},
        # K re-entered out of range, Hb re-entered normal: both named, as re-entered
        both: {"reason": "re-entered", "tests": ["Hémoglobine", "Potassium"]}}
    assert lv.lab.get_order(biologist, rerun).status == L.OrderStatus.TECHNICALLY_VALIDATED
    # the biologist, having looked, validates it on its own
    assert lv.lab.validate_biological(biologist, rerun, expected=shown[rerun]).status == "final"


def test_technician_rejects_a_specimen_under_the_table_policy(
        lv: Labvault, operator: Actor, tenant_id: str, technician: Actor,
        biologist: Actor) -> None:
    """QA 9: the technician at the bench rejects the haemolysed tube (specimen write);
    reception may reject at the desk before analysis, not once results exist."""
    from labvault.access.policy import TablePolicy
    lv.gate.policy = TablePolicy()
    reception = Actor(kind="staff", id="acc_rec", tenant_id=tenant_id,
                      roles=frozenset({"reception"}), display="rec")
    pid = lv.patients.register(operator, tenant_id, patient_data())
    desk = lv.lab.create_order(operator, tenant_id, pid, REQ, {**SPEC, "accession_number": "R1"})
    view = lv.lab.reject(reception, desk.order_id, "unlabelled")
    assert view.status == L.OrderStatus.REJECTED and view.steps["rejected"].by == "acc_rec"
    bench = _order(lv, operator, tenant_id, pid, technician, technical=False)
    with pytest.raises(AccessDenied):
        lv.lab.reject(reception, bench, "hemolysed")          # would cancel results
    view = lv.lab.reject(technician, bench, "hemolysed", "tube rose")
    assert view.steps["rejected"].detail == {"name": "tech", "reason": "hemolysed",
                                             "comment": "tube rose"}
    rep = lv.lab.get_report_by_order(biologist, bench)
    assert {o.status for o in rep.observations} == {"cancelled"}
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.validate_technical(technician, bench)
    assert exc.value.kind == "rejected"
    late = _order(lv, operator, tenant_id, pid, technician)
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.reject(technician, late, "clotted")
    assert exc.value.kind == "results-validated"
    with pytest.raises(InvalidField):
        lv.lab.reject(technician, late, "because")


def test_amendment_with_a_new_conclusion_keeps_what_changed(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    """QA 8: after an amendment the report says which line changed, from what, why; the
    conclusion can be replaced in the same step, the previous one kept."""
    lv = lab_lv
    oid = _order(lv, operator, tenant_id, patient_id, technician,
                 [HB, {"code": "2823-3", "value": 5.6, "unit": "mmol/L"}])
    lv.lab.validate_biological(biologist, oid, "Hyperkaliémie")
    rep = lv.lab.publish(biologist, oid)
    assert rep.corrections == {} and not rep.conclusion_outdated
    k = next(o for o in rep.observations if o.observation.code == "2823-3")
    lv.lab.amend(biologist, k.observation_id, {"code": "2823-3", "value": 1.9, "unit": "mmol/L"},
                 "inversion de tubes")
    rep = lv.lab.get_report_by_order(biologist, oid)
    (corr,) = rep.corrections[k.observation_id]
    assert corr.previous.numeric == 5.6 and corr.reason == "inversion de tubes"
    assert rep.conclusion == "Hyperkaliémie" and rep.conclusion_outdated
    lv.lab.amend(biologist, k.observation_id, {"code": "2823-3", "value": 2.0, "unit": "mmol/L"},
                 "recontrôle", conclusion="Hypokaliémie sévère")
    rep = lv.lab.get_report_by_order(biologist, oid)
    assert [c.previous.numeric for c in rep.corrections[k.observation_id]] == [5.6, 1.9]
    assert rep.conclusion == "Hypokaliémie sévère" and not rep.conclusion_outdated
    (rev,) = rep.conclusion_revisions
    assert (rev.previous, rev.reason) == ("Hyperkaliémie", "recontrôle")
    doc = rep.as_json()
    assert doc["corrections"][k.observation_id][0]["previous"]["value"] == 5.6
    assert doc["conclusion_revisions"][0]["previous"] == "Hyperkaliémie"


def test_revise_conclusion(lab_lv: Labvault, operator: Actor, tenant_id: str,
                           patient_id: str, technician: Actor, biologist: Actor) -> None:
    lv = lab_lv
    oid = _order(lv, operator, tenant_id, patient_id, technician)
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.revise_conclusion(biologist, oid, "RAS")
    assert exc.value.kind == "biological-missing"
    lv.lab.validate_biological(biologist, oid, "Bilan normal")
    rep = lv.lab.revise_conclusion(biologist, oid, "Bilan normal, à contrôler dans un an")
    assert rep.conclusion_revisions == [] and rep.order_status == L.OrderStatus.FINAL
    lv.lab.publish(biologist, oid)
    with pytest.raises(InvalidField):
        lv.lab.revise_conclusion(biologist, oid, "Bilan normal")      # reason required
    with pytest.raises(AccessDenied):
        lv.lab.revise_conclusion(technician, oid, "x", "y")
    rep = lv.lab.revise_conclusion(biologist, oid, "Bilan normal", "contrôle inutile")
    assert rep.order_status == L.OrderStatus.AMENDED and rep.conclusion == "Bilan normal"
    assert rep.conclusion_revisions[0].previous == "Bilan normal, à contrôler dans un an"
    assert rep.steps["amended"].detail["conclusion"] is True


def test_analyser_final_results_wait_for_a_person(lab_lv: Labvault, operator: Actor,
                                                  tenant_id: str, technician: Actor,
                                                  biologist: Actor) -> None:
    """OBX-11 ``F`` is the analyser's run being final, not a technical validation: the
    results arrive preliminary and the biologist is told a technician must validate."""
    from labvault.interop.hl7.handler import Hl7Handler
    from tests.lab import hl7_samples as S
    lv = lab_lv
    lv.patients.register(operator, tenant_id, {**patient_data(), "nir": S.NIR_F})
    assert "|||F|" in S.oru_numeric()
    out, _ack = Hl7Handler(lv, Actor.system("mllp"), tenant_id).handle(
        S.oru_numeric().encode())
    order_id = lv.lab.get_observation(operator, out.observation_ids[0]).order_id
    rep = lv.lab.get_report_by_order(operator, order_id)
    assert rep.order_status == L.OrderStatus.PRELIMINARY and "technical" not in rep.steps
    assert {o.status for o in rep.observations} == {"preliminary"}
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.validate_biological(biologist, order_id)
    assert exc.value.kind == "technical-missing"
    lv.lab.validate_technical(technician, order_id, expected=rep.expected)
