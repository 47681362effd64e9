"""The FHIR door through a real FHIR client library (fhirpy) against a running server."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fhirpy.base.exceptions import AuthorizationError, ResourceNotFound

from labvault.domain.actors import Actor
from labvault.domain.categories import Action
from labvault.interop.fhir import ids
from labvault.store import repositories as repo
from labvault.synthetic import people
from tests.fhir.conftest import ADMIN_TOKEN, TOKEN, Running, fhir_patient, validate_r4b

HDR = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}


def count_patients(srv: Running) -> int:
    with srv.lv.begin() as conn:
        return repo.count_patients(conn, srv.actor.tenant_id)


def outcome(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    validate_r4b(body)
    assert "Traceback" not in r.text
    return body


def test_create_read_search_patient_round_trip(server: Running) -> None:
    client = server.client()
    p = next(people(1, seed=5))
    created = client.resource("Patient", **fhir_patient(p))
    created.save()
    assert created["id"].startswith("pt-")
    validate_r4b(created.serialize())

    got = client.reference("Patient", created["id"]).to_resource().serialize()
    validate_r4b(got)
    official = next(n for n in got["name"] if n["use"] == "official")
    assert official["family"] == p["birth_name"]
    assert official["given"] == p["first_names"]
    assert got["birthDate"] == p["birth_date"]
    assert got["gender"] == {"F": "female", "M": "male"}[p["sex"]]
    nir = next(i for i in got["identifier"] if i["system"] == ids.NIR_SYSTEM)
    assert nir["value"] == p["nir"]
    assert got["extension"][0]["valueAddress"]["extension"][0]["valueCoding"]["code"] \
        == p["birth_place_insee"]
    if p.get("used_name"):
        assert any(n["use"] == "usual" and n["family"] == p["used_name"] for n in got["name"])

    by_nir = client.resources("Patient").search(identifier=f"{ids.NIR_SYSTEM}|{p['nir']}").fetch()
    assert [r["id"] for r in by_nir] == [created["id"]]
    by_ext = client.resources("Patient").search(
        identifier=f"{ids.EXTERNAL_ID_SYSTEM}|{p['external_id']}").fetch()
    assert [r["id"] for r in by_ext] == [created["id"]]
    # names are folded (case, accents) exactly as at registration
    by_name = client.resources("Patient").search(
        family=p["birth_name"].upper(), given=p["first_names"][0].lower(),
        birthdate=p["birth_date"]).fetch()
    assert [r["id"] for r in by_name] == [created["id"]]
    assert client.resources("Patient").search(identifier=f"{ids.NIR_SYSTEM}|"
                                              "185057800608491").fetch() == []
    # every read went through the gate and was audited
    audit = server.lv.gate.audit
    pid = ids.from_fhir(created["id"], "pt")
    reads = [a for a, _, outcome_ in audit.entries  # type: ignore[attr-defined]
             if a.action == Action.READ and pid in a.patient_ids and outcome_ == "allowed"]
    assert len(reads) >= 4


def test_update_patient_keeps_other_categories(server: Running) -> None:
    client = server.client()
    p = next(people(1, seed=6))
    created = client.resource("Patient", **fhir_patient(p))
    created.save()
    cov = client.resource("Coverage", status="active",
                          type={"coding": [{"system": ids.ACT_CODE_SYSTEM, "code": "PUBLICPOL"}]},
                          beneficiary={"reference": f"Patient/{created['id']}"},
                          payor=[{"display": "CPAM de Lille-Douai"}], subscriberId="1234567890")
    cov.save()
    assert cov["id"] == f"{created['id']}-amo"
    validate_r4b(cov.serialize())

    created["name"] = [{"use": "official", "family": "Nouveau-Nom", "given": ["Jeanne"]}]
    created["telecom"] = [{"system": "email", "value": "jeanne.nouveau@example.org"}]
    created.save()
    got = client.reference("Patient", created["id"]).to_resource().serialize()
    assert got["name"] == [{"use": "official", "family": "Nouveau-Nom", "given": ["Jeanne"]}]
    assert got["telecom"] == [{"system": "email", "value": "jeanne.nouveau@example.org"}]
    covs = client.resources("Coverage").search(beneficiary=f"Patient/{created['id']}").fetch()
    assert [c["payor"][0]["display"] for c in covs] == ["CPAM de Lille-Douai"]
    assert covs[0]["subscriberId"] == "1234567890"
    # the blind index follows the update
    found = client.resources("Patient").search(family="NOUVEAU NOM", given="Jeanne",
                                               birthdate=p["birth_date"]).fetch()
    assert [r["id"] for r in found] == [created["id"]]


def test_practitioner_round_trip(server: Running) -> None:
    client = server.client()
    pr = client.resource("Practitioner", identifier=[{"system": ids.RPPS_SYSTEM,
                                                      "value": "10291417771"}],
                         name=[{"family": "Martin", "given": ["Anne"], "text": "Dr Anne Martin"}])
    pr.save()
    got = client.reference("Practitioner", pr["id"]).to_resource().serialize()
    validate_r4b(got)
    assert got["name"][0]["text"] == "Dr Anne Martin"
    found = client.resources("Practitioner").search(
        identifier=f"{ids.RPPS_SYSTEM}|10291417771").fetch()
    assert [f["id"] for f in found] == [pr["id"]]
    assert client.resources("Practitioner").search(
        identifier=f"{ids.RPPS_SYSTEM}|10291417789").fetch() == []
    # one directory entry per RPPS: a second one is a 409, and nothing is added
    r = httpx.post(f"{server.url}/Practitioner", headers=HDR, content=json.dumps({
        "resourceType": "Practitioner", "name": [{"text": "Dr A. Martin"}],
        "identifier": [{"system": ids.RPPS_SYSTEM, "value": "10291417771"}]}))
    assert r.status_code == 409, r.text
    assert "RPPS" in outcome(r)["issue"][0]["diagnostics"]
    assert len(client.resources("Practitioner").search(
        identifier=f"{ids.RPPS_SYSTEM}|10291417771").fetch()) == 1
    # a title without a text is kept in the display name, not dropped
    r = httpx.post(f"{server.url}/Practitioner", headers=HDR, content=json.dumps({
        "resourceType": "Practitioner", "name": [{"prefix": ["Dr"], "given": ["Paul"],
                                                  "family": "Roux"}]}))
    assert r.status_code == 201, r.text
    assert r.json()["name"][0]["text"] == "Dr Paul Roux"
    # an update keeping its own RPPS is fine
    got["name"][0]["text"] = "Dr Anne Martin-Leroy"
    r = httpx.put(f"{server.url}/Practitioner/{pr['id']}", headers=HDR, content=json.dumps(got))
    assert r.status_code == 200, r.text


def ids_found(srv: Running, rtype: str, **params: str) -> list[str]:
    r = httpx.get(f"{srv.url}/{rtype}", headers=HDR, params=params)
    assert r.status_code == 200, (params, r.text)
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []))


def refused(srv: Running, rtype: str, **params: str) -> dict[str, Any]:
    """The OperationOutcome of a search answered 400."""
    r = httpx.get(f"{srv.url}/{rtype}", headers=HDR, params=params)
    assert r.status_code == 400, (params, r.text)
    return outcome(r)


def test_identifier_search_ors_commas_and_refuses_malformed_values(server: Running) -> None:
    client = server.client()
    a, b = people(2, seed=14)
    made = []
    for p in (a, b):
        r = client.resource("Patient", **fhir_patient(p))
        r.save()
        made.append(r["id"])
    both = sorted(made)
    nir, ext = ids.NIR_SYSTEM, ids.EXTERNAL_ID_SYSTEM
    assert ids_found(server, "Patient", identifier=f"{nir}|{a['nir']},{nir}|{b['nir']}") == both
    assert ids_found(server, "Patient", identifier=f"{a['nir']},{ext}|{b['external_id']}") == both
    assert ids_found(server, "Patient", identifier=f"{b['external_id']},{a['external_id']}") \
        == both                                 # no system, not a NIR: the external id
    assert ids_found(server, "Patient", identifier=f"{nir}|{a['nir']},{nir}|185057800608491") \
        == [made[0]]                            # a well-formed NIR nobody has adds nobody
    # one malformed value is a 400 naming the parameter, never a silently shorter answer
    for bad in (f"{nir}|185057800608436",                     # control key
                f"{nir}|{a['nir']},{nir}|185057800608436",
                f"{nir}|{a['nir']},", f"|{a['nir']}", f"{nir}|", f"{nir}|{a['nir']}|x",
                f"urn:x|1,{nir}|{a['nir']}"):
        oo = refused(server, "Patient", identifier=bad)
        assert oo["issue"][0]["expression"] == ["identifier"], bad

    rpps = ids.RPPS_SYSTEM
    doctors = []
    for number in ("10291417771", "10988399506"):
        pr = client.resource("Practitioner", identifier=[{"system": rpps, "value": number}],
                             name=[{"text": f"Dr {number}"}])
        pr.save()
        doctors.append(pr["id"])
    assert ids_found(server, "Practitioner", identifier=f"{rpps}|10291417771,10988399506") \
        == sorted(doctors)
    r = httpx.get(f"{server.url}/Practitioner", headers=HDR,
                  params={"identifier": "10988399506,10291417771", "_count": "1"})
    assert r.json()["total"] == 2 and len(r.json()["entry"]) == 1
    for bad in ("10291417772", "10291417771,10291417772", f"{rpps}|", "|10291417771",
                f"urn:x|10291417771,{rpps}|10988399506"):
        oo = refused(server, "Practitioner", identifier=bad)
        assert oo["issue"][0]["expression"] == ["identifier"], bad


def test_an_invalid_birthdate_is_a_400_naming_it(server: Running) -> None:
    """A search value, not resource content: 400 (not the core's 422 ``birth_date``)."""
    for birth in ("1949-02-31", "1949-13-01", "2990-01-01", "1850-01-01", "1949",
                  "1949-02-28T10:00:00Z", "gt1949-02-28", "", "02/28/1949"):
        oo = refused(server, "Patient", family="Lemonnier", given="Noemi", birthdate=birth)
        assert oo["issue"][0]["expression"] == ["birthdate"], birth
        assert "birth_date" not in oo["issue"][0]["diagnostics"], birth


def test_name_search_says_what_it_cannot_match(server: Running) -> None:
    """Only the first given name is indexed and names match whole: an empty answer says so
    (an OperationOutcome entry, search mode outcome) instead of a bare 0; modifiers the
    index cannot honour (``:exact``) are refused, not ignored."""
    p = dict(next(people(1, seed=15)), first_names=["Noémi", "Océane"])
    created = server.client().resource("Patient", **fhir_patient(p))
    created.save()
    family, born = p["birth_name"], p["birth_date"]

    def search(**params: str) -> dict[str, Any]:
        r = httpx.get(f"{server.url}/Patient", headers=HDR, params=params)
        assert r.status_code == 200, (params, r.text)
        validate_r4b(r.json())
        return dict(r.json())

    def outcomes(bundle: dict[str, Any]) -> list[dict[str, Any]]:
        return [e["resource"] for e in bundle.get("entry", [])
                if e["search"]["mode"] == "outcome"]

    hit = search(family=family, given="noemi", birthdate=born)
    assert hit["total"] == 1 and outcomes(hit) == []
    assert [e["resource"]["id"] for e in hit["entry"]] == [created["id"]]
    for miss in (search(family=family, given="Océane", birthdate=born),     # second first name
                 search(family=family[:3], given="Noémi", birthdate=born),  # start of the name
                 search(family=family, given="Océane", birthdate=born, _count="0")):
        assert miss["total"] == 0
        [oo] = outcomes(miss)
        assert oo["issue"][0]["severity"] == "warning"
        assert oo["issue"][0]["expression"] == ["family", "given"]
        assert "first given name" in oo["issue"][0]["diagnostics"]
    # a FHIR client library keeps the outcome apart from the matches
    assert server.client().resources("Patient").search(
        family=family, given="Océane", birthdate=born).fetch() == []
    for modifier in ("family:exact", "given:exact", "family:contains", "given:missing"):
        r = httpx.get(f"{server.url}/Patient", headers=HDR, params=[
            (modifier, family.lower()), ("given", "Noémi"), ("birthdate", born)])
        assert r.status_code == 400, (modifier, r.text)
        assert outcome(r)["issue"][0]["expression"] == [modifier], modifier


def test_paging_follows_next_links(server: Running) -> None:
    client = server.client()
    base = next(people(1, seed=7))
    made = []
    for i in range(5):   # five homonyms born the same day
        p = dict(base, nir=None, external_id=f"HOM-{i}", phone=f"+3361234560{i}",
                 email=f"hom{i}@example.org")
        body = fhir_patient({**p, "nir": base["nir"]})
        body["identifier"] = [{"system": ids.EXTERNAL_ID_SYSTEM, "value": f"HOM-{i}"}]
        r = client.resource("Patient", **body)
        r.save()
        made.append(r["id"])
    q = client.resources("Patient").search(family=base["birth_name"], given=base["first_names"][0],
                                           birthdate=base["birth_date"]).limit(2)
    raw = q.fetch_raw()
    assert raw["total"] == 5 and len(raw["entry"]) == 2
    rels = {link["relation"] for link in raw["link"]}
    assert rels == {"self", "next"}
    validate_r4b(json.loads(json.dumps(raw)))
    assert sorted(r["id"] for r in q.fetch_all()) == sorted(made)
    assert q.count() == 5
    # _count is bounded
    r = httpx.get(f"{server.url}/Patient", headers=HDR,
                  params={"family": base["birth_name"], "given": base["first_names"][0],
                          "birthdate": base["birth_date"], "_count": "100000"})
    assert r.status_code == 200 and len(r.json()["entry"]) == 5


def test_paging_parameters_are_checked_and_previous_stays_in_range(server: Running) -> None:
    rpps = ("10291417771", "10988399506", "10000000009")
    for number in rpps:
        server.client().resource("Practitioner", identifier=[
            {"system": ids.RPPS_SYSTEM, "value": number}], name=[{"text": f"Dr {number}"}]).save()
    for name, value in (("_count", "-5"), ("_offset", "-3"), ("_count", "many"),
                        ("_offset", "1.5"), ("_offset", "")):
        oo = refused(server, "Practitioner", identifier=",".join(rpps), **{name: value})
        assert oo["issue"][0]["expression"] == [name], (name, value)

    def links(offset: int) -> dict[str, int]:
        r = httpx.get(f"{server.url}/Practitioner", headers=HDR,
                      params={"identifier": ",".join(rpps), "_count": "2",
                              "_offset": str(offset)})
        assert r.status_code == 200 and r.json()["total"] == 3, r.text
        return {link["relation"]: int(parse_qs(urlsplit(link["url"]).query)["_offset"][0])
                for link in r.json()["link"]}

    assert links(0) == {"self": 0, "next": 2}
    assert links(1) == {"self": 1, "previous": 0}
    assert links(2) == {"self": 2, "previous": 0}
    assert links(3) == {"self": 3, "previous": 1}
    assert links(100) == {"self": 100, "previous": 2}   # the last page with matches


def transaction_bundle(p: dict[str, Any]) -> dict[str, Any]:
    patient_url = "urn:uuid:6f1c1f0e-1111-4a4a-9b9b-000000000001"
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": patient_url, "resource": fhir_patient(p),
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:6f1c1f0e-1111-4a4a-9b9b-000000000002",
         "resource": {"resourceType": "Coverage", "status": "active",
                      "type": {"coding": [{"system": ids.ACT_CODE_SYSTEM, "code": "HIP"}]},
                      "beneficiary": {"reference": patient_url},
                      "payor": [{"display": "MGEN"}]},
         "request": {"method": "POST", "url": "Coverage"}},
        {"resource": {"resourceType": "Practitioner",
                      "identifier": [{"system": ids.RPPS_SYSTEM, "value": "10291417771"}],
                      "name": [{"text": "Dr Paul Durand"}]},
         "request": {"method": "POST", "url": "Practitioner"}},
    ]}


