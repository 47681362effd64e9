"""Orders created, specimens received and results entered over the REST door
(``POST /api/v1/orders``, ``…/{id}/specimens``, ``…/{id}/results``): what a lab's own
tools (a middleware, a script at the desk) need without FHIR or HL7."""

from __future__ import annotations

import itertools
import json
from typing import Any

from fastapi.testclient import TestClient

from labvault.api.instants import NO_OFFSET, WITH_OFFSET
from labvault.domain.categories import Action
from tests.access.conftest import World
from tests.api.helpers import bearer as _bearer
from tests.api.helpers import problem as _problem
from tests.web.helpers import NORMAL, REQ, SPEC

_TUBE = itertools.count(1)




def _tube() -> dict[str, Any]:
    return {**SPEC, "accession_number": f"API-{next(_TUBE)}"}


def _create(client: TestClient, headers: dict[str, str], patient_id: str,
            specimen: dict[str, Any] | None = None, **request: Any) -> Any:
    body: dict[str, Any] = {"patient_id": patient_id, "request": {**REQ, **request}}
    if specimen is not None:
        body["specimen"] = specimen
    return client.post("/api/v1/orders", json=body, headers=headers)


def test_create_with_specimen_the_tube_number_is_the_filler_number(
        world: World, client: TestClient) -> None:
    a = world.a
    tube = _tube()
    r = _create(client, _bearer(world, a, "reception"), a.patients[0], tube)
    assert r.status_code == 201, r.text
    order = r.json()
    assert r.headers["location"] == f"/api/v1/orders/{order['id']}"
    assert order["status"] == "received" and order["patient_id"] == a.patients[0]
    assert order["filler_number"] == tube["accession_number"]
    assert order["tests"] == REQ["tests"] and order["prescriber"] == REQ["prescriber"]
    assert [s["accession_number"] for s in order["specimens"]] == [tube["accession_number"]]
    assert set(order["steps"]) == {"registered", "received"}
    writes = [(acc.resource, outcome) for acc, _d, outcome in world.lv.gate.audit.entries  # type: ignore[attr-defined]
              if acc.action == Action.WRITE and acc.patient_ids == (a.patients[0],)]
    assert ("order", "allowed") in writes
    # a filler number given with the order stays the order's; the tube is only a tube
    own = _create(client, _bearer(world, a, "biologist"), a.patients[0], _tube(),
                  filler_number="LAB-REST-1")
    assert own.status_code == 201 and own.json()["filler_number"] == "LAB-REST-1"


def test_create_without_specimen_then_receive_it(world: World, client: TestClient) -> None:
    a = world.a
    r = _create(client, _bearer(world, a, "reception"), a.patients[0])
    assert r.status_code == 201 and r.json()["status"] == "registered", r.text
    assert r.json()["specimens"] == [] and r.json()["filler_number"] is None
    oid = r.json()["id"]
    tube = _tube()
    url = f"/api/v1/orders/{oid}/specimens"
    got = client.post(url, json=tube, headers=_bearer(world, a, "technician"))
    assert got.status_code == 201, got.text
    assert got.json()["order_id"] == oid and got.json()["status"] == "available"
    assert got.json()["accession_number"] == tube["accession_number"]
    view = world.lv.lab.get_order(world.actor(a.emails["biologist"]), oid)
    assert view.status.value == "received"
    assert view.request.filler_number == tube["accession_number"]
    again = _problem(client.post(url, json=_tube(), headers=_bearer(world, a, "reception")),
                     409, "invalid-transition")
    assert again["kind"] == "already-received" and again["step"]["by"] == a.accounts["technician"]
    assert len(world.lv.lab.get_order(world.actor(a.emails["biologist"]), oid).specimens) == 1


