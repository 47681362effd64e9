"""Identity vigilance for HL7 order and result messages (docs/hl7.md, "Patient
matching"): a PID-3 that finds a registered patient is not enough when the traits the
message sent say another person -- an order (ORM/OML) is refused (AE 205, one ERR per
differing trait at its PID field, nothing stored), a result message's results wait in
the queue as an ``identity-mismatch`` issue (AA with a warning), not stored under that
patient. Only the traits sent are compared, folded as the blind indexes fold names; a
result message's names are not compared (analysers truncate them). ADT keeps updating
the traits (PID is the new truth there)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import select

from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services.app import Labvault
from labvault.services.lab_messages import sent_traits
from labvault.store import repositories_lab as lrepo
from labvault.store.tables_lab import lab_hl7_messages
from labvault.synthetic import make_nir
from tests.lab.conftest import ack_of

NIR = make_nir("F", date(1980, 5, 17), "75056", 321)
OTHER_NIR = make_nir("M", date(1972, 3, 9), "13055", 88)
# the record: accents, a hyphen and an apostrophe in the names
RECORD = {"birth_name": "LE BŒUF-D'ARÇ", "first_names": ["Hélène", "Marie"],
          "birth_date": "1980-05-17", "sex": "F", "nir": NIR}


def pid(name: str = "LE BŒUF-D'ARÇ^Hélène", birth: str = "19800517", sex: str = "F",
        nir: str = NIR) -> str:
    return f"PID|1||{nir}^^^^NH||{name}||{birth}|{sex}"


def hl7(mtype: str, control: str, *segments: str) -> bytes:
    return "\r".join([f"MSH|^~\\&|LAB|L|LV|LABO|20260312090000||{mtype}|{control}|P|2.5",
                      *segments, ""]).encode()


def orm(control: str, p: str) -> bytes:
    return hl7("ORM^O01", control, p, f"ORC|NW|PL{control}", f"OBR|1|PL{control}||3016-3^TSH^LN")


def oru(control: str, p: str) -> bytes:
    return hl7("ORU^R01", control, p, f"OBR|1|PL{control}||2823-3^K^LN|||20260312070000",
               "OBX|1|NM|2823-3^K^LN||4.1|mmol/L|||||F")


@pytest.fixture
def helene(lab_lv: Labvault, tenant_id: str, operator: Actor) -> str:
    return lab_lv.patients.register(operator, tenant_id, RECORD)


def stored(lv: Labvault, tenant_id: str, op: Actor, patient_id: str) -> tuple[int, int]:
    """(orders, results) on the patient's record."""
    return (len(lv.lab.list_orders(op, tenant_id, patient_id=patient_id)),
            len(lv.lab.list_observations(op, tenant_id, patient_id=patient_id)))


def refusals(lv: Labvault) -> list[tuple[str, ...]]:
    """The patients of the gate's refusals by rule ``identity-mismatch`` (in-memory audit)."""
    return [acc.patient_ids for acc, dec, out in lv.gate.audit.entries  # type: ignore[attr-defined]
            if out == "denied" and dec.rule == "identity-mismatch"]


def archived(lv: Labvault) -> list[tuple[str | None, str]]:
    with lv.begin() as conn:
        return [(r[0], r[1]) for r in conn.execute(
            select(lab_hl7_messages.c.patient_id, lab_hl7_messages.c.status))]


# == orders (ORM / OML): refused ===============================================================
@pytest.mark.parametrize(("p", "field", "trait"), [
    (pid(birth="19800518"), "7", "birth date"),
    (pid(sex="M"), "8", "sex"),
    (pid(name="LEBEUF^Hélène"), "5", "birth name"),
    (pid(name="LE BŒUF-D'ARÇ^Hélena"), "5", "first name"),
])
def test_an_order_whose_traits_differ_is_refused_and_nothing_stored(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, helene: str,
        p: str, field: str, trait: str) -> None:
    out, ack = h.handle(orm("O1", p))
    code, errs = ack_of(ack)
    assert code == "AE" and out.patient_id is None
    (err,) = errs
    assert err[2] == f"PID^1^{field}" and err[3].startswith("205^")
    text = err[3] + err[8] if len(err) > 8 else err[3]
    assert f"registered patient whose {trait} differs" in text
    assert "check the patient's identity" in text
    # never the value on record
    for value in ("1980", "LE BŒUF", "LE BOEUF", "Hélène", "19800517"):
        assert value not in ack.decode().split("MSA|")[1], value
    assert stored(lab_lv, tenant_id, operator, helene) == (0, 0)
    assert archived(lab_lv) == []
    # the refusal is recorded, naming the patient whose identity was compared
    assert refusals(lab_lv) == [(helene,)]
    assert len(lab_lv.patients.find(operator, tenant_id, birth_name="LEBEUF",
                                    first_name="Hélène", birth_date="1980-05-17")) == 0


