"""Patient service on both backends: register, find, show, rotate, erase."""

from __future__ import annotations

import json

import pytest

from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, InvalidField, InvalidRecord, NotFound
from labvault.services.app import Labvault
from labvault.synthetic import people
from tests.foundation.conftest import Cli, synthetic, write_ndjson


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


def test_find_criteria_combine_with_and(sqlite_cli: Cli) -> None:
    """Several criteria were silently reduced to the first: `--nir A --email B` listed A's
    patient whatever B. Now every criterion must match (intersection)."""
    cli = sqlite_cli
    tenant = cli.init_with_tenant()
    a, b, c = synthetic(3, seed=77)
    c = {**c, "phone": a["phone"]}                  # a shared family phone
    cli.ok("patient", "import", str(write_ndjson(cli.root / "p.ndjson", [a, b, c])),
           "--tenant", tenant)

    def find(*args: str) -> list[str]:
        return list(cli.ok("patient", "find", "--tenant", tenant, *args)["patients"])

    pa, pb, pc = (find("--nir", p["nir"])[0] for p in (a, b, c))
    trio = ("--birth-name", a["birth_name"], "--first-name", a["first_names"][0],
            "--birth-date", a["birth_date"])
    assert sorted(find("--phone", a["phone"])) == sorted([pa, pc])
    assert find("--phone", a["phone"], "--nir", c["nir"]) == [pc]
    assert find("--nir", a["nir"], "--email", a["email"], *trio) == [pa]
    assert find("--nir", a["nir"], "--email", b["email"]) == []       # was [pa]
    assert find("--email", b["email"], "--nir", a["nir"]) == []
    assert find("--phone", a["phone"], *trio) == [pa]
    assert find("--nir", b["nir"], *trio) == []
    assert pb not in find("--phone", a["phone"])
    # a part of the name trio is refused, not dropped
    r = cli.user_error("patient", "find", "--tenant", tenant, "--nir", a["nir"],
                       "--birth-name", a["birth_name"])
    assert "birth name, first name and birth date go together" in r.stderr


def test_a_registration_sent_twice_is_refused_not_duplicated(lv: Labvault, operator: Actor,
                                                             tenant_id: str) -> None:
    """QA lab 5: the reception desk's form sent twice (a double click, a page sent again)
    registered the same person twice under one NIR -- two records whose results would
    split between them; HL7 updates already kept one NIR to one patient. Registration and
    update now refuse a NIR (or INS) another patient of the laboratory has, naming it."""
    p = {k: v for k, v in _one().items() if k != "external_id"}    # typed at the desk
    assert p["nir"]
    pid = lv.patients.register(operator, tenant_id, p)
    with pytest.raises(InvalidField) as exc:
        lv.patients.register(operator, tenant_id, p)
    assert exc.value.field == "nir" and "already registered" in exc.value.rule
    assert lv.patients.find(operator, tenant_id, nir=str(p["nir"])) == [pid]
    other = lv.patients.register(operator, tenant_id,
                                 {k: v for k, v in _one(2).items() if k != "external_id"})
    with pytest.raises(InvalidField):            # nor given to another patient by an update
        lv.patients.update(operator, other, p)
    lv.patients.update(operator, pid, {**p, "email": "nouvelle.adresse@example.org"})
    assert lv.patients.find(operator, tenant_id, nir=str(p["nir"])) == [pid]


def test_amend_changes_the_fields_given_and_checks_the_whole_record(
        lv: Labvault, operator: Actor, tenant_id: str) -> None:
    """``amend`` (the console's "Modifier"): the fields given are merged into the stored
    record, ``None`` removes one; the changed record is checked whole; it returns the
    fields that really changed (a NIR typed with spaces is the same NIR)."""
    p = _one(3)
    pid = lv.patients.register(operator, tenant_id, p)
    other = lv.patients.register(operator, tenant_id, _one(4))
    nir = str(p["nir"])
    spaced = f"{nir[0]} {nir[1:3]} {nir[3:5]} {nir[5:7]} {nir[7:10]} {nir[10:13]} {nir[13:]}"
    changed = lv.patients.amend(operator, pid, {"phone": "07 61 23 45 98", "email": None,
                                                "nir": spaced})
    assert changed == ["email", "phone"]
    shown = lv.patients.show(operator, pid)
    assert shown["phone"] == "+33761234598" and "email" not in shown
    assert shown["coverage"] == p["coverage"] and shown["blood_group"] == p["blood_group"]
    assert lv.patients.find(operator, tenant_id, phone="0761234598") == [pid]
    assert lv.patients.find(operator, tenant_id, email=str(p["email"])) == []
    assert lv.patients.amend(operator, pid, {"phone": "+33761234598"}) == []
    with pytest.raises(InvalidRecord) as exc:
        lv.patients.amend(operator, pid, {"height": 180, "birth_name": None})
    assert {e.field for e in exc.value.errors} == {"height"}
    with pytest.raises(InvalidRecord) as exc:         # the NIR no longer agrees with it
        lv.patients.amend(operator, pid, {"birth_date": "1901-01-01", "birth_name": None})
    assert {e.field for e in exc.value.errors} == {"nir", "birth_name"}
    with pytest.raises(InvalidField) as one:          # another patient's NIR, as an INS
        lv.patients.amend(operator, other, {"ins": nir})
    assert one.value.field == "ins" and "already registered" in one.value.rule
    assert lv.patients.show(operator, pid) == shown


