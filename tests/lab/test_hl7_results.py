"""Orders and results from HL7 v2 (golden messages after the QA pass): each ERR names the
segment occurrence and field at fault, an ORC applies only to its own order group, a
filler number received later is attached to the order, one result per test and order
in a message, OBX-11 statuses (pending, deleted, wrong) are honoured, nothing is queued
twice."""

from __future__ import annotations

from datetime import date

import pytest

from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services.app import Labvault
from labvault.services.lab import ResultWithdrawn, Skip, WorkflowConflict
from labvault.synthetic import make_nir
from tests.lab.conftest import ack_of, patient_data

MARIE = make_nir("F", date(1980, 5, 17), "75056", 123)
PAUL = make_nir("M", date(1955, 1, 2), "69123", 45)
PID_MARIE = f"PID|1||{MARIE}^^^^NH||DUPONT^Marie||19800517|F"
PID_PAUL = f"PID|1||{PAUL}^^^^NH||LEGRAND^Paul||19550102|M"


def hl7(mtype: str, control: str, *segments: str) -> bytes:
    return "\r".join([f"MSH|^~\\&|LAB|L|LV|LABO|20260312090000||{mtype}|{control}|P|2.5",
                      *segments, ""]).encode()


@pytest.fixture
def marie(lab_lv: Labvault, tenant_id: str, operator: Actor) -> str:
    return lab_lv.patients.register(operator, tenant_id, {
        **patient_data("F", date(1980, 5, 17)), "nir": MARIE, "birth_name": "DUPONT",
        "first_names": ["Marie"]})


@pytest.fixture
def paul(lab_lv: Labvault, tenant_id: str, operator: Actor) -> str:
    return lab_lv.patients.register(operator, tenant_id, {
        **patient_data("M", date(1955, 1, 2)), "nir": PAUL, "birth_name": "LEGRAND",
        "first_names": ["Paul"]})


def orders_of(lv: Labvault, tenant_id: str, op: Actor, patient: str) -> dict[str, L.ServiceRequest]:
    return {o.request.placer_number or o.request.filler_number or "": o.request
            for o in lv.lab.list_orders(op, tenant_id, patient_id=patient)}


# -- ERR locations --------------------------------------------------------------------------
def test_err_names_the_field_at_fault(h: Hl7Handler, lab_lv: Labvault, tenant_id: str,
                                      operator: Actor, marie: str, paul: str) -> None:
    assert ack_of(h.handle(hl7("ORM^O01", "R15A", PID_MARIE, "ORC|NW|PR15M",
                               "OBR|1|PR15M||3016-3^TSH^LN"))[1])[0] == "AA"
    # the second OBR is the one naming another patient's order: OBR[2]-2, not OBR[1]
    code, errs = ack_of(h.handle(hl7(
        "ORU^R01", "R15B", PID_PAUL, "OBR|1|PR15P||718-7^Hb^LN|||20260312070000",
        "OBX|1|NM|718-7^Hb^LN||14|g/dL|||||F", "OBR|2|PR15M||3016-3^TSH^LN|||20260312070000",
        "OBX|2|NM|3016-3^TSH^LN||1.2|m[IU]/L|||||F"))[1])
    assert code == "AE" and [(e[2], e[3][:3]) for e in errs] == [("OBR^2^2", "205")]
    assert "PR15M belongs to another patient" in errs[0][8]
    # a unit that is not the catalogue's: OBX-6, not OBX-5
    assert ack_of(h.handle(hl7("ORM^O01", "R15E", PID_PAUL, "ORC|NW|PR15C",
                               "OBR|1|PR15C||2823-3^K^LN"))[1])[0] == "AA"
    code, errs = ack_of(h.handle(hl7("ORU^R01", "R15C", PID_PAUL,
                                     "OBR|1|PR15C||2823-3^K^LN|||20260312070000",
                                     "OBX|1|NM|2823-3^K^LN||4.0|meq/L|||||F"))[1])
    assert code == "AA" and [(e[2], e[4]) for e in errs] == [("OBX^1^6", "W")]
    # cancelling another patient's order: at that group's own ORC
    code, errs = ack_of(h.handle(hl7("ORM^O01", "R15D", PID_PAUL, "ORC|NW|PR15X",
                                     "OBR|1|PR15X||718-7^Hb^LN", "ORC|CA|PR15M",
                                     "OBR|2|PR15M||3016-3^TSH^LN"))[1])
    assert code == "AE" and [e[2] for e in errs] == ["ORC^2^2"]
    assert set(orders_of(lab_lv, tenant_id, operator, marie)) == {"PR15M"}
    assert set(orders_of(lab_lv, tenant_id, operator, paul)) == {"PR15C"}


