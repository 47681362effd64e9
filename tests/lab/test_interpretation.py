"""Interpretation of one result against the catalogue (pure domain, no database):
comparators, calendar age at the band limits, units, what "normal" means for the bulk
validation."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from labvault.domain import lab as L
from labvault.errors import InvalidField, InvalidRecord
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
        assert L.review_reason(obs) == L.ReviewReason.INDETERMINATE
    assert interpret("2823-3", "<2.0").flag.is_panic     # type: ignore[union-attr]


def test_no_range_but_panic_limits_still_speak() -> None:
    """Sex unknown: haemoglobin has no adult range (sex-specific), its panic limits apply
    to any value — and to an interval only when it lies wholly beyond them."""
    assert interpret("718-7", 9.0, sex=None).flag is None
    assert interpret("718-7", "<5", sex=None).flag == L.Flag.CRITICAL_LOW
    assert interpret("718-7", "<9", sex=None).flag == L.Flag.INDETERMINATE
    assert interpret("718-7", ">8", sex=None).flag == L.Flag.INDETERMINATE   # 25 is panic


# -- 2. calendar age: a band's age_min applies on the birthday itself ------------------------
@pytest.mark.parametrize(("birth", "on", "age"), [
    (date(2008, 11, 29), date(2026, 11, 29), 18),       # the 18th birthday
    (date(2025, 11, 29), date(2026, 11, 29), 1),        # the 1st birthday
    (date(2008, 2, 29), date(2024, 2, 29), 16),         # leap-day birth, leap year
    (date(2008, 2, 29), date(2026, 3, 1), 18),          # ... common year: 1 March
    (date(2008, 2, 28), date(2026, 2, 28), 18),
    (date(2008, 3, 1), date(2026, 3, 1), 18),
    (date(2026, 11, 29), date(2026, 11, 29), 0),        # the day of birth
])
def test_age_is_whole_years_on_the_birthday(birth: date, on: date, age: int) -> None:
    assert L.age_years(birth, on) == age
    before = L.age_years(birth, on - timedelta(days=1))
    assert before is not None and (age == 0 or age - 1 < before < age)


def test_a_leap_day_birth_completes_its_year_on_1_march_in_common_years() -> None:
    """Rule: born 29 February -> the birthday of a common year is 1 March (on 28 February
    the day of birth has not yet come round)."""
    born = date(2008, 2, 29)
    assert L.age_years(born, date(2026, 2, 28)) < 18            # type: ignore[operator]
    assert L.age_years(born, date(2026, 3, 1)) == 18
    assert L.birthday(born, 2026) == date(2026, 3, 1)
    assert L.birthday(born, 2028) == date(2028, 2, 29)


def test_fractions_of_a_year_follow_the_calendar() -> None:
    born = date(2026, 1, 1)
    assert L.age_years(born, date(2026, 7, 2)) == pytest.approx(182 / 365)
    assert L.age_years(born, date(2025, 12, 1)) == 0.0            # before birth: 0


@pytest.mark.parametrize(("code", "birth", "value", "flag", "rng"), [
    # alkaline phosphatase: child band age_max 18, adult band age_min 18
    ("6768-6", date(2008, 11, 29), 60, L.Flag.NORMAL, "40-130 U/L"),      # 18 today
    ("6768-6", date(2008, 11, 30), 60, L.Flag.LOW, "100-400 U/L"),        # 18 tomorrow
    ("6768-6", date(2008, 2, 29), 60, L.Flag.NORMAL, "40-130 U/L"),
    # creatinine: age_max 1, then 1-18
    ("14682-9", date(2025, 11, 29), 40, L.Flag.NORMAL, "20-80 umol/L"),   # 1 today
    ("14682-9", date(2025, 11, 30), 40, L.Flag.HIGH, "14-34 umol/L"),
])
def test_bands_change_on_the_birthday(code: str, birth: date, value: float, flag: L.Flag,
                                      rng: str) -> None:
    obs = interpret(code, value, birth=birth)
    assert (obs.flag, obs.reference_range) == (flag, rng)


# -- the range chosen among those that match: the narrowest age band, then sex-specific -----
def _lab_own(*ranges: dict[str, object]) -> L.CatalogueTest:
    cat = L.Catalogue.parse({"version": "own-1", "tests": [
        {"code": "718-7", "display": "Hemoglobin", "unit": "g/dL", "ranges": list(ranges)}]})
    return cat.tests["718-7"]


def test_a_narrower_age_band_wins_over_sex_specificity() -> None:
    """A laboratory's own catalogue with "M, 0-120 y" and "any sex, 0-17 y": a boy of 10 is
    a child first -- the children's band, not the adult male range."""
    hb = _lab_own({"sex": "M", "age_min": 0, "age_max": 120, "low": 13, "high": 17},
                  {"age_min": 0, "age_max": 17, "low": 11.5, "high": 15})
    men, children = hb.ranges
    assert hb.range_for("M", 10) is children
    assert hb.range_for("F", 10) is children and hb.range_for(None, 10) is children
    assert hb.range_for("M", 17) is men and hb.range_for("M", 30) is men
    assert hb.range_for("F", 30) is None and hb.range_for("M", None) is None
    boy = L.Observation.interpret(L.ResultInput.parse({"code": "718-7", "value": 12.0,
                                                       "unit": "g/dL"}), hb, "own-1", "M",
                                  date(2016, 5, 1), NOW)
    assert (boy.flag, boy.reference_range) == (L.Flag.NORMAL, "11.5-15 g/dL")


