"""Conditional create (http.html#ccreate) of Patient and Practitioner by identifier:
``If-None-Exist`` on a POST, ``ifNoneExist`` on a transaction entry. No match: created
(201); one match: nothing created, the existing resource (200, its Location and ETag; in a
Bundle the ``urn:uuid:`` references point to it); several: 412. For a patient the match
is an audited read, and an identity that differs from the registered one is a 409 that
stores nothing and tells nothing of the stored identity (identity vigilance)."""

from __future__ import annotations

import copy
import json
import random
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from labvault.access.policy import RULES, R, TablePolicy
from labvault.domain.actors import Actor
from labvault.domain.categories import Action
from labvault.interop.fhir import ids
from labvault.interop.fhir.samples import visit_bundle
from labvault.services.audit import audit_of, install_audit
from labvault.store import repositories as repo
from labvault.store import repositories_lab as lrepo
from labvault.synthetic import make_finess, make_rpps, people
from tests.fhir.conftest import ADMIN_TOKEN, TOKEN, Running, fhir_patient, validate_r4b
from tests.fhir.test_fhir_rest import outcome

HDR = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}


def person(seed: int) -> dict[str, Any]:
    return dict(next(people(1, seed=seed)))


def by_nir(p: dict[str, Any]) -> str:
    return f"identifier={ids.NIR_SYSTEM}|{p['nir']}"


def by_ext(p: dict[str, Any]) -> str:
    return f"identifier={ids.EXTERNAL_ID_SYSTEM}|{p['external_id']}"


def post(srv: Running, body: dict[str, Any], condition: str | None = None,
         token: str = TOKEN, rtype: str = "Patient") -> httpx.Response:
    headers = {**HDR, "Authorization": f"Bearer {token}"}
    if condition is not None:
        headers["If-None-Exist"] = condition
    return httpx.post(f"{srv.url}/{rtype}", headers=headers, content=json.dumps(body))


def bundle(srv: Running, b: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.url, headers=HDR, content=json.dumps(b))


def counts(srv: Running, tenant: str | None = None) -> tuple[int, int]:
    t = tenant or srv.actor.tenant_id
    assert t is not None
    with srv.lv.begin() as conn:
        return repo.count_patients(conn, t), len(lrepo.orders(conn, t, limit=10_000))


def read(srv: Running, path: str) -> httpx.Response:
    r = httpx.get(f"{srv.url}/{path}", headers=HDR)
    assert r.status_code == 200, r.text
    return r


def registered(srv: Running, seed: int) -> tuple[dict[str, Any], str]:
    """A person registered by a plain create: (the person, its FHIR id)."""
    p = person(seed)
    r = post(srv, fhir_patient(p))
    assert r.status_code == 201, r.text
    return p, r.json()["id"]


def conditional_visit(p: dict[str, Any], n: int, condition: str) -> dict[str, Any]:
    b = visit_bundle(p, n)
    b["entry"][0]["request"]["ifNoneExist"] = condition
    return b


# -- single POST ----------------------------------------------------------------------------
def test_a_known_patient_is_not_created_again(server: Running) -> None:
    p, fid = registered(server, 301)
    before = counts(server)
    as_read = read(server, f"Patient/{fid}")
    for condition in (by_nir(p), by_ext(p), quote(by_nir(p), safe="="),
                      f"Patient?{by_nir(p)}", p["nir"].join(("identifier=", ""))):
        r = post(server, fhir_patient(p), condition)
        assert r.status_code == 200, (condition, r.text)
        assert r.headers["location"] == f"{server.url}/Patient/{fid}"
        assert r.headers["etag"] == as_read.headers["etag"]
        assert r.json() == as_read.json()                   # the body a read gives
        validate_r4b(r.json())
    assert counts(server) == before                         # nothing created

    # no match: created, as without the condition
    q = person(302)
    r = post(server, fhir_patient(q), by_nir(q))
    assert r.status_code == 201, r.text
    assert r.json()["id"] != fid
    assert r.headers["location"] == f"{server.url}/Patient/{r.json()['id']}"
    assert counts(server) == (before[0] + 1, before[1])


