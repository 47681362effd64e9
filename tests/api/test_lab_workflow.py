"""The lab workflow's REST door (``/api/v1/orders``): review, technical and biological
validation, publication, rejection, conclusion and amendment — problem+json errors,
the ``expected`` and ``partial`` checks of the service, the OpenAPI document."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.access.conftest import World
from tests.api.helpers import bearer as _bearer
from tests.api.helpers import problem as _problem
from tests.web.helpers import analyser_order, order

K_HIGH = [{"code": "718-7", "value": 13.1, "unit": "g/dL"},
          {"code": "2823-3", "value": "5.6", "unit": "mmol/L"}]




def test_technical_then_biological_validation_and_publication(world: World,
                                                              client: TestClient) -> None:
    a = world.a
    tech, bio = _bearer(world, a, "technician"), _bearer(world, a, "biologist")
    (hb, _k) = order(world, a, a.patients[0], step="preliminary", results=K_HIGH)
    oid = hb.order_id
    review = client.get(f"/api/v1/orders/{oid}", headers=tech)
    assert review.status_code == 200
    doc = review.json()
    assert doc["order_status"] == "preliminary" and doc["missing"] == {}
    assert set(doc["expected"]) == {o["id"] for o in doc["observations"]}
    assert [o["flag"] for o in doc["observations"]] == ["N", "H"]
    r = client.post(f"/api/v1/orders/{oid}/technical-validation",
                    json={"expected": doc["expected"]}, headers=tech)
    assert r.status_code == 200 and r.json()["status"] == "technically-validated"
    assert r.json()["steps"]["technical"]["name"] == "Hugo Lefebvre"
    again = _problem(client.post(f"/api/v1/orders/{oid}/technical-validation", headers=tech),
                     409, "invalid-transition")
    assert again["kind"] == "already-technical" and "Hugo Lefebvre" in again["title"]
    assert again["step"]["by"] == a.accounts["technician"]
    refused = _problem(client.post(f"/api/v1/orders/{oid}/biological-validation",
                                   json={"conclusion": "x"}, headers=tech), 403, "forbidden")
    assert "biologist" in refused["title"]
    r = client.post(f"/api/v1/orders/{oid}/biological-validation",
                    json={"conclusion": "Hyperkaliémie modérée", "expected": doc["expected"],
                          "publish": True}, headers=bio)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["order_status"] == "published" and rep["conclusion"] == "Hyperkaliémie modérée"
    assert rep["steps"]["biological"]["name"] == "Léa Moreau" and rep["issued_at"]
    twice = _problem(client.post(f"/api/v1/orders/{oid}/publication", headers=bio), 409,
                     "invalid-transition")
    assert twice["kind"] == "already-published" and "Léa Moreau" in twice["title"]


def test_review_read_says_why_an_order_is_left_for_review(world: World,
                                                         client: TestClient) -> None:
    """``review``: why "validate all normal" would leave the order (a re-entered result,
    normal both times: ``re-entered``), null when it would validate it."""
    a = world.a
    bio = _bearer(world, a, "biologist")
    plain = order(world, a, a.patients[0], step="technical")
    (_hb, k) = order(world, a, a.patients[1], step="preliminary")
    world.lv.lab.enter_results(world.actor(a.emails["biologist"]), k.order_id,
                               [{"code": "2823-3", "value": "4.3", "unit": "mmol/L"}])
    doc = client.get(f"/api/v1/orders/{k.order_id}", headers=bio).json()
    assert doc["review"] == {"reason": "re-entered", "tests": ["Potassium"]}
    assert [c["previous"]["value"] for c in doc["reentries"][k.observation_id]] == [4.2]
    assert client.get(f"/api/v1/orders/{plain.order_id}", headers=bio).json()["review"] is None


def test_publication_says_how_many_messages_it_queued_for_the_prescriber(
        world: World, client: TestClient) -> None:
    """``queued``: the ORU^R01 messages queued for the prescriber's system (0 when no
    delivery destination matches the order's prescriber)."""
    from labvault.domain.actors import Actor
    a = world.a
    bio = _bearer(world, a, "biologist")
    first, second = (order(world, a, a.patients[0], step="final") for _ in range(2))
    r = client.post(f"/api/v1/orders/{first.order_id}/publication", headers=bio)
    assert r.status_code == 200 and r.json()["queued"] == 0
    world.lv.delivery.add_destination(Actor.operator(), a.tenant_id, "CHU", "127.0.0.1", 2575,
                                      [], all_orders=True, insecure_plaintext=True)
    r = client.post(f"/api/v1/orders/{second.order_id}/publication", headers=bio)
    assert r.status_code == 200 and r.json()["queued"] == 1
    assert r.json()["order_status"] == "published"


