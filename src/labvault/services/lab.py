"""The lab workflow: orders, specimens, results, validation, reports (docs/lab.md).

Every public method takes the acting ``Actor``, opens one transaction and passes the
gate (category ``clinical``; resources ``order``, ``specimen``, ``observation``,
``report``; actions read/write/validate). Clinical data is sealed under the patient's
data key. The ``_``-prefixed variants take the caller's connection so that an
inbound HL7 message is stored in one transaction (``services/lab_messages.py``).

Public API (stable; the FHIR door builds on it):

- ``create_order(actor, tenant_id, patient_id, request, specimen=None) -> OrderView``
- ``receive_specimen(actor, order_id, specimen) -> SpecimenView``
- ``enter_results(actor, order_id, results) -> list[ObservationView]``
- ``validate_technical(actor, order_id, expected=None)``,
  ``validate_biological(actor, order_id, conclusion, expected=None, partial=None)``
- ``validate_final(actor, order_id, conclusion)``: both, in one call (one order load)
- ``validate_all_normal(actor, tenant_id, order_ids=None, expected=None, partial=None)
  -> BulkValidation``
- ``publish(actor, order_id, partial=None)``,
  ``amend(actor, observation_id, result, reason, conclusion=None)``,
  ``revise_conclusion(actor, order_id, conclusion, reason)``
- ``reject(actor, order_id, reason, comment)``, ``cancel(actor, order_id, reason)`` (reason
  required)
- ``worklist(actor, tenant_id, status)``, ``list_orders / list_reports / list_observations``
- ``get_order``, ``get_report``, ``get_report_by_order``, ``get_observation``,
  ``get_specimen``, ``observation_history``
- ``load_catalogue(actor, tenant_id, data)``, ``catalogue(tenant_id)``
- ``results_history(actor, tenant_id, patient_id, code=None, since=None, until=None)
  -> ResultHistory``: a patient's validated results over time

``expected`` is what the validating person was shown: ``{observation_id: revision}`` of
the order (``ReportView.expected``); when the results differ now, the call is refused
(``ResultsChanged``, 409). ``partial``: ``False`` refuses an order whose requested tests
do not all have a result (``IncompleteOrder``, 409), ``True`` validates/publishes it as a
partial report (recorded in the step), ``None`` does not look (in-process callers, the
FHIR door's final report). A call made at the wrong step raises ``WorkflowConflict``
(409), which says where the order is and who did the step already done, and when.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from labvault.crypto import DataKey, SealContext
from labvault.crypto import blind_index as bi
from labvault.domain import delta as D
from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.errors import (
    AccessDenied,
    Conflict,
    InvalidField,
    InvalidRecord,
    NotFound,
    UserError,
)
from labvault.services.gate import Access, Decision
from labvault.services.lab_history import HistoryResult, ResultHistory, period
from labvault.store import driver_sql
from labvault.store import repositories as repo
from labvault.store import repositories_lab as lrepo
from labvault.store.ids import new_id, new_ids

if TYPE_CHECKING:
    from labvault.services.app import Labvault

CLINICAL = frozenset({Category.CLINICAL})
IDENTITY = frozenset({Category.IDENTITY})
PLACER = "lab_placer"          # blind-index kinds (the kind is part of the MAC input)
FILLER = "lab_filler"
INDEX_KEY_TTL = 5.0
ACCESSION = "lab_accession"
# The purpose a read is audited under: staff work ("care") unless the caller says why --
# the patient portal reads for the patient itself ("patient-access", GDPR art. 15/20).
CARE = "care"
VALIDATE_BIO = "validate results biologically"
# A patient sees the records of an order (the order, its specimens, results and report)
# once its report is published, or amended after publication -- whatever the door (portal,
# FHIR): before, they answer as absent ids do, and listings leave them out.
PATIENT_VISIBLE = frozenset({L.OrderStatus.PUBLISHED, L.OrderStatus.AMENDED})
# Orders closed without a report (specimen rejected, order cancelled): a patient's listing
# of its own orders may ask for them too (``closed``: the data download says why no result
# came); their results were withdrawn unvalidated, so results and report stay unseen.
PATIENT_CLOSED = frozenset({L.OrderStatus.REJECTED, L.OrderStatus.CANCELLED})
_ABSENT = {
    "patient": ("no such patient", "check the patient id"),
    "order": ("no such order", "check the order id"),
    "report": ("no such report", "check the report id"),
    "observation": ("no such observation", "check the observation id"),
    "specimen": ("no such specimen", "check the specimen id"),
    "laboratory": ("no such laboratory", "act in your own laboratory"),
    "import-issue": ("no open import issue with this id", "labvault hl7-issues list"),
}


def absent(kind: str) -> NotFound:
    """The one answer for an id of ``kind`` that does not exist -- and for one the actor
    may not learn exists (a patient's own result not published yet): the same bytes."""
    message, hint = _ABSENT[kind]
    return NotFound(message, hint)


def _listed_statuses(actor: Actor, status: str | None,
                     closed: bool = False) -> list[str] | None:
    """The order statuses a listing of orders keeps (None: all): the one asked for; for a
    patient, only the published ones, and the closed ones if ``closed`` (an empty list:
    nothing to list)."""
    asked = [status] if status else None
    if actor.kind != "patient":
        return asked
    seen = PATIENT_VISIBLE | PATIENT_CLOSED if closed else PATIENT_VISIBLE
    return sorted(s.value for s in seen if asked is None or s.value in asked)


def _order_filter(actor: Actor) -> list[str] | None:
    """For listings of results and reports: the order statuses a patient may see."""
    return sorted(s.value for s in PATIENT_VISIBLE) if actor.kind == "patient" else None


# one encoder for every call: json.dumps with options builds a new one each time
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def _dumps(data: Mapping[str, Any]) -> bytes:
    return _JSON.encode(data).encode()


def _one_per_test(results: Sequence[L.Observation]) -> None:
    """One value per test in one entry: a second one would be written as a re-entry of
    a row not inserted yet (the row and its history would disagree)."""
    seen: set[str] = set()
    errors = []
    for i, obs in enumerate(results):
        if obs.code in seen:
            errors.append(InvalidField(f"results[{i}].code", f"{obs.code} is given twice",
                                       "give one result per test; a new value is a "
                                       "re-entry, in an entry of its own"))
        seen.add(obs.code)
    if errors:
        raise InvalidRecord(errors)


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None


def _utc(d: datetime) -> datetime:
    """A stored timestamp as an aware one (SQLite gives them back naive, in UTC)."""
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


# -- views -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    by: str                      # actor id
    at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self, names: bool = True) -> dict[str, Any]:
        return {"by": self.by, "at": self.at.isoformat(),
                **{k: v for k, v in self.detail.items() if names or k != "name"}}


@dataclass(frozen=True)
class SpecimenView:
    specimen_id: str
    order_id: str
    patient_id: str
    tenant_id: str
    status: str
    received_at: datetime
    specimen: L.Specimen

    def as_json(self) -> dict[str, Any]:
        return {"id": self.specimen_id, "order_id": self.order_id,
                "patient_id": self.patient_id, "status": self.status,
                "received_at": self.received_at.isoformat(), **self.specimen.as_json()}


@dataclass(frozen=True)
class ObservationView:
    observation_id: str
    order_id: str
    patient_id: str
    tenant_id: str
    status: str                  # preliminary | final | amended | cancelled
    revision: int
    created_at: datetime
    updated_at: datetime
    observation: L.Observation

    def as_json(self) -> dict[str, Any]:
        return {"id": self.observation_id, "order_id": self.order_id,
                "patient_id": self.patient_id, "status": self.status, "revision": self.revision,
                "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat(), **self.observation.as_json(),
                # the name people read (the catalogue's French label, else the display)
                "label": self.observation.name}


@dataclass(frozen=True)
class OrderView:
    order_id: str
    report_id: str
    patient_id: str
    tenant_id: str
    status: L.OrderStatus
    priority: L.Priority
    created_at: datetime
    updated_at: datetime
    request: L.ServiceRequest
    steps: Mapping[str, Step] = field(default_factory=dict)   # received, technical, ...
    specimens: Sequence[SpecimenView] = ()
    # requested tests as people read them (LOINC code -> ``Catalogue.name_of``)
    test_names: Mapping[str, str] = field(default_factory=dict)

    # the patient's sex and birth date as the order keeps them (ReportView's)
    patient_sex: str | None = None
    patient_birth_date: date | None = None

    def test_name(self, code: str) -> str:
        """A requested test's name as people read it (the code if the catalogue lacks it)."""
        return self.test_names.get(code, code)

    @property
    def collected_at(self) -> datetime | None:
        """When the order's first specimen was collected (None: none received)."""
        return min((s.specimen.collected_at for s in self.specimens), default=None)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.order_id, "report_id": self.report_id, "patient_id": self.patient_id,
                "tenant_id": self.tenant_id, "status": self.status.value,
                "priority": self.priority.value, "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat(), **self.request.as_json(),
                "steps": {k: s.as_json() for k, s in self.steps.items()},
                "specimens": [s.as_json() for s in self.specimens]}


@dataclass(frozen=True)
class Correction:
    """A published result corrected: when, why, and the value it replaced (from the
    result's history), so that the report shows its reader what changed."""

    at: datetime
    reason: str | None
    previous: L.Observation

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "reason": self.reason,
                "previous": self.previous.as_json()}


@dataclass(frozen=True)
class ConclusionRevision:
    """A published conclusion replaced: when, why, and the text it replaced."""

    at: datetime
    reason: str | None
    previous: str | None

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "reason": self.reason, "previous": self.previous}


@dataclass(frozen=True)
class ReportView:
    report_id: str
    order_id: str
    patient_id: str
    tenant_id: str
    status: str                  # FHIR DiagnosticReport.status
    order_status: L.OrderStatus
    created_at: datetime
    updated_at: datetime
    issued_at: datetime | None
    conclusion: str | None
    observations: Sequence[ObservationView]
    steps: Mapping[str, Step] = field(default_factory=dict)
    tests: Sequence[str] = ()
    missing: Mapping[str, str] = field(default_factory=dict)  # requested, no result: code -> name
    corrections: Mapping[str, Sequence[Correction]] = field(default_factory=dict)  # by result id
    conclusion_revisions: Sequence[ConclusionRevision] = ()
    conclusion_at: datetime | None = None
    specimens: Sequence[SpecimenView] = ()
    # who ordered these tests ({"name", "rpps"}): the doctor the report is for, not the
    # patient record's usual prescriber
    prescriber: Mapping[str, Any] | None = None
    priority: L.Priority = L.Priority.ROUTINE
    # the patient's sex and birth date as the order keeps them (sealed with it, read when
    # it was created): what chose the reference ranges, for staff pages to say whom for
    patient_sex: str | None = None
    patient_birth_date: date | None = None
    # results entered again before validation (an analyser's rerun, a typing error): the
    # values they replaced, when, oldest first, by result id -- for the laboratory's
    # staff, who validate what changed (the patient's portal and PDF never show them)
    reentries: Mapping[str, Sequence[Correction]] = field(default_factory=dict)
    # ORU^R01 messages queued for the prescriber's or hospital's system by the call that
    # returned this view (publication, revised conclusion): 0 when no destination matched
    queued: int = 0
    # the delta check ("antériorité"), by result id: each result in force with the
    # patient's previous validated result of its test (another order's) and what the
    # comparison found -- read only for the staff who validate, when asked
    # (``previous=True``: the console's validation pages, the REST review read); never
    # for a patient, the portal or the PDF
    previous: Mapping[str, D.Delta] = field(default_factory=dict)
    # the report's "Antériorité" column, by result id: each number or code in force with
    # the patient's previous *published* result of its test at this laboratory (another
    # order's, within ``PRIOR_LOOKBACK_DAYS``) -- what the compte rendu prints beside it,
    # for the prescriber and the patient (PDF, portal, the console's published report);
    # read when asked (``anteriorities=True``), for a published report only
    anteriorities: Mapping[str, D.Anteriority] = field(default_factory=dict)

    @property
    def expected(self) -> dict[str, int]:
        """What this view shows, as validation calls take it back (``expected``)."""
        return {o.observation_id: o.revision for o in self.observations}

    def review(self) -> Skip | None:
        """Why "validate all normal" would leave this order for review (``review_reason``:
        its results in force, requested tests without result, results re-entered before
        validation); None when it may go in bulk."""
        in_force = [o for o in self.observations if o.status != "cancelled"]
        return review_reason([o.observation for o in in_force], self.missing,
                             [o.observation for o in in_force
                              if self.reentries.get(o.observation_id)],
                             [(o.observation, d) for o in in_force
                              if (d := self.previous.get(o.observation_id)) is not None
                              and d.exceeded])

    def requested(self, obs: ObservationView) -> bool:
        """Whether the order asked for this result (results of other tests are kept)."""
        return not self.tests or obs.observation.code in self.tests

    @property
    def collected_at(self) -> datetime | None:
        """When the order's specimen was collected (the earliest, if several): the
        clinically relevant time of the report. None: no specimen received."""
        return _collected(s.specimen for s in self.specimens)

    def result_time(self, obs: ObservationView) -> datetime:
        """When one of its results was observed, else its specimen collected, else the
        result entered (``_result_time``)."""
        return _result_time(obs.observation, obs.created_at, self.collected_at)

    @property
    def conclusion_outdated(self) -> bool:
        """A result was corrected after the conclusion was last written."""
        if not self.conclusion or self.conclusion_at is None:
            return False
        return any(c.at > self.conclusion_at for cs in self.corrections.values() for c in cs)

    def as_json(self, staff_names: bool = True) -> dict[str, Any]:
        """``staff_names=False``: without the names of the staff who took each step nor
        the values re-entered before validation (the patient's own download: the portal
        never names staff, and shows what was validated)."""
        return {"id": self.report_id, "order_id": self.order_id, "patient_id": self.patient_id,
                "status": self.status, "order_status": self.order_status.value,
                "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat(), "issued_at": _iso(self.issued_at),
                "conclusion": self.conclusion, "conclusion_at": _iso(self.conclusion_at),
                "tests": list(self.tests), "missing": dict(self.missing),
                "partial": bool(self.missing) and self.order_status in _VALIDATED,
                "steps": {k: s.as_json(staff_names) for k, s in self.steps.items()},
                "observations": [o.as_json() for o in self.observations],
                "not_requested": [o.observation_id for o in self.observations
                                  if not self.requested(o)],
                "corrections": {k: [c.as_json() for c in cs]
                                for k, cs in self.corrections.items()},
                "conclusion_revisions": [r.as_json() for r in self.conclusion_revisions],
                "prescriber": dict(self.prescriber) if self.prescriber else None,
                **({"reentries": {k: [c.as_json() for c in cs]
                                  for k, cs in self.reentries.items()},
                    "previous": {k: d.as_json() for k, d in self.previous.items()}}
                   if staff_names else {})}