# -- one result per test and order in a message ---------------------------------------------
@pytest.mark.parametrize("second", ["2951-2^Na^LN", "NA^Sodium^L"])   # LOINC, local alias
@pytest.mark.parametrize("ordered", [True, False])
def test_two_values_of_one_test_refuse_the_message(h: Hl7Handler, lab_lv: Labvault,
                                                   tenant_id: str, operator: Actor, paul: str,
                                                   second: str, ordered: bool) -> None:
    if ordered:
        assert ack_of(h.handle(hl7("ORM^O01", "R3A", PID_PAUL, "ORC|NW|PR3",
                                   "OBR|1|PR3||2951-2^Na^LN"))[1])[0] == "AA"
    before = lab_lv.lab.list_orders(operator, tenant_id)
    code, errs = ack_of(h.handle(hl7("ORU^R01", "R3B", PID_PAUL,
                                     "OBR|1|PR3||2951-2^Na^LN|||20260304080000",
                                     "OBX|1|NM|2823-3^K^LN||4.1|mmol/L|||||F",
                                     "OBX|2|NM|2951-2^Na^LN||119|mmol/L|||||F",
                                     f"OBX|3|NM|{second}||140|mmol/L|||||F"))[1])
    assert code == "AE" and [(e[2], e[3][:3]) for e in errs] == [("OBX^3^3", "205")]
    assert "already given by OBX[2]" in errs[0][8]
    assert lab_lv.lab.list_observations(operator, tenant_id) == []      # nothing half-stored
    assert [o.status for o in lab_lv.lab.list_orders(operator, tenant_id)] == [
        o.status for o in before]


def test_enter_results_refuses_one_test_twice(lab_lv: Labvault, tenant_id: str,
                                              operator: Actor, paul: str) -> None:
    from labvault.errors import InvalidRecord
    order = lab_lv.lab.create_order(operator, tenant_id, paul, {"tests": ["2951-2"]}, {
        "type": "BLD", "collected_at": "2026-03-04T08:00:00+01:00", "accession_number": "A1"})
    with pytest.raises(InvalidRecord, match=r"results\[1\].code: 2951-2 is given twice"):
        lab_lv.lab.enter_results(operator, order.order_id, [
            {"code": "2951-2", "value": 119, "unit": "mmol/L"},
            {"code": "2951-2", "value": 140, "unit": "mmol/L"}])
    assert lab_lv.lab.list_observations(operator, tenant_id) == []


# -- order matching -------------------------------------------------------------------------
def test_an_orc_belongs_to_its_own_order_group_only(h: Hl7Handler, lab_lv: Labvault,
                                                    tenant_id: str, operator: Actor,
                                                    paul: str) -> None:
    out, ack = h.handle(hl7("ORU^R01", "R7", PID_PAUL, "ORC|RE|PR7A|FR7A",
                            "OBR|1|PR7A|FR7A|718-7^Hb^LN|||20260310070000",
                            "OBX|1|NM|718-7^Hb^LN||12.0|g/dL|||||F",
                            "OBR|2|PR7B|FR7B|2951-2^Na^LN|||20260310070000",
                            "OBX|2|NM|2951-2^Na^LN||138|mmol/L|||||F",
                            "OBR|3|||2823-3^K^LN|||20260310070000",     # no number: PR7B's
                            "OBX|3|NM|2823-3^K^LN||4.0|mmol/L|||||F"))
    assert ack_of(ack) == ("AA", []) and len(out.order_ids) == 2
    orders = orders_of(lab_lv, tenant_id, operator, paul)
    assert (orders["PR7A"].filler_number, orders["PR7A"].tests) == ("FR7A", ("718-7",))
    assert (orders["PR7B"].filler_number, orders["PR7B"].tests) == ("FR7B",
                                                                    ("2951-2", "2823-3"))