def test_transaction_resolves_references(server: Running) -> None:
    client = server.client()
    p = next(people(1, seed=8))
    before = count_patients(server)
    resp = client.execute("", method="post", data=transaction_bundle(p))
    resp = json.loads(json.dumps(resp))
    validate_r4b(resp)
    assert resp["type"] == "transaction-response"
    assert [e["response"]["status"] for e in resp["entry"]] == ["201 Created"] * 3
    pat_loc = resp["entry"][0]["response"]["location"]
    pid = pat_loc.split("/")[1]
    assert count_patients(server) == before + 1
    covs = client.resources("Coverage").search(patient=f"Patient/{pid}").fetch()
    assert [c["payor"][0]["display"] for c in covs] == ["MGEN"]


@pytest.mark.parametrize("breakage", ["bad-birthdate", "bad-nir", "dangling-ref", "bad-type",
                                      "unknown-element"])
def test_transaction_with_one_invalid_entry_stores_nothing(server: Running, breakage: str) -> None:
    p = next(people(1, seed=9))
    bundle = transaction_bundle(p)
    cov = bundle["entry"][1]["resource"]
    if breakage == "bad-birthdate":       # caught by the R4B model at the door
        bundle["entry"][0]["resource"]["birthDate"] = "1985-13-45"
    elif breakage == "bad-nir":           # caught by the core's validation (control key)
        bundle["entry"][0]["resource"]["identifier"][0]["value"] = p["nir"][:-2] + "00"
    elif breakage == "dangling-ref":
        cov["beneficiary"] = {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}
    elif breakage == "bad-type":          # last entry, after the patient was written
        cov["type"] = {"text": "nothing"}
    else:
        bundle["entry"][2]["resource"]["favouriteColour"] = "blue"
    before = count_patients(server)
    r = httpx.post(server.url, headers=HDR, content=json.dumps(bundle))
    assert r.status_code in (400, 422)
    oo = outcome(r)
    assert all(i["expression"][0].startswith("Bundle.entry[") for i in oo["issue"])
    if breakage == "dangling-ref":        # the element named, not only the entry
        assert [i["expression"] for i in oo["issue"]] == [
            ["Bundle.entry[1].resource.beneficiary.reference"]]
    assert count_patients(server) == before
    client = server.client()
    assert client.resources("Patient").search(
        identifier=f"{ids.EXTERNAL_ID_SYSTEM}|{p['external_id']}").fetch() == []
    assert client.resources("Practitioner").search(
        identifier=f"{ids.RPPS_SYSTEM}|10291417771").fetch() == []