def test_validation_refused_when_results_changed_since_review(world: World,
                                                              client: TestClient) -> None:
    a = world.a
    bio = _bearer(world, a, "biologist")
    view = order(world, a, a.patients[0], step="technical")
    shown = client.get(f"/api/v1/orders/{view.order_id}", headers=bio).json()["expected"]
    actor = world.actor(a.emails["technician"])
    world.lv.lab.enter_results(actor, view.order_id, [{"code": "2823-3", "value": 6.9, "unit": "mmol/L"}])
    world.lv.lab.validate_technical(actor, view.order_id)
    body = _problem(client.post(f"/api/v1/orders/{view.order_id}/biological-validation",
                                json={"conclusion": "RAS", "expected": shown}, headers=bio),
                    409, "results-changed")
    assert "review them again" in body["detail"]
    state = client.get(f"/api/v1/orders/{view.order_id}", headers=bio).json()
    assert state["order_status"] == "technically-validated" and state["conclusion"] is None
    wrong_step = _problem(client.post(f"/api/v1/orders/{view.order_id}/publication",
                                      headers=bio), 409, "invalid-transition")
    assert wrong_step["kind"] == "biological-missing"


def test_incomplete_order_needs_partial(world: World, client: TestClient) -> None:
    a = world.a
    bio = _bearer(world, a, "biologist")
    (k,) = order(world, a, a.patients[0], step="preliminary",
                 results=[{"code": "2823-3", "value": "4.2", "unit": "mmol/L"}])
    world.lv.lab.validate_technical(world.actor(a.emails["technician"]), k.order_id)
    url = f"/api/v1/orders/{k.order_id}/biological-validation"
    body = _problem(client.post(url, json={}, headers=bio), 409, "incomplete-order")
    assert body["missing"] == ["718-7"] and "partial" in body["detail"]
    r = client.post(url, json={"partial": True, "publish": True}, headers=bio)
    assert r.status_code == 200 and r.json()["partial"] is True
    assert r.json()["missing"] == {"718-7": "Hémoglobine"}


def test_rejection_by_the_bench(world: World, client: TestClient) -> None:
    a = world.a
    tech = _bearer(world, a, "technician")
    (hb, _k) = order(world, a, a.patients[0], step="preliminary")
    url = f"/api/v1/orders/{hb.order_id}/rejection"
    bad = _problem(client.post(url, json={"reason": "because"}, headers=tech), 422,
                   "invalid-field")
    assert "hemolysed" in bad["detail"]
    r = client.post(url, json={"reason": "hemolysed", "comment": "tube rose"}, headers=tech)
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert r.json()["steps"]["rejected"]["reason"] == "hemolysed"
    rec = _bearer(world, a, "reception")              # results exist: not the desk's call
    (other, _) = order(world, a, a.patients[0], step="preliminary")
    _problem(client.post(f"/api/v1/orders/{other.order_id}/rejection",
                         json={"reason": "clotted"}, headers=rec), 403, "forbidden")
    late = order(world, a, a.patients[0], step="technical")
    body = _problem(client.post(f"/api/v1/orders/{late.order_id}/rejection",
                                json={"reason": "clotted"}, headers=tech),
                    409, "invalid-transition")
    assert body["kind"] == "results-validated"


