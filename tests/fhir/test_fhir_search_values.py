"""The search value grammar on its own (interop/fhir/search.py): implicit ranges of dates,
ANDed repeats, tokens with escapes. The server tests show the same through HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from labvault.interop.fhir.outcome import FhirError
from labvault.interop.fhir.search import Token, any_of, date_window, parse_date, tokens
from labvault.interop.fhir.server import previous_offset


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(("value", "start", "end"), [
    ("2026", utc(2026, 1, 1), utc(2027, 1, 1)),
    ("2026-12", utc(2026, 12, 1), utc(2027, 1, 1)),
    ("2026-11-29", utc(2026, 11, 29), utc(2026, 11, 30)),
    ("2026-11-29T05:19:30Z", utc(2026, 11, 29, 5, 19, 30), utc(2026, 11, 29, 5, 19, 31)),
    ("2026-11-29T05:19:30.25Z", utc(2026, 11, 29, 5, 19, 30, 250000),
     utc(2026, 11, 29, 5, 19, 30, 260000)),
    ("2026-11-29T05:19:30.000001Z", utc(2026, 11, 29, 5, 19, 30, 1),
     utc(2026, 11, 29, 5, 19, 30, 2)),
    ("2026-11-29T00:30:00+01:00", utc(2026, 11, 28, 23, 30), utc(2026, 11, 28, 23, 30, 1)),
    ("2026-12-31T23:30:00-05:00", utc(2027, 1, 1, 4, 30), utc(2027, 1, 1, 4, 30, 1)),
])
def test_a_value_covers_its_implicit_range_in_utc(value: str, start: datetime,
                                                  end: datetime) -> None:
    got = parse_date("date", value)
    assert (got.prefix, got.start, got.end) == ("eq", start, end)


def test_repeats_keep_the_tighter_bounds_in_any_order() -> None:
    values = ["ge2026-01-01", "lt2026-03-01", "gt2026-01-31T23:59:59Z", "le2026-12"]
    expected = (utc(2026, 2, 1), utc(2026, 3, 1))
    assert date_window("date", values) == expected
    assert date_window("date", values[::-1]) == expected
    since, until = date_window("date", ["2026-01-05", "2026-01-06"])
    assert since is not None and until is not None and since >= until   # nothing
    assert date_window("date", []) == (None, None)


@pytest.mark.parametrize("value", ["2026-11-29T05:19:30", "2026-11-29T05:19Z", "2026-02-29",
                                   "2026-11-29T24:00:00Z", "2026-11-29T05:19:60Z",
                                   "2026-11-29T05:19:30+24:00", "2026-11-29T05:19:30.1234567Z",
                                   "sa2026", "2026-1-5", " 2026", "2026,2027", ""])
def test_a_value_that_names_no_instant_is_refused(value: str) -> None:
    with pytest.raises(FhirError) as err:
        parse_date("date", value)
    assert err.value.http_status == 400 and err.value.expression == ["date"]


def test_tokens_split_on_unescaped_commas_and_bars() -> None:
    assert tokens("code", r"718-7,http://loinc.org|789-8,|x,http://loinc.org|") == [
        Token(None, "718-7"), Token("http://loinc.org", "789-8"), Token("", "x"),
        Token("http://loinc.org", None)]
    assert tokens("identifier", r"urn:x|a\,b,c\|d") == [Token("urn:x", "a,b"), Token(None, "c|d")]
    assert any_of("given", r"Jean,Marie\, dite Mimi") == ["Jean", "Marie, dite Mimi"]
    for bad in ("a,", ",a", "a|b|c", "|"):
        with pytest.raises(FhirError) as err:
            tokens("code", bad)
        assert err.value.expression == ["code"]
    with pytest.raises(FhirError):
        any_of("given", "Jean,,Marie")


def test_previous_from_past_the_end_is_the_last_page_with_matches() -> None:
    assert previous_offset(100, 5, 20) == 15
    assert previous_offset(17, 5, 20) == 12
    assert previous_offset(3, 5, 20) == 0
    assert previous_offset(10, 5, 0) == 0
