"""The outbox to the prescribers' systems over REST (``/api/v1/deliveries``): the
laboratory's biologists and lab administrators see where its messages stand (never the
message) and send a failed one again once its cause is fixed (docs/hl7.md "Outbound");
everyone else is refused, another laboratory's message is answered as an absent id."""

from __future__ import annotations

from fastapi.testclient import TestClient

from labvault.domain.actors import Actor
from tests.access.conftest import World
from tests.api.helpers import bearer, problem
from tests.web.helpers import DELIVERY_DESTINATION, REFUSED, failed_delivery

OUTBOX = "/api/v1/deliveries"
WHY = {"reason": "patient créé dans le logiciel du cabinet"}


def _alerts(world: World) -> object:
    from labvault.services.alerts import AlertService
    world.lv.alerts = world.lv.gate.alerts = AlertService(world.lv)
    return world.lv.alerts


def test_a_biologist_sees_the_failed_message_and_sends_it_again(world: World,
                                                              client: TestClient) -> None:
    a = world.a
    _alerts(world)
    oid, rep = failed_delivery(world, a)
    bio = bearer(world, a, "biologist")
    r = client.get(f"{OUTBOX}?status=failed", headers=bio)
    assert r.status_code == 200, r.text
    (row,) = r.json()["deliveries"]
    assert (row["id"], row["status"], row["report_id"], row["patient_id"]) == (
        oid, "failed", rep.report_id, rep.patient_id)
    assert row["destination"] == DELIVERY_DESTINATION and row["error"] == REFUSED
    assert row["ack"] == "AE" and "message" not in row and "message_sealed" not in row
    assert a.patient_data[1]["birth_name"] not in r.text             # ids, no identity
    done = client.post(f"{OUTBOX}/{oid}/resend", json=WHY, headers=bio)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["id"], body["status"], body["attempts"]) == (oid, "pending", 0)
    assert body["alert_acked"]                                        # the alert answered
    assert client.get(f"{OUTBOX}?status=failed", headers=bio).json()["deliveries"] == []
    (pending,) = client.get(f"{OUTBOX}?status=pending", headers=bio).json()["deliveries"]
    assert (pending["id"], pending["error"], pending["ack"]) == (oid, None, None)
    open_alerts = world.lv.alerts.list(Actor.operator(), a.tenant_id, status="open")
    assert [x for x in open_alerts if x["kind"] == "delivery-failed"] == []
    # once more: it is not failed any more
    again = client.post(f"{OUTBOX}/{oid}/resend", json=WHY, headers=bio)
    body = problem(again, 409, "delivery-not-failed")
    assert body["delivery_status"] == "pending"


def test_the_outbox_is_the_biologists_and_lab_administrators(world: World,
                                                             client: TestClient) -> None:
    a = world.a
    oid, _rep = failed_delivery(world, a)
    admin = bearer(world, a, "lab_admin")
    assert [d["id"] for d in client.get(OUTBOX, headers=admin).json()["deliveries"]] == [oid]
    for role in ("reception", "technician", "dpo", "patient"):
        h = bearer(world, a, role)
        problem(client.get(OUTBOX, headers=h), 403, "forbidden")
        problem(client.post(f"{OUTBOX}/{oid}/resend", json=WHY, headers=h), 403, "forbidden")
    problem(client.post(f"{OUTBOX}/{oid}/resend", json={"reason": ""}, headers=admin), 422,
            "invalid-request")
    problem(client.post(f"{OUTBOX}/{oid}/resend", json={"reason": "  "}, headers=admin), 422,
            "invalid-field")
    problem(client.get(f"{OUTBOX}?status=lost", headers=admin), 422, "invalid-request")
    assert client.post(f"{OUTBOX}/{oid}/resend", json=WHY, headers=admin).status_code == 200
    # no route manages destinations: they name the server's TLS files (the CLI operator's)
    assert client.post(f"{OUTBOX}/destinations", json={}, headers=admin).status_code in (
        404, 405)


def test_another_labs_message_answers_like_an_absent_one(world: World,
                                                         client: TestClient) -> None:
    theirs, _rep = failed_delivery(world, world.b)
    bio = bearer(world, world.a, "biologist")
    other = problem(client.post(f"{OUTBOX}/{theirs}/resend", json=WHY, headers=bio), 404,
                    "not-found")
    nowhere = problem(client.post(f"{OUTBOX}/out_{'0' * 26}/resend", json=WHY, headers=bio),
                      404, "not-found")
    assert other == nowhere and theirs not in str(other)
    assert client.get(OUTBOX, headers=bio).json()["deliveries"] == []
    (still,) = world.lv.delivery.status(Actor.operator(), world.b.tenant_id)
    assert still["status"] == "failed"


def test_a_removed_destination_or_an_erased_patient_is_said(world: World,
                                                            client: TestClient) -> None:
    a = world.a
    op = Actor.operator()
    oid, _rep = failed_delivery(world, a)
    bio = bearer(world, a, "biologist")
    (dest,) = world.lv.delivery.list_destinations(op, a.tenant_id)
    world.lv.delivery.remove_destination(op, a.tenant_id, dest["id"])
    body = problem(client.post(f"{OUTBOX}/{oid}/resend", json=WHY, headers=bio), 409,
                   "destination-removed")
    assert "delivery add" in body["detail"]
    erased, rep = failed_delivery(world, a, a.patients[2])
    world.lv.patients.erase(op, rep.patient_id, "demande du patient (art. 17)")
    body = problem(client.post(f"{OUTBOX}/{erased}/resend", json=WHY, headers=bio), 410,
                   "delivery-erased")
    assert "erased" in body["title"]