def test_amendment_with_conclusion_and_conclusion_revision(world: World,
                                                           client: TestClient) -> None:
    a = world.a
    bio = _bearer(world, a, "biologist")
    rep = order(world, a, a.patients[0], results=K_HIGH, conclusion="Hyperkaliémie")
    k = next(o for o in rep.observations if o.observation.code == "2823-3")
    r = client.post(f"/api/v1/observations/{k.observation_id}/amendment",
                    json={"result": {"code": "2823-3", "value": 1.9, "unit": "mmol/L"}, "reason": "inversion",
                          "conclusion": "Hypokaliémie sévère"}, headers=bio)
    assert r.status_code == 200 and r.json()["status"] == "amended"
    doc = client.get(f"/api/v1/orders/{rep.order_id}", headers=bio).json()
    assert doc["conclusion"] == "Hypokaliémie sévère"
    assert doc["corrections"][k.observation_id][0]["previous"]["value"] == 5.6
    assert doc["conclusion_revisions"][0]["previous"] == "Hyperkaliémie"
    url = f"/api/v1/orders/{rep.order_id}/conclusion"
    _problem(client.post(url, json={"conclusion": "RAS"}, headers=bio), 422, "invalid-field")
    r = client.post(url, json={"conclusion": "Hypokaliémie sévère, contrôle demandé",
                               "reason": "précision"}, headers=bio)
    assert r.status_code == 200 and len(r.json()["conclusion_revisions"]) == 2


def test_amending_a_withdrawn_result_is_a_conflict(world: World, client: TestClient) -> None:
    """A result the analyser withdrew before validation (OBX-11 W, a new value after it)
    is no part of the published report: its amendment is a 409 ``result-withdrawn`` naming
    the withdrawal and the result in force to amend instead."""
    a = world.a
    bio = _bearer(world, a, "biologist")
    oid = analyser_order(world, a, 0, "OBX|1|NM|2823-3^K^LN||4.1|mmol/L|||||F",
                         control="WD1", number="AWD")
    assert analyser_order(world, a, 0, "OBX|1|NM|2823-3^K^LN||4.1|mmol/L|||||W",
                          "OBX|2|NM|2823-3^K^LN||3.9|mmol/L|||||F",
                          control="WD2", number="AWD") == oid
    r = client.post(f"/api/v1/orders/{oid}/biological-validation", json={"publish": True},
                    headers=bio)
    assert r.status_code == 200 and r.json()["order_status"] == "published", r.text
    status = {o["status"]: o["id"] for o in r.json()["observations"]}
    body = _problem(client.post(
        f"/api/v1/observations/{status['cancelled']}/amendment",
        json={"result": {"code": "2823-3", "value": 4.0, "unit": "mmol/L"}, "reason": "typo"},
        headers=bio), 409, "invalid-transition")
    assert body["kind"] == "result-withdrawn" and body["order_status"] == "published"
    assert body["title"].startswith("this result was withdrawn by system:mllp at ")
    assert body["step"]["by"] == "system:mllp" and "OBX-11 W" in body["step"]["reason"]
    assert body["in_force"] == status["final"] and status["final"] in body["detail"]
    r = client.post(f"/api/v1/observations/{status['final']}/amendment",
                    json={"result": {"code": "2823-3", "value": 4.0, "unit": "mmol/L"},
                          "reason": "typo"}, headers=bio)
    assert r.status_code == 200 and r.json()["status"] == "amended"


