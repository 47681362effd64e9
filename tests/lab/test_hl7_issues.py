"""hl7-issues resolve / discard after the QA pass: a code mapping applies only to the
results whose code was unknown, what can be stored is stored and the rest stays as an
issue of its own, several results are never discarded without saying so, and a refusal
says what can fix that kind of issue."""

from __future__ import annotations

from datetime import date

import pytest

from labvault.domain.actors import Actor
from labvault.errors import UserError
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services.app import Labvault
from labvault.synthetic import make_nir
from tests.lab.conftest import patient_data

PAUL = make_nir("M", date(1955, 1, 2), "69123", 45)
PID_PAUL = f"PID|1||{PAUL}^^^^NH||LEGRAND^Paul||19550102|M"


def hl7(control: str, *segments: str, mtype: str = "ORU^R01") -> bytes:
    return "\r".join([f"MSH|^~\\&|LAB|L|LV|LABO|20260304100000||{mtype}|{control}|P|2.5",
                      *segments, ""]).encode()


@pytest.fixture
def paul(lab_lv: Labvault, tenant_id: str, operator: Actor) -> str:
    return lab_lv.patients.register(operator, tenant_id, {
        **patient_data("M", date(1955, 1, 2)), "nir": PAUL, "birth_name": "LEGRAND",
        "first_names": ["Paul"]})


def values(lv: Labvault, tenant_id: str, op: Actor) -> dict[str, tuple[float | None, str | None]]:
    return {o.observation.code: (o.observation.numeric, o.observation.local_code)
            for o in lv.lab.list_observations(op, tenant_id)}


def only_issue(lv: Labvault, tenant_id: str, op: Actor) -> dict[str, object]:
    (issue,) = lv.lab.messages.list_issues(op, tenant_id)
    return issue


def test_a_code_maps_only_the_results_whose_code_was_unknown(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str) -> None:
    h.handle(hl7("R4", PID_PAUL, "OBR|1|PR4||BIO^Biochimie^L|||20260304080000",
                 "OBX|1|NM|GLUX^Glucose^L||1.05|g/L|||||F",
                 "OBX|2|NM|CHOLX^Cholesterol^L||2.10|g/L|||||F"))
    issue = only_issue(lab_lv, tenant_id, operator)
    msgs = lab_lv.lab.messages
    with pytest.raises(UserError, match="GLUX, CHOLX") as exc:    # which one is 2345-7?
        msgs.resolve_issue(operator, str(issue["id"]), code="2345-7")
    assert "--code LOCAL=LOINC" in (exc.value.hint or "")
    with pytest.raises(UserError, match="HGB is not an unknown code of this issue"):
        msgs.resolve_issue(operator, str(issue["id"]), codes={"HGB": "718-7"})
    res = msgs.resolve_issue(operator, str(issue["id"]), codes={"GLUX": "2345-7"})
    assert len(res["observation_ids"]) == 1 and len(res["left_as"]) == 1
    assert values(lab_lv, tenant_id, operator) == {"2345-7": (1.05, "GLUX")}
    left = only_issue(lab_lv, tenant_id, operator)            # cholesterol: not lost
    assert left["id"] == res["left_as"][0] and left["kind"] == "unknown-code"
    assert [r["code"] for r in left["results"]] == ["CHOLX"]   # type: ignore[union-attr]
    msgs.resolve_issue(operator, str(left["id"]), code="2093-3")  # one unknown code: enough
    assert values(lab_lv, tenant_id, operator) == {"2345-7": (1.05, "GLUX"),
                                                   "2093-3": (2.10, "CHOLX")}
    assert msgs.list_issues(operator, tenant_id) == []


def test_unknown_patient_with_an_unmappable_code_is_resolvable(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str) -> None:
    h.handle(hl7("R5", "PID|1||MRN-TYPO^^^H^PI||LEGRAND^Paul||19550102|M",
                 "OBR|1|PR5||718-7^Hb^LN|||20260304080000",
                 "OBX|1|NM|718-7^Hb^LN||14.1|g/dL|||||F",
                 "OBX|2|NM|XYZ1^Mystery^L||3|U/L|||||F"))
    issue = only_issue(lab_lv, tenant_id, operator)
    assert issue["kind"] == "unknown-patient"
    res = lab_lv.lab.messages.resolve_issue(operator, str(issue["id"]), patient_id=paul)
    assert values(lab_lv, tenant_id, operator) == {"718-7": (14.1, None)}
    left = only_issue(lab_lv, tenant_id, operator)
    assert res["left_as"] == [left["id"]] and left["kind"] == "unknown-code"
    assert left["patient_id"] == paul


def test_several_results_are_not_discarded_without_saying_so(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor) -> None:
    h.handle(hl7("R5", "PID|1||MRN-TYPO^^^H^PI||LEGRAND^Paul||19550102|M",
                 "OBR|1|PR5||718-7^Hb^LN|||20260304080000",
                 "OBX|1|NM|718-7^Hb^LN||14.1|g/dL|||||F",
                 "OBX|2|NM|XYZ1^Mystery^L||3|U/L|||||F"))
    iid = str(only_issue(lab_lv, tenant_id, operator)["id"])
    msgs = lab_lv.lab.messages
    with pytest.raises(UserError, match="--reason"):
        msgs.discard_issue(operator, iid, None)
    with pytest.raises(UserError, match=r"holds 2 results \(718-7, XYZ1\)") as exc:
        msgs.discard_issue(operator, iid, "sent twice")
    assert "--all-results" in (exc.value.hint or "")
    res = msgs.discard_issue(operator, iid, "sent twice", all_results=True)
    assert res["status"] == "discarded" and res["results_discarded"] == 2


