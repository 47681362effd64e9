"""Inbound messages (HL7 v2 after mapping): one transaction per message, committed
before the acknowledgement is released, idempotent on MSH-10, unmappable results
kept in the import-issues queue (docs/hl7.md).

The door (``interop/hl7``) parses and maps; this service matches the patient, stores
orders/specimens/results through ``LabService`` internals in the same transaction,
archives the raw message sealed (under the patient's key when known, so erasure takes
it too) with the ACK that was sent, and returns that ACK on a resend.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError as DbIntegrityError

from labvault.crypto import DataKey
from labvault.crypto import blind_index as bi
from labvault.domain import inbound as I
from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.domain.inbound import Location, MessageError
from labvault.domain.patient import PatientRecord
from labvault.errors import InvalidField, InvalidRecord, NotFound, UserError
from labvault.services import identity, indexing
from labvault.services.gate import Access, Decision
from labvault.services.lab import absent
from labvault.services.patients import former_ids_kept
from labvault.store import repositories as repo
from labvault.store import repositories_lab as lrepo
from labvault.store.engine import open_write_transaction
from labvault.store.ids import new_id

if TYPE_CHECKING:
    from labvault.services.app import Labvault
    from labvault.services.lab import LabService, _Order

log = logging.getLogger("labvault.hl7")
CLINICAL = frozenset({Category.CLINICAL})
# What one order/result message may touch of its patient: the clinical records it writes,
# the sex / birth date it reads for the reference ranges and the identity traits it
# compares with those it sent (``_compare_identity``).
MESSAGE_CATEGORIES = frozenset({Category.CLINICAL, Category.IDENTITY})
# what an import issue's sealed payload may hold: the results (clinical) and the patient as
# the analyser sent it (identifiers, name, birth date, sex; a registration's categories)
ISSUE_CATEGORIES = frozenset({Category.CLINICAL, Category.IDENTITY, Category.CONTACT,
                              Category.COVERAGE})
# Why results wait in the queue (``lab_import_issues.kind``); a door words each kind in its
# own language (the console's: web/queue.py) from the payload's ``params``.
IssueKind = Literal["unknown-patient", "unknown-code", "invalid-value", "order-closed",
                    "reused-control-id", "identity-mismatch",
                    "merge-request"]
ISSUE_KINDS: tuple[IssueKind, ...] = get_args(IssueKind)
# ``params`` say what ``reason`` says (the codes and values sent): clinical like it
_ISSUE_CLINICAL = ("order", "results", "reason", "params", "location", "message",
                   "control_id")
# of a handled issue's ``resolution``: what says something of its results (a discard's
# reason typed by the person, the codes mapped, the results stored or discarded)
_RESOLUTION_CLINICAL = ("reason", "codes", "observation_ids", "results")
_SUMMARY_FIELDS = {"name": ("birth_name", "first_names"), "birth_date": ("birth_date",),
                   "sex": ("sex",)}
CONTROL = "hl7_control"


def control_key(sending: str, control_id: str) -> str:
    """What a message's idempotency digest (``control_digest``, kind ``CONTROL``) is made
    of: the sender (MSH-3 ^ MSH-4) and its control id (MSH-10)."""
    return f"{sending}\x00{control_id}"


# issues keeping a message, not results
WHOLE_MESSAGE_KINDS: tuple[IssueKind, ...] = ("reused-control-id", "merge-request")
# An ADT^A40 of a hospital's identity server: two records of this laboratory to merge,
# kept for its identity vigilance (never merged automatically); resolved by the merge.
MERGE_REQUEST: IssueKind = "merge-request"
# OBX-11 (HL7 table 0085): no result to store (X: cannot be obtained), noted in the ACK
# with a reason; D and W retract a result already sent.
NOTED = {"I": "result pending", "N": "not asked", "O": "order detail only, no result"}
NO_RESULT = ("X", *NOTED)
RETRACTING = {"D": "deleted by the sender (OBX-11 D)",
              "W": "sent as wrong by the sender (OBX-11 W)"}
OPEN_STATES = (L.OrderStatus.REGISTERED, L.OrderStatus.RECEIVED, L.OrderStatus.PRELIMINARY,
               L.OrderStatus.TECHNICALLY_VALIDATED)
LOINC_SYSTEMS = ("LN", "LOINC", "http://loinc.org")
PATIENT_CACHE = 4096        # identifier digest -> patient id (ids only), LRU
PATIENT_CACHE_TTL = 60.0    # seconds: bounds staleness after an identifier change elsewhere


def resent_content(raw: bytes) -> bytes:
    """A message as compared with the first one under its MSH-10: the segments as sent,
    line endings (CR, LF, CRLF) and a UTF-8 BOM aside, and without MSH-7 (its date/time,
    which some senders stamp again when they resend)."""
    segments = [s for s in re.split(rb"\r\n|\n|\r", raw.removeprefix(b"\xef\xbb\xbf")) if s]
    if segments and segments[0][:3] == b"MSH" and len(segments[0]) > 3:
        fields = segments[0].split(segments[0][3:4])
        if len(fields) > 6:
            fields[6] = b""
        segments[0] = segments[0][3:4].join(fields)
    return b"\r".join(segments)


def _another_patients(order: I.InboundOrder) -> MessageError:
    number = order.placer_number or order.filler_number
    return MessageError(order.number_location(), I.ERR_DUPLICATE_KEY,
                        f"order number {number} belongs to another patient: check the "
                        "patient (PID-3) or the order number, then resend")


# A result's field (ResultInput / Observation names) -> its OBX field, for ERR-2.
OBX_FIELDS = {"code": 3, "value": 5, "unit": 6, "observed_at": 14}


def _field_of(exc: InvalidField | InvalidRecord) -> str:
    """The result's field a refusal names (``unit``, ``value``...: ``OBX_FIELDS``' keys)."""
    name = exc.field if isinstance(exc, InvalidField) else (
        exc.errors[0].field if exc.errors else "value")
    return name.split(".")[0].split("[")[0]


def _result_location(r: I.InboundResult, exc: InvalidField | InvalidRecord) -> Location:
    """Where in the OBX the problem is: OBX-6 for a unit, OBX-5 for a value..."""
    field = OBX_FIELDS.get(_field_of(exc), r.location.field or 5)
    return Location(r.location.segment, r.location.sequence, field)


def _codes_sent(results: Sequence[I.InboundResult]) -> str:
    """The test codes of ``results`` as sent (OBX-3), once each: an issue's ``params``."""
    return ", ".join(dict.fromkeys(r.code for r in results))


def _nothing_to_retract(r: I.InboundResult) -> MessageError:
    return MessageError(Location(r.location.segment, r.location.sequence, 11),
                        I.ERR_UNKNOWN_KEY,
                        f"OBX-11 {r.status}: no result of {r.code} is stored for this order, "
                        "nothing retracted", "W")


def _one_result_per_test(first: I.InboundResult, r: I.InboundResult,
                         test: L.CatalogueTest) -> None:
    """Two values of one test for one order in one message: which is right is the
    sender's knowledge, not ours. Taking either would hide the disagreement (and HL7
    wants OBX-3 + OBX-4 unique within an order), so the message is refused (AE) at the
    second OBX; a rerun is a correction (OBX-11 C) in a message of its own."""
    if first is r:
        return
    raise I.ContentError([MessageError(
        Location(r.location.segment, r.location.sequence, 3), I.ERR_DUPLICATE_KEY,
        f"OBX-3 {r.code} is test {test.code} again, already given by "
        f"OBX[{first.location.sequence}] for this order: one result per test and order in "
        "a message; send a rerun as a correction (OBX-11 C) in a message of its own")])


class IssueRefused(UserError):
    """A refusal of ``resolve_issue`` / ``discard_issue``: ``kind`` says which (a code a
    door can put in its own words: the console's, web/queue.py), ``params`` its values;
    the message and hint are the CLI's and the API's."""

    def __init__(self, kind: str, message: str, hint: str = "", **params: str) -> None:
        super().__init__(message, hint)
        self.kind, self.params = kind, params


class IssuePatientAbsent(IssueRefused, NotFound):
    """The patient named to resolve an issue is not one of its laboratory's (404)."""

    def __init__(self, patient_id: str) -> None:
        super().__init__("patient-absent", f"no patient {patient_id} in this laboratory",
                         "check the patient id (labvault patient find ...)")


# What can fix an issue of each kind (hl7-issues resolve's hint).
_DISCARD_HINT = ('discard it once handled: --discard --reason "..." (--all-results when it '
                 "holds several; REST: POST /api/v1/import-issues/{id}/discard)")
_RESOLVE_HINTS: Mapping[IssueKind, str] = {
    "unknown-patient": "give the patient: --patient pt_... (REST: patient_id; labvault "
                       "patient find ...)",
    "unknown-code": "say what each unknown code means: --code LOCAL=LOINC (REST: codes "
                    "{LOCAL: LOINC}; labvault catalogue show lists the LOINC codes)",
    "invalid-value": "labvault converts no value or unit: ask the sender for a corrected "
                     "result, then " + _DISCARD_HINT,
    "order-closed": "the order is validated: a biologist corrects the result by an "
                    "amendment, then " + _DISCARD_HINT,
    "reused-control-id": "ask the sender to send the message again under a new MSH-10 (the "
                         "first message with that MSH-10 is stored), then " + _DISCARD_HINT,
    "identity-mismatch": "check the identity the analyser sent against the patient record "
                         "its PID-3 names, then give the patient the results belong to: "
                         "--patient pt_... (REST: patient_id; labvault patient find ...), "
                         "or " + _DISCARD_HINT,
    "merge-request": "the laboratory's identity vigilance referent (lab_admin) checks both "
                     "records and merges them (labvault patient merge SURVIVOR DUPLICATE "
                     "--reason ...; REST: POST /api/v1/patients/{survivor}/merge; the "
                     "console's \"Fusionner un doublon\"): the merge closes the request; "
                     "or " + _DISCARD_HINT,
}


