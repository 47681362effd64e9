"""French test names: the shipped catalogue names every test as a French report does
(``label``), a laboratory's own catalogue may leave it out (the LOINC display is read then),
a bad label is refused naming the test, and a result keeps the name it was interpreted
with (docs/lab.md, "Test names")."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.errors import InvalidRecord
from labvault.services.app import Labvault
from labvault.services.lab import default_catalogue_data
from tests.foundation.conftest import Cli, make_cli
from tests.lab.conftest import store_unchecked_catalogue

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def potassium(**changes: Any) -> dict[str, Any]:
    """A laboratory's own one-test catalogue, without a label unless given."""
    test = {"code": "2823-3", "display": "Potassium [Moles/volume] in Serum or Plasma",
            "unit": "mmol/L", "ranges": [{"low": 3.5, "high": 5.1}]}
    return {"version": "own-1", "tests": [{**test, **changes}]}


def _result(value: float = 4.2) -> L.ResultInput:
    return L.ResultInput.parse({"code": "2823-3", "value": value, "unit": "mmol/L"})


def test_every_shipped_test_has_a_french_label() -> None:
    cat = L.Catalogue.parse(default_catalogue_data())
    assert len(cat.tests) == 61
    missing = [t.code for t in cat.tests.values() if not t.label]
    assert missing == []
    same = [t.code for t in cat.tests.values() if t.label == t.display]
    assert same == []
    assert all(len(t.name) <= L.LABEL_MAX and t.name == t.label for t in cat.tests.values())
    names = {code: cat.name_of(code) for code in ("6690-2", "718-7", "4548-4", "14682-9",
                                                  "3016-3", "3173-2", "890-4")}
    assert names == {"6690-2": "Leucocytes", "718-7": "Hémoglobine",
                     "4548-4": "Hémoglobine glyquée (HbA1c)", "14682-9": "Créatinine",
                     "3016-3": "TSH (thyréostimuline)",
                     "3173-2": "Temps de céphaline avec activateur (TCA)",
                     "890-4": "Recherche d'agglutinines irrégulières (RAI)"}
    assert cat.name_of("HB") == "Hémoglobine"          # an analyser's local code
    assert cat.name_of("99999-9") == "99999-9"         # no such test: its code


def test_a_catalogue_without_labels_reads_the_loinc_display() -> None:
    cat = L.Catalogue.parse(potassium())
    (k,) = cat.tests.values()
    assert k.label is None and k.name == "Potassium [Moles/volume] in Serum or Plasma"
    assert "label" not in k.as_json()                  # loads back as it was given
    obs = L.Observation.interpret(_result(), k, cat.version, "F", None, NOW)
    assert obs.label is None and obs.name == k.display
    assert "label" not in obs.as_json()


def test_a_result_keeps_the_label_it_was_interpreted_with() -> None:
    cat = L.Catalogue.parse(potassium(label="Potassium sérique"))
    (k,) = cat.tests.values()
    obs = L.Observation.interpret(_result(), k, cat.version, "F", None, NOW)
    stored = obs.as_json()
    assert stored["label"] == "Potassium sérique" and stored["display"] == k.display
    assert L.Observation.from_json(stored) == obs
    # a result stored before labels existed has none: its display is read
    del stored["label"]
    assert L.Observation.from_json(stored).name == k.display


@pytest.mark.parametrize(("label", "rule"), [
    ("", "is empty (test 2823-3)"),
    ("   ", "is empty (test 2823-3)"),
    (42, "must be text, the test's French name (test 2823-3)"),
    (["Potassium"], "must be text, the test's French name (test 2823-3)"),
    ("Potassium\nsérique", "must be one line without control characters (test 2823-3)"),
    ("K" * 81, "is longer than 80 characters (81) (test 2823-3)"),
])
def test_a_bad_label_is_refused_naming_the_test(label: object, rule: str) -> None:
    with pytest.raises(InvalidRecord) as exc:
        L.Catalogue.parse(potassium(label=label))
    assert {e.field: e.rule for e in exc.value.errors} == {"tests[0].label": rule}