def test_bands_as_wide_prefer_the_sex_specific_then_the_first_listed() -> None:
    """Ties as before: of two bands as wide, the sex-specific one; of two alike, the
    first in the catalogue."""
    hb = _lab_own({"age_min": 0, "age_max": 17, "low": 11, "high": 15},
                  {"sex": "M", "age_min": 1, "age_max": 18, "low": 12, "high": 16},
                  {"age_min": 2, "age_max": 19, "low": 10, "high": 14})
    anyone, boys, later = hb.ranges
    assert hb.range_for("M", 10) is boys
    assert hb.range_for("F", 10) is anyone and hb.range_for("F", 17.5) is later
    unbounded = _lab_own({"sex": "F", "low": 12, "high": 16}, {"low": 11, "high": 17})
    women, everyone = unbounded.ranges
    assert unbounded.range_for("F", None) is women and unbounded.range_for("F", 40) is women
    assert unbounded.range_for("U", 40) is everyone and unbounded.range_for(None, None) is everyone


def test_an_open_band_is_narrower_than_a_lifelong_one_from_an_earlier_age() -> None:
    """"18 y and over" ends at OPEN_BAND_END (130 y) when widths are compared: a man of 30
    gets the men's range over "any sex, 0-120 y", a boy of 10 the only band he matches;
    and a closed band beats an open one from the same age."""
    test = _lab_own({"sex": "M", "age_min": 18, "low": 13, "high": 17},
                    {"age_min": 0, "age_max": 120, "low": 11, "high": 16},
                    {"age_min": 0, "low": 10, "high": 18})
    men, lifelong, open_ = test.ranges
    assert test.range_for("M", 30) is men and test.range_for("F", 30) is lifelong
    assert test.range_for("M", 10) is lifelong and test.range_for(None, 125) is open_


def _range_for_before(test: L.CatalogueTest, sex: str | None,
                      age: float | None) -> L.RangeRule | None:
    """``CatalogueTest.range_for`` as it was until the narrower age band came first
    (sex-specific before any-sex, then the narrower band), frozen here on purpose: the
    shipped catalogue must give every patient the range it gave before the change -- the
    proof below compares the two, so this copy must not follow the code."""
    candidates = [r for r in test.ranges if r.matches(sex, age)]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (r.sex is None, (r.age_max or 200.0) - r.age_min))


