"""Identity vigilance: merging a duplicate patient record into the record kept.

Duplicates happen: a patient registered at the desk without a NIR, then again by the
prescriber's system with it; an ADT with a typo. Their results split between two records
and the previous results (the delta check) are missed. The laboratory's identity
vigilance referent (role ``lab_admin``, policy resource ``patient-merge``, purpose
``administration``) merges them: the *survivor* is kept as it is (its identity is the
right one); everything the *duplicate* holds moves to it, in one transaction:

- every row of ``MOVED`` whose ``patient_id`` is the duplicate's gets the survivor's id,
  and each of its values sealed under the duplicate's data key is opened and sealed again
  under the survivor's (same table, column and row id: the associated data is the row's,
  only the key changes);
- the duplicate's own rows (``DROPPED``) are deleted: its data key, its search indexes (a
  NIR search finds only the survivor), its breach-matching encoding;
- its external id (and the former ids it kept from earlier merges) become former ids of
  the survivor (``PatientRecord.former_ids``: sealed in its identity, indexed as external
  ids), so what still knows the duplicate by its id -- an analyser's middleware, a
  hospital's ADT, a prescriber's FHIR client -- finds the record kept;
- the duplicate's ``patients`` row stays as a tombstone: ``status = 'merged'``, every
  sealed category emptied, ``merged_into`` = the survivor's id;
- the audit trail is never rewritten (``KEPT``): entries stay as written, naming the
  duplicate's id; "who saw my record" of the survivor follows the tombstones back.

A merge is not an erasure: nothing is written to the shred log. Restoring a backup taken
before the merge brings both records back unmerged -- that is what restoring to that
point means -- and the merge has to be done again (an erasure is replayed after a
restore, a merge must not be: the duplicate's data is not destroyed, it lives on under the
survivor's key).

``test_every_patient_table_is_listed`` (tests/foundation/test_merge.py) fails when a
table with a ``patient_id`` column appears in the schema without being listed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from labvault.crypto import DataKey, SealContext
from labvault.crypto import blind_index as bi
from labvault.domain.actors import Actor
from labvault.domain.categories import PATIENT_CATEGORIES, Action, Category
from labvault.domain.patient import MAX_FORMER_IDS, PatientRecord, distinct_former_ids
from labvault.errors import InvalidRecord, MergeRefused, NotFound, TooManyFormerIds, UserError
from labvault.services import identity, indexing
from labvault.services.gate import Access
from labvault.services.patients import opened_identity
from labvault.store import repositories as repo
from labvault.store import repositories_breach as brepo
from labvault.store import repositories_merge as mrepo

if TYPE_CHECKING:
    from labvault.services.app import Labvault

RESOURCE = "patient-merge"
PURPOSE = "administration"
ALL = frozenset(PATIENT_CATEGORIES)
# Traits that, when the two records differ on them, say two different people: refused
# unless forced (a merge of two people is worse than a duplicate). Names may differ: a
# typo is what makes a duplicate. Identifiers count only when both records carry one.
BLOCKING = ("birth_date", "sex", "nir", "ins")
MIN_REASON = 5


@dataclass(frozen=True, slots=True)
class Moved:
    """A table whose rows of the duplicate move to the survivor."""

    table: str
    key: str                                 # the row id (the sealed values' record id)
    sealed: tuple[str, ...] = ()             # columns sealed under the patient's data key
    note: str = ""


# Every table holding a patient's rows, in the order they are moved.
MOVED: tuple[Moved, ...] = (
    Moved("lab_orders", "order_id", ("request_sealed", "workflow_sealed")),
    Moved("lab_specimens", "specimen_id", ("specimen_sealed",)),
    Moved("lab_observations", "observation_id", ("result_sealed",)),
    Moved("lab_observation_history", "history_id", ("change_sealed",)),
    Moved("lab_reports", "report_id", ("report_sealed",)),
    Moved("lab_hl7_messages", "message_id", ("raw_sealed",),
          note="raw is under the patient's key when patient_id is set; the ACK is the lab's"),
    Moved("lab_import_issues", "issue_id", ("issue_sealed", "resolution_sealed"),
          note="under the patient's key when patient_id is set"),
    Moved("delivery_outbox", "outbox_id", ("message_sealed",),
          note="error_sealed is under the lab's data key: unchanged"),
    Moved("accounts", "account_id",
          note="a portal account of the duplicate now opens the survivor's record"),
)

# The duplicate's own rows, deleted for its tombstone.
DROPPED: dict[str, str] = {
    "patient_keys": "the duplicate's data key: nothing is sealed under it any more",
    "blind_index": "the duplicate's search indexes: a search finds only the survivor "
                   "(its external ids through the survivor's former ids)",
    "breach_encodings": "the duplicate's breach-matching encoding (the survivor has its own)",
}

# Tables with a patient_id column left as they are.
KEPT: dict[str, str] = {
    "patients": "the duplicate's row becomes the tombstone (status merged, merged_into)",
    "audit_entries": "the audit chain is never rewritten: entries stay as written",
    "audit_refs": "the audit chain is never rewritten: entries stay as written",
    "shred_log": "erasures only: an erased record cannot be merged",
}


@dataclass
class MergeReport:
    survivor_id: str
    duplicate_id: str
    tenant_id: str
    moved: dict[str, int] = field(default_factory=dict)
    differing: list[str] = field(default_factory=list)
    forced: bool = False
    merged_at: str = ""
    requests: list[str] = field(default_factory=list)   # merge-request issues it closed
    former_ids: int = 0      # the duplicate's external ids kept as the survivor's (a count)

    def as_json(self) -> dict[str, Any]:
        return {"survivor_id": self.survivor_id, "duplicate_id": self.duplicate_id,
                "tenant_id": self.tenant_id, "moved": self.moved,
                "differing": self.differing, "forced": self.forced,
                "merged_at": self.merged_at, "requests": self.requests,
                "former_ids_kept": self.former_ids}


def _state(lv: Labvault, conn: Connection, actor: Actor, patient_id: str) -> tuple[str, str]:
    """(laboratory, status) of a record the actor may name; another laboratory's or an
    absent one is refused as absent (``Gate.refuse_absent``) with the same 404 as today."""
    st = mrepo.patient_state(conn, patient_id, lock=True)
    if st is None or (actor.kind not in ("operator", "system")
                      and actor.tenant_id != st["tenant_id"]):
        lv.gate.refuse_absent(conn, Access(actor, Action.WRITE, actor.tenant_id, ALL,
                                           purpose=PURPOSE, resource=RESOURCE),
                              "patient", patient_id)
        raise NotFound("no such patient", "check the patient id")
    if st["status"] == "merged":
        raise MergeRefused(f"patient {patient_id} was already merged into {st['merged_into']}",
                           "merge into the record it was merged into, or leave it")
    if st["status"] != "active":
        raise MergeRefused(f"patient {patient_id} is {st['status']}: it cannot be merged",
                           "an erased record holds nothing to move")
    return str(st["tenant_id"]), str(st["status"])


def differing(survivor: Mapping[str, Any], duplicate: Mapping[str, Any]) -> list[str]:
    """The identity traits and identifiers on which the two records differ
    (``identity.differing``); every trait when the duplicate's cannot be read as a record."""
    try:
        rec = PatientRecord.parse(dict(duplicate))
    except InvalidRecord:
        return list(identity.TRAITS)
    return identity.differing(survivor, rec)


