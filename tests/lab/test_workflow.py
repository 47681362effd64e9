"""Workflow rules: transitions, who validates, amendments keep history, panic alerts,
reference ranges by sex and age, erasure takes the results with it."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, InvalidField, InvalidRecord, NotFound
from labvault.services.app import Labvault
from labvault.services.gate import LogAlerts
from tests.lab.conftest import patient_data

REQ = {"tests": ["718-7", "2823-3"], "priority": "urgent",
       "prescriber": {"name": "Dr Paul Durand", "rpps": "10003456786"},
       "clinical_notes": "fatigue; sous anticoagulant"}
SPEC = {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00", "accession_number": "A1"}


def hb(value: object, **extra: object) -> dict[str, object]:
    """A haemoglobin result, in the catalogue's unit (a number is never sent without it)."""
    return {"code": "718-7", "value": value, "unit": "g/dL", **extra}


def potassium(value: object) -> dict[str, object]:
    return {"code": "2823-3", "value": value, "unit": "mmol/L"}


def _ordered(lv: Labvault, op: Actor, tenant_id: str, patient_id: str) -> str:
    return lv.lab.create_order(op, tenant_id, patient_id, REQ, SPEC).order_id


def test_full_workflow(lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
                       technician: Actor, biologist: Actor) -> None:
    lv = lab_lv
    order = lv.lab.create_order(operator, tenant_id, patient_id, REQ)
    assert order.status == L.OrderStatus.REGISTERED
    assert order.request.prescriber and order.request.prescriber.rpps == "10003456786"
    with pytest.raises(L.InvalidTransition):
        lv.lab.enter_results(technician, order.order_id, [hb(13.1)])
    lv.lab.receive_specimen(technician, order.order_id, SPEC)
    obs = lv.lab.enter_results(technician, order.order_id, [hb(13.1), potassium("5.6")])
    assert [o.observation.flag for o in obs] == [L.Flag.NORMAL, L.Flag.HIGH]
    assert obs[0].observation.reference_range == "12-16 g/dL"     # adult woman
    with pytest.raises(L.InvalidTransition):
        lv.lab.validate_biological(biologist, order.order_id)  # not technically validated
    with pytest.raises(L.InvalidTransition):
        lv.lab.publish(biologist, order.order_id)
    with pytest.raises(AccessDenied):
        lv.lab.validate_technical(operator, order.order_id)
    lv.lab.validate_technical(technician, order.order_id)
    with pytest.raises(AccessDenied):
        lv.lab.validate_biological(technician, order.order_id)
    rep = lv.lab.validate_biological(biologist, order.order_id, "Hyperkaliémie modérée.")
    assert rep.status == "final" and rep.conclusion == "Hyperkaliémie modérée."
    assert rep.steps["biological"].by == biologist.id
    assert rep.steps["technical"].by == technician.id
    assert {o.status for o in rep.observations} == {"final"}
    rep = lv.lab.publish(biologist, order.order_id)
    assert rep.order_status == L.OrderStatus.PUBLISHED and rep.issued_at is not None
    with pytest.raises(L.InvalidTransition):
        lv.lab.cancel(operator, order.order_id, "doublon")
    k = rep.observations[1]
    with pytest.raises(AccessDenied):
        lv.lab.amend(technician, k.observation_id, potassium(4.6), "typo")
    amended = lv.lab.amend(biologist, k.observation_id, potassium(4.6),
                           "hémolyse: résultat corrigé")
    assert amended.status == "amended" and amended.observation.flag == L.Flag.NORMAL
    hist = lv.lab.observation_history(biologist, k.observation_id)
    assert [h.change for h in hist] == ["entered", "amended"]
    assert hist[-1].by == biologist.id and hist[-1].reason == "hémolyse: résultat corrigé"
    assert hist[-1].previous and hist[-1].previous.numeric == 5.6
    assert hist[-1].new and hist[-1].new.numeric == 4.6
    rep = lv.lab.get_report(biologist, rep.report_id)
    assert rep.status == "amended" and rep.order_status == L.OrderStatus.AMENDED


