"""The catalogue loader refuses what would silently change an interpretation (a misspelt
key, inverted bounds, panic limits inside the range, a code twice), naming the path;
``labvault catalogue show`` prints what was loaded, ranges and panic limits included."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.errors import InvalidRecord, UserError
from labvault.services.app import Labvault
from labvault.services.lab import default_catalogue_data
from tests.foundation.conftest import Cli, make_cli
from tests.lab.conftest import store_unchecked_catalogue

# The QA report's file (finding 11): every line of it is a mistake.
QA_CATALOGUE = {"version": "qa-1", "tests": [
    {"code": "2823-3", "display": "Potassium", "kind": "numeric", "unit": "mmol/L",
     "ranges": [{"age_minimum": 18, "low": 3.5, "high": 5.1},
                {"sex": "F", "low": 5.1, "high": 3.5, "age_min": 30, "age_max": 20}],
     "panic_low": 6.0, "panic_high": 2.0},
    {"code": "2823-3", "display": "Potassium duplicate", "kind": "numeric", "unit": "mmol/L",
     "ranges": [{"low": 1, "high": 2}]}]}


def potassium(**changes: Any) -> dict[str, Any]:
    test = {"code": "2823-3", "display": "Potassium", "unit": "mmol/L",
            "ranges": [{"low": 3.5, "high": 5.1}], "panic_low": 2.8, "panic_high": 6.2}
    return {"version": "t-1", "tests": [{**test, **changes}]}


def refused(data: object) -> dict[str, str]:
    with pytest.raises(InvalidRecord) as exc:
        L.Catalogue.parse(data)
    return {e.field: e.rule for e in exc.value.errors}


def test_the_qa_catalogue_is_refused_line_by_line() -> None:
    errors = refused(QA_CATALOGUE)
    assert set(errors) == {"tests[0].ranges[0].age_minimum", "tests[0].ranges[1].low",
                           "tests[0].ranges[1].age_min", "tests[0].panic_low",
                           "tests[1].code"}
    assert errors["tests[0].ranges[0].age_minimum"] == "is not a known field"
    assert errors["tests[0].ranges[1].low"] == "must not be above high (5.1 > 3.5)"
    assert errors["tests[0].ranges[1].age_min"].startswith("must be below age_max (20)")
    assert errors["tests[0].panic_low"] == "must be below panic_high (6 >= 2)"
    assert errors["tests[1].code"] == "2823-3 is already used by tests[0].code"


@pytest.mark.parametrize(("changes", "field", "rule"), [
    ({"panic_low": 4.0}, "tests[0].panic_low", "4 is inside the reference range ranges[0]"),
    ({"panic_high": 5.0}, "tests[0].panic_high", "5 is inside the reference range ranges[0]"),
    ({"ranges": [{"sex": "F"}]}, "tests[0].ranges[0]", "gives neither low nor high"),
    ({"ranges": [{"low": 3.5, "high": 5.1, "age_min": -1}]}, "tests[0].ranges[0].age_min",
     "must be 0 or more"),
    ({"ranges": [{"low": 3.5, "high": 5.1, "age_min": 18, "age_max": 18}]},
     "tests[0].ranges[0].age_min", "must be below age_max (18)"),
    ({"ranges": [{"low": "3.5", "high": 5.1}]}, "tests[0].ranges[0].low", "must be a number"),
    ({"local_codes": "K"}, "tests[0].local_codes", "must be a list of codes"),
])
def test_each_contradiction_is_named(changes: dict[str, Any], field: str, rule: str) -> None:
    errors = refused(potassium(**changes))
    assert field in errors and errors[field].startswith(rule), errors


def test_a_local_code_names_one_test() -> None:
    data = potassium(local_codes=["K"])
    data["tests"].append({"code": "2951-2", "display": "Sodium", "unit": "mmol/L",
                          "ranges": [{"low": 136, "high": 145}], "local_codes": ["NA", "K"]})
    assert refused(data) == {"tests[1].local_codes[1]": "K is already used by "
                                                        "tests[0].local_codes[0]"}


def test_what_is_shown_loads_back_the_same() -> None:
    cat = L.Catalogue.parse(default_catalogue_data())
    again = L.Catalogue.parse(json.loads(json.dumps(cat.as_json())))
    assert again == cat
    hb = cat.as_json()["tests"][2]
    assert hb["code"] == "718-7" and (hb["panic_low"], hb["panic_high"]) == (7.0, 20.0)
    assert {"sex": "F", "age_min": 15.0, "age_max": None, "low": 12.0, "high": 16.0,
            "text": None} in hb["ranges"]


def test_a_refused_catalogue_leaves_the_one_in_force(lab_lv: Labvault, operator: Actor,
                                                     tenant_id: str) -> None:
    before = lab_lv.lab.catalogue(tenant_id)
    with pytest.raises(InvalidRecord):
        lab_lv.lab.load_catalogue(operator, tenant_id, copy.deepcopy(QA_CATALOGUE))
    assert lab_lv.lab.catalogue_versions(tenant_id) == []
    assert lab_lv.lab.catalogue(tenant_id) == before


def test_a_stored_catalogue_that_no_longer_passes_fails_closed(
        lab_lv: Labvault, operator: Actor, tenant_id: str) -> None:
    """A catalogue loaded before these checks is not used with its mistakes: results are
    refused with a message saying to load a corrected one."""
    store_unchecked_catalogue(lab_lv, tenant_id, QA_CATALOGUE)
    with pytest.raises(UserError, match="catalogue qa-1 no longer passes") as exc:
        lab_lv.lab.catalogue(tenant_id)
    assert "labvault catalogue load" in exc.value.hint


@pytest.fixture
def cli(tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    return make_cli("sqlite", tmp_path, request)


def test_catalogue_show_prints_ranges_and_panic_limits(cli: Cli) -> None:
    tenant = cli.init_with_tenant()
    bad = cli.root / "bad.json"
    bad.write_text(json.dumps(QA_CATALOGUE))
    r = cli.user_error("catalogue", "load", str(bad), "--tenant", tenant)
    assert "tests[0].ranges[0].age_minimum: is not a known field" in r.stderr
    good = cli.root / "good.json"
    good.write_text(json.dumps(potassium(local_codes=["K"],
                                         delta={"absolute": 1.0, "percent": 25, "days": 7})))
    cli.ok("catalogue", "load", str(good), "--tenant", tenant)
    shown = cli.ok("catalogue", "show", "--tenant", tenant)
    assert shown["version"] == "t-1"
    (k,) = shown["tests"]
    assert (k["panic_low"], k["panic_high"]) == (2.8, 6.2)
    assert k["ranges"] == [{"sex": None, "age_min": 0.0, "age_max": None, "low": 3.5,
                            "high": 5.1, "text": None}]
    assert cli.ok("catalogue", "show", "--tenant", tenant, "--code", "K")["tests"] == [k]
    cli.user_error("catalogue", "show", "--tenant", tenant, "--code", "718-7")
    human = cli.run("catalogue", "show", "--tenant", tenant)
    assert human.exit_code == 0
    assert "(panic <2.8 >6.2)" in human.stdout and "any sex, all ages: 3.5-5.1 mmol/L" in \
        human.stdout
    assert "delta check: a change beyond 1 mmol/L or 25 % within 7 days" in human.stdout
    assert k["delta"] == {"absolute": 1.0, "percent": 25.0, "days": 7}


def test_a_key_given_twice_is_refused_with_its_line(cli: Cli) -> None:
    """json keeps the last of two equal keys silently: a catalogue giving `low` twice
    would load whichever came last. Refused whole, naming the key and the line."""
    tenant = cli.init_with_tenant()
    text = json.dumps(potassium(), indent=2).replace('"low": 3.5,', '"low": 3.5, "low": 35,')
    assert text.count('"low"') == 2
    twice = cli.root / "twice.json"
    twice.write_text(text)
    r = cli.user_error("catalogue", "load", str(twice), "--tenant", tenant)
    said = " ".join(r.stderr.split())
    line = next(n for n, t in enumerate(text.splitlines(), start=1) if '"low": 35' in t) - 1
    assert f"line {line}: the key 'low' appears twice" in said, said
    assert cli.ok("catalogue", "show", "--tenant", tenant)["version"] != "t-1"


def test_a_catalogue_not_in_utf8_is_named_not_a_traceback(cli: Cli) -> None:
    tenant = cli.init_with_tenant()
    latin1 = cli.root / "latin1.json"
    latin1.write_bytes(json.dumps(potassium(display="Potassium sérique"),
                                  ensure_ascii=False).encode("latin-1"))
    r = cli.user_error("catalogue", "load", str(latin1), "--tenant", tenant)
    assert "is not UTF-8 text" in " ".join(r.stderr.split())


def test_a_catalogue_saved_with_a_byte_order_mark_loads(cli: Cli) -> None:
    """Windows Notepad writes UTF-8 with a BOM; patient import already reads it."""
    tenant = cli.init_with_tenant()
    bom = cli.root / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(potassium(display="Potassium sérique"),
                                                  ensure_ascii=False).encode())
    cli.ok("catalogue", "load", str(bom), "--tenant", tenant)
