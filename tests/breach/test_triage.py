"""Dump triage against known ground truth, in every format and encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labvault.breach import synthdump as sd
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from tests.breach.conftest import Score, Store, score

CONTRACT = {"case", "rows", "columns", "matches", "per_tenant", "unmatched_rows", "unencoded",
            "attribution", "severity"}

FORMATS = [
    ("csv utf-8 ,", lambda p, rows: sd.write_csv(p, rows), "dump.csv"),
    ("csv cp1252 ;", lambda p, rows: sd.write_csv(p, rows, delimiter=";", encoding="cp1252"),
     "dump.csv"),
    ("tsv latin-1, no header", lambda p, rows: sd.write_csv(p, rows, delimiter="\t",
                                                           encoding="latin-1", headers=None),
     "dump.txt"),
    ("csv | English headers", lambda p, rows: sd.write_csv(p, rows, delimiter="|",
                                                          headers=sd.HEADERS_EN), "dump.csv"),
    ("csv meaningless headers", lambda p, rows: sd.write_csv(p, rows,
                                                            headers=sd.HEADERS_MEANINGLESS),
     "export.dat"),
    ("json array", lambda p, rows: sd.write_json(p, rows), "dump.json"),
    ("ndjson", lambda p, rows: sd.write_json(p, rows, ndjson=True), "dump.ndjson"),
    ("sql mysql", lambda p, rows: sd.write_sql(p, rows, "mysql"), "dump.sql"),
    ("sql postgresql", lambda p, rows: sd.write_sql(p, rows, "postgresql"), "dump.sql"),
    ("xlsx", lambda p, rows: sd.write_xlsx(p, rows), "dump.xlsx"),
]


def test_every_format_and_encoding(lv: Labvault, operator: Actor, store: Store,
                                   tmp_path: Path) -> None:
    dump = sd.make_dump(store.patients, 150, seed=21)
    case = lv.breach.open_case(operator, "test", "2026-11-01T10:00:00+01:00")
    table: list[tuple[str, Score]] = []
    total = Score()
    for name, write, filename in FORMATS:
        path = tmp_path / name.replace(" ", "_").replace(",", "").replace("|", "p") / filename
        path.parent.mkdir()
        write(path, dump.rows)
        res = lv.breach.triage(operator, case, [path])
        assert set(res) == CONTRACT
        assert res["rows"] == len(dump.rows), name
        s = score(res["matches"], dump.truth)
        table.append((name, s))
        for f in ("exact_rows", "exact_found", "fuzzy_rows", "fuzzy_found", "predicted",
                  "correct"):
            setattr(total, f, getattr(total, f) + getattr(s, f))
        assert s.exact_recall == 1.0, name
        assert s.fuzzy_recall >= 0.97, (name, s)
        assert s.precision >= 0.995, (name, s)
    print("\nformat                      exact recall  fuzzy recall  precision  (rows)")
    for name, s in [*table, ("ALL", total)]:
        print(f"{name:<27} {s.exact_recall:>11.3f}  {s.fuzzy_recall:>12.3f}  "
              f"{s.precision:>9.4f}  ({s.exact_rows}+{s.fuzzy_rows} patients)")


def test_contract_and_register(lv: Labvault, operator: Actor, store: Store,
                               tmp_path: Path) -> None:
    dump = sd.make_dump(store.patients[:40], 10, seed=3)
    path = tmp_path / "d.csv"
    sd.write_csv(path, dump.rows)
    case = lv.breach.open_case(operator, "t", "2026-11-01T09:00:00Z")
    res = lv.breach.triage(operator, case, [path])
    json.dumps(res)
    for c in res["columns"]:
        assert set(c) == {"index", "header", "detected", "confidence"}
    for m in res["matches"]:
        assert set(m) == {"row", "tenant_id", "patient_id", "method", "keys", "score"}
        assert m["method"] in ("exact", "fuzzy") and 0 <= m["score"] <= 1 and m["keys"]
        assert 1 <= m["row"] <= res["rows"]
    matched_rows = {m["row"] for m in res["matches"]}
    assert res["unmatched_rows"] == res["rows"] - len(matched_rows)
    for t, v in res["per_tenant"].items():
        assert t in store.tenants and set(v) == {"patients", "categories"}
        assert "identity" in v["categories"] and "clinical" in v["categories"]
    shown = lv.breach.show(operator, case)
    assert shown["triage"] and shown["severity"] and shown["evidence"]
    assert shown["evidence"][0]["sha256"] and shown["deadline_at"].startswith("2026-11-04T09:00")


def test_sealed_values_are_unintelligible(lv: Labvault, operator: Actor, store: Store,
                                          tmp_path: Path) -> None:
    """A stolen database: ids + ciphertext only -> nothing matched by content, Art. 34(3)(a)."""
    import base64
    import os
    path = tmp_path / "stolen.csv"
    with path.open("w") as fh:
        fh.write("patient_id,identity,contact\n")
        for i in range(50):
            fh.write(f"pt_{i:020d},{base64.b64encode(os.urandom(80)).decode()},"
                     f"{base64.b64encode(os.urandom(60)).decode()}\n")
    case = lv.breach.open_case(operator, "backup", "2026-11-01T09:00:00Z")
    res = lv.breach.triage(operator, case, [path])
    assert {c["detected"] for c in res["columns"][1:]} == {"sealed"}
    assert res["matches"] == [] and res["unmatched_rows"] == 50


def test_exposed_categories_follow_the_dump(lv: Labvault, operator: Actor, store: Store,
                                            tmp_path: Path) -> None:
    rows = [{k: (v if k in ("nom", "prenom", "date_naissance", "email") else "")
             for k, v in r.items()} for r in sd.make_dump(store.patients[:30], 0, seed=4).rows]
    path = tmp_path / "names.csv"
    sd.write_csv(path, rows)
    case = lv.breach.open_case(operator, "t", "2026-11-01T09:00:00Z")
    res = lv.breach.triage(operator, case, [path])
    cats = {c for v in res["per_tenant"].values() for c in v["categories"]}
    assert cats == {"identity", "contact"}
    assert res["severity"]["level"] in ("medium", "high")
    assert not res["severity"]["art34_3a"]["unintelligible"]


def test_erasure_removes_encodings_and_backfill(lv: Labvault, operator: Actor, store: Store,
                                                tmp_path: Path) -> None:
    from labvault.store import repositories_breach as brepo
    t, pid, _rec = store.patients[0]
    with lv.begin() as conn:
        before = brepo.count_encodings(conn, t)
    lv.patients.erase(operator, pid)
    with lv.begin() as conn:
        assert brepo.count_encodings(conn, t) == before - 1
        conn.execute(brepo.breach_encodings.delete().where(
            brepo.breach_encodings.c.tenant_id == t))
    out = lv.breach.backfill(Actor.system("test"), t)
    assert out[t] == before - 1
    dump = sd.make_dump([p for p in store.patients if p[0] == t][:20], 0, seed=5)
    path = tmp_path / "d.csv"
    sd.write_csv(path, dump.rows)
    case = lv.breach.open_case(operator, "t", "2026-11-01T09:00:00Z")
    res = lv.breach.triage(operator, case, [path])
    assert all(m["patient_id"] != pid for m in res["matches"])
    assert score(res["matches"], dump.truth).precision >= 0.99


@pytest.mark.parametrize("bad", ["2026-13-01T00:00:00Z", "2026-11-01T10:00:00", "yesterday"])
def test_open_case_rejects_bad_times(lv: Labvault, operator: Actor, bad: str) -> None:
    from labvault.errors import UserError
    with pytest.raises(UserError):
        lv.breach.open_case(operator, "t", bad)


def test_workers_give_the_same_result(lv: Labvault, operator: Actor, store: Store,
                                      tmp_path: Path, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("worker processes are forked; the PostgreSQL fixture binds one connection")
    dump = sd.make_dump(store.patients[:80], 40, seed=9)
    path = tmp_path / "d.csv"
    sd.write_csv(path, dump.rows)
    case = lv.breach.open_case(operator, "t", "2026-11-01T09:00:00Z")
    one = lv.breach.triage(operator, case, [path], workers=1)
    two = lv.breach.triage(operator, case, [path], workers=2)
    assert one["matches"] == two["matches"] and one["matches"]


def test_unknown_recipients_refused_before_anything_is_written(lv: Labvault, operator: Actor,
                                                               store: Store,
                                                               tmp_path: Path) -> None:
    """QA (DPO): `--recipients everyone` was taken for 'unknown' and the rationale said
    'perte de confidentialité , intention…' (an empty phrase)."""
    from labvault.breach.severity import Circumstances
    from labvault.errors import UserError
    path = tmp_path / "d.csv"
    sd.write_csv(path, sd.make_dump(store.patients[:5], 1, seed=2).rows)
    case = lv.breach.open_case(operator, "t", lv.now().isoformat())
    with pytest.raises(UserError, match="unknown recipients 'everyone'"):
        lv.breach.triage(operator, case, [path], circumstances=Circumstances("everyone"))
    assert [e["kind"] for e in lv.breach.show(operator, case)["timeline"]] == ["note"]


def test_a_row_is_one_person_namesakes_and_shared_contacts(lv: Labvault, operator: Actor,
                                                          tmp_path: Path) -> None:
    """QA (DPO): a leaked row matched every patient of the lab with the same name, first
    name and birth date — a namesake born the same day got a letter although the row's NIR
    named the other — and a parent whose phone and e-mail are on the child's record was
    matched by the child's row."""
    import csv
    from datetime import date

    from labvault.synthetic import make_finess, make_nir, people, strip_none
    t = lv.tenants.add(operator, "Laboratoire", make_finess(__import__("random").Random(1))
                       ).tenant_id
    a, b, parent, child = (strip_none(p) for p in people(4, seed=41))
    # b: a's namesake born the same day (another person: own NIR, phone, e-mail)
    b.update(birth_name=a["birth_name"], first_names=a["first_names"], used_name=None,
             birth_date=a["birth_date"], sex=a["sex"],
             nir=make_nir(a["sex"], date.fromisoformat(a["birth_date"]),
                          b["birth_place_insee"], 77))
    child.update(phone=parent["phone"], email=parent["email"])    # the parent's contacts
    rep = lv.patients.import_lines(operator, t, [json.dumps(strip_none(p))
                                                 for p in (a, b, parent, child)])
    ids = dict(zip(("a", "b", "parent", "child"), rep.ids, strict=True))
    path = tmp_path / "leak.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["nom", "prenom", "date_naissance", "nir", "telephone", "email"])
        for p in (a, child):
            w.writerow([p["birth_name"], p["first_names"][0], p["birth_date"], p["nir"],
                        p["phone"], p["email"]])
        # the namesakes' row without any identifier: nothing tells them apart, both stay
        w.writerow([a["birth_name"], a["first_names"][0], a["birth_date"], "", "", ""])
    case = lv.breach.open_case(operator, "t", lv.now().isoformat())
    res = lv.breach.triage(operator, case, [path])
    names = {v: k for k, v in ids.items()}
    got = sorted((m["row"], names[m["patient_id"]]) for m in res["matches"])
    assert got == [(1, "a"), (2, "child"), (3, "a"), (3, "b")]