def test_a_taken_tube_number_is_refused_naming_the_field(world: World,
                                                         client: TestClient) -> None:
    a = world.a
    rec = _bearer(world, a, "reception")
    tube = _tube()
    assert _create(client, rec, a.patients[0], tube).status_code == 201
    body = _problem(_create(client, rec, a.patients[1], tube), 409, "filler-number-taken")
    assert body["field"] == "specimen.accession_number" and "tube" in body["title"]
    assert tube["accession_number"] not in _create(client, rec, a.patients[1], tube).text
    body = _problem(_create(client, rec, a.patients[1], _tube(),
                            filler_number=tube["accession_number"]), 409, "filler-number-taken")
    assert body["field"] == "request.filler_number"
    # received later: the same rule, nothing received
    later = _create(client, rec, a.patients[1]).json()["id"]
    body = _problem(client.post(f"/api/v1/orders/{later}/specimens", json=tube, headers=rec),
                    409, "filler-number-taken")
    assert body["field"] == "accession_number"
    view = world.lv.lab.get_order(world.actor(a.emails["biologist"]), later)
    assert view.status.value == "registered" and not view.specimens


def test_entered_results_then_technical_validation(world: World, client: TestClient) -> None:
    a = world.a
    tech = _bearer(world, a, "technician")
    waiting = _create(client, _bearer(world, a, "reception"), a.patients[0]).json()["id"]
    early = _problem(client.post(f"/api/v1/orders/{waiting}/results",
                                 json={"results": NORMAL}, headers=tech),
                     409, "invalid-transition")
    assert "receive the specimen first" in early["detail"]
    oid = _create(client, _bearer(world, a, "biologist"), a.patients[0], _tube()).json()["id"]
    r = client.post(f"/api/v1/orders/{oid}/results",
                    json={"results": [{"code": "718-7", "value": 13.1, "unit": "g/dL"},
                                      {"code": "2823-3", "value": "5.6", "unit": "mmol/L"}]},
                    headers=tech)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(o["code"], o["status"], o["flag"], o["revision"]) for o in results] == [
        ("718-7", "preliminary", "N", 1), ("2823-3", "preliminary", "H", 1)]
    doc = client.get(f"/api/v1/orders/{oid}", headers=tech).json()
    assert doc["order_status"] == "preliminary"
    assert set(doc["expected"]) == {o["id"] for o in results}
    v = client.post(f"/api/v1/orders/{oid}/technical-validation",
                    json={"expected": doc["expected"]}, headers=tech)
    assert v.status_code == 200 and v.json()["status"] == "technically-validated", v.text


def test_invalid_bodies_name_the_field(world: World, client: TestClient) -> None:
    a = world.a
    bio = _bearer(world, a, "biologist")
    body = _problem(_create(client, bio, a.patients[0], {**_tube(), "type": "BLOOD"},
                            tests=["2823-3", "not-loinc"]), 422, "invalid-record")
    assert {e["field"] for e in body["errors"]} == {"request.tests[1]", "specimen.type"}
    when = _problem(_create(client, bio, a.patients[0], {**_tube(), "collected_at": "hier"}),
                    422, "invalid-request")     # a date-time is read by the schema (Instant)
    assert when["errors"] == [{"field": "specimen.collected_at", "rule": WITH_OFFSET}]
    schema = _problem(client.post("/api/v1/orders", json={"patient_id": a.patients[0]},
                                  headers=bio), 422, "invalid-request")
    assert [e["field"] for e in schema["errors"]] == ["request"]
    extra = _problem(_create(client, bio, a.patients[0], {**_tube(), "barcode": "x"}), 422,
                     "invalid-request")
    assert [e["field"] for e in extra["errors"]] == ["specimen.barcode"]
    oid = _create(client, bio, a.patients[0], _tube()).json()["id"]
    bad = _problem(client.post(f"/api/v1/orders/{oid}/results",
                               json={"results": [{"code": "9999-9", "value": 1}]}, headers=bio),
                   422, "invalid-record")
    assert [e["field"] for e in bad["errors"]] == ["results[0].code"]
    assert world.lv.lab.get_order(world.actor(a.emails["biologist"]), oid).status.value == \
        "received"


