"""Versions and concurrent updates (R4 http.html#versioning, #concurrency): every resource
read carries ``meta.versionId`` and ``ETag: W/"<versionId>"``; an update (PUT, or a
transaction entry's ``request.ifMatch``) sent with an If-Match that is no longer the
resource's version is a 412 that stores nothing -- the FHIR form of the console's "the
results changed since you looked"."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fhirpy.base.exceptions import MultipleResourcesFound

from labvault.interop.fhir import ids
from labvault.interop.fhir.samples import visit_bundle
from labvault.synthetic import people
from tests.fhir.conftest import Running, fhir_patient, validate_r4b
from tests.fhir.test_fhir_http import AUTH, HDR, create_patient, visit
from tests.fhir.test_fhir_rest import outcome

NEVER = 'W/"0123456789abcdef"'     # a version no resource ever had


def read(srv: Running, path: str) -> tuple[dict[str, Any], str]:
    """The resource at ``path`` and its ETag, which must be its meta.versionId."""
    r = httpx.get(f"{srv.url}/{path}", headers=AUTH)
    assert r.status_code == 200, r.text
    body = dict(r.json())
    validate_r4b(body)
    assert r.headers["etag"] == f'W/"{body["meta"]["versionId"]}"', path
    return body, r.headers["etag"]


def put(srv: Running, body: dict[str, Any], if_match: str | None = None) -> httpx.Response:
    headers = {**HDR, **({"If-Match": if_match} if if_match is not None else {})}
    return httpx.put(f"{srv.url}/{body['resourceType']}/{body['id']}", headers=headers,
                     content=json.dumps(body))


def _preliminary_report(server: Running, seed: int) -> tuple[dict[str, str], str]:
    """A visit whose results wait for validation: its ids (its report's too) and its
    order's labvault id."""
    v = visit(server, seed, final=False)
    (rep,) = httpx.get(f"{server.url}/DiagnosticReport", headers=AUTH,
                       params={"patient": f"Patient/{v['Patient']}"}).json()["entry"]
    return {**v, "DiagnosticReport": rep["resource"]["id"]}, ids.from_fhir(
        v["ServiceRequest"], "ord") or ""


def test_reads_searches_creates_and_updates_carry_the_version(server: Running) -> None:
    v, _order = _preliminary_report(server, 81)
    for rtype, rid in v.items():
        body, tag = read(server, f"{rtype}/{rid}")
        assert read(server, f"{rtype}/{rid}")[1] == tag                # stable while unchanged
        assert httpx.head(f"{server.url}/{rtype}/{rid}", headers=AUTH).headers["etag"] == tag
        params = {"_id": rid} if rtype == "Patient" else {"patient": f"Patient/{v['Patient']}"}
        bundle = httpx.get(f"{server.url}/{rtype}", headers=AUTH, params=params).json()
        (searched,) = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == rid]
        assert searched == body, rtype                  # found as read, version included

    r = httpx.post(f"{server.url}/Patient", headers=HDR,
                   content=json.dumps(fhir_patient(next(people(1, seed=82)))))
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == f'W/"{r.json()["meta"]["versionId"]}"'
    changed = {**r.json(), "address": [{"line": ["3 rue des Lilas"], "postalCode": "59000",
                                        "city": "Lille", "country": "FR"}]}
    u = put(server, changed)
    assert u.status_code == 200, u.text
    assert u.headers["etag"] == f'W/"{u.json()["meta"]["versionId"]}"' != r.headers["etag"]
    assert read(server, f"Patient/{changed['id']}")[1] == u.headers["etag"]


