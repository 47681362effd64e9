"""Interpretation of one result against the catalogue (pure domain, no database):
comparators, calendar age at the band limits, units, what "normal" means for the bulk
validation."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from labvault.domain import lab as L
from labvault.services.lab import default_catalogue_data

CAT = L.Catalogue.parse(default_catalogue_data())
NOW = datetime(2026, 11, 29, 8, tzinfo=UTC)
ADULT = date(1980, 1, 1)


def interpret(code: str, value: object, sex: str | None = "F", birth: date | None = ADULT,
              at: datetime = NOW) -> L.Observation:
    test = CAT.get(code)
    assert test is not None
    data = {"code": code, "value": value, "unit": test.unit}
    return L.Observation.interpret(L.ResultInput.parse(data), test, CAT.version, sex, birth, at)


# -- 1. a value with a comparator is the interval it denotes ---------------------------------
@pytest.mark.parametrize(("code", "value", "flag"), [
    # CRP, range <=5 mg/L, no panic limits
    ("1988-5", "<10", L.Flag.INDETERMINATE),       # could be 4 (normal) or 9 (high)
    ("1988-5", "<=10", L.Flag.INDETERMINATE),
    ("1988-5", "<5", L.Flag.NORMAL),               # every value it may be is <= 5
    ("1988-5", "<=5", L.Flag.NORMAL),
    ("1988-5", ">5", L.Flag.HIGH),
    ("1988-5", ">=5", L.Flag.INDETERMINATE),       # 5 itself is normal
    ("1988-5", ">12", L.Flag.HIGH),
    # potassium, range 3.5-5.1 mmol/L, panic <2.8 / >6.2
    ("2823-3", ">1.0", L.Flag.INDETERMINATE),      # could be 1.5 (panic low) or 4 (normal)
    ("2823-3", "<2.0", L.Flag.CRITICAL_LOW),       # wholly below the panic limit
    ("2823-3", "<2.8", L.Flag.CRITICAL_LOW),
    ("2823-3", "<=2.8", L.Flag.INDETERMINATE),     # 2.8 itself is low, not critical
    ("2823-3", "<3.0", L.Flag.INDETERMINATE),      # low for sure, critical or not
    ("2823-3", ">7", L.Flag.CRITICAL_HIGH),
    ("2823-3", ">=6.2", L.Flag.INDETERMINATE),     # 6.2 itself is high, not critical
    ("2823-3", ">6.2", L.Flag.CRITICAL_HIGH),
    # sodium, range 136-145, panic <120 / >160: "<=" and "<" alike
    ("2951-2", "<=170", L.Flag.INDETERMINATE),
    ("2951-2", "<170", L.Flag.INDETERMINATE),
    ("2951-2", ">=170", L.Flag.CRITICAL_HIGH),
    ("2951-2", ">170", L.Flag.CRITICAL_HIGH),
])
def test_comparator_flags_only_what_the_whole_interval_is(code: str, value: str,
                                                          flag: L.Flag) -> None:
    assert interpret(code, value).flag == flag


@pytest.mark.parametrize(("value", "flag"), [
    (2.7, L.Flag.CRITICAL_LOW), (2.8, L.Flag.LOW), (3.5, L.Flag.NORMAL), (5.1, L.Flag.NORMAL),
    (5.2, L.Flag.HIGH), (6.2, L.Flag.HIGH), (6.3, L.Flag.CRITICAL_HIGH)])
def test_plain_values_keep_their_flags(value: float, flag: L.Flag) -> None:
    assert interpret("2823-3", value).flag == flag


def test_an_indeterminate_result_is_not_normal_and_not_a_panic() -> None:
    for value in ("<10", ">=5"):
        obs = interpret("1988-5", value)
        assert not L.is_normal(obs)
        assert obs.flag is not None and not obs.flag.is_panic
    assert interpret("2823-3", "<2.0").flag.is_panic     # type: ignore[union-attr]


def test_no_range_but_panic_limits_still_speak() -> None:
    """Sex unknown: haemoglobin has no adult range (sex-specific), its panic limits apply
    to any value — and to an interval only when it lies wholly beyond them."""
    assert interpret("718-7", 9.0, sex=None).flag is None
    assert interpret("718-7", "<5", sex=None).flag == L.Flag.CRITICAL_LOW
    assert interpret("718-7", "<9", sex=None).flag == L.Flag.INDETERMINATE
    assert interpret("718-7", ">8", sex=None).flag == L.Flag.INDETERMINATE   # 25 is panic