def test_a_label_is_trimmed_and_eighty_characters_pass() -> None:
    (k,) = L.Catalogue.parse(potassium(label="  Potassium sérique ")).tests.values()
    assert k.label == "Potassium sérique"
    (k,) = L.Catalogue.parse(potassium(label="é" * 80)).tests.values()
    assert k.label == "é" * 80


def test_the_names_people_read_follow_the_labs_catalogue(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str,
        technician: Actor) -> None:
    """The shipped catalogue's French label on a result and on a missing test; a lab's own
    catalogue without labels: the LOINC display, for results entered after it."""
    lv = lab_lv
    spec = {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00"}
    first = lv.lab.create_order(operator, tenant_id, patient_id, {"tests": ["718-7", "2823-3"]},
                                {**spec, "accession_number": "LBL1"})
    assert first.test_names == {"718-7": "Hémoglobine", "2823-3": "Potassium"}
    (o,) = lv.lab.enter_results(technician, first.order_id,
                                [{"code": "2823-3", "value": 4.2, "unit": "mmol/L"}])
    assert o.observation.label == "Potassium" and o.as_json()["label"] == "Potassium"
    rep = lv.lab.get_report_by_order(operator, first.order_id)
    assert rep.missing == {"718-7": "Hémoglobine"}
    lv.lab.load_catalogue(operator, tenant_id, potassium())
    second = lv.lab.create_order(operator, tenant_id, patient_id, {"tests": ["2823-3"]},
                                 {**spec, "accession_number": "LBL2"})
    assert second.test_name("2823-3") == "Potassium [Moles/volume] in Serum or Plasma"
    (o2,) = lv.lab.enter_results(technician, second.order_id,
                                 [{"code": "2823-3", "value": 4.3, "unit": "mmol/L"}])
    assert o2.observation.label is None
    assert o2.as_json()["label"] == "Potassium [Moles/volume] in Serum or Plasma"
    # the first result keeps the name it was interpreted with
    again = lv.lab.get_report_by_order(operator, first.order_id)
    assert [v.observation.name for v in again.observations] == ["Potassium"]


@pytest.fixture
def cli(tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    return make_cli("sqlite", tmp_path, request)


def test_catalogue_load_refuses_a_bad_label_and_show_prints_both_names(cli: Cli) -> None:
    tenant = cli.init_with_tenant()
    human = cli.run("catalogue", "show", "--tenant", tenant, "--code", "718-7")
    assert human.exit_code == 0
    assert "Hémoglobine -- LOINC: Hemoglobin [Mass/volume] in Blood" in human.stdout
    assert cli.ok("catalogue", "show", "--tenant", tenant, "--code", "HB")["tests"][0][
        "label"] == "Hémoglobine"
    bad = cli.root / "bad.json"
    bad.write_text(json.dumps(potassium(label=" ")), "utf-8")
    r = cli.user_error("catalogue", "load", str(bad), "--tenant", tenant)
    assert "tests[0].label: is empty (test 2823-3)" in " ".join(r.stderr.split())
    assert cli.ok("catalogue", "show", "--tenant", tenant)["version"] != "own-1"
    plain = cli.root / "plain.json"
    plain.write_text(json.dumps(potassium()), "utf-8")
    cli.ok("catalogue", "load", str(plain), "--tenant", tenant)
    shown = cli.ok("catalogue", "show", "--tenant", tenant)
    assert "label" not in shown["tests"][0]
    human = cli.run("catalogue", "show", "--tenant", tenant)
    assert "Potassium [Moles/volume] in Serum or Plasma" in human.stdout
    assert "LOINC:" not in human.stdout


def test_an_order_is_still_shown_when_the_stored_catalogue_no_longer_passes(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str) -> None:
    """Results are refused then (test_catalogue), but reading an order must not be: its
    tests are named by their codes."""
    o = lab_lv.lab.create_order(operator, tenant_id, patient_id, {"tests": ["718-7"]})
    store_unchecked_catalogue(lab_lv, tenant_id,
                              potassium(ranges=[{"low": 5.1, "high": 3.5}]))  # inverted
    got = lab_lv.lab.get_order(operator, o.order_id)
    assert got.test_names == {} and got.test_name("718-7") == "718-7"