def test_capability_statement_says_how_versions_work(server: Running) -> None:
    cs = httpx.get(f"{server.url}/metadata", headers=AUTH).json()
    validate_r4b(cs)
    got = {r["type"]: (r["versioning"], r["conditionalUpdate"], r["readHistory"])
           for r in cs["rest"][0]["resource"]}
    for rtype in ("Patient", "Practitioner", "Coverage", "ServiceRequest", "Observation",
                  "DiagnosticReport"):
        assert got[rtype] == ("versioned-update", False, False), rtype
    assert got["Specimen"] == ("versioned", False, False)      # read only: versions, no update
    assert got["AuditEvent"] == ("no-version", False, False)   # an entry never changes
    # If-None-Match on read (304); If-None-Exist (conditional create) by identifier for
    # Patient and Practitioner only (tests/fhir/test_fhir_conditional_create.py)
    conditional = {r["type"]: (r["conditionalRead"], r["conditionalCreate"])
                   for r in cs["rest"][0]["resource"]}
    for rtype in ("Patient", "Practitioner"):
        assert conditional[rtype] == ("not-match", True), rtype
    for rtype in ("Coverage", "ServiceRequest", "Specimen", "Observation", "DiagnosticReport"):
        assert conditional[rtype] == ("not-match", False), rtype
    assert conditional["AuditEvent"] == ("not-supported", False)


def test_a_stale_if_match_is_412_and_stores_nothing(server: Running) -> None:
    pat = create_patient(server, 83)
    first = read(server, f"Patient/{pat['id']}")[1]

    def moved(line: str) -> dict[str, Any]:
        return {**pat, "address": [{"line": [line], "postalCode": "59000", "city": "Lille",
                                    "country": "FR"}]}
    ok = put(server, moved("1 rue du Nord"), first)
    assert ok.status_code == 200, ok.text
    second = ok.headers["etag"]
    stale = put(server, moved("2 rue du Sud"), first)       # another client, read before
    assert stale.status_code == 412, stale.text
    (issue,) = outcome(stale)["issue"]
    assert issue["code"] == "conflict" and "changed since it was read" in issue["diagnostics"]
    body, tag = read(server, f"Patient/{pat['id']}")
    assert tag == second and body["address"][0]["line"] == ["1 rue du Nord"]
    # several tags: any of them; * : whatever the version; no If-Match: as before
    assert put(server, moved("3 rue"), f"{NEVER}, {second}").status_code == 200
    assert put(server, moved("4 rue"), "*").status_code == 200
    assert put(server, moved("5 rue")).status_code == 200
    for bad in ("3", 'W/3', '"', 'W/""', f"{NEVER},"):   # never read as "no condition"
        r = put(server, moved("6 rue"), bad)
        assert r.status_code == 400, (bad, r.text)
        assert "If-Match" in outcome(r)["issue"][0]["diagnostics"]
    assert read(server, f"Patient/{pat['id']}")[0]["address"][0]["line"] == ["5 rue"]




def test_a_report_whose_results_changed_since_it_was_read_is_not_validated(
        server: Running) -> None:
    """The biologist's client read the report; a technician then re-entered a value (at
    the console, or from the analyser: another door). Validating with the If-Match of the
    read is a 412, and the report stays unvalidated, as the console refuses it."""
    v, order_id = _preliminary_report(server, 84)
    client = server.client()
    seen = client.get("DiagnosticReport", v["DiagnosticReport"])
    lab = server.lv.lab
    obs = lab.get_observation(server.actor, ids.from_fhir(v["Observation"], "obs") or "")
    lab.enter_results(server.actor, order_id, [{
        "code": obs.observation.code, "value": (obs.observation.numeric or 0) + 1,
        "unit": obs.observation.unit}])
    stale = server.client(headers={"If-Match": f'W/"{seen["meta"]["versionId"]}"'})
    final = stale.resource("DiagnosticReport", **{**seen, "status": "final",
                                                   "conclusion": "Bilan normal."})
    with pytest.raises(MultipleResourcesFound):   # fhirpy's name for a 412
        final.save()
    r = put(server, final.serialize(), f'W/"{seen["meta"]["versionId"]}"')
    assert r.status_code == 412, r.text
    outcome(r)
    assert lab.get_order(server.actor, order_id).status.value == "preliminary"
    assert client.get("DiagnosticReport", v["DiagnosticReport"])["status"] == "preliminary"
    # read again (the new value seen): the same validation goes through
    fresh = client.get("DiagnosticReport", v["DiagnosticReport"])
    assert fresh["meta"]["versionId"] != seen["meta"]["versionId"]
    current = server.client(headers={"If-Match": f'W/"{fresh["meta"]["versionId"]}"'})
    done = current.resource("DiagnosticReport", **{**fresh, "status": "final",
                                                   "conclusion": "Bilan normal."})
    done.save()
    assert done["status"] == "final"
    assert done["meta"]["versionId"] != fresh["meta"]["versionId"]