def test_reject_and_cancel(lab_lv: Labvault, operator: Actor, tenant_id: str,
                           patient_id: str) -> None:
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    with pytest.raises(Exception, match="rejection reason"):
        lv.lab.reject(operator, oid, "because")
    view = lv.lab.reject(operator, oid, "hemolysed", "tube rose")
    assert view.status == L.OrderStatus.REJECTED
    assert view.steps["rejected"].detail["reason"] == "hemolysed"
    with pytest.raises(L.InvalidTransition):
        lv.lab.receive_specimen(operator, oid, SPEC)
    oid2 = _ordered(lv, operator, tenant_id, patient_id)
    assert lv.lab.cancel(operator, oid2, "doublon").status == L.OrderStatus.CANCELLED
    assert lv.lab.get_order(operator, oid2).specimens[0].status == "cancelled"


def test_a_cancellation_needs_its_reason(lab_lv: Labvault, operator: Actor, tenant_id: str,
                                        patient_id: str) -> None:
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    for blank in ("", "   "):
        with pytest.raises(InvalidField, match="reason: is required"):
            lv.lab.cancel(operator, oid, blank)
    assert lv.lab.get_order(operator, oid).status == L.OrderStatus.RECEIVED
    view = lv.lab.cancel(operator, oid, "demande en double")
    assert view.steps["cancelled"].detail["reason"] == "demande en double"