def test_names_are_compared_folded_as_the_indexes_fold_them(server: Running) -> None:
    """Case, accents, spaces and punctuation do not make another identity; a used name
    or an address sent differently is not an identity trait (the record is not changed)."""
    p, fid = registered(server, 303)
    body = fhir_patient(p)
    official = body["name"][0]
    official["family"] = " " + official["family"].upper().replace("E", "É") + "."
    official["given"] = [official["given"][0].lower()]
    body["name"] = [{"use": "usual", "family": "Autrenom"}, official]
    body["address"][0]["city"] = "Ailleurs"
    r = post(server, body, by_nir(p))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == fid
    assert r.json()["address"][0]["city"] == p["address"]["city"]       # not updated


def _other_day(day: str) -> str:
    """Another day of the same month (the NIR encodes the year and month only)."""
    return day[:8] + ("15" if day[8:] != "15" else "16")


IDENTITY_CHANGES = {
    # trait: (change the resource, the element named, the condition)
    "birthDate": (lambda b: b.update(birthDate=_other_day(b["birthDate"])),
                  "birthDate", by_nir),
    "family": (lambda b: b["name"][0].update(family=b["name"][0]["family"] + "-Durand"),
               "name[0].family", by_nir),
    "given": (lambda b: b["name"][0].update(given=["Zéphyrin", *b["name"][0]["given"]]),
              "name[0].given[0]", by_nir),
    # the NIR encodes the sex: sent without it, found by the laboratory's id
    "gender": (lambda b: b.update(gender={"male": "female", "female": "male"}[b["gender"]],
                                  identifier=b["identifier"][1:]),
               "gender", by_ext),
}


def _assert_tells_nothing_stored(r: httpx.Response, p: dict[str, Any], fid: str) -> None:
    text = r.text
    for value in (p["birth_name"], p["first_names"][0], p["birth_date"], p["nir"], fid,
                  p["address"]["city"]):
        assert value not in text, value


@pytest.mark.parametrize("trait", sorted(IDENTITY_CHANGES))
def test_a_different_identity_is_refused_and_stores_nothing(server: Running,
                                                            trait: str) -> None:
    change, element, condition = IDENTITY_CHANGES[trait]
    p, fid = registered(server, 310 + sorted(IDENTITY_CHANGES).index(trait))
    sent = fhir_patient(p)
    change(sent)
    before = counts(server)
    as_read = read(server, f"Patient/{fid}")

    r = post(server, sent, condition(p))
    assert r.status_code == 409, r.text
    iss = outcome(r)["issue"]
    assert len(iss) == 1 and iss[0]["code"] == "conflict"
    assert iss[0]["expression"] == [f"Patient.{element}"]
    assert "identity differs" in iss[0]["diagnostics"]
    assert "check the patient's identity" in iss[0]["diagnostics"]
    _assert_tells_nothing_stored(r, p, fid)

    b = visit_bundle(p, 400 + sorted(IDENTITY_CHANGES).index(trait))
    b["entry"][0]["resource"] = sent
    b["entry"][0]["request"]["ifNoneExist"] = condition(p)
    r = bundle(server, b)
    assert r.status_code == 409, r.text
    iss = outcome(r)["issue"]
    assert iss[0]["expression"] == [f"Bundle.entry[0].resource.{element}"]
    _assert_tells_nothing_stored(r, p, fid)

    assert counts(server) == before                      # no patient, no order
    assert read(server, f"Patient/{fid}").json() == as_read.json()


def test_every_differing_element_is_named(server: Running) -> None:
    p, _fid = registered(server, 320)
    sent = fhir_patient(p)
    IDENTITY_CHANGES["birthDate"][0](sent)
    IDENTITY_CHANGES["family"][0](sent)
    r = post(server, sent, by_nir(p))
    assert r.status_code == 409, r.text
    assert outcome(r)["issue"][0]["expression"] == ["Patient.name[0].family",
                                                    "Patient.birthDate"]
    # an identifier both sides carry and that differs: the laboratory's id, found by NIR
    sent = fhir_patient(p)
    sent["identifier"][1]["value"] = "AUTRE-" + p["external_id"]
    r = post(server, sent, by_nir(p))
    assert r.status_code == 409, r.text
    assert outcome(r)["issue"][0]["expression"] == ["Patient.identifier[1]"]
    assert p["external_id"] not in r.text


