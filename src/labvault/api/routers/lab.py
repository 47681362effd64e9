"""``/api/v1/orders``, ``/api/v1/observations``, ``/api/v1/import-issues``: the lab
workflow's steps for lab staff -- an order created (with its specimen, or the specimen
received later), its results entered, reviewed, validated, published -- and the queue of
analyser results waiting for a person.

Each call goes through ``lv.lab`` (``services/lab.py``), which checks the role and the
gate and audits; errors are problem+json like every other route. The review read
(``GET /api/v1/orders/{id}``) returns ``expected``: sent back with a validation, it makes
the validation refuse (409 ``results-changed``) results that changed since they were
read. A requested test without result makes validation and publication refuse (409
``incomplete-order``, the tests in ``missing``) unless ``partial`` is true.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from labvault.api.deps import LV, CurrentActor
from labvault.api.instants import EXAMPLE, Instant
from labvault.domain import lab as L
from labvault.errors import AccessDenied, InvalidField, InvalidRecord
from labvault.services.lab import FillerNumberTaken

T = TypeVar("T")


def laboratory_account(actor: CurrentActor) -> None:
    """The workflow acts inside a laboratory: an account of none (the platform operator)
    is refused before any lookup, so that it learns nothing of which orders exist (an
    order of a laboratory and an absent id get the same 403)."""
    if actor.tenant_id is None:
        raise AccessDenied("not allowed", "the lab workflow is for a laboratory's accounts")


router = APIRouter(tags=["lab"], dependencies=[Depends(laboratory_account)])

ORDER = "/api/v1/orders/{order_id}"
EXPECTED = Field(default=None, description=(
    "the results as read (GET /api/v1/orders/{id} `expected`: result id -> revision); "
    "refused with 409 results-changed if they differ now"),
    examples=[{"obs_5k2q8v0d1r7m3x9c4b6n2t8w1z": 1}])
PARTIAL = Field(default=False, description=(
    "true: validate/publish even though requested tests have no result yet (the report "
    "is shown as partial); false: such an order is refused with 409 incomplete-order"))


class PrescriberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=100, description="the prescriber's name (sealed)",
                      examples=["Dr Hélène Lefèvre"])
    rpps: str | None = Field(default=None, max_length=32,
                             description="RPPS number (11 digits, checked)",
                             examples=["10003456786"])


class ServiceRequestIn(BaseModel):
    """What is asked (docs/lab.md, ``L.ServiceRequest``): sealed with the order."""
    model_config = ConfigDict(extra="forbid")
    tests: list[str] = Field(min_length=1, description=(
        "the LOINC codes of the tests asked, each in the laboratory's catalogue"),
        examples=[["718-7", "2823-3"]])
    priority: Literal["routine", "urgent", "stat"] = "routine"
    prescriber: PrescriberIn | None = None
    clinical_notes: str | None = Field(default=None, max_length=4000)
    placer_number: str | None = Field(default=None, max_length=64, description=(
        "the prescriber's (or hospital's) order number, HL7 ORC-2"))
    filler_number: str | None = Field(default=None, max_length=64, description=(
        "the laboratory's order number (HL7 ORC-3/OBR-3, the number an analyser quotes); "
        "one order per number in a laboratory (409 filler-number-taken). Without it, a "
        "specimen given with the order gives its tube number"))
    requested_at: Instant | None = Field(default=None, description=(
        "when it was prescribed: ISO 8601 with its UTC offset (without one: 422)"),
        examples=["2026-03-01T07:45:00+01:00"])


class SpecimenIn(BaseModel):
    """A tube received (``L.Specimen``); its number is the tube's label."""
    model_config = ConfigDict(extra="forbid")
    type: str = Field(max_length=16, description="one of: " + ", ".join(L.SPECIMEN_TYPES),
                      examples=["BLD"])
    collected_at: Instant = Field(description=("when it was collected: ISO 8601 with its "
                                               "UTC offset (without one: 422)"),
                                  examples=[EXAMPLE])
    accession_number: str = Field(max_length=64, description=(
        "the tube's number (its label's barcode); it becomes the order's filler number "
        "when the order has none"), examples=["A260301-7K2QX"])


