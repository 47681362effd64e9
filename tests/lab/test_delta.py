"""The delta check's rule (``domain/delta.py``) and its catalogue data (``delta`` per test,
checked on load): exceeded or not by the absolute and the relative limit, the window,
units and comparators not compared, no previous result, another test's ignored."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labvault.domain import delta as D
from labvault.domain import lab as L
from labvault.errors import InvalidRecord
from labvault.services.lab import default_catalogue_data

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
K_LIMIT = L.DeltaLimit(1.0, None, 7)


def obs(value: float, code: str = "2823-3", unit: str | None = "mmol/L",
        comparator: str | None = None, kind: L.ValueKind = L.ValueKind.NUMERIC,
        flag: L.Flag | None = L.Flag.NORMAL) -> L.Observation:
    return L.Observation(code, "test", kind, value if kind == L.ValueKind.NUMERIC else None,
                         None, None if kind == L.ValueKind.NUMERIC else str(value), unit,
                         comparator, None, None, None, flag, None, None, "2026.2")


def prior(value: float, days_before: float, **kw: Any) -> D.Prior:
    return D.Prior(T0 - timedelta(days=days_before), obs(value, **kw), "obs_prev")


def test_exceeded_by_the_absolute_limit() -> None:
    found = D.check(obs(6.0), T0, [prior(4.1, 2)], K_LIMIT)
    assert found is not None and found.exceeded
    assert found.outcome == D.Outcome.EXCEEDED
    assert found.current == 6.0 and found.change == pytest.approx(1.9)
    assert found.relative == pytest.approx(1.9 / 4.1 * 100)
    assert found.previous.observation.numeric == 4.1 and found.limit == K_LIMIT
    # downwards too
    assert D.check(obs(3.0), T0, [prior(4.1, 2)], K_LIMIT).exceeded  # type: ignore[union-attr]


def test_within_the_absolute_limit_and_at_it() -> None:
    for value in (4.5, 5.1, 3.1):        # 5.1 - 4.1 = 1.0: at the limit is within it
        found = D.check(obs(value), T0, [prior(4.1, 2)], K_LIMIT)
        assert found is not None and found.outcome == D.Outcome.WITHIN, value


def test_relative_limit() -> None:
    plt = L.DeltaLimit(None, 50, 7)
    assert D.check(obs(100, "777-3", "10*9/L"), T0, [prior(250, 1, code="777-3",
                                                           unit="10*9/L")], plt).exceeded  # type: ignore[union-attr]
    found = D.check(obs(150, "777-3", "10*9/L"), T0,
                    [prior(250, 1, code="777-3", unit="10*9/L")], plt)
    assert found is not None and found.outcome == D.Outcome.WITHIN      # -40 %
    # a previous value of 0: no percentage, only an absolute limit can speak
    zero = D.check(obs(5, "777-3", "10*9/L"), T0, [prior(0, 1, code="777-3", unit="10*9/L")],
                   plt)
    assert zero is not None and zero.relative is None and zero.outcome == D.Outcome.WITHIN


def test_either_limit_is_enough() -> None:
    both = L.DeltaLimit(2.0, 10, 7)
    found = D.check(obs(11.5, "718-7", "g/dL"), T0, [prior(13.0, 1, code="718-7",
                                                          unit="g/dL")], both)
    assert found is not None and found.exceeded               # 1.5 g/dL but 11.5 %


def test_the_window() -> None:
    assert D.check(obs(6.0), T0, [prior(4.1, 7)], K_LIMIT).exceeded  # type: ignore[union-attr]
    old = D.check(obs(6.0), T0, [prior(4.1, 7.01)], K_LIMIT)
    assert old is not None and old.outcome == D.Outcome.OUT_OF_WINDOW and not old.exceeded
    assert old.previous.observation.numeric == 4.1        # still shown as the previous one


def test_the_latest_before_is_compared_not_a_later_or_an_older_one() -> None:
    priors = [prior(6.0, 5), prior(5.8, 1), D.Prior(T0 + timedelta(hours=1), obs(2.0))]
    found = D.check(obs(6.0), T0, priors, K_LIMIT)
    assert found is not None and found.previous.observation.numeric == 5.8
    assert found.outcome == D.Outcome.WITHIN


def test_different_units_and_comparators_are_not_compared() -> None:
    unit = D.check(obs(6.0), T0, [prior(4.1, 1, unit="mg/dL")], K_LIMIT)
    assert unit is not None and unit.outcome == D.Outcome.NOT_COMPARED
    assert unit.why is not None and "units differ" in unit.why and unit.change is None
    # the litre spelt l is the same unit
    same = D.check(obs(6.0), T0, [prior(4.1, 1, unit="mmol/l")], K_LIMIT)
    assert same is not None and same.exceeded
    for current, previous in ((obs(0.5, comparator="<"), prior(4.1, 1)),
                              (obs(6.0), prior(0.5, 1, comparator="<"))):
        found = D.check(current, T0, [previous], K_LIMIT)
        assert found is not None and found.outcome == D.Outcome.NOT_COMPARED
        assert found.why is not None and "comparator" in found.why


def test_no_previous_and_another_tests_previous() -> None:
    assert D.check(obs(6.0), T0, [], K_LIMIT) is None
    assert D.check(obs(6.0), T0, [prior(13.0, 1, code="718-7", unit="g/dL")], K_LIMIT) is None


def test_no_limit_shows_the_previous_without_judging() -> None:
    found = D.check(obs(6.0, "2601-3"), T0, [prior(0.8, 1, code="2601-3")], None)
    assert found is not None and found.outcome == D.Outcome.NO_LIMIT and not found.exceeded


@given(previous=st.floats(0.01, 1000), absolute=st.floats(0.01, 100),
       fraction=st.floats(-1, 1), days=st.integers(1, 30), age=st.floats(0.01, 1))
def test_a_change_within_the_absolute_limit_never_triggers(
        previous: float, absolute: float, fraction: float, days: int, age: float) -> None:
    current = previous + fraction * absolute
    found = D.check(obs(current), T0, [prior(previous, age * days)],
                    L.DeltaLimit(absolute, None, days))
    assert found is not None and not found.exceeded


@given(previous=st.floats(0.01, 1000), percent=st.floats(1, 200), fraction=st.floats(-1, 1))
def test_a_change_within_the_relative_limit_never_triggers(
        previous: float, percent: float, fraction: float) -> None:
    current = previous * (1 + fraction * percent / 100)
    found = D.check(obs(current), T0, [prior(previous, 1)], L.DeltaLimit(None, percent, 7))
    assert found is not None and not found.exceeded


@given(previous=st.floats(0.01, 1000), absolute=st.floats(0.01, 100),
       beyond=st.floats(1.001, 100))
def test_a_change_beyond_the_absolute_limit_always_triggers(
        previous: float, absolute: float, beyond: float) -> None:
    found = D.check(obs(previous + beyond * absolute), T0, [prior(previous, 1)],
                    L.DeltaLimit(absolute, None, 7))
    assert found is not None and found.exceeded


# -- a coded test: identical (the blood group) -------------------------------------------
GROUP = L.DeltaLimit(None, None, 366, identical=True)


def group(code: str, system: str | None = None, display: str | None = None) -> L.Observation:
    return L.Observation("882-1", "ABO+Rh", L.ValueKind.CODED, None,
                         L.CodedValue(code, display, system), None, None, None, None, None,
                         None, None, None, None, "2026.2")


def group_prior(code: str, days_before: float, system: str | None = None,
                display: str | None = None) -> D.Prior:
    return D.Prior(T0 - timedelta(days=days_before), group(code, system, display), "obs_prev")


def test_a_different_blood_group_is_held_the_same_one_is_not() -> None:
    found = D.check(group("B+", display="B RhD+"), T0, [group_prior("A+", 200, display="A RhD+")],
                    GROUP)
    assert found is not None and found.exceeded
    assert found.previous_shown == "A RhD+" and found.current_shown == "B RhD+"
    assert found.change is None and found.current is None
    # the same code, written with other case or spaces: the same group
    same = D.check(group("a +"), T0, [group_prior("A+", 200)], GROUP)
    assert same is not None and same.outcome == D.Outcome.WITHIN


def test_blood_groups_of_two_coding_systems_are_not_compared() -> None:
    found = D.check(group("278149003", "http://snomed.info/sct"), T0,
                    [group_prior("A+", 10, "urn:lab:local")], GROUP)
    assert found is not None and found.outcome == D.Outcome.NOT_COMPARED
    assert found.why is not None and "coding systems differ" in found.why
    # one side without a system: the codes speak
    assert D.check(group("B+", "urn:lab:local"), T0, [group_prior("A+", 10)],
                   GROUP).exceeded  # type: ignore[union-attr]


def test_a_blood_group_older_than_the_window_is_shown_not_judged() -> None:
    found = D.check(group("B+"), T0, [group_prior("A+", 400)], GROUP)
    assert found is not None and found.outcome == D.Outcome.OUT_OF_WINDOW


@given(codes=st.lists(st.sampled_from(["A+", "A-", "B+", "B-", "AB+", "AB-", "O+", "O-"]),
                      min_size=2, max_size=6))
def test_a_blood_group_is_held_exactly_when_it_differs_from_the_latest(
        codes: list[str]) -> None:
    *earlier, now = codes
    priors = [group_prior(c, len(earlier) - i) for i, c in enumerate(earlier)]
    found = D.check(group(now), T0, priors, GROUP)
    assert found is not None and found.exceeded == (now != earlier[-1])


# -- the catalogue's data ------------------------------------------------------------------
def test_shipped_catalogue_has_limits_for_the_common_tests_only() -> None:
    cat = L.Catalogue.parse(default_catalogue_data())
    with_limit = {c for c, t in cat.tests.items() if t.delta is not None}
    for code in ("2823-3", "2951-2", "14682-9", "718-7", "777-3", "6690-2", "2345-7",
                 "2000-8"):
        assert code in with_limit, code
    # for coded tests, only the blood group (identical); none for tests whose changes are
    # the clinical point
    assert {c for c, t in cat.tests.items() if t.kind != L.ValueKind.NUMERIC} & with_limit \
        == {"882-1", "883-9", "10331-7"}
    assert cat.get("882-1").delta == GROUP  # type: ignore[union-attr]
    assert "6301-6" not in with_limit and "1988-5" not in with_limit
    assert cat.get("2823-3").delta == L.DeltaLimit(1.0, None, 7)  # type: ignore[union-attr]
    # it loads back as it is shown
    again = L.Catalogue.parse(cat.as_json())
    assert {c: t.delta for c, t in again.tests.items()} == {
        c: t.delta for c, t in cat.tests.items()}


def _with_delta(code: str, delta: object) -> dict[str, Any]:
    data = copy.deepcopy(default_catalogue_data())
    for i, t in enumerate(data["tests"]):
        if t["code"] == code:
            t["delta"] = delta
            data["_index"] = i
    return data


@pytest.mark.parametrize(("code", "delta", "field", "words"), [
    ("2823-3", {"absolute": 0, "days": 7}, "delta.absolute", "must be a number above 0"),
    ("2823-3", {"absolute": "1", "days": 7}, "delta.absolute", "must be a number above 0"),
    ("2823-3", {"percent": -5, "days": 7}, "delta.percent", "must be a number above 0"),
    ("2823-3", {"days": 7}, "delta", "gives neither absolute nor percent"),
    ("2823-3", {"absolute": 1}, "delta.days", "whole number of days"),
    ("2823-3", {"absolute": 1, "days": 1.5}, "delta.days", "whole number of days"),
    ("2823-3", {"absolute": 1, "days": 400}, "delta.days", "whole number of days"),
    ("2823-3", {"absolute": 1, "days": 7, "hours": 2}, "delta.hours", "not a known field"),
    ("2823-3", [1, 7], "delta", "must be an object"),
    ("882-1", {"absolute": 1, "days": 7}, "delta", "numeric tests only"),
    ("882-1", {"days": 7}, "delta", "identical: true"),
    ("882-1", {"identical": False, "days": 7}, "delta.identical", "must be true"),
    ("882-1", {"identical": True}, "delta.days", "whole number of days"),
    ("2823-3", {"identical": True, "absolute": 1, "days": 7}, "delta.identical",
     "coded tests only"),
])
def test_the_loader_refuses_a_wrong_delta_naming_the_test_and_field(
        code: str, delta: object, field: str, words: str) -> None:
    data = _with_delta(code, delta)
    i = data.pop("_index")
    with pytest.raises(InvalidRecord) as exc:
        L.Catalogue.parse(data)
    errors = {e.field: e.rule for e in exc.value.errors}
    where = f"tests[{i}].{field}"
    assert where in errors, errors
    assert words in errors[where]
    if field != "delta.hours":               # the unknown-key check is the generic one
        assert f"(test {code})" in errors[where]


def test_two_results_of_one_time_the_one_entered_first_is_the_earlier() -> None:
    """Two orders of one blood draw (results typed in: dated by the specimen): the one
    entered first is the previous one; without entry times, neither is before the other."""
    entered = T0 + timedelta(hours=2)
    first = D.Prior(T0, obs(4.1), "obs_first", entered - timedelta(minutes=5))
    later = D.Prior(T0, obs(4.4), "obs_later", entered + timedelta(minutes=5))
    assert D.latest_before("2823-3", T0, [first, later], entered) == first
    assert D.latest_before("2823-3", T0, [first, later]) is None
    found = D.check(obs(6.0), T0, [later, first], K_LIMIT, entered)
    assert found is not None and found.previous == first and found.exceeded


def test_the_report_prints_a_number_or_a_code_within_the_lookback() -> None:
    """``report_prior``: the report's "Antériorité" -- the previous result within
    ``days``, whatever the delta window; a determination for an ``identical`` limit; none
    for a text result."""
    assert D.report_prior(obs(4.5), T0, [prior(4.1, 400)], 732) == D.Anteriority(
        prior(4.1, 400))
    assert D.report_prior(obs(4.5), T0, [prior(4.1, 733)], 732) is None
    group = L.DeltaLimit(None, None, 366, identical=True)
    found = D.report_prior(obs(1, "882-1", None, kind=L.ValueKind.TEXT), T0,
                           [prior(1, 30, code="882-1", unit=None)], 732, limit=group)
    assert found is None                                   # a text result: none
    coded = L.Observation("882-1", "ABO", L.ValueKind.CODED, None,
                          L.CodedValue("A+", "A RhD+"), None, None, None, None, None, None,
                          None, None, None, "2026.2")
    earlier = D.Prior(T0 - timedelta(days=30), coded, "obs_group")
    assert D.report_prior(coded, T0, [earlier], 732, limit=group) == D.Anteriority(
        earlier, determination=True)