def test_a_filler_number_received_later_is_attached_to_the_order(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str) -> None:
    assert ack_of(h.handle(hl7("ORM^O01", "R6A", PID_PAUL, "ORC|NW|PR6",
                               "OBR|1|PR6||2823-3^K^LN~2951-2^Na^LN"))[1])[0] == "AA"
    out_b, ack = h.handle(hl7("ORU^R01", "R6B", PID_PAUL,
                              "OBR|1|PR6|FR6|2823-3^K^LN|||20260306103000",
                              "OBX|1|NM|2823-3^K^LN||4.1|mmol/L|||||F"))
    assert ack_of(ack) == ("AA", [])
    out_c, ack = h.handle(hl7("ORU^R01", "R6C", PID_PAUL,     # the filler number alone
                              "OBR|1||FR6|2951-2^Na^LN|||20260306103000",
                              "OBX|1|NM|2951-2^Na^LN||140|mmol/L|||||F"))
    assert ack_of(ack) == ("AA", []) and out_c.order_ids == out_b.order_ids
    (order,) = lab_lv.lab.list_orders(operator, tenant_id, patient_id=paul)
    assert (order.request.placer_number, order.request.filler_number) == ("PR6", "FR6")
    assert {o.observation.code for o in lab_lv.lab.get_report_by_order(
        operator, order.order_id).observations} == {"2823-3", "2951-2"}


# -- unsolicited results none of which can be stored ----------------------------------------
@pytest.mark.parametrize("obx", ["OBX|1|NM|2823-3^K^LN||4.0|meq/L|||||F",         # unit
                                 "OBX|1|ST|6301-6^INR^LN||high|{INR}|||||F"])    # not a number
def test_unusable_unsolicited_results_queue_once_and_make_no_order(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str,
        obx: str) -> None:
    out, ack = h.handle(hl7("ORU^R01", "R10", PID_PAUL,
                            "OBR|1|PR10||6301-6^INR^LN|||20260305080000", obx))
    code, errs = ack_of(ack)
    assert code == "AA" and [e[4] for e in errs] == ["W"] and len(out.issue_ids) == 1
    assert len(lab_lv.lab.messages.list_issues(operator, tenant_id)) == 1
    assert lab_lv.lab.list_orders(operator, tenant_id) == [] and out.order_ids == []


# -- OBX-11 statuses, SN comparators --------------------------------------------------------
def test_a_pending_result_is_noted_and_the_others_stored(h: Hl7Handler, lab_lv: Labvault,
                                                         tenant_id: str, operator: Actor,
                                                         paul: str) -> None:
    _out, ack = h.handle(hl7("ORU^R01", "R8", PID_PAUL,
                            "OBR|1|PR8||58410-2^CBC^LN|||20260309110000",
                            "OBX|1|NM|718-7^Hb^LN||13.5|g/dL|||||F",
                            "OBX|2|NM|777-3^PLT^LN||||||||I",
                            "OBX|3|NM|6690-2^WBC^LN||||||||N"))
    code, errs = ack_of(ack)
    assert code == "AA" and [(e[2], e[3][:2], e[4]) for e in errs] == [
        ("OBX^2^11", "0^", "I"), ("OBX^3^11", "0^", "I")]
    assert "pending" in errs[0][8]
    assert [o.observation.code for o in lab_lv.lab.list_observations(operator, tenant_id)] == [
        "718-7"]
    # a value still missing without such a status is refused, saying what to send
    code, errs = ack_of(h.handle(hl7("ORU^R01", "R8B", PID_PAUL,
                                     "OBR|1|PR8||58410-2^CBC^LN|||20260309110000",
                                     "OBX|1|NM|777-3^PLT^LN||||||||F"))[1])
    assert code == "AE" and errs[0][2] == "OBX^1^5" and "OBX-11 I (pending)" in errs[0][8]


@pytest.fixture
def potassium(h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor,
              paul: str) -> str:
    """Order PR6 with K = 4.1 (preliminary) and Na = 140."""
    out, ack = h.handle(hl7("ORU^R01", "R6B", PID_PAUL,
                            "OBR|1|PR6|FR6|2823-3^K^LN|||20260306103000",
                            "OBX|1|NM|2823-3^K^LN||4.1|mmol/L|||||F",
                            "OBX|2|NM|2951-2^Na^LN||140|mmol/L|||||F"))
    assert ack_of(ack) == ("AA", [])
    return out.order_ids[0]


def _by_code(lv: Labvault, op: Actor, order_id: str) -> dict[str, tuple[str, float | None]]:
    return {o.observation.code: (o.status, o.observation.numeric)
            for o in lv.lab.get_report_by_order(op, order_id).observations}