def former_ids_after(survivor: Mapping[str, Any], duplicate: Mapping[str, Any]
                     ) -> tuple[str, ...]:
    """The survivor's former ids once the duplicate is merged into it: its own, then the
    duplicate's external id and former ids (repeats and the survivor's external id left
    out). Past ``MAX_FORMER_IDS`` the merge is refused (``MergeRefused``)."""
    ids = [str(x) for x in (*(survivor.get("former_ids") or ()),
                            duplicate.get("external_id"),
                            *(duplicate.get("former_ids") or ())) if x]
    own = survivor.get("external_id")
    try:
        return distinct_former_ids(ids, str(own) if own else None)
    except TooManyFormerIds as exc:
        raise MergeRefused(f"the record kept would have more than {MAX_FORMER_IDS} former "
                           "identifiers", exc.hint) from None


@dataclass(frozen=True)
class Comparison:
    """The two records as a merge would find them (``MergeService.compare``): the traits
    and identifiers on which they differ, by name only."""

    survivor_id: str
    duplicate_id: str | None
    tenant_id: str
    differing: list[str]

    @property
    def blocking(self) -> list[str]:
        """The differences a merge refuses unless forced (``BLOCKING``)."""
        return [d for d in self.differing if d in BLOCKING]


class MergeService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def merge(self, actor: Actor, survivor_id: str, duplicate_id: str, reason: str,
              force: bool = False) -> MergeReport:
        """Move everything of ``duplicate_id`` to ``survivor_id`` (module docstring).
        Refused (``MergeRefused``, ``NotFound``, ``AccessDenied``; nothing changed) for the
        same id twice, another laboratory's or an absent record, an erased or merged one, a
        honeytoken, or records whose birth date, sex, NIR or INS differ (unless ``force``)."""
        reason = (reason or "").strip()
        if len(reason) < MIN_REASON:
            raise UserError("a merge needs a written reason",
                            f"say why the two records are the same person (at least "
                            f"{MIN_REASON} characters): it is kept, sealed, in the audit trail")
        if survivor_id == duplicate_id:
            raise MergeRefused("the survivor and the duplicate are the same record",
                               "give the id of the record kept, then the duplicate's")
        lv = self.lv
        with lv.begin() as conn:
            tenant_id, keep, gone, diff, idents = self._decided(conn, actor, survivor_id,
                                                                duplicate_id, reason)
            blocking = [d for d in diff if d in BLOCKING]
            if blocking and not force:
                raise MergeRefused(
                    f"the two records differ on {', '.join(blocking)}: they may be two "
                    "different people", "check both identities; if they are the same person "
                    "(a typing error), merge with --force (force=true) and say why")
            former = former_ids_after(*idents)
            at = lv.now()
            report = MergeReport(survivor_id, duplicate_id, tenant_id, differing=diff,
                                 forced=bool(blocking), merged_at=at.isoformat())
            for spec in MOVED:
                report.moved[spec.table] = self._move(conn, spec, tenant_id, duplicate_id,
                                                      survivor_id, gone, keep)
            brepo.delete_encodings(conn, tenant_id, duplicate_id)
            mrepo.tombstone(conn, tenant_id, duplicate_id, survivor_id, at)
            report.former_ids = self._keep_identifiers(conn, actor, tenant_id, survivor_id,
                                                       keep, idents[0], former)
            # an ADT^A40 asking for this merge (an import issue) is answered by it
            report.requests = lv.lab.messages.close_merge_requests(conn, actor, tenant_id,
                                                                   survivor_id, duplicate_id)
            lv.gate.audit.event(conn, actor, "patient.merge", "success", tenant_id, {
                "patient_ids": [survivor_id, duplicate_id], "survivor_id": survivor_id,
                "duplicate_id": duplicate_id, "resource": RESOURCE, "purpose": PURPOSE,
                "records": sum(report.moved.values()), "forced": report.forced,
                "differing": diff, "reason": reason,
                "moved": [f"{t}={n}" for t, n in report.moved.items() if n],
                "former_ids_kept": report.former_ids, "issue_ids": report.requests})
        return report

    def compare(self, actor: Actor, survivor_id: str,
                duplicate_id: str | None) -> Comparison:
        """What the merge of ``duplicate_id`` into ``survivor_id`` would find, before it is
        asked (the console's merge form): which traits and identifiers differ -- their
        names, never their values -- and which of them would refuse it unless forced.
        Refused exactly as ``merge`` would be (same checks, the same audited gate
        decisions of ``patient-merge``, marked ``step: compare``); nothing changed.
        ``duplicate_id`` None: the record kept alone is checked (the form's first step)."""
        if survivor_id == duplicate_id:
            raise MergeRefused("the survivor and the duplicate are the same record",
                               "give the id of the record kept, then the duplicate's")
        with self.lv.begin() as conn:
            if duplicate_id is None:
                tenant_id = _state(self.lv, conn, actor, survivor_id)[0]
                self._check(conn, actor, tenant_id, survivor_id, None,
                            {"merge": "survivor", "step": "compare"})
                return Comparison(survivor_id, None, tenant_id, [])
            tenant_id, _, _, diff, _ = self._decided(conn, actor, survivor_id, duplicate_id,
                                                     None, step="compare")
        return Comparison(survivor_id, duplicate_id, tenant_id, diff)

    def _check(self, conn: Connection, actor: Actor, tenant_id: str, pid: str,
               reason: str | None, detail: dict[str, Any]) -> None:
        """The gate's decision of a ``patient-merge`` write of ``pid`` (a honeytoken:
        refused, audited)."""
        lv = self.lv
        access = Access(actor, Action.WRITE, tenant_id, ALL, purpose=PURPOSE,
                        patient_ids=(pid,), reason=reason, resource=RESOURCE)
        if lv.guard.is_canary(conn, tenant_id, pid):
            lv.gate.refuse(conn, access, "honeytoken")
            raise MergeRefused(f"patient {pid} cannot be merged",
                               "it is a honeytoken record (docs/guard.md)")
        lv.gate.check(conn, access, detail=detail)

    def _decided(self, conn: Connection, actor: Actor, survivor_id: str, duplicate_id: str,
                 reason: str | None, step: str = "merge"
                 ) -> tuple[str, DataKey, DataKey, list[str],
                            tuple[dict[str, Any], dict[str, Any]]]:
        """Both records checked (``_state``, one laboratory, no honeytoken) and the gate's
        decision for each: (laboratory, survivor's key, duplicate's key, traits differing,
        (survivor's identity, duplicate's))."""
        lv = self.lv
        # both rows locked, in id order (two merges of the same pair cannot deadlock)
        states = {pid: _state(lv, conn, actor, pid)
                  for pid in sorted((survivor_id, duplicate_id))}
        tenant_id = states[survivor_id][0]
        if states[duplicate_id][0] != tenant_id:        # the operator, across labs
            raise MergeRefused("the two records belong to different laboratories",
                               "a merge joins two records of one laboratory")
        lv.load_tenant_keys(conn, tenant_id)
        for pid in (survivor_id, duplicate_id):
            detail: dict[str, Any] = {"merge": "survivor" if pid == survivor_id
                                      else "duplicate"}
            if step != "merge":
                detail["step"] = step
            self._check(conn, actor, tenant_id, pid, reason, detail)
        keep = lv.gate.patient_key(conn, tenant_id, survivor_id)
        gone = lv.gate.patient_key(conn, tenant_id, duplicate_id)
        survivor = opened_identity(lv, conn, tenant_id, survivor_id, keep)
        duplicate = opened_identity(lv, conn, tenant_id, duplicate_id, gone)
        return (tenant_id, keep, gone, differing(survivor, duplicate),
                (survivor, duplicate))

    def _keep_identifiers(self, conn: Connection, actor: Actor, tenant_id: str,
                          survivor_id: str, keep: DataKey, survivor: Mapping[str, Any],
                          former: tuple[str, ...]) -> int:
        """The survivor's former ids become ``former`` (``former_ids``): sealed in its
        identity, the new ones indexed as external ids, so a system still sending the
        duplicate's id finds the record kept (docs/security-model.md, "Merging
        duplicates"). After the tombstone (the duplicate's index rows are gone). Returns
        how many identifiers the survivor gained."""
        before = [str(x) for x in survivor.get("former_ids") or ()]
        new = [f for f in former if f not in before]
        if not new:
            return 0
        lv = self.lv
        access = Access(actor, Action.WRITE, tenant_id, frozenset({Category.IDENTITY}),
                        purpose=PURPOSE, patient_ids=(survivor_id,), resource=RESOURCE)
        repo.update_patient_blobs(conn, tenant_id, survivor_id, lv.gate.seal_patient(
            conn, access, keep, survivor_id,
            {Category.IDENTITY: {**survivor, "former_ids": list(former)}}))
        idx = repo.current_key_version(conn, tenant_id, "index")
        assert idx is not None
        repo.add_index_rows(conn, tenant_id, survivor_id, indexing.digests(
            lv.keyring.blind_index_key(tenant_id, idx), [(bi.EXTERNAL_ID, f) for f in new]))
        return len(new)

    def _move(self, conn: Connection, spec: Moved, tenant_id: str, duplicate_id: str,
              survivor_id: str, gone: DataKey, keep: DataKey) -> int:
        rows = mrepo.rows_of_patient(conn, spec.table, tenant_id, duplicate_id, spec.key,
                                     spec.sealed)
        for row in rows:
            rid = str(row[spec.key])
            values = {col: reseal(self.lv, tenant_id, spec.table, col, rid, row[col], gone, keep)
                      for col in spec.sealed if row[col] is not None}
            mrepo.move_row(conn, spec.table, tenant_id, spec.key, rid, survivor_id, values)
        return len(rows)


def reseal(lv: Labvault, tenant_id: str, table: str, column: str, record_id: str,
           sealed: bytes, gone: DataKey, keep: DataKey) -> bytes:
    """A value sealed under the duplicate's key, sealed again under the survivor's: same
    place (tenant, table, column, row id), so only the key changes."""
    plain = lv.gate.open_patient_value(gone, tenant_id, table, column, record_id, bytes(sealed))
    return keep.seal(SealContext(tenant_id, table, column, record_id), plain)
