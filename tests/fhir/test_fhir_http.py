"""The FHIR door's HTTP semantics (http.html): content negotiation, 405 with Allow, HEAD,
update of an absent id, Location without a dead _history URL, body size and depth limits,
and content changes an update must not drop silently."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from labvault.interop.fhir.samples import visit_bundle
from labvault.synthetic import people
from tests.fhir.conftest import TOKEN, Running, fhir_patient
from tests.fhir.test_fhir_rest import outcome

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HDR = {**AUTH, "Content-Type": "application/fhir+json"}


def create_patient(srv: Running, seed: int) -> dict[str, Any]:
    r = httpx.post(f"{srv.url}/Patient", headers=HDR,
                   content=json.dumps(fhir_patient(next(people(1, seed=seed)))))
    assert r.status_code == 201, r.text
    return dict(r.json())


def visit(srv: Running, seed: int, final: bool = True) -> dict[str, str]:
    """A stored visit: {resource type: id} of its Patient, ServiceRequest, DiagnosticReport."""
    bundle = visit_bundle(next(people(1, seed=seed)), seed)
    if not final:
        bundle["entry"] = [e for e in bundle["entry"]
                           if e["resource"]["resourceType"] != "DiagnosticReport"]
    r = httpx.post(srv.url, headers=HDR, content=json.dumps(bundle))
    assert r.status_code == 200, r.text
    out = {}
    for e in r.json()["entry"]:
        rtype, rid = e["response"]["location"].split("/")
        out[rtype] = rid
    return out


@pytest.mark.parametrize("query,accept", [
    ("?_format=xml", None), ("?_format=jsonfoo", None), ("?_format=application/fhir+xml", None),
    ("", "application/fhir+xml"), ("", "text/turtle"),
])
def test_formats_other_than_json_are_406_on_every_interaction(
        server: Running, query: str, accept: str | None) -> None:
    pid = create_patient(server, 71)["id"]
    headers = {**AUTH, **({"Accept": accept} if accept else {})}
    for path in ("/metadata", f"/Patient/{pid}", f"/Patient?_id={pid}"):
        sep = "&" if "?" in path and query else ""
        url = f"{server.url}{path}{sep}{query.lstrip('?') if sep else query}"
        r = httpx.get(url, headers=headers)
        assert r.status_code == 406, (url, r.status_code, r.text)
        outcome(r)


@pytest.mark.parametrize("query,accept", [
    ("?_format=json", None), ("?_format=application/fhir%2Bjson", "application/xml"),
    ("", "application/fhir+json;q=0.9, application/fhir+xml"), ("", "*/*"),
    ("", "application/json"),
])
def test_json_formats_are_served(server: Running, query: str, accept: str | None) -> None:
    pid = create_patient(server, 72)["id"]
    r = httpx.get(f"{server.url}/Patient/{pid}{query}",
                  headers={**AUTH, **({"Accept": accept} if accept else {})})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == pid


def test_405_names_the_allowed_methods(server: Running) -> None:
    pid = create_patient(server, 73)["id"]
    r = httpx.delete(f"{server.url}/Patient/{pid}", headers=AUTH)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD, PUT"
    outcome(r)
    r = httpx.request("OPTIONS", f"{server.url}/Patient", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"
    # a specimen is never changed once received: no PUT offered, and the 405 says so
    r = httpx.put(f"{server.url}/Specimen/spc-x", headers=HDR,
                  content=json.dumps({"resourceType": "Specimen", "id": "spc-x"}))
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = httpx.patch(f"{server.url}/Nope/1", headers=AUTH)
    assert r.status_code == 404
    outcome(r)


def test_head_answers_like_get_without_a_body(server: Running) -> None:
    pid = create_patient(server, 74)["id"]
    for path in (f"/Patient/{pid}", "/metadata", f"/Patient?_id={pid}"):
        r = httpx.head(f"{server.url}{path}", headers=AUTH)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("application/fhir+json")
        assert r.content == b""
    assert httpx.head(f"{server.url}/Patient/pt-aaaaaaaaaaaaaaaaaaaaaaaaaa",
                      headers=AUTH).status_code == 404


def test_location_is_a_url_that_reads_back(server: Running) -> None:
    r = httpx.post(f"{server.url}/Patient", headers=HDR,
                   content=json.dumps(fhir_patient(next(people(1, seed=75)))))
    assert r.status_code == 201
    assert "_history" not in r.headers["location"]
    assert httpx.get(r.headers["location"], headers=AUTH).status_code == 200
    bundle = visit_bundle(next(people(1, seed=76)), 76)
    resp = httpx.post(server.url, headers=HDR, content=json.dumps(bundle)).json()
    for e in resp["entry"]:
        loc = e["response"]["location"]
        assert "_history" not in loc
        assert httpx.get(f"{server.url}/{loc}", headers=AUTH).status_code == 200


def test_update_of_an_absent_id_is_405(server: Running) -> None:
    """http.html#update: the server does not let clients choose ids (updateCreate false)."""
    body = fhir_patient(next(people(1, seed=77)))
    body["id"] = "pt-aaaaaaaaaaaaaaaaaaaaaaaaaa"
    r = httpx.put(f"{server.url}/Patient/{body['id']}", headers=HDR, content=json.dumps(body))
    assert r.status_code == 405, r.text
    assert "POST" in outcome(r)["issue"][0]["diagnostics"]
    v = visit(server, 78)
    obs = httpx.get(f"{server.url}/Observation?patient=Patient/{v['Patient']}",
                    headers=AUTH).json()["entry"][0]["resource"]
    obs["id"] = "obs-aaaaaaaaaaaaaaaaaaaaaaaaaa"
    r = httpx.put(f"{server.url}/Observation/{obs['id']}", headers=HDR, content=json.dumps(obs))
    assert r.status_code == 405, r.text


