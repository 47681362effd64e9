"""Lab resources through the FHIR door: a whole visit as one transaction Bundle, read
back and searched with fhirpy; an invalid result makes the whole visit fail."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fhirpy.base.exceptions import OperationOutcome

from labvault.interop.fhir import ids
from labvault.interop.fhir.samples import BLOOD_COUNT, visit_bundle
from labvault.store import repositories as repo
from labvault.store import repositories_lab as lrepo
from labvault.synthetic import people
from tests.fhir.conftest import TOKEN, Running, validate_r4b

HDR = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}


def post(srv: Running, bundle: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.url, headers=HDR, content=json.dumps(bundle))


def counts(srv: Running) -> tuple[int, int]:
    with srv.lv.begin() as conn:
        t = srv.actor.tenant_id
        assert t is not None
        return repo.count_patients(conn, t), len(lrepo.orders(conn, t, limit=10_000))


def test_visit_bundle_round_trip(server: Running) -> None:
    p = next(people(1, seed=21))
    r = post(server, visit_bundle(p, 1))
    assert r.status_code == 200, r.text
    resp = r.json()
    validate_r4b(resp)
    locs = [e["response"]["location"].split("/_history")[0] for e in resp["entry"]]
    assert [loc.split("/")[0] for loc in locs] == (
        ["Patient", "ServiceRequest", "Specimen"] + ["Observation"] * 5 + ["DiagnosticReport"])
    client = server.client()
    got = {loc: client.get(loc.split("/")[0], loc.split("/")[1]) for loc in locs}
    for res in got.values():
        validate_r4b(json.loads(json.dumps(res)))
    pid = locs[0].split("/")[1]
    sr = got[locs[1]]
    assert sr["subject"]["reference"] == f"Patient/{pid}"
    assert [c["code"] for c in sr["code"]["coding"]] == [c for c, *_ in BLOOD_COUNT]
    assert sr["requester"]["identifier"]["value"] == p["prescriber"]["rpps"]
    assert sr["status"] == "completed"
    spec = got[locs[2]]
    assert spec["request"][0]["reference"] == locs[1]
    assert spec["type"]["coding"][0]["code"] == "BLD"
    obs = [got[loc] for loc in locs[3:8]]
    assert all(o["status"] == "final" for o in obs)
    sent = [e["resource"]["valueQuantity"]["value"] for e in visit_bundle(p, 1)["entry"][3:8]]
    assert [o["valueQuantity"]["value"] for o in obs] == sent
    assert all(o["interpretation"][0]["coding"][0]["code"] in ("N", "L", "H") for o in obs)
    rep = got[locs[8]]
    assert rep["status"] == "final"
    assert rep["conclusion"] == "Numération sans particularité."
    assert sorted(x["reference"] for x in rep["result"]) == sorted(locs[3:8])

    # searches
    found = client.resources("Observation").search(patient=f"Patient/{pid}").fetch()
    assert sorted(f"Observation/{o['id']}" for o in found) == sorted(locs[3:8])
    hb = client.resources("Observation").search(patient=pid, code=f"{ids.LOINC_SYSTEM}|718-7"
                                                ).fetch()
    assert [o["code"]["coding"][0]["code"] for o in hb] == ["718-7"]
    assert client.resources("Observation").search(patient=pid, status="preliminary").fetch() == []
    assert len(client.resources("Observation").search(patient=pid, status="final")
               .limit(2).fetch_all()) == 5
    assert client.resources("Observation").search(patient=pid, date="lt2000-01-01").fetch() == []
    assert len(client.resources("Observation").search(patient=pid, date="ge2000-01-01")
               .fetch()) == 5
    reps = client.resources("DiagnosticReport").search(patient=pid, status="final").fetch()
    assert [f"DiagnosticReport/{x['id']}" for x in reps] == [locs[8]]
    assert client.resources("DiagnosticReport").search(patient=pid, code="2345-7").fetch() == []
    assert len(client.resources("DiagnosticReport").search(patient=pid, code="718-7")
               .fetch()) == 1
    srs = client.resources("ServiceRequest").search(patient=pid).fetch()
    assert [f"ServiceRequest/{x['id']}" for x in srs] == [locs[1]]
    specs = client.resources("Specimen").search(patient=pid).fetch()
    assert [f"Specimen/{x['id']}" for x in specs] == [locs[2]]


def test_stepwise_lab_workflow_through_rest(server: Running) -> None:
    """Create one by one, then validate with a DiagnosticReport update."""
    client = server.client()
    p = next(people(1, seed=22))
    b = visit_bundle(p, 2)["entry"]
    pat = client.resource("Patient", **b[0]["resource"])
    pat.save()
    sr_body = dict(b[1]["resource"], subject={"reference": f"Patient/{pat['id']}"})
    sr = client.resource("ServiceRequest", **sr_body)
    sr.save()
    assert sr["status"] == "active"
    spec = client.resource("Specimen", **dict(b[2]["resource"],
                                              request=[{"reference": f"ServiceRequest/{sr['id']}"}],
                                              subject={"reference": f"Patient/{pat['id']}"}))
    spec.save()
    obs = client.resource("Observation", **dict(
        b[3]["resource"], subject={"reference": f"Patient/{pat['id']}"},
        basedOn=[{"reference": f"ServiceRequest/{sr['id']}"}]))
    obs.save()
    assert obs["status"] == "preliminary"
    # re-enter the value before validation
    obs["valueQuantity"] = {**obs["valueQuantity"], "value": 7.1}
    obs.save()
    assert obs["valueQuantity"]["value"] == 7.1
    assert obs["interpretation"][0]["coding"][0]["code"] in ("L", "LL")
    reports = client.resources("DiagnosticReport").search(patient=pat["id"]).fetch()
    assert [r["status"] for r in reports] == ["preliminary"]
    rep = reports[0]
    rep["status"] = "final"
    rep["conclusion"] = "Anémie à contrôler."
    rep.save()
    assert rep["status"] == "final" and rep["conclusion"] == "Anémie à contrôler."
    # a final result cannot be sent back as preliminary
    obs2 = client.get("Observation", obs["id"])
    assert obs2["status"] == "final"
    obs2["status"] = "preliminary"
    with pytest.raises(OperationOutcome):
        client.update(obs2)
    # cancelling an order: ServiceRequest status revoked
    sr2 = client.resource("ServiceRequest", **sr_body)
    sr2.save()
    sr2["status"] = "revoked"
    sr2.save()
    assert client.get("ServiceRequest", sr2["id"])["status"] == "revoked"


@pytest.mark.parametrize("breakage", ["unknown-test", "wrong-unit", "no-order", "final-obs",
                                      "bad-specimen-type", "foreign-result"])
def test_invalid_lab_entry_stores_nothing(server: Running, breakage: str) -> None:
    p = next(people(1, seed=23))
    bundle = visit_bundle(p, 3)
    e = bundle["entry"]
    if breakage == "unknown-test":          # valid LOINC shape, not in the catalogue
        e[7]["resource"]["code"]["coding"][0]["code"] = "94500-6"
    elif breakage == "wrong-unit":
        e[5]["resource"]["valueQuantity"].update(unit="mg/L", code="mg/L")
    elif breakage == "no-order":
        e[4]["resource"]["basedOn"] = [{"reference": "ServiceRequest/ord-0000000000000000000000000v"}]
    elif breakage == "final-obs":
        e[6]["resource"]["status"] = "final"
    elif breakage == "foreign-result":     # found only after the validation ran: rolled back
        e[8]["resource"]["result"][0] = {"reference": "Observation/obs-0000000000000000000000000v"}
    else:
        e[2]["resource"]["type"]["coding"][0]["code"] = "XYZ"
    before = counts(server)
    r = post(server, bundle)
    assert r.status_code in (400, 422), r.text
    oo = r.json()
    validate_r4b(oo)
    assert oo["resourceType"] == "OperationOutcome"
    assert all(i["expression"][0].startswith("Bundle.entry[") for i in oo["issue"])
    assert counts(server) == before


def test_lab_searches_need_a_patient(server: Running) -> None:
    for rtype in ("Observation", "DiagnosticReport", "ServiceRequest", "Specimen"):
        r = httpx.get(f"{server.url}/{rtype}", headers=HDR)
        assert r.status_code == 400
        assert r.json()["resourceType"] == "OperationOutcome"
    r = httpx.get(f"{server.url}/Observation", headers=HDR,
                  params={"patient": "Patient/pt-0000000000000000000000000v", "date": "2026-13"})
    assert r.status_code == 400


def test_a_dangling_reference_in_the_fourth_result_names_that_entry(server: Running) -> None:
    """Results are created together; the error still points at the one entry at fault."""
    p = next(people(1, seed=23))
    bundle = visit_bundle(p, 1)
    assert bundle["entry"][6]["resource"]["resourceType"] == "Observation"
    bundle["entry"][6]["resource"]["subject"] = {
        "reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}
    before = counts(server)
    r = post(server, bundle)
    assert r.status_code == 422, r.text
    assert [i["expression"] for i in r.json()["issue"]] == [
        ["Bundle.entry[6].resource.subject.reference"]]
    assert counts(server) == before


def _staff_order(server: Running, patient_id: str, step: str) -> tuple[str, list[str], str, str]:
    """An order of ``patient_id`` taken to ``step`` by the server's biologist: its id, its
    results' ids, its report id and its specimen id."""
    lab, bio = server.lv.lab, server.actor
    assert bio.tenant_id is not None
    o = lab.create_order(bio, bio.tenant_id, patient_id, {"tests": ["718-7", "2823-3"]},
                         {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00",
                          "accession_number": f"F{next(_ACC)}"})
    views = lab.enter_results(bio, o.order_id, [{"code": "718-7", "value": 13.1},
                                                {"code": "2823-3", "value": "5.8"}])
    if step in ("final", "published"):
        lab.validate_final(bio, o.order_id)
    if step == "published":
        lab.publish(bio, o.order_id)
    spec = lab.get_order(bio, o.order_id).specimens[0].specimen_id
    return o.order_id, [v.observation_id for v in views], o.report_id, spec


