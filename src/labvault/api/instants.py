"""Date-times in REST requests: ISO 8601 text with its UTC offset, or refused (422).

A time without an offset used to be taken as UTC: a French laboratory's staff mean Paris
time, so a collection at 08:30 was stored 1-2 h off. No door can tell which was meant, so
the REST door asks (``Instant``, one type for every date-time it reads); the problem+json
handler words the refusal (``rule_of``). The console's forms (Paris time, said on the
page) and HL7 (its own TS rules) are other doors with their own conventions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator
from pydantic_core import PydanticCustomError

EXAMPLE = "2026-03-01T08:30:00+01:00"
WITH_OFFSET = (f'must be an ISO 8601 date-time with its UTC offset, e.g. "{EXAMPLE}" '
               f'(Paris, winter) or "2026-03-01T07:30:00Z" (UTC)')
NO_OFFSET = (f'has no UTC offset: add one, e.g. "{EXAMPLE}" (Paris, winter) or '
             f'"2026-03-01T07:30:00Z" (UTC); a time without one is not taken as UTC')
# pydantic's error types for a date-time -> what the caller reads (problems.py)
_RULES = {"timezone_aware": NO_OFFSET, "datetime_type": WITH_OFFSET,
          "datetime_parsing": WITH_OFFSET, "datetime_from_date_parsing": WITH_OFFSET}


def _text(value: object) -> object:
    """ISO 8601 text only: a number would be read as seconds since 1970, which no
    laboratory tool means by a collection time."""
    if isinstance(value, str | datetime):
        return value
    raise PydanticCustomError("datetime_type", WITH_OFFSET)


Instant = Annotated[AwareDatetime, BeforeValidator(_text)]


def rule_of(error: Any) -> str | None:
    """The words for a refused date-time (``error``: one of pydantic's errors), or None
    for any other error."""
    return _RULES.get(str(error.get("type")))