def test_a_refused_file_leaves_nothing_in_the_case(lv: Labvault, operator: Actor, store: Store,
                                                   tmp_path: Path) -> None:
    """QA (DPO): a triage refused for a truncated file (exit 2) had already filed the good
    file given with it and the bad one as evidence — a half-written case."""
    from labvault.breach.readers import DumpError
    good = tmp_path / "d.csv"
    sd.write_csv(good, sd.make_dump(store.patients[:5], 1, seed=2).rows)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"nom": "Martin", ')
    case = lv.breach.open_case(operator, "t", lv.now().isoformat())
    with pytest.raises(DumpError, match="invalid JSON"):
        lv.breach.triage(operator, case, [good, bad])
    assert [e["kind"] for e in lv.breach.show(operator, case)["timeline"]] == ["note"]
    stored = lv.settings.data_dir / "breach" / case
    assert not stored.exists() or not any(stored.iterdir())
    res = lv.breach.triage(operator, case, [good])
    assert res["matches"] and len(lv.breach.show(operator, case)["evidence"]) == 1


def test_an_erased_patient_left_with_encodings_is_never_matched(
        lv: Labvault, operator: Actor, store: Store, tmp_path: Path) -> None:
    """The triage no longer scans every encoding for erased patients' before it starts
    (~5 s at a million patients); an encoding left behind (erasure without the breach hook,
    as before this module existed) must still never make an erased patient a match, and
    is deleted when met."""
    from labvault.store import repositories_breach as brepo
    t = store.tenants[0]
    mine = [p for p in store.patients if p[0] == t][:10]
    _t, pid, _rec = mine[0]
    hooks = list(lv.patients.erase_hooks)
    lv.patients.erase_hooks.clear()
    try:
        lv.patients.erase(operator, pid)
    finally:
        lv.patients.erase_hooks.extend(hooks)
    with lv.begin() as conn:
        before = brepo.count_encodings(conn, t)
        assert brepo.inactive_among(conn, [pid, mine[1][1]]) == {pid}
    dump = sd.make_dump(mine, 0, seed=6)
    path = tmp_path / "d.csv"
    sd.write_csv(path, dump.rows)
    case = lv.breach.open_case(operator, "t", "2026-11-01T09:00:00Z")
    res = lv.breach.triage(operator, case, [path])
    assert {m["patient_id"] for m in res["matches"]} == {p for _, p, _ in mine[1:]}
    with lv.begin() as conn:
        assert brepo.count_encodings(conn, t) == before - 1