def test_if_match_is_honoured_on_every_type_that_updates(server: Running) -> None:
    """A version the resource no longer has (here: never had) is a 412 on every updatable
    type, and the resource is unchanged; its current ETag lets the same update through."""
    v, _order = _preliminary_report(server, 85)
    client = server.client()
    pr = client.resource("Practitioner", identifier=[{"system": ids.RPPS_SYSTEM,
                                                      "value": "10988399506"}],
                         name=[{"family": "Roux", "given": ["Paul"], "text": "Dr Paul Roux"}])
    pr.save()
    cov = client.resource("Coverage", status="active",
                          type={"coding": [{"system": ids.ACT_CODE_SYSTEM, "code": "PUBLICPOL"}]},
                          beneficiary={"reference": f"Patient/{v['Patient']}"},
                          payor=[{"display": "CPAM de Lille-Douai"}], subscriberId="1234567890")
    cov.save()
    paths = [f"Patient/{v['Patient']}", f"Practitioner/{pr['id']}", f"Coverage/{cov['id']}",
             f"ServiceRequest/{v['ServiceRequest']}", f"Observation/{v['Observation']}",
             f"DiagnosticReport/{v['DiagnosticReport']}"]
    for path in paths:
        body, tag = read(server, path)
        r = put(server, body, NEVER)
        assert r.status_code == 412, (path, r.text)
        assert outcome(r)["issue"][0]["code"] == "conflict"
        assert read(server, path) == (body, tag), path
        r = put(server, body, tag)       # sent back as read: accepted by every type
        assert r.status_code == 200, (path, r.text)


def transaction(srv: Running, *entries: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.url, headers=HDR, content=json.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}))


def test_a_stale_entry_fails_the_whole_transaction(server: Running) -> None:
    v, order_id = _preliminary_report(server, 86)
    pat, pat_tag = read(server, f"Patient/{v['Patient']}")
    rep, rep_tag = read(server, f"DiagnosticReport/{v['DiagnosticReport']}")
    moved = {**pat, "address": [{"line": ["7 rue Neuve"], "postalCode": "59000",
                                 "city": "Lille", "country": "FR"}]}
    final = {**rep, "status": "final", "conclusion": "Bilan normal."}

    def entries(rep_if_match: str) -> list[dict[str, Any]]:
        return [{"resource": moved, "request": {"method": "PUT", "url": f"Patient/{pat['id']}",
                                                "ifMatch": pat_tag}},
                {"resource": final, "request": {"method": "PUT",
                                                "url": f"DiagnosticReport/{rep['id']}",
                                                "ifMatch": rep_if_match}}]
    r = transaction(server, *entries(NEVER))
    assert r.status_code == 412, r.text
    assert [i["expression"] for i in outcome(r)["issue"]] == [
        ["Bundle.entry[1].request.ifMatch"]]
    assert read(server, f"Patient/{pat['id']}") == (pat, pat_tag)       # nothing stored
    assert read(server, f"DiagnosticReport/{rep['id']}") == (rep, rep_tag)
    assert server.lv.lab.get_order(server.actor, order_id).status.value == "preliminary"
    r = transaction(server, *entries(rep_tag))
    assert r.status_code == 200, r.text
    assert read(server, f"DiagnosticReport/{rep['id']}")[0]["status"] == "final"
    assert read(server, f"Patient/{pat['id']}")[0]["address"][0]["line"] == ["7 rue Neuve"]