def test_another_laboratory_s_patient_or_order_is_not_found(world: World,
                                                            client: TestClient) -> None:
    a, b = world.a, world.b
    rec = _bearer(world, a, "reception")
    other = _problem(_create(client, rec, b.patients[0], _tube()), 404, "not-found")
    absent = _problem(_create(client, rec, "pt_" + "0" * 25 + "v", _tube()), 404, "not-found")
    assert other == absent
    b_order = _create(client, _bearer(world, b, "reception"), b.patients[0]).json()["id"]
    spec = _problem(client.post(f"/api/v1/orders/{b_order}/specimens", json=_tube(),
                                headers=rec), 404, "not-found")
    assert spec["title"] == "no such order"


def test_roles_come_from_the_policy(world: World, client: TestClient) -> None:
    a = world.a
    _problem(_create(client, _bearer(world, a, "technician"), a.patients[0]), 403, "forbidden")
    oid = _create(client, _bearer(world, a, "reception"), a.patients[0]).json()["id"]
    _problem(client.post(f"/api/v1/orders/{oid}/specimens", json=_tube(),
                         headers=_bearer(world, a, "lab_admin")), 403, "forbidden")
    assert client.post(f"/api/v1/orders/{oid}/specimens", json=_tube(),
                       headers=_bearer(world, a, "reception")).status_code == 201
    _problem(client.post(f"/api/v1/orders/{oid}/results", json={"results": NORMAL},
                         headers=_bearer(world, a, "reception")), 403, "forbidden")


