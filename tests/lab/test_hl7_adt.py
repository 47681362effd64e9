"""ADT updates (HL7 v2.5 §2.5.3): an empty field keeps what is on record, the null value
``""`` deletes it, a field that cannot be deleted is refused at its own PID field, and
an update never gives a patient another patient's identifier."""

from __future__ import annotations

from datetime import date

import pytest

from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services.app import Labvault
from labvault.synthetic import make_nir
from tests.lab.conftest import ack_of

MARIE = make_nir("F", date(1980, 5, 17), "75056", 123)
PAUL = make_nir("M", date(1955, 1, 2), "69123", 45)
MARIE_PID = (f"PID|1||{MARIE}^^^^NH~MRN1^^^H^PI||DUPONT^Marie||19800517|F|||"
             "1 rue A^^Paris^^75011||0612345678^PRN^PH~^NET^Internet^m@example.org")


def adt(trigger: str, control: str, pid: str) -> bytes:
    return (f"MSH|^~\\&|HIS|H|LV|LABO|20260301101500||ADT^{trigger}|{control}|P|2.5\r"
            f"{pid}\r").encode()


@pytest.fixture
def marie(h: Hl7Handler) -> str:
    out, ack = h.handle(adt("A04", "A1", MARIE_PID))
    assert out.ack_code == "AA", ack
    assert out.patient_id is not None
    return out.patient_id


def test_a08_keeps_the_fields_it_leaves_empty(h: Hl7Handler, lab_lv: Labvault, marie: str,
                                              tenant_id: str, operator: Actor) -> None:
    out, ack = h.handle(adt("A08", "R1", f"PID|1||{MARIE}^^^^NH||DUPONT^Marie||19800517|F"))
    assert ack_of(ack) == ("AA", []) and out.patient_id == marie
    p = lab_lv.patients.show(operator, marie)
    assert p["phone"] == "+33612345678" and p["email"] == "m@example.org"
    assert p["address"]["city"] == "Paris"
    assert p["external_id"] == "MRN1"                   # PID-3 without the MRN: kept
    assert lab_lv.patients.find(operator, tenant_id, external_id="MRN1") == [marie]
    assert lab_lv.patients.find(operator, tenant_id, phone="0612345678") == [marie]


def test_a08_null_value_deletes(h: Hl7Handler, lab_lv: Labvault, marie: str, tenant_id: str,
                                operator: Actor) -> None:
    _out, ack = h.handle(adt("A08", "R2", f'PID|1||{MARIE}^^^^NH||DUPONT^Marie||19800517|F|||'
                                          '""||""'))
    assert ack_of(ack) == ("AA", []), ack
    p = lab_lv.patients.show(operator, marie)
    assert p.get("phone") is None and p.get("email") is None and p.get("address") is None
    assert p["external_id"] == "MRN1" and p["birth_name"] == "DUPONT"
    assert lab_lv.patients.find(operator, tenant_id, phone="0612345678") == []


def test_a08_a_field_sent_replaces_all_its_repetitions(h: Hl7Handler, lab_lv: Labvault,
                                                       marie: str, operator: Actor) -> None:
    """PID-13 sent with a phone only: the e-mail (another repetition of PID-13) is gone."""
    _out, ack = h.handle(adt("A08", "R3", f"PID|1||{MARIE}^^^^NH||DUPONT^Marie~MARTIN^Marie"
                                          "^^^^^D||19800517|F|||||0698765432"))
    assert ack_of(ack)[0] == "AA", ack
    p = lab_lv.patients.show(operator, marie)
    assert p["phone"] == "+33698765432" and p.get("email") is None
    assert p["used_name"] == "MARTIN" and p["address"]["city"] == "Paris"


@pytest.mark.parametrize(("pid_tail", "field"), [
    ('""||19800517|F', "PID^1^5"),
    ('DUPONT^Marie||""|F', "PID^1^7"),
    ('DUPONT^Marie||19800517|""', "PID^1^8"),
])
def test_a08_cannot_delete_a_required_field(h: Hl7Handler, lab_lv: Labvault, marie: str,
                                            operator: Actor, pid_tail: str, field: str) -> None:
    code, errs = ack_of(h.handle(adt("A08", "R4", f"PID|1||{MARIE}^^^^NH||{pid_tail}"))[1])
    assert code == "AE" and [e[2] for e in errs] == [field]
    assert '""' in errs[0][8] and "cannot lose" in errs[0][8]
    assert lab_lv.patients.show(operator, marie)["birth_name"] == "DUPONT"


def test_a08_never_gives_a_patient_another_patients_identifier(
        h: Hl7Handler, lab_lv: Labvault, marie: str, tenant_id: str, operator: Actor) -> None:
    out, ack = h.handle(adt("A04", "A2", f"PID|1||{PAUL}^^^^NH~MRN2^^^H^PI||LEGRAND^Paul||"
                                         "19550102|M"))
    paul = out.patient_id
    assert ack_of(ack)[0] == "AA" and paul not in (None, marie)
    code, errs = ack_of(h.handle(adt("A08", "R11", f"PID|1||{MARIE}^^^^NH~MRN2^^^H^PI||"
                                                    "DUPONT^Marie||19800517|F"))[1])
    assert code == "AE" and len(errs) == 1
    assert errs[0][2] == "PID^1^3" and errs[0][3].startswith("205^")
    assert "MRN2 already identifies another patient" in errs[0][8]
    assert lab_lv.patients.show(operator, marie)["external_id"] == "MRN1"
    assert lab_lv.patients.find(operator, tenant_id, external_id="MRN2") == [paul]
    # nor the other way round: Paul (matched by his NIR) cannot take Marie's MRN1
    code, errs = ack_of(h.handle(adt("A08", "R12", f"PID|1||MRN1^^^H^PI~{PAUL}^^^^NH||"
                                                    "LEGRAND^Paul||19550102|M"))[1])
    assert code == "AE" and errs[0][2] == "PID^1^3" and "MRN1 already" in errs[0][8]
    assert lab_lv.patients.find(operator, tenant_id, external_id="MRN1") == [marie]


@pytest.mark.parametrize(("tail", "field", "shown"), [
    ("DUPONT^Marie||19800517|F|||||12ab", "PID^1^13", "'12ab'"),
    ("DUPONT^Marie||19801330|F", "PID^1^7", "'19801330'"),
    ("DUPONT^Marie||198005|F", "PID^1^7", "'198005'"),         # no day: none invented
    ("DUPONT^Marie||19800517|F|||1 rue A^^Paris^^7501", "PID^1^11", "'7501'"),
])
def test_pid_errors_name_their_own_field_and_value(h: Hl7Handler, lab_lv: Labvault,
                                                   tenant_id: str, operator: Actor, tail: str,
                                                   field: str, shown: str) -> None:
    for n, pid3 in enumerate((f"{MARIE}^^^^NH", "MRN9^^^H^PI")):   # update, then register
        if n == 0:
            assert h.handle(adt("A04", "A1", MARIE_PID))[0].ack_code == "AA"
        code, errs = ack_of(h.handle(adt("A08", f"E{n}", f"PID|1||{pid3}||{tail}"))[1])
        assert code == "AE" and [e[2] for e in errs] == [field], errs
        assert shown in errs[0][8]
    assert lab_lv.patients.find(operator, tenant_id, external_id="MRN9") == []