@dataclass(frozen=True)
class HistoryEntry:
    revision: int
    changed_at: datetime
    by: str
    change: str                  # entered | re-entered | amended | cancelled
    reason: str | None
    previous: L.Observation | None
    new: L.Observation | None

    def as_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "changed_at": self.changed_at.isoformat(),
                "by": self.by, "change": self.change, "reason": self.reason,
                "previous": self.previous.as_json() if self.previous else None,
                "new": self.new.as_json() if self.new else None}


@dataclass(frozen=True)
class Skip:
    """Why "validate all normal" left an order for review, and the tests concerned."""

    reason: str       # one of SKIP_REASONS
    tests: tuple[str, ...] = ()
    # analyser-disagrees: per test, the analyser's flag (OBX-8) and labvault's
    flags: tuple[tuple[str, str], ...] = ()
    # delta: per test, the previous result and the change found (``domain/delta.py``)
    deltas: tuple[D.Delta, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "tests": list(self.tests)}
        if self.flags:
            out["flags"] = [{"analyser": a, "labvault": f} for a, f in self.flags]
        if self.deltas:
            out["deltas"] = [{"previous": d.previous_shown,
                              "previous_at": d.previous.at.isoformat(),
                              "current": d.current_shown,
                              "unit": d.previous.observation.unit,
                              "change": D.shown(d.change), "relative": D.shown(d.relative),
                              "limit": d.limit.as_json() if d.limit else None}
                             for d in self.deltas]
        return out


# Most serious first: an order is reported under the first that applies.
# ``delta`` (a change since the patient's previous result beyond the test's limit) comes
# right after a panic value: it may be a wrong patient or a wrong tube, which makes every
# other reason of the order moot -- the identity is checked before the values are read.
SKIP_REASONS = ("not-waiting", "changed", "no-results", "panic", "delta",
                "analyser-disagrees", "re-entered", "out-of-range", "indeterminate",
                "no-reference-range", "incomplete")


@dataclass
class BulkValidation:
    validated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # left for review
    reasons: dict[str, Skip] = field(default_factory=dict)   # skipped order id -> why

    def skip(self, order_id: str, reason: str, tests: Iterable[str] = (),
             flags: Iterable[tuple[str, str]] = (), deltas: Iterable[D.Delta] = ()) -> None:
        self.skipped.append(order_id)
        self.reasons[order_id] = Skip(reason, tuple(tests), tuple(flags), tuple(deltas))

    def as_json(self) -> dict[str, Any]:
        return {"validated": self.validated, "skipped": self.skipped,
                "reasons": {k: r.as_json() for k, r in self.reasons.items()}}


# == workflow errors: typed, with what each door needs to say them in its own words ========
class WorkflowConflict(L.InvalidTransition):
    """An action asked at the wrong step of the order. ``kind`` says which mismatch
    (``technical-missing``, ``already-biological``...); ``step`` is the step that settles
    it, with who (``detail["name"]``) and when."""

    def __init__(self, action: str, status: L.OrderStatus, kind: str,
                 step: Step | None) -> None:
        self.action, self.status, self.kind, self.step = action, status, kind, step
        message, hint = _CONFLICT_EN.get(kind, _CONFLICT_EN["not-allowed"])
        by = ""
        if step is not None:
            by = f" by {step.detail.get('name') or step.by} at {step.at.isoformat()}"
        super().__init__(message.format(by=by, status=status.value, action=action), hint)

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "order_status": self.status.value}
        if self.step is not None:
            out["step"] = self.step.as_json()
        return out


_CONFLICT_EN: Mapping[str, tuple[str, str]] = {
    "no-results": ("no results have been entered for this order yet", "enter the results first"),
    "technical-missing": ("technical validation missing: a technician must validate these "
                          "results first", "ask a technician to validate them technically"),
    "biological-missing": ("biological validation missing: a biologist must validate the "
                           "report first", "ask a biologist to validate it"),
    "already-technical": ("already technically validated{by}", "nothing left to do here"),
    "already-biological": ("already validated biologically{by}", "nothing left to do here"),
    "already-published": ("already published{by}",
                          "to correct it, amend a result or revise the conclusion"),
    "results-validated": ("the results are already validated technically{by}: the specimen "
                          "can no longer be rejected", "a biologist decides what to do with "
                          "the results"),
    "rejected": ("the specimen of this order was rejected{by}",
                 "a new specimen needs a new order"),
    "cancelled": ("this order was cancelled{by}", "a new order is needed"),
    "result-withdrawn": ("this result was withdrawn{by}: it is not part of the report, "
                         "there is nothing to amend", "amend the result in force instead"),
    "already-received": ("the specimen of this order was already received{by}",
                         "nothing left to do here: the order waits at the bench"),
    "not-allowed": ("an order that is {status} does not allow {action}", ""),
}

_BEFORE_RESULTS = frozenset({L.OrderStatus.REGISTERED, L.OrderStatus.RECEIVED})
_VALIDATED = frozenset({L.OrderStatus.FINAL, L.OrderStatus.PUBLISHED, L.OrderStatus.AMENDED})


def _conflict_kind(action: str, status: L.OrderStatus) -> tuple[str, str | None]:
    """(kind, the step that settles it) of ``action`` refused at ``status``."""
    S = L.OrderStatus
    if status in (S.REJECTED, S.CANCELLED):
        return status.value, status.value        # the steps are named as the states
    if action == "reject":
        return "results-validated", "technical"
    if status in _BEFORE_RESULTS:
        return "no-results", None
    if action == "technical" and status == S.TECHNICALLY_VALIDATED:
        return "already-technical", "technical"
    if action in ("technical", "biological") and status in _VALIDATED:
        return "already-biological", "biological"
    if action == "biological" and status == S.PRELIMINARY:
        return "technical-missing", None
    if action in ("publish", "revise-conclusion") and status in (S.PRELIMINARY,
                                                                 S.TECHNICALLY_VALIDATED):
        return "biological-missing", None
    if action == "publish" and status in (S.PUBLISHED, S.AMENDED):
        return "already-published", "published"
    return "not-allowed", None


class ResultWithdrawn(WorkflowConflict):
    """An amendment of a result that was withdrawn (cancelled before validation: its
    sender retracted it, HL7 OBX-11 D/W): it is no part of the report, and amending it
    would put a retracted value back in force. ``step`` is the withdrawal (who, when, the
    reason) as the result's history says it; ``in_force`` the id of the result of the same
    test in force, if any: the one to amend."""

    def __init__(self, status: L.OrderStatus, test: str, step: Step | None,
                 in_force: str | None) -> None:
        super().__init__("amend", status, "result-withdrawn", step)
        self.test, self.in_force = test, in_force        # ``code`` is the error's own
        self.hint = (f"amend the result of {test} in force instead ({in_force})" if in_force
                     else f"this report has no result of {test} in force: a new measurement "
                          "needs a new order")

    def details(self) -> dict[str, Any]:
        return {**super().details(), "test": self.test,
                **({"in_force": self.in_force} if self.in_force else {})}
def awaits_specimen(status: L.OrderStatus,
                    steps: Mapping[str, Step]) -> WorkflowConflict | None:
    """None if an order at ``status`` still awaits its specimen (registered); otherwise
    why not: received already (by whom, when), or closed (rejected, cancelled)."""
    if status == L.OrderStatus.REGISTERED:
        return None
    closed = status in (L.OrderStatus.REJECTED, L.OrderStatus.CANCELLED)
    kind = status.value if closed else "already-received"
    return WorkflowConflict("receive", status, kind, steps.get(kind if closed else "received"))


class ResultsChanged(Conflict):
    """The results are not those the validating person was shown."""

    code = "results-changed"

    def __init__(self) -> None:
        super().__init__("the results changed since they were shown (entered again, added "
                         "or removed)", "review them again, then validate")


class IncompleteOrder(Conflict):
    """Requested tests without a result, on validation or publication."""

    code = "incomplete-order"

    def __init__(self, missing: Mapping[str, str]) -> None:
        self.missing = dict(missing)          # LOINC code -> test name
        super().__init__("no result yet for " + ", ".join(
            f"{c} ({n})" for c, n in self.missing.items()),
            "wait for them, or validate a partial report (partial: true)")

    def details(self) -> dict[str, Any]:
        return {"missing": list(self.missing)}


class FillerNumberTaken(Conflict):
    """A new order, or an order receiving its tube, given a filler number (the laboratory's
    order number: the tube's label, OBR-3 of an analyser's results) that another order of
    the laboratory already has: the analyser's results could not tell the two apart.
    ``field``: what the caller sent it as (``filler_number``, or the specimen's
    ``accession_number`` when the tube's number becomes the order's); ``number``: the
    number, for the console to say in the form (never echoed in an API's answer)."""

    code = "filler-number-taken"

    def __init__(self, number: str, field: str = "filler_number") -> None:
        self.number, self.field = number, field
        what = "tube" if field == "accession_number" else "filler (order)"
        super().__init__(f"this {what} number is already the number of another order of this "
                         "laboratory: an analyser's results quoting it could not tell the "
                         "orders apart", "use the next label: give this order another number "
                         "(one tube number names one order)")

    def details(self) -> dict[str, Any]:
        return {"field": self.field}


class ReportNotPublished(Conflict):
    """A report not published yet (validated or not) may not leave the laboratory."""

    code = "report-not-published"

    def __init__(self) -> None:
        super().__init__("this report is not published yet: it may not leave the laboratory",
                         "publish it first (biological validation, then publication)")


@dataclass
class _Order:
    """An order row with its opened request and workflow (inside a transaction)."""

    row: dict[str, Any]
    dek: DataKey
    request: dict[str, Any]
    workflow: dict[str, Any]

    @property
    def tenant_id(self) -> str:
        return str(self.row["tenant_id"])

    @property
    def order_id(self) -> str:
        return str(self.row["order_id"])

    @property
    def patient_id(self) -> str:
        return str(self.row["patient_id"])

    @property
    def status(self) -> L.OrderStatus:
        return L.OrderStatus(self.row["status"])

    @property
    def sex(self) -> str | None:
        sex = self.request.get("patient", {}).get("sex")
        return str(sex) if sex else None

    @property
    def birth_date(self) -> date | None:
        bd = self.request.get("patient", {}).get("birth_date")
        return date.fromisoformat(bd) if bd else None


def review_reason(results: Sequence[L.Observation], missing: Mapping[str, str],
                  reentered: Collection[L.Observation] = (),
                  deltas: Sequence[tuple[L.Observation, D.Delta]] = ()) -> Skip | None:
    """Why an order's results need a biologist's review rather than "validate all normal"
    (the most serious reason, with the tests concerned); None when they may go in bulk.
    ``reentered``: those of ``results`` entered again before validation (a rerun: the
    value was doubted, the biologist compares it with the one it replaced), whatever
    their flag (``re-entered``). ``deltas``: those of ``results`` that changed beyond
    their test's delta limit since the patient's previous result (``delta``), each with
    what the check found, whatever their flag."""
    if not results:
        return Skip("no-results")
    why: dict[str, list[L.Observation]] = {}
    found: dict[int, D.Delta] = {}
    for o in results:
        if not L.is_normal(o):
            why.setdefault(_not_normal(o), []).append(o)
        if any(o is r for r in reentered):
            why.setdefault("re-entered", []).append(o)
        for r, d in deltas:
            if o is r and d.exceeded:
                why.setdefault("delta", []).append(o)
                found[id(o)] = d
    if why:
        reason = min(why, key=SKIP_REASONS.index)
        flags = (tuple((o.analyser_flag or "", o.flag.value if o.flag else "")
                       for o in why[reason]) if reason == "analyser-disagrees" else ())
        return Skip(reason, tuple(o.name for o in why[reason]), flags,
                    tuple(found[id(o)] for o in why[reason]) if reason == "delta" else ())
    return Skip("incomplete", tuple(missing.values())) if missing else None


# the domain's review reasons in the words of a skipped order (``SKIP_REASONS``)
_SKIP_OF = {L.ReviewReason.PANIC_VALUE: "panic",
            L.ReviewReason.ANALYSER_DISAGREES: "analyser-disagrees",
            L.ReviewReason.OUTSIDE_REFERENCE_RANGE: "out-of-range",
            L.ReviewReason.ABNORMAL_CODE: "out-of-range",
            L.ReviewReason.INDETERMINATE: "indeterminate",
            L.ReviewReason.NO_REFERENCE_RANGE: "no-reference-range"}


def _not_normal(obs: L.Observation) -> str:
    """Why a result keeps its order out of "validate all normal" (a ``SKIP_REASONS``)."""
    reason = L.review_reason(obs)
    return _SKIP_OF[reason] if reason is not None else "indeterminate"


# How far back a patient's previous results are read for the delta check and shown beside
# the results to validate (``LabService._priors``).
PRIOR_LOOKBACK_DAYS = 2 * L.DELTA_MAX_DAYS


def _result_time(obs: L.Observation, entered: datetime,
                 collected: datetime | None = None) -> datetime:
    """When a result was observed (an analyser's OBX-14), else when its specimen was
    collected (``collected``: a result typed in is the specimen's, not the time it was
    typed), else when it was entered (its row's ``created_at``): the time the delta check
    orders results by and the report's "Antériorité" is dated by -- in UTC, as answers
    give times (a collection time keeps the offset it was given with)."""
    at = obs.observed_at or collected or entered
    return _utc(at).astimezone(UTC)


def _limit(cat: L.Catalogue | None, code: str) -> L.DeltaLimit | None:
    """A test's delta limit in ``cat`` (None: no catalogue, no such test, no limit)."""
    test = cat.get(code) if cat is not None else None
    return test.delta if test is not None else None


def _collected(specimens: Iterable[L.Specimen]) -> datetime | None:
    """When an order's specimen was collected (the earliest, if several; None: none)."""
    return min((s.collected_at for s in specimens), default=None)


