"""ADT^A40 (merge patient -- patient identifier list; HL7 v2.5 structure ADT_A39: MSH,
EVN, PID, MRG): a hospital's identity server merged two identities. A laboratory's merge
is its own identity vigilance's decision: the request is kept as a ``merge-request``
import issue (AA), never merged by the message; the merge, when the lab administrator
does it, closes the request (docs/hl7.md "Messages", "ACK rules")."""

from __future__ import annotations

from datetime import date

import pytest

from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services.app import Labvault
from labvault.synthetic import make_nir
from tests.lab.conftest import ack_of

MARIE = make_nir("F", date(1980, 5, 17), "75056", 123)
OTHER = make_nir("M", date(1955, 1, 2), "69123", 45)
MARIE_PID = f"PID|1||{MARIE}^^^^NH~MRN1^^^H^PI||DUPONT^Marie||19800517|F"
# the same person registered again by the hospital under a second MRN, without her NIR
TWIN_PID = "PID|1||MRN2^^^H^PI||DUPONT^Marie||19800517|F"


def msg(trigger: str, control: str, *segments: str) -> bytes:
    return ("\r".join((f"MSH|^~\\&|HIS|H|LV|LABO|20260301101500||ADT^{trigger}^ADT_A39|"
                       f"{control}|P|2.5", *segments)) + "\r").encode()


def a40(control: str, pid: str, mrg: str) -> bytes:
    return msg("A40", control, "EVN|A40|20260301101500", pid, mrg)


@pytest.fixture
def pair(h: Hl7Handler) -> tuple[str, str]:
    """Marie (NIR + MRN1) and her duplicate (MRN2 only), both registered by ADT^A04."""
    ids = []
    for control, pid in (("R1", MARIE_PID), ("R2", TWIN_PID)):
        out, ack = h.handle(msg("A04", control, pid))
        assert ack_of(ack)[0] == "AA", ack
        assert out.patient_id is not None
        ids.append(out.patient_id)
    assert ids[0] != ids[1]
    return ids[0], ids[1]


def _status(lv: Labvault, pid: str) -> str:
    from labvault.store import repositories_merge as mrepo
    with lv.begin() as conn:
        st = mrepo.patient_state(conn, pid)
    assert st is not None
    return str(st["status"])


def test_a40_of_two_records_here_is_kept_as_a_merge_request(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor,
        pair: tuple[str, str]) -> None:
    keep, dup = pair
    out, ack = h.handle(a40("M1", f"PID|1||{MARIE}^^^^NH~MRN1^^^H^PI||DUPONT^Marie||19800517|F",
                            "MRG|MRN2^^^H^PI"))
    code, errs = ack_of(ack)
    assert code == "AA", ack
    assert [(e[2], e[3].split("^")[0], e[4]) for e in errs] == [("MRG^1^1", "0", "I")]
    assert "does not merge records automatically" in errs[0][8]
    (iid,) = out.issue_ids
    assert out.patient_id == keep
    # nothing merged by the message
    assert _status(lab_lv, dup) == "active" and _status(lab_lv, keep) == "active"
    issue = lab_lv.lab.messages.get_issue(operator, iid)
    assert issue["kind"] == "merge-request" and issue["status"] == "open"
    assert issue["patient_id"] == keep
    assert issue["params"] == {"survivor_id": keep, "duplicate_id": dup, "sender": "HIS^H"}
    assert issue["control_id"] == "M1"
    # the queue will not store "results" of it
    from labvault.services.lab_messages import IssueRefused
    with pytest.raises(IssueRefused, match="holds a message"):
        lab_lv.lab.messages.resolve_issue(operator, iid, patient_id=keep)
    # the lab administrator's merge answers it
    report = lab_lv.merges.merge(operator, keep, dup, "demande de l'hôpital vérifiée")
    assert report.requests == [iid]
    done = lab_lv.lab.messages.get_issue(operator, iid)
    assert done["status"] == "resolved"
    assert done["resolution"]["merged"] is True
    assert done["resolution"]["duplicate_id"] == dup
    # the same A40 again (a new MSH-10): the duplicate's id is a former id of the record
    # kept now (services/merge.py): MRG-1 names the PID-3 record, nothing to merge
    out, ack = h.handle(a40("M2", MARIE_PID, "MRG|MRN2^^^H^PI"))
    code, errs = ack_of(ack)
    assert code == "AA" and not out.issue_ids
    assert [(e[2], e[3].split("^")[0], e[4]) for e in errs] == [("MRG^1^1", "0", "W")]
    assert "name the same patient here: nothing to merge" in errs[0][8]