def test_every_differing_trait_gets_its_own_err(h: Hl7Handler, helene: str) -> None:
    _, ack = h.handle(hl7("OML^O21", "O2", pid(name="DURAND^Paul", birth="19720309", sex="M"),
                          "ORC|NW|PLO2", "OBR|1|PLO2||3016-3^TSH^LN"))
    code, errs = ack_of(ack)
    assert code == "AE"
    assert [e[2] for e in errs] == ["PID^1^5", "PID^1^5", "PID^1^7", "PID^1^8"]
    assert ["birth name" in e[8] for e in errs] == [True, False, False, False]
    assert ["first name" in e[8] for e in errs] == [False, True, False, False]


def test_a_cancellation_whose_traits_differ_is_refused(h: Hl7Handler, lab_lv: Labvault,
                                                      tenant_id: str, operator: Actor,
                                                      helene: str) -> None:
    assert ack_of(h.handle(orm("O3", pid()))[1])[0] == "AA"
    _, ack = h.handle(hl7("ORM^O01", "O3C", pid(birth="19810517"), "ORC|CA|PLO3",
                          "OBR|1|PLO3||3016-3^TSH^LN"))
    assert ack_of(ack)[0] == "AE"
    (order,) = lab_lv.lab.list_orders(operator, tenant_id, patient_id=helene)
    assert order.status == "registered"


@pytest.mark.parametrize("p", [
    pid(),                                                   # as on record
    pid(name="le boeuf d arc^HELENE"),                        # case, accents, spaces
    pid(name="Le Bœuf-d'Arç^hélène^Marie"),
    pid(name="LEBOEUFDARC^Helene~DUPONT^Hélène^^^^^D"),       # a used name beside it
    pid(sex="U"),                                            # sex unknown: not sent
    pid(sex=""),
    pid(name="", birth="", sex=""),                          # no trait sent at all
])
def test_an_order_whose_traits_agree_or_are_not_sent_is_accepted(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, helene: str,
        p: str) -> None:
    out, ack = h.handle(orm("O4", p))
    assert ack_of(ack)[0] == "AA", ack
    assert out.patient_id == helene
    assert stored(lab_lv, tenant_id, operator, helene) == (1, 0)
    assert refusals(lab_lv) == []


def test_an_unknown_patient_is_still_registered_from_the_order(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, helene: str) -> None:
    out, ack = h.handle(orm("O5", pid(name="DURAND^Paul", birth="19720309", sex="M",
                                      nir=OTHER_NIR)))
    assert ack_of(ack)[0] == "AA" and out.patient_id not in (None, helene)


def test_a_record_of_unknown_sex_has_none_to_contradict(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor) -> None:
    pt = lab_lv.patients.register(operator, tenant_id, {**RECORD, "sex": "U"})
    out, ack = h.handle(orm("O6", pid(sex="M")))
    assert ack_of(ack)[0] == "AA" and out.patient_id == pt