def test_openapi_documents_the_lab_steps(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for step in ("technical-validation", "biological-validation", "publication",
                 "rejection", "conclusion"):
        op = paths[f"/api/v1/orders/{{order_id}}/{step}"]["post"]
        assert op["tags"] == ["lab"] and op["summary"]
    body = paths["/api/v1/orders/{order_id}/biological-validation"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("BiologicalIn")
    assert "/api/v1/observations/{observation_id}/amendment" in paths


def test_review_read_shows_previous_results_to_staff_who_validate_never_to_the_patient(
        world: World, client: TestClient) -> None:
    """``previous``: per result, the patient's previous validated result of the test
    (another order's) and the delta check's outcome; ``review`` says ``delta`` with the
    values when a change is beyond the test's limit (potassium 4.2 -> 5.6: 1 mmol/L).
    The patient reading its own report gets none of it."""
    a = world.a
    bio, tech = _bearer(world, a, "biologist"), _bearer(world, a, "technician")
    first = order(world, a, a.patients[0])                   # published: K 4.2, Hb 13.1
    second = order(world, a, a.patients[0], step="technical", results=K_HIGH)
    doc = client.get(f"/api/v1/orders/{second.order_id}", headers=bio).json()
    by_code = {o["code"]: o["id"] for o in doc["observations"]}
    k = doc["previous"][by_code["2823-3"]]
    assert (k["value"], k["unit"], k["flag"]) == (4.2, "mmol/L", "N")
    assert k["delta"]["outcome"] == "delta-exceeded"
    assert k["delta"]["limit"] == {"absolute": 1.0, "days": 7}
    assert doc["previous"][by_code["718-7"]]["delta"]["outcome"] == "within-limit"
    assert k["observation_id"] in {o.observation_id for o in first.observations}
    assert doc["review"]["reason"] == "delta" and doc["review"]["tests"] == ["Potassium"]
    (d,) = doc["review"]["deltas"]
    assert (d["previous"], d["current"], d["unit"]) == (4.2, 5.6, "mmol/L")
    assert d["change"] == 1.4 and k["delta"]["change"] == 1.4      # no float noise
    assert client.get(f"/api/v1/orders/{second.order_id}",
                      headers=tech).json()["previous"][by_code["2823-3"]]["value"] == 4.2
    # published, the patient reads its report: no previous results, whatever the door
    bio_actor = world.actor(a.emails["biologist"])
    world.lv.lab.validate_biological(bio_actor, second.order_id)
    world.lv.lab.publish(bio_actor, second.order_id)
    mine = client.get(f"/api/v1/orders/{second.order_id}",
                      headers=_bearer(world, a, "patient"))
    assert mine.status_code == 200 and mine.json()["previous"] == {}
    assert not any(o.observation_id in mine.text for o in first.observations)


def test_review_dates_a_typed_in_previous_result_by_its_specimen(world: World,
                                                                 client: TestClient) -> None:
    """``previous.at`` and ``review.deltas[].previous_at``: when the previous result's
    blood was drawn (its specimen), not when it was typed in (today)."""
    a, lv = world.a, world.lv
    bio = world.actor(a.emails["biologist"])
    drawn = "2026-02-27T09:15:00+01:00"

    def typed_in(collected: str, k: str, n: int) -> str:
        o = lv.lab.create_order(bio, a.tenant_id, a.patients[0], {"tests": ["2823-3"]},
                                {"type": "BLD", "collected_at": collected,
                                 "accession_number": f"PREV{n}"})
        lv.lab.enter_results(bio, o.order_id, [{"code": "2823-3", "value": k,
                                                "unit": "mmol/L"}])
        lv.lab.validate_technical(bio, o.order_id)
        return o.order_id

    lv.lab.validate_biological(bio, typed_in(drawn, "4.2", 1))
    current = typed_in("2026-03-01T08:30:00+01:00", "6.0", 2)
    doc = client.get(f"/api/v1/orders/{current}", headers=_bearer(world, a, "biologist")).json()
    (prev,) = doc["previous"].values()
    assert prev["value"] == 4.2 and prev["at"] == "2026-02-27T08:15:00+00:00"
    assert prev["delta"]["outcome"] == "delta-exceeded"
    (d,) = doc["review"]["deltas"]
    assert d["previous_at"] == "2026-02-27T08:15:00+00:00"