# -- several matches --------------------------------------------------------------------------
def test_a_condition_that_names_several_patients_is_412(server: Running) -> None:
    """A NIR and an external id are each unique in a laboratory, so one identifier never
    names two patients; alternatives (comma: or, as in the search) can."""
    a, _ = registered(server, 330)
    b, _ = registered(server, 331)
    before = counts(server)
    condition = (f"identifier={ids.NIR_SYSTEM}|{a['nir']},"
                 f"{ids.EXTERNAL_ID_SYSTEM}|{b['external_id']}")
    r = post(server, fhir_patient(person(332)), condition)
    assert r.status_code == 412, r.text
    assert outcome(r)["issue"][0]["code"] == "multiple-matches"
    r = bundle(server, conditional_visit(person(332), 332, condition))
    assert r.status_code == 412, r.text
    assert counts(server) == before


# -- what a condition may be ------------------------------------------------------------------
@pytest.mark.parametrize("condition", [
    "family=Martin", "birthdate=1980-01-01", "family=Martin&given=Paul&birthdate=1980-01-01",
    f"identifier={ids.NIR_SYSTEM}|{{nir}}&family=Martin",
    f"identifier={ids.NIR_SYSTEM}|{{nir}}&identifier={ids.EXTERNAL_ID_SYSTEM}|X1",
    f"identifier:exact={ids.NIR_SYSTEM}|{{nir}}", "_id=pt-0000000000000000000000000v",
    "identifier=urn:oid:1.2.3|1", f"identifier={ids.NIR_SYSTEM}|", "identifier=",
    f"identifier={ids.NIR_SYSTEM}|185057800608492", "", "_count=1",
])
def test_other_conditions_are_400_and_create_nothing(server: Running, condition: str) -> None:
    p = person(340)
    condition = condition.replace("{nir}", p["nir"])
    before = counts(server)
    r = post(server, fhir_patient(p), condition)
    assert r.status_code == 400, r.text
    assert outcome(r)["issue"][0]["expression"] == ["If-None-Exist"]
    r = bundle(server, conditional_visit(p, 340, condition))
    assert r.status_code == 400, r.text
    assert outcome(r)["issue"][0]["expression"] == ["Bundle.entry[0].request.ifNoneExist"]
    assert counts(server) == before


def test_other_types_and_create_conditions_are_refused(server: Running) -> None:
    p, fid = registered(server, 341)
    sr = visit_bundle(p, 341)["entry"][1]["resource"]
    sr["subject"] = {"reference": f"Patient/{fid}"}
    r = post(server, sr, "identifier=urn:labvault:placer-order-number|PLC-1",
             rtype="ServiceRequest")
    assert r.status_code == 400 and "not offered for ServiceRequest" in r.text
    before = counts(server)
    r = httpx.post(f"{server.url}/ServiceRequest?status=active", headers=HDR,
                   content=json.dumps(sr))
    assert r.status_code == 400, r.text          # a query on a create: never ignored
    assert counts(server) == before
    r = httpx.post(f"{server.url}/Patient", content=json.dumps(fhir_patient(p)),
                   headers={**HDR, "If-None-Match": "*"})
    assert r.status_code == 400 and outcome(r)["issue"][0]["expression"] == ["If-None-Match"]
    r = httpx.post(f"{server.url}/Patient?{by_nir(p)}", content=json.dumps(fhir_patient(p)),
                   headers={**HDR, "If-None-Exist": by_nir(p)})
    assert r.status_code == 400                          # one condition, not two
    b = visit_bundle(p, 342)
    b["entry"][0]["request"]["url"] = f"Patient?{by_nir(p)}"    # not where a condition goes
    r = bundle(server, b)
    assert r.status_code == 400, r.text
    assert outcome(r)["issue"][0]["expression"] == ["Bundle.entry[0].request.url"]
    b = visit_bundle(p, 342)
    b["entry"][1]["request"]["ifNoneExist"] = "identifier=urn:labvault:placer-order-number|1"
    r = bundle(server, b)
    assert r.status_code == 400, r.text
    assert outcome(r)["issue"][0]["expression"] == ["Bundle.entry[1].request.ifNoneExist"]


