"""AuditEvent at /fhir/R4: the laboratory's DPO reads and searches its audit trail through
a FHIR client library (fhirpy); ids only (no name, no NIR), valid R4; staff and the lab
administrator are refused; the search names a patient or an agent; nothing can be
written; the DPO's own searches are audited; another laboratory's entries are unknown."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from labvault.domain.actors import Actor
from labvault.interop.fhir import ids
from labvault.services.audit import audit_of, install_audit
from labvault.synthetic import people
from tests.fhir.conftest import ADMIN_TOKEN, DPO_TOKEN, TOKEN, Running, fhir_patient, validate_r4b


def _visit(server: Running, seed: int) -> tuple[str, dict[str, object]]:
    """A patient created and read twice by the biologist: (FHIR id, the person)."""
    p = next(people(1, seed=seed))
    created = server.client().resource("Patient", **fhir_patient(p))
    created.save()
    for _ in range(2):
        server.client().reference("Patient", created["id"]).to_resource()
    return created["id"], p


def _hdr(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_dpo_sees_who_touched_a_record(server: Running) -> None:
    install_audit(server.lv)
    fid, person = _visit(server, 41)
    other_fid, _ = _visit(server, 42)
    dpo = server.client(DPO_TOKEN)
    events = dpo.resources("AuditEvent").search(patient=f"Patient/{fid}").fetch_all()
    found = [e.serialize() for e in events]
    assert len(found) >= 3                       # the creation and the two reads at least
    for ev in found:
        validate_r4b(ev)
        refs = [x["what"].get("reference") for x in ev.get("entity", [])]
        assert f"Patient/{fid}" in refs and f"Patient/{other_fid}" not in refs
    assert {ev["agent"][0]["who"]["identifier"]["value"] for ev in found} == {"acc_test"}
    assert [ev["recorded"] for ev in found] == sorted(ev["recorded"] for ev in found)
    text = json.dumps(found)
    assert person["birth_name"] not in text and person["nir"] not in text   # ids only

    one = dpo.reference("AuditEvent", found[0]["id"]).to_resource().serialize()
    assert one == found[0]

    by_agent = [e.serialize() for e in dpo.resources("AuditEvent").search(
        agent="urn:labvault:account|acc_test").fetch_all()]
    assert {e["id"] for e in found} <= {e["id"] for e in by_agent}
    assert all(e["agent"][0]["who"]["identifier"]["value"] == "acc_test" for e in by_agent)

    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert dpo.resources("AuditEvent").search(patient=f"Patient/{fid}",
                                              date=f"ge{tomorrow}").fetch() == []
    until_tomorrow = [e.serialize() for e in dpo.resources("AuditEvent").search(
        patient=f"Patient/{fid}", date=f"lt{tomorrow}").fetch_all()]
    # everything found before, then the DPO's own searches about this patient since
    assert [e["id"] for e in until_tomorrow[:len(found)]] == [e["id"] for e in found]
    assert {e["agent"][0]["who"]["identifier"]["value"]
            for e in until_tomorrow[len(found):]} == {"acc_dpo"}

    # the DPO's own look is in the trail, naming the patient it was about
    log = audit_of(server.lv)
    pid = ids.from_fhir(fid, "pt")
    mine = [e for e in log.fhir_search(Actor.operator(), server.actor.tenant_id or "",
                                       agent_id="acc_dpo")]
    assert any(f"Patient/{fid}" in json.dumps(e) for e in mine), pid
    assert log.verify()["ok"]


def test_only_the_dpo_and_only_reads(server: Running) -> None:
    install_audit(server.lv)
    fid, _ = _visit(server, 43)
    for token in (TOKEN, ADMIN_TOKEN):           # a biologist, the lab administrator
        r = httpx.get(server.url + "/AuditEvent", headers=_hdr(token),
                      params={"patient": f"Patient/{fid}"})
        assert r.status_code == 403, r.text
        assert r.json()["issue"][0]["code"] == "forbidden"
    r = httpx.get(server.url + "/AuditEvent", headers=_hdr(DPO_TOKEN))
    assert r.status_code == 400 and "names patient" in r.text
    for agent in ("http://other|acc_test", "acc_test,acc_dpo", "|acc_test"):
        r = httpx.get(server.url + "/AuditEvent", headers=_hdr(DPO_TOKEN),
                      params={"agent": agent})
        assert r.status_code == 400, agent      # one account at a time, never a silent 0
        assert r.json()["issue"][0]["expression"] == ["agent"]
    for method, path in (("POST", "/AuditEvent"), ("PUT", "/AuditEvent/ae-x")):
        r = httpx.request(method, server.url + path, headers={
            **_hdr(DPO_TOKEN), "Content-Type": "application/fhir+json"},
            content=json.dumps({"resourceType": "AuditEvent", "id": "ae-x"}))
        assert r.status_code == 405, (method, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    cs = httpx.get(server.url + "/metadata", headers=_hdr(DPO_TOKEN)).json()
    ae = next(x for x in cs["rest"][0]["resource"] if x["type"] == "AuditEvent")
    assert {i["code"] for i in ae["interaction"]} == {"read", "search-type"}
    assert {p["name"] for p in ae["searchParam"]} == {"patient", "agent", "date"}


def test_another_laboratorys_entries_are_unknown(server: Running) -> None:
    import random

    from labvault.synthetic import make_finess
    install_audit(server.lv)
    op = Actor.operator()
    other = server.lv.tenants.add(op, "Autre labo", make_finess(random.Random(7))).tenant_id
    pid = server.lv.patients.register(op, other, next(people(1, seed=44)))
    server.lv.patients.show(op, pid)                 # an entry about that patient, there
    theirs = audit_of(server.lv).fhir_search(op, other, patient_id=pid)
    assert theirs
    dpo = server.client(DPO_TOKEN)
    with pytest.raises(ResourceNotFound):
        dpo.reference("AuditEvent", theirs[0]["id"]).to_resource()
    with pytest.raises(ResourceNotFound):
        dpo.reference("AuditEvent", "ae-0000000000000000000000000v").to_resource()
    assert dpo.resources("AuditEvent").search(patient=f"Patient/{ids.to_fhir(pid)}").fetch() \
        == []
    with pytest.raises(OperationOutcome):
        dpo.resources("AuditEvent").search(patient="Practitioner/pr-x").fetch()


def test_audit_date_is_an_instant_and_repeats_are_anded(server: Running) -> None:
    """``date`` on AuditEvent is the same parser as on the lab resources: a time is
    compared at its own precision (its timezone converted), repeats narrow."""
    install_audit(server.lv)
    fid, _ = _visit(server, 45)
    dpo = server.client(DPO_TOKEN)

    def ids_of(*dates: str) -> list[str]:
        r = httpx.get(server.url + "/AuditEvent", headers=_hdr(DPO_TOKEN),
                      params=[("patient", f"Patient/{fid}"), ("_count", "100"),
                              *(("date", d) for d in dates)])
        assert r.status_code == 200, (dates, r.text)
        return [e["resource"]["id"] for e in r.json().get("entry", [])]

    before = [e["id"] for e in dpo.resources("AuditEvent").search(
        patient=f"Patient/{fid}").limit(100).fetch_all()]
    assert len(before) >= 3
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    india = soon.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert ids_of(f"ge{soon:%Y-%m-%dT%H:%M:%S}Z") == []
    assert ids_of(f"ge{india.isoformat()}") == []
    assert ids_of(f"lt{soon:%Y-%m-%dT%H:%M:%S}Z")[:len(before)] == before
    assert ids_of(f"lt{india.isoformat()}")[:len(before)] == before
    assert ids_of("le2020-01-01", "le2100-01-01") == []
    assert ids_of("le2100-01-01", "le2020-01-01") == []
    r = httpx.get(server.url + "/AuditEvent", headers=_hdr(DPO_TOKEN),
                  params={"patient": f"Patient/{fid}", "date": "2026-11-29T05:19:30"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["date"]
