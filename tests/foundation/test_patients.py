"""Patient service on both backends: register, find, show, rotate, erase."""

from __future__ import annotations

import json

import pytest

from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, InvalidRecord, NotFound
from labvault.services.app import Labvault
from labvault.synthetic import people


def _one(i: int = 0) -> dict[str, object]:
    return {k: v for k, v in next(people(1, seed=7, start=i)).items() if v is not None}


def test_register_find_show(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    p = _one()
    pid = lv.patients.register(operator, tenant_id, p)
    assert lv.patients.find(operator, tenant_id, nir=str(p["nir"])) == [pid]
    assert lv.patients.find(operator, tenant_id, email=str(p["email"]).upper()) == [pid]
    assert lv.patients.find(operator, tenant_id, phone=str(p["phone"])) == [pid]
    first = p["first_names"][0]  # type: ignore[index]
    assert lv.patients.find(operator, tenant_id, birth_name=str(p["birth_name"]).lower(),
                            first_name=first, birth_date=str(p["birth_date"])) == [pid]
    shown = lv.patients.show(operator, pid)
    assert shown["nir"] == p["nir"]
    assert shown["coverage"] == p["coverage"]


def test_staff_denied_by_default(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    pid = lv.patients.register(operator, tenant_id, _one())
    staff = Actor(kind="staff", id="acct_x", tenant_id=tenant_id, roles=frozenset({"reception"}))
    with pytest.raises(AccessDenied):
        lv.patients.show(staff, pid)


def test_invalid_record_lists_every_error(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    p = _one()
    p["nir"] = str(p["nir"])[:13] + "00"
    p["phone"] = "12"
    p["email"] = "not-an-email"
    p["shoe_size"] = 42
    with pytest.raises(InvalidRecord) as exc:
        lv.patients.register(operator, tenant_id, p)
    assert {e.field for e in exc.value.errors} == {"nir", "phone", "email", "shoe_size"}


def test_import_report(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    good = [json.dumps(_one(i)) for i in range(5)]
    bad_nir = _one(10)
    bad_nir["nir"] = str(bad_nir["nir"])[:13] + "00"
    lines = [*good, "{not json", json.dumps(bad_nir), json.dumps({**_one(11), "x": 1}), "[]"]
    report = lv.patients.import_lines(operator, tenant_id, lines)
    assert report.imported == 5
    assert sorted({r["line"] for r in report.rejected}) == [6, 7, 8, 9]
    assert {r["field"] for r in report.rejected if r["line"] == 7} == {"nir"}
    # idempotent on external_id
    again = lv.patients.import_lines(operator, tenant_id, good)
    assert (again.imported, again.skipped) == (0, 5)


def test_rotation_keeps_patients_readable(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    ids = lv.patients.import_lines(operator, tenant_id,
                                   [json.dumps(_one(i)) for i in range(20)]).ids
    out = lv.keys.rotate_tenant(operator, tenant_id)
    assert out["rewrapped_keys"] == 20 and out["kek_version"] == 2
    for pid in ids:
        assert lv.patients.show(operator, pid)["birth_name"]


def test_erase(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    p = _one()
    pid = lv.patients.register(operator, tenant_id, p)
    lv.patients.erase(operator, pid)
    with pytest.raises(NotFound):
        lv.patients.show(operator, pid)
    assert lv.patients.find(operator, tenant_id, nir=str(p["nir"])) == []