@pytest.mark.parametrize(("status", "value"), [("W", "4.1"), ("D", '""'), ("D", "")])
def test_a_retracted_result_is_cancelled_with_its_reason(
        h: Hl7Handler, lab_lv: Labvault, operator: Actor, technician: Actor, potassium: str,
        status: str, value: str) -> None:
    lab_lv.lab.validate_technical(technician, potassium)
    out, ack = h.handle(hl7("ORU^R01", "R9", PID_PAUL, "OBR|1|PR6||2823-3^K^LN|||20260306103000",
                            f"OBX|1|NM|2823-3^K^LN||{value}|mmol/L|||||{status}"))
    assert ack_of(ack) == ("AA", [])
    assert _by_code(lab_lv, operator, potassium) == {"2823-3": ("cancelled", 4.1),
                                                     "2951-2": ("preliminary", 140.0)}
    hist = lab_lv.lab.observation_history(operator, out.observation_ids[0])
    assert (hist[-1].change, hist[-1].new) == ("cancelled", None)
    assert f"OBX-11 {status}" in (hist[-1].reason or "")
    # the technical validation covered that result: to be validated again
    assert lab_lv.lab.get_order(operator, potassium).status == L.OrderStatus.PRELIMINARY


def test_wrong_then_right_value_in_one_message(h: Hl7Handler, lab_lv: Labvault,
                                               operator: Actor, potassium: str) -> None:
    _out, ack = h.handle(hl7("ORU^R01", "R9W", PID_PAUL,
                             "OBR|1|PR6||2823-3^K^LN|||20260306103000",
                             "OBX|1|NM|2823-3^K^LN||4.1|mmol/L|||||W",
                             "OBX|2|NM|2823-3^K^LN||3.9|mmol/L|||||F"))
    assert ack_of(ack) == ("AA", [])
    obs = lab_lv.lab.get_report_by_order(operator, potassium).observations
    assert sorted((o.status, o.observation.numeric) for o in obs
                  if o.observation.code == "2823-3") == [("cancelled", 4.1),
                                                         ("preliminary", 3.9)]


def test_a_withdrawn_result_is_not_amended_after_publication(
        h: Hl7Handler, lab_lv: Labvault, operator: Actor, biologist: Actor,
        potassium: str) -> None:
    """A result its sender withdrew before validation is no part of the published report:
    amending it would put the retracted value back in force. Refused (a workflow
    conflict, 409 at the doors), saying who withdrew it, when and why, and which result
    of the test to amend instead -- or, when the report has none, that it needs a new
    order. Nothing is written."""
    assert ack_of(h.handle(hl7("ORU^R01", "R9A", PID_PAUL,
                               "OBR|1|PR6||2823-3^K^LN|||20260306103000",
                               "OBX|1|NM|2823-3^K^LN||4.1|mmol/L|||||W",
                               "OBX|2|NM|2823-3^K^LN||3.9|mmol/L|||||F"))[1]) == ("AA", [])
    assert ack_of(h.handle(hl7("ORU^R01", "R9B", PID_PAUL,
                               "OBR|1|PR6||2951-2^Na^LN|||20260306103000",
                               'OBX|1|NM|2951-2^Na^LN||""|mmol/L|||||D'))[1]) == ("AA", [])
    lab_lv.lab.validate_final(biologist, potassium, None)
    lab_lv.lab.publish(biologist, potassium)
    obs = {(o.observation.code, o.status): o
           for o in lab_lv.lab.get_report_by_order(operator, potassium).observations}
    k_gone, k_now = obs["2823-3", "cancelled"], obs["2823-3", "final"]
    na_gone = obs["2951-2", "cancelled"]
    before = lab_lv.lab.observation_history(operator, k_gone.observation_id)

    with pytest.raises(ResultWithdrawn) as exc:
        lab_lv.lab.amend(biologist, k_gone.observation_id,
                         {"code": "2823-3", "value": 4.0, "unit": "mmol/L"}, "typo")
    err = exc.value
    assert isinstance(err, WorkflowConflict) and err.http_status == 409
    assert err.kind == "result-withdrawn" and err.status == L.OrderStatus.PUBLISHED
    assert err.step is not None and err.step.by == "system:mllp"
    assert err.step.at == before[-1].changed_at.replace(tzinfo=err.step.at.tzinfo)
    assert "OBX-11 W" in err.step.detail["reason"]
    assert err.message.startswith("this result was withdrawn by system:mllp at ")
    assert err.in_force == k_now.observation_id and k_now.observation_id in err.hint
    assert err.details()["in_force"] == k_now.observation_id
    with pytest.raises(ResultWithdrawn) as exc:
        lab_lv.lab.amend(biologist, na_gone.observation_id,
                         {"code": "2951-2", "value": 139, "unit": "mmol/L"}, "typo")
    assert exc.value.in_force is None and "a new order" in exc.value.hint
    assert "OBX-11 D" in exc.value.step.detail["reason"]        # type: ignore[union-attr]

    # nothing written: the report, the withdrawn result and its history are as they were
    assert lab_lv.lab.get_order(operator, potassium).status == L.OrderStatus.PUBLISHED
    again = lab_lv.lab.get_observation(operator, k_gone.observation_id)
    assert (again.status, again.revision) == ("cancelled", k_gone.revision)
    assert lab_lv.lab.observation_history(operator, k_gone.observation_id) == before
    # the result in force is the one amended
    assert lab_lv.lab.amend(biologist, k_now.observation_id, {
        "code": "2823-3", "value": 4.0, "unit": "mmol/L"}, "typo").status == "amended"