def default_catalogue_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("labvault.domain").joinpath(
        "catalogue/tests.json").read_text("utf-8"))
    return data


class LabService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv
        self._catalogues: dict[str, L.Catalogue] = {}
        self._default: L.Catalogue | None = None
        self._lock = threading.Lock()
        self._index_keys: dict[str, tuple[int, bytes]] = {}
        self._data_keys: dict[str, tuple[float, DataKey]] = {}
        self._active: dict[str, tuple[float, L.Catalogue]] = {}
        from labvault.services.lab_messages import MessageService
        self.messages = MessageService(lv, self)

    # == gate helpers ===========================================================================
    def _check(self, conn: Connection, actor: Actor, action: Action, tenant_id: str,
               resource: str, patient_ids: Iterable[str], purpose: str = CARE,
               reason: str | None = None) -> None:
        self.lv.gate.check(conn, Access(actor, action, tenant_id, CLINICAL, purpose=purpose,
                                        patient_ids=tuple(dict.fromkeys(patient_ids)),
                                        reason=reason, resource=resource))

    def _scope(self, actor: Actor, tenant_id: str | None, asked: str) -> None:
        """Staff act only inside their own laboratory: another laboratory's record answers
        ``absent(asked)``, byte for byte what an id of that kind that does not exist
        answers (a different message would tell that the record exists elsewhere)."""
        if not self._in_scope(actor, tenant_id):
            raise absent(asked)

    @staticmethod
    def _in_scope(actor: Actor, tenant_id: str | None) -> bool:
        return tenant_id is not None and (actor.tenant_id is None or actor.tenant_id == tenant_id
                                          or actor.kind == "operator")

    def _refused_absent(self, conn: Connection, actor: Actor, action: Action, resource: str,
                        kind: str, asked: str, tenant_id: str | None = None) -> NotFound:
        """``absent(kind)`` for an access (read or write) naming an id the actor's
        laboratory does not hold (absent or another laboratory's), its refusal recorded
        first in the actor's laboratory's audit chain (``record_absent``)."""
        self.record_absent(conn, actor, action, resource, kind, asked, tenant_id)
        return absent(kind)

    def record_absent(self, conn: Connection, actor: Actor, action: Action, resource: str,
                      kind: str, asked: str, tenant_id: str | None = None) -> None:
        """Record that ``actor`` named an id of ``kind`` its laboratory does not hold
        (``Gate.refuse_absent``: in the actor's laboratory's chain -- ``tenant_id`` when
        the work is scoped to one already -- and it survives the rollback). A probe of
        another laboratory's ids is seen there; the caller learns nothing more. Called
        only once the lookup missed: the success path makes no statement more."""
        self.lv.gate.refuse_absent(conn, Access(actor, action, tenant_id or actor.tenant_id,
                                                CLINICAL, resource=resource), kind, asked)

    def _seal(self, dek: DataKey, tenant_id: str, table: str, column: str, record_id: str,
              data: Mapping[str, Any]) -> bytes:
        return dek.seal(SealContext(tenant_id, table, column, record_id), _dumps(data))

    def _seal_bytes(self, dek: DataKey, tenant_id: str, table: str, column: str,
                    record_id: str, data: bytes) -> bytes:
        return dek.seal(SealContext(tenant_id, table, column, record_id), data)

    def _open(self, dek: DataKey, tenant_id: str, table: str, column: str, record_id: str,
              sealed: bytes | None) -> dict[str, Any]:
        if sealed is None:
            return {}
        data: dict[str, Any] = json.loads(self.lv.gate.open_patient_value(
            dek, tenant_id, table, column, record_id, sealed))
        return data

    def digest(self, conn: Connection, tenant_id: str, kind: str, value: str) -> bytes:
        """Blind-index digest under the tenant's current index key -- the version this
        transaction's key check read (``Labvault.current_index_version``: no statement
        of its own once the transaction has checked the tenant's keys), so a rotation
        committed by another process is followed from the next transaction on. The key
        (not any data) is kept per version."""
        version = self.lv.current_index_version(conn, tenant_id)
        hit = self._index_keys.get(tenant_id)
        if hit is None or hit[0] != version:
            hit = (version, self.lv.keyring.blind_index_key(tenant_id, version))
            self._index_keys[tenant_id] = hit
        return bi.digest(hit[1], kind, value)

    def forget_index_key(self, tenant_id: str) -> None:
        """Drop the cached index key (after `keys rotate --index` in this process)."""
        self._index_keys.pop(tenant_id, None)

    # == catalogue ==============================================================================
    def default_catalogue(self) -> L.Catalogue:
        if self._default is None:
            self._default = L.Catalogue.parse(default_catalogue_data())
        return self._default

    def _catalogue(self, conn: Connection, tenant_id: str) -> L.Catalogue:
        """The lab's active catalogue; which one is active is re-read every
        ``INDEX_KEY_TTL`` seconds (and at once after ``load_catalogue`` in this process)."""
        import time
        now = time.monotonic()
        hit = self._active.get(tenant_id)
        if hit is not None and now - hit[0] <= INDEX_KEY_TTL:
            return hit[1]
        cat = self._catalogue_uncached(conn, tenant_id)
        self._active[tenant_id] = (now, cat)
        return cat

    def _catalogue_uncached(self, conn: Connection, tenant_id: str) -> L.Catalogue:
        cid = lrepo.active_catalogue_id(conn, tenant_id)
        if cid is None:
            return self.default_catalogue()
        cat = self._catalogues.get(cid)
        if cat is None:
            row = lrepo.active_catalogue(conn, tenant_id)
            assert row is not None
            raw = self.lv.gate.open_tenant_value_checked(
                conn, tenant_id, "lab_catalogues", "catalogue_sealed", row["catalogue_id"],
                row["catalogue_sealed"])
            try:
                cat = L.Catalogue.parse(json.loads(raw))
            except InvalidRecord as exc:
                # Loaded before the loader's checks: fail closed rather than interpret
                # results against inverted bounds or a dropped (misspelt) key.
                raise UserError(f"the laboratory's catalogue {row['version']} no longer "
                                f"passes the catalogue checks: {exc.message}",
                                "load a corrected catalogue (labvault catalogue load)"
                                ) from None
            with self._lock:
                self._catalogues[row["catalogue_id"]] = cat
        return cat

    def catalogue(self, tenant_id: str) -> L.Catalogue:
        """The catalogue in force for a laboratory (its own, else the shipped default)."""
        with self.lv.begin() as conn:
            return self._catalogue(conn, tenant_id)

    def load_catalogue(self, actor: Actor, tenant_id: str, data: object) -> dict[str, Any]:
        """Install a laboratory's own catalogue (replaces the active one; old ones kept)."""
        cat = L.Catalogue.parse(data)
        assert isinstance(data, Mapping)
        self.lv.tenants.get(tenant_id)
        cid = new_id("cat")
        with self.lv.begin() as conn:
            self.lv.gate.check(conn, Access(actor, Action.WRITE, tenant_id, frozenset(),
                                            purpose="administration", resource="catalogue"))
            sealed = self.lv.gate.seal_tenant_value(conn, tenant_id, "lab_catalogues",
                                                    "catalogue_sealed", cid, _dumps(data))
            lrepo.insert_catalogue(conn, {"tenant_id": tenant_id, "catalogue_id": cid,
                                          "version": cat.version, "status": "active",
                                          "loaded_at": self.lv.now(), "catalogue_sealed": sealed})
        self._active.pop(tenant_id, None)
        return {"catalogue_id": cid, "version": cat.version, "tests": len(cat.tests)}

    def catalogue_versions(self, tenant_id: str) -> list[dict[str, Any]]:
        with self.lv.begin() as conn:
            return lrepo.catalogues(conn, tenant_id)

    # == loading ================================================================================
    def _load_order(self, conn: Connection, order_id: str) -> _Order:
        row = lrepo.order(conn, order_id)
        if row is None:
            raise absent("order")
        return self._order_from_row(conn, row)

    @staticmethod
    def _unpublished(conn: Connection, actor: Actor, patient_id: str, order_id: str,
                     order_status: str | None = None) -> bool:
        """True if ``actor`` is this order's patient and its report is not published yet
        (``PATIENT_VISIBLE``). Another patient's record is left to the gate, which refuses
        it whatever its step (an audited denial that says nothing of the step)."""
        if actor.kind != "patient" or actor.patient_id != patient_id:
            return False
        if order_status is None:
            row = lrepo.order(conn, order_id)
            order_status = row["status"] if row is not None else None
        return order_status is None or L.OrderStatus(order_status) not in PATIENT_VISIBLE

    def _order_from_row(self, conn: Connection, row: dict[str, Any],
                        dek: DataKey | None = None) -> _Order:
        tenant_id, order_id = row["tenant_id"], row["order_id"]
        dek = dek or self.lv.gate.patient_key(conn, tenant_id, row["patient_id"])
        request = self._open(dek, tenant_id, "lab_orders", "request_sealed", order_id,
                             row["request_sealed"])
        workflow = self._open(dek, tenant_id, "lab_orders", "workflow_sealed", order_id,
                              row["workflow_sealed"])
        return _Order(row, dek, request, workflow)

    def _order_for(self, conn: Connection, actor: Actor, order_id: str, action: Action,
                   resource: str = "order", reason: str | None = None,
                   purpose: str = CARE, asked: str = "order", lock: bool = False) -> _Order:
        return self._order_from_row(conn, self._order_row(conn, actor, order_id, action,
                                                          resource, reason, purpose, asked,
                                                          lock))

    def _order_row(self, conn: Connection, actor: Actor, order_id: str, action: Action,
                   resource: str = "order", reason: str | None = None,
                   purpose: str = CARE, asked: str = "order",
                   lock: bool = False, asked_id: str | None = None) -> dict[str, Any]:
        """The order's row (clear columns only), once the gate allowed ``action`` on it.
        ``asked``: the kind of id the caller was given (what "not found" names), and
        ``asked_id`` that id when it is not the order's (a report's): what a refusal of
        an order the laboratory does not hold records.

        Every write locks the order first (``lock``, or any action but a read): the order
        row is the lock of the order's report, specimens and results, so that what a write
        reads (a status, the revisions a validation was shown, the version a FHIR
        ``If-Match`` names) is still so when it writes -- another writer of the order waits
        for the end of this transaction, then reads what it committed."""
        row = lrepo.order(conn, order_id, lock=lock or action != Action.READ)
        if row is None or not self._in_scope(actor, row["tenant_id"]):
            raise self._refused_absent(conn, actor, action, resource, asked,
                                       asked_id or order_id)
        if self._unpublished(conn, actor, row["patient_id"], order_id, row["status"]):
            raise absent(asked)
        self._check(conn, actor, action, row["tenant_id"], resource, (row["patient_id"],),
                    purpose=purpose, reason=reason)
        return row

    def _patient_facts(self, conn: Connection, actor: Actor, tenant_id: str,
                       patient_id: str, dek: DataKey | None = None) -> dict[str, Any]:
        """Sex and birth date (for reference ranges), read through the gate."""
        if dek is not None:
            # The caller holds the patient's key already: one check, one row, one unseal.
            decision = self.lv.gate.check(conn, Access(
                actor, Action.READ, tenant_id, IDENTITY, patient_ids=(patient_id,),
                resource="patient"))
            return self._patient_facts_checked(conn, decision, tenant_id, patient_id, dek)
        if repo.patient_tenant(conn, patient_id) != tenant_id:
            raise NotFound("no such patient", "check the patient id")
        opened = self.lv.gate.read_patients(conn, Access(
            actor, Action.READ, tenant_id, IDENTITY, patient_ids=(patient_id,),
            resource="patient"))
        ident = opened.get(patient_id, {}).get(Category.IDENTITY, {})
        return {"sex": ident.get("sex"), "birth_date": ident.get("birth_date")}

    def _patient_facts_checked(self, conn: Connection, decision: Decision, tenant_id: str,
                               patient_id: str, dek: DataKey,
                               fields: Sequence[str] = ("sex", "birth_date")
                               ) -> dict[str, Any]:
        """Sex and birth date (or the identity ``fields`` asked: an HL7 message also
        compares the names it sent, ``services/identity.py``) under a gate ``decision``
        already made for this patient (e.g. an HL7 message's one decision): opened only if
        it allows the identity category, and only the fields it allows (None for the
        others)."""
        blobs = repo.sealed_patients(conn, tenant_id, (patient_id,), (Category.IDENTITY,))
        if patient_id not in blobs:
            raise NotFound("no such patient", "check the patient id")
        if Category.IDENTITY not in decision.categories:
            return dict.fromkeys(fields)     # any-sex, any-age ranges then
        ident = self._open(dek, tenant_id, "patients", Category.IDENTITY.value, patient_id,
                           blobs[patient_id].get(Category.IDENTITY))
        only = decision.detail.get("fields", {}).get(Category.IDENTITY.value)
        return {k: ident.get(k) if only is None or k in only else None for k in fields}

    def seal_tenant(self, conn: Connection, tenant_id: str, table: str, column: str,
                    record_id: str, data: bytes) -> bytes:
        """Seal under the tenant's current ``data`` key (version cached ``INDEX_KEY_TTL``)."""
        import time
        now = time.monotonic()
        hit = self._data_keys.get(tenant_id)
        if hit is None or now - hit[0] > INDEX_KEY_TTL:
            self.lv.load_tenant_keys(conn, tenant_id)
            v = repo.current_key_version(conn, tenant_id, "data")
            if v is None:
                return self.lv.gate.seal_tenant_value(conn, tenant_id, table, column, record_id,
                                                      data)
            hit = (now, self.lv.keyring.tenant_data_key(tenant_id, "data", v))
            self._data_keys[tenant_id] = hit
        return hit[1].seal(SealContext(tenant_id, table, column, record_id), data)

    # == orders ==================================================================================
    def create_order(self, actor: Actor, tenant_id: str, patient_id: str, request: object,
                     specimen: object | None = None) -> OrderView:
        """Register an order (ServiceRequest) for a patient; optionally its specimen."""
        req = L.ServiceRequest.parse(request)
        spec = L.Specimen.parse(specimen) if specimen is not None else None
        self._scope(actor, tenant_id, "laboratory")
        with self.lv.begin() as conn:
            self._check(conn, actor, Action.WRITE, tenant_id, "order", (patient_id,))
            # before any write: a patient of another laboratory (or none) is a refusal
            # recorded in this one's chain, not a write that rolls back without a trace
            if repo.patient_tenant(conn, patient_id) != tenant_id:
                raise self._refused_absent(conn, actor, Action.WRITE, "order", "patient",
                                           patient_id, tenant_id)
            if req.filler_number:
                field = ("accession_number" if spec is not None
                         and spec.accession_number == req.filler_number else "filler_number")
                self._claim_filler(conn, tenant_id, req.filler_number, field)
            order = self._create_order(conn, actor, tenant_id, patient_id, req)
            specimens: list[SpecimenView] = []
            if spec is not None:
                specimens.append(self._receive(conn, actor, order, spec))
            return self._order_view(conn, order, specimens)

    def _create_order(self, conn: Connection, actor: Actor, tenant_id: str, patient_id: str,
                      req: L.ServiceRequest, facts: Mapping[str, Any] | None = None,
                      dek: DataKey | None = None, status: L.OrderStatus = L.OrderStatus.REGISTERED,
                      steps: Sequence[str] = ("registered",)) -> _Order:
        lv = self.lv
        dek = dek or lv.gate.patient_key(conn, tenant_id, patient_id)
        facts = facts if facts is not None else self._patient_facts(conn, actor, tenant_id,
                                                                     patient_id, dek)
        order_id, report_id, ts = new_id("ord"), new_id("rep"), lv.now()
        request = {**req.as_json(), "patient": dict(facts)}
        workflow: dict[str, Any] = {k: {"by": actor.id, "at": ts.isoformat()} for k in steps}
        row = {
            "tenant_id": tenant_id, "order_id": order_id, "patient_id": patient_id,
            "status": status.value, "priority": req.priority.value,
            "created_at": ts, "updated_at": ts,
            "placer_digest": (self.digest(conn, tenant_id, PLACER, req.placer_number)
                              if req.placer_number else None),
            "filler_digest": (self.digest(conn, tenant_id, FILLER, req.filler_number)
                              if req.filler_number else None),
            "request_sealed": self._seal(dek, tenant_id, "lab_orders", "request_sealed",
                                         order_id, request),
            "workflow_sealed": self._seal(dek, tenant_id, "lab_orders", "workflow_sealed",
                                          order_id, workflow),
        }
        report = {"tenant_id": tenant_id, "report_id": report_id, "order_id": order_id,
                  "patient_id": patient_id, "status": L.REPORT_STATUS[status], "created_at": ts,
                  "updated_at": ts, "issued_at": None, "report_sealed": None}
        with driver_sql.pipelined(conn):          # the order and its report: one round trip
            lrepo.insert_order(conn, row, report)
        o = _Order(row, dek, request, workflow)
        o.row["report_id"] = report_id
        return o

    def _claim_filler(self, conn: Connection, tenant_id: str, number: str,
                      field: str = "filler_number") -> None:
        """Refuse (``FillerNumberTaken``) a filler number another order of the laboratory
        already has, for a caller about to give it to an order in this transaction: the
        number stays locked until the transaction ends (``lrepo.lock_number``), so two
        orders created at once with one number cannot both pass. For the doors that create
        orders with the caller's number (console, FHIR); an HL7 message naming a known
        filler number is about that order (``MessageService``) and never comes here."""
        digest = self.digest(conn, tenant_id, FILLER, number)
        lrepo.lock_number(conn, digest)
        if lrepo.order_with_filler(conn, tenant_id, digest) is not None:
            raise FillerNumberTaken(number, field)

    def _attach_numbers(self, conn: Connection, order: _Order, placer: str | None,
                        filler: str | None) -> None:
        """Give an order the placer/filler number it did not have yet (the filler assigns
        its number after the order was placed): a later message naming the order by that
        number alone then finds it. A number the order already has is never replaced."""
        values: dict[str, Any] = {}
        for kind, column, key, number in ((PLACER, "placer_digest", "placer_number", placer),
                                          (FILLER, "filler_digest", "filler_number", filler)):
            if number and order.row.get(column) is None:
                values[column] = self.digest(conn, order.tenant_id, kind, number)
                order.request[key] = number
        if not values:
            return
        values["request_sealed"] = self._seal(order.dek, order.tenant_id, "lab_orders",
                                              "request_sealed", order.order_id, order.request)
        values["updated_at"] = self.lv.now()      # the order changed (FHIR meta, versions)
        lrepo.update_order(conn, order.tenant_id, order.order_id, **values)
        order.row.update(values)

    def _add_tests(self, conn: Connection, order: _Order, codes: Iterable[str]) -> None:
        """Tests results came for that the order did not list (a later message, a second
        analyser): added to it, so the order (FHIR ServiceRequest.code) says what was done."""
        tests = list(order.request.get("tests") or [])
        new = [c for c in dict.fromkeys(codes) if c not in tests]
        if not new:
            return
        order.request["tests"] = tests + new
        values = {"request_sealed": self._seal(order.dek, order.tenant_id, "lab_orders",
                                               "request_sealed", order.order_id, order.request),
                  "updated_at": self.lv.now()}     # the order changed (FHIR meta, versions)
        lrepo.update_order(conn, order.tenant_id, order.order_id, **values)
        order.row.update(values)

    def _transition(self, conn: Connection, actor: Actor, order: _Order,
                    target: L.OrderStatus, step: str | None = None,
                    detail: Mapping[str, Any] | None = None) -> None:
        current = order.status
        L.check_transition(current, target)
        ts = self.lv.now()
        values: dict[str, Any] = {"status": target.value, "updated_at": ts}
        if step is not None:
            entry = {"by": actor.id, "at": ts.isoformat(), **(detail or {})}
            if step in ("amended", "re-entered"):
                order.workflow.setdefault(step, [])
                order.workflow[step].append(entry)
            else:
                order.workflow[step] = entry
            values["workflow_sealed"] = self._seal(order.dek, order.tenant_id, "lab_orders",
                                                   "workflow_sealed", order.order_id,
                                                   order.workflow)
        if current != target or step is not None:
            lrepo.update_order(conn, order.tenant_id, order.order_id, **values)
            order.row.update(values)
        new_report = L.REPORT_STATUS[target]
        if L.REPORT_STATUS[current] != new_report or target == L.OrderStatus.PUBLISHED:
            rvals: dict[str, Any] = {"status": new_report, "updated_at": ts}
            if target == L.OrderStatus.PUBLISHED:
                rvals["issued_at"] = ts
            lrepo.update_report(conn, order.tenant_id, order.order_id, **rvals)

    # == specimens ===============================================================================
    def receive_specimen(self, actor: Actor, order_id: str, specimen: object,
                         tube_is_filler: bool = False, awaited: bool = False) -> SpecimenView:
        """Receive an order's specimen. ``tube_is_filler``: the tube's number (the
        specimen's accession number) becomes the order's filler number if the order has
        none yet -- as the desk's order form does -- so that an analyser's results quoting
        the tube's barcode find the order; refused (``FillerNumberTaken``) when another
        order of the laboratory has that number. The console and the FHIR door ask it.
        ``awaited``: only the specimen the order still awaits (``awaits_specimen``, under
        the order's lock): a form posted twice is refused instead of adding a second tube
        (the console's reception page)."""
        spec = L.Specimen.parse(specimen)
        with self.lv.begin() as conn:
            order = self._order_for(conn, actor, order_id, Action.WRITE, "specimen")
            if awaited and (refused := awaits_specimen(order.status,
                                                       self._steps(order.workflow))):
                raise refused
            if tube_is_filler and order.row.get("filler_digest") is None:
                L.check_transition(order.status, L.OrderStatus.RECEIVED)  # that error first
                self._claim_filler(conn, order.tenant_id, spec.accession_number,
                                   "accession_number")
                self._attach_numbers(conn, order, None, spec.accession_number)
            return self._receive(conn, actor, order, spec)

    def _receive(self, conn: Connection, actor: Actor, order: _Order,
                 spec: L.Specimen) -> SpecimenView:
        first = "received" not in order.workflow
        self._transition(conn, actor, order, L.OrderStatus.RECEIVED, "received" if first else None)
        sid, ts = new_id("spc"), self.lv.now()
        if not first:   # a further specimen changes the order too (its list of specimens)
            lrepo.update_order(conn, order.tenant_id, order.order_id, updated_at=ts)
            order.row["updated_at"] = ts
        row = {"tenant_id": order.tenant_id, "specimen_id": sid, "order_id": order.order_id,
               "patient_id": order.patient_id, "status": "available", "received_at": ts,
               "accession_digest": self.digest(conn, order.tenant_id, ACCESSION,
                                               spec.accession_number),
               "specimen_sealed": self._seal(order.dek, order.tenant_id, "lab_specimens",
                                             "specimen_sealed", sid, spec.as_json())}
        lrepo.insert_specimen(conn, row)
        return SpecimenView(sid, order.order_id, order.patient_id, order.tenant_id,
                            "available", ts, spec)

    # == results =================================================================================
    def enter_results(self, actor: Actor, order_id: str,
                      results: Sequence[object]) -> list[ObservationView]:
        """Enter (or re-enter, before validation) results; panic values alert at once."""
        parsed: list[L.ResultInput] = []
        errors: list[InvalidField] = []
        for i, r in enumerate(results):
            try:
                parsed.append(L.ResultInput.parse(r, f"results[{i}]."))
            except InvalidRecord as exc:
                errors.extend(exc.errors)
        if errors:
            raise InvalidRecord(errors)
        if not parsed:
            raise UserError("no results given", "give at least one result")
        with self.lv.begin() as conn:
            order = self._order_for(conn, actor, order_id, Action.WRITE, "observation")
            cat = self._catalogue(conn, order.tenant_id)
            interpreted: list[L.Observation] = []
            for i, r in enumerate(parsed):
                test = cat.get(r.code)
                if test is None:
                    errors.append(InvalidField(f"results[{i}].code",
                                               f"{r.code} is not in catalogue {cat.version}",
                                               "add it to the laboratory's catalogue"))
                    continue
                try:
                    interpreted.append(L.Observation.interpret(
                        r, test, cat.version, order.sex, order.birth_date, self.lv.now()))
                except InvalidField as exc:
                    errors.append(InvalidField(f"results[{i}].{exc.field}", exc.rule, exc.hint))
            if errors:
                raise InvalidRecord(errors)
            return self._store_results(conn, actor, order, interpreted)

    def _store_results(self, conn: Connection, actor: Actor, order: _Order,
                       results: Sequence[L.Observation]) -> list[ObservationView]:
        if order.status == L.OrderStatus.REGISTERED:
            raise L.InvalidTransition("the specimen of this order has not been received",
                                      "receive the specimen first")
        _one_per_test(results)
        self._transition(conn, actor, order, L.OrderStatus.PRELIMINARY,
                         "results-entered" if "results-entered" not in order.workflow else None)
        ts = self.lv.now()
        tenant_id = order.tenant_id
        existing = {}
        rows_existing = lrepo.observations(conn, tenant_id, order.order_id)
        for r in rows_existing:
            if r["status"] == "preliminary":
                obs = L.Observation.from_json(self._open(
                    order.dek, tenant_id, "lab_observations", "result_sealed",
                    r["observation_id"], r["result_sealed"]))
                existing[obs.code] = (r, obs)
        seq = len(rows_existing)
        new_rows: list[dict[str, Any]] = []
        hist: list[dict[str, Any]] = []
        out: list[ObservationView] = []
        fresh = iter(new_ids("obs", len(results)))     # one group: neighbours in the indexes
        for obs in results:
            prev = existing.get(obs.code)
            if prev is not None:
                r, old = prev
                oid, rev = r["observation_id"], r["revision"] + 1
                sealed = self._seal(order.dek, tenant_id, "lab_observations", "result_sealed",
                                    oid, obs.as_json())
                lrepo.update_observation(conn, tenant_id, oid, revision=rev, updated_at=ts,
                                         result_sealed=sealed)
                hist.append(self._history_row(order, oid, rev, ts, actor, "re-entered", None,
                                              old, obs))
                created = r["created_at"]
                existing[obs.code] = ({**r, "revision": rev}, obs)
            else:
                oid, rev, seq = next(fresh), 1, seq + 1
                result = _dumps(obs.as_json())
                new_rows.append({
                    "tenant_id": tenant_id, "observation_id": oid, "order_id": order.order_id,
                    "patient_id": order.patient_id, "status": "preliminary", "seq": seq,
                    "revision": 1, "created_at": ts, "updated_at": ts,
                    "result_sealed": self._seal_bytes(order.dek, tenant_id, "lab_observations",
                                                      "result_sealed", oid, result)})
                hist.append(self._history_row(order, oid, 1, ts, actor, "entered", None, None,
                                              obs, result))
                created = ts
                existing[obs.code] = (new_rows[-1], obs)
            out.append(ObservationView(oid, order.order_id, order.patient_id, tenant_id,
                                       "preliminary", rev, created, ts, obs))
        with driver_sql.pipelined(conn):          # results and history: one round trip
            lrepo.insert_observations(conn, new_rows)
            lrepo.insert_history(conn, hist)
        self._panic(conn, actor, order, out)
        return out

    def _cancel_result(self, conn: Connection, actor: Actor, order: _Order, code: str,
                       reason: str) -> str | None:
        """Cancel the result of ``code`` not yet validated (the sender retracted it), the
        reason in its history; a technically validated order goes back to preliminary
        (its validation covered that result). The observation id, or None if there is
        no such result."""
        tenant_id = order.tenant_id
        for r in lrepo.observations(conn, tenant_id, order.order_id):
            if r["status"] != "preliminary":
                continue
            old = L.Observation.from_json(self._open(order.dek, tenant_id, "lab_observations",
                                                     "result_sealed", r["observation_id"],
                                                     r["result_sealed"]))
            if old.code != code:
                continue
            oid, rev, ts = r["observation_id"], r["revision"] + 1, self.lv.now()
            self._transition(conn, actor, order, L.OrderStatus.PRELIMINARY)
            lrepo.update_observation(conn, tenant_id, oid, status="cancelled", revision=rev,
                                     updated_at=ts)
            lrepo.insert_history(conn, [self._history_row(order, oid, rev, ts, actor,
                                                          "cancelled", reason, old, None)])
            return str(oid)
        return None

    def _create_with_results(self, conn: Connection, actor: Actor, tenant_id: str,
                             patient_id: str, dek: DataKey, req: L.ServiceRequest,
                             spec: L.Specimen, results: Sequence[L.Observation],
                             facts: Mapping[str, Any]) -> tuple[_Order, list[ObservationView]]:
        """Unsolicited results (an analyzer's ORU for an order we did not have): the order
        is written directly in its final state of this message — registered, received and
        results entered in one step — with its specimen, results and history (5 inserts,
        one round trip on PostgreSQL). Panic values alert after the pipeline: the alert
        store reads (is this value already alerted?), and a read's rows cannot be iterated
        inside PostgreSQL's pipeline mode -- raised inside, every analyser message with a
        critical value was refused (AE, nothing stored)."""
        with driver_sql.pipelined(conn):
            order, views = self._write_with_results(conn, actor, tenant_id, patient_id, dek,
                                                    req, spec, results, facts)
        self._panic(conn, actor, order, views)
        return order, views

    def _write_with_results(self, conn: Connection, actor: Actor, tenant_id: str,
                            patient_id: str, dek: DataKey, req: L.ServiceRequest,
                            spec: L.Specimen, results: Sequence[L.Observation],
                            facts: Mapping[str, Any]) -> tuple[_Order, list[ObservationView]]:
        _one_per_test(results)
        order = self._create_order(conn, actor, tenant_id, patient_id, req, facts, dek,
                                   L.OrderStatus.PRELIMINARY,
                                   ("registered", "received", "results-entered"))
        ts = order.row["created_at"]
        sid = new_id("spc")
        lrepo.insert_specimen(conn, {
            "tenant_id": tenant_id, "specimen_id": sid, "order_id": order.order_id,
            "patient_id": patient_id, "status": "available", "received_at": ts,
            "accession_digest": self.digest(conn, tenant_id, ACCESSION, spec.accession_number),
            "specimen_sealed": self._seal(dek, tenant_id, "lab_specimens", "specimen_sealed",
                                          sid, spec.as_json())})
        rows, hist, out = [], [], []
        # one group of ids: the message's results are neighbours in the indexes keyed by them
        for seq, (obs, oid) in enumerate(zip(results, new_ids("obs", len(results)),
                                             strict=True), start=1):
            result = _dumps(obs.as_json())          # once: the result and its history entry
            rows.append({"tenant_id": tenant_id, "observation_id": oid,
                         "order_id": order.order_id, "patient_id": patient_id,
                         "status": "preliminary", "seq": seq, "revision": 1, "created_at": ts,
                         "updated_at": ts, "result_sealed": self._seal_bytes(
                             dek, tenant_id, "lab_observations", "result_sealed", oid, result)})
            hist.append(self._history_row(order, oid, 1, ts, actor, "entered", None, None, obs,
                                          result))
            out.append(ObservationView(oid, order.order_id, patient_id, tenant_id,
                                       "preliminary", 1, ts, ts, obs))
        lrepo.insert_observations(conn, rows)
        lrepo.insert_history(conn, hist)
        return order, out

    def _panic(self, conn: Connection, actor: Actor, order: _Order,
               views: Sequence[ObservationView]) -> None:
        for view in views:
            self._panic_alert(conn, actor, order, view.observation_id, view.observation)

    def _panic_alert(self, conn: Connection, actor: Actor, order: _Order, observation_id: str,
                     obs: L.Observation) -> None:
        """A critical value: an alert of its own naming the patient, order and result, sent
        at once. Its subject is the result and its value, so only the same value of the same
        result (a resent message, a re-entry) is merged into it -- never another patient's."""
        if obs.flag is None or not obs.flag.is_panic:
            return
        subject = f"{observation_id}|{obs.value_display()}|{obs.unit or ''}|{obs.flag.value}"
        self.lv.alerts.raise_alert(conn, order.tenant_id, "panic-value", "critical", actor,
                                   {"order_id": order.order_id,
                                    "observation_id": observation_id,
                                    "patient_id": order.patient_id}, subject=subject)

    def _history_row(self, order: _Order, oid: str, revision: int, ts: datetime, actor: Actor,
                     change: str, reason: str | None, previous: L.Observation | None,
                     new: L.Observation | None, new_json: bytes | None = None
                     ) -> dict[str, Any]:
        """``new_json``: ``new`` already encoded (``_dumps(new.as_json())``), spliced in
        as is — the same bytes as encoding the whole entry."""
        hid = new_id("hst")
        head = {"by": actor.id, "change": change, "reason": reason,
                "previous": previous.as_json() if previous else None}
        if new_json is not None:
            data = _dumps(head)[:-1] + b',"new":' + new_json + b"}"
        else:
            data = _dumps({**head, "new": new.as_json() if new else None})
        return {"tenant_id": order.tenant_id, "history_id": hid, "observation_id": oid,
                "patient_id": order.patient_id, "revision": revision, "changed_at": ts,
                "change_sealed": self._seal_bytes(order.dek, order.tenant_id,
                                                  "lab_observation_history", "change_sealed",
                                                  hid, data)}

    # == validation ==============================================================================
    def _signed(self, actor: Actor, **detail: Any) -> dict[str, Any]:
        """A step's detail with the name of the person who took it: who validated a
        report is part of the report (and of "already validated by … at …")."""
        return {"name": self.lv.accounts.name_of(actor), **detail}

    @staticmethod
    def _expect(order: _Order, action: str, target: L.OrderStatus) -> None:
        """Refuse ``action`` at a step that does not allow it, saying why (who did the
        step that settles it, and when) rather than naming states."""
        if target in L.TRANSITIONS[order.status]:
            return
        kind, step = _conflict_kind(action, order.status)
        steps = LabService._steps(order.workflow)
        raise WorkflowConflict(action, order.status, kind, steps.get(step) if step else None)

    @staticmethod
    def _unchanged(conn: Connection, order: _Order,
                   expected: Mapping[str, int] | None) -> list[dict[str, Any]]:
        """The order's result rows; refused when they are not what was shown
        (``expected``: result id -> revision)."""
        rows = lrepo.observations(conn, order.tenant_id, order.order_id)
        if expected is not None and {r["observation_id"]: r["revision"]
                                     for r in rows} != dict(expected):
            raise ResultsChanged()
        return rows

    def _results(self, order: _Order, rows: Iterable[Mapping[str, Any]]) -> list[L.Observation]:
        """The order's results in force (cancelled ones left out), opened."""
        return [L.Observation.from_json(self._open(
            order.dek, order.tenant_id, "lab_observations", "result_sealed",
            r["observation_id"], r["result_sealed"]))
            for r in rows if r["status"] != "cancelled"]

    def _missing(self, conn: Connection, order: _Order,
                 results: Iterable[L.Observation]) -> dict[str, str]:
        """Requested tests without a result: LOINC code -> test name."""
        have = {o.code for o in results}
        cat = self._catalogue(conn, order.tenant_id)
        return {t: cat.name_of(t) for t in order.request.get("tests", ()) if t not in have}

    def validate_technical(self, actor: Actor, order_id: str,
                           expected: Mapping[str, int] | None = None) -> OrderView:
        """Technical validation (technician or biologist): the results are analytically
        sound. ``expected``: the results shown to the validating person."""
        if not (actor.roles & L.TECHNICAL_ROLES):
            raise AccessDenied("technical validation needs a technician or biologist role",
                               "ask a technician or a biologist to validate")
        with self.lv.begin() as conn:
            order = self._order_for(conn, actor, order_id, Action.VALIDATE, "observation")
            self._expect(order, "technical", L.OrderStatus.TECHNICALLY_VALIDATED)
            self._unchanged(conn, order, expected)
            self._transition(conn, actor, order, L.OrderStatus.TECHNICALLY_VALIDATED,
                             "technical", self._signed(actor))
            return self._order_view(conn, order)

    def validate_biological(self, actor: Actor, order_id: str,
                            conclusion: str | None = None,
                            expected: Mapping[str, int] | None = None,
                            partial: bool | None = None) -> ReportView:
        """Biological validation: only a biologist; records who and when; results become
        final. ``expected``: the results the biologist reviewed; ``partial``: see the
        module's docstring."""
        self._require_biologist(actor)
        with self.lv.begin() as conn:
            order = self._order_for(conn, actor, order_id, Action.VALIDATE, "report")
            self._expect(order, "biological", L.OrderStatus.FINAL)
            self._validate_bio(conn, actor, order, conclusion, expected, partial)
            return self._report_view(conn, order)

    def validate_final(self, actor: Actor, order_id: str,
                       conclusion: str | None = None) -> ReportView:
        """``validate_technical`` (when the results are still preliminary) then
        ``validate_biological``, in one transaction: the same checks and gate decisions
        (validate observation, validate report), the order loaded and opened once."""
        if not (actor.roles & L.TECHNICAL_ROLES):
            raise AccessDenied("technical validation needs a technician or biologist role",
                               "ask a technician or a biologist to validate")
        with self.lv.begin() as conn:
            row = lrepo.order(conn, order_id, lock=True)
            if row is None or not self._in_scope(actor, row["tenant_id"]):
                raise self._refused_absent(conn, actor, Action.VALIDATE, "report", "order",
                                           order_id)
            technical = row["status"] == L.OrderStatus.PRELIMINARY.value
            signed = self._signed(actor)
            if technical:
                self._check(conn, actor, Action.VALIDATE, row["tenant_id"], "observation",
                            (row["patient_id"],))
                order = self._order_from_row(conn, row)
                self._transition(conn, actor, order, L.OrderStatus.TECHNICALLY_VALIDATED,
                                 "technical", signed)
            self._require_biologist(actor)
            self._check(conn, actor, Action.VALIDATE, row["tenant_id"], "report",
                        (row["patient_id"],))
            if not technical:
                order = self._order_from_row(conn, row)
            self._validate_bio(conn, actor, order, conclusion, signed=signed)
            return self._report_view(conn, order)

    @staticmethod
    def _require_biologist(actor: Actor, action: str = VALIDATE_BIO) -> None:
        """``action``: what was attempted, as the refusal says it ("correct a published
        result"): the user learns what only a biologist may do, not another rule."""
        if L.BIOLOGIST_ROLE not in actor.roles:
            raise AccessDenied(f"only a biologist may {action}",
                               f"ask a biologist of the laboratory to {action}")

    def _validate_bio(self, conn: Connection, actor: Actor, order: _Order,
                      conclusion: str | None, expected: Mapping[str, int] | None = None,
                      partial: bool | None = None, signed: Mapping[str, Any] | None = None,
                      ) -> None:
        from labvault.domain import validation as v
        concl = v.text(conclusion, "conclusion", 8000)
        rows = self._unchanged(conn, order, expected)
        if not rows:
            raise L.InvalidTransition("this order has no results", "enter results first")
        detail = dict(signed or self._signed(actor))
        if partial is not None:
            missing = self._missing(conn, order, self._results(order, rows))
            if missing and not partial:
                raise IncompleteOrder(missing)
            if missing:
                detail["partial"] = sorted(missing)
        self._transition(conn, actor, order, L.OrderStatus.FINAL, "biological", detail)
        ts = self.lv.now()
        lrepo.set_observations_status(conn, order.tenant_id, order.order_id, "final", ts,
                                      only=("preliminary",))
        if concl is not None:
            self._write_report_payload(conn, order, {"conclusion": concl,
                                                     "conclusion_at": ts.isoformat()})

    def _write_report_payload(self, conn: Connection, order: _Order,
                              changes: Mapping[str, Any],
                              revised_because: str | None = None) -> None:
        """Update the report's sealed payload. ``revised_because``: a published conclusion
        is being replaced; the previous text is kept with when and why."""
        rep = lrepo.report_by_order(conn, order.tenant_id, order.order_id)
        assert rep is not None
        payload = self._open(order.dek, order.tenant_id, "lab_reports", "report_sealed",
                             rep["report_id"], rep["report_sealed"])
        ts = self.lv.now()
        if revised_because is not None:
            payload["conclusion_revisions"] = [
                *payload.get("conclusion_revisions", ()),
                {"at": ts.isoformat(), "reason": revised_because,
                 "previous": payload.get("conclusion")}]
        payload.update(changes)
        lrepo.update_report(conn, order.tenant_id, order.order_id, report_sealed=self._seal(
            order.dek, order.tenant_id, "lab_reports", "report_sealed", rep["report_id"],
            payload), updated_at=ts)

    def validate_all_normal(self, actor: Actor, tenant_id: str,
                            order_ids: Sequence[str] | None = None,
                            limit: int = 500,
                            expected: Mapping[str, Mapping[str, int]] | None = None,
                            partial: bool | None = None) -> BulkValidation:
        """Biologically validate every technically validated order of the worklist whose
        results are all within their reference ranges; the others stay for review, each
        with its reason (``BulkValidation.reasons``). ``expected``: the orders shown, each
        with its results as shown (order id -> result id -> revision): only those orders
        are considered, and one whose results changed is left for review. ``partial=False``
        leaves the orders with a requested test still without result."""
        self._require_biologist(actor)
        self._scope(actor, tenant_id, "laboratory")
        if expected is not None:
            order_ids = [o for o in expected if order_ids is None or o in order_ids]
        out = BulkValidation()
        with self.lv.begin() as conn:
            rows = lrepo.orders(conn, tenant_id,
                                statuses=[L.OrderStatus.TECHNICALLY_VALIDATED.value],
                                order_ids=order_ids, limit=limit, lock=True)
            found = {r["order_id"] for r in rows}
            for oid in order_ids or ():
                if oid not in found:        # validated meanwhile, re-entered, cancelled...
                    out.skip(oid, "not-waiting")
            if not rows:
                return out
            self._check(conn, actor, Action.VALIDATE, tenant_id, "report",
                        [r["patient_id"] for r in rows])
            signed = self._signed(actor)
            orders = [self._order_from_row(conn, row) for row in rows]
            # the delta check: the patients' previous validated results, under the decision
            # just made (validating these patients' reports means reading their results:
            # the previous ones are their earlier reports', the same patients, the same
            # purpose; see ``_priors``)
            priors = self._priors(conn, tenant_id, orders)
            # what dates the results typed in without an observation time (opened only
            # for those: ``_specimens_collected``)
            specimens: dict[str, list[tuple[str, bytes]]] = {}
            for s in lrepo.specimens_of(conn, tenant_id, [o.order_id for o in orders]):
                specimens.setdefault(s["order_id"], []).append(
                    (s["specimen_id"], s["specimen_sealed"]))
            for order in orders:
                skip = self._bulk_skip(conn, order, expected, partial, priors,
                                       specimens.get(order.order_id, ()))
                if skip is not None:
                    out.skip(order.order_id, skip.reason, skip.tests, skip.flags, skip.deltas)
                    continue
                self._validate_bio(conn, actor, order, None, signed=signed)
                out.validated.append(order.order_id)
        return out

    def _bulk_skip(self, conn: Connection, order: _Order,
                   expected: Mapping[str, Mapping[str, int]] | None,
                   partial: bool | None,
                   priors: Mapping[str, Sequence[tuple[str, D.Prior]]],
                   specimens: Sequence[tuple[str, bytes]] = ()) -> Skip | None:
        """Why an order may not be validated in bulk (None: it may). ``priors``: the
        patients' previous validated results (``_priors``), for the delta check;
        ``specimens``: the order's (id, sealed), what dates a result typed in."""
        try:
            rows = self._unchanged(conn, order,
                                   None if expected is None else expected[order.order_id])
        except ResultsChanged:
            return Skip("changed")
        in_force = [r for r in rows if r["status"] != "cancelled"]
        results = self._results(order, in_force)
        missing = self._missing(conn, order, results) if partial is False else {}
        collected = (self._specimens_collected(order.dek, order.tenant_id, specimens)
                     if any(o.observed_at is None for o in results) else None)
        deltas = self._deltas(conn, order, [
            (r["observation_id"], o, _result_time(o, r["created_at"], collected),
             _utc(r["created_at"])) for o, r in zip(results, in_force, strict=True)], priors)
        # before validation only a re-entry takes a result in force past its first
        # revision (amendments come after publication, a retraction cancels it)
        return review_reason(results, missing, [o for o, r in zip(results, in_force,
                                                                  strict=True)
                                                if r["revision"] > 1],
                             [(o, d) for o, r in zip(results, in_force, strict=True)
                              if (d := deltas.get(r["observation_id"])) is not None])

    # == previous results: the delta check (docs/lab.md "Previous results") ===================
    @staticmethod
    def _validates(actor: Actor) -> bool:
        """Whether ``actor`` is staff who validate results (technicians, biologists): the
        only readers shown a patient's previous results beside the results to validate."""
        return actor.kind == "staff" and bool(actor.roles & L.TECHNICAL_ROLES)

    def _priors(self, conn: Connection, tenant_id: str, orders: Sequence[_Order],
                published: bool = False,
                window: tuple[datetime, datetime] | None = None
                ) -> dict[str, list[tuple[str, D.Prior]]]:
        """The validated results (final or amended, of an order validated, published or
        amended; ``published``: of an order published or amended only, what the patient
        and the prescriber have read) of the patients of ``orders``, opened under each
        patient's key (the key the caller opened their orders with): patient id ->
        [(order id, result)], each dated by ``_result_time``. One query for every patient,
        whatever the number of results, their orders' specimens included.

        No gate decision of its own: the callers call it only after the one they made for
        these patients' reports (a read of their reports for the review, the validation of
        "validate all normal", the read of a published report), by staff who validate, or
        for a published report by whoever may read it. A validated result is a part of the
        patient's earlier report, which that decision already lets them read -- the same
        patients, the same clinical category, the same purpose, one audited entry naming
        them. Nothing else is opened: no other patient, no result not validated (not
        published, for ``published``), and a specimen only to date a result without an
        observation time.

        Only results entered within ``PRIOR_LOOKBACK_DAYS`` (``window``: entered within
        it, (since, until)): each is unsealed, and a patient followed for years would
        otherwise make every worklist showing them open their whole history. Every
        comparison a delta window allows is still made (the longest window,
        ``L.DELTA_MAX_DAYS``, is half the lookback)."""
        since, until = window or (self.lv.now() - timedelta(days=PRIOR_LOOKBACK_DAYS), None)
        out: dict[str, list[tuple[str, D.Prior]]] = {}
        for r, obs, at in self._validated_results(
                conn, tenant_id, {o.patient_id: o.dek for o in orders}, published, since,
                until):
            out.setdefault(r["patient_id"], []).append((r["order_id"], D.Prior(
                at, obs, r["observation_id"], _utc(r["created_at"]))))
        return out

    def _validated_results(self, conn: Connection, tenant_id: str,
                           deks: Mapping[str, DataKey], published: bool, since: datetime,
                           until: datetime | None
                           ) -> list[tuple[dict[str, Any], L.Observation, datetime]]:
        """The validated results (``_priors``: which, and who may call it) of the patients
        of ``deks`` (patient id -> the key the caller opened them with) entered in
        [``since``, ``until``), each as (row, result opened, its ``_result_time``), in the
        order entered: one query, their orders' specimens included."""
        rows = lrepo.validated_observations_of(
            conn, tenant_id, list(deks),
            sorted(s.value for s in (PATIENT_VISIBLE if published else _VALIDATED)),
            ("final", "amended"), since=since, until=until)
        collected: dict[str, datetime | None] = {}
        out = []
        for r in rows:
            dek = deks[r["patient_id"]]
            obs = L.Observation.from_json(self._open(
                dek, tenant_id, "lab_observations", "result_sealed", r["observation_id"],
                r["result_sealed"]))
            if obs.observed_at is None and r["order_id"] not in collected:
                collected[r["order_id"]] = self._specimens_collected(dek, tenant_id,
                                                                     r["specimens"])
            out.append((r, obs, _result_time(obs, r["created_at"],
                                             collected.get(r["order_id"]))))
        return out

    def _specimens_collected(self, dek: DataKey, tenant_id: str,
                             specimens: Iterable[tuple[str, bytes]]) -> datetime | None:
        """When an order's specimen was collected, from its specimens (id, sealed)."""
        return _collected(L.Specimen.parse(self._open(
            dek, tenant_id, "lab_specimens", "specimen_sealed", sid, sealed))
            for sid, sealed in specimens)

    def _with_anteriorities(self, conn: Connection, orders: Sequence[_Order],
                            views: Sequence[ReportView]) -> list[ReportView]:
        """``views`` (of ``orders``), the published ones with their "Antériorité" column
        (``ReportView.anteriorities``): the patients' published results entered within
        ``PRIOR_LOOKBACK_DAYS`` of these reports' results, read in one query for them all
        (``_priors``, under the decision of the read of these reports)."""
        shown = [(o, v) for o, v in zip(orders, views, strict=True)
                 if v.order_status in PATIENT_VISIBLE]
        times = [v.result_time(r) for _o, v in shown for r in v.observations]
        if not times:
            return list(views)
        lookback = timedelta(days=PRIOR_LOOKBACK_DAYS)
        # a report read again years later opens its own time's results, not the years since
        tenant_id = shown[0][0].tenant_id
        priors = self._priors(conn, tenant_id, [o for o, _v in shown], published=True,
                              window=(min(times) - lookback, max(times) + lookback))
        try:
            cat: L.Catalogue | None = self._catalogue(conn, tenant_id)
        except UserError:               # a stored catalogue failing the checks: no limits
            cat = None
        found: dict[str, dict[str, D.Anteriority]] = {}
        for o, v in shown:
            mine = [p for oid, p in priors.get(o.patient_id, ()) if oid != o.order_id]
            found[o.order_id] = {
                r.observation_id: a for r in v.observations if r.status != "cancelled"
                and (a := D.report_prior(
                    r.observation, v.result_time(r), mine, PRIOR_LOOKBACK_DAYS,
                    _utc(r.created_at), _limit(cat, r.observation.code))) is not None}
        return [replace(v, anteriorities=found[v.order_id]) if found.get(v.order_id) else v
                for v in views]

    def _deltas(self, conn: Connection, order: _Order,
                results: Sequence[tuple[str, L.Observation, datetime, datetime]],
                priors: Mapping[str, Sequence[tuple[str, D.Prior]]]) -> dict[str, D.Delta]:
        """Each of ``results`` (result id, result, its time, when it was entered) with its
        previous result of another order of the patient, and what the delta check found,
        by result id."""
        mine = [p for oid, p in priors.get(order.patient_id, ()) if oid != order.order_id]
        if not mine:
            return {}
        try:
            cat: L.Catalogue | None = self._catalogue(conn, order.tenant_id)
        except UserError:               # a stored catalogue failing the checks: no limits
            cat = None
        out: dict[str, D.Delta] = {}
        for rid, obs, at, entered in results:
            found = D.check(obs, at, mine, _limit(cat, obs.code), entered)
            if found is not None:
                out[rid] = found
        return out

    # == a patient's results over time (docs/lab.md) ===========================================
    def results_history(self, actor: Actor, tenant_id: str, patient_id: str,
                        code: str | None = None, since: datetime | None = None,
                        until: datetime | None = None, purpose: str = CARE) -> ResultHistory:
        """A patient's validated results dated in [``since``, ``until``) (default: the
        last ``PRIOR_LOOKBACK_DAYS``; at most ``HISTORY_MAX_DAYS``), newest first, of the
        test ``code`` or of every test: final or amended results of an order validated,
        published or amended (a patient: published or amended only, as its listings),
        each dated by ``_result_time``. One gate decision, the read of the patient's
        reports (a validated result is part of one), audited like a listing of them; one
        query (``_validated_results``, results with their orders' specimens), every result
        entered since the period's start opened (codes are sealed: ``code`` filters after;
        the time a result is dated by is sealed too: the period filters after). A patient the
        laboratory does not hold (another laboratory's, erased, no such id) answers
        ``absent("patient")``, the miss recorded."""
        self._scope(actor, tenant_id, "laboratory")
        start, end = period(self.lv.now(), since, until, PRIOR_LOOKBACK_DAYS)
        with self.lv.begin() as conn:
            if repo.patient_tenant(conn, patient_id) != tenant_id:
                raise self._refused_absent(conn, actor, Action.READ, "report", "patient",
                                           patient_id, tenant_id)
            self._check(conn, actor, Action.READ, tenant_id, "report", (patient_id,),
                        purpose=purpose)
            dek = self.lv.gate.patient_key(conn, tenant_id, patient_id)
            # entered from the period's start on (a result is entered after it was taken),
            # whenever since: one collected in the period and entered later (a culture, a
            # history imported from another system) is in it
            found = self._validated_results(
                conn, tenant_id, {patient_id: dek}, actor.kind == "patient", start, None)
            try:
                cat: L.Catalogue | None = self._catalogue(conn, tenant_id)
            except UserError:           # a stored catalogue failing the checks: own names
                cat = None
        found = [(r, obs, at) for r, obs, at in found if start <= at < end]
        names = {obs.code: (cat.name_of(obs.code) if cat is not None and cat.get(obs.code)
                            else obs.name) for _r, obs, _at in found}
        # newest first; two results of one time: the one entered last first
        found.sort(key=lambda f: (f[2], _utc(f[0]["created_at"])), reverse=True)
        results = [HistoryResult(r["observation_id"], r["order_id"], at, r["status"], obs)
                   for r, obs, at in found if code is None or obs.code == code]
        return ResultHistory(patient_id, start, end, code, results, names)

    # == publication, amendment, rejection, cancellation ========================================
    def publish(self, actor: Actor, order_id: str, partial: bool | None = None) -> ReportView:
        """Make a biologically validated report available to the patient (portal, FHIR
        reads) and, in the same transaction, queue it (sealed ORU^R01) for each delivery
        destination its prescriber matches (docs/lab.md "What reaches the prescriber";
        ``ReportView.queued``). ``partial=False`` refuses a report with requested tests
        still without result, unless the biological validation already accepted it as
        partial."""
        with self.lv.begin() as conn:
            order = self._order_for(conn, actor, order_id, Action.WRITE, "report")
            self._expect(order, "publish", L.OrderStatus.PUBLISHED)
            detail = self._signed(actor)
            if partial is not None:
                rows = lrepo.observations(conn, order.tenant_id, order_id)
                missing = self._missing(conn, order, self._results(order, rows))
                accepted = (order.workflow.get("biological") or {}).get("partial")
                if missing and not partial and not accepted:
                    raise IncompleteOrder(missing)
                if missing:
                    detail["partial"] = sorted(missing)
            self._transition(conn, actor, order, L.OrderStatus.PUBLISHED, "published", detail)
            return self._delivered(conn, order, corrected=False)

    def _delivered(self, conn: Connection, order: _Order, corrected: bool) -> ReportView:
        """The report as it now stands, queued for the destinations it goes to (in the
        caller's transaction: the messages are written with the change, or neither)."""
        view = self._report_view(conn, order)
        queued = self.lv.delivery.enqueue(conn, order, lambda: view, corrected)
        return replace(view, queued=queued) if queued else view

    def _queue_correction(self, conn: Connection, order: _Order) -> None:
        """A corrected result sent on to the destinations its report goes to; the report's
        view is built only if one matches (the amendment returns the result, not it)."""
        self.lv.delivery.enqueue(conn, order, lambda: self._report_view(conn, order), True)

    def amend(self, actor: Actor, observation_id: str, result: object,
              reason: str, conclusion: str | None = None) -> ObservationView:
        """Correct a published result: a biologist, with a reason; the previous value is kept
        in the history with who and when; the report becomes ``amended``. ``conclusion``,
        when given, replaces the report's conclusion in the same transaction (the previous
        one kept, with the same reason)."""
        from labvault.domain import validation as v
        self._require_biologist(actor, "correct a published result")
        why = v.text(reason, "reason", 2000, required=True)
        concl = v.text(conclusion, "conclusion", 8000)
        new_in = L.ResultInput.parse(result)
        with self.lv.begin() as conn:
            orow = lrepo.observation(conn, observation_id)
            if orow is None or not self._in_scope(actor, orow["tenant_id"]):
                raise self._refused_absent(conn, actor, Action.WRITE, "observation",
                                           "observation", observation_id)
            order = self._order_for(conn, actor, orow["order_id"], Action.WRITE, "observation",
                                    reason=why, asked="observation")
            # read again under the order's lock: the revision and value being corrected are
            # the last committed ones (two amendments at once are one after the other)
            orow = lrepo.observation(conn, observation_id) or orow
            tenant_id = order.tenant_id
            old = L.Observation.from_json(self._open(order.dek, tenant_id, "lab_observations",
                                                     "result_sealed", observation_id,
                                                     orow["result_sealed"]))
            if orow["status"] == "cancelled":
                self._expect(order, "amend", L.OrderStatus.AMENDED)   # a closed order says so
                raise self._withdrawn(conn, order, observation_id, old.code)
            if new_in.code != old.code:
                raise InvalidField("code", "an amendment keeps the test code",
                                   f"give a value for {old.code}")
            test = self._catalogue(conn, tenant_id).get(old.code)
            if test is None:
                raise InvalidField("code", f"{old.code} is no longer in the catalogue", "")
            new = L.Observation.interpret(new_in, test, self._catalogue(conn, tenant_id).version,
                                          order.sex, order.birth_date, self.lv.now())
            self._transition(conn, actor, order, L.OrderStatus.AMENDED, "amended",
                             self._signed(actor, observation_id=observation_id, reason=why))
            ts, rev = self.lv.now(), orow["revision"] + 1
            lrepo.update_observation(conn, tenant_id, observation_id, status="amended",
                                     revision=rev, updated_at=ts, result_sealed=self._seal(
                                         order.dek, tenant_id, "lab_observations",
                                         "result_sealed", observation_id, new.as_json()))
            lrepo.insert_history(conn, [self._history_row(order, observation_id, rev, ts, actor,
                                                          "amended", why, old, new)])
            if concl is not None:
                self._write_report_payload(conn, order, {
                    "conclusion": concl, "conclusion_at": ts.isoformat()}, revised_because=why)
            self._panic_alert(conn, actor, order, observation_id, new)
            self._queue_correction(conn, order)
            return ObservationView(observation_id, order.order_id, order.patient_id, tenant_id,
                                   "amended", rev, orow["created_at"], ts, new)

    def _withdrawn(self, conn: Connection, order: _Order, observation_id: str,
                   code: str) -> ResultWithdrawn:
        """The refusal to amend a withdrawn result: who withdrew it, when and why (its
        history's last cancellation), and the result of the same test in force, if any."""
        step = None
        for h in reversed(lrepo.history(conn, order.tenant_id, observation_id)):
            p = self._open(order.dek, order.tenant_id, "lab_observation_history",
                           "change_sealed", h["history_id"], h["change_sealed"])
            if p["change"] == "cancelled":
                names = self.lv.accounts.staff_names(conn, order.tenant_id, [p["by"]])
                step = Step(p["by"], _utc(h["changed_at"]), {
                    **({"name": names[p["by"]]} if p["by"] in names else {}),
                    "reason": p.get("reason")})
                break
        in_force = next((r["observation_id"] for r in lrepo.observations(
            conn, order.tenant_id, order.order_id) if r["status"] != "cancelled"
            and L.Observation.from_json(self._open(
                order.dek, order.tenant_id, "lab_observations", "result_sealed",
                r["observation_id"], r["result_sealed"])).code == code), None)
        return ResultWithdrawn(order.status, code, step, in_force)

    def revise_conclusion(self, actor: Actor, order_id: str, conclusion: str,
                          reason: str | None = None) -> ReportView:
        """A biologist rewrites the conclusion of a validated report. Once published, it is
        an amendment: a reason is required, the previous text is kept (shown as corrected)
        and the report becomes ``amended``; before publication nobody outside the
        laboratory has read it, so it is simply replaced."""
        from labvault.domain import validation as v
        self._require_biologist(actor, "write a report's conclusion")
        concl = v.text(conclusion, "conclusion", 8000, required=True)
        with self.lv.begin() as conn:
            order = self._order_for(conn, actor, order_id, Action.WRITE, "report")
            if order.status not in _VALIDATED:
                kind, _ = _conflict_kind("revise-conclusion", order.status)
                raise WorkflowConflict("revise-conclusion", order.status, kind, None)
            if order.status == L.OrderStatus.FINAL:
                self._write_report_payload(conn, order, {
                    "conclusion": concl, "conclusion_at": self.lv.now().isoformat()})
                return self._report_view(conn, order)
            why = v.text(reason, "reason", 2000, required=True)
            assert concl is not None and why is not None
            self._transition(conn, actor, order, L.OrderStatus.AMENDED, "amended",
                             self._signed(actor, conclusion=True, reason=why))
            self._write_report_payload(conn, order, {
                "conclusion": concl, "conclusion_at": self.lv.now().isoformat()},
                revised_because=why)
            return self._delivered(conn, order, corrected=True)

    def reject(self, actor: Actor, order_id: str, reason: str,
               comment: str | None = None) -> OrderView:
        """Reject an order's specimen (non-conformity); ``reason`` from ``REJECTION_REASONS``.
        A decision on the specimen (gate: ``specimen`` write: the reception desk, the
        technician at the bench, the biologist); when results were entered, they are
        cancelled with it, which also needs ``observation`` write."""
        from labvault.domain import validation as v
        if reason not in L.REJECTION_REASONS:
            raise InvalidField("reason", "is not a rejection reason",
                               "one of " + ", ".join(L.REJECTION_REASONS))
        note = v.text(comment, "comment", 2000)
        with self.lv.begin() as conn:
            order = self._order_for(conn, actor, order_id, Action.WRITE, "specimen")
            if lrepo.observations(conn, order.tenant_id, order_id):
                self._check(conn, actor, Action.WRITE, order.tenant_id, "observation",
                            (order.patient_id,))
            self._expect(order, "reject", L.OrderStatus.REJECTED)
            self._transition(conn, actor, order, L.OrderStatus.REJECTED, "rejected",
                             self._signed(actor, reason=reason, comment=note))
            lrepo.update_specimens(conn, order.tenant_id, order_id, "rejected")
            lrepo.set_observations_status(conn, order.tenant_id, order_id, "cancelled",
                                          self.lv.now())
            return self._order_view(conn, order)

    def cancel(self, actor: Actor, order_id: str, reason: str) -> OrderView:
        """Cancel an order (and its results), with the reason, which is kept; after
        technical validation a biologist only (``L.check_cancel``)."""
        from labvault.domain import validation as v
        note = v.text(reason, "reason", 2000, required=True)
        assert note is not None
        with self.lv.begin() as conn:
            order = self._order_for(conn, actor, order_id, Action.WRITE, "order", reason=note)
            L.check_cancel(order.status, actor.roles)
            self._cancel(conn, actor, order, note)
            return self._order_view(conn, order)

    def _cancel(self, conn: Connection, actor: Actor, order: _Order, note: str) -> None:
        self._transition(conn, actor, order, L.OrderStatus.CANCELLED, "cancelled",
                         {"reason": note})
        lrepo.update_specimens(conn, order.tenant_id, order.order_id, "cancelled")
        lrepo.set_observations_status(conn, order.tenant_id, order.order_id, "cancelled",
                                      self.lv.now())

    # == reading =================================================================================
    def _order_view(self, conn: Connection, order: _Order,
                    specimens: Sequence[SpecimenView] = ()) -> OrderView:
        req = dict(order.request)
        req.pop("patient", None)
        return OrderView(order.order_id, str(order.row.get("report_id", "")), order.patient_id,
                         order.tenant_id, order.status, L.Priority(order.row["priority"]),
                         order.row["created_at"], order.row["updated_at"],
                         L.ServiceRequest.parse({k: v for k, v in req.items() if v is not None}),
                         self._steps(order.workflow), specimens,
                         self._test_names(conn, order.tenant_id, req.get("tests", ())),
                         order.sex, order.birth_date)

    def _test_names(self, conn: Connection, tenant_id: str,
                    codes: Iterable[str]) -> dict[str, str]:
        """Requested tests as people read them, from the laboratory's catalogue in force.
        A stored catalogue that no longer passes the checks refuses results (its message
        says to load a corrected one); an order is still shown, its tests by code."""
        try:
            cat = self._catalogue(conn, tenant_id)
        except UserError:
            return {}
        return {c: cat.name_of(c) for c in codes}

    @staticmethod
    def _steps(workflow: Mapping[str, Any]) -> dict[str, Step]:
        out: dict[str, Step] = {}
        for k, s in workflow.items():
            if isinstance(s, list):
                s = s[-1] if s else None
            if isinstance(s, Mapping):
                out[k] = Step(s["by"], datetime.fromisoformat(s["at"]),
                              {x: y for x, y in s.items() if x not in ("by", "at")})
        return out

    def _specimen_views(self, conn: Connection, order: _Order) -> list[SpecimenView]:
        return [SpecimenView(r["specimen_id"], order.order_id, order.patient_id, order.tenant_id,
                             r["status"], r["received_at"], L.Specimen.parse(self._open(
                                 order.dek, order.tenant_id, "lab_specimens", "specimen_sealed",
                                 r["specimen_id"], r["specimen_sealed"])))
                for r in lrepo.specimens(conn, order.tenant_id, order.order_id)]

    def _obs_view(self, order_dek: DataKey, r: Mapping[str, Any]) -> ObservationView:
        return ObservationView(r["observation_id"], r["order_id"], r["patient_id"],
                               r["tenant_id"], r["status"], r["revision"], r["created_at"],
                               r["updated_at"], L.Observation.from_json(self._open(
                                   order_dek, r["tenant_id"], "lab_observations",
                                   "result_sealed", r["observation_id"], r["result_sealed"])))

    def _report_view(self, conn: Connection, order: _Order,
                     priors: Mapping[str, Sequence[tuple[str, D.Prior]]] | None = None
                     ) -> ReportView:
        """``priors``: the patients' previous validated results (``_priors``), when the
        view is for staff who validate (``ReportView.previous``)."""
        rep = lrepo.report_by_order(conn, order.tenant_id, order.order_id)
        assert rep is not None
        payload = self._open(order.dek, order.tenant_id, "lab_reports", "report_sealed",
                             rep["report_id"], rep["report_sealed"])
        rows = lrepo.observations(conn, order.tenant_id, order.order_id)
        obs = [self._obs_view(order.dek, r) for r in rows]
        steps = self._steps(order.workflow)
        concl_at = payload.get("conclusion_at")
        bio = steps.get("biological")
        changes = self._changes(conn, order, obs)
        specimens = self._specimen_views(conn, order)
        collected = _collected(s.specimen for s in specimens)
        return ReportView(
            rep["report_id"], order.order_id, order.patient_id, order.tenant_id,
            rep["status"], order.status, rep["created_at"], rep["updated_at"],
            rep["issued_at"], payload.get("conclusion"), obs, steps,
            tuple(order.request.get("tests", ())),
            self._missing(conn, order, [o.observation for o in obs if o.status != "cancelled"]),
            {o.observation_id: changes.get(o.observation_id, {}).get("amended", [])
             for o in obs if o.status == "amended"},
            [ConclusionRevision(datetime.fromisoformat(r["at"]), r.get("reason"),
                                r.get("previous"))
             for r in payload.get("conclusion_revisions", ())],
            datetime.fromisoformat(concl_at) if concl_at else (bio.at if bio else None),
            specimens,
            order.request.get("prescriber"), L.Priority(order.row["priority"]),
            order.sex, order.birth_date,
            {oid: c["re-entered"] for oid, c in changes.items() if c.get("re-entered")},
            previous=self._deltas(conn, order, [
                (o.observation_id, o.observation,
                 _result_time(o.observation, o.created_at, collected), _utc(o.created_at))
                for o in obs if o.status != "cancelled"], priors) if priors is not None else {})

    def _changes(self, conn: Connection, order: _Order,
                 obs: Sequence[ObservationView]) -> dict[str, dict[str, list[Correction]]]:
        """The results' changes that replaced a value (amended after publication,
        re-entered before validation), by result id then kind, oldest first, from their
        history: only results past their first revision have any."""
        out: dict[str, dict[str, list[Correction]]] = {}
        for o in obs:
            if o.revision < 2:
                continue
            for h in lrepo.history(conn, order.tenant_id, o.observation_id):
                p = self._open(order.dek, order.tenant_id, "lab_observation_history",
                               "change_sealed", h["history_id"], h["change_sealed"])
                if p["change"] in ("amended", "re-entered") and p.get("previous"):
                    out.setdefault(o.observation_id, {}).setdefault(p["change"], []).append(
                        Correction(_utc(h["changed_at"]), p.get("reason"),
                                   L.Observation.from_json(p["previous"])))
        return out

    def get_order(self, actor: Actor, order_id: str, purpose: str = CARE,
                  for_update: bool = False) -> OrderView:
        """``for_update`` (here and in ``get_report``, ``get_observation``,
        ``get_specimen``): the read is the first step of a write in the caller's open
        transaction (``lv.begin()``), e.g. the FHIR door's ``If-Match`` check -- the order
        is locked before it is read (``_order_row``), so nothing of it changes before that
        transaction ends."""
        with self.lv.begin() as conn:
            order = self._order_for(conn, actor, order_id, Action.READ, "order",
                                    purpose=purpose, lock=for_update)
            rep = lrepo.report_by_order(conn, order.tenant_id, order_id)
            order.row["report_id"] = rep["report_id"] if rep else ""
            return self._order_view(conn, order, self._specimen_views(conn, order))

    def order_status(self, actor: Actor, order_id: str) -> tuple[L.OrderStatus, str]:
        """An order's status and its report's id (clear columns), through the gate as a read
        of the order (the same decision as ``get_order``), without opening its sealed
        request, workflow or specimens (the FHIR door's DiagnosticReport step needs only
        the status)."""
        with self.lv.begin() as conn:
            row = self._order_row(conn, actor, order_id, Action.READ)
            rep = lrepo.report_by_order(conn, row["tenant_id"], order_id)
            return L.OrderStatus(row["status"]), rep["report_id"] if rep else ""

    def get_report(self, actor: Actor, report_id: str, purpose: str = CARE,
                   for_update: bool = False, anteriorities: bool = False) -> ReportView:
        """``anteriorities``: a published report with its "Antériorité" column
        (``ReportView.anteriorities``: the patient's previous published results), read
        under the same decision as the report (``_with_anteriorities``)."""
        return self._report(actor, report_id, purpose, published_only=False,
                            lock=for_update, anteriorities=anteriorities)

    def get_published_report(self, actor: Actor, report_id: str, purpose: str = CARE,
                             anteriorities: bool = False) -> ReportView:
        """A report the laboratory may send out (to its prescriber): published, or amended
        after publication. Read through the gate like ``get_report`` (audited, counted); one
        not published yet raises ``ReportNotPublished`` before anything is opened (the
        transaction, its read entry included, is rolled back: nothing was read)."""
        return self._report(actor, report_id, purpose, published_only=True,
                            anteriorities=anteriorities)

    def _report(self, actor: Actor, report_id: str, purpose: str,
                published_only: bool, lock: bool = False,
                anteriorities: bool = False) -> ReportView:
        with self.lv.begin() as conn:
            rep = lrepo.report(conn, report_id)      # (its order id: the rest is read after)
            if rep is None:
                raise self._refused_absent(conn, actor, Action.READ, "report", "report",
                                           report_id)
            row = self._order_row(conn, actor, rep["order_id"], Action.READ, "report",
                                  purpose=purpose, asked="report", lock=lock,
                                  asked_id=report_id)
            if published_only and L.OrderStatus(row["status"]) not in PATIENT_VISIBLE:
                raise ReportNotPublished()
            order = self._order_from_row(conn, row)
            view = self._report_view(conn, order)
            return (self._with_anteriorities(conn, [order], [view])[0] if anteriorities
                    else view)

    def get_report_by_order(self, actor: Actor, order_id: str,
                            purpose: str = CARE, previous: bool = False,
                            anteriorities: bool = False) -> ReportView:
        """``previous``: with each result's previous result and the delta check
        (``ReportView.previous``) -- for staff who validate (ignored for anyone else),
        under the same decision as the read of the report (``_priors``).
        ``anteriorities``: as ``get_report``."""
        with self.lv.begin() as conn:
            order = self._order_for(conn, actor, order_id, Action.READ, "report",
                                    purpose=purpose)
            priors = (self._priors(conn, order.tenant_id, [order])
                      if previous and self._validates(actor) else None)
            view = self._report_view(conn, order, priors)
            return (self._with_anteriorities(conn, [order], [view])[0] if anteriorities
                    else view)

    def get_observation(self, actor: Actor, observation_id: str,
                        purpose: str = CARE, for_update: bool = False) -> ObservationView:
        with self.lv.begin() as conn:
            r = self._record_row(conn, actor, "observation", observation_id,
                                 lrepo.observation(conn, observation_id))
            if for_update:
                r = self._locked(conn, r, lambda: lrepo.observation(conn, observation_id))
            self._check(conn, actor, Action.READ, r["tenant_id"], "observation",
                        (r["patient_id"],), purpose=purpose)
            dek = self.lv.gate.patient_key(conn, r["tenant_id"], r["patient_id"])
            return self._obs_view(dek, r)

    @staticmethod
    def _locked(conn: Connection, row: dict[str, Any],
                again: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        """A result's or specimen's row read again once its order is locked (``_order_row``):
        what another writer committed before the lock is seen, nothing after it."""
        lrepo.order(conn, row["order_id"], lock=True)
        return again() or row

    def _record_row(self, conn: Connection, actor: Actor, kind: str, record_id: str,
                    row: dict[str, Any] | None,
                    action: Action | None = Action.READ) -> dict[str, Any]:
        """A result's or specimen's row as the actor may know it: absent, another lab's and
        a patient's own unpublished one all answer ``absent(kind)``. An id the actor's
        laboratory does not hold is recorded as a refused ``action`` (``record_absent``);
        ``None``: no access is decided (clear change markers), nothing recorded either."""
        if row is None or not self._in_scope(actor, row["tenant_id"]):
            if action is None:
                raise absent(kind)
            raise self._refused_absent(conn, actor, action, kind, kind, record_id)
        if self._unpublished(conn, actor, row["patient_id"], row["order_id"]):
            raise absent(kind)
        return row

    def get_specimen(self, actor: Actor, specimen_id: str, purpose: str = CARE,
                     for_update: bool = False) -> SpecimenView:
        with self.lv.begin() as conn:
            r = self._record_row(conn, actor, "specimen", specimen_id,
                                 lrepo.specimen(conn, specimen_id))
            if for_update:
                r = self._locked(conn, r, lambda: lrepo.specimen(conn, specimen_id))
            self._check(conn, actor, Action.READ, r["tenant_id"], "specimen", (r["patient_id"],),
                        purpose=purpose)
            dek = self.lv.gate.patient_key(conn, r["tenant_id"], r["patient_id"])
            return SpecimenView(r["specimen_id"], r["order_id"], r["patient_id"], r["tenant_id"],
                                r["status"], r["received_at"], L.Specimen.parse(self._open(
                                    dek, r["tenant_id"], "lab_specimens", "specimen_sealed",
                                    specimen_id, r["specimen_sealed"])))

    def change_markers(self, actor: Actor, kind: str, record_id: str) -> dict[str, Any]:
        """The clear change markers of an order, report, observation or specimen (``kind``):
        what its version is a digest of (statuses, times, revisions, ids: the FHIR door's
        ``meta.versionId``, interop/fhir/versions.py) -- clear columns only, never a sealed
        value: what a stolen database shows. So no gate decision and no audit entry (nothing
        personal is read); the record must be of the actor's laboratory, and a patient's own
        unpublished one is absent, as on a read. The FHIR door uses it for the versions of
        the records a transaction Bundle has just written (each write a gate decision of
        its own) without reading each of them again.

        - order: ``status``, ``updated_at``
        - report: ``status``, ``updated_at``, ``issued_at``, ``observations`` ((id, status,
          revision) in the report's order), ``specimens`` (ids, in the report's order)
        - observation: ``status``, ``revision``, ``updated_at``
        - specimen: ``status``, ``received_at``"""
        with self.lv.begin() as conn:
            if kind in ("observation", "specimen"):
                row = self._record_row(conn, actor, kind, record_id,
                                       lrepo.observation(conn, record_id)
                                       if kind == "observation"
                                       else lrepo.specimen(conn, record_id), action=None)
                keys = (("status", "revision", "updated_at") if kind == "observation"
                        else ("status", "received_at"))
                return {k: row[k] for k in keys}
            if kind == "report":
                rep = lrepo.report(conn, record_id)
                order_id = rep["order_id"] if rep is not None else None
            elif kind == "order":
                order_id = record_id
            else:
                raise ValueError(f"no change markers for {kind!r}")
            order = lrepo.order(conn, order_id) if order_id is not None else None
            if order is None:
                raise absent(kind)
            self._scope(actor, order["tenant_id"], kind)
            if self._unpublished(conn, actor, order["patient_id"], order["order_id"],
                                 order["status"]):
                raise absent(kind)
            if kind == "order":
                return {"status": order["status"], "updated_at": order["updated_at"]}
            rep = lrepo.report_by_order(conn, order["tenant_id"], order["order_id"])
            assert rep is not None
            return {"status": rep["status"], "updated_at": rep["updated_at"],
                    "issued_at": rep["issued_at"],
                    "observations": [(r["observation_id"], r["status"], r["revision"])
                                     for r in lrepo.observations(conn, order["tenant_id"],
                                                                 order["order_id"])],
                    "specimens": [r["specimen_id"] for r in lrepo.specimens(
                        conn, order["tenant_id"], order["order_id"])]}

    def observation_history(self, actor: Actor, observation_id: str,
                            purpose: str = CARE) -> list[HistoryEntry]:
        """Every change of a result: who, when, what (previous/new), why."""
        with self.lv.begin() as conn:
            r = self._record_row(conn, actor, "observation", observation_id,
                                 lrepo.observation(conn, observation_id))
            self._check(conn, actor, Action.READ, r["tenant_id"], "observation",
                        (r["patient_id"],), purpose=purpose)
            dek = self.lv.gate.patient_key(conn, r["tenant_id"], r["patient_id"])
            out = []
            for h in lrepo.history(conn, r["tenant_id"], observation_id):
                p = self._open(dek, r["tenant_id"], "lab_observation_history", "change_sealed",
                               h["history_id"], h["change_sealed"])
                out.append(HistoryEntry(
                    h["revision"], h["changed_at"], p["by"], p["change"], p.get("reason"),
                    L.Observation.from_json(p["previous"]) if p.get("previous") else None,
                    L.Observation.from_json(p["new"]) if p.get("new") else None))
            return out

    def worklist(self, actor: Actor, tenant_id: str,
                 status: L.OrderStatus | str | None = None,
                 limit: int = 200) -> list[dict[str, Any]]:
        """Orders waiting at one step (clear columns only: nothing clinical is opened):
        e.g. ``preliminary`` is the technicians' technical-validation queue,
        ``technically-validated`` the biologists'. Sorted stat first, then urgent, then by
        age. One gate decision: a read of the lab's orders (what the policy grants
        reception, technicians and biologists), naming the patients listed."""
        self._scope(actor, tenant_id, "laboratory")
        statuses = [L.OrderStatus(status).value] if status else [
            s.value for s in (L.OrderStatus.REGISTERED, L.OrderStatus.RECEIVED,
                              L.OrderStatus.PRELIMINARY, L.OrderStatus.TECHNICALLY_VALIDATED,
                              L.OrderStatus.FINAL)]
        with self.lv.begin() as conn:
            rows = lrepo.orders(conn, tenant_id, statuses=statuses, limit=limit)
            # Honeytoken patients never appear in a worklist shown to real users.
            real = set(self.lv.guard.without_canaries(
                conn, tenant_id, list(dict.fromkeys(r["patient_id"] for r in rows))))
            rows = [r for r in rows if r["patient_id"] in real]
            self._check(conn, actor, Action.READ, tenant_id, "order",
                        [r["patient_id"] for r in rows])
        rank = {"stat": 0, "urgent": 1, "routine": 2}
        rows.sort(key=lambda r: (rank.get(r["priority"], 3), r["created_at"]))
        return [{"order_id": r["order_id"], "patient_id": r["patient_id"], "status": r["status"],
                 "priority": r["priority"], "created_at": r["created_at"]} for r in rows]

    def list_orders(self, actor: Actor, tenant_id: str, patient_id: str | None = None,
                    status: str | None = None, limit: int = 200,
                    purpose: str = CARE, specimens: bool = False,
                    closed: bool = False) -> list[OrderView]:
        """``specimens``: each order with its specimens, as ``get_order`` gives it (one
        more read and unseal per order). ``closed``: a patient's listing also keeps its
        orders closed without a report (``PATIENT_CLOSED``; staff listings keep them
        anyway)."""
        self._scope(actor, tenant_id, "laboratory")
        statuses = _listed_statuses(actor, status, closed)
        with self.lv.begin() as conn:
            rows = [] if statuses == [] else lrepo.orders(
                conn, tenant_id, patient_id=patient_id, statuses=statuses, limit=limit)
            self._check(conn, actor, Action.READ, tenant_id, "order",
                        [r["patient_id"] for r in rows] or ([patient_id] if patient_id else []),
                        purpose=purpose)
            if not rows:
                return []
            out = []
            for r in rows:
                o = self._order_from_row(conn, r)
                rep = lrepo.report_by_order(conn, tenant_id, r["order_id"])
                o.row["report_id"] = rep["report_id"] if rep else ""
                out.append(self._order_view(conn, o, self._specimen_views(conn, o) if specimens
                                            else ()))
            return out

    def list_reports(self, actor: Actor, tenant_id: str, patient_id: str | None = None,
                     status: str | None = None, limit: int = 200,
                     purpose: str = CARE, order_status: str | None = None,
                     urgent_first: bool = False, previous: bool = False,
                     anteriorities: bool = False) -> list[ReportView]:
        """Reports, oldest first. ``status``: the report's (FHIR) status; ``order_status``:
        the step its order is at (a worklist: ``technically-validated``...), filtered in
        the query, so that ``limit`` counts only those -- "final" reports are the
        published ones too, and a page keeping the validated ones out of the first 200
        would show none once 200 were published. ``urgent_first``: stat, then urgent
        orders first. ``previous``: each report with its results' previous results and
        the delta check (``ReportView.previous``), for staff who validate (ignored for
        anyone else): the patients' validated results read in one query, under the
        decision made for the listing (``_priors``). ``anteriorities``: the published
        reports with their "Antériorité" column (``ReportView.anteriorities``), read in one
        query for the whole list, under the same decision (``_with_anteriorities``)."""
        self._scope(actor, tenant_id, "laboratory")
        order_statuses = _order_filter(actor)
        if order_status is not None:
            step = L.OrderStatus(order_status).value
            order_statuses = [step] if order_statuses is None or step in order_statuses else []
        with self.lv.begin() as conn:
            rows = [] if order_statuses == [] else lrepo.reports(
                conn, tenant_id, patient_id=patient_id, statuses=[status] if status else None,
                limit=limit, order_statuses=order_statuses, urgent_first=urgent_first)
            if not rows:
                return []
            self._check(conn, actor, Action.READ, tenant_id, "report",
                        [r["patient_id"] for r in rows], purpose=purpose)
            orders = [self._load_order(conn, r["order_id"]) for r in rows]
            priors = (self._priors(conn, tenant_id, orders)
                      if previous and self._validates(actor) else None)
            views = [self._report_view(conn, order, priors) for order in orders]
            return self._with_anteriorities(conn, orders, views) if anteriorities else views

    def list_observations(self, actor: Actor, tenant_id: str, patient_id: str | None = None,
                          code: str | None = None, status: str | None = None,
                          since: datetime | None = None, until: datetime | None = None,
                          limit: int = 200, purpose: str = CARE) -> list[ObservationView]:
        """Results of a laboratory (or one patient), filtered; ``code`` is matched after
        opening (codes are sealed), so the filter costs one unseal per candidate."""
        self._scope(actor, tenant_id, "laboratory")
        with self.lv.begin() as conn:
            rows = lrepo.observations_of(conn, tenant_id, patient_id=patient_id,
                                         statuses=[status] if status else None, since=since,
                                         until=until, limit=limit if code is None else 10_000,
                                         order_statuses=_order_filter(actor))
            # Checked (and audited) even when nothing matched: an empty answer to a refused
            # actor would otherwise tell it which patients have results.
            self._check(conn, actor, Action.READ, tenant_id, "observation",
                        [r["patient_id"] for r in rows] or ([patient_id] if patient_id else []),
                        purpose=purpose)
            if not rows:
                return []
            deks: dict[str, DataKey] = {}
            out = []
            for r in rows:
                pid = r["patient_id"]
                if pid not in deks:
                    try:
                        deks[pid] = self.lv.gate.patient_key(conn, tenant_id, pid)
                    except NotFound:  # erased patient: nothing left to read
                        continue
                view = self._obs_view(deks[pid], r)
                if code is None or view.observation.code == code:
                    out.append(view)
                    if len(out) >= limit:
                        break
            return out