def test_create_referencing_an_unknown_patient_is_422_naming_the_element(
        server: Running) -> None:
    sr = visit_bundle(next(people(1, seed=79)), 79)["entry"][1]["resource"]
    sr = {**sr, "subject": {"reference": "Patient/pt-aaaaaaaaaaaaaaaaaaaaaaaaaa"}}
    r = httpx.post(f"{server.url}/ServiceRequest", headers=HDR, content=json.dumps(sr))
    assert r.status_code == 422, r.text
    assert outcome(r)["issue"][0]["expression"] == ["ServiceRequest.subject"]
    cov = {"resourceType": "Coverage", "status": "active",
           "beneficiary": {"reference": "Patient/pt-aaaaaaaaaaaaaaaaaaaaaaaaaa"},
           "payor": [{"display": "CPAM"}],
           "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                "code": "PUBLICPOL"}]}}
    r = httpx.post(f"{server.url}/Coverage", headers=HDR, content=json.dumps(cov))
    assert r.status_code in (400, 422), r.text
    assert r.status_code != 404


def test_service_request_content_change_is_refused_not_dropped(server: Running) -> None:
    v = visit(server, 80, final=False)
    url = f"{server.url}/ServiceRequest/{v['ServiceRequest']}"
    sr = httpx.get(url, headers=AUTH).json()
    for element, change in [("ServiceRequest.priority", {"priority": "stat"}),
                            ("ServiceRequest.note", {"note": [{"text": "changed"}]}),
                            ("ServiceRequest.code", {"code": {"coding": [
                                {"system": "http://loinc.org", "code": "2345-7"}]}})]:
        r = httpx.put(url, headers=HDR, content=json.dumps({**sr, **change}))
        assert r.status_code == 422, (element, r.text)
        assert outcome(r)["issue"][0]["expression"] == [element]
        assert httpx.get(url, headers=AUTH).json() == sr       # nothing changed
    # sent back unchanged: 200, still the same
    r = httpx.put(url, headers=HDR, content=json.dumps(sr))
    assert r.status_code == 200, r.text
    assert r.json()["priority"] == sr["priority"]


def test_final_report_sent_back_unchanged_is_accepted(server: Running) -> None:
    v = visit(server, 81)
    url = f"{server.url}/DiagnosticReport/{v['DiagnosticReport']}"
    rep = httpx.get(url, headers=AUTH).json()
    assert rep["status"] == "final" and rep["conclusion"]
    r = httpx.put(url, headers=HDR, content=json.dumps(rep))
    assert r.status_code == 200, r.text
    assert r.json()["conclusion"] == rep["conclusion"]
    r = httpx.put(url, headers=HDR, content=json.dumps({**rep, "conclusion": "Autre."}))
    assert r.status_code == 422
    assert outcome(r)["issue"][0]["expression"] == ["DiagnosticReport.conclusion"]
    r = httpx.put(url, headers=HDR, content=json.dumps({**rep, "status": "bogus"}))
    assert r.status_code == 422
    assert "diagnostic-report-status" in outcome(r)["issue"][0]["diagnostics"]


def test_deep_nesting_is_a_400_not_a_500(server: Running) -> None:
    ext: dict[str, Any] = {"url": "http://example.org/x", "valueString": "x"}
    for _ in range(150):
        ext = {"url": "http://example.org/x", "extension": [ext]}
    body = {**fhir_patient(next(people(1, seed=82))), "extension": [ext]}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body, "request": {"method": "POST", "url": "Patient"}}]}
    for url, sent in ((f"{server.url}/Patient", body), (server.url, bundle)):
        r = httpx.post(url, headers=HDR, content=json.dumps(sent))
        assert r.status_code == 400, r.text
        assert "nests too deeply" in outcome(r)["issue"][0]["diagnostics"]


def test_body_over_the_limit_is_an_operation_outcome(server: Running) -> None:
    limit = int(server.lv.settings.get("LABVAULT_MAX_REQUEST_BYTES"))
    r = httpx.post(f"{server.url}/Patient", headers=HDR, content=b" " * (limit + 1))
    assert r.status_code == 413
    assert outcome(r)["issue"][0]["code"] == "too-costly"