def test_openapi_documents_the_new_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, model in (("/api/v1/orders", "OrderIn"),
                        ("/api/v1/orders/{order_id}/specimens", "SpecimenIn"),
                        ("/api/v1/orders/{order_id}/results", "ResultsIn")):
        op = paths[path]["post"]
        assert op["tags"] == ["lab"] and op["summary"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith(model)
    assert "201" in paths["/api/v1/orders"]["post"]["responses"]


def _absent_record_refusals(world: World, role: str) -> list[dict[str, Any]]:
    """Lab A's ``role`` account's refusals of ids its laboratory does not hold, as the DPO's
    report shows them (the sealed part opened)."""
    from labvault.domain.actors import Actor
    from labvault.services.audit import audit_of
    report = audit_of(world.lv).user_report(Actor.operator(), world.a.accounts[role])
    return [e for e in report["items"] if e["rule"] == "absent-record"]


def test_a_write_naming_another_laboratory_s_record_is_audited_as_refused(
        world: World, client: TestClient) -> None:
    """A probe of another laboratory's ids (a patient for an order, an order for a specimen
    or results) answers the 404 of an absent id and leaves a refusal in the prober's
    laboratory's chain (DESIGN §6), written after the refused work rolled back."""
    from labvault.services.audit import install_audit
    install_audit(world.lv)
    a, b = world.a, world.b
    b_order = _create(client, _bearer(world, b, "reception"), b.patients[0]).json()["id"]
    b_received = _create(client, _bearer(world, b, "reception"), b.patients[0],
                         _tube()).json()["id"]
    rec, tech = _bearer(world, a, "reception"), _bearer(world, a, "technician")
    nowhere = "pt_" + "0" * 25 + "v"
    probes = [
        (rec, "reception", "/api/v1/orders",
         {"patient_id": b.patients[0], "request": REQ, "specimen": _tube()}, b.patients[0]),
        (rec, "reception", "/api/v1/orders", {"patient_id": nowhere, "request": REQ}, nowhere),
        (rec, "reception", f"/api/v1/orders/{b_order}/specimens", _tube(), b_order),
        (tech, "technician", f"/api/v1/orders/{b_received}/results", {"results": NORMAL},
         b_received),
    ]
    for headers, role, url, body, asked in probes:
        before = len(_absent_record_refusals(world, role))
        _problem(client.post(url, json=body, headers=headers), 404, "not-found")
        new = _absent_record_refusals(world, role)[before:]
        assert len(new) == 1, (url, new)
        (entry,) = new
        assert entry["tenant_id"] == a.tenant_id and entry["outcome"] == "denied"
        assert entry["action"] == "write" and entry["patient_ids"] == []
        kind = "patient" if url == "/api/v1/orders" else "order"
        assert entry["detail"]["kind"] == kind
        assert entry["sealed"]["asked"] == asked        # caller input: sealed, not clear
        assert asked not in json.dumps(entry["detail"])
    # nothing of lab B was written, and lab B's chain holds nothing by lab A's accounts
    assert world.lv.lab.get_order(world.actor(b.emails["biologist"]), b_order).specimens == []
    assert world.lv.lab.get_report_by_order(world.actor(b.emails["biologist"]),
                                            b_received).observations == []
    from sqlalchemy import select

    from labvault.store.tables_audit import audit_entries as E
    with world.lv.begin() as conn:
        actors = set(conn.execute(select(E.c.actor_id).where(E.c.tenant_id == b.tenant_id))
                     .scalars())
    assert not actors & set(a.accounts.values())


def test_a_date_time_without_offset_is_refused_naming_the_field(
        world: World, client: TestClient) -> None:
    """A French lab's "08:30" means Paris time: taken as UTC it was stored 1-2 h off. Every
    date-time the REST door reads needs its offset; without one, a 422 naming the field
    and saying to add it, and nothing is written."""
    from tests.web.helpers import order
    a = world.a
    bio = _bearer(world, a, "biologist")
    naive = "2026-03-01T08:30:00"

    def refused(r: Any, field: str) -> None:
        body = _problem(r, 422, "invalid-request")
        assert body["errors"] == [{"field": field, "rule": NO_OFFSET}], body
        assert "+01:00" in body["errors"][0]["rule"] and "Z" in body["errors"][0]["rule"]

    orders_before = len(world.lv.lab.list_orders(world.actor(a.emails["biologist"]),
                                                 a.tenant_id))
    refused(_create(client, bio, a.patients[0], {**_tube(), "collected_at": naive}),
            "specimen.collected_at")
    refused(_create(client, bio, a.patients[0], requested_at="2026-03-01"),
            "request.requested_at")
    assert len(world.lv.lab.list_orders(world.actor(a.emails["biologist"]),
                                        a.tenant_id)) == orders_before
    oid = _create(client, bio, a.patients[0]).json()["id"]
    refused(client.post(f"/api/v1/orders/{oid}/specimens",
                        json={**_tube(), "collected_at": naive}, headers=bio), "collected_at")
    got = client.post(f"/api/v1/orders/{oid}/specimens",
                      json={**_tube(), "collected_at": "2026-03-01T08:30:00+01:00"}, headers=bio)
    assert got.status_code == 201, got.text
    assert got.json()["collected_at"] == "2026-03-01T08:30:00+01:00"   # as given, not shifted
    refused(client.post(f"/api/v1/orders/{oid}/results", headers=bio, json={"results": [
        {"code": "718-7", "value": 13.1, "unit": "g/dL", "observed_at": "2026-03-01T09:00:00Z"},
        {"code": "2823-3", "value": 4.2, "unit": "mmol/L", "observed_at": naive}]}),
        "results[1].observed_at")
    assert world.lv.lab.get_report_by_order(world.actor(a.emails["biologist"]),
                                            oid).observations == []
    ok = client.post(f"/api/v1/orders/{oid}/results", headers=bio, json={"results": [
        {"code": "718-7", "value": 13.1, "unit": "g/dL", "observed_at": "2026-03-01T09:00:00Z"}]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["results"][0]["observed_at"] == "2026-03-01T09:00:00+00:00"
    # a number is not a date-time (it would be read as seconds since 1970)
    epoch = _problem(_create(client, bio, a.patients[0], requested_at=1772350200), 422,
                     "invalid-request")
    assert epoch["errors"] == [{"field": "request.requested_at", "rule": WITH_OFFSET}]
    published = order(world, a, a.patients[1])
    refused(client.post(
        f"/api/v1/observations/{published.observations[0].observation_id}/amendment",
        headers=bio, json={"result": {"code": "718-7", "value": 12.9, "unit": "g/dL",
                                      "observed_at": naive}, "reason": "erreur de saisie"}),
        "result.observed_at")
    patient = {"Authorization": f"Bearer {world.login(a.emails['patient'])}"}
    refused(client.get("/api/v1/me/access-log", params={"since": naive}, headers=patient),
            "query.since")
