"""The import-issues queue over REST (``/api/v1/import-issues``): the laboratory's staff
list, read, resolve and discard the analyser results kept for a person — each role seeing
of an issue only what the access policy opens (a technician: the name, birth date and sex
the analyser sent, never its NIR nor the raw message that holds it; reception: the patient
as sent, no result)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from labvault.domain.actors import Actor
from tests.access.conftest import Lab, World
from tests.api.helpers import bearer as _bearer
from tests.web.helpers import STRANGER_NIR as STRANGER
from tests.web.helpers import STRANGER_PID, import_issue

ISSUES = "/api/v1/import-issues"



def _send(w: World, lab: Lab, control: str, pid: str, *obx: str) -> Any:
    return import_issue(w, lab, pid, obx, control)


def _known_pid(lab: Lab, i: int = 0) -> str:
    p = lab.patient_data[i]
    return (f"PID|1||{p['nir']}^^^^NH||{p['birth_name']}^{p['first_names'][0]}||"
            f"{p['birth_date'].replace('-', '')}|{p['sex']}")


K_HIGH = "OBX|1|NM|2823-3^K^LN||6.9|mmol/L|||||F"


def test_each_role_sees_what_the_policy_opens(world: World, client: TestClient) -> None:
    a = world.a
    _send(world, a, "Q1", STRANGER_PID, K_HIGH)                  # unknown patient
    bio = client.get(ISSUES, headers=_bearer(world, a, "biologist"))
    assert bio.status_code == 200, bio.text
    (issue,) = bio.json()["issues"]
    assert issue["kind"] == "unknown-patient" and issue["status"] == "open"
    assert {i["value"] for i in issue["patient"]["identifiers"]} == {STRANGER, "MRN77"}
    assert issue["results"][0]["numeric"] == "6.9" and "withheld" not in issue

    tech = client.get(ISSUES, headers=_bearer(world, a, "technician")).json()["issues"][0]
    assert "identifiers" not in tech["patient"] and STRANGER not in str(tech)
    assert tech["patient"]["summary"] == {"name": "BARRAULT Denis", "birth_date": "19610703",
                                          "sex": "M"}
    assert tech["results"][0]["numeric"] == "6.9"                # the bench's own work
    assert tech["withheld"] == ["patient.identifiers"]

    desk = client.get(f"{ISSUES}/{issue['id']}", headers=_bearer(world, a, "reception")).json()
    assert STRANGER in str(desk["patient"]["identifiers"])       # to find the right record
    assert not {"results", "order", "reason", "panic_values"} & set(desk)
    assert {"results", "order", "reason"} <= set(desk["withheld"])

    for role in ("lab_admin", "dpo", "patient"):                  # no import-issue row
        r = client.get(ISSUES, headers=_bearer(world, a, role))
        assert r.status_code == 403, (role, r.text)
    r = client.get(ISSUES, headers={"Authorization": f"Bearer {world.login(world.platform_email)}"})
    assert r.status_code == 403


def test_the_raw_message_of_a_reused_control_id_is_withheld_from_a_technician(
        world: World, client: TestClient) -> None:
    a = world.a
    assert _send(world, a, "Q2", _known_pid(a), K_HIGH).ack_code == "AA"
    again = _send(world, a, "Q2", STRANGER_PID, "OBX|1|NM|2823-3^K^LN||3.1|mmol/L|||||F")
    assert again.ack_code == "AE"
    bio = client.get(ISSUES, headers=_bearer(world, a, "biologist")).json()["issues"]
    (reused,) = [i for i in bio if i["kind"] == "reused-control-id"]
    assert STRANGER in reused["message"]
    tech = client.get(f"{ISSUES}/{reused['id']}", headers=_bearer(world, a, "technician")).json()
    assert "message" not in tech and STRANGER not in str(tech)
    assert "message" in tech["withheld"] and tech["reason"].startswith("MSH-10 Q2")


def test_a_technician_resolves_an_unknown_patient_then_the_queue_is_empty(
        world: World, client: TestClient) -> None:
    a = world.a
    tech = _bearer(world, a, "technician")
    _send(world, a, "Q3", STRANGER_PID, K_HIGH)
    (issue,) = client.get(ISSUES, headers=tech).json()["issues"]
    missing = client.post(f"{ISSUES}/{issue['id']}/resolution", json={}, headers=tech)
    assert missing.status_code == 400, missing.text
    assert "patient_id" in missing.json()["detail"]                 # says what to send here
    r = client.post(f"{ISSUES}/{issue['id']}/resolution", json={"patient_id": a.patients[1]},
                    headers=tech)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "resolved" and len(r.json()["observation_ids"]) == 1
    assert client.get(ISSUES, headers=tech).json()["issues"] == []
    done = client.get(ISSUES, params={"status": "resolved"}, headers=tech).json()["issues"]
    assert [i["id"] for i in done] == [issue["id"]]
    obs = world.lv.lab.list_observations(Actor.operator(), a.tenant_id)
    assert [(o.patient_id, o.observation.code) for o in obs] == [(a.patients[1], "2823-3")]
    # reception may read the patient as sent, not store results
    _send(world, a, "Q4", STRANGER_PID, K_HIGH)
    (other,) = client.get(ISSUES, headers=tech).json()["issues"]
    r = client.post(f"{ISSUES}/{other['id']}/resolution", json={"patient_id": a.patients[1]},
                    headers=_bearer(world, a, "reception"))
    assert r.status_code == 403, r.text


def test_codes_then_discard_with_a_reason(world: World, client: TestClient) -> None:
    a = world.a
    bio = _bearer(world, a, "biologist")
    _send(world, a, "Q5", _known_pid(a), "OBX|1|NM|GLUX^Glucose^L||1.05|g/L|||||F",
          "OBX|2|NM|CHOLX^Cholesterol^L||2.10|g/L|||||F")
    issues = client.get(ISSUES, headers=bio).json()["issues"]
    assert {i["kind"] for i in issues} == {"unknown-code"} and len(issues) == 2
    assert {i["patient_id"] for i in issues} == {a.patients[0]}
    glu, chol = sorted(issues, key=lambda i: str(i["results"][0]["code"]) != "GLUX")
    wrong = client.post(f"{ISSUES}/{glu['id']}/resolution", json={"codes": {"HGB": "718-7"}},
                        headers=bio)
    assert wrong.status_code == 400 and "HGB is not an unknown code" in wrong.json()["title"]
    r = client.post(f"{ISSUES}/{glu['id']}/resolution", json={"codes": {"GLUX": "2345-7"}},
                    headers=bio)
    assert r.status_code == 200 and r.json()["left_as"] == [], r.text
    left = chol["id"]
    no_reason = client.post(f"{ISSUES}/{left}/discard", json={"reason": " "}, headers=bio)
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["detail"]
    r = client.post(f"{ISSUES}/{left}/discard", json={"reason": "dosage refait sur papier"},
                    headers=bio)
    assert r.status_code == 200 and r.json()["status"] == "discarded", r.text
    shown = client.get(f"{ISSUES}/{left}", headers=bio).json()
    assert shown["status"] == "discarded"
    # who handled it and when, for every reader; the reason only where the results are seen
    handled = shown["resolution"]
    assert handled["by"] == a.accounts["biologist"] and handled["by_name"]
    assert handled["reason"] == "dosage refait sur papier" and handled["discarded"] is True
    assert shown["params"] == {"code": "CHOLX", "system": "L"}
    desk = client.get(f"{ISSUES}/{left}", headers=_bearer(world, a, "reception")).json()
    assert desk["resolution"]["by"] == a.accounts["biologist"]
    assert desk["resolution"]["at"] == handled["at"]
    assert "reason" not in desk["resolution"] and "params" not in desk
    assert "dosage refait" not in str(desk)
    assert {"resolution.reason", "params"} <= set(desk["withheld"])


def test_several_results_are_discarded_only_when_said(world: World,
                                                      client: TestClient) -> None:
    a = world.a
    tech = _bearer(world, a, "technician")
    _send(world, a, "Q6", STRANGER_PID, K_HIGH, "OBX|2|NM|2951-2^Na^LN||139|mmol/L|||||F")
    (issue,) = client.get(ISSUES, headers=tech).json()["issues"]
    r = client.post(f"{ISSUES}/{issue['id']}/discard", json={"reason": "doublon"}, headers=tech)
    assert r.status_code == 400 and "all_results" in r.json()["detail"], r.text
    r = client.post(f"{ISSUES}/{issue['id']}/discard",
                    json={"reason": "doublon", "all_results": True}, headers=tech)
    assert r.status_code == 200 and r.json()["results_discarded"] == 2


def test_another_laboratorys_issue_is_absent(world: World, client: TestClient) -> None:
    _send(world, world.b, "Q7", STRANGER_PID, K_HIGH)
    (issue,) = world.lv.lab.messages.list_issues(Actor.operator(), world.b.tenant_id)
    tech = _bearer(world, world.a, "technician")
    for method, path, body in (("GET", f"{ISSUES}/{issue['id']}", None),
                               ("POST", f"{ISSUES}/{issue['id']}/discard",
                                {"reason": "x", "all_results": True}),
                               ("POST", f"{ISSUES}/{issue['id']}/resolution",
                                {"patient_id": world.a.patients[0]})):
        r = client.request(method, path, json=body, headers=tech)
        twin = client.request(method, path.replace(issue["id"], "iss_doesnotexist00000000000"),
                              json=body, headers=tech)
        assert r.status_code == twin.status_code == 404, (path, r.text, twin.text)
        assert r.json()["title"] == twin.json()["title"]
    assert client.get(ISSUES, headers=tech).json()["issues"] == []


def test_resolving_with_another_laboratory_s_patient_is_a_recorded_refusal(
        world: World, client: TestClient) -> None:
    """The patient named to resolve an issue is an id too: another laboratory's answers
    like an absent one (``IssuePatientAbsent``) and leaves one refusal in the caller's
    laboratory's chain, the issue still open and nothing stored."""
    from labvault.services.audit import audit_of, install_audit
    install_audit(world.lv)
    a = world.a
    tech = _bearer(world, a, "technician")
    _send(world, a, "Q8", STRANGER_PID, K_HIGH)
    (issue,) = client.get(ISSUES, headers=tech).json()["issues"]
    r = client.post(f"{ISSUES}/{issue['id']}/resolution",
                    json={"patient_id": world.b.patients[0]}, headers=tech)
    assert r.status_code == 404, r.text
    assert r.json()["title"] == f"no patient {world.b.patients[0]} in this laboratory"
    report = audit_of(world.lv).user_report(Actor.operator(), a.accounts["technician"])
    (entry,) = [e for e in report["items"] if e["rule"] == "absent-record"]
    assert (entry["tenant_id"], entry["action"], entry["resource"]) == (
        a.tenant_id, "write", "import-issue")
    assert entry["detail"] == {"kind": "patient"} and entry["patient_ids"] == []
    assert entry["sealed"]["asked"] == world.b.patients[0]
    assert [i["id"] for i in client.get(ISSUES, headers=tech).json()["issues"]] == [issue["id"]]