def test_a_transaction_if_match_is_checked_before_anything_runs(server: Running) -> None:
    pat = create_patient(server, 87)
    for request, where in (
            ({"method": "PUT", "url": f"Patient/{pat['id']}", "ifMatch": "3"}, "ifMatch"),
            ({"method": "PUT", "url": f"Patient/{pat['id']}", "ifMatch": 3}, "ifMatch"),
            ({"method": "POST", "url": "Patient", "ifMatch": 'W/"1"'}, "ifMatch")):
        body = {k: v for k, v in pat.items() if request["method"] == "PUT" or k != "id"}
        r = transaction(server, {"resource": body, "request": request})
        assert r.status_code == 400, (request, r.text)
        assert outcome(r)["issue"][0]["expression"] == [f"Bundle.entry[0].request.{where}"]


def test_an_orders_version_moves_when_another_door_changes_it(server: Running) -> None:
    """Reception receives a second tube at the console (the lab service): the order's
    ServiceRequest lists it, so its version and lastUpdated move -- a PUT made with the
    version read before is a 412 -- although its status stays the same."""
    bundle = visit_bundle(next(people(1, seed=88)), 88)
    bundle["entry"] = bundle["entry"][:3]          # the patient, the order, one specimen
    r = httpx.post(server.url, headers=HDR, content=json.dumps(bundle))
    assert r.status_code == 200, r.text
    sr_id = r.json()["entry"][1]["response"]["location"].split("/")[1]
    before, tag = read(server, f"ServiceRequest/{sr_id}")
    server.lv.lab.receive_specimen(server.actor, ids.from_fhir(sr_id, "ord") or "", {
        "type": "SER", "collected_at": "2026-03-02T08:12:00+01:00",
        "accession_number": "A000000000088B"})
    after, new_tag = read(server, f"ServiceRequest/{sr_id}")
    assert len(after["specimen"]) == 2 and after["status"] == before["status"]
    assert new_tag != tag
    assert after["meta"]["lastUpdated"] > before["meta"]["lastUpdated"]
    assert put(server, after, tag).status_code == 412
    assert put(server, after, new_tag).status_code == 200