def test_after_technical_validation_only_a_biologist_cancels(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    """docs/lab.md: the results are verified; withdrawing them is the biologist's call."""
    from tests.lab.conftest import staff
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    lv.lab.enter_results(technician, oid, [hb(13.1)])
    lv.lab.validate_technical(technician, oid)
    reception = staff(tenant_id, "reception", name="rec")
    for who in (reception, technician):
        with pytest.raises(AccessDenied, match="biologist only"):
            lv.lab.cancel(who, oid, "doublon")
    assert lv.lab.get_order(operator, oid).status == L.OrderStatus.TECHNICALLY_VALIDATED
    view = lv.lab.cancel(biologist, oid, "patient erroné sur la demande")
    assert view.status == L.OrderStatus.CANCELLED
    assert view.steps["cancelled"].by == biologist.id
    assert {o.status for o in lv.lab.get_report_by_order(operator, oid).observations} == {
        "cancelled"}


def test_panic_value_alerts_at_once(lab_lv: Labvault, operator: Actor, tenant_id: str,
                                    patient_id: str, technician: Actor) -> None:
    lv = lab_lv
    assert isinstance(lv.alerts, LogAlerts)
    oid = _ordered(lv, operator, tenant_id, patient_id)
    obs = lv.lab.enter_results(technician, oid, [potassium(7.1)])
    assert obs[0].observation.flag == L.Flag.CRITICAL_HIGH
    (tid, kind, severity, detail), = lv.alerts.raised
    assert (tid, kind, severity) == (tenant_id, "panic-value", "critical")
    assert set(detail) == {"order_id", "observation_id", "patient_id"}   # ids only


def test_validate_all_normal(lab_lv: Labvault, operator: Actor, tenant_id: str,
                             patient_id: str, technician: Actor, biologist: Actor) -> None:
    lv = lab_lv
    normal, abnormal = (_ordered(lv, operator, tenant_id, patient_id) for _ in range(2))
    lv.lab.enter_results(technician, normal, [hb(13.0)])
    lv.lab.enter_results(technician, abnormal, [hb(9.0)])
    for oid in (normal, abnormal):
        lv.lab.validate_technical(technician, oid)
    with pytest.raises(AccessDenied):
        lv.lab.validate_all_normal(technician, tenant_id)
    res = lv.lab.validate_all_normal(biologist, tenant_id)
    assert res.validated == [normal] and res.skipped == [abnormal]
    assert {k: r.reason for k, r in res.reasons.items()} == {abnormal: "out-of-range"}
    assert lv.lab.get_order(operator, normal).status == L.OrderStatus.FINAL
    assert lv.lab.get_order(operator, abnormal).status == L.OrderStatus.TECHNICALLY_VALIDATED
    wl = lv.lab.worklist(biologist, tenant_id, L.OrderStatus.TECHNICALLY_VALIDATED)
    assert [w["order_id"] for w in wl] == [abnormal]


def test_comparator_results_that_straddle_a_limit_are_left_for_review(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor, biologist: Actor) -> None:
    """">1.0" mmol/L of potassium may be 1.5 (panic) or 4 (normal): flagged IND, no alert,
    never validated by "validate all normal"; "<2.0" is wholly below the panic limit:
    LL and the alert, as for a plain value."""
    lv = lab_lv
    assert isinstance(lv.alerts, LogAlerts)
    straddling, panic = (_ordered(lv, operator, tenant_id, patient_id) for _ in range(2))
    (o,) = lv.lab.enter_results(technician, straddling, [potassium(">1.0")])
    assert o.observation.flag == L.Flag.INDETERMINATE and not lv.alerts.raised
    (p,) = lv.lab.enter_results(technician, panic, [potassium("<2.0")])
    assert p.observation.flag == L.Flag.CRITICAL_LOW
    assert [(kind, d["observation_id"]) for _, kind, _, d in lv.alerts.raised] == [
        ("panic-value", p.observation_id)]
    for oid in (straddling, panic):
        lv.lab.validate_technical(technician, oid)
    res = lv.lab.validate_all_normal(biologist, tenant_id)
    assert res.validated == [] and sorted(res.skipped) == sorted([straddling, panic])
    assert {k: r.reason for k, r in res.reasons.items()} == {straddling: "indeterminate",
                                                              panic: "panic"}


@pytest.mark.parametrize(("sex", "birth", "value", "flag", "rng"), [
    ("M", date(1970, 1, 1), 12.5, L.Flag.LOW, "13-17 g/dL"),
    ("F", date(1970, 1, 1), 12.5, L.Flag.NORMAL, "12-16 g/dL"),
    ("F", date(2025, 6, 1), 10.8, L.Flag.NORMAL, "10.5-14 g/dL"),
    ("M", date(2018, 6, 1), 11.0, L.Flag.LOW, "11.5-15 g/dL"),
    ("M", date(1970, 1, 1), 6.5, L.Flag.CRITICAL_LOW, "13-17 g/dL"),
])
def test_reference_range_by_sex_and_age(lab_lv: Labvault, operator: Actor, tenant_id: str,
                                        technician: Actor, sex: str, birth: date, value: float,
                                        flag: L.Flag, rng: str) -> None:
    lv = lab_lv
    pid = lv.patients.register(operator, tenant_id, patient_data(sex, birth, seed=7))
    oid = _ordered(lv, operator, tenant_id, pid)
    (o,) = lv.lab.enter_results(technician, oid, [hb(value)])
    assert o.observation.flag == flag and o.observation.reference_range == rng


def test_sex_unknown_a_sex_specific_test_has_no_range_and_is_not_bulk_validated(
        lab_lv: Labvault, operator: Actor, tenant_id: str, technician: Actor,
        biologist: Actor) -> None:
    """Haemoglobin is sex-specific for adults: with the sex unknown it gets no range and
    no flag (kept so), stays for review, and the reason says "no reference range" — not
    "outside the reference range" (QA finding 19)."""
    lv = lab_lv
    data = patient_data(seed=11)
    data["sex"] = "U"
    del data["nir"]
    pid = lv.patients.register(operator, tenant_id, data)
    oid = _ordered(lv, operator, tenant_id, pid)
    (o,) = lv.lab.enter_results(technician, oid, [hb(13.1)])
    assert o.observation.flag is None and o.observation.reference_range is None
    lv.lab.validate_technical(technician, oid)
    res = lv.lab.validate_all_normal(biologist, tenant_id)
    assert res.validated == [] and res.skipped == [oid]
    assert res.as_json()["reasons"] == {oid: {"reason": "no-reference-range",
                                              "tests": ["Hémoglobine"]}}
    assert lv.lab.get_order(operator, oid).status == L.OrderStatus.TECHNICALLY_VALIDATED


def test_the_adult_band_applies_on_the_18th_birthday(lab_lv: Labvault, operator: Actor,
                                                     tenant_id: str, technician: Actor) -> None:
    """The QA repro: born 2008-11-29, alkaline phosphatase observed on 2026-11-29."""
    lv = lab_lv
    pid = lv.patients.register(operator, tenant_id, patient_data("M", date(2008, 11, 29), seed=9))
    oid = _ordered(lv, operator, tenant_id, pid)
    (o,) = lv.lab.enter_results(technician, oid, [
        {"code": "6768-6", "value": 60, "unit": "U/L",
         "observed_at": "2026-11-29T09:00:00+01:00"}])
    assert (o.observation.flag, o.observation.reference_range) == (L.Flag.NORMAL, "40-130 U/L")


def test_reentry_before_validation_keeps_history(lab_lv: Labvault, operator: Actor,
                                                 tenant_id: str, patient_id: str,
                                                 technician: Actor) -> None:
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    (a,) = lv.lab.enter_results(technician, oid, [hb(11.0)])
    (b,) = lv.lab.enter_results(technician, oid, [hb(12.2)])
    assert a.observation_id == b.observation_id and b.revision == 2
    assert [h.change for h in lv.lab.observation_history(operator, a.observation_id)] == [
        "entered", "re-entered"]


def test_bad_input_is_refused_whole(lab_lv: Labvault, operator: Actor, tenant_id: str,
                                    patient_id: str, technician: Actor) -> None:
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    with pytest.raises(InvalidRecord) as exc:
        lv.lab.enter_results(technician, oid, [hb(13),
                                               {"code": "2106-3", "value": 1},
                                               {"code": "2823-3", "value": 4, "unit": "mg/dL"}])
    fields = {e.field for e in exc.value.errors}
    assert fields == {"results[1].code", "results[2].unit"}
    assert lv.lab.get_report_by_order(operator, oid).observations == []
    with pytest.raises(InvalidRecord):
        lv.lab.create_order(operator, tenant_id, patient_id, {"tests": ["12-3"]})


def test_a_number_without_its_unit_is_refused(lab_lv: Labvault, operator: Actor,
                                             tenant_id: str, patient_id: str,
                                             technician: Actor, biologist: Actor) -> None:
    """Never read in the catalogue's unit (5.4 glucose would be a false panic in g/L):
    refused like a wrong unit, at entry and at amendment, and nothing is stored."""
    lv = lab_lv
    assert isinstance(lv.alerts, LogAlerts)
    oid = _ordered(lv, operator, tenant_id, patient_id)
    with pytest.raises(InvalidRecord) as exc:
        lv.lab.enter_results(technician, oid, [hb(13.1), {"code": "2345-7", "value": 5.4}])
    (err,) = exc.value.errors
    assert err.field == "results[1].unit" and "g/L" in err.rule and "2345-7" in err.rule
    assert "send the unit" in err.hint
    assert lv.lab.get_report_by_order(operator, oid).observations == [] and not lv.alerts.raised
    (o,) = lv.lab.enter_results(technician, oid, [hb(13.1)])
    lv.lab.validate_final(biologist, oid)
    lv.lab.publish(biologist, oid)
    with pytest.raises(InvalidField, match="unit: is missing"):
        lv.lab.amend(biologist, o.observation_id, {"code": "718-7", "value": 12.0}, "typo")


def test_other_lab_staff_see_nothing(lab_lv: Labvault, operator: Actor, tenant_id: str,
                                     patient_id: str) -> None:
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    stranger = Actor(kind="staff", id="acc_x", tenant_id="lab_other",
                     roles=frozenset({"biologist"}))
    with pytest.raises(NotFound):
        lv.lab.get_order(stranger, oid)
    with pytest.raises(NotFound):
        lv.lab.worklist(stranger, tenant_id)


def test_erasing_patient_erases_results(lab_lv: Labvault, operator: Actor, tenant_id: str,
                                        patient_id: str, technician: Actor) -> None:
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    (o,) = lv.lab.enter_results(technician, oid, [hb(13.0)])
    lv.patients.erase(operator, patient_id)
    with pytest.raises(NotFound):
        lv.lab.get_observation(operator, o.observation_id)
    with pytest.raises(NotFound):
        lv.lab.get_order(operator, oid)


def test_catalogue_override(lab_lv: Labvault, operator: Actor, tenant_id: str,
                            patient_id: str, technician: Actor) -> None:
    lv = lab_lv
    from labvault.services.lab import default_catalogue_data
    data = default_catalogue_data()
    data["version"] = "lab-2026.2"
    for t in data["tests"]:
        if t["code"] == "718-7":
            t["ranges"] = [{"low": 11.0, "high": 18.0}]
    info = lv.lab.load_catalogue(operator, tenant_id, data)
    assert info["version"] == "lab-2026.2"
    oid = _ordered(lv, operator, tenant_id, patient_id)
    (o,) = lv.lab.enter_results(technician, oid, [hb(11.5)])
    assert o.observation.catalogue_version == "lab-2026.2"
    assert o.observation.reference_range == "11-18 g/dL" and o.observation.flag == L.Flag.NORMAL
    assert datetime.now(UTC) > o.created_at


def test_workflow_under_the_access_table_policy(lv: Labvault, operator: Actor, tenant_id: str,
                                                technician: Actor, biologist: Actor) -> None:
    """The real role table (access area): technician enters and validates technically,
    only the biologist validates biologically; a receptionist cannot touch results."""
    from labvault.access.policy import TablePolicy
    lv.gate.policy = TablePolicy()
    pid = lv.patients.register(operator, tenant_id, patient_data())
    oid = _ordered(lv, operator, tenant_id, pid)
    (o,) = lv.lab.enter_results(technician, oid, [hb(13.0)])
    assert o.observation.reference_range == "12-16 g/dL"      # sex/age read within the rules
    reception = Actor(kind="staff", id="acc_rec", tenant_id=tenant_id,
                      roles=frozenset({"reception"}))
    with pytest.raises(AccessDenied):
        lv.lab.enter_results(reception, oid, [hb(14.0)])
    lv.lab.validate_technical(technician, oid)
    with pytest.raises(AccessDenied):
        lv.lab.validate_biological(technician, oid)
    rep = lv.lab.validate_biological(biologist, oid)
    assert rep.status == "final" and rep.steps["biological"].by == biologist.id


def test_validate_final_is_technical_then_biological(lab_lv: Labvault, operator: Actor,
                                                     tenant_id: str, patient_id: str,
                                                     technician: Actor,
                                                     biologist: Actor) -> None:
    """``validate_final`` (the FHIR door's final DiagnosticReport): the two validations of
    before in one transaction, with the same gate decisions and the same refusals."""
    from labvault.services.gate import MemoryAudit
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    lv.lab.enter_results(technician, oid, [hb(13.1)])
    with pytest.raises(AccessDenied):
        lv.lab.validate_final(operator, oid)                 # no technical role
    with pytest.raises(AccessDenied):
        lv.lab.validate_final(technician, oid)               # not a biologist: nothing kept
    assert lv.lab.get_order(biologist, oid).status == L.OrderStatus.PRELIMINARY
    audit = lv.gate.audit
    assert isinstance(audit, MemoryAudit)
    before = len(audit.entries)
    rep = lv.lab.validate_final(biologist, oid, "RAS")
    assert rep.status == "final" and rep.conclusion == "RAS"
    assert rep.steps["technical"].by == biologist.id == rep.steps["biological"].by
    assert {o.status for o in rep.observations} == {"final"}
    assert [(a.action.value, a.resource, o) for a, _, o in audit.entries[before:]] == [
        ("validate", "observation", "allowed"), ("validate", "report", "allowed")]
    oid2 = _ordered(lv, operator, tenant_id, patient_id)      # already technically validated
    lv.lab.enter_results(technician, oid2, [hb(13.1)])
    lv.lab.validate_technical(technician, oid2)
    before = len(audit.entries)
    rep = lv.lab.validate_final(biologist, oid2)
    assert rep.status == "final" and rep.steps["technical"].by == technician.id
    assert [(a.action.value, a.resource) for a, _, _ in audit.entries[before:]] == [
        ("validate", "report")]
    with pytest.raises(L.InvalidTransition):
        lv.lab.validate_final(biologist, _ordered(lv, operator, tenant_id, patient_id))


def test_order_status_is_one_audited_read_of_the_order(lab_lv: Labvault, operator: Actor,
                                                       tenant_id: str, patient_id: str,
                                                       technician: Actor) -> None:
    """``order_status`` (the FHIR DiagnosticReport step): the status and report id, through
    the gate as a read of the order — one decision, like ``get_order`` — and nothing of
    another laboratory (same answer as absent)."""
    from labvault.services.gate import MemoryAudit
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    audit = lv.gate.audit
    assert isinstance(audit, MemoryAudit)
    before = len(audit.entries)
    status, report_id = lv.lab.order_status(technician, oid)
    view = lv.lab.get_order(technician, oid)
    assert (status, report_id) == (view.status, view.report_id) == (
        L.OrderStatus.RECEIVED, lv.lab.get_report_by_order(technician, oid).report_id)
    got = [(a.action.value, a.resource, a.patient_ids, o) for a, _, o in audit.entries[before:]]
    assert got[0] == got[1] == ("read", "order", (patient_id,), "allowed")
    other = Actor(kind="staff", id="acc_x", tenant_id="lab_other", roles=frozenset({"biologist"}))
    with pytest.raises(NotFound):
        lv.lab.order_status(other, oid)
    with pytest.raises(NotFound):
        lv.lab.order_status(technician, "ord_nosuchorder")


def test_history_entry_with_the_result_already_encoded_is_the_same_bytes(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str) -> None:
    """Results entry encodes each result once and splices it into its history entry: the
    sealed entry opens to exactly the bytes of encoding the whole entry."""
    from labvault.services.lab import _dumps
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    (view,) = lv.lab.enter_results(operator, oid, [
        hb(13.1, comment="é \"quoted\" \\ ok")])
    obs = view.observation
    ts = datetime.now(UTC)
    with lv.begin() as conn:
        order = lv.lab._load_order(conn, oid)
        plain = lv.lab._history_row(order, view.observation_id, 2, ts, operator, "entered",
                                    "why", obs, obs)
        spliced = lv.lab._history_row(order, view.observation_id, 2, ts, operator, "entered",
                                      "why", obs, obs, _dumps(obs.as_json()))

    def opened(row: dict) -> bytes:  # type: ignore[type-arg]
        return lv.gate.open_patient_value(order.dek, tenant_id, "lab_observation_history",
                                          "change_sealed", row["history_id"],
                                          row["change_sealed"])
    assert opened(spliced) == opened(plain)
    assert b'"new":{' in opened(plain) and b'"reason":"why"' in opened(plain)


def test_other_lab_ids_answer_exactly_like_absent_ids(lab_lv: Labvault, operator: Actor,
                                                      tenant_id: str, patient_id: str,
                                                      technician: Actor) -> None:
    """QA finding 10: every LabService call taking a record id answers another
    laboratory's record with the very NotFound (message and hint) of an absent id of the
    same kind -- for a biologist of that other laboratory, who may do all of these."""
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    (obs,) = lv.lab.enter_results(technician, oid, [{"code": "718-7", "value": 13.0, "unit": "g/dL"}])
    order = lv.lab.get_order(operator, oid)
    ids = {"order": oid, "report": order.report_id, "observation": obs.observation_id,
           "specimen": order.specimens[0].specimen_id}
    nowhere = {k: f"{v.split('_')[0]}_{'0' * 25}v" for k, v in ids.items()}
    bio = Actor(kind="staff", id="acc_x", tenant_id="lab_other", roles=frozenset({"biologist"}))
    calls = {
        "order": [lambda i: lv.lab.get_order(bio, i), lambda i: lv.lab.order_status(bio, i),
                  lambda i: lv.lab.get_report_by_order(bio, i),
                  lambda i: lv.lab.receive_specimen(bio, i, SPEC),
                  lambda i: lv.lab.enter_results(bio, i, [{"code": "718-7", "value": 1, "unit": "g/dL"}]),
                  lambda i: lv.lab.validate_technical(bio, i),
                  lambda i: lv.lab.validate_biological(bio, i),
                  lambda i: lv.lab.validate_final(bio, i), lambda i: lv.lab.publish(bio, i),
                  lambda i: lv.lab.reject(bio, i, "hemolysed"), lambda i: lv.lab.cancel(bio, i, "doublon")],
        "report": [lambda i: lv.lab.get_report(bio, i)],
        "observation": [lambda i: lv.lab.get_observation(bio, i),
                        lambda i: lv.lab.observation_history(bio, i),
                        lambda i: lv.lab.amend(bio, i, {"code": "718-7", "value": 1,
                                                        "unit": "g/dL"}, "typo")],
        "specimen": [lambda i: lv.lab.get_specimen(bio, i)],
    }
    for kind, fns in calls.items():
        for fn in fns:
            answers = []
            for i in (ids[kind], nowhere[kind]):
                with pytest.raises(NotFound) as exc:
                    fn(i)
                answers.append((exc.value.message, exc.value.hint))
            assert answers[0] == answers[1], (kind, answers)
    assert lv.lab.get_order(operator, oid).status == L.OrderStatus.PRELIMINARY   # untouched


def test_worklists_under_the_access_table_policy(lv: Labvault, operator: Actor,
                                                  tenant_id: str, technician: Actor,
                                                  biologist: Actor) -> None:
    """QA finding 14: ``worklist`` is what the policy grants -- a read of the lab's orders
    (technician, biologist; reception too) -- and no more a refusal for every staff role:
    the technician's technical-validation queue (results entered) and the biologist's
    (technically validated), each one audited read naming the patients listed."""
    from labvault.access.policy import TablePolicy
    from labvault.services.gate import MemoryAudit
    lv.gate.policy = TablePolicy()
    audit = lv.gate.audit
    assert isinstance(audit, MemoryAudit)
    pids = [lv.patients.register(operator, tenant_id, patient_data(seed=70 + i))
            for i in range(3)]
    entered, checked, waiting = (
        lv.lab.create_order(operator, tenant_id, pid, REQ, {**SPEC, "accession_number": f"W{i}"})
        .order_id for i, pid in enumerate(pids))
    for oid in (entered, checked):
        lv.lab.enter_results(technician, oid, [{"code": "718-7", "value": 13.0, "unit": "g/dL"}])
    lv.lab.validate_technical(technician, checked)
    queues = {(technician.id, L.OrderStatus.PRELIMINARY): [entered],
              (biologist.id, L.OrderStatus.TECHNICALLY_VALIDATED): [checked],
              (biologist.id, L.OrderStatus.RECEIVED): [waiting]}
    for who in (technician, biologist):
        for (actor_id, status), want in queues.items():
            if actor_id != who.id:
                continue
            before = len(audit.entries)
            got = lv.lab.worklist(who, tenant_id, status)
            assert [w["order_id"] for w in got] == want
            ((access, _decision, outcome),) = audit.entries[before:]
            assert (access.action.value, access.resource, outcome) == ("read", "order",
                                                                      "allowed")
            assert set(access.patient_ids) == {w["patient_id"] for w in got}
    everything = lv.lab.worklist(technician, tenant_id)
    assert {w["order_id"] for w in everything} == {entered, checked, waiting}
    patient = Actor(kind="patient", id="acc_p", tenant_id=tenant_id,
                    roles=frozenset({"patient"}), patient_id=pids[0])
    with pytest.raises(AccessDenied):
        lv.lab.worklist(patient, tenant_id)


def test_refusals_name_what_only_a_biologist_may_do(lab_lv: Labvault, operator: Actor,
                                                    tenant_id: str, patient_id: str,
                                                    technician: Actor,
                                                    biologist: Actor) -> None:
    """QA finding 16: a technician who tries to amend is told that only a biologist may
    correct a published result -- not something about biological validation."""
    lv = lab_lv
    oid = _ordered(lv, operator, tenant_id, patient_id)
    (k,) = lv.lab.enter_results(technician, oid, [{"code": "2823-3", "value": "4.2", "unit": "mmol/L"}])
    with pytest.raises(AccessDenied) as validating:
        lv.lab.validate_biological(technician, oid)
    assert validating.value.message == "only a biologist may validate results biologically"
    lv.lab.validate_final(biologist, oid)
    lv.lab.publish(biologist, oid)
    with pytest.raises(AccessDenied) as amending:
        lv.lab.amend(technician, k.observation_id, {"code": "2823-3", "value": 4.4, "unit": "mmol/L"}, "typo")
    assert amending.value.message == "only a biologist may correct a published result"
    assert "biologist" in amending.value.hint and "correct" in amending.value.hint


def test_only_the_awaited_specimen_is_received_when_asked(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str) -> None:
    """``awaited`` (the console's reception page): a second post of the form is refused,
    saying who received the specimen, instead of adding a second tube; so is a closed
    order. Without it, a further tube is received as before."""
    from labvault.services.lab import WorkflowConflict
    lv = lab_lv
    o = lv.lab.create_order(operator, tenant_id, patient_id, REQ)
    lv.lab.receive_specimen(operator, o.order_id, SPEC, awaited=True)
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.receive_specimen(operator, o.order_id, SPEC, awaited=True)
    assert exc.value.kind == "already-received" and exc.value.http_status == 409
    assert exc.value.step is not None and exc.value.step.by == operator.id
    assert len(lv.lab.get_order(operator, o.order_id).specimens) == 1
    lv.lab.receive_specimen(operator, o.order_id, {**SPEC, "accession_number": "A2"})
    assert len(lv.lab.get_order(operator, o.order_id).specimens) == 2
    closed = lv.lab.create_order(operator, tenant_id, patient_id, REQ)
    lv.lab.cancel(operator, closed.order_id, "doublon")
    with pytest.raises(WorkflowConflict) as exc:
        lv.lab.receive_specimen(operator, closed.order_id, SPEC, awaited=True)
    assert exc.value.kind == "cancelled"
