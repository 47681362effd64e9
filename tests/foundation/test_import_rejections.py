"""T7 (hostile input) on the migration path: each bad line is rejected with its line
number and the rule it broke, and nothing of it is stored; good lines around it are
imported. Through the CLI, on both backends."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from labvault.domain.actors import Actor
from labvault.store.schema import blind_index, patient_keys, patients
from tests.foundation.conftest import Cli, synthetic, write_ndjson


def _counts(cli: Cli) -> tuple[int, int, int]:
    lv = cli.open()
    try:
        with lv.begin() as conn:
            return tuple(int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
                         for t in (patients, patient_keys, blind_index))  # type: ignore[return-value]
    finally:
        lv.close()


def _bad_key(nir: str) -> str:
    key = int(nir[13:])
    return nir[:13] + f"{(key + 1) % 97 or 1:02d}"


def test_bad_lines_rejected_with_line_and_reason(cli: Cli) -> None:
    tenant = cli.init_with_tenant()
    good = synthetic(6, seed=61)
    bad = synthetic(6, seed=62, start=100)
    lines: list[dict[str, Any] | str] = [
        good[0],
        {**bad[0], "nir": _bad_key(bad[0]["nir"])},                  # 2: NIR control key
        good[1],
        {**bad[1], "phone": "06 12 34"},                             # 4: phone too short
        {**bad[2], "email": "jeanne.martin@@example.org"},           # 5: e-mail syntax
        '{"birth_name": "Martin", "first_names": ["Jeanne"',         # 6: malformed JSON
        {**bad[3], "shoe_size": 42},                                 # 7: unknown field
        {**bad[4], "address": {**bad[4]["address"], "floor": 3}},    # 8: unknown nested field
        good[2],
        "",                                                          # 10: blank: ignored
        "[1, 2, 3]",                                                 # 11: not an object
        {**bad[5], "birth_date": "1984-13-45"},                      # 12: impossible date
        good[3], good[4], good[5],
    ]
    f = write_ndjson(cli.root / "mixed.ndjson", lines)
    report = cli.ok("patient", "import", str(f), "--tenant", tenant)
    assert report["imported"] == 6
    by_line: dict[int, list[dict[str, Any]]] = {}
    for r in report["rejections"]:
        by_line.setdefault(r["line"], []).append(r)
    assert sorted(by_line) == [2, 4, 5, 6, 7, 8, 11, 12]
    assert report["rejected"] == len(report["rejections"])
    assert [(r["field"], r["reason"]) for r in by_line[2]] == [("nir", "control key does not match")]
    assert by_line[4][0]["field"] == "phone" and "phone number" in by_line[4][0]["reason"]
    assert by_line[5][0]["field"] == "email" and "not a valid e-mail" in by_line[5][0]["reason"]
    assert by_line[6][0]["field"] == "(line)" and "not valid JSON" in by_line[6][0]["reason"]
    assert [(r["field"], r["reason"]) for r in by_line[7]] == [("shoe_size", "is not a known field")]
    assert [r["field"] for r in by_line[8]] == ["address.floor"]
    assert by_line[11][0]["reason"] == "must be a JSON object"
    assert by_line[12][0]["field"] == "birth_date"

    # Nothing of a rejected line was stored: 6 patients, 6 keys, only their index rows.
    n_pat, n_keys, n_idx = _counts(cli)
    assert (n_pat, n_keys) == (6, 6)
    lv = cli.open()
    try:
        op = Actor.operator()
        for b in bad:
            assert lv.patients.find(op, tenant, email=b["email"]) == []
            assert lv.patients.find(op, tenant, birth_name=b["birth_name"],
                                    first_name=b["first_names"][0],
                                    birth_date=b["birth_date"]) == []
        found = [lv.patients.find(op, tenant, nir=g["nir"]) for g in good]
        assert all(len(x) == 1 for x in found)
    finally:
        lv.close()
    # index rows: one per kind per good patient (nir, email, phone, name+dob[, used name], ext id)
    assert 6 * 5 <= n_idx <= 6 * 7

    # Re-running the same file: the good lines are already present, the bad ones still rejected.
    again = cli.ok("patient", "import", str(f), "--tenant", tenant)
    assert (again["imported"], again["skipped_existing"]) == (0, 6)
    assert sorted({r["line"] for r in again["rejections"]}) == [2, 4, 5, 6, 7, 8, 11, 12]
    assert _counts(cli) == (n_pat, n_keys, n_idx)


def test_whole_file_rejected_exits_2_and_stores_nothing(cli: Cli) -> None:
    tenant = cli.init_with_tenant()
    f = write_ndjson(cli.root / "bad.ndjson",
                     ["not json at all", json.dumps({"birth_name": "X"})])
    r = cli.run("patient", "import", str(f), "--tenant", tenant, "--json")
    assert r.exit_code == 2
    out = json.loads(r.stdout)
    assert (out["imported"], out["rejected"] > 0) == (0, True)
    assert {x["line"] for x in out["rejections"]} == {1, 2}
    assert _counts(cli) == (0, 0, 0)


def test_not_utf8_and_oversized_lines(cli: Cli) -> None:
    tenant = cli.init_with_tenant()
    p = synthetic(2, seed=63)
    f = cli.root / "latin1.ndjson"
    f.write_bytes(json.dumps({**p[0], "birth_name": "Lefèvre"}, ensure_ascii=False)
                  .encode("latin-1") + b"\n"
                  + json.dumps({**p[1], "used_name": "x" * 70_000}).encode() + b"\n")
    r = cli.run("patient", "import", str(f), "--tenant", tenant, "--json")
    out = json.loads(r.stdout)
    assert out["imported"] == 0
    assert [(x["line"], "UTF-8" in x["reason"] or "longer" in x["reason"])
            for x in out["rejections"]] == [(1, True), (2, True)]
    assert _counts(cli) == (0, 0, 0)


def test_a_key_given_twice_rejects_its_line(cli: Cli) -> None:
    """json keeps the last of two equal keys silently: which NIR was meant cannot be
    told, so the line is rejected naming the key (a nested one too); others import."""
    tenant = cli.init_with_tenant()
    p = synthetic(3, seed=64)
    first = json.dumps(p[0])
    twice = first.replace('"nir": ', f'"nir": "{p[1]["nir"]}", "nir": ', 1)
    city = json.dumps(p[2]).replace('"city": ', '"city": "Lille", "city": ', 1)
    assert twice.count('"nir"') == 2 and city.count('"city"') == 2
    f = cli.root / "twice.ndjson"
    f.write_text(f"{twice}\n{json.dumps(p[1])}\n{city}\n")
    report = cli.ok("patient", "import", str(f), "--tenant", tenant)
    assert report["imported"] == 1
    assert [(r["line"], r["field"]) for r in report["rejections"]] == [(1, "nir"), (3, "city")]
    assert all("given twice" in r["reason"] for r in report["rejections"])
    assert p[0]["nir"] not in json.dumps(report) and p[1]["nir"] not in json.dumps(report)
