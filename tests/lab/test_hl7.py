"""HL7 v2: golden messages -> stored records + ACK; malformed input -> the right NACK
with nothing stored; idempotency on MSH-10; import issues kept and resolvable."""

from __future__ import annotations

from datetime import date

import pytest

from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler
from labvault.interop.hl7.ingest import split_file
from labvault.interop.hl7.parse import read_message
from labvault.services.app import Labvault
from labvault.services.patients import PatientService
from labvault.synthetic import make_nir
from tests.lab import hl7_samples as S
from tests.lab.conftest import patient_data


def segs(ack: bytes) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for s in ack.decode().strip("\r").split("\r"):
        f = s.split("|")
        out.setdefault(f[0], []).append(f)
    return out


@pytest.fixture
def known(lab_lv: Labvault, tenant_id: str, operator: Actor) -> str:
    d = patient_data()
    d["nir"] = S.NIR_F
    return lab_lv.patients.register(operator, tenant_id, d)


def counts(lv: Labvault, tenant_id: str, op: Actor) -> tuple[int, int, int]:
    obs = lv.lab.list_observations(op, tenant_id, limit=10_000)
    return (len(lv.lab.list_orders(op, tenant_id)), len(obs), lv.lab.messages.count(tenant_id))


def test_oru_numeric_golden(h: Hl7Handler, lab_lv: Labvault, tenant_id: str, known: str,
                            operator: Actor) -> None:
    out, ack = h.handle(S.oru_numeric().encode())
    a = segs(ack)
    assert a["MSA"][0][1:3] == ["AA", "M1"]
    assert a["MSH"][0][8] == "ACK^R01^ACK" and "ERR" not in a
    assert out.patient_id == known and len(out.observation_ids) == 5
    (order,) = lab_lv.lab.list_orders(operator, tenant_id, patient_id=known)
    assert order.status == L.OrderStatus.PRELIMINARY
    assert order.request.placer_number == "PL1001" and order.request.filler_number == "FI2001"
    rep = lab_lv.lab.get_report_by_order(operator, order.order_id)
    by = {o.observation.code: o.observation for o in rep.observations}
    assert by["718-7"].numeric == 13.2 and by["718-7"].unit == "g/dL"
    assert by["2823-3"].flag == L.Flag.HIGH
    # NTE after OBX 4 -> that result's comment, escapes decoded (\XC3A9\ \E\ \S\ \F\)
    assert by["2823-3"].comment == "Echantillon l\u00e9g\\rement h^molys|"
    spec = lab_lv.lab.get_order(operator, order.order_id).specimens[0].specimen
    assert spec.accession_number == "FI2001" and spec.type == "BLD"


def test_oru_v23_local_codes_and_issue_queue(h: Hl7Handler, lab_lv: Labvault, tenant_id: str,
                                             known: str, operator: Actor) -> None:
    out, ack = h.handle(S.oru_v23_local_codes().encode())
    a = segs(ack)
    assert a["MSA"][0][1] == "AA"
    (err,) = a["ERR"]
    assert err[1].startswith("OBX^5^3")          # v2.3: ERR-1 location + code
    assert err[2] == "OBX^5^3" and err[3].startswith("204^") and err[4] == "W"
    assert len(out.observation_ids) == 4 and len(out.issue_ids) == 1
    obs = {o.observation.code: o.observation for o in
           lab_lv.lab.list_observations(operator, tenant_id, patient_id=known)}
    assert obs["2345-7"].local_code == "GLU" and obs["2345-7"].flag == L.Flag.NORMAL
    assert obs["1988-5"].comparator == "<" and obs["1988-5"].numeric == 5.0
    assert obs["882-1"].coded and obs["882-1"].coded.code == "A+"
    assert obs["3016-3"].numeric == 2.1
    (issue,) = lab_lv.lab.messages.list_issues(operator, tenant_id)
    assert issue["kind"] == "unknown-code" and issue["results"][0]["code"] == "ZZZ"
    res = lab_lv.lab.messages.resolve_issue(operator, issue["id"], code="2157-6")
    assert res["status"] == "resolved" and len(res["observation_ids"]) == 1
    assert lab_lv.lab.messages.list_issues(operator, tenant_id) == []


def test_unknown_patient_results_are_kept(h: Hl7Handler, lab_lv: Labvault, tenant_id: str,
                                          operator: Actor) -> None:
    out, ack = h.handle(S.oru_numeric("U1").encode())
    assert segs(ack)["MSA"][0][1] == "AA" and segs(ack)["ERR"][0][4] == "W"
    assert out.patient_id is None and out.observation_ids == []
    (issue,) = lab_lv.lab.messages.list_issues(operator, tenant_id)
    assert issue["kind"] == "unknown-patient" and len(issue["results"]) == 5
    pid = lab_lv.patients.register(operator, tenant_id, {**patient_data(), "nir": S.NIR_F})
    res = lab_lv.lab.messages.resolve_issue(operator, issue["id"], patient_id=pid)
    assert len(res["observation_ids"]) == 5