def test_transaction_response_entries_carry_the_etag_a_read_gives(server: Running) -> None:
    """Bundle.entry.response.etag (and lastModified, when the resource has a
    meta.lastUpdated) of every entry is what a read of its location then gives -- taken
    once the whole Bundle ran: the Specimen moved its ServiceRequest, the final report its
    Observations, the Coverage its Patient."""
    bundle = visit_bundle(next(people(1, seed=94)), 94)
    patient_url = next(e["fullUrl"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "Patient")
    bundle["entry"].append({"resource": {
        "resourceType": "Coverage", "status": "active",
        "type": {"coding": [{"system": ids.ACT_CODE_SYSTEM, "code": "PUBLICPOL"}]},
        "beneficiary": {"reference": patient_url}, "payor": [{"display": "CPAM de Lille"}],
        "subscriberId": "1234567890"}, "request": {"method": "POST", "url": "Coverage"}})
    bundle["entry"].append({"resource": {
        "resourceType": "Practitioner", "name": [{"text": "Dr Anne Martin"}],
        "identifier": [{"system": ids.RPPS_SYSTEM, "value": "10988399506"}]},
        "request": {"method": "POST", "url": "Practitioner"}})
    r = httpx.post(server.url, headers=HDR, content=json.dumps(bundle))
    assert r.status_code == 200, r.text
    validate_r4b(r.json())
    entries = r.json()["entry"]
    assert {e["response"]["location"].split("/")[0] for e in entries} == {
        "Patient", "ServiceRequest", "Specimen", "Observation", "DiagnosticReport",
        "Coverage", "Practitioner"}
    for e in entries:
        body, tag = read(server, e["response"]["location"])
        assert e["response"]["etag"] == tag, e["response"]["location"]
        assert e["response"].get("lastModified") == body.get("meta", {}).get("lastUpdated")
    # an update entry: its etag is the version it made
    pat_loc = next(e["response"]["location"] for e in entries
                   if e["response"]["location"].startswith("Patient/"))
    pat, pat_tag = read(server, pat_loc)
    moved = {**pat, "address": [{"line": ["8 rue Neuve"], "postalCode": "59000",
                                 "city": "Lille", "country": "FR"}]}
    r = transaction(server, {"resource": moved, "request": {"method": "PUT", "url": pat_loc,
                                                            "ifMatch": pat_tag}})
    assert r.status_code == 200, r.text
    (entry,) = r.json()["entry"]
    body, tag = read(server, pat_loc)
    assert entry["response"]["etag"] == tag != pat_tag
    assert entry["response"]["lastModified"] == body["meta"]["lastUpdated"]


def test_if_none_match_on_the_current_version_is_304_without_a_body(
        server: Running) -> None:
    """A client holding the current version asks again with If-None-Match: 304 Not
    Modified, no body, the same ETag -- after the same gate decision as a read (audited)."""
    v, _order = _preliminary_report(server, 95)
    for rtype, rid in v.items():
        body, tag = read(server, f"{rtype}/{rid}")
        pid = ids.from_fhir(v["Patient"], "pt")
        audit = server.lv.gate.audit
        before = len(audit.entries)  # type: ignore[attr-defined]
        for method in ("GET", "HEAD"):
            for header in (tag, f"{NEVER}, {tag}", tag.removeprefix("W/"), "*"):
                r = httpx.request(method, f"{server.url}/{rtype}/{rid}",
                                  headers={**AUTH, "If-None-Match": header})
                assert r.status_code == 304, (rtype, method, header, r.text)
                assert r.content == b"" and r.headers["etag"] == tag
        reads = [a for a, _, out in audit.entries[before:]  # type: ignore[attr-defined]
                 if pid in a.patient_ids and out == "allowed"]
        assert len(reads) >= 8, rtype           # each 304 a read through the gate
        r = httpx.get(f"{server.url}/{rtype}/{rid}", headers={**AUTH, "If-None-Match": NEVER})
        assert r.status_code == 200 and r.json() == body and r.headers["etag"] == tag
    for bad in ("3", "W/3", '"', f"{NEVER},"):       # never read as "no condition"
        r = httpx.get(f"{server.url}/Patient/{v['Patient']}",
                      headers={**AUTH, "If-None-Match": bad})
        assert r.status_code == 400, (bad, r.text)
        assert "If-None-Match" in outcome(r)["issue"][0]["diagnostics"]


def test_a_304_is_never_given_to_whom_the_read_is_refused(server: Running) -> None:
    """The gate decides before any version is compared: a lab administrator gets the 403
    of a read, an id of another laboratory or none the 404, whatever If-None-Match says."""
    import random

    from labvault.domain.actors import Actor
    from labvault.synthetic import make_finess
    from tests.fhir.conftest import ADMIN_TOKEN
    pat = create_patient(server, 96)
    _body, tag = read(server, f"Patient/{pat['id']}")
    for header in (tag, "*"):
        r = httpx.get(f"{server.url}/Patient/{pat['id']}",
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "If-None-Match": header})
        assert r.status_code == 403, r.text
        assert outcome(r)["issue"][0]["code"] == "forbidden" and "etag" not in r.headers
    op = Actor.operator()
    other = server.lv.tenants.add(op, "Autre labo", make_finess(random.Random(96))).tenant_id
    theirs = ids.to_fhir(server.lv.patients.register(op, other, next(people(1, seed=97))))
    for rid in (theirs, "pt-0000000000000000000000000v"):
        r = httpx.get(f"{server.url}/Patient/{rid}", headers={**AUTH, "If-None-Match": "*"})
        assert r.status_code == 404, r.text
        outcome(r)
    # AuditEvent has no version: If-None-Match cannot apply (400 before anything is read)
    r = httpx.get(f"{server.url}/AuditEvent/ae-0000000000000000000000000v",
                  headers={**AUTH, "If-None-Match": "*"})
    assert r.status_code == 400 and "no version" in outcome(r)["issue"][0]["diagnostics"]