def test_a_retraction_with_nothing_to_retract_or_after_validation_is_not_silent(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, biologist: Actor,
        potassium: str) -> None:
    code, errs = ack_of(h.handle(hl7("ORU^R01", "R9N", PID_PAUL,
                                     "OBR|1|PR6||718-7^Hb^LN|||20260306103000",
                                     'OBX|1|NM|718-7^Hb^LN||""|g/dL|||||D'))[1])
    assert code == "AA" and [(e[2], e[4]) for e in errs] == [("OBX^1^11", "W")]
    assert "nothing retracted" in errs[0][8]
    lab_lv.lab.validate_final(biologist, potassium, None)
    code, errs = ack_of(h.handle(hl7("ORU^R01", "R9F", PID_PAUL,
                                     "OBR|1|PR6||2823-3^K^LN|||20260306103000",
                                     "OBX|1|NM|2823-3^K^LN||4.1|mmol/L|||||W"))[1])
    assert code == "AA" and [e[4] for e in errs] == ["W"]
    (issue,) = lab_lv.lab.messages.list_issues(operator, tenant_id)
    assert issue["kind"] == "order-closed" and "retraction" in str(issue["reason"])
    assert _by_code(lab_lv, operator, potassium)["2823-3"] == ("final", 4.1)  # for a biologist


def test_sn_equals_is_a_number_and_a_range_says_so(h: Hl7Handler, lab_lv: Labvault,
                                                   tenant_id: str, operator: Actor,
                                                   paul: str) -> None:
    _out, ack = h.handle(hl7("ORU^R01", "R10", PID_PAUL,
                            "OBR|1|PR10||6301-6^INR^LN|||20260305080000",
                            "OBX|1|SN|6301-6^INR^LN||=^2.5|{INR}|||||F",
                            "OBX|2|SN|2823-3^K^LN||^3.9^-^4.2|mmol/L|||||F"))
    code, errs = ack_of(ack)
    assert code == "AA" and [(e[2], e[4]) for e in errs] == [("OBX^2^5", "W")]
    assert "range or ratio" in errs[0][8]
    (obs,) = lab_lv.lab.list_observations(operator, tenant_id)
    assert (obs.observation.code, obs.observation.numeric, obs.observation.comparator) == (
        "6301-6", 2.5, None)


def test_results_for_tests_the_order_did_not_list_are_added_to_it(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str) -> None:
    assert ack_of(h.handle(hl7("ORM^O01", "P40A", PID_PAUL, "ORC|NW|PL40001",
                               "OBR|1|PL40001||777-3^PLT^LN"))[1])[0] == "AA"
    for n, obx in enumerate(("OBX|1|NM|777-3^PLT^LN||250|10*9/L|||||F",
                             "OBX|1|NM|718-7^Hb^LN||13.5|g/dL|||||F")):
        code, _errs = ack_of(h.handle(hl7("ORU^R01", f"P40{n}", PID_PAUL,
                                          "OBR|1|PL40001||58410-2^CBC^LN|||20260309110000",
                                          obx))[1])
        assert code == "AA"
    assert orders_of(lab_lv, tenant_id, operator, paul)["PL40001"].tests == ("777-3", "718-7")