# == results (ORU): queued =====================================================================
def test_results_whose_birth_date_differs_wait_in_the_queue(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, helene: str) -> None:
    out, ack = h.handle(oru("R1", pid(birth="19810517")))
    code, errs = ack_of(ack)
    assert code == "AA" and out.patient_id is None and out.observation_ids == []
    (err,) = errs
    (iid,) = out.issue_ids
    assert err[2] == "PID^1^7" and err[3].startswith("205^") and err[4] == "W"
    assert "registered patient whose birth date differs" in ack.decode() and iid in ack.decode()
    assert "19800517" not in ack.decode().split("MSA|")[1]
    assert stored(lab_lv, tenant_id, operator, helene) == (0, 0)
    # the raw message is not filed under that patient either (sealed under the lab's key)
    assert archived(lab_lv) == [(None, "AA")]
    (issue,) = lab_lv.lab.messages.list_issues(operator, tenant_id)
    assert issue["kind"] == "identity-mismatch" and issue["patient_id"] is None
    assert issue["params"] == {"traits": "birth_date", "matched": helene}
    assert issue["patient"]["summary"]["birth_date"] == "19810517"   # type: ignore[index]
    assert "1980-05-17" not in str(issue) and "Hélène" not in str(issue["reason"])
    with lab_lv.begin() as conn:
        row = lrepo.issue(conn, iid)
    assert row is not None and row["patient_id"] is None
    assert b"LE B" not in row["issue_sealed"] and NIR.encode() not in row["issue_sealed"]


def test_results_whose_sex_differs_wait_in_the_queue(h: Hl7Handler, lab_lv: Labvault,
                                                     tenant_id: str, operator: Actor,
                                                     helene: str) -> None:
    _, ack = h.handle(oru("R2", pid(sex="M")))
    code, (err,) = ack_of(ack)
    assert code == "AA" and err[2] == "PID^1^8" and err[4] == "W"
    (issue,) = lab_lv.lab.messages.list_issues(operator, tenant_id)
    assert issue["params"] == {"traits": "sex", "matched": helene}
    # two traits: one issue, both named; the warning at the first one's field
    _, ack = h.handle(oru("R2B", pid(sex="M", birth="19790101")))
    code, (err,) = ack_of(ack)
    assert code == "AA" and err[2] == "PID^1^7"
    assert "whose birth date, sex differ from what was sent" in err[8]
    assert stored(lab_lv, tenant_id, operator, helene) == (0, 0)


@pytest.mark.parametrize("p", [
    pid(name="LEBOEUF^HELE"),           # an analyser's truncated name: not compared
    pid(name="DUPONT^Paul"),            # (nor any name: the birth date and sex agree)
    pid(birth="1980"), pid(birth="198005"),   # as precise as sent
    pid(birth="", sex=""), pid(sex="U"),
])
def test_results_whose_sent_traits_agree_are_stored(h: Hl7Handler, lab_lv: Labvault,
                                                    tenant_id: str, operator: Actor,
                                                    helene: str, p: str) -> None:
    out, ack = h.handle(oru("R3", p))
    assert ack_of(ack) == ("AA", []), ack
    assert out.patient_id == helene and len(out.observation_ids) == 1
    assert stored(lab_lv, tenant_id, operator, helene) == (1, 1)


def test_a_birth_year_that_differs_is_a_difference(h: Hl7Handler, lab_lv: Labvault,
                                                   tenant_id: str, operator: Actor,
                                                   helene: str) -> None:
    out, _ = h.handle(oru("R4", pid(birth="1979")))
    assert out.observation_ids == [] and len(out.issue_ids) == 1


def test_results_for_an_order_of_that_patient_are_not_stored_either(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, helene: str) -> None:
    """The order exists (placed with the right identity); the analyser's PID disagrees:
    the results wait, the order is left as it was."""
    assert ack_of(h.handle(hl7("ORM^O01", "R5O", pid(), "ORC|NW|PLR5",
                               "OBR|1|PLR5||2823-3^K^LN"))[1])[0] == "AA"
    out, _ = h.handle(oru("R5", pid(sex="M")))
    assert out.observation_ids == [] and len(out.issue_ids) == 1
    assert stored(lab_lv, tenant_id, operator, helene) == (1, 0)


