"""The intake's edges after the QA pass: a reused MSH-10 with other content, training
messages, a BOM, the file drop's exit code and summary, an oversized MLLP frame's AR,
date errors that show the value, issues of an unknown laboratory."""

from __future__ import annotations

from datetime import date

import pytest

from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services.app import Labvault
from labvault.synthetic import make_nir
from tests.lab.conftest import patient_data

PAUL = make_nir("M", date(1955, 1, 2), "69123", 45)


def r12(value: str = "4.0", stamp: str = "20260312090000", control: str = "R12",
        end: str = "\r") -> bytes:
    return end.join([f"MSH|^~\\&|LAB|L|LV|LABO|{stamp}||ORU^R01|{control}|P|2.5",
                     f"PID|1||{PAUL}^^^^NH||LEGRAND^Paul||19550102|M",
                     "OBR|1|PR12||2823-3^K^LN|||20260312070000",
                     f"OBX|1|NM|2823-3^K^LN||{value}|mmol/L|||||F", ""]).encode()


def ack_of(ack: bytes) -> tuple[str, list[list[str]]]:
    segs = [s.split("|") for s in ack.decode().strip("\r").split("\r")]
    return next(s[1] for s in segs if s[0] == "MSA"), [s for s in segs if s[0] == "ERR"]


@pytest.fixture
def h(lab_lv: Labvault, tenant_id: str) -> Hl7Handler:
    return Hl7Handler(lab_lv, Actor.system("mllp"), tenant_id)


@pytest.fixture
def paul(lab_lv: Labvault, tenant_id: str, operator: Actor) -> str:
    return lab_lv.patients.register(operator, tenant_id, {
        **patient_data("M", date(1955, 1, 2)), "nir": PAUL, "birth_name": "LEGRAND"})


def potassium(lv: Labvault, tenant_id: str, op: Actor) -> list[float | None]:
    return [o.observation.numeric for o in lv.lab.list_observations(op, tenant_id)]


@pytest.mark.parametrize("batch", [False, True])      # one message; the MLLP group commit
def test_a_reused_control_id_with_other_content_is_refused_and_kept(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str,
        batch: bool, caplog: pytest.LogCaptureFixture) -> None:
    _out, first = h.handle(r12())
    assert ack_of(first) == ("AA", [])
    # the same message again -- restamped (MSH-7), CRLF: the first ACK, nothing stored
    for again in (r12(), r12(stamp="20260312093000", end="\r\n")):
        out, ack = h.handle(again)
        assert out.duplicate and ack == first
    changed = r12("7.9")
    if batch:                    # beside another message, stored in the same commit
        ack, other = h.handle_many([changed, r12("4.2", control="R13")])
        assert ack_of(other) == ("AA", [])
    else:
        ack = h.handle(changed)[1]
    code, errs = ack_of(ack)
    assert code == "AE" and [(e[2], e[3][:3]) for e in errs] == [("MSH^1^10", "205")]
    assert "reused with different content" in errs[0][8] and "new MSH-10" in errs[0][8]
    assert potassium(lab_lv, tenant_id, operator) == [4.2 if batch else 4.0]   # never 7.9
    (issue,) = lab_lv.lab.messages.list_issues(operator, tenant_id)
    assert issue["kind"] == "reused-control-id" and "||7.9|" in str(issue["message"])
    assert any("import-issue" in r.getMessage() for r in caplog.records)      # alert raised
    assert any(str(issue["id"]) in r.getMessage() for r in caplog.records)   # and logged