def test_post_search_takes_a_form(server: Running) -> None:
    pid = create_patient(server, 83)["id"]
    r = httpx.post(f"{server.url}/Patient/_search", headers=HDR,
                   content=json.dumps({"_id": pid}))
    assert r.status_code == 415
    assert "x-www-form-urlencoded" in outcome(r)["issue"][0]["diagnostics"]
    r = httpx.post(f"{server.url}/Patient/_search", headers=AUTH, data={"_id": pid})
    assert r.status_code == 200 and r.json()["total"] == 1


def test_patient_last_updated_moves_with_an_update(server: Running) -> None:
    created = create_patient(server, 84)
    before = created["meta"]["lastUpdated"]
    created["telecom"] = [{"system": "phone", "value": "+33612345678"}]
    r = httpx.put(f"{server.url}/Patient/{created['id']}", headers=HDR,
                  content=json.dumps(created))
    assert r.status_code == 200, r.text
    after = httpx.get(f"{server.url}/Patient/{created['id']}", headers=AUTH).json()
    assert after["meta"]["lastUpdated"] > before


@pytest.mark.parametrize("change,element", [
    ({"modifierExtension": [{"url": "http://example.org/x", "valueBoolean": True}]},
     "Patient.modifierExtension"),
    ({"name": [{"use": "official", "family": "DURAND", "given": ["Ana"], "modifierExtension": [
        {"url": "http://example.org/x", "valueBoolean": True}]}]},
     "Patient.name[0].modifierExtension"),
    ({"contact": [{"name": {"family": "X"}, "modifierExtension": [
        {"url": "http://example.org/x", "valueBoolean": True}]}]},
     "Patient.contact[0].modifierExtension"),
    ({"active": False}, "Patient.active"),
    ({"deceasedBoolean": True}, "Patient.deceasedBoolean"),
    ({"deceasedDateTime": "2026-01-02"}, "Patient.deceasedDateTime"),
])
def test_modifier_elements_are_refused_not_dropped(
        server: Running, change: dict[str, Any], element: str) -> None:
    body = {**fhir_patient(next(people(1, seed=85))), **change}
    r = httpx.post(f"{server.url}/Patient", headers=HDR, content=json.dumps(body))
    assert r.status_code == 422, r.text
    assert outcome(r)["issue"][0]["expression"] == [element]
    ok = {**fhir_patient(next(people(1, seed=86))), "active": True, "deceasedBoolean": False}
    assert httpx.post(f"{server.url}/Patient", headers=HDR,
                      content=json.dumps(ok)).status_code == 201


def test_specimen_errors_name_fhir_elements(server: Running) -> None:
    v = visit(server, 87, final=False)
    spec = visit_bundle(next(people(1, seed=87)), 87)["entry"][2]["resource"]
    spec = {k: x for k, x in spec.items() if k not in ("collection", "accessionIdentifier")}
    spec["request"] = [{"reference": f"ServiceRequest/{v['ServiceRequest']}"}]
    spec["subject"] = {"reference": f"Patient/{v['Patient']}"}
    r = httpx.post(f"{server.url}/Specimen", headers=HDR, content=json.dumps(spec))
    assert r.status_code == 422, r.text
    exprs = sorted(e for i in outcome(r)["issue"] for e in i["expression"])
    assert exprs == ["Specimen.accessionIdentifier", "Specimen.collection.collectedDateTime"]
    assert "collected_at" not in r.text and "accession_number" not in r.text


def test_bundle_and_entry_elements_are_checked(server: Running) -> None:
    bundle = visit_bundle(next(people(1, seed=88)), 88)
    for where, broken in [("Bundle.favourite", {**bundle, "favourite": 1}),
                          ("Bundle.entry[1].resourse", {**bundle, "entry": [
                              bundle["entry"][0], {**bundle["entry"][1], "resourse": {}},
                              *bundle["entry"][2:]]})]:
        r = httpx.post(server.url, headers=HDR, content=json.dumps(broken))
        assert r.status_code == 400, r.text
        assert outcome(r)["issue"][0]["expression"] == [where]
    r = httpx.post(server.url, headers=HDR,
                   content=json.dumps({"resourceType": "Bundle", "type": "transaction"}))
    assert r.status_code == 200 and "entry" not in r.json()


def test_a_modifier_extension_inside_a_bundle_names_its_entry(server: Running) -> None:
    bundle = visit_bundle(next(people(1, seed=89)), 89)
    bundle["entry"][4]["resource"]["modifierExtension"] = [
        {"url": "http://example.org/x", "valueBoolean": True}]
    r = httpx.post(server.url, headers=HDR, content=json.dumps(bundle))
    assert r.status_code == 422, r.text
    assert outcome(r)["issue"][0]["expression"] == [
        "Bundle.entry[4].resource.modifierExtension"]