# -- transaction Bundles -----------------------------------------------------------------------
def test_an_order_for_a_returning_patient_in_one_bundle(server: Running) -> None:
    """The DPI's Bundle: Patient (ifNoneExist its NIR) + ServiceRequest + Specimen + ...
    The patient is found, not created; every urn:uuid reference to it is the existing
    Patient; the entry's response is 200 OK with the location and ETag of its version."""
    p = person(350)
    first = bundle(server, conditional_visit(p, 350, by_nir(p)))
    assert first.status_code == 200, first.text
    assert first.json()["entry"][0]["response"]["status"] == "201 Created"
    pid = first.json()["entry"][0]["response"]["location"].split("/")[1]
    before = counts(server)

    r = bundle(server, conditional_visit(p, 351, by_nir(p)))
    assert r.status_code == 200, r.text
    validate_r4b(r.json())
    entries = r.json()["entry"]
    pat = entries[0]["response"]
    assert pat["status"] == "200 OK"
    assert pat["location"] == f"Patient/{pid}"
    as_read = read(server, f"Patient/{pid}")
    assert pat["etag"] == as_read.headers["etag"]
    assert pat["lastModified"] == as_read.json()["meta"]["lastUpdated"]
    assert [e["response"]["status"] for e in entries[1:]] == ["201 Created"] * 8
    assert counts(server) == (before[0], before[1] + 1)      # the order, not the patient
    order = read(server, entries[1]["response"]["location"]).json()
    assert order["subject"]["reference"] == f"Patient/{pid}"
    for e in entries[2:]:
        res = read(server, e["response"]["location"]).json()
        assert res["subject"]["reference"] == f"Patient/{pid}"


def test_a_foreign_laboratorys_patient_is_never_matched(server: Running) -> None:
    """Tenant scoping as in the search: the same NIR registered in another laboratory
    (with another identity even) is not found; the patient is created in the caller's
    laboratory, and nothing of the other one shows."""
    op = Actor.operator()
    other = server.lv.tenants.add(op, "Autre labo", make_finess(random.Random(360))).tenant_id
    p = person(360)
    theirs = dict(p, birth_name="Autrenom", first_names=["Autreprenom"])
    their_id = server.lv.patients.register(op, other, theirs)
    before, their_before = counts(server), counts(server, other)
    r = post(server, fhir_patient(p), by_nir(p))
    assert r.status_code == 201, r.text
    assert ids.to_fhir(their_id) not in r.text and "Autrenom" not in r.text
    mine = r.json()["id"]
    assert mine != ids.to_fhir(their_id)
    r = bundle(server, conditional_visit(p, 361, by_nir(p)))
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["location"] == f"Patient/{mine}"
    assert ids.to_fhir(their_id) not in r.text
    assert counts(server)[0] == before[0] + 1
    assert counts(server, other) == their_before


# -- the match is a read through the gate ----------------------------------------------------
def test_the_match_is_one_audited_read(server: Running) -> None:
    p, fid = registered(server, 370)
    pid = ids.from_fhir(fid, "pt")
    audit = server.lv.gate.audit
    before = len(audit.entries)  # type: ignore[attr-defined]
    r = post(server, fhir_patient(p), by_nir(p))
    assert r.status_code == 200, r.text
    made = audit.entries[before:]  # type: ignore[attr-defined]
    assert [(a.action, out) for a, _d, out in made] == [(Action.SEARCH, "allowed"),
                                                         (Action.READ, "allowed")]
    assert all(a.patient_ids == (pid,) and a.resource == "patient" for a, _d, _o in made)
    assert not any(a.action == Action.WRITE for a, _d, _o in made)

    # in a Bundle, one read more than the same order sent for Patient/<id> (the
    # response's etag costs no other)
    def patient_reads(b: dict[str, Any]) -> int:
        start = len(audit.entries)  # type: ignore[attr-defined]
        r = bundle(server, b)
        assert r.status_code == 200, r.text
        return sum(1 for a, _d, out in audit.entries[start:]  # type: ignore[attr-defined]
                   if a.action == Action.READ and a.resource == "patient"
                   and out == "allowed" and a.patient_ids == (pid,))

    plain = visit_bundle(p, 371)
    urn = plain["entry"].pop(0)["fullUrl"]
    plain = json.loads(json.dumps(plain).replace(urn, f"Patient/{fid}"))
    assert patient_reads(conditional_visit(p, 372, by_nir(p))) == patient_reads(plain) + 1