# Identity vigilance (services/identity.py, whose TRAIT_WORDS name the traits): the PID
# field each trait is sent in (ERR-2).
TRAIT_FIELDS = {"birth_name": 5, "first_name": 5, "birth_date": 7, "sex": 8}
IDENTITY_MISMATCH: IssueKind = "identity-mismatch"   # an order's refusal (audit rule), a queued ORU's kind


def sent_traits(msg: I.InboundMessage) -> dict[str, str]:
    """The identity traits an order or result message sent (``identity.TRAITS``' words),
    to compare with the record its PID-3 matched; a trait not sent is not compared. Sex
    only as F or M (U, empty or anything else says nothing). An order (ORM/OML, the
    prescriber's system, which holds the full identity) sends its names, birth date and
    sex; a result message (ORU) only its birth date (as precise as sent) and sex: an
    analyser or a middleware truncates names, drops accents and second first names --
    compared, they would send sound results to the queue, and folding cannot undo a
    truncation. Its birth date and sex are not truncated."""
    p = msg.patient
    if p is None:
        return {}
    out: dict[str, str] = {}
    if msg.message_type == "ORU":
        day = re.sub(r"\D", "", p.summary.get("birth_date") or "")
        if len(day) in (4, 6, 8):
            out["birth_date"] = "-".join(x for x in (day[:4], day[4:6], day[6:8]) if x)
        sex = (p.summary.get("sex") or "").upper()
    else:
        values = p.changes.values if p.changes is not None else {}
        if values.get("birth_name"):
            out["birth_name"] = str(values["birth_name"])
        if values.get("first_names"):
            out["first_name"] = str(values["first_names"][0])
        if values.get("birth_date"):
            out["birth_date"] = str(values["birth_date"])
        sex = str(values.get("sex") or "")
    if sex in ("F", "M"):
        out["sex"] = sex
    return out


def _merge_access(actor: Actor, tenant_id: str, patient_ids: tuple[str, ...],
                  action: Action = Action.WRITE) -> Access:
    """A merge request's gate question: ``patient-merge`` (purpose administration, no
    category: ids only), the identity vigilance referent's (docs/access-policy.md)."""
    return Access(actor, action, tenant_id, frozenset(), purpose="administration",
                  patient_ids=patient_ids, resource="patient-merge")


def _group_of(order: Mapping[str, Any], results: Sequence[I.InboundResult]) -> I.InboundOrder:
    """The order group an issue kept, rebuilt from its payload."""
    req = order.get("request") or {}
    presc = req.get("prescriber")
    return I.InboundOrder(
        Location("OBR"), "RE", order.get("placer_number"), order.get("filler_number"),
        tuple(I.InboundTest(t["code"], t.get("system"), t.get("display"),
                            Location("OBR", 1, 4)) for t in order.get("tests", [])),
        L.ServiceRequest((), L.Priority(req.get("priority") or "routine"),
                         L.OrderPrescriber(presc["name"], presc.get("rpps")) if presc else None,
                         req.get("clinical_notes"), order.get("placer_number"),
                         order.get("filler_number")),
        L.Specimen.parse(order["specimen"]) if order.get("specimen") else None,
        tuple(results))
# A placer's cancel (ORC-1 CA/OC/DC) before the results are technically validated; after
# that, cancelling is a biologist's decision (L.check_cancel), not a message's.
PLACER_MAY_CANCEL = (L.OrderStatus.REGISTERED, L.OrderStatus.RECEIVED,
                     L.OrderStatus.PRELIMINARY)


def placer_cancel_reason(order: I.InboundOrder) -> str:
    """The reason kept for a placer's cancel: who, and ORC-16's reason when sent."""
    return ("cancelled by the placer" + (f": {order.control_reason}" if order.control_reason
                                          else " (no reason given in ORC-16)"))


def _dumps(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str).encode()


@dataclass
class _Ctx:
    conn: Connection
    actor: Actor
    tenant_id: str
    message_id: str
    outcome: I.IngestOutcome
    issues: list[dict[str, Any]]
    deks: dict[str, DataKey] = field(default_factory=dict)
    # The message's one gate decision (ORU/ORM/OML): made once the patient is known, it
    # covers every record the message writes for that patient (order, specimen, results,
    # archive) and the identity facts read for the ranges. None: not made (yet).
    decision: Decision | None = None
    decided_for: str | None = None