def test_a_later_message_that_changes_an_order_moves_its_updated_at(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str) -> None:
    """A filler number attached to the order, a test added to it: the order changed, so its
    ``updated_at`` moves (the FHIR ServiceRequest's meta.lastUpdated and version), even when
    its status stays the same."""
    def updated() -> object:
        (order,) = lab_lv.lab.list_orders(operator, tenant_id, patient_id=paul)
        return order.updated_at
    assert ack_of(h.handle(hl7("ORM^O01", "R7A", PID_PAUL, "ORC|NW|PR7",
                               "OBR|1|PR7||777-3^PLT^LN"))[1])[0] == "AA"
    assert ack_of(h.handle(hl7("ORU^R01", "R7B", PID_PAUL, "OBR|1|PR7||777-3^PLT^LN",
                               "OBX|1|NM|777-3^PLT^LN||250|10*9/L|||||F"))[1])[0] == "AA"
    first = updated()
    assert ack_of(h.handle(hl7("ORM^O01", "R7C", PID_PAUL, "ORC|NW|PR7|FR7",
                               "OBR|1|PR7|FR7|777-3^PLT^LN"))[1])[0] == "AA"
    assert orders_of(lab_lv, tenant_id, operator, paul)["PR7"].filler_number == "FR7"
    second = updated()
    assert second != first
    assert ack_of(h.handle(hl7("ORU^R01", "R7D", PID_PAUL, "OBR|1|PR7||58410-2^CBC^LN",
                               "OBX|1|NM|718-7^Hb^LN||13.5|g/dL|||||F"))[1])[0] == "AA"
    assert orders_of(lab_lv, tenant_id, operator, paul)["PR7"].tests == ("777-3", "718-7")
    assert updated() != second


# -- units: UCUM's litre is l or L ----------------------------------------------------------
def test_a_lower_case_litre_is_the_catalogue_unit_and_no_other_letter_is(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str) -> None:
    """mmol/l and mg/dl were import issues (wrong unit); Mmol/L (mega) still is one."""
    _out, ack = h.handle(hl7("ORU^R01", "U1", PID_PAUL,
                             "OBR|1|PU1||2823-3^K^LN|||20260312070000",
                             "OBX|1|NM|2823-3^K^LN||5.6|mmol/l|||||F",
                             "OBX|2|NM|3094-0^BUN^LN||15|mg/dl|||||F",
                             "OBX|3|NM|2951-2^Na^LN||140|Mmol/L|||||F"))
    code, errs = ack_of(ack)
    assert code == "AA" and [(e[2], e[4]) for e in errs] == [("OBX^3^6", "W")]
    assert "Mmol/L is not the catalogue unit mmol/L" in errs[0][8]
    assert {o.observation.code: (o.observation.unit, o.observation.flag)
            for o in lab_lv.lab.list_observations(operator, tenant_id)} == {
        "2823-3": ("mmol/L", L.Flag.HIGH), "3094-0": ("mg/dL", L.Flag.NORMAL)}
    (issue,) = lab_lv.lab.messages.list_issues(operator, tenant_id)
    assert issue["kind"] == "invalid-value"


# -- the analyser's own range and flag (OBX-7, OBX-8) ---------------------------------------
# the stored result of an ORU without OBX-7/8, as before they were kept
RESULT_KEYS = {"code", "display", "label", "kind", "value", "unit", "comparator",
               "reference_range", "range_low", "range_high", "flag", "comment", "observed_at",
               "catalogue_version", "local_code"}    # label: the shipped catalogue's French name


def _stored(lv: Labvault, observation_id: str) -> tuple[bytes, dict[str, object]]:
    """A result's row as stored (sealed) and opened."""
    import json

    from sqlalchemy import select

    from labvault.store import tables_lab
    t = tables_lab.lab_observations
    with lv.begin() as conn:
        row = conn.execute(select(t).where(t.c.observation_id == observation_id)).mappings().one()
        dek = lv.gate.patient_key(conn, row["tenant_id"], row["patient_id"])
        opened = lv.gate.open_patient_value(dek, row["tenant_id"], "lab_observations",
                                            "result_sealed", observation_id,
                                            row["result_sealed"])
    return bytes(row["result_sealed"]), json.loads(opened)