def test_operation_outcomes_on_bad_input(server: Running) -> None:
    url = server.url
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/Patient", {"content": b"{not json"}, 400),
        ("POST", "/Patient", {"content": b"[]"}, 400),
        ("POST", "/Patient", {"content": json.dumps({"resourceType": "Patient",
                                                     "birthDate": "yesterday"})}, 422),
        ("POST", "/Patient", {"content": json.dumps({"resourceType": "Observation"})}, 400),
        ("POST", "/Patient", {"content": json.dumps(
            {"resourceType": "Patient", "name": [{"use": "official", "family": "X"}],
             "birthDate": "1980-01-01", "gender": "female"})}, 422),
        ("POST", "/Patient", {"content": json.dumps(
            {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}],
             "name": [{"use": "official", "family": "Dupont", "given": ["Jean"]}],
             "birthDate": "1980-01-01"})}, 422),
        ("GET", "/Patient", {"params": {"family": "Dupont"}}, 400),
        ("GET", "/Patient", {}, 400),
        ("GET", "/Patient", {"params": {"name": "Dupont"}}, 400),
        ("GET", "/Patient", {"params": {"identifier": "urn:x|1"}}, 400),
        ("GET", "/Patient", {"params": {"family": "Dupont", "given": "Jean",
                                        "birthdate": "gt1980-01-01"}}, 400),
        ("GET", "/Patient", {"params": {"_id": "pt-x", "_count": "many"}}, 400),
        ("GET", "/Patient/pt-0000000000000000000000000v", {}, 404),
        ("GET", "/Patient/bad%20id%21", {}, 404),
        ("GET", "/Medication/1", {}, 404),
        ("DELETE", "/Patient/pt-0000000000000000000000000v", {}, 405),
        ("POST", "", {"content": json.dumps({"resourceType": "Bundle", "type": "batch"})}, 400),
        ("POST", "", {"content": json.dumps({"resourceType": "Patient"})}, 400),
        ("POST", "", {"content": json.dumps({"resourceType": "Bundle", "type": "transaction",
                                             "entry": [{"resource": {"resourceType": "Patient"},
                                                        "request": {"method": "DELETE",
                                                                    "url": "Patient/x"}}]})},
         400),
        ("PUT", "/Patient/pt-0000000000000000000000000v", {"content": json.dumps(
            {"resourceType": "Patient", "id": "pt-other"})}, 400),
    ]
    for method, path, kw, status in cases:
        r = httpx.request(method, url + path, headers=HDR, **kw)
        assert r.status_code == status, (method, path, kw, r.status_code, r.text)
        oo = outcome(r)
        assert oo["issue"][0]["diagnostics"]
    r = httpx.post(url + "/Patient", headers={**HDR, "Content-Type": "text/plain"},
                   content=b"x")
    assert r.status_code == 415
    outcome(r)