def test_resend_gets_original_ack_and_no_duplicate(h: Hl7Handler, lab_lv: Labvault,
                                                   tenant_id: str, known: str,
                                                   operator: Actor) -> None:
    raw = S.oru_numeric("DUP1").encode()
    _out1, ack1 = h.handle(raw)
    before = counts(lab_lv, tenant_id, operator)
    out2, ack2 = h.handle(raw)
    assert out2.duplicate and ack2 == ack1
    assert counts(lab_lv, tenant_id, operator) == before


def test_orm_then_oru_fills_the_order(h: Hl7Handler, lab_lv: Labvault, tenant_id: str,
                                      operator: Actor) -> None:
    out, ack = h.handle(S.orm().encode())
    assert segs(ack)["MSA"][0][1] == "AA", ack
    (oid,) = out.order_ids
    order = lab_lv.lab.get_order(operator, oid)
    assert order.status == L.OrderStatus.REGISTERED
    assert order.request.tests == ("718-7", "2823-3")
    assert order.request.prescriber and order.request.prescriber.name == "Dr Paul DURAND"
    assert "anticoagulant" in (order.request.clinical_notes or "")
    oru = S.oru_numeric("R9").replace("PL1001", "PL3003")
    out2, ack2 = h.handle(oru.encode())
    assert segs(ack2)["MSA"][0][1] == "AA" and out2.order_ids == [oid]
    assert lab_lv.lab.get_order(operator, oid).status == L.OrderStatus.PRELIMINARY


def test_oml_with_specimen_and_stat_priority(h: Hl7Handler, lab_lv: Labvault,
                                             operator: Actor) -> None:
    out, ack = h.handle(S.oml().encode())
    assert segs(ack)["MSA"][0][1] == "AA", ack
    order = lab_lv.lab.get_order(operator, out.order_ids[0])
    assert order.priority == L.Priority.STAT and order.status == L.OrderStatus.RECEIVED
    assert order.specimens[0].specimen.accession_number == "AC4004"
    assert order.specimens[0].specimen.type == "SER"


def test_adt_register_then_update_latin1(h: Hl7Handler, lab_lv: Labvault, tenant_id: str,
                                         operator: Actor) -> None:
    raw = S.adt().replace("|FRA|", "|FRA|8859/1", 1).encode("iso8859-1")
    out, ack = h.handle(raw)
    assert segs(ack)["MSA"][0][1] == "AA", ack
    p = lab_lv.patients.show(operator, out.patient_id or "")
    assert p["birth_name"] == "LEFEBVRE" and p["used_name"] == "DUBOIS"
    assert p["address"]["line"] == "3 place du Théâtre"
    out2, _ = h.handle(S.adt("A08", "A2", first="Jeanne-Marie").encode())
    assert out2.patient_id == out.patient_id
    assert lab_lv.patients.show(operator, out.patient_id or "")["first_names"] == ["Jeanne-Marie"]


