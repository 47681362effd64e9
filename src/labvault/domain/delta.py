"""The delta check: a result compared with the patient's previous validated result of the
same test (the "antériorité" a biologist reads beside each result to validate).

A change larger than the test's limit (``L.DeltaLimit``, from the catalogue) since the
previous result -- potassium 4.1 -> 6.0 mmol/L in two days, haemoglobin 13 -> 8 g/dL -- is
either a clinical event or a wrong-patient / wrong-tube error: the result is held for a
biologist's review (``delta-exceeded``), whatever its flag. Pure: the caller gives the
previous results (validated results of the same patient's other orders, opened). The
same previous result is what the compte rendu prints beside a result ("Antériorité",
``report_prior``), from the published ones only.

A coded test whose limit is ``identical`` (a blood group: ABO, RhD) is held when its code
differs from the previous result's: a person's blood group does not change, so a
different one is a wrong tube or a wrong patient -- the transfusion-safety check of a
second determination.

What it does not do: compare across units (no conversion), compare a value with a
comparator ("<0.5": not a number), compare codes of two different coding systems, compare
text results, or look past the window. Each of those says so (``Outcome.NOT_COMPARED`` with ``why``,
``Outcome.OUT_OF_WINDOW``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from labvault.domain import lab as L

# A change at the limit itself is within it; the float noise of the subtraction
# (0.3 - 0.1 = 0.19999999999999998) never decides.
_NOISE = 1e-9


class Outcome(StrEnum):
    EXCEEDED = "delta-exceeded"       # held for review
    WITHIN = "within-limit"
    NO_LIMIT = "no-limit"             # the catalogue sets no delta limit for this test
    OUT_OF_WINDOW = "out-of-window"   # the previous result is older than the window
    NOT_COMPARED = "not-compared"     # see ``why``


@dataclass(frozen=True, slots=True)
class Prior:
    """A validated result of an earlier order of the same patient, and its time (when it
    was observed, else when its specimen was collected, else when it was entered).
    ``entered``: when it was entered, which orders two results of one time (two orders of
    one blood draw: the one entered first is the earlier)."""

    at: datetime
    observation: L.Observation
    observation_id: str | None = None
    entered: datetime | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """The previous result of a result's test and what the comparison found. ``change``
    is current - previous (signed, the catalogue's unit), ``relative`` that change in
    percent of the previous value (None when the previous value is 0); both None when the
    values were not compared (``why`` says why) or are codes (``current_code``: the
    current result's code as shown, when a coded test was compared)."""

    previous: Prior
    outcome: Outcome
    current: float | None = None
    change: float | None = None
    relative: float | None = None
    limit: L.DeltaLimit | None = None
    why: str | None = None
    current_code: str | None = None

    @property
    def current_shown(self) -> float | str | None:
        """The current value as answers give it: the number, or the code's display."""
        return self.current if self.current is not None else self.current_code

    @property
    def previous_shown(self) -> float | str | None:
        """The previous value as answers give it: the number, or the code's display."""
        p = self.previous.observation
        return p.numeric if p.kind == L.ValueKind.NUMERIC else p.value_display()

    @property
    def exceeded(self) -> bool:
        return self.outcome == Outcome.EXCEEDED

    def as_json(self) -> dict[str, Any]:
        p = self.previous.observation
        return {"observation_id": self.previous.observation_id,
                "at": self.previous.at.isoformat(),
                "value": self.previous_shown,
                "comparator": p.comparator, "unit": p.unit,
                "flag": p.flag.value if p.flag else None,
                "delta": {"outcome": self.outcome.value, "change": shown(self.change),
                          "relative": shown(self.relative),
                          "limit": self.limit.as_json() if self.limit else None,
                          **({"why": self.why} if self.why else {})}}


def shown(x: float | None) -> float | None:
    """A change as an answer gives it: without the float noise of the subtraction
    (4.2 -> 5.6 is 1.4, not 1.3999999999999995)."""
    return None if x is None else round(x, 6)


def latest_before(code: str, at: datetime, priors: Iterable[Prior],
                  entered: datetime | None = None) -> Prior | None:
    """The latest of ``priors`` of test ``code`` before ``at`` (None: none); one of the
    same time is before when it was entered before ``entered``."""
    earlier = [p for p in priors if p.observation.code == code and (
        p.at < at or (p.at == at and entered is not None and p.entered is not None
                      and p.entered < entered))]
    return max(earlier, key=lambda p: (p.at, p.entered or p.at), default=None)


@dataclass(frozen=True, slots=True)
class Anteriority:
    """What a report prints beside a result: the previous result of its test;
    ``determination`` when the test's result does not change (a limit ``identical``: a
    blood group, "déjà déterminé le …"), not a value followed over time."""

    previous: Prior
    determination: bool = False


def report_prior(current: L.Observation, at: datetime, priors: Iterable[Prior], days: int,
                 entered: datetime | None = None,
                 limit: L.DeltaLimit | None = None) -> Anteriority | None:
    """The previous result a report prints beside ``current`` (the "Antériorité" column of
    a French compte rendu): the latest of ``priors`` of its test before ``at``, at most
    ``days`` older; only for a number or a code (a text result has none). ``limit``: the
    test's delta limit (an ``identical`` one makes it a determination)."""
    if current.kind not in (L.ValueKind.NUMERIC, L.ValueKind.CODED):
        return None
    previous = latest_before(current.code, at, priors, entered)
    if previous is None or at - previous.at > timedelta(days=days):
        return None
    return Anteriority(previous, limit is not None and limit.identical)


def _not_compared(current: L.Observation, previous: L.Observation) -> str | None:
    """Why two results of one test cannot be compared as numbers (None: they can)."""
    if (current.kind != L.ValueKind.NUMERIC or previous.kind != L.ValueKind.NUMERIC
            or current.numeric is None or previous.numeric is None):
        return "not numeric"
    if current.comparator or previous.comparator:
        return "a value with a comparator (<, >) is not a number"
    if (current.unit or previous.unit) and not (
            current.unit and previous.unit and L.same_unit(current.unit, previous.unit)):
        return f"units differ ({previous.unit or 'none'}, {current.unit or 'none'})"
    return None


def beyond(change: float, limit: float) -> bool:
    """Whether a change (in absolute value) is beyond a limit; at the limit it is not."""
    return abs(change) - limit > _NOISE * max(1.0, limit)


def check(current: L.Observation, at: datetime, priors: Iterable[Prior],
          limit: L.DeltaLimit | None, entered: datetime | None = None) -> Delta | None:
    """``current`` (observed at ``at``, entered at ``entered``) against the latest
    validated result of its test before it among ``priors`` (None: there is none).
    Exceeded when the change is beyond ``limit.absolute`` or beyond ``limit.percent`` of
    the previous value (either limit given is enough), the previous result being at most
    ``limit.days`` old."""
    previous = latest_before(current.code, at, priors, entered)
    if previous is None:
        return None
    if limit is not None and limit.identical:
        return _same_code(current, at, previous, limit)
    why = _not_compared(current, previous.observation)
    if why is not None:
        return Delta(previous, Outcome.NOT_COMPARED, limit=limit, why=why)
    assert current.numeric is not None and previous.observation.numeric is not None
    before = previous.observation.numeric
    change = current.numeric - before
    relative = change / abs(before) * 100 if before != 0 else None
    found = Delta(previous, Outcome.WITHIN, current.numeric, change, relative, limit)
    if limit is None:
        return Delta(previous, Outcome.NO_LIMIT, current.numeric, change, relative)
    if at - previous.at > timedelta(days=limit.days):
        return Delta(previous, Outcome.OUT_OF_WINDOW, current.numeric, change, relative, limit)
    if ((limit.absolute is not None and beyond(change, limit.absolute))
            or (limit.percent is not None and relative is not None
                and beyond(relative, limit.percent))):
        return Delta(previous, Outcome.EXCEEDED, current.numeric, change, relative, limit)
    return found


def _code_of(obs: L.Observation) -> tuple[str | None, str] | None:
    """A coded result's (system, code), the code compared without case or spaces."""
    if obs.kind != L.ValueKind.CODED or obs.coded is None:
        return None
    return obs.coded.system, "".join(obs.coded.code.split()).casefold()


def _same_code(current: L.Observation, at: datetime, previous: Prior,
               limit: L.DeltaLimit) -> Delta:
    """A coded test held when its code is not the previous result's (``identical``)."""
    now, before = _code_of(current), _code_of(previous.observation)
    shown = current.value_display() if now is not None else None
    if now is None or before is None:
        return Delta(previous, Outcome.NOT_COMPARED, limit=limit, why="not coded",
                     current_code=shown)
    if now[0] and before[0] and now[0] != before[0]:
        # a SNOMED CT code and an analyser's own code for one group cannot be matched here
        return Delta(previous, Outcome.NOT_COMPARED, limit=limit, current_code=shown,
                     why=f"coding systems differ ({before[0]}, {now[0]})")
    if at - previous.at > timedelta(days=limit.days):
        return Delta(previous, Outcome.OUT_OF_WINDOW, limit=limit, current_code=shown)
    outcome = Outcome.EXCEEDED if now[1] != before[1] else Outcome.WITHIN
    return Delta(previous, outcome, limit=limit, current_code=shown)