def test_resolving_the_issue_to_the_right_patient_stores_the_results(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, helene: str) -> None:
    other = lab_lv.patients.register(operator, tenant_id, {
        "birth_name": "LE BŒUF-D'ARÇ", "first_names": ["Hélène"], "birth_date": "1981-05-17",
        "sex": "F"})
    out, _ = h.handle(oru("R6", pid(birth="19810517")))
    (iid,) = out.issue_ids
    msgs = lab_lv.lab.messages
    with pytest.raises(Exception, match="needs the patient") as exc:
        msgs.resolve_issue(operator, iid)           # never the matched one by default
    assert "--patient" in str(getattr(exc.value, "hint", ""))
    res = msgs.resolve_issue(operator, iid, patient_id=other)
    assert len(res["observation_ids"]) == 1 and res["left_as"] == []
    assert stored(lab_lv, tenant_id, operator, other) == (1, 1)
    assert stored(lab_lv, tenant_id, operator, helene) == (0, 0)
    assert msgs.list_issues(operator, tenant_id) == []


def test_a_mismatch_issue_can_be_discarded(h: Hl7Handler, lab_lv: Labvault, tenant_id: str,
                                          operator: Actor, helene: str) -> None:
    out, _ = h.handle(oru("R7", pid(sex="M")))
    (iid,) = out.issue_ids
    done = lab_lv.lab.messages.discard_issue(operator, iid, "tube of another patient")
    assert done["status"] == "discarded"


# == ADT: the PID is the new truth =============================================================
def test_an_adt_update_with_new_traits_still_updates(h: Hl7Handler, lab_lv: Labvault,
                                                    tenant_id: str, operator: Actor,
                                                    helene: str) -> None:
    _, ack = h.handle(hl7("ADT^A08", "A1", "EVN|A08|20260312090000",
                          pid(name="LEBEUF^Hélène", birth="19800518")))
    assert ack_of(ack)[0] == "AA", ack
    shown = lab_lv.patients.show(operator, helene)
    assert shown["birth_name"] == "LEBEUF" and shown["birth_date"] == "1980-05-18"
    # and an order with the new identity is now accepted
    assert ack_of(h.handle(orm("A1O", pid(name="LEBEUF^Hélène", birth="19800518")))[1])[0] \
        == "AA"


# == what is compared, message by message ======================================================
def test_sent_traits() -> None:
    from labvault.interop.hl7.mapping import to_inbound
    from labvault.interop.hl7.parse import read_message

    def traits(raw: bytes) -> dict[str, str]:
        return sent_traits(to_inbound(read_message(raw)))
    assert traits(orm("T1", pid(name="DUPONT^Anne^Marie", sex="f"))) == {
        "birth_name": "DUPONT", "first_name": "Anne", "birth_date": "1980-05-17", "sex": "F"}
    assert traits(orm("T2", pid(name="", birth="", sex="U"))) == {}
    assert traits(oru("T3", pid(name="DUPONT^Anne", birth="198005171230"))) == {
        "birth_date": "1980-05-17", "sex": "F"}
    assert traits(oru("T4", pid(birth="1980", sex="X"))) == {"birth_date": "1980"}
    assert traits(oru("T5", pid(birth='""', sex='""'))) == {}


def test_a_result_message_opens_its_patients_identity_once(lab_lv: Labvault, tenant_id: str,
                                                          helene: str) -> None:
    """The comparison and the reference ranges share one opening of the identity: an
    unsolicited result message reads the patient's identity column once, as before."""
    from sqlalchemy import event
    if lab_lv.engine.dialect.name != "sqlite":
        pytest.skip("counted with SQLite's statement trace")
    h = Hl7Handler(lab_lv, Actor.system("mllp"), tenant_id)
    h.handle(oru("C0", pid()))                       # warm: catalogue, keys, caches
    seen: list[str] = []
    active = [True]

    def record(statement: str) -> None:
        if active[0]:
            seen.append(statement)

    def trace(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.set_trace_callback(record)
    event.listen(lab_lv.engine, "checkout", trace)
    try:
        out, ack = h.handle(oru("C1", pid()))
    finally:
        active[0] = False
        event.remove(lab_lv.engine, "checkout", trace)
    assert ack_of(ack)[0] == "AA" and len(out.observation_ids) == 1
    reads = [q for q in seen if q.lstrip().upper().startswith("SELECT")
             and "identity" in q and "FROM patients" in q]
    assert len(reads) == 1, reads