def test_the_analyser_s_range_and_flag_are_kept_sealed_with_the_result(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str) -> None:
    out, ack = h.handle(hl7("ORU^R01", "A1", PID_PAUL,
                            "OBR|1|PA1||2823-3^K^LN|||20260312070000",
                            "OBX|1|NM|2823-3^K^LN||4.2|mmol/L|3.4-4.0|H~A|||F",
                            "OBX|2|NM|2951-2^Na^LN||140|mmol/L|||||F"))
    assert ack_of(ack) == ("AA", [])
    views = {o.observation.code: o
             for o in lab_lv.lab.get_report_by_order(operator, out.order_ids[0]).observations}
    k, na = views["2823-3"], views["2951-2"]
    # labvault's range and flag still count; the analyser's are beside them, as sent
    assert (k.observation.reference_range, k.observation.flag) == ("3.5-5.1 mmol/L",
                                                                   L.Flag.NORMAL)
    assert (k.observation.analyser_range, k.observation.analyser_flag) == ("3.4-4.0", "H~A")
    assert {"analyser_range": "3.4-4.0", "analyser_flag": "H~A"}.items() <= k.as_json().items()
    sealed, opened = _stored(lab_lv, k.observation_id)
    assert (opened["analyser_range"], opened["analyser_flag"]) == ("3.4-4.0", "H~A")
    assert b"3.4-4.0" not in sealed and b"H~A" not in sealed
    # without OBX-7/8: stored exactly as before
    _sealed, opened = _stored(lab_lv, na.observation_id)
    assert set(opened) == RESULT_KEYS
    assert (na.observation.analyser_range, na.observation.analyser_flag) == (None, None)


def test_results_resolved_from_the_queue_keep_the_analyser_s_flag(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str) -> None:
    out, _ack = h.handle(hl7("ORU^R01", "A2", PID_PAUL,
                             "OBR|1|PA2||2823-3^K^LN|||20260312070000",
                             "OBX|1|NM|KX^K^L||4.2|mmol/L|3.4-4.0|H|||F"))
    (iid,) = out.issue_ids
    done = lab_lv.lab.messages.resolve_issue(operator, iid, code="2823-3")
    obs = lab_lv.lab.get_observation(operator, done["observation_ids"][0]).observation
    assert (obs.analyser_range, obs.analyser_flag, obs.flag) == ("3.4-4.0", "H", L.Flag.NORMAL)


def test_an_analyser_flag_the_catalogue_contradicts_is_not_validated_in_bulk(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, technician: Actor,
        biologist: Actor, paul: str) -> None:
    orders = {}
    for no, flag in (("PB1", "H"), ("PB2", "N"), ("PB3", "")):
        out, ack = h.handle(hl7("ORU^R01", f"B{no}", PID_PAUL,
                                f"OBR|1|{no}||2823-3^K^LN|||20260312070000",
                                f"OBX|1|NM|2823-3^K^LN||4.2|mmol/L|3.4-4.0|{flag}|||F"))
        assert ack_of(ack) == ("AA", [])
        orders[no] = out.order_ids[0]
        lab_lv.lab.validate_technical(technician, orders[no])
    done = lab_lv.lab.validate_all_normal(biologist, tenant_id)
    assert sorted(done.validated) == sorted((orders["PB2"], orders["PB3"]))
    k = "Potassium"
    assert done.reasons == {orders["PB1"]: Skip("analyser-disagrees", (k,), (("H", "N"),))}
    assert done.as_json()["reasons"][orders["PB1"]] == {
        "reason": "analyser-disagrees", "tests": [k],
        "flags": [{"analyser": "H", "labvault": "N"}]}
    assert lab_lv.lab.get_order(operator, orders["PB1"]).status == (
        L.OrderStatus.TECHNICALLY_VALIDATED)


def test_a_micro_sign_is_read_as_ucum_micro(h: Hl7Handler, lab_lv: Labvault,
                                            tenant_id: str, operator: Actor,
                                            paul: str) -> None:
    """µmol/l (a micro sign: UCUM's print symbol, whose code is u) is the catalogue's umol/L,
    stored in the catalogue's spelling (docs/hl7.md)."""
    _out, ack = h.handle(hl7("ORU^R01", "U2", PID_PAUL,
                             "OBR|1|PU2||14682-9^CREA^LN|||20260312070000",
                             "OBX|1|NM|14682-9^CREA^LN||70|µmol/l|||||F"))
    assert ack_of(ack) == ("AA", [])
    assert [(o.observation.code, o.observation.unit)
            for o in lab_lv.lab.list_observations(operator, tenant_id)] == [
        ("14682-9", "umol/L")]