def test_if_none_match_on_update_and_conditional_create_are_not_dropped(
        server: Running) -> None:
    """PUT with If-None-Match: 412 when the resource is at a version it names (``*``: it
    exists -- always, an update never creates). POST with If-None-Match (a create has no
    version), or with an If-None-Exist that is not a valid identifier condition (``1`` is no
    NIR), is a 400, never a create that ignored it (conditional create itself:
    test_fhir_conditional_create.py)."""
    pat = create_patient(server, 98)
    body, tag = read(server, f"Patient/{pat['id']}")
    moved = {**body, "address": [{"line": ["9 rue Neuve"], "postalCode": "59000",
                                  "city": "Lille", "country": "FR"}]}
    for header in ("*", tag, f"{NEVER}, {tag}"):
        r = httpx.put(f"{server.url}/Patient/{pat['id']}", content=json.dumps(moved),
                      headers={**HDR, "If-None-Match": header})
        assert r.status_code == 412, (header, r.text)
        assert outcome(r)["issue"][0]["code"] == "conflict"
        assert read(server, f"Patient/{pat['id']}") == (body, tag)       # nothing stored
    r = httpx.put(f"{server.url}/Patient/{pat['id']}", content=json.dumps(moved),
                  headers={**HDR, "If-Unmodified-Since": "Sun, 29 Nov 2026 10:00:00 GMT"})
    assert r.status_code == 400, r.text                    # a write's condition: not dropped
    assert outcome(r)["issue"][0]["expression"] == ["If-Unmodified-Since"]
    assert read(server, f"Patient/{pat['id']}") == (body, tag)
    r = httpx.put(f"{server.url}/Patient/{pat['id']}", content=json.dumps(moved),
                  headers={**HDR, "If-None-Match": NEVER})
    assert r.status_code == 200, r.text
    new = fhir_patient(next(people(1, seed=99)))
    for header, value in (("If-None-Exist", f"identifier={ids.NIR_SYSTEM}|1"),
                          ("If-None-Match", "*")):
        r = httpx.post(f"{server.url}/Patient", content=json.dumps(new),
                       headers={**HDR, header: value})
        assert r.status_code == 400, (header, r.text)
        assert outcome(r)["issue"][0]["expression"] == [header]
    found = httpx.get(f"{server.url}/Patient", headers=AUTH, params={
        "identifier": new["identifier"][0]["value"]}).json()
    assert found["total"] == 0                   # nothing created


def test_transaction_entry_conditions_are_honoured_or_refused_never_dropped(
        server: Running) -> None:
    """``request.ifNoneMatch`` on a PUT entry is the If-None-Match of an update (412, the
    whole Bundle stored nothing); on a POST entry (a create has no version), like
    ``ifModifiedSince`` (a read's condition) or an element Bundle.entry.request does not
    have, it is a 400 naming it."""
    pat = create_patient(server, 100)
    body, tag = read(server, f"Patient/{pat['id']}")
    moved = {**body, "address": [{"line": ["10 rue Neuve"], "postalCode": "59000",
                                  "city": "Lille", "country": "FR"}]}
    for value in ("*", tag):
        r = transaction(server, {"resource": moved, "request": {
            "method": "PUT", "url": f"Patient/{pat['id']}", "ifNoneMatch": value}})
        assert r.status_code == 412, (value, r.text)
        assert outcome(r)["issue"][0]["expression"] == ["Bundle.entry[0].request.ifNoneMatch"]
        assert read(server, f"Patient/{pat['id']}") == (body, tag)
    r = transaction(server, {"resource": moved, "request": {
        "method": "PUT", "url": f"Patient/{pat['id']}", "ifNoneMatch": NEVER}})
    assert r.status_code == 200, r.text
    new = fhir_patient(next(people(1, seed=101)))
    for request, where in (
            ({"method": "POST", "url": "Patient", "ifNoneMatch": "*"}, "ifNoneMatch"),
            ({"method": "POST", "url": "Patient",
              "ifModifiedSince": "2026-01-01T00:00:00Z"}, "ifModifiedSince"),
            ({"method": "POST", "url": "Patient", "ifMatchh": NEVER}, "ifMatchh"),
            ({"method": "PUT", "url": f"Patient/{pat['id']}", "ifNoneMatch": "W/3"},
             "ifNoneMatch")):
        resource = new if request["method"] == "POST" else moved
        r = transaction(server, {"resource": resource, "request": request})
        assert r.status_code == 400, (request, r.text)
        assert outcome(r)["issue"][0]["expression"] == [f"Bundle.entry[0].request.{where}"]