def test_the_resolve_hint_says_what_fixes_each_kind(h: Hl7Handler, lab_lv: Labvault,
                                                    tenant_id: str, operator: Actor,
                                                    paul: str, biologist: Actor) -> None:
    h.handle(hl7("R15O", PID_PAUL, "ORC|NW|PR15C", "OBR|1|PR15C||2823-3^K^LN",
                 mtype="ORM^O01"))
    h.handle(hl7("R15C", PID_PAUL, "OBR|1|PR15C||2823-3^K^LN|||20260312070000",
                 "OBX|1|NM|2823-3^K^LN||4.0|meq/L|||||F"))
    issue = only_issue(lab_lv, tenant_id, operator)
    assert issue["kind"] == "invalid-value"
    with pytest.raises(UserError) as exc:
        lab_lv.lab.messages.resolve_issue(operator, str(issue["id"]))
    assert "corrected result" in (exc.value.hint or "") and "--discard" in (exc.value.hint or "")
    lab_lv.lab.messages.discard_issue(operator, str(issue["id"]), "unit fixed by the sender")
    # a correction of a validated order: a biologist amends
    out, _ = h.handle(hl7("R16A", PID_PAUL, "OBR|1|PR16||2823-3^K^LN|||20260312070000",
                          "OBX|1|NM|2823-3^K^LN||4.0|mmol/L|||||F"))
    lab_lv.lab.validate_final(biologist, out.order_ids[0], None)
    h.handle(hl7("R16B", PID_PAUL, "OBR|1|PR16||2823-3^K^LN|||20260312070000",
                 "OBX|1|NM|2823-3^K^LN||4.2|mmol/L|||||C"))
    issue = only_issue(lab_lv, tenant_id, operator)
    assert issue["kind"] == "order-closed"
    with pytest.raises(UserError) as exc:
        lab_lv.lab.messages.resolve_issue(operator, str(issue["id"]))
    assert "amendment" in (exc.value.hint or "") and "--patient" not in (exc.value.hint or "")


def test_cli_code_pairs() -> None:
    from labvault.cli.lab import _codes
    assert _codes(["GLUX=2345-7", "CHOLX=2093-3"]) == (None, {"GLUX": "2345-7",
                                                             "CHOLX": "2093-3"})
    assert _codes(["2345-7"]) == ("2345-7", {})
    with pytest.raises(UserError):
        _codes(["2345-7", "2093-3"])
    with pytest.raises(UserError):
        _codes(["GLUX="])


def test_the_queue_listing_says_whose_results_and_which(
        h: Hl7Handler, lab_lv: Labvault, tenant_id: str, operator: Actor, paul: str) -> None:
    """QA lab 7: `hl7-issues list` printed an id, a kind and a reason: nothing to find the
    patient by, nor which results wait -- the person working the queue had to read the
    JSON. Each issue now says the patient (its id, or the name, birth date and sex as
    sent) and its results."""
    from labvault.cli.lab import issue_lines
    h.handle(hl7("R6", "PID|1||MRN-TYPO^^^H^PI||LEGRAND^Paul||19550102|M",
                 "OBR|1|PR6||2823-3^K^LN|||20260304080000",
                 "OBX|1|NM|2823-3^K^LN||7.4|mmol/L||HH|||F"))
    lines = issue_lines(only_issue(lab_lv, tenant_id, operator))
    assert "unknown-patient" in lines[0]
    assert lines[1].strip() == ("patient as sent: LEGRAND Paul, born 1955-01-02, sex M "
                                "(labvault patient find ...)")
    assert lines[2].strip() == "result 2823-3 (K): 7.4 mmol/L [HH]"
    h.handle(hl7("R7", PID_PAUL, "OBR|1|PR7||718-7^Hb^LN|||20260304080000",
                 "OBX|1|NM|XYZ1^Mystery^L||3|U/L|||||F"))
    (known,) = [i for i in lab_lv.lab.messages.list_issues(operator, tenant_id)
                if i["kind"] == "unknown-code"]
    lines = issue_lines(known)
    assert lines[1].strip() == f"patient: {paul}"
    assert lines[2].strip() == "result XYZ1 (Mystery): 3 U/L"
    assert len(lines) == 3                                  # open: no "handled" line
    # handled issues (--all) say who handled them, when, and how
    lab_lv.lab.messages.discard_issue(operator, known["id"], "tube cassé, refait")
    (gone,) = [i for i in lab_lv.lab.messages.list_issues(operator, tenant_id, None)
               if i["id"] == known["id"]]
    line = issue_lines(gone)[-1].strip()
    assert line.startswith(f"discarded by {operator.id} at ")
    assert line.endswith(" UTC: tube cassé, refait")