class MessageService:
    def __init__(self, lv: Labvault, lab: LabService) -> None:
        self.lv = lv
        self.lab = lab
        # (tenant, kind, digest) -> (patient id, cached at). Ids only (no personal data);
        # an erased patient is dropped on first use, every entry after PATIENT_CACHE_TTL.
        self._patients: OrderedDict[tuple[str, str, bytes], tuple[str, float]] = OrderedDict()
        self._cache_lock = threading.Lock()
        # (SQLite's single writer: ``Labvault.begin`` queues this process's transactions on
        # one lock. A second lock here, taken before it, deadlocked against a group commit,
        # which holds the transaction first and stores messages inside it.)

    # == entry point ============================================================================
    def ingest(self, actor: Actor, tenant_id: str, raw: bytes, msg: I.InboundMessage,
               build_ack: Callable[[I.IngestOutcome], bytes]) -> tuple[I.IngestOutcome, bytes]:
        """Store one mapped message and return (outcome, ACK bytes). The ACK is built and
        archived inside the transaction; the caller sends it only after this returns (i.e.
        after the commit). A resend of the same MSH-10 (same sender) returns the first ACK;
        another message under that MSH-10 gets an AE and is kept as an import issue."""
        try:
            return self._ingest(actor, tenant_id, raw, msg, build_ack)
        except DbIntegrityError:
            # Two connections delivered the same message at once: the other one won.
            with self.lv.begin() as conn:
                dup = self._duplicate(conn, actor, tenant_id, msg, raw, build_ack)
            if dup is None:
                raise
            return dup

    def _control_digest(self, conn: Connection, tenant_id: str, msg: I.InboundMessage) -> bytes:
        return self.lab.digest(conn, tenant_id, CONTROL, control_key(msg.sending, msg.control_id))

    def _duplicate(self, conn: Connection, actor: Actor, tenant_id: str, msg: I.InboundMessage,
                   raw: bytes, build_ack: Callable[[I.IngestOutcome], bytes]
                   ) -> tuple[I.IngestOutcome, bytes] | None:
        """None if this MSH-10 is new from this sender; else the first ACK for a resend
        of the same message, or an AE for another message under a reused MSH-10."""
        row = lrepo.message_by_control(conn, tenant_id, self._control_digest(conn, tenant_id, msg))
        if row is None:
            return None
        self.lv.gate.check(conn, Access(actor, Action.READ, tenant_id, frozenset(),
                                        resource="hl7-message", purpose="care"))
        if not self._same_message(conn, tenant_id, row, raw):
            return self._reused(conn, actor, tenant_id, msg, raw, row, build_ack)
        ack = self.lv.gate.open_tenant_value_checked(conn, tenant_id, "lab_hl7_messages",
                                                     "ack_sealed", row["message_id"],
                                                     row["ack_sealed"])
        return I.IngestOutcome(row["status"], message_id=row["message_id"], duplicate=True), ack

    def _same_message(self, conn: Connection, tenant_id: str, row: Mapping[str, Any],
                      raw: bytes) -> bool:
        """Is ``raw`` the archived message again (``resent_content``)? A first message whose
        patient was erased cannot be compared: taken as the same (nothing is stored)."""
        try:
            if row["patient_id"] is not None:
                first = self.lv.gate.open_patient_value(
                    self.lv.gate.patient_key(conn, tenant_id, row["patient_id"]), tenant_id,
                    "lab_hl7_messages", "raw_sealed", row["message_id"], row["raw_sealed"])
            else:
                first = self.lv.gate.open_tenant_value_checked(
                    conn, tenant_id, "lab_hl7_messages", "raw_sealed", row["message_id"],
                    row["raw_sealed"])
        except NotFound:
            return True
        return resent_content(first) == resent_content(raw)

    def _reused(self, conn: Connection, actor: Actor, tenant_id: str, msg: I.InboundMessage,
                raw: bytes, row: Mapping[str, Any],
                build_ack: Callable[[I.IngestOutcome], bytes]) -> tuple[I.IngestOutcome, bytes]:
        """Another message under an MSH-10 this sender already used (an analyser reset, a
        counter wrapped): acknowledging it would lose it while the sender believes it
        delivered. AE naming MSH-10, nothing of it stored, and the message kept (sealed) as
        an import issue with an alert, for a person to follow up."""
        ctx = _Ctx(conn, actor, tenant_id, row["message_id"],
                   I.IngestOutcome("AE", kept=True), [])
        ctx.decision = self._decide(ctx, None)
        received = str(row["received_at"])[:16].replace("T", " ")   # raw SQL: text or datetime
        reason = (f"MSH-10 {msg.control_id} already names another message from this sender "
                  f"(received {received} UTC): control id reused with different content")
        issue_id = new_id("iss")
        ctx.issues.append({"issue_id": issue_id, "kind": "reused-control-id", "patient_id": None,
                           "payload": {"kind": "reused-control-id", "reason": reason,
                                       "params": {"received": str(row["received_at"])},
                                       "message_id": row["message_id"],
                                       "location": "MSH[1]-10", "control_id": msg.control_id,
                                       "message": raw.decode("utf-8", "replace")}})
        ctx.outcome.issue_ids.append(issue_id)
        ctx.outcome.errors.append(MessageError(
            Location("MSH", 1, 10), I.ERR_DUPLICATE_KEY,
            f"{reason}; nothing stored (kept for review as import issue {issue_id}): send it "
            "again under a new MSH-10"))
        self._write_issues(ctx)
        log.warning("HL7 MSH-10 reused with different content (first: %s): refused, kept as "
                    "import issue %s", row["message_id"], issue_id)
        return ctx.outcome, build_ack(ctx.outcome)

    def _ingest(self, actor: Actor, tenant_id: str, raw: bytes, msg: I.InboundMessage,
                build_ack: Callable[[I.IngestOutcome], bytes]
                ) -> tuple[I.IngestOutcome, bytes]:
        lv = self.lv
        try:
            with lv.begin() as conn:
                # SQLite: the message's write transaction from its start (one writer at a
                # time), so that no merge or erasure commits between its patient's match
                # and its writes (PostgreSQL: ``_orders_and_results`` checks again)
                open_write_transaction(conn)
                dup = self._duplicate(conn, actor, tenant_id, msg, raw, build_ack)
                if dup is not None:
                    return dup
                message_id = new_id("msg")
                ctx = _Ctx(conn, actor, tenant_id, message_id,
                           I.IngestOutcome("AA", message_id=message_id), [])
                if msg.message_type == "ADT":
                    lv.gate.check(conn, Access(actor, Action.WRITE, tenant_id, CLINICAL,
                                               resource="hl7-message", purpose="care"))
                    if msg.merged is not None:
                        self._merge_request(ctx, msg)
                    else:
                        self._adt(ctx, msg)
                else:
                    # one gate decision for the whole message, once its patient is known
                    self._orders_and_results(ctx, msg)
                assert msg.message_type == "ADT" or ctx.decision is not None
                self._write_issues(ctx)
                ack = build_ack(ctx.outcome)
                self._archive(ctx, msg, raw, ack)
                return ctx.outcome, ack
        except I.ContentError as exc:
            outcome = I.IngestOutcome("AE", errors=list(exc.errors))
            return outcome, build_ack(outcome)
        except UserError as exc:
            # A rule of the core refused (e.g. access): nothing stored, AE naming it.
            outcome = I.IngestOutcome("AE", errors=[MessageError(None, I.ERR_INTERNAL,
                                                                 exc.message)])
            return outcome, build_ack(outcome)

    def _archive(self, ctx: _Ctx, msg: I.InboundMessage, raw: bytes, ack: bytes) -> None:
        lv, tid = self.lv, ctx.tenant_id
        pid = ctx.outcome.patient_id
        if pid is not None:
            raw_sealed = self.lab._seal_bytes(self._key(ctx, pid), tid, "lab_hl7_messages",
                                              "raw_sealed", ctx.message_id, raw)
        else:
            raw_sealed = self.lab.seal_tenant(ctx.conn, tid, "lab_hl7_messages", "raw_sealed",
                                              ctx.message_id, raw)
        lrepo.insert_message(ctx.conn, {
            "tenant_id": tid, "message_id": ctx.message_id,
            "control_digest": self._control_digest(ctx.conn, tid, msg), "patient_id": pid,
            "message_type": msg.kind[:20], "status": ctx.outcome.ack_code,
            "received_at": lv.now(), "raw_sealed": raw_sealed,
            "ack_sealed": self.lab.seal_tenant(ctx.conn, tid, "lab_hl7_messages", "ack_sealed",
                                               ctx.message_id, ack)})

    # == patients ===============================================================================
    def _key(self, ctx: _Ctx, patient_id: str) -> DataKey:
        """The patient's data key, fetched once per message."""
        dek = ctx.deks.get(patient_id)
        if dek is None:
            dek = ctx.deks[patient_id] = self.lv.gate.patient_key(ctx.conn, ctx.tenant_id,
                                                                  patient_id)
        return dek

    def _lookup(self, ctx: _Ctx, kind: str, value: str) -> str | None:
        d = self.lab.digest(ctx.conn, ctx.tenant_id, kind, value)
        key = (ctx.tenant_id, kind, d)
        import time
        now = time.monotonic()
        hit = self._patients.get(key)
        pid = hit[0] if hit is not None and now - hit[1] <= PATIENT_CACHE_TTL else None
        if pid is not None:
            try:
                self._key(ctx, pid)          # still there (not erased): its key opens
                return pid
            except NotFound:
                with self._cache_lock:
                    self._patients.pop(key, None)
        ids = repo.find_by_digest(ctx.conn, ctx.tenant_id, kind, d)
        if len(ids) > 1:
            # Several patients share this identifier: never guess, never add another one.
            raise I.ContentError([MessageError(Location("PID", 1, 3), I.ERR_DUPLICATE_KEY,
                                               "several patients match PID-3; merge them "
                                               "first")])
        if not ids:
            return None
        with self._cache_lock:
            self._patients[key] = (ids[0], now)
            while len(self._patients) > PATIENT_CACHE:
                self._patients.popitem(last=False)
        return ids[0]

    def _match(self, ctx: _Ctx, p: I.InboundPatient) -> str | None:
        if p.nir:
            try:
                pid = self._lookup(ctx, bi.NIR, indexing.search_value(bi.NIR, p.nir))
            except InvalidField:
                pid = None
            if pid:
                return pid
        for ext in p.external_ids:
            pid = self._lookup(ctx, bi.EXTERNAL_ID, ext)
            if pid:
                return pid
        return None

    def _register(self, ctx: _Ctx, rec: PatientRecord) -> str:
        pat = self.lv.patients
        patient_id = new_id("pt")       # named by the decision: the entry is about them
        access = Access(ctx.actor, Action.WRITE, ctx.tenant_id,
                        frozenset({Category.IDENTITY, Category.CONTACT, Category.COVERAGE,
                                   Category.CLINICAL}), patient_ids=(patient_id,),
                        resource="patient")
        self.lv.gate.check(ctx.conn, access)
        prepared = pat._prepare(ctx.conn, access, ctx.tenant_id, rec, patient_id=patient_id)
        repo.insert_patients(ctx.conn, [prepared.row], [prepared.key], prepared.index)
        return prepared.patient_id

    def _update(self, ctx: _Ctx, patient_id: str, p: I.InboundPatient) -> None:
        """Apply a PID to a known patient (ADT^A08...): what the message leaves empty is
        kept, ``""`` deletes (HL7 v2.5 §2.5.3); coverage and clinical facts, which a PID
        does not carry, are kept as they are."""
        lv = self.lv
        assert p.changes is not None
        access = Access(ctx.actor, Action.WRITE, ctx.tenant_id,
                        frozenset({Category.IDENTITY, Category.CONTACT, Category.COVERAGE,
                                   Category.CLINICAL}), patient_ids=(patient_id,),
                        resource="patient")
        lv.gate.check(ctx.conn, access)
        opened = lv.gate.read_patients(ctx.conn, Access(
            ctx.actor, Action.READ, ctx.tenant_id, access.categories,
            patient_ids=(patient_id,), resource="patient")).get(patient_id, {})
        stored = {**opened.get(Category.IDENTITY, {}), **opened.get(Category.CONTACT, {})}
        merged = p.changes.applied_to(stored)
        try:
            rec = PatientRecord.parse(merged)
        except InvalidRecord as exc:
            raise I.ContentError(p.changes.errors(exc, merged, p.location)) from None
        # a merge's former identifiers stay (a PID-3 naming one swaps it with the record's)
        rec = former_ids_kept(rec, opened.get(Category.IDENTITY, {}))
        self._identifiers_free(ctx, patient_id, rec, p.location)
        cats = rec.categories()
        for cat in (Category.COVERAGE, Category.CLINICAL):
            cats[cat] = dict(opened.get(cat) or {})
        dek = lv.gate.patient_key(ctx.conn, ctx.tenant_id, patient_id)
        blobs = lv.gate.seal_patient(ctx.conn, access, dek, patient_id, cats)
        repo.update_patient_blobs(ctx.conn, ctx.tenant_id, patient_id, blobs)
        idx = repo.current_key_version(ctx.conn, ctx.tenant_id, "index")
        assert idx is not None
        repo.replace_index_rows(ctx.conn, ctx.tenant_id, patient_id, indexing.digests(
            lv.keyring.blind_index_key(ctx.tenant_id, idx), indexing.index_values(rec)))
        with self._cache_lock:
            for k in [k for k, v in self._patients.items() if v[0] == patient_id]:
                self._patients.pop(k, None)

    def _identifiers_free(self, ctx: _Ctx, patient_id: str, rec: PatientRecord,
                          where: Location) -> None:
        """Never two patients with one NIR or one external id (MRN): an update that would
        give this patient another patient's identifier is refused (AE 205)."""
        named = {bi.NIR: "NIR", bi.EXTERNAL_ID: "identifier"}
        for kind, value in indexing.index_values(rec):
            if kind not in named:
                continue
            owners = repo.find_by_digest(ctx.conn, ctx.tenant_id, kind,
                                         self.lab.digest(ctx.conn, ctx.tenant_id, kind, value))
            if any(o != patient_id for o in owners):
                raise I.ContentError([MessageError(
                    where, I.ERR_DUPLICATE_KEY,
                    f"PID-3 {named[kind]} {value} already identifies another patient: "
                    "correct the identifier, or merge the two records first, then resend")])

    def _adt(self, ctx: _Ctx, msg: I.InboundMessage) -> None:
        p = msg.patient
        assert p is not None and p.changes is not None   # the mapper guarantees it for ADT
        pid = self._match(ctx, p)
        if pid is None:
            if p.record is None:
                raise I.ContentError(list(p.record_errors))
            pid = self._register(ctx, p.record)
        else:
            self._update(ctx, pid, p)
        ctx.outcome.patient_id = pid

    def _merge_request(self, ctx: _Ctx, msg: I.InboundMessage) -> None:
        """ADT^A40: the sender merged two identities (PID: the one kept; MRG-1: the
        duplicate). A merge in a laboratory is its identity vigilance's decision: when both
        are records of this laboratory, distinct, the request is kept as an import issue
        (``merge-request``: both ids, the sender, MSH-10; under the survivor's key) for its
        lab administrator; nothing is merged here. The survivor unknown: AE 204 at PID-3;
        the duplicate unknown (merged already, never registered here) or the same record:
        AA with a warning, nothing to do."""
        p, dup = msg.patient, msg.merged
        assert p is not None and dup is not None
        survivor = self._match(ctx, p)
        if survivor is None:
            raise I.ContentError([MessageError(
                p.location, I.ERR_UNKNOWN_KEY, "PID-3 names no patient of this laboratory: "
                "the record the merge keeps is unknown here (send its registration, "
                "ADT^A04, first)")])
        ctx.outcome.patient_id = survivor
        duplicate = self._match(ctx, dup)
        if duplicate is None or duplicate == survivor:
            ctx.outcome.errors.append(MessageError(
                dup.location, I.ERR_UNKNOWN_KEY if duplicate is None else I.ERR_ACCEPTED,
                "MRG-1 names no patient of this laboratory (merged already, or never "
                "registered here): nothing to merge" if duplicate is None else
                "MRG-1 and PID-3 name the same patient here: nothing to merge", "W"))
            return
        issue_id = new_id("iss")
        reason = (f"the sender ({msg.sending}) merged two identities that are two records "
                  f"here: {duplicate} into {survivor}; the laboratory's identity vigilance "
                  "decides")
        ctx.issues.append({"issue_id": issue_id, "kind": MERGE_REQUEST, "patient_id": survivor,
                           "payload": {"kind": MERGE_REQUEST, "reason": reason,
                                       "params": {"survivor_id": survivor,
                                                  "duplicate_id": duplicate,
                                                  "sender": msg.sending},
                                       "message_id": ctx.message_id,
                                       "location": str(dup.location),
                                       "control_id": msg.control_id, "sender": msg.sending,
                                       "survivor_id": survivor, "duplicate_id": duplicate}})
        ctx.outcome.issue_ids.append(issue_id)
        ctx.outcome.errors.append(MessageError(
            dup.location, I.ERR_ACCEPTED, f"merge request kept for the laboratory's identity "
            f"vigilance as import issue {issue_id}: labvault does not merge records "
            "automatically", "I"))

    def merge_requests(self, actor: Actor, tenant_id: str,
                       limit: int = 500) -> list[dict[str, Any]]:
        """The laboratory's open ``merge-request`` issues (ADT^A40), oldest first, as its
        identity vigilance referent works them: ids, when, the sender and MSH-10 -- no
        patient data. One gate decision (``patient-merge`` read, purpose administration,
        no category: the lab administrator's), audited."""
        self.lab._scope(actor, tenant_id, "laboratory")
        with self.lv.begin() as conn:
            rows = lrepo.issues_of_kind(conn, tenant_id, MERGE_REQUEST, "open", limit)
            pids = tuple(dict.fromkeys(str(r["patient_id"]) for r in rows
                                       if r["patient_id"]))
            self.lv.gate.check(conn, _merge_access(actor, tenant_id, pids, Action.READ))
            out = []
            for r in rows:
                try:
                    p = self._open_issue(conn, r)
                except NotFound:      # the survivor was erased meanwhile
                    continue
                out.append({"id": r["issue_id"], "created_at": r["created_at"],
                            "survivor_id": p.get("survivor_id"),
                            "duplicate_id": p.get("duplicate_id"),
                            "sender": p.get("sender"), "control_id": p.get("control_id")})
            return out

    def close_merge_requests(self, conn: Connection, actor: Actor, tenant_id: str,
                             survivor_id: str, duplicate_id: str) -> list[str]:
        """After a merge (``services/merge.py``, in its transaction, the duplicate's rows
        already the survivor's): the open ``merge-request`` issues naming this pair (either
        way round) are resolved by it -- who, when, both ids. Their ids."""
        done = []
        for row in lrepo.open_issues_of(conn, tenant_id, MERGE_REQUEST, survivor_id):
            payload = self._open_issue(conn, row)
            if {payload.get("survivor_id"), payload.get("duplicate_id")} != {survivor_id,
                                                                            duplicate_id}:
                continue
            ts = self.lv.now()
            resolution = {"by": actor.id, "at": ts.isoformat(), "merged": True,
                          "survivor_id": survivor_id, "duplicate_id": duplicate_id}
            lrepo.update_issue(conn, tenant_id, row["issue_id"], status="resolved",
                               resolved_at=ts, resolution_sealed=self._seal_issue(
                                   conn, tenant_id, survivor_id, row["issue_id"],
                                   "resolution_sealed", resolution))
            done.append(str(row["issue_id"]))
        return done

    # == orders and results =====================================================================
    def _resolve_code(self, cat: L.Catalogue, code: str, system: str | None,
                      mapping: Mapping[str, str] | None = None) -> L.CatalogueTest | None:
        if mapping and code in mapping:
            return cat.tests.get(mapping[code])
        if system is None or system.upper() in LOINC_SYSTEMS or system == "http://loinc.org":
            t = cat.tests.get(code)
            if t is not None:
                return t
        return cat.tests.get(cat.by_local.get(code, "")) if code in cat.by_local else None

    def _orders_and_results(self, ctx: _Ctx, msg: I.InboundMessage) -> None:
        p = msg.patient
        assert p is not None
        why, matched = "patient not found by NIR or identifier", "none"
        try:
            pid = self._match(ctx, p)
        except I.ContentError:
            if msg.message_type != "ORU":
                raise
            pid, why, matched = None, "several patients match PID-3 (merge them first)", "several"
        by_identifier = pid is not None      # (not registered from this PID just below)
        if pid is None and msg.message_type in ("ORM", "OML"):
            if p.record is None:
                raise I.ContentError([MessageError(
                    e.location, e.code, f"unknown patient, not registered: {e.text}")
                    for e in p.record_errors])
            pid = self._register(ctx, p.record)
        ctx.decision, ctx.decided_for = self._decide(ctx, pid), pid
        if pid is not None and pid in ctx.deks and ctx.conn.dialect.name != "sqlite":
            # Its key was fetched before the decision (a cached match): on PostgreSQL a
            # merge or an erasure of this patient may have committed in between -- the
            # decision's audit append is what waits for theirs (one chain head per
            # laboratory; a read locks nothing). Fetched again now that nothing can change
            # it, so that nothing is stored under a merged duplicate's (deleted) key.
            # (SQLite: the write transaction was open before the match, ``_ingest``.)
            del ctx.deks[pid]
            try:
                self._key(ctx, pid)
            except NotFound:
                raise I.ContentError([MessageError(
                    Location("PID", 1, 3), I.ERR_RECORD_CHANGED,
                    "the patient's record was merged or erased while this message was "
                    "processed: nothing was stored; send the message again")]) from None
        if pid is None:
            # ORU for a patient we do not know: keep every result, sealed, for a human.
            for order in msg.orders:
                self._issue(ctx, "unknown-patient", None, order, list(order.results),
                            p, p.location, why, matched=matched)
            return
        facts: dict[str, Any] | None = None
        if by_identifier:
            differ, facts = self._compare_identity(ctx, msg, pid)
            if differ:
                self._identity_mismatch(ctx, msg, pid, differ)
                return
        ctx.outcome.patient_id = pid
        cat = self.lab._catalogue(ctx.conn, ctx.tenant_id)
        for order in msg.orders:
            existing = self._find_order(ctx, order, pid)
            if order.control in ("CA", "OC", "DC"):
                if existing is None:
                    ctx.outcome.errors.append(MessageError(
                        order.number_location(), I.ERR_UNKNOWN_KEY,
                        "order to cancel not found", "W"))
                elif existing.status in PLACER_MAY_CANCEL:
                    self.lab._cancel(ctx.conn, ctx.actor, existing, placer_cancel_reason(order))
                    ctx.outcome.order_ids.append(existing.order_id)
                else:
                    raise I.ContentError([MessageError(
                        order.control_location(), I.ERR_TABLE_VALUE_NOT_FOUND,
                        f"the order is {existing.status} and can no longer be cancelled by "
                        "the placer (after technical validation: a biologist of the lab)")])
                continue
            if existing is not None:
                self.lab._attach_numbers(ctx.conn, existing, order.placer_number,
                                         order.filler_number)
            else:
                tests: list[str] = []
                for t in order.tests:
                    ct = self._resolve_code(cat, t.code, t.code_system)
                    if ct is not None:
                        tests.append(ct.code)
                    elif msg.message_type != "ORU":
                        raise I.ContentError([MessageError(
                            t.location,
                            I.ERR_TABLE_VALUE_NOT_FOUND,
                            f"test {t.code} is not in the laboratory's catalogue")])
                for r in order.results:
                    ct = self._resolve_code(cat, r.code, r.code_system)
                    if ct is not None and ct.code not in tests:
                        tests.append(ct.code)
                if not tests:
                    # nothing mappable at all: the results go to the queue below
                    self._issue(ctx, "unknown-code", pid, order, list(order.results), None,
                                order.location, "no test of this order is in the catalogue",
                                codes=_codes_sent(order.results))
                    continue
                dek = self._key(ctx, pid)
                if facts is None:
                    assert ctx.decision is not None and ctx.decided_for == pid
                    facts = self.lab._patient_facts_checked(ctx.conn, ctx.decision,
                                                            ctx.tenant_id, pid, dek)
                req = order.request or L.ServiceRequest(())
                sr = L.ServiceRequest(tuple(dict.fromkeys(tests)), req.priority, req.prescriber,
                                      req.clinical_notes, order.placer_number,
                                      order.filler_number, req.requested_at)
                if order.results:
                    # unsolicited results: order, specimen and results written at once
                    ctx.outcome.errors.extend(_nothing_to_retract(r) for r in order.results
                                              if r.status in RETRACTING)
                    good = self._interpret(ctx, pid, order, cat, facts)
                    if good:
                        created, views = self.lab._create_with_results(
                            ctx.conn, ctx.actor, ctx.tenant_id, pid, dek, sr,
                            order.specimen or self._default_specimen(order, pid),
                            good, facts)
                        ctx.outcome.order_ids.append(created.order_id)
                        ctx.outcome.observation_ids.extend(v.observation_id for v in views)
                    # none usable: each is queued once (above), and no empty order is made
                    continue
                existing = self.lab._create_order(ctx.conn, ctx.actor, ctx.tenant_id, pid, sr,
                                                  facts, dek)
            ctx.outcome.order_ids.append(existing.order_id)
            if existing.status == L.OrderStatus.REGISTERED and (order.specimen or order.results):
                spec = order.specimen or self._default_specimen(order, existing.order_id)
                self.lab._receive(ctx.conn, ctx.actor, existing, spec)
            if order.results:
                self._results(ctx, existing, order, cat)

    def _compare_identity(self, ctx: _Ctx, msg: I.InboundMessage, pid: str
                          ) -> tuple[list[str], dict[str, Any] | None]:
        """The traits the message sent (``sent_traits``) that differ from those of the
        record its PID-3 matched (``identity.differing_traits``), and the sex and birth
        date opened to compare them -- the facts the reference ranges need, so that a
        message opens its patient's identity once. Opened under the message's one gate
        decision (which covers the identity category), in the fields it allows; nothing
        is opened when no trait was sent. A record of unknown sex (U) has none to
        contradict."""
        sent = sent_traits(msg)
        if not sent:
            return [], None
        assert ctx.decision is not None and ctx.decided_for == pid
        names = ("birth_name", "first_names") if {"birth_name", "first_name"} & set(sent) else ()
        record = self.lab._patient_facts_checked(ctx.conn, ctx.decision, ctx.tenant_id, pid,
                                                 self._key(ctx, pid),
                                                 ("sex", "birth_date", *names))
        if record.get("sex") == "U":
            sent.pop("sex", None)
        return (identity.differing_traits(record, sent),
                {"sex": record["sex"], "birth_date": record["birth_date"]})

    def _identity_mismatch(self, ctx: _Ctx, msg: I.InboundMessage, pid: str,
                           differ: Sequence[str]) -> None:
        """PID-3 names a registered patient whose ``differ`` traits are not the ones sent:
        a NIR typed for another person, a middleware that mixed two patients up. An order
        (ORM/OML) is refused, AE 205 with one ERR per trait at its PID field; a result
        message's results wait in the queue as ``identity-mismatch`` issues, not stored
        under that patient, until a person says whose they are. Never the record's value
        in the answer: the sender learns that a trait differs, not what is on record. The
        refused order is recorded as a refusal (rule ``identity-mismatch``, naming the
        patient whose identity was compared): it survives the message's rollback, which
        takes the decision's own entry with it."""
        p = msg.patient
        assert p is not None

        def where(trait: str) -> Location:
            return Location("PID", p.location.sequence, TRAIT_FIELDS[trait])
        if msg.message_type != "ORU":
            self.lv.gate.refuse(ctx.conn, Access(
                ctx.actor, Action.WRITE, ctx.tenant_id, MESSAGE_CATEGORIES,
                patient_ids=(pid,), resource="hl7-message", purpose="care"), IDENTITY_MISMATCH)
            raise I.ContentError([MessageError(
                where(t), I.ERR_DUPLICATE_KEY,
                f"PID-3 identifies a registered patient whose {identity.TRAIT_WORDS[t]} differs from "
                f"PID-{TRAIT_FIELDS[t]}'s: check the patient's identity (identifier and "
                "traits), then send the order again; nothing stored") for t in differ])
        words = ", ".join(identity.TRAIT_WORDS[t] for t in differ)
        reason = (f"PID-3 identifies a registered patient whose {words} "
                  f"differ{'s' if len(differ) == 1 else ''} from what was sent: check the "
                  "identity; the results are not stored under that patient")
        for order in msg.orders:
            # ``matched``: the record PID-3 names (an id, not personal): whoever resolves
            # the issue opens it -- through the gate -- to compare, then attaches
            self._issue(ctx, IDENTITY_MISMATCH, None, order, list(order.results), p,
                        where(differ[0]), reason, traits=", ".join(differ), matched=pid)

    def _decide(self, ctx: _Ctx, patient_id: str | None) -> Decision:
        """The message's one gate decision (one audit entry): write of an HL7 message's
        clinical records for its patient, reading the sex and birth date the reference
        ranges need. A refusal raises ``AccessDenied`` (audited; the message gets an AE and
        nothing of it is stored)."""
        return self.lv.gate.check(ctx.conn, Access(
            ctx.actor, Action.WRITE, ctx.tenant_id,
            MESSAGE_CATEGORIES if patient_id is not None else CLINICAL,
            patient_ids=(patient_id,) if patient_id is not None else (),
            resource="hl7-message", purpose="care"))

    @staticmethod
    def _covered(ctx: _Ctx, patient_id: str) -> bool:
        return ctx.decision is not None and ctx.decided_for == patient_id

    def _default_specimen(self, order: I.InboundOrder, fallback: str) -> L.Specimen:
        """An ORU without SPM/OBR-7: the analyzed specimen, numbered by the order number."""
        return L.Specimen("BLD", next((r.observed_at for r in order.results if r.observed_at),
                                      self.lv.now()),
                          (order.filler_number or order.placer_number or fallback)[:64])

    def _interpret(self, ctx: _Ctx, pid: str, group: I.InboundOrder, cat: L.Catalogue,
                   facts: Mapping[str, Any], mapping: Mapping[str, str] | None = None
                   ) -> list[L.Observation]:
        """Results that map, interpreted; the others go to the import-issues queue."""
        from datetime import date
        bd = facts.get("birth_date")
        birth = date.fromisoformat(bd) if bd else None
        good: list[L.Observation] = []
        first: dict[str, I.InboundResult] = {}
        for r in group.results:
            if r.status in NO_RESULT:
                if r.status in NOTED:
                    ctx.outcome.errors.append(MessageError(
                        Location(r.location.segment, r.location.sequence, 11), I.ERR_ACCEPTED,
                        f"OBX-11 {r.status} ({NOTED[r.status]}): {r.code} not stored", "I"))
                continue
            if r.status in RETRACTING:            # applied by _retract, never stored
                continue
            test = self._resolve_code(cat, r.code, r.code_system, mapping)
            if test is not None:
                _one_result_per_test(first.setdefault(test.code, r), r, test)
            if test is None:
                self._issue(ctx, "unknown-code", pid, group, [r], None,
                            Location(r.location.segment, r.location.sequence, 3),
                            f"code {r.code} ({r.code_system or 'local'}) is not in catalogue "
                            f"{cat.version}", code=r.code, system=r.code_system or "local")
                continue
            try:
                good.append(L.Observation.interpret(
                    self._to_input(r, test), test, cat.version, facts.get("sex"), birth,
                    self.lv.now()).with_analyser(r.reference_range, r.flags))
            except (InvalidField, InvalidRecord) as exc:
                self._issue(ctx, "invalid-value", pid, group, [r], None,
                            _result_location(r, exc), str(exc.message), code=r.code,
                            field=_field_of(exc), unit=r.unit or "", expected=test.unit or "")
        return good

    def _find_order(self, ctx: _Ctx, order: I.InboundOrder,
                    patient_id: str | None = None) -> _Order | None:
        """The order this group names (placer/filler number), opened. With ``patient_id``:
        an order of another patient is refused before anything of it is opened."""
        placer = (self.lab.digest(ctx.conn, ctx.tenant_id, "lab_placer", order.placer_number)
                  if order.placer_number else None)
        filler = (self.lab.digest(ctx.conn, ctx.tenant_id, "lab_filler", order.filler_number)
                  if order.filler_number else None)
        row = lrepo.order_by_digest(ctx.conn, ctx.tenant_id, placer, filler)
        if row is None:
            return None
        # read again, locked (``LabService._order_row``): results stored for it now are not
        # lost to, nor slipped under, a validation or FHIR update of it running meanwhile
        row = lrepo.order(ctx.conn, row["order_id"], lock=True) or row
        if patient_id is not None and row["patient_id"] != patient_id:
            raise I.ContentError([_another_patients(order)])
        o = self.lab._order_from_row(ctx.conn, row, self._key(ctx, row["patient_id"]))
        rep = lrepo.report_by_order(ctx.conn, ctx.tenant_id, o.order_id)
        o.row["report_id"] = rep["report_id"] if rep else ""
        return o

    def _to_input(self, r: I.InboundResult, test: L.CatalogueTest) -> L.ResultInput:
        data: dict[str, Any] = {"code": test.code}
        if r.coded is not None:
            data["value"] = {"code": r.coded.code, "display": r.coded.display,
                             "system": r.coded.system}
        elif r.numeric is not None:
            data["value"] = r.numeric
        else:
            data["value"] = r.text
            if test.kind == L.ValueKind.TEXT:
                data["kind"] = "text"
        if r.unit:
            data["unit"] = r.unit
        if r.comments:
            data["comment"] = "\n".join(r.comments)[:4000]
        if r.observed_at:
            data["observed_at"] = r.observed_at
        if r.code != test.code:
            data["local_code"] = r.code[:64]
        if r.value_type == "SN" and r.numeric and L.parse_numeric(r.numeric) is None:
            raise InvalidField("value", f"SN {r.numeric!r} is a range or ratio (or an unknown "
                               "comparator): labvault keeps one number, with <, >, <=, >= or "
                               "=", "ask the sender for the single value")
        res = L.ResultInput.parse(data)
        if test.kind == L.ValueKind.NUMERIC and res.kind != L.ValueKind.NUMERIC:
            raise InvalidField("value", f"{test.code} expects a number, got text "
                               f"{(r.text or '')[:40]!r}", "")
        return res

    def _results(self, ctx: _Ctx, order: _Order, group: I.InboundOrder, cat: L.Catalogue,
                 mapping: Mapping[str, str] | None = None) -> None:
        if order.status not in OPEN_STATES:
            retraction = any(r.status in RETRACTING for r in group.results)
            what = ("a retraction (OBX-11 D/W) of a validated result" if retraction
                    else "a correction")
            self._issue(ctx, "order-closed", order.patient_id, group, list(group.results), None,
                        group.location, f"the order is {order.status}: {what} needs a "
                        "biologist (amend)", status=str(order.status),
                        retraction="yes" if retraction else "")
            return
        good = self._interpret(ctx, order.patient_id, group, cat,
                               {"sex": order.sex, "birth_date": order.request.get(
                                   "patient", {}).get("birth_date")}, mapping)
        retracting = any(r.status in RETRACTING for r in group.results)
        if (good or retracting) and not self._covered(ctx, order.patient_id):
            self.lab._check(ctx.conn, ctx.actor, Action.WRITE, ctx.tenant_id,
                            "observation", (order.patient_id,))
        if retracting:           # before the new values: "W old value, F new one" works
            self._retract(ctx, order, group, cat, mapping)
        if good:
            views = self.lab._store_results(ctx.conn, ctx.actor, order, good)
            ctx.outcome.observation_ids.extend(v.observation_id for v in views)
            self.lab._add_tests(ctx.conn, order, (o.code for o in good))

    def _retract(self, ctx: _Ctx, order: _Order, group: I.InboundOrder, cat: L.Catalogue,
                 mapping: Mapping[str, str] | None) -> None:
        """OBX-11 D (delete) and W (wrong: e.g. another patient's) cancel the result not yet
        validated, with the reason in its history; nothing to retract is a warning. (A
        validated order's results go to the queue before this, for a biologist.)"""
        for r in group.results:
            if r.status not in RETRACTING:
                continue
            test = self._resolve_code(cat, r.code, r.code_system, mapping)
            oid = test and self.lab._cancel_result(ctx.conn, ctx.actor, order, test.code,
                                                   RETRACTING[r.status])
            if oid:
                ctx.outcome.observation_ids.append(oid)
            else:
                ctx.outcome.errors.append(_nothing_to_retract(r))

    # == import issues ==========================================================================
    def _issue(self, ctx: _Ctx, kind: IssueKind, patient_id: str | None, group: I.InboundOrder,
               results: Sequence[I.InboundResult], patient: I.InboundPatient | None,
               location: Location, reason: str, **params: str) -> None:
        """Keep ``results`` as an import issue: ``reason`` in English (the ACK's, the CLI's
        and the API's), ``params`` the values a door words it with in its own language."""
        issue_id = new_id("iss")
        payload = {
            "kind": kind, "reason": reason, "params": params, "message_id": ctx.message_id,
            "location": str(location),
            "order": {"placer_number": group.placer_number, "filler_number": group.filler_number,
                      "tests": [{"code": t.code, "system": t.code_system, "display": t.display}
                                for t in group.tests],
                      "request": group.request.as_json() if group.request else None,
                      "specimen": group.specimen.as_json() if group.specimen else None},
            "results": [r.as_json() for r in results],
            "patient": ({"identifiers": [{"value": i.value, "type": i.type_code,
                                          "authority": i.authority} for i in patient.identifiers],
                         "summary": patient.summary,
                         "record": ({c.value: v for c, v in patient.record.categories().items()}
                                    if patient.record else None)} if patient else None)}
        ctx.issues.append({"issue_id": issue_id, "kind": kind, "patient_id": patient_id,
                           "payload": payload, "panic": self._holds_panic_value(ctx, results)})
        ctx.outcome.issue_ids.append(issue_id)
        code = (I.ERR_UNKNOWN_KEY if kind.startswith("unknown") else
                I.ERR_DUPLICATE_KEY if kind == IDENTITY_MISMATCH else I.ERR_DATA_TYPE)
        ctx.outcome.errors.append(MessageError(location, code, f"{reason}; kept for review as "
                                               f"import issue {issue_id}", "W"))

    def _write_issues(self, ctx: _Ctx) -> None:
        if not ctx.issues:
            return
        lv, tid, ts = self.lv, ctx.tenant_id, self.lv.now()
        rows = []
        for it in ctx.issues:
            sealed = self._seal_issue(ctx.conn, tid, it["patient_id"], it["issue_id"],
                                      "issue_sealed", it["payload"])
            rows.append({"tenant_id": tid, "issue_id": it["issue_id"],
                         "message_id": ctx.message_id, "patient_id": it["patient_id"],
                         "kind": it["kind"], "status": "open", "created_at": ts,
                         "resolved_at": None, "issue_sealed": sealed,
                         "resolution_sealed": None})
        lrepo.insert_issues(ctx.conn, rows)
        lv.alerts.raise_alert(ctx.conn, tid, "import-issue", "warning", ctx.actor,
                              {"message_id": ctx.message_id,
                               "issue_ids": [r["issue_id"] for r in rows]})
        for it in ctx.issues:
            if it.get("panic"):      # (an issue keeping a whole message has no results)
                # a critical value waiting in the queue (patient not matched, order closed...)
                # is a biologist's to act on now, not when someone resolves the issue. Ids
                # only, as every alert: which test and value stay sealed in the issue.
                lv.alerts.raise_alert(ctx.conn, tid, "panic-value", "critical", ctx.actor, {
                    "issue_id": it["issue_id"], "message_id": ctx.message_id,
                    **({"patient_id": it["patient_id"]} if it["patient_id"] else {})},
                    subject=it["issue_id"])

    def _holds_panic_value(self, ctx: _Ctx, results: Sequence[I.InboundResult]) -> bool:
        """Whether a value of ``results`` is beyond a panic limit of the catalogue, whoever
        the patient is (panic limits do not depend on sex or age). Only a number in the
        catalogue's own unit is judged: another unit says nothing sure."""
        return bool(self._panic_values(ctx.conn, ctx.tenant_id, results))

    def _panic_values(self, conn: Connection, tenant_id: str,
                      results: Sequence[I.InboundResult]) -> list[dict[str, Any]]:
        """The values of ``results`` beyond a panic limit (``_holds_panic_value``), each
        as a page shows it: test, value as sent, the catalogue's unit, flag, and the code
        the analyser sent (``sent_code``: which of the issue's results it is)."""
        cat = self.lab._catalogue(conn, tenant_id)
        out = []
        for r in results:
            test = self._resolve_code(cat, r.code, r.code_system)
            if (test is None or r.numeric is None or not r.unit or not test.unit
                    or not L.same_unit(r.unit, test.unit)):
                continue
            try:
                flag, _ = test.interpret(self._to_input(r, test), None, None)
            except (InvalidField, InvalidRecord):
                continue
            if flag is not None and flag.is_panic:
                out.append({"code": test.code, "test": test.name, "value": r.numeric,
                            "unit": test.unit, "flag": flag.value, "sent_code": r.code})
        return out

    def get_issue(self, actor: Actor, issue_id: str) -> dict[str, Any]:
        """One import issue of the actor's laboratory (open or not), opened through the
        gate like ``list_issues`` (a read of ``import-issue``, audited), with
        ``panic_values``: its values beyond a panic limit -- what a biologist phones in
        before anyone resolves the issue. Another laboratory's issue answers as an
        absent one."""
        with self.lv.begin() as conn:
            row = lrepo.issue(conn, issue_id)
            if row is None or not self.lab._in_scope(actor, row["tenant_id"]):
                raise self.lab._refused_absent(conn, actor, Action.READ, "import-issue",
                                               "import-issue", issue_id)
            tid = row["tenant_id"]
            decision = self.lv.gate.check(conn, Access(
                actor, Action.READ, tid, ISSUE_CATEGORIES, resource="import-issue",
                patient_ids=(row["patient_id"],) if row["patient_id"] else ()))
            payload = self._opened(conn, row)
            seen = {**issue_as_seen(payload, decision),
                    **self._details(conn, tid, payload, decision)}
            self._name_handlers(conn, tid, [seen])
            return {"id": row["issue_id"], "kind": row["kind"], "status": row["status"],
                    "patient_id": row["patient_id"], "message_id": row["message_id"],
                    "created_at": row["created_at"], "resolved_at": row["resolved_at"],
                    **seen}

    def _details(self, conn: Connection, tenant_id: str, payload: Mapping[str, Any],
                 decision: Decision) -> dict[str, Any]:
        """What the catalogue says of an issue's results, for a reader they are opened
        to: ``panic_values`` (``_panic_values``) and ``unknown_codes``, the codes as sent
        that the catalogue does not know (what ``resolve_issue``'s ``codes`` may map)."""
        if Category.CLINICAL not in decision.categories:
            return {}
        results = [I.InboundResult.from_json(r) for r in payload.get("results") or ()]
        cat = self.lab._catalogue(conn, tenant_id)
        return {"panic_values": self._panic_values(conn, tenant_id, results),
                "unknown_codes": list(dict.fromkeys(
                    r.code for r in results
                    if self._resolve_code(cat, r.code, r.code_system) is None))}

    def _seal_issue(self, conn: Connection, tenant_id: str, patient_id: str | None,
                    issue_id: str, column: str, payload: Mapping[str, Any]) -> bytes:
        if patient_id is not None:
            dek = self.lv.gate.patient_key(conn, tenant_id, patient_id)
            return self.lab._seal_bytes(dek, tenant_id, "lab_import_issues", column, issue_id,
                                        _dumps(payload))
        return self.lv.gate.seal_tenant_value(conn, tenant_id, "lab_import_issues", column,
                                              issue_id, _dumps(payload))

    def _open_issue(self, conn: Connection, row: Mapping[str, Any],
                    column: str = "issue_sealed") -> dict[str, Any]:
        tid = row["tenant_id"]
        if row["patient_id"] is not None:
            dek = self.lv.gate.patient_key(conn, tid, row["patient_id"])
            raw = self.lv.gate.open_patient_value(dek, tid, "lab_import_issues", column,
                                                  row["issue_id"], row[column])
        else:
            raw = self.lv.gate.open_tenant_value_checked(conn, tid, "lab_import_issues",
                                                         column, row["issue_id"], row[column])
        data: dict[str, Any] = json.loads(raw)
        return data

    def _opened(self, conn: Connection, row: Mapping[str, Any]) -> dict[str, Any]:
        """An issue's payload and, once handled, its ``resolution``: who (``by``), when
        (``at``), and what was done (a discard's ``reason``, a resolution's ``codes``...)."""
        payload = self._open_issue(conn, row)
        if row["resolution_sealed"] is not None:
            payload["resolution"] = self._open_issue(conn, row, "resolution_sealed")
        return payload

    def _name_handlers(self, conn: Connection, tenant_id: str,
                       issues: Sequence[Mapping[str, Any]]) -> None:
        """``resolution.by_name``: the name of the laboratory's staff member who handled
        each issue (``by`` keeps the account id); None for the CLI operator or an account
        gone since, whose id is what there is. In the caller's transaction, after its gate
        decision on the issues (like an alert's ``acked_by_name``)."""
        handled = [i["resolution"] for i in issues if i.get("resolution")]
        names = self.lv.accounts.staff_names(conn, tenant_id, (r.get("by") for r in handled))
        for r in handled:
            r["by_name"] = names.get(r.get("by") or "")

    def list_issues(self, actor: Actor, tenant_id: str,
                    status: str | Sequence[str] | None = "open", limit: int = 500, *,
                    newest_first: bool = False, detailed: bool = False
                    ) -> list[dict[str, Any]]:
        """Open (or all, or those of the statuses given) import issues, opened through the
        gate (one decision, one audited read for the list). ``detailed``: each issue as
        ``get_issue`` gives it (``panic_values``, ``unknown_codes``) where the results are
        opened -- a page showing the queue needs no second read per issue."""
        self.lab._scope(actor, tenant_id, "laboratory")
        statuses = [status] if isinstance(status, str) else list(status or ()) or None
        with self.lv.begin() as conn:
            if repo.get_tenant(conn, tenant_id) is None:
                raise NotFound(f"no laboratory {tenant_id}", "labvault tenant list")
            rows = lrepo.issues(conn, tenant_id, statuses, limit, newest_first)
            decision = self.lv.gate.check(conn, Access(
                actor, Action.READ, tenant_id, ISSUE_CATEGORIES, resource="import-issue",
                patient_ids=tuple(dict.fromkeys(r["patient_id"] for r in rows
                                                if r["patient_id"]))))
            out = []
            for r in rows:
                try:
                    opened = self._opened(conn, r)
                    payload = issue_as_seen(opened, decision)
                    if detailed:
                        payload.update(self._details(conn, tenant_id, opened, decision))
                except NotFound:      # the patient was erased meanwhile
                    payload = {"erased": True}
                out.append({"id": r["issue_id"], "kind": r["kind"], "status": r["status"],
                            "patient_id": r["patient_id"], "message_id": r["message_id"],
                            "created_at": r["created_at"], "resolved_at": r["resolved_at"],
                            **payload})
            self._name_handlers(conn, tenant_id, out)
            return out

    def resolve_issue(self, actor: Actor, issue_id: str, *, patient_id: str | None = None,
                      code: str | None = None, codes: Mapping[str, str] | None = None
                      ) -> dict[str, Any]:
        """Re-process the kept results with a human's answer: the patient they belong to
        and/or the LOINC code each unknown code means (``codes``: local -> LOINC; ``code``
        alone when the issue has one unknown code). A mapping applies only to the results
        whose code is not in the catalogue. What can be stored is stored; what still cannot
        becomes a new issue of its own (``left_as``). One transaction."""
        with self.lv.begin() as conn:
            row = self._open_row(conn, actor, issue_id)
            tid = row["tenant_id"]
            if row["kind"] in WHOLE_MESSAGE_KINDS:
                raise IssueRefused("whole-message", f"issue {issue_id} ({row['kind']}) holds "
                                   "a message, not results to store",
                                   _RESOLVE_HINTS[row["kind"]])
            target = patient_id or row["patient_id"]
            if target is None:
                raise IssueRefused("patient-needed", f"issue {issue_id} needs the patient "
                                   "its results belong to", "give --patient pt_... (REST: "
                                   "patient_id; labvault patient find ...)")
            if repo.patient_tenant(conn, target) != tid:
                # a patient this laboratory does not hold: a refusal in its chain
                self.lab.record_absent(conn, actor, Action.WRITE, "import-issue", "patient",
                                       target, tid)
                raise IssuePatientAbsent(target)
            self.lv.gate.check(conn, Access(actor, Action.WRITE, tid, CLINICAL,
                                            resource="import-issue",
                                            patient_ids=(target,)))
            payload = self._open_issue(conn, row)
            results = [I.InboundResult.from_json(r) for r in payload["results"]]
            group = _group_of(payload["order"], results)
            cat = self.lab._catalogue(conn, tid)
            mapping = self._code_mapping(cat, results, code, codes or {})
            msg = I.InboundMessage("ORU", "R01", row["message_id"] or issue_id, "issue", "2.5",
                                   None, (group,))
            ctx = _Ctx(conn, actor, tid, row["message_id"] or issue_id,
                       I.IngestOutcome("AA", patient_id=target), [])
            if mapping:
                cat = L.Catalogue(cat.version, cat.tests, {**cat.by_local, **mapping})
            try:
                self._store_group(ctx, target, group, cat, msg)
            except I.ContentError as exc:
                raise IssueRefused("cannot-store", f"cannot store the results: {exc}",
                                   "fix and retry, or discard the issue",
                                   why=str(exc)) from None
            if ctx.issues and not ctx.outcome.observation_ids:
                reasons = "; ".join(i["payload"]["reason"] for i in ctx.issues)
                kinds = dict.fromkeys(i["kind"] for i in ctx.issues)
                raise IssueRefused("still-not-stored",
                                   f"the results still cannot be stored: {reasons}",
                                   "; ".join(_RESOLVE_HINTS.get(k, _DISCARD_HINT)
                                             for k in kinds), why=reasons)
            self._write_issues(ctx)       # what still cannot be stored: an issue of its own
            ts = self.lv.now()
            resolution = {"by": actor.id, "at": ts.isoformat(), "patient_id": target,
                          "codes": mapping, "observation_ids": ctx.outcome.observation_ids,
                          "left_as": [i["issue_id"] for i in ctx.issues]}
            lrepo.update_issue(conn, tid, issue_id, status="resolved", resolved_at=ts,
                               resolution_sealed=self._seal_issue(
                                   conn, tid, row["patient_id"], issue_id, "resolution_sealed",
                                   resolution))
            self._close_panic_alert(conn, actor, tid, issue_id, "resolved", patient_id=target,
                                    left_as=[i["issue_id"] for i in ctx.issues])
            return {"id": issue_id, "status": "resolved", **resolution}

    def _close_panic_alert(self, conn: Connection, actor: Actor, tenant_id: str,
                           issue_id: str, resolution: str, patient_id: str | None = None,
                           left_as: Sequence[str] = ()) -> None:
        """The issue's open ``panic-value`` alert (raised when its critical value came into
        the queue: ``_write_issues``) closes with the issue, its note saying how: resolved
        -- the results are the patient's now, and a value still beyond a panic limit is
        alerted by the results' own path, naming the patient, order and result
        (``lab._panic_alert``); what could not be stored is a new issue, alerted on its own
        (``left_as``) -- or discarded (the reason stays sealed with the issue). Nothing to
        close without the guard's alert store (log lines)."""
        close = getattr(self.lv.alerts, "close_about", None)
        if close is None:
            return
        note: dict[str, Any] = {"by": "import-issue", "issue_id": issue_id,
                                "resolution": resolution}
        if patient_id is not None:
            note["patient_id"] = patient_id
        if left_as:
            note["left_as"] = list(left_as)
        close(conn, actor, tenant_id, "panic-value", issue_id, note)

    def _open_row(self, conn: Connection, actor: Actor, issue_id: str) -> dict[str, Any]:
        """The issue's row, if open and in the actor's laboratory (to handle it: a write).
        An id the laboratory does not hold is a refusal recorded in its chain; one of its
        own issues handled already answers the same, unrecorded (nothing was probed)."""
        row = lrepo.issue(conn, issue_id)
        if row is None or not self.lab._in_scope(actor, row["tenant_id"]):
            raise self.lab._refused_absent(conn, actor, Action.WRITE, "import-issue",
                                           "import-issue", issue_id)
        if row["status"] != "open":
            raise absent("import-issue")
        return row

    def _code_mapping(self, cat: L.Catalogue, results: Sequence[I.InboundResult],
                      code: str | None, codes: Mapping[str, str]) -> dict[str, str]:
        """local code -> catalogue test, for the results whose code is unknown only."""
        unknown = list(dict.fromkeys(r.code for r in results
                                     if self._resolve_code(cat, r.code, r.code_system) is None))
        wanted = dict(codes)
        if code is not None:
            if len(unknown) != 1:
                raise IssueRefused(
                    "code-ambiguous",
                    f"--code {code} alone is ambiguous: the unknown codes of this issue are "
                    f"{', '.join(unknown) or 'none'}",
                    "say which is which: --code LOCAL=LOINC, once per unknown code",
                    code=code, unknown=", ".join(unknown))
            wanted[unknown[0]] = code
        out: dict[str, str] = {}
        for local, loinc in wanted.items():
            if local not in unknown:
                raise IssueRefused("code-not-unknown", f"{local} is not an unknown code of "
                                   f"this issue (its unknown codes: "
                                   f"{', '.join(unknown) or 'none'})",
                                   "map only the codes the catalogue does not know",
                                   code=local)
            test = L.loinc(loinc, "code")
            if test not in cat.tests:
                raise IssueRefused("code-not-in-catalogue",
                                   f"{test} is not in catalogue {cat.version}",
                                   "labvault catalogue show --tenant ... lists its LOINC codes",
                                   code=test)
            out[local] = test
        return out

    def _store_group(self, ctx: _Ctx, pid: str, group: I.InboundOrder, cat: L.Catalogue,
                     msg: I.InboundMessage) -> None:
        existing = self._find_order(ctx, group)
        if existing is None:
            tests = [t.code for r in group.results
                     if (t := self._resolve_code(cat, r.code, r.code_system)) is not None]
            if not tests:
                self._issue(ctx, "unknown-code", pid, group, list(group.results), None,
                            group.location, "no result code is in the catalogue",
                            codes=_codes_sent(group.results))
                return
            facts = self.lab._patient_facts(ctx.conn, ctx.actor, ctx.tenant_id, pid)
            req = group.request or L.ServiceRequest(())
            existing = self.lab._create_order(ctx.conn, ctx.actor, ctx.tenant_id, pid,
                                              L.ServiceRequest(tuple(dict.fromkeys(tests)),
                                                               req.priority, req.prescriber,
                                                               req.clinical_notes,
                                                               group.placer_number,
                                                               group.filler_number), facts)
        if existing.patient_id != pid:
            raise I.ContentError([_another_patients(group)])
        self.lab._attach_numbers(ctx.conn, existing, group.placer_number, group.filler_number)
        if existing.status == L.OrderStatus.REGISTERED:
            spec = group.specimen or L.Specimen("BLD", self.lv.now(), (
                group.filler_number or group.placer_number or existing.order_id)[:64])
            self.lab._receive(ctx.conn, ctx.actor, existing, spec)
        mapping = {k: v for k, v in cat.by_local.items()}
        self._results(ctx, existing, group, cat, mapping)

    def discard_issue(self, actor: Actor, issue_id: str, reason: str | None,
                      all_results: bool = False) -> dict[str, Any]:
        """Close an issue without storing its results (reason kept, sealed). An issue
        holding several results is discarded only with ``all_results``: they may not all
        be wrong (resolving stores those that can be, and keeps the rest as a new issue)."""
        from labvault.domain import validation as v
        if not (reason or "").strip():
            raise IssueRefused("reason-needed", "discarding an issue needs a reason (kept "
                               "with it)", 'add --reason "..." (REST: reason; e.g. "duplicate '
                               'of a paper result")')
        why = v.text(reason, "reason", 2000, required=True)
        with self.lv.begin() as conn:
            row = self._open_row(conn, actor, issue_id)
            tid = row["tenant_id"]
            pids = (row["patient_id"],) if row["patient_id"] else ()
            if row["kind"] == MERGE_REQUEST:
                # declining a merge is identity vigilance's decision, like the merge itself
                self.lv.gate.check(conn, _merge_access(actor, tid, pids))
            else:
                self.lv.gate.check(conn, Access(actor, Action.WRITE, tid, CLINICAL,
                                                resource="import-issue", patient_ids=pids))
            results = self._open_issue(conn, row).get("results") or []
            if len(results) > 1 and not all_results:
                codes_sent = ", ".join(str(r.get("code")) for r in results)
                raise IssueRefused(
                    "several-results",
                    f"issue {issue_id} holds {len(results)} results ({codes_sent}): "
                    "discarding throws all of them away",
                    "resolve it instead (what can be stored is, the rest stays as a new "
                    "issue), or confirm with --all-results (REST: all_results)",
                    n=str(len(results)), codes=codes_sent)
            ts = self.lv.now()
            resolution = {"by": actor.id, "at": ts.isoformat(), "discarded": True, "reason": why,
                          "results": len(results)}
            lrepo.update_issue(conn, tid, issue_id, status="discarded", resolved_at=ts,
                               resolution_sealed=self._seal_issue(
                                   conn, tid, row["patient_id"], issue_id, "resolution_sealed",
                                   resolution))
            self._close_panic_alert(conn, actor, tid, issue_id, "discarded")
            return {"id": issue_id, "status": "discarded", "by": actor.id, "at": ts.isoformat(),
                    "results_discarded": len(results)}

    # == misc ===================================================================================
    def tenant_for_facility(self, facility: str) -> str | None:
        """The laboratory whose FINESS is ``facility`` (MSH-6), if any."""
        with self.lv.begin() as conn:
            row = repo.tenant_by_finess(conn, facility.strip().upper())
            return str(row["tenant_id"]) if row else None

    def count(self, tenant_id: str) -> int:
        with self.lv.begin() as conn:
            return lrepo.count_messages(conn, tenant_id)