def test_a40_with_the_survivor_unknown_is_refused_at_pid3(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor,
        pair: tuple[str, str]) -> None:
    out, ack = h.handle(a40("M3", f"PID|1||{OTHER}^^^^NH||DURAND^Paul||19550102|M",
                            "MRG|MRN2^^^H^PI"))
    code, errs = ack_of(ack)
    assert code == "AE", ack
    assert [(e[2], e[3].split("^")[0]) for e in errs] == [("PID^1^3", "204")]
    assert not out.issue_ids
    assert lab_lv.lab.messages.list_issues(operator, tenant_id) == []


def test_a40_with_the_duplicate_unknown_is_accepted_with_a_warning(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor,
        pair: tuple[str, str]) -> None:
    out, ack = h.handle(a40("M4", MARIE_PID, "MRG|MRN9^^^H^PI"))
    code, errs = ack_of(ack)
    assert code == "AA", ack
    assert [(e[2], e[3].split("^")[0], e[4]) for e in errs] == [("MRG^1^1", "204", "W")]
    assert not out.issue_ids
    assert lab_lv.lab.messages.list_issues(operator, tenant_id) == []


def test_a40_naming_one_patient_twice_is_accepted_with_a_warning(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor,
        pair: tuple[str, str]) -> None:
    out, ack = h.handle(a40("M5", MARIE_PID, f"MRG|{MARIE}^^^^NH"))
    code, errs = ack_of(ack)
    assert code == "AA", ack
    assert [(e[2], e[4]) for e in errs] == [("MRG^1^1", "W")]
    assert "same patient" in errs[0][8]
    assert not out.issue_ids and _status(lab_lv, pair[0]) == "active"


@pytest.mark.parametrize(("segments", "where", "code"), [
    ((MARIE_PID,), "", "100"),                                # no MRG
    ((MARIE_PID, "MRG|"), "MRG^1^1", "101"),                  # MRG-1 empty
    (("MRG|MRN2^^^H^PI",), "", "100"),                        # no PID
])
def test_a40_without_its_segments_is_refused(h: Hl7Handler, lab_lv: Labvault,
                                             tenant_id: str, operator: Actor,
                                             pair: tuple[str, str], segments: tuple[str, ...],
                                             where: str, code: str) -> None:
    _out, ack = h.handle(msg("A40", "M6", "EVN|A40|20260301101500", *segments))
    c, errs = ack_of(ack)
    assert c == "AE", ack
    assert any(e[3].split("^")[0] == code and (not where or e[2] == where) for e in errs), errs
    assert lab_lv.lab.messages.list_issues(operator, tenant_id) == []


def test_a40_request_is_discarded_with_a_reason(h: Hl7Handler, lab_lv: Labvault,
                                                operator: Actor,
                                                pair: tuple[str, str]) -> None:
    out, _ = h.handle(a40("M7", MARIE_PID, "MRG|MRN2^^^H^PI"))
    (iid,) = out.issue_ids
    lab_lv.lab.messages.discard_issue(operator, iid, "deux personnes distinctes, vérifié")
    assert lab_lv.lab.messages.get_issue(operator, iid)["status"] == "discarded"
    assert _status(lab_lv, pair[1]) == "active"