@pytest.mark.parametrize(("raw", "code", "err"), [
    (b"", "AR", None),
    (b"PID|1||x", "AR", None),                                        # missing MSH
    (b"MSH|^~|A|B|C|D|2026||ORU^R01|X|P|2.5\rPID|1", "AR", "MSH^1^2"),  # bad encoding chars
    (b"MSH|^~\\&|A|B|C|D|2026||XYZ^Z99|X|P|2.5\r", "AR", "200"),       # unknown type
    (b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|X|P|9.9\r", "AR", "203"),       # unknown version
    (b"MSH|^~\\&|A|B|C|D|2026||ORU^R01||P|2.5\rPID|1", "AR", "101"),   # no MSH-10
    (S.oru_numeric().replace("PID|1||", "NTE|1||").encode(), "AE", "PID"),  # missing PID
    (S.oru_numeric().replace("20260301081500", "20261341").encode(), "AE", "OBX^1^14"),
    (S.oru_numeric().encode("utf-8").replace(b"Lilas", b"Lil\xe9s"), "AR", "MSH^1^18"),
    (S.orm().replace("718-7^Hemoglobin^LN", "XX^Unknown^L").encode(), "AE", "103"),
])
def test_malformed_input_nack_and_nothing_stored(h: Hl7Handler, lab_lv: Labvault,
                                                 tenant_id: str, operator: Actor, known: str,
                                                 raw: bytes, code: str, err: str | None) -> None:
    before = counts(lab_lv, tenant_id, operator)
    _out, ack = h.handle(raw)
    a = segs(ack)
    assert a["MSA"][0][1] == code, ack
    if err:
        assert err in "|".join(a["ERR"][0]), ack
    assert counts(lab_lv, tenant_id, operator) == before
    assert lab_lv.lab.messages.list_issues(operator, tenant_id) == []


def test_batch_file_split() -> None:
    data = ("FHS|^~\\&|A\rBHS|^~\\&|A\r" + S.oru_numeric("B1") + S.oru_numeric("B2")
            + "BTS|2\rFTS|1\r").encode()
    msgs = split_file(data)
    assert len(msgs) == 2 and all(m.startswith(b"MSH") for m in msgs)
    assert read_message(msgs[1]).msh.get(10) == "B2"


def test_ambiguous_patient_is_never_guessed(h: Hl7Handler, lab_lv: Labvault, tenant_id: str,
                                            operator: Actor,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # two records of one person: a database written before registration and import
    # refused a NIR already registered (legacy duplicates stay as they were stored)
    twice = {**patient_data(), "nir": S.NIR_F}
    with monkeypatch.context() as m:
        m.setattr(PatientService, "_identifiers_free", lambda *a, **k: None)
        ids = [lab_lv.patients.register(operator, tenant_id, twice) for _ in range(2)]
    assert len(set(ids)) == 2
    assert sorted(lab_lv.patients.find(operator, tenant_id, nir=S.NIR_F)) == sorted(ids)
    _out, ack = h.handle(S.orm("AMB1").encode())
    a = segs(ack)
    assert a["MSA"][0][1] == "AE" and a["ERR"][0][3].startswith("205^")
    assert lab_lv.lab.list_orders(operator, tenant_id) == []
    out, ack = h.handle(S.oru_numeric("AMB2").encode())
    assert segs(ack)["MSA"][0][1] == "AA" and out.patient_id is None
    (issue,) = lab_lv.lab.messages.list_issues(operator, tenant_id)
    assert issue["kind"] == "unknown-patient" and "several patients" in issue["reason"]


def test_ack_written_in_the_message_charset(h: Hl7Handler) -> None:
    raw = S.orm("CS1").replace("|FRA|", "|FRA|8859/1", 1).replace("MSH|^~\\&|ANALYZER",
                                                                 "MSH|^~\\&|ANALYSEUR-É")
    _out, ack = h.handle(raw.encode("iso8859-1"))
    text = ack.decode("iso8859-1")
    msh = text.split("\r")[0].split("|")
    assert msh[17] == "8859/1" and msh[4] == "ANALYSEUR-É"


def _decisions(lv: Labvault) -> list[tuple[str, str, tuple[str, ...], frozenset[str], str]]:
    from labvault.services.gate import MemoryAudit
    audit = lv.gate.audit
    assert isinstance(audit, MemoryAudit)
    return [(a.action.value, a.resource, a.patient_ids, frozenset(c.value for c in a.categories),
             o) for a, _, o in audit.entries]


def test_one_gate_decision_per_result_message(h: Hl7Handler, lab_lv: Labvault, known: str,
                                              tenant_id: str, operator: Actor) -> None:
    """An ORU (order, specimen, 5 results, archive, identity facts for the ranges) is one
    gate decision naming its patient: one audit entry, not one per record."""
    from labvault.services.gate import MemoryAudit
    assert isinstance(lab_lv.gate.audit, MemoryAudit)
    n = len(lab_lv.gate.audit.entries)
    out, ack = h.handle(S.oru_numeric("ONE1").encode())
    assert segs(ack)["MSA"][0][1] == "AA" and len(out.observation_ids) == 5
    assert _decisions(lab_lv)[n:] == [
        ("write", "hl7-message", (known,), frozenset({"clinical", "identity"}), "allowed")]
    # the ranges still used the patient's sex and birth date (read under that decision)
    obs = {o.observation.code: o.observation
           for o in lab_lv.lab.list_observations(operator, tenant_id, patient_id=known)}
    assert obs["2823-3"].flag == L.Flag.HIGH
    assert (obs["718-7"].range_low, obs["718-7"].range_high) == (12.0, 16.0)   # adult woman
    n = len(lab_lv.gate.audit.entries)
    h.handle(S.orm("ONE2").encode())                   # an order for a known patient: the same
    assert _decisions(lab_lv)[n:] == [
        ("write", "hl7-message", (known,), frozenset({"clinical", "identity"}), "allowed")]
    n = len(lab_lv.gate.audit.entries)
    h.handle(S.oru_numeric("ONE3", nir=make_nir("M", date(1970, 1, 2), "75056", 7)).encode())
    assert _decisions(lab_lv)[n:] == [                 # unknown patient: issues only
        ("write", "hl7-message", (), frozenset({"clinical"}), "allowed")]


def test_a_refused_message_decision_is_audited_and_stores_nothing(
        h: Hl7Handler, lab_lv: Labvault, known: str, tenant_id: str, operator: Actor) -> None:
    from labvault.services.gate import Decision
    real = lab_lv.gate.policy

    class NoHl7:
        def decide(self, access):  # type: ignore[no-untyped-def]
            if access.resource == "hl7-message" and access.action.value == "write":
                return Decision(False, rule="test-deny")
            return real.decide(access)
    before = counts(lab_lv, tenant_id, operator)
    lab_lv.gate.policy = NoHl7()
    n = len(lab_lv.gate.audit.entries)  # type: ignore[attr-defined]
    out, ack = h.handle(S.oru_numeric("DENY1").encode())
    lab_lv.gate.policy = real
    assert segs(ack)["MSA"][0][1] == "AE" and out.ack_code == "AE"
    assert _decisions(lab_lv)[n:] == [
        ("write", "hl7-message", (known,), frozenset({"clinical", "identity"}), "denied")]
    assert counts(lab_lv, tenant_id, operator) == before
    out, ack = h.handle(S.oru_numeric("DENY1").encode())        # not a duplicate: stored now
    assert segs(ack)["MSA"][0][1] == "AA"


def test_a_result_without_its_unit_goes_where_a_wrong_unit_goes(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, known: str, operator: Actor) -> None:
    """OBX-6 empty: never read in the catalogue's unit; like a wrong unit, the result is
    kept as an invalid-value import issue (AA with an ERR-4 W warning), the others are
    stored."""
    raw = "\r".join([
        S.msh("ORU^R01^ORU_R01", "NOUNIT1"), S.pid(),
        "OBR|1|PL9001|FI9001|58410-2^CBC panel^LN|||20260301080000",
        "OBX|1|NM|718-7^Hemoglobin^LN||13.2|g/dL|||||F",
        "OBX|2|NM|2823-3^Potassium^LN||5.6||||||F",
        "OBX|3|NM|2951-2^Sodium^LN||140|mg/dL|||||F",
    ]) + "\r"
    out, ack = h.handle(raw.encode())
    a = segs(ack)
    assert a["MSA"][0][1] == "AA"
    assert [e[4] for e in a["ERR"]] == ["W", "W"] and all(e[3].startswith("102^")
                                                          for e in a["ERR"])
    assert len(out.observation_ids) == 1 and len(out.issue_ids) == 2
    issues = {i["results"][0]["code"]: i for i in lab_lv.lab.messages.list_issues(operator,
                                                                                   tenant_id)}
    assert {i["kind"] for i in issues.values()} == {"invalid-value"}
    assert "unit: is missing" in issues["2823-3"]["reason"]
    assert "mmol/L" in issues["2823-3"]["reason"]
    assert "unit: mg/dL is not the catalogue unit" in issues["2951-2"]["reason"]


@pytest.mark.parametrize(("orc16", "reason"), [
    ("DUP^Doublon de prescription^L", "cancelled by the placer: Doublon de prescription"),
    ("", "cancelled by the placer (no reason given in ORC-16)")])
def test_a_placer_cancel_keeps_its_reason(h: Hl7Handler, lab_lv: Labvault, operator: Actor,
                                          orc16: str, reason: str) -> None:
    out, _ = h.handle(S.orm().encode())
    (oid,) = out.order_ids
    out2, ack = h.handle(S.orm_cancel(reason=orc16).encode())
    assert segs(ack)["MSA"][0][1] == "AA" and out2.order_ids == [oid]
    order = lab_lv.lab.get_order(operator, oid)
    assert order.status == L.OrderStatus.CANCELLED
    assert order.steps["cancelled"].detail["reason"] == reason


def test_a_placer_cannot_cancel_technically_validated_results(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor) -> None:
    """After technical validation a cancel is a biologist's decision: the message gets an
    AE and the order stays as it is."""
    out, _ = h.handle(S.orm().encode())
    (oid,) = out.order_ids
    h.handle(S.oru_numeric("R8").replace("PL1001", "PL3003").encode())
    tech = Actor(kind="staff", id="acc_t", tenant_id=tenant_id, roles=frozenset({"technician"}))
    lab_lv.lab.validate_technical(tech, oid)
    _, ack = h.handle(S.orm_cancel("C2").encode())
    (err,) = segs(ack)["ERR"]
    assert segs(ack)["MSA"][0][1] == "AE" and "biologist" in err[8]
    assert lab_lv.lab.get_order(operator, oid).status == L.OrderStatus.TECHNICALLY_VALIDATED