class OrderIn(BaseModel):
    patient_id: str = Field(max_length=64, description=(
        "a patient of the caller's laboratory (GET /api/v1/patients?...); another "
        "laboratory's answers 404 like an absent id"),
        examples=["pt_8f3k2m9q0w1e5r7t4y6u2i8o0p"])
    request: ServiceRequestIn
    specimen: SpecimenIn | None = Field(default=None, description=(
        "the specimen collected with the order (status received); without it the order "
        "awaits it (registered: POST /api/v1/orders/{id}/specimens)"))


class ResultIn(BaseModel):
    """One result as the service reads it (``L.ResultInput.parse``, which checks the rest
    and names the fields it refuses); only its time is read here, to ask for an offset."""
    model_config = ConfigDict(extra="allow")
    observed_at: Instant | None = Field(default=None, description=(
        "when it was measured: ISO 8601 with its UTC offset (without one: 422)"),
        examples=[EXAMPLE])

    def as_input(self) -> dict[str, Any]:
        """The result as sent (its other fields untouched), its time as read."""
        return self.model_dump(exclude_unset=True)


class ResultsIn(BaseModel):
    results: list[ResultIn] = Field(min_length=1, description=(
        "one result per test: code (LOINC, in the catalogue), value (a number, a string "
        "such as \"<0.5\", or a coded {code, display?, system?}), unit (UCUM), and "
        "optionally comment, observed_at; a test entered again before validation is a "
        "re-entry"), examples=[[{"code": "718-7", "value": 13.1, "unit": "g/dL"},
                                {"code": "2823-3", "value": "4.2", "unit": "mmol/L"}]])


class TechnicalIn(BaseModel):
    expected: dict[str, int] | None = EXPECTED


class BiologicalIn(BaseModel):
    conclusion: str | None = Field(default=None, max_length=8000,
                                   description="the biologist's conclusion (sealed)")
    expected: dict[str, int] | None = EXPECTED
    partial: bool = PARTIAL
    publish: bool = Field(default=False, description="publish in the same transaction "
                                                     "(validate and publish)")


class PublicationIn(BaseModel):
    partial: bool = PARTIAL


class RejectionIn(BaseModel):
    reason: str = Field(description="one of: " + ", ".join(L.REJECTION_REASONS),
                        examples=["hemolysed"], max_length=64)
    comment: str | None = Field(default=None, max_length=2000)


class ConclusionIn(BaseModel):
    conclusion: str = Field(max_length=8000)
    reason: str | None = Field(default=None, max_length=2000,
                               description="required once the report is published")


class AmendmentIn(BaseModel):
    result: ResultIn = Field(description="the corrected result (same test code)",
                                   examples=[{"code": "2823-3", "value": 4.6,
                                              "unit": "mmol/L"}])
    reason: str = Field(max_length=2000)
    conclusion: str | None = Field(default=None, max_length=8000, description=(
        "a new conclusion, replacing the published one in the same transaction"))


def _parsed(parse: Callable[[object], T], data: BaseModel, where: str,
            errors: list[InvalidField]) -> T | None:
    """``parse`` of a part of the body; its field errors named by their path in the body
    (``request.tests[0]``), added to ``errors``."""
    try:
        return parse(data.model_dump(exclude_none=True))
    except InvalidRecord as exc:
        errors.extend(InvalidField(f"{where}.{e.field}", e.rule, e.hint) for e in exc.errors)
        return None


def _review(report: Any) -> dict[str, Any]:
    """The report with ``expected`` and ``review``: why "validate all normal" would leave
    it for individual review (``{reason, tests[, flags]}``, the reasons of docs/lab.md), or
    null."""
    skip = report.review()
    return {**report.as_json(), "expected": report.expected,
            "review": skip.as_json() if skip is not None else None}