def test_a_refused_identity_stays_in_the_audit_trail(server: Running) -> None:
    """The 409 stores nothing, but the record was opened to compare it: that read is in
    the laboratory's chain (the match runs in a transaction of its own that commits)."""
    install_audit(server.lv)
    p, fid = registered(server, 374)
    pid = ids.from_fhir(fid, "pt")
    log = audit_of(server.lv)
    tenant = server.actor.tenant_id or ""

    def reads() -> int:
        events = log.fhir_search(Actor.operator(), tenant, patient_id=pid)
        return sum(1 for e in events if e["action"] == "R"
                   and e["agent"][0]["who"]["identifier"]["value"] == "acc_test")

    before = reads()
    sent = fhir_patient(p)
    IDENTITY_CHANGES["family"][0](sent)
    assert post(server, sent, by_nir(p)).status_code == 409
    b = visit_bundle(p, 375)
    b["entry"][0].update(resource=sent)
    b["entry"][0]["request"]["ifNoneExist"] = by_nir(p)
    assert bundle(server, b).status_code == 409
    assert reads() == before + 2          # the read of each 409
    assert log.verify()["ok"]


def test_without_patient_read_the_match_is_refused(server: Running) -> None:
    """An account that may register patients but not read them cannot have one matched
    (the match is a read): the usual 403, nothing created, nothing told."""
    server.lv.gate.policy = TablePolicy((*RULES, R("registrar", "patient", "w", "ICVK",
                                                   "care,administration")))
    server.tokens["test-token-registrar"] = Actor(
        kind="staff", id="acc_registrar", tenant_id=server.actor.tenant_id,
        roles=frozenset({"registrar"}), display="Registrar", client="127.0.0.1")
    p, _fid = registered(server, 380)
    before = counts(server)
    for token in ("test-token-registrar", ADMIN_TOKEN):
        r = post(server, fhir_patient(p), by_nir(p), token=token)
        assert r.status_code == 403, r.text
        assert outcome(r)["issue"][0]["code"] == "forbidden"
        _assert_tells_nothing_stored(r, p, _fid)
    assert counts(server) == before
    # the refusal was the match's search, recorded as such
    refused = [a for a, _d, out in server.lv.gate.audit.entries  # type: ignore[attr-defined]
               if a.actor.id == "acc_registrar" and out == "denied"]
    assert [a.action for a in refused] == [Action.SEARCH]


# -- Practitioner --------------------------------------------------------------------------------
def practitioner(rpps: str, name: str = "Dr Anne Martin") -> dict[str, Any]:
    return {"resourceType": "Practitioner", "name": [{"text": name}],
            "identifier": [{"system": ids.RPPS_SYSTEM, "value": rpps}]}


def test_a_known_practitioner_is_not_added_twice(server: Running) -> None:
    rng = random.Random(390)
    rpps, other = make_rpps(rng), make_rpps(rng)
    r = post(server, practitioner(rpps), rtype="Practitioner")
    assert r.status_code == 201, r.text
    prid = r.json()["id"]
    assert post(server, practitioner(rpps), rtype="Practitioner").status_code == 409
    cond = f"identifier={ids.RPPS_SYSTEM}|{rpps}"
    r = post(server, practitioner(rpps), cond, rtype="Practitioner")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == prid
    assert r.headers["etag"] == read(server, f"Practitioner/{prid}").headers["etag"]
    r = post(server, practitioner(other, "Dr Paul Petit"),
             f"identifier={ids.RPPS_SYSTEM}|{other}", rtype="Practitioner")
    assert r.status_code == 201, r.text
    r = post(server, practitioner(make_rpps(rng)),
             f"identifier={ids.RPPS_SYSTEM}|{rpps},{other}", rtype="Practitioner")
    assert r.status_code == 412, r.text
    for bad in ("name=Martin", f"identifier={ids.NIR_SYSTEM}|1", "identifier=12345"):
        r = post(server, practitioner(rpps), bad, rtype="Practitioner")
        assert r.status_code == 400 and outcome(r)["issue"][0]["expression"] == [
            "If-None-Exist"], bad

    # in a Bundle: the requester is the existing entry
    p = person(391)
    b = conditional_visit(p, 391, by_nir(p))
    doctor = "urn:uuid:00000000-0000-4000-8000-000000000391"
    b["entry"].insert(0, {"fullUrl": doctor, "resource": practitioner(rpps),
                          "request": {"method": "POST", "url": "Practitioner",
                                      "ifNoneExist": cond}})
    b["entry"][2]["resource"]["requester"] = {"reference": doctor}
    r = bundle(server, b)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[0]["response"]["location"] == f"Practitioner/{prid}"
    order = read(server, entries[2]["response"]["location"]).json()
    # the order keeps its prescriber as the directory entry named it (name and RPPS)
    assert order["requester"]["identifier"]["value"] == rpps
    assert order["requester"]["display"] == "Dr Anne Martin"


