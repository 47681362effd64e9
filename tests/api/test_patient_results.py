"""A patient's results over time over REST (``GET /api/v1/patients/{id}/results``, the
JSON twin of the console's "Historique des résultats"): validated results newest first,
filtered by test and period; times need their offset; a period too long is refused (422);
the roles the policy does not let read reports are refused; another laboratory's patient
answers like an absent id."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.access.conftest import World
from tests.api.helpers import bearer, problem
from tests.web.helpers import HIGH, order


def test_the_patients_validated_results_newest_first(world: World,
                                                     client: TestClient) -> None:
    a = world.a
    pid = a.patients[0]
    first = order(world, a, pid)
    order(world, a, pid, step="technical", results=HIGH)       # not validated: not listed
    url = f"/api/v1/patients/{pid}/results"
    for role in ("biologist", "technician"):
        r = client.get(url, headers=bearer(world, a, role))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["patient_id"] == pid and body["code"] is None
        assert {(x["code"], x["value"], x["order_id"], x["corrected"])
                for x in body["results"]} == {("718-7", 13.1, first.order_id, False),
                                              ("2823-3", 4.2, first.order_id, False)}
        assert body["tests"] == [{"code": "718-7", "label": "Hémoglobine"},
                                 {"code": "2823-3", "label": "Potassium"}]
        assert {x["at"] for x in body["results"]} == {"2026-03-01T07:30:00+00:00"}
    bio = bearer(world, a, "biologist")
    one = client.get(url, params={"code": "718-7"}, headers=bio).json()
    assert [x["code"] for x in one["results"]] == ["718-7"]
    before = client.get(url, params={"until": "2026-03-01T08:00:00+01:00"}, headers=bio)
    assert before.json()["results"] == []
    # a time without its offset, a period too long: refused, named
    assert problem(client.get(url, params={"since": "2026-01-01T00:00:00"}, headers=bio),
                   422, "invalid-request")
    assert problem(client.get(url, params={"since": "2015-01-01T00:00:00Z"}, headers=bio),
                   422, "invalid-field")["title"].startswith("since: the period is longer")


def test_refused_roles_and_another_laboratorys_patient(world: World,
                                                       client: TestClient) -> None:
    a, b = world.a, world.b
    order(world, b, b.patients[0])
    for role in ("reception", "lab_admin", "dpo"):
        problem(client.get(f"/api/v1/patients/{a.patients[0]}/results",
                           headers=bearer(world, a, role)), 403, "forbidden")
    bio = bearer(world, a, "biologist")
    theirs = client.get(f"/api/v1/patients/{b.patients[0]}/results", headers=bio)
    absent = client.get("/api/v1/patients/pt_doesnotexist/results", headers=bio)
    assert theirs.status_code == absent.status_code == 404
    assert theirs.json() == absent.json()