def _resolution_as_seen(resolution: Mapping[str, Any], clinical: bool,
                        withheld: list[str]) -> dict[str, Any]:
    """A handled issue's ``resolution``: who and when for every reader of the issue; what
    it says of the results (a discard's reason, the codes mapped...) only with the
    clinical category whole, like the issue's own ``reason``."""
    out = {}
    for key, value in resolution.items():
        if key in _RESOLUTION_CLINICAL and not clinical:
            withheld.append(f"resolution.{key}")
        else:
            out[key] = value
    return out


def issue_as_seen(payload: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """What of an import issue's payload ``decision`` opens (docs/access-policy.md, the
    ``import-issue`` rows): without ``clinical``, no result, order, reason or raw message;
    the patient as sent only in the categories and fields granted — a technician (identity
    restricted to names, birth date and sex) sees the name, birth date and sex the analyser
    sent, not the NIR or other identifiers (any of them may be the NIR), nor the raw
    message that holds them. A handled issue's ``resolution`` says who handled it and when
    to every reader, what it says of the results (a discard's reason) only to those the
    results are opened to (``_resolution_as_seen``). ``withheld`` lists what was left out,
    so that a page can say why something is missing."""
    cats = decision.categories
    only: Mapping[str, Any] = decision.detail.get("fields", {})

    def shown(cat: Category, name: str) -> bool:
        return cat in cats and (cat.value not in only or name in only[cat.value])

    def whole(cat: Category) -> bool:
        return cat in cats and cat.value not in only

    out: dict[str, Any] = {}
    withheld: list[str] = []
    for key, value in payload.items():
        if key in _ISSUE_CLINICAL and (not whole(Category.CLINICAL) or (
                key in ("message", "control_id") and not whole(Category.IDENTITY))):
            withheld.append(key)        # the raw message holds the PID as sent, NIR included
            continue
        if key == "resolution" and value is not None:
            out[key] = _resolution_as_seen(value, whole(Category.CLINICAL), withheld)
            continue
        if key != "patient" or value is None:
            out[key] = value
            continue
        patient: dict[str, Any] = {}
        if value.get("identifiers"):
            if shown(Category.IDENTITY, "nir"):
                patient["identifiers"] = value["identifiers"]
            else:
                withheld.append("patient.identifiers")
        summary = {k: v for k, v in (value.get("summary") or {}).items()
                   if any(shown(Category.IDENTITY, f) for f in _SUMMARY_FIELDS.get(k, (k,)))}
        patient["summary"] = summary
        record = value.get("record")
        if record:
            kept = {c: {k: v for k, v in fields.items() if shown(Category(c), k)}
                    for c, fields in record.items() if Category(c) in cats}
            patient["record"] = {c: f for c, f in kept.items() if f} or None
            if any(set(fields) - set(kept.get(c, {})) for c, fields in record.items()):
                withheld.append("patient.record")
        else:
            patient["record"] = record
        out["patient"] = patient
    if withheld:
        out["withheld"] = withheld
    return out