def _published(report: Any) -> dict[str, Any]:
    """A publication's answer: the report, and ``queued``: how many ORU^R01 messages it
    queued for the prescriber's (or hospital's) system (0: no delivery destination
    matches its prescriber; the laboratory sends the report itself)."""
    return {**_review(report), "queued": report.queued}


@router.post("/api/v1/orders", status_code=201,
             summary="Create an order for a patient (reception, biologist), with the "
                     "specimen collected now or without (received later)")
def create_order(body: OrderIn, actor: CurrentActor, lv: LV,
                 response: Response) -> dict[str, Any]:
    """The order (status ``registered``, or ``received`` with its specimen), created with
    its specimen in one transaction. With a specimen and no filler number, the tube's
    number becomes the order's filler number, as at the desk. Location: the order."""
    errors: list[InvalidField] = []
    req = _parsed(L.ServiceRequest.parse, body.request, "request", errors)
    spec = (_parsed(L.Specimen.parse, body.specimen, "specimen", errors)
            if body.specimen is not None else None)
    if errors or req is None:
        raise InvalidRecord(errors)
    if spec is not None and not req.filler_number:
        req = dataclasses.replace(req, filler_number=spec.accession_number)
    assert actor.tenant_id is not None          # laboratory_account
    try:
        view = lv.lab.create_order(actor, actor.tenant_id, body.patient_id, req, spec)
    except FillerNumberTaken as exc:            # named by its path in the body
        exc.field = f"{'specimen' if exc.field == 'accession_number' else 'request'}.{exc.field}"
        raise
    response.headers["Location"] = f"/api/v1/orders/{view.order_id}"
    return view.as_json()


@router.post(ORDER + "/specimens", status_code=201,
             summary="Receive the specimen an order awaits (reception, technician, "
                     "biologist); its tube number becomes the order's filler number if "
                     "it has none")
def receive_specimen(order_id: str, body: SpecimenIn, actor: CurrentActor,
                     lv: LV) -> dict[str, Any]:
    """Only the specimen the order awaits (``registered``): an order received already is
    a 409 invalid-transition of kind ``already-received`` (``rejected``, ``cancelled``
    for a closed one)."""
    return lv.lab.receive_specimen(actor, order_id, body.model_dump(exclude_none=True),
                                   tube_is_filler=True, awaited=True).as_json()


@router.post(ORDER + "/results",
             summary="Enter results (technician, biologist): stored preliminary; a test "
                     "entered again before validation is a re-entry")
def enter_results(order_id: str, body: ResultsIn, actor: CurrentActor,
                  lv: LV) -> dict[str, Any]:
    """The results as stored, each with its flag and reference range; a panic value
    raises its alert in the same transaction."""
    results = [r.as_input() for r in body.results]
    return {"results": [o.as_json() for o in lv.lab.enter_results(actor, order_id, results)]}


@router.get(ORDER, summary="An order's report for review: results, flags, missing tests, "
                           "`expected` for the validation calls")