def test_authentication_required(server: Running) -> None:
    with pytest.raises(AuthorizationError):
        server.client(token="wrong").resources("Patient").search(_id="pt-x").fetch()
    for path in ("/metadata", "/Patient/pt-0000000000000000000000000v", "/Patient"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        outcome(r)


def test_other_laboratory_is_not_found(server: Running) -> None:
    """A patient of another laboratory answers exactly like an absent one."""
    import random

    from labvault.synthetic import make_finess
    op = Actor.operator()
    other = server.lv.tenants.add(op, "Autre labo", make_finess(random.Random(3))).tenant_id
    pid = server.lv.patients.register(op, other, next(people(1, seed=10)))
    with pytest.raises(ResourceNotFound):
        server.client().reference("Patient", ids.to_fhir(pid)).to_resource()
    with pytest.raises(ResourceNotFound):
        server.client().reference("Coverage", ids.to_fhir(pid) + "-amo").to_resource()


def test_capability_statement(server: Running) -> None:
    r = httpx.get(server.url + "/metadata", headers=HDR)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    cs = r.json()
    validate_r4b(cs)
    types = {res["type"] for res in cs["rest"][0]["resource"]}
    assert {"Patient", "Practitioner", "Coverage"} <= types
    assert cs["fhirVersion"] == "4.0.1"
    spec = next(res for res in cs["rest"][0]["resource"] if res["type"] == "Specimen")
    assert "update" not in {i["code"] for i in spec["interaction"]}
    pat = next(res for res in cs["rest"][0]["resource"] if res["type"] == "Patient")
    assert {p["name"] for p in pat["searchParam"]} >= {"identifier", "family", "given",
                                                       "birthdate"}


def test_validation_error_is_precise(server: Running) -> None:
    p = next(people(1, seed=11))
    body = fhir_patient(p)
    body2 = copy.deepcopy(body)
    body2["telecom"][0]["system"] = "pager"
    r = httpx.post(server.url + "/Patient", headers=HDR, content=json.dumps(body2))
    assert r.status_code == 422
    assert outcome(r)["issue"][0]["expression"] == ["Patient.telecom[0].system"]


def test_policy_denial_is_an_operation_outcome(server: Running) -> None:
    """A lab administrator manages accounts, not patients: 403, nothing opened."""
    p = next(people(1, seed=12))
    created = server.client().resource("Patient", **fhir_patient(p))
    created.save()
    hdr = {**HDR, "Authorization": f"Bearer {ADMIN_TOKEN}"}
    for path, params in ((f"/Patient/{created['id']}", {}),
                         ("/Patient", {"identifier": f"{ids.NIR_SYSTEM}|{p['nir']}"}),
                         (f"/Coverage/{created['id']}-amo", {})):
        r = httpx.get(server.url + path, headers=hdr, params=params)
        assert r.status_code == 403, (path, r.text)
        assert p["birth_name"] not in r.text
        assert outcome(r)["issue"][0]["code"] == "forbidden"
    r = httpx.post(server.url + "/Patient", headers=hdr,
                   content=json.dumps(fhir_patient(next(people(1, seed=13)))))
    assert r.status_code == 403
    outcome(r)
