"""The intake's edges after the QA pass: a reused MSH-10 with other content, training
messages, a BOM, the file drop's exit code and summary, an oversized MLLP frame's AR,
date errors that show the value, issues of an unknown laboratory."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from labvault.domain.actors import Actor
from labvault.errors import UserError
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services.app import Labvault
from labvault.synthetic import make_nir
from tests.lab.conftest import ack_of, patient_data

PAUL = make_nir("M", date(1955, 1, 2), "69123", 45)


def r12(value: str = "4.0", stamp: str = "20260312090000", control: str = "R12",
        end: str = "\r") -> bytes:
    return end.join([f"MSH|^~\\&|LAB|L|LV|LABO|{stamp}||ORU^R01|{control}|P|2.5",
                     f"PID|1||{PAUL}^^^^NH||LEGRAND^Paul||19550102|M",
                     "OBR|1|PR12||2823-3^K^LN|||20260312070000",
                     f"OBX|1|NM|2823-3^K^LN||{value}|mmol/L|||||F", ""]).encode()


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
    with pytest.raises(UserError, match="holds a message, not results") as exc:
        lab_lv.lab.messages.resolve_issue(operator, str(issue["id"]))
    assert "new MSH-10" in (exc.value.hint or "")
    assert any("import-issue" in r.getMessage() for r in caplog.records)      # alert raised
    assert any(str(issue["id"]) in r.getMessage() for r in caplog.records)   # and logged


def test_an_oversized_frame_is_answered_with_its_control_id(lab_lv: Labvault,
                                                            tenant_id: str) -> None:
    import socket

    from labvault.interop.hl7.mllp import FrameReader, MllpServer
    from tests.lab.serving import serving
    h = Hl7Handler(lab_lv, Actor.system("mllp"), tenant_id)
    srv = MllpServer(lambda raw: h.handle(raw)[1], "127.0.0.1", 0, max_bytes=2000,
                     idle_timeout=5, reject=h.reject)
    answers = []
    with serving(srv):
        for head in (b"MSH|^~\\&|LAB|L|LV|LABO|20260312090000||ORU^R01|R14|P|2.5\r", b"ZZZ|"):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                s.sendall(b"\x0b" + head + b"OBX|" + b"x" * 3000)
                fr, got = FrameReader(), []
                while not got:
                    chunk = s.recv(65536)
                    assert chunk, "closed without an answer"
                    got = [p for p, _ in fr.feed(chunk)]
                answers.append(got[0])
        assert srv.messages == 2                 # the ARs are counted as answered
    _code, errs = ack_of(answers[0])
    assert b"MSA|AR|R14\r" in answers[0] and "larger than 2000 bytes" in errs[0][8]
    assert b"MSA|AR|\r" in answers[1] and "MSA-2 cannot name it" in ack_of(answers[1])[1][0][8]


@pytest.mark.parametrize("processing", ["T", "D"])
def test_training_and_debugging_messages_are_not_stored(h: Hl7Handler, lab_lv: Labvault,
                                                        tenant_id: str, operator: Actor,
                                                        paul: str, processing: str) -> None:
    raw = r12().replace(b"|R12|P|2.5", f"|R12|{processing}|2.5".encode())
    code, errs = ack_of(h.handle(raw)[1])
    assert code == "AR" and [(e[2], e[3][:3]) for e in errs] == [("MSH^1^11", "202")]
    assert "production messages (P) only" in errs[0][8]
    assert lab_lv.lab.list_observations(operator, tenant_id) == []


def test_a_utf8_bom_is_tolerated(h: Hl7Handler, lab_lv: Labvault, tenant_id: str,
                                 operator: Actor, paul: str) -> None:
    from labvault.interop.hl7.ingest import split_file
    data = b"\xef\xbb\xbfFHS|^~\\&\r" + r12() + r12("4.1", control="R13") + b"FTS|1\r"
    raws = split_file(data)
    assert len(raws) == 2
    assert [ack_of(h.handle(r)[1])[0] for r in raws] == ["AA", "AA"]
    assert ack_of(h.handle(b"\xef\xbb\xbf" + r12("4.2", control="R14"))[1])[0] == "AA"  # MLLP


def test_a_date_error_shows_the_value(h: Hl7Handler, paul: str) -> None:
    raw = r12().replace(b"||||F\r", b"||||F|||20261399\r")
    code, errs = ack_of(h.handle(raw)[1])
    assert code == "AE" and errs[0][2] == "OBX^1^14"
    assert "'20261399'" in errs[0][8] and "month must be in 1..12" in errs[0][8]


def test_cli_exit_codes_and_an_unknown_laboratory(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from labvault.cli import app
    from tests.lab.conftest import cli_laboratory
    with cli_laboratory(tmp_path, monkeypatch) as (r, lv, tid):
        lv.patients.register(Actor.operator(), tid, {
            **patient_data("M", date(1955, 1, 2)), "nir": PAUL, "birth_name": "LEGRAND"})
    f = tmp_path / "drop.hl7"
    bad = r12(control="R8").replace(b"||4.0|mmol/L|||||F", b"||||||||F")   # no value
    f.write_bytes(r12() + bad)
    res = r.invoke(app, ["ingest", "hl7", str(f), "--tenant", tid])
    assert res.exit_code == 2                     # one refused of two: not a success
    assert "2 messages: 1 accepted, 0 already stored (resent), 1 refused" in res.stdout
    assert "1 of 2 messages refused" in res.output
    f.write_bytes(r12())
    res = r.invoke(app, ["ingest", "hl7", str(f), "--tenant", tid, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["duplicates"] == 1
    res = r.invoke(app, ["hl7-issues", "list", "--tenant", "lab_doesnotexist"])
    assert res.exit_code == 2 and "no laboratory lab_doesnotexist" in res.output


def test_an_unknown_receiving_facility_is_named(lab_lv: Labvault) -> None:
    h = Hl7Handler(lab_lv, Actor.system("mllp"))            # MSH-6 chooses the laboratory
    raw = r12().replace(b"|LV|LABO|", b"|LV|LABO REPRO^130000029^FINESS|")
    code, errs = ack_of(h.handle(raw)[1])
    assert code == "AR" and errs[0][2] == "MSH^1^6"
    assert "'LABO REPRO' is not the FINESS" in errs[0][8] and "MSH-6.1" in errs[0][8]