# -- through a real FHIR client ----------------------------------------------------------------
def test_conditional_create_through_fhirpy(server: Running) -> None:
    """fhirpy sends the condition as If-None-Exist (a client's extra header) or, with
    ``create(**search)`` / ``get_or_create``, in the URL: both are the condition."""
    p, fid = registered(server, 395)
    before = counts(server)
    client = server.client(headers={"If-None-Exist": by_nir(p)})
    res = client.resource("Patient", **fhir_patient(p))
    res.save()
    assert res["id"] == fid
    got, created = server.client().resources("Patient").search(
        identifier=f"{ids.NIR_SYSTEM}|{p['nir']}").get_or_create(
        server.client().resource("Patient", **fhir_patient(p)))
    assert (got["id"], created) == (fid, False)
    again = server.client().resource("Patient", **fhir_patient(p))
    again.create(identifier=f"{ids.EXTERNAL_ID_SYSTEM}|{p['external_id']}")
    assert again["id"] == fid
    assert counts(server) == before
    q = person(396)
    new, created = server.client().resources("Patient").search(
        identifier=f"{ids.NIR_SYSTEM}|{q['nir']}").get_or_create(
        server.client().resource("Patient", **fhir_patient(q)))
    assert created and new["id"] != fid
    validate_r4b(copy.deepcopy(new.serialize()))
    assert counts(server)[0] == before[0] + 1


def test_the_capability_statement_offers_it_for_patient_and_practitioner(
        server: Running) -> None:
    cs = httpx.get(f"{server.url}/metadata", headers=HDR).json()
    got = {r["type"]: r["conditionalCreate"] for r in cs["rest"][0]["resource"]}
    assert {t for t, offered in got.items() if offered} == {"Patient", "Practitioner"}


def test_the_documented_example_does_what_the_documentation_says(server: Running) -> None:
    """docs/fhir.md "Conditional create": the example Bundle creates the patient once,
    then orders for it; the same NIR with another birth date is the 409 it names."""
    from pathlib import Path
    text = Path(__file__).resolve().parents[2].joinpath("docs", "fhir.md").read_text()
    section = text[text.index("### Conditional create"):]
    example = json.loads(section[section.index("```json") + 7:section.index("```\n")])
    first = bundle(server, example)
    assert first.status_code == 200, first.text
    assert first.json()["entry"][0]["response"]["status"] == "201 Created"
    pid = first.json()["entry"][0]["response"]["location"]
    before = counts(server)
    again = bundle(server, example)
    assert again.status_code == 200, again.text
    assert again.json()["entry"][0]["response"]["status"] == "200 OK"
    assert again.json()["entry"][0]["response"]["location"] == pid
    order = read(server, again.json()["entry"][1]["response"]["location"]).json()
    assert order["subject"]["reference"] == pid
    assert counts(server) == (before[0], before[1] + 1)
    other_day = json.loads(json.dumps(example).replace('"1985-05-12"', '"1985-05-21"'))
    r = bundle(server, other_day)
    assert r.status_code == 409, r.text
    assert outcome(r)["issue"][0]["expression"] == ["Bundle.entry[0].resource.birthDate"]
    assert counts(server) == (before[0], before[1] + 1)