_ACC = iter(range(1, 10_000))


def _get(server: Running, token: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{server.url}/{path}", params=params,
                     headers={"Authorization": f"Bearer {token}"})


def test_a_patient_sees_only_its_published_results_through_fhir(server: Running) -> None:
    """QA finding 7: a patient account reads its orders, specimens, results and reports
    through FHIR only once the report is published (or amended after publication); before,
    a read is the same 404 as an absent id and a search leaves them out -- totals too."""
    from labvault.domain.actors import Actor
    tenant = server.actor.tenant_id
    assert tenant is not None
    pid = server.lv.patients.register(Actor.operator(), tenant, {
        k: v for k, v in next(people(1, seed=31)).items() if v is not None})
    token = server.patient_token(pid)
    published = _staff_order(server, pid, "published")
    for step in ("preliminary", "final"):
        oid, obs, rep, spec = _staff_order(server, pid, step)
        for path, absent in ((f"ServiceRequest/{ids.to_fhir(oid)}", "ord"),
                             (f"Specimen/{ids.to_fhir(spec)}", "spc"),
                             (f"Observation/{ids.to_fhir(obs[0])}", "obs"),
                             (f"DiagnosticReport/{ids.to_fhir(rep)}", "rep")):
            hidden = _get(server, token, path)
            nowhere_id = f"{absent}-{'0' * 25}v"
            nowhere = _get(server, token, f"{path.split('/')[0]}/{nowhere_id}")
            assert hidden.status_code == nowhere.status_code == 404, (step, path)
            assert hidden.text.replace(path.split("/")[1], "X") == nowhere.text.replace(
                nowhere_id, "X"), (step, path)
            assert _get(server, TOKEN, path).status_code == 200      # staff: as before
    ref = f"Patient/{ids.to_fhir(pid)}"
    # per type: how many records an order has, and a status only unpublished ones have
    for rtype, n, draft in (("ServiceRequest", 1, "active"), ("Specimen", 1, None),
                            ("Observation", 2, "preliminary"),
                            ("DiagnosticReport", 1, "preliminary")):
        for params in ({"patient": ref}, *([{"patient": ref, "status": draft}] if draft else [])):
            bundle = _get(server, token, rtype, **params).json()
            want = n if "status" not in params else 0
            assert bundle["total"] == want, (rtype, params, bundle)
            assert len(bundle.get("entry", [])) == want
            if draft:
                assert _get(server, TOKEN, rtype, patient=ref, status=draft).json()["total"]
        staff_total = _get(server, TOKEN, rtype, patient=ref).json()["total"]
        assert staff_total == 3 * n                        # staff still see every order
    seen = {e["resource"]["id"] for e in _get(server, token, "Observation",
                                               patient=ref).json()["entry"]}
    assert seen == {ids.to_fhir(o) for o in published[1]}
    for o in published[1]:
        assert _get(server, token, f"Observation/{ids.to_fhir(o)}").status_code == 200
    assert _get(server, token, f"DiagnosticReport/{ids.to_fhir(published[2])}"
                ).json()["status"] == "final"


def test_an_amendment_without_a_reason_names_observation_note(server: Running) -> None:
    """QA finding 16: a blank note and no note are the same error, on ``Observation.note``
    (not the lab service's ``reason``)."""
    from labvault.domain.actors import Actor
    tenant = server.actor.tenant_id
    assert tenant is not None
    pid = server.lv.patients.register(Actor.operator(), tenant, {
        k: v for k, v in next(people(1, seed=32)).items() if v is not None})
    _oid, obs, _rep, _spec = _staff_order(server, pid, "published")
    path = f"Observation/{ids.to_fhir(obs[1])}"
    current = _get(server, TOKEN, path).json()
    current.pop("note", None)
    answers = []
    for note in (None, [{"text": "   "}], [{"text": "\n\t"}, {"text": " "}]):
        body = {**current, "status": "amended", "valueQuantity": {
            **current["valueQuantity"], "value": 4.4}, **({"note": note} if note else {})}
        r = httpx.put(f"{server.url}/{path}", headers=HDR, content=json.dumps(body))
        answers.append((r.status_code, r.json()))
    assert answers[0][0] in (400, 422)
    assert answers[0] == answers[1] == answers[2], answers
    assert answers[0][1]["issue"][0]["expression"] == ["Observation.note"]
