"""The FHIR R4 search values labvault understands (http://hl7.org/fhir/R4/search.html):
dates with their implicit ranges, tokens (``system|code``) and comma-separated "or"
lists. One parser for every resource, so that ``date`` or a token means the same on
every resource.

A value labvault cannot read exactly is a ``400`` naming its parameter: a misread
value would silently widen or empty the search.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar

from labvault.errors import InvalidField
from labvault.interop.fhir.outcome import FhirError

T = TypeVar("T")

DATE_PREFIXES = ("eq", "ge", "gt", "le", "lt")
_DATE = re.compile(
    r"(?P<prefix>eq|ne|gt|lt|ge|le|sa|eb|ap)?"
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:\.(?P<fraction>\d+))?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?")
_DATE_FORMAT = "[eq|ge|gt|le|lt]YYYY[-MM[-DD[Thh:mm:ss[.ffffff](Z|+hh:mm|-hh:mm)]]]"
MAX_FRACTION_DIGITS = 6     # what a stored timestamp holds (microseconds)


@dataclass(frozen=True)
class SearchDate:
    """A date search value: its prefix and the instants it covers, ``[start, end)`` in
    UTC (its implicit range: a day is that whole day, a time with seconds that second)."""

    prefix: str
    start: datetime
    end: datetime
    precision: str      # year, month, day or time

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        """[since, until) of the stored instants this value accepts (R4 search.html#prefix,
        for a stored value that is an instant)."""
        return {"eq": (self.start, self.end), "ge": (self.start, None),
                "gt": (self.end, None), "lt": (None, self.start),
                "le": (None, self.end)}[self.prefix]


def _invalid_date(name: str, value: str, why: str) -> FhirError:
    return FhirError(400, "invalid", f"{name}: {value!r} {why} (format {_DATE_FORMAT})", [name])


def _zone(text: str) -> timezone:
    """``Z``, ``+hh:mm`` or ``-hh:mm``; ValueError when out of range."""
    if text == "Z":
        return UTC
    hours, minutes = int(text[1:3]), int(text[4:6])
    if minutes > 59:
        raise ValueError(text)
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_date(name: str, value: str) -> SearchDate:
    """One ``date`` value. A time needs its timezone (FHIR dateTime: "if hours and minutes
    are specified, a time zone SHALL be populated"): without one the instant is unknown,
    so it is refused rather than guessed. A date without time is a UTC calendar period."""
    if "," in value:
        raise FhirError(400, "not-supported", f"{name}: comma-separated dates (or) are not "
                        f"supported; repeat {name}=… to narrow (repeats are ANDed)", [name])
    mt = _DATE.fullmatch(value)
    if not mt:
        raise _invalid_date(name, value, "is not a FHIR date")
    prefix = mt["prefix"] or "eq"
    if prefix not in DATE_PREFIXES:
        raise FhirError(400, "not-supported", f"{name}: prefix {prefix} is not supported "
                        f"({', '.join(DATE_PREFIXES)})", [name])
    if mt["hour"] is not None and mt["zone"] is None:
        raise _invalid_date(name, value, "has a time but no timezone (add Z or ±hh:mm)")
    fraction = mt["fraction"] or ""
    if len(fraction) > MAX_FRACTION_DIGITS:
        raise _invalid_date(name, value, f"has more than {MAX_FRACTION_DIGITS} decimals")
    try:
        return _implicit_range(prefix, mt, fraction)
    except ValueError:
        raise _invalid_date(name, value, "is not a calendar date or time") from None


def _implicit_range(prefix: str, mt: re.Match[str], fraction: str) -> SearchDate:
    year, month, day = int(mt["year"]), int(mt["month"] or 1), int(mt["day"] or 1)
    if mt["hour"] is not None:
        local = datetime(year, month, day, int(mt["hour"]), int(mt["minute"]),
                         int(mt["second"]), int(fraction.ljust(MAX_FRACTION_DIGITS, "0")),
                         tzinfo=_zone(mt["zone"]))
        width = timedelta(microseconds=10 ** (MAX_FRACTION_DIGITS - len(fraction)))
        start = local.astimezone(UTC)
        return SearchDate(prefix, start, start + width, "time")
    start = datetime(year, month, day, tzinfo=UTC)
    if mt["day"] is not None:
        return SearchDate(prefix, start, start + timedelta(days=1), "day")
    if mt["month"] is not None:
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        return SearchDate(prefix, start, end, "month")
    return SearchDate(prefix, start, datetime(year + 1, 1, 1, tzinfo=UTC), "year")


def date_window(name: str, values: list[str]) -> tuple[datetime | None, datetime | None]:
    """The [since, until) every value of a repeated ``date`` accepts: repeats are ANDed
    (search.html#combining), so the tighter bound wins whatever the order. Disjoint values
    give since >= until, which matches nothing."""
    since: datetime | None = None
    until: datetime | None = None
    for value in values:
        low, high = parse_date(name, value).bounds()
        if low is not None and (since is None or low > since):
            since = low
        if high is not None and (until is None or high < until):
            until = high
    return since, until


@dataclass(frozen=True)
class Token:
    """One token value (search.html#token): ``code`` (any system), ``system|code``,
    ``|code`` (explicitly no system) or ``system|`` (any code of that system)."""

    system: str | None    # None: any system; "": no system
    code: str | None      # None: any code of ``system``

    def matches(self, system: str, code: str) -> bool:
        """Whether a stored coding (labvault's always carry a system) is this value."""
        if self.system is not None and self.system != system:
            return False
        return self.code is None or self.code == code


def _split(value: str, sep: str) -> list[str]:
    """``value`` cut at each ``sep`` not escaped by a backslash (search.html#escaping);
    escapes are kept for ``_unescape``."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(value)
    for c in chars:
        if c == "\\":
            current.append(c + next(chars, ""))
        elif c == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def any_of(name: str, value: str) -> list[str]:
    """The comma-separated alternatives of one parameter ("or"), unescaped; an empty
    alternative is a client error, not a wildcard."""
    parts = _split(value, ",")
    if any(not p for p in parts):
        raise FhirError(400, "invalid", f"{name}: empty value in {value!r}", [name])
    return [_unescape(p) for p in parts]


def tokens(name: str, value: str) -> list[Token]:
    """The token alternatives of ``name=value`` (comma: or)."""
    out = []
    for part in _split(value, ","):
        pieces = _split(part, "|")
        if not part or len(pieces) > 2 or part == "|":
            raise FhirError(400, "invalid", f"{name}: {part!r} is not a token "
                            "(code, system|code, |code or system|)", [name])
        if len(pieces) == 1:
            out.append(Token(None, _unescape(part)))
        else:
            system, code = (_unescape(p) for p in pieces)
            out.append(Token(system, code or None))
    return out


def tokens_in(name: str, value: str, systems: Sequence[str]) -> list[Token]:
    """The alternatives of a token parameter whose stored values all carry one of
    ``systems``. Another system, or ``|code`` (no system), could only match nothing: it
    is refused rather than answered with a misleading 0 (a code system confused with
    another, a patient then registered twice)."""
    out = tokens(name, value)
    for t in out:
        if t.system == "":
            raise FhirError(400, "not-supported", f"{name}: |{t.code} asks for a value without "
                            f"a system, and labvault's all have one ({', '.join(systems)}); "
                            f"send {t.code} or system|{t.code}", [name])
        if t.system is not None and t.system not in systems:
            raise FhirError(400, "not-supported", f"{name}: system {t.system!r} is not "
                            f"searchable here; use {', '.join(systems)}", [name])
    return out


def checked(name: str, check: Callable[[str, str], T], value: str) -> T:
    """``value`` through a core validation rule; a failure is a 400 naming the search
    parameter (422 is for the content of a resource)."""
    try:
        return check(value, name)
    except InvalidField as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        raise FhirError(400, "invalid", f"{name}: {exc.rule}{hint}", [name]) from None