def review_order(order_id: str, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    """With ``previous`` (staff who validate): per result, the patient's previous
    validated result of the test and the delta check's outcome (docs/lab.md)."""
    return _review(lv.lab.get_report_by_order(actor, order_id, previous=True))


@router.post(ORDER + "/technical-validation",
             summary="Technical validation (technician or biologist)")
def technical_validation(order_id: str, actor: CurrentActor, lv: LV,
                         body: TechnicalIn | None = None) -> dict[str, Any]:
    expected = body.expected if body else None
    return lv.lab.validate_technical(actor, order_id, expected).as_json()


@router.post(ORDER + "/biological-validation",
             summary="Biological validation (biologist), optionally published at once")
def biological_validation(order_id: str, body: BiologicalIn, actor: CurrentActor,
                          lv: LV) -> dict[str, Any]:
    with lv.begin():        # validate and publish: both or neither
        report = lv.lab.validate_biological(actor, order_id, body.conclusion, body.expected,
                                            body.partial)
        if body.publish:
            return _published(lv.lab.publish(actor, order_id, body.partial))
    return _review(report)


@router.post(ORDER + "/publication",
             summary="Publish a validated report to the patient portal, and queue it for "
                     "the prescriber's system when a delivery destination matches "
                     "(`queued`)")
def publication(order_id: str, actor: CurrentActor, lv: LV,
                body: PublicationIn | None = None) -> dict[str, Any]:
    return _published(lv.lab.publish(actor, order_id, body.partial if body else False))


@router.post(ORDER + "/rejection", summary="Reject the order's specimen (non-conformity)")
def rejection(order_id: str, body: RejectionIn, actor: CurrentActor,
              lv: LV) -> dict[str, Any]:
    return lv.lab.reject(actor, order_id, body.reason, body.comment).as_json()


@router.post(ORDER + "/conclusion",
             summary="Rewrite a validated report's conclusion (an amendment once published)")
def conclusion(order_id: str, body: ConclusionIn, actor: CurrentActor,
               lv: LV) -> dict[str, Any]:
    return _review(lv.lab.revise_conclusion(actor, order_id, body.conclusion, body.reason))


@router.post("/api/v1/observations/{observation_id}/amendment",
             summary="Correct a published result (biologist, with a reason)")
def amendment(observation_id: str, body: AmendmentIn, actor: CurrentActor,
              lv: LV) -> dict[str, Any]:
    return lv.lab.amend(actor, observation_id, body.result.as_input(), body.reason,
                        body.conclusion).as_json()


# -- the import-issues queue (docs/hl7.md "Import issues") ---------------------------------
ISSUES = "/api/v1/import-issues"


class ResolutionIn(BaseModel):
    patient_id: str | None = Field(default=None, max_length=64, description=(
        "the patient the results belong to (an unknown patient; the patient id of "
        "GET /api/v1/patients?...)"), examples=["pt_8f3k2m9q0w1e5r7t4y6u2i8o0p"])
    codes: dict[str, str] | None = Field(default=None, description=(
        "local code -> LOINC code of the catalogue, for results whose code is not in it"),
        examples=[{"GLUX": "2345-7"}])


class DiscardIn(BaseModel):
    reason: str = Field(max_length=2000, description="why the results are not stored (kept, "
                                                     "sealed)")
    all_results: bool = Field(default=False, description=(
        "required to discard an issue holding several results (resolving instead stores "
        "those that can be)"))


@router.get(ISSUES, summary="The laboratory's import-issues queue: analyser results kept "
                            "for a person (unknown patient or code, wrong unit, closed order)"
                            " — what the caller's role may see of each (`withheld`)")
def import_issues(actor: CurrentActor, lv: LV,
                  status: Literal["open", "resolved", "discarded", "all"] = Query(
                      "open", description="which issues (`all`: every status)")
                  ) -> dict[str, Any]:
    assert actor.tenant_id is not None          # laboratory_account
    return {"issues": lv.lab.messages.list_issues(actor, actor.tenant_id,
                                                  None if status == "all" else status)}


@router.get(ISSUES + "/{issue_id}", summary="One import issue, with its values beyond a "
                                            "panic limit (`panic_values`)")
def import_issue(issue_id: str, actor: CurrentActor, lv: LV) -> dict[str, Any]:
    return lv.lab.messages.get_issue(actor, issue_id)


@router.post(ISSUES + "/{issue_id}/resolution",
             summary="Store the issue's results with a person's answer: the patient and/or "
                     "the LOINC code each unknown code means; what still cannot be stored "
                     "stays as a new issue (`left_as`)")
def resolve_import_issue(issue_id: str, body: ResolutionIn, actor: CurrentActor,
                         lv: LV) -> dict[str, Any]:
    return lv.lab.messages.resolve_issue(actor, issue_id, patient_id=body.patient_id,
                                         codes=body.codes)


@router.post(ISSUES + "/{issue_id}/discard",
             summary="Close an issue without storing its results (the reason is kept)")
def discard_import_issue(issue_id: str, body: DiscardIn, actor: CurrentActor,
                         lv: LV) -> dict[str, Any]:
    return lv.lab.messages.discard_issue(actor, issue_id, body.reason, body.all_results)