def _ages_around_every_band_edge() -> list[float | None]:
    """Calendar ages (``age_years``) the day before, on and after each band edge's
    birthday -- born on an ordinary day, on 31 December and on 29 February -- a fraction
    of a year either side of each edge, the first 40 days and 36 months of life, the
    oldest ages, and the age unknown."""
    edges = {0.0} | {b for t in CAT.tests.values() for r in t.ranges
                     for b in (r.age_min, r.age_max) if b is not None}
    ages: set[float] = set()
    for edge in edges:
        ages.update(a for a in (edge - 1 / 366, edge, edge + 1 / 366) if a >= 0)
        if edge.is_integer():
            for born in (date(2001, 6, 15), date(2003, 12, 31), date(2000, 2, 29)):
                day = L.birthday(born, born.year + int(edge))
                ages.update(L.age_years(born, day + timedelta(days=d)) or 0.0
                            for d in (-1, 0, 1))
    born = date(2024, 2, 29)
    ages.update(L.age_years(born, born + timedelta(days=d)) or 0.0 for d in range(41))
    born = date(2024, 1, 15)
    ages.update(L.age_years(born, date(2024 + m // 12, m % 12 + 1, 15)) or 0.0
                for m in range(1, 37))
    ages.update((119.0, 120.0, 121.0, 150.0, 199.9, 200.0, 250.0))
    return [*sorted(ages), None]


def test_the_shipped_catalogue_chooses_the_ranges_it_chose_before() -> None:
    """The choice changed (the narrowest age band before sex specificity); the shipped
    catalogue's ranges do not: for every test, sex (F, M, U unknown, none) and age on the
    grid, the range chosen is the very rule the former choice took. Every rule of the
    catalogue is chosen somewhere on the grid, so no band is left unchecked."""
    ages = _ages_around_every_band_edge()
    assert len(ages) > 100
    chosen: set[int] = set()
    compared = 0
    for test in CAT.tests.values():
        for sex in ("F", "M", "U", None):
            for age in ages:
                now, before = test.range_for(sex, age), _range_for_before(test, sex, age)
                assert now is before, (test.code, sex, age, now, before)
                compared += 1
                if now is not None:
                    chosen.add(id(now))
    assert compared == len(CAT.tests) * 4 * len(ages)
    assert {id(r) for t in CAT.tests.values() for r in t.ranges} <= chosen


# -- 3. a number without its unit is refused -------------------------------------------------
@pytest.mark.parametrize(("code", "value"), [("14682-9", 8.0), ("2345-7", 5.4), ("1988-5", "<5")])
def test_a_number_without_a_unit_is_not_read_in_the_catalogue_unit(code: str,
                                                                   value: object) -> None:
    """Creatinine 8.0 meant in mg/dL (renal failure) was read as 8 umol/L, "low"."""
    test = CAT.get(code)
    assert test is not None and test.unit
    result = L.ResultInput.parse({"code": code, "value": value})
    with pytest.raises(InvalidField) as exc:
        L.Observation.interpret(result, test, CAT.version, "F", ADULT, NOW)
    assert exc.value.field == "unit"
    assert code in exc.value.rule and test.unit in exc.value.rule


def test_a_coded_result_needs_no_unit() -> None:
    test = CAT.get("882-1")
    assert test is not None and test.unit is None
    obs = L.Observation.interpret(L.ResultInput.parse({"code": "882-1", "value": {"code": "A"}}),
                                  test, CAT.version, "F", ADULT, NOW)
    assert obs.unit is None


# -- 4. the litre is l or L; every other symbol keeps its case --------------------------------
@pytest.mark.parametrize(("code", "value", "sent", "flag"), [
    ("2823-3", 5.6, "mmol/l", L.Flag.HIGH),          # potassium, catalogue mmol/L
    ("3094-0", 15, "mg/dl", L.Flag.NORMAL),          # urea nitrogen, mg/dL
    ("2345-7", 0.95, "g/l", L.Flag.NORMAL),          # glucose, g/L
    ("777-3", 120, "10*9/l", L.Flag.LOW),            # platelets, 10*9/L
    ("787-2", 90, "fl", L.Flag.NORMAL),              # MCV, fL (femtolitre)
    ("14682-9", 70, "umol/l", L.Flag.NORMAL),        # creatinine, umol/L
])
def test_a_lower_case_litre_is_the_catalogue_unit_stored_as_the_catalogue_spells_it(
        code: str, value: float, sent: str, flag: L.Flag) -> None:
    """Analysers send mmol/l, mg/dl... UCUM's litre has both symbols: not a wrong unit."""
    test = CAT.get(code)
    assert test is not None and test.unit and test.unit != sent
    obs = L.Observation.interpret(L.ResultInput.parse({"code": code, "value": value,
                                                       "unit": sent}),
                                  test, CAT.version, "F", ADULT, NOW)
    assert (obs.unit, obs.flag) == (test.unit, flag)


@pytest.mark.parametrize(("code", "sent"), [
    ("2823-3", "Mmol/L"),       # M is mega: another unit, not a spelling
    ("2823-3", "MMOL/L"),
    ("3094-0", "mg/DL"),        # D is no prefix
    ("3094-0", "Mg/dL"),
    ("2823-3", "mmol/dL"),      # a decilitre is not a litre
    ("2823-3", "mmol/ml"),
])
def test_only_the_litre_ignores_case(code: str, sent: str) -> None:
    test = CAT.get(code)
    assert test is not None
    with pytest.raises(InvalidField) as exc:
        L.Observation.interpret(L.ResultInput.parse({"code": code, "value": 4.0, "unit": sent}),
                                test, CAT.version, "F", ADULT, NOW)
    assert exc.value.field == "unit" and f"{sent} is not the catalogue unit" in exc.value.rule


@pytest.mark.parametrize(("sent", "catalogue", "same"), [
    ("mmol/l", "mmol/L", True), ("l", "L", True), ("dal", "daL", True),
    ("ml.min-1", "mL.min-1", True), ("m[IU]/l", "m[IU]/L", True), ("(l)", "(L)", True),
    ("Ml", "mL", False),            # megalitre
    ("lm", "Lm", False),            # lumen: l is not a term of its own
    ("mol", "moL", False), ("kcal", "kcaL", False),
    ("[lb_av]", "[Lb_av]", False),  # inside brackets: another atom's letters
    ("{l}", "{L}", False), ("u/l", "U/L", False),
])
def test_same_unit_folds_the_litre_atom_only(sent: str, catalogue: str, same: bool) -> None:
    assert L.same_unit(sent, catalogue) is same
    assert L.same_unit(catalogue, sent) is same


def test_a_micro_sign_is_ucum_micro() -> None:
    """UCUM's print symbol µ (micro sign or Greek mu) is its code u: an analyser's µmol/l is
    the catalogue's umol/L; nothing else about the unit is guessed."""
    for unit in ("µmol/l", "\u03bcmol/L", "umol/L"):
        got = L.ResultInput.parse({"code": "14682-9", "value": 70, "unit": unit})
        assert got.unit is not None and L.same_unit(got.unit, "umol/L")
    with pytest.raises(InvalidRecord, match="must be a UCUM unit"):
        L.ResultInput.parse({"code": "14682-9", "value": 70, "unit": "µ mol/l"})


# -- 5. the analyser's own range and flag (HL7 OBX-7, OBX-8) ----------------------------------
def test_the_analyser_s_range_and_flag_travel_with_the_result_and_only_when_sent() -> None:
    plain = interpret("2823-3", 4.2)
    assert "analyser_range" not in plain.as_json() and "analyser_flag" not in plain.as_json()
    sent = plain.with_analyser(" 3.5-5.1 ", "H")
    assert (sent.analyser_range, sent.analyser_flag, sent.flag) == ("3.5-5.1", "H", L.Flag.NORMAL)
    assert L.Observation.from_json(sent.as_json()) == sent
    assert L.Observation.from_json(plain.as_json()) == plain
    assert plain.with_analyser(None, "") == plain


@pytest.mark.parametrize(("code", "value", "analyser", "reason"), [
    ("2823-3", 4.2, "H", L.ReviewReason.ANALYSER_DISAGREES),     # labvault N
    ("2823-3", 4.2, "L", L.ReviewReason.ANALYSER_DISAGREES),
    ("2823-3", 4.2, "AA", L.ReviewReason.ANALYSER_DISAGREES),
    ("2823-3", 4.2, ">", L.ReviewReason.ANALYSER_DISAGREES),     # above the instrument's scale
    ("2823-3", 4.2, "N~h", L.ReviewReason.ANALYSER_DISAGREES),   # repeated, any case
    ("2823-3", 4.2, "N", None),
    ("2823-3", 4.2, "U", None),                                  # a delta flag says nothing
    ("2823-3", 5.6, "L", L.ReviewReason.ANALYSER_DISAGREES),     # labvault H, analyser L
    ("2823-3", 5.6, "N", L.ReviewReason.ANALYSER_DISAGREES),     # labvault H, analyser N
    ("2823-3", 5.6, "H", L.ReviewReason.OUTSIDE_REFERENCE_RANGE),
    ("2823-3", 5.6, "A", L.ReviewReason.OUTSIDE_REFERENCE_RANGE),   # abnormal, both
    ("2823-3", 7.0, "N", L.ReviewReason.PANIC_VALUE),            # a panic value stays one
    ("718-7", 13.1, "H", L.ReviewReason.NO_REFERENCE_RANGE),     # sex unknown: nothing to
    ("1988-5", "<10", "N", L.ReviewReason.INDETERMINATE),        # ... compare with
])
def test_an_analyser_flag_that_contradicts_the_catalogue_keeps_the_result_for_review(
        code: str, value: object, analyser: str, reason: L.ReviewReason | None) -> None:
    obs = interpret(code, value, sex=None if code == "718-7" else "F").with_analyser(
        None, analyser)
    assert L.review_reason(obs) == reason
    assert L.is_normal(obs) == (reason is None)


# -- 6. why a result is left for review ------------------------------------------------------
@pytest.mark.parametrize(("code", "value", "sex", "reason"), [
    ("718-7", 13.1, "F", None),
    ("718-7", 9.0, None, L.ReviewReason.NO_REFERENCE_RANGE),    # sex unknown: no range
    ("718-7", 13.1, None, L.ReviewReason.NO_REFERENCE_RANGE),   # ... even if plausible
    ("718-7", 9.0, "F", L.ReviewReason.OUTSIDE_REFERENCE_RANGE),
    ("718-7", 6.0, None, L.ReviewReason.PANIC_VALUE),           # panic limits still apply
    ("1988-5", "<10", "F", L.ReviewReason.INDETERMINATE),
    ("882-1", {"code": "A"}, "F", L.ReviewReason.NO_REFERENCE_RANGE),
])
def test_review_reason_tells_no_range_from_out_of_range(code: str, value: object,
                                                       sex: str | None,
                                                       reason: L.ReviewReason | None) -> None:
    test = CAT.get(code)
    assert test is not None
    data: dict[str, object] = {"code": code, "value": value}
    if test.unit:
        data["unit"] = test.unit
    obs = L.Observation.interpret(L.ResultInput.parse(data), test, CAT.version, sex, ADULT, NOW)
    assert L.review_reason(obs) == reason
    assert L.is_normal(obs) == (reason is None)


def test_an_order_s_reasons_most_serious_first() -> None:
    obs = [interpret("718-7", 9.0, sex=None), interpret("2823-3", 7.0),
           interpret("2823-3", 5.5), interpret("718-7", 13.1)]
    assert L.review_reasons(obs) == [L.ReviewReason.PANIC_VALUE,
                                     L.ReviewReason.OUTSIDE_REFERENCE_RANGE,
                                     L.ReviewReason.NO_REFERENCE_RANGE]
    assert L.review_reasons([interpret("718-7", 13.1)]) == []
    assert L.review_reasons([]) == [L.ReviewReason.NO_RESULTS]