def test_import_refuses_a_nir_another_patient_has(lv: Labvault, operator: Actor,
                                                  tenant_id: str) -> None:
    """Registration and update refused a NIR (or INS) another patient of the laboratory
    has; the NDJSON import stored it, making the duplicates registration prevents. A line
    whose NIR/INS is stored already, or on an earlier line of the file, is rejected whole,
    naming the field (and the earlier line); ``external_id`` re-imports are still skipped,
    not taken for duplicates of themselves."""
    desk = {k: v for k, v in _one(0).items() if k != "external_id"}
    a = lv.patients.register(operator, tenant_id, desk)
    b = {**_one(1), "nir": desk["nir"], "sex": desk["sex"], "birth_date": desk["birth_date"]}
    c, d = _one(2), _one(3)
    e = {**_one(4), "nir": d["nir"], "sex": d["sex"], "birth_date": d["birth_date"]}
    f = {**_one(5), "ins": c["nir"]}
    lines = [json.dumps(x) for x in (b, c, d, e, f)]
    report = lv.patients.import_lines(operator, tenant_id, lines)
    assert (report.imported, report.skipped) == (2, 0)
    why = {r["line"]: r for r in report.rejected}
    assert sorted(why) == [1, 4, 5]
    assert (why[1]["field"], why[4]["field"], why[5]["field"]) == ("nir", "nir", "ins")
    assert "already has this NIR" in why[1]["reason"]
    assert why[4]["reason"].startswith("line 3 of this file has the same NIR")
    assert why[5]["reason"].startswith("line 2 of this file")      # f's INS: c's NIR
    assert why[5]["reason"].endswith("correct the INS")
    assert str(desk["nir"]) not in json.dumps(report.as_json())     # ids, never values
    # nothing of a rejected line is stored: one patient per NIR, none by their e-mails
    assert lv.patients.find(operator, tenant_id, nir=str(desk["nir"])) == [a]
    (pd,) = lv.patients.find(operator, tenant_id, nir=str(d["nir"]))
    assert lv.patients.find(operator, tenant_id, nir=str(c["nir"])) != []
    for x in (b, e, f):
        assert lv.patients.find(operator, tenant_id, email=str(x["email"])) == []
    # the same file again: c and d skipped by their external_id, the others still rejected
    again = lv.patients.import_lines(operator, tenant_id, lines)
    assert (again.imported, again.skipped) == (0, 2)
    assert sorted(r["line"] for r in again.rejected) == [1, 4, 5]
    assert lv.patients.find(operator, tenant_id, nir=str(d["nir"])) == [pd]


def test_import_refuses_a_nir_of_an_earlier_batch(lv: Labvault, operator: Actor,
                                                 tenant_id: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's earlier lines written by a batch before are checked in the store."""
    monkeypatch.setattr("labvault.services.patients.IMPORT_BATCH", 2)
    first, other, twin = _one(0), _one(1), _one(2)
    twin = {**twin, "nir": first["nir"], "sex": first["sex"],
            "birth_date": first["birth_date"]}
    report = lv.patients.import_lines(operator, tenant_id,
                                      [json.dumps(x) for x in (first, other, twin)])
    assert report.imported == 2
    assert [(r["line"], r["field"]) for r in report.rejected] == [(3, "nir")]
    assert "already has this NIR" in report.rejected[0]["reason"]
    assert len(lv.patients.find(operator, tenant_id, nir=str(first["nir"]))) == 1


def test_import_batch_retried_line_by_line_counts_each_line_once(
        lv: Labvault, operator: Actor, tenant_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose write fails (a concurrent import) is retried one line at a time: the
    lines it had skipped or rejected were counted again by the retry."""
    from sqlalchemy.exc import IntegrityError

    from labvault.store import repositories as repo
    kept = _one(0)
    lv.patients.import_lines(operator, tenant_id, [json.dumps(kept)])
    twin = {**_one(2), "nir": _one(1)["nir"], "sex": _one(1)["sex"],
            "birth_date": _one(1)["birth_date"]}
    real, calls = repo.insert_patients, []

    def once(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("INSERT", {}, Exception("written meanwhile"))
        real(*args, **kwargs)       # type: ignore[arg-type]

    monkeypatch.setattr(repo, "insert_patients", once)
    report = lv.patients.import_lines(operator, tenant_id,
                                      [json.dumps(x) for x in (kept, _one(1), twin)])
    assert (report.imported, report.skipped) == (1, 1)
    assert [(r["line"], r["field"]) for r in report.rejected] == [(3, "nir")]


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
