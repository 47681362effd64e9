""""Historique des résultats": a patient's validated results over time on the console
(docs/web.md), for the roles the policy lets read reports -- the same question as the
reports of the patient's page, which links it. One row per test, one column per day (Paris) a result is
dated by (observed, else its specimen collected, else entered), newest first, read in
one call (``lv.lab.results_history``: one gate decision, one query)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Response

from labvault.api.deps import LV
from labvault.domain.categories import Category
from labvault.errors import InvalidField, NotFound
from labvault.services.lab_history import HISTORY_MAX_DAYS, HistoryResult, ResultHistory
from labvault.web.render import PARIS, WebRoute, day_start, html
from labvault.web.routes import User, _staff

router = APIRouter(route_class=WebRoute, include_in_schema=False)

HISTORY = "/console/patients/{patient_id}/historique"
# days (columns) one page shows, newest first; older ones: "Résultats plus anciens"
HISTORY_COLUMNS = 20
Day = Annotated[str, Query(max_length=10)]


@dataclass(frozen=True)
class Row:
    """One test: its name and unit (its latest result's), the reference range of its
    latest result, and per column (day) its results of that day, newest first."""

    code: str
    name: str
    unit: str | None
    latest: HistoryResult
    cells: Sequence[Sequence[HistoryResult]]


@dataclass(frozen=True)
class Table:
    days: Sequence[date]
    rows: Sequence[Row]
    older: date | None          # the day before the oldest shown, when there are more


def paris_day(at: datetime) -> date:
    return at.astimezone(PARIS).date()


def table(history: ResultHistory, columns: int = HISTORY_COLUMNS) -> Table:
    """The history as the page shows it: the ``columns`` newest days with a result, one
    row per test (by name) with a result on one of them."""
    all_days = sorted({paris_day(r.at) for r in history.results}, reverse=True)
    days = all_days[:columns]
    index = {d: i for i, d in enumerate(days)}
    by_test: dict[str, list[list[HistoryResult]]] = {}
    for r in history.results:                  # newest first
        i = index.get(paris_day(r.at))
        if i is None:
            continue
        by_test.setdefault(r.observation.code, [[] for _ in days])[i].append(r)
    rows = []
    for code, cells in by_test.items():
        latest = next(c[0] for c in cells if c)
        rows.append(Row(code, history.names.get(code, latest.observation.name),
                        latest.observation.unit, latest, cells))
    rows.sort(key=lambda r: (r.name.casefold(), r.code))
    older = days[-1] - timedelta(days=1) if len(all_days) > columns else None
    return Table(days, rows, older)


def _day(value: str, name: str) -> date | None:
    if not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidField(name, "is not a date (AAAA-MM-JJ)") from None


@router.get(HISTORY)
def history_page(patient_id: str, user: User, lv: LV,
                 analyse: Annotated[str, Query(max_length=40)] = "",
                 depuis: Day = "", jusqu_au: Day = "") -> Response:
    """The table, filtered by test (``analyse``: a LOINC code) and period (``depuis``,
    ``jusqu_au``: days, both included; default the last ``PRIOR_LOOKBACK_DAYS``). A period
    the page cannot read (not a date, ending before it starts, longer than
    ``HISTORY_MAX_DAYS``): the form again (422), the reason in French, nothing read.
    The roles the policy does not let read the patient's reports: the gate's refusal
    (403, recorded), as for the reports of the patient's page; another laboratory's
    patient: the same 404 as an absent id, the miss recorded."""
    tenant_id = _staff(user)
    patient_id = patient_id[:64]
    code = analyse.strip() or None
    typed = {"analyse": analyse.strip(), "depuis": depuis.strip(),
             "jusqu_au": jusqu_au.strip()}
    try:
        first, last = _day(depuis, "depuis"), _day(jusqu_au, "jusqu_au")
        until = day_start(last + timedelta(days=1)) if last else None
        since = day_start(first) if first else None
        if since is not None and until is None:     # from a day on: up to today
            until = day_start(lv.now().astimezone(PARIS).date() + timedelta(days=1))
        try:
            history = lv.lab.results_history(user.actor, tenant_id, patient_id, code=code,
                                             since=since, until=until)
        except NotFound:
            # a duplicate merged since: say where its results went, as the patient page does
            lv.patients.say_if_merged(user.actor, patient_id)
            raise
    except InvalidField as exc:
        return html("history.html", 422, user=user, patient_id=patient_id, history=None,
                    table=None, record=None, typed=typed, problem=_period_fr(exc),
                    older_link=None)
    record = lv.patients.show(user.actor, patient_id, categories=[Category.IDENTITY])
    shown = table(history)
    older_link = None
    if shown.older is not None:
        older_link = HISTORY.format(patient_id=quote(patient_id, safe="")) + "?" + urlencode(
            {"analyse": code or "",
             "depuis": history.since.astimezone(PARIS).date().isoformat(),
             "jusqu_au": shown.older.isoformat()})
    return html("history.html", user=user, patient_id=patient_id, history=history,
                table=shown, record=record, typed=typed, problem=None,
                older_link=older_link, since_day=history.since.astimezone(PARIS).date(),
                last_day=_last_day(history))


def _last_day(history: ResultHistory) -> date:
    return (history.until - timedelta(microseconds=1)).astimezone(PARIS).date()


def _period_fr(exc: InvalidField) -> str:
    field = "Du" if exc.field == "depuis" else "Au" if exc.field == "jusqu_au" else "Période"
    if exc.rule.startswith("is not a date"):
        return f"{field} : ce n'est pas une date (JJ/MM/AAAA)."
    if "longer than" in exc.rule:
        return (f"Période trop longue : au plus {HISTORY_MAX_DAYS // 366} ans à la fois ; "
                "lisez un suivi plus long en plusieurs fois.")
    if "starts at or after" in exc.rule:
        return "Période : la date de début doit précéder la date de fin."
    return f"Période : {exc.rule}."

