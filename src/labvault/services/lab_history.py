"""A patient's validated results over time (docs/lab.md, "A patient's results over
time"): what ``LabService.results_history`` answers -- the console's "Historique des
résultats" and ``GET /api/v1/patients/{id}/results``. Views and the period's rules only;
the read itself (one gate decision, one query) is the lab service's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from labvault.domain import lab as L
from labvault.errors import InvalidField

# The longest period one read covers (a page of a few years' follow-up; a longer one is
# read a few years at a time). What one read opens is every result of the patient entered
# since the period's start: codes and result times are sealed, so a test filter and the
# period's end narrow after opening.
HISTORY_MAX_DAYS = 5 * 366


@dataclass(frozen=True)
class HistoryResult:
    """One validated result: when (``at``: observed, else its specimen collected, else
    entered -- ``services/lab.py`` ``_result_time``), and whether it was corrected after
    publication (``status`` ``amended``: ``observation`` is the corrected value)."""

    observation_id: str
    order_id: str
    at: datetime
    status: str                  # final | amended
    observation: L.Observation

    @property
    def corrected(self) -> bool:
        return self.status == "amended"

    def as_json(self) -> dict[str, Any]:
        return {"id": self.observation_id, "order_id": self.order_id,
                "at": self.at.isoformat(), "status": self.status,
                "corrected": self.corrected, **self.observation.as_json(),
                "label": self.observation.name}


@dataclass(frozen=True)
class ResultHistory:
    """A patient's validated results of one period (``since`` <= time < ``until``),
    newest first (``results``: of the test asked, ``code``, or of every test);
    ``names``: every test with a result in the period, LOINC code -> the name people read
    (the laboratory's catalogue, else the result's own), whatever ``code`` asked."""

    patient_id: str
    since: datetime
    until: datetime
    code: str | None
    results: Sequence[HistoryResult]
    names: Mapping[str, str] = field(default_factory=dict)

    def tests(self) -> list[tuple[str, str]]:
        """The tests of the period, (code, name), by name: a filter's choices."""
        return sorted(self.names.items(), key=lambda kv: (kv[1].casefold(), kv[0]))

    def as_json(self) -> dict[str, Any]:
        return {"patient_id": self.patient_id, "since": self.since.isoformat(),
                "until": self.until.isoformat(), "code": self.code,
                "tests": [{"code": c, "label": n} for c, n in self.tests()],
                "results": [r.as_json() for r in self.results]}


def period(now: datetime, since: datetime | None, until: datetime | None,
           default_days: int) -> tuple[datetime, datetime]:
    """The period a history reads: ``until`` (default now) back to ``since`` (default
    ``default_days`` before ``until``); refused (``InvalidField``) when it ends before it
    starts or is longer than ``HISTORY_MAX_DAYS``."""
    end = until or now
    start = since or end - timedelta(days=default_days)
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidField("since" if start.tzinfo is None else "until",
                           "a time needs its UTC offset", "add it (Z or +01:00)")
    if start >= end:
        raise InvalidField("since", "the period starts at or after its end",
                           "give a start before the end")
    if end - start > timedelta(days=HISTORY_MAX_DAYS):
        raise InvalidField("since", f"the period is longer than {HISTORY_MAX_DAYS} days",
                           "read a longer follow-up a few years at a time")
    return start, end
