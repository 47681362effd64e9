"""Patients: register, import (legacy migration), find, show, update, erase.

Every method takes the acting ``Actor`` and passes the gate.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError as DbIntegrityError

from labvault.crypto import DataKey
from labvault.crypto import blind_index as bi
from labvault.domain.actors import Actor
from labvault.domain.categories import PATIENT_CATEGORIES, Action, Category
from labvault.domain.patient import FIELD_CATEGORIES, IMPORT_FIELDS, PatientRecord
from labvault.errors import (
    AccessDenied,
    IdentifierTaken,
    InvalidField,
    InvalidRecord,
    NotFound,
    RecordChanged,
    UnreadableFile,
    UserError,
)
from labvault.services import indexing
from labvault.services.gate import Access
from labvault.store import driver_sql
from labvault.store import repositories as repo
from labvault.store.ids import new_id
from labvault.textfiles import DuplicateKey, loads_unique_keys, sniff_delimiter

if TYPE_CHECKING:
    from labvault.services.app import Labvault

ALL = frozenset(PATIENT_CATEGORIES)
IMPORT_BATCH = 500
MAX_LINE_BYTES = 64 * 1024


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0            # already imported (same external_id)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"imported": self.imported, "skipped_existing": self.skipped,
                "rejected": len(self.rejected), "rejections": self.rejected}


@dataclass
class _Prepared:
    line: int
    patient_id: str
    external_digest: bytes | None
    row: dict[str, Any]
    key: dict[str, Any]
    index: list[dict[str, Any]]
    rec: PatientRecord | None = None


# Called in the writer's transaction after patients are written: (conn, tenant id,
# [(patient id, record)], fresh) — e.g. breach-matching encodings (services/breach.py).
WriteHook = Callable[[Connection, str, Sequence[tuple[str, PatientRecord]], bool], None]
EraseHook = Callable[[Connection, str, str], None]


def _first_line(raw: str | bytes) -> str | bytes:
    """The first line says what the file is. A UTF-8 byte-order mark (Excel's and
    Notepad's "UTF-8") is still UTF-8: dropped. A UTF-16 file or a CSV file is refused
    whole, by name, before anything is imported — line by line they would only give a
    "not valid JSON" per line, or a latin-1 hint that would garble UTF-16."""
    if isinstance(raw, bytes):
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _utf16_text(raw):
            raise UnreadableFile("the file is UTF-16, not UTF-8",
                                 "save it as UTF-8 (iconv -f UTF-16 -t UTF-8 FILE > "
                                 "FILE.utf8.ndjson)")
        raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw                  # the line's own rejection says "not UTF-8"
    else:
        raw = text = raw.removeprefix("\ufeff")
    delimiter = _csv_delimiter(text)
    if delimiter:
        raise UnreadableFile(f"the file looks like CSV (fields separated by {delimiter!r}), "
                             "not NDJSON",
                             "patient import reads one JSON object per line (docs/formats.md); "
                             "convert the CSV first")
    return raw


def _utf16_text(line: bytes) -> bool:
    """UTF-16 without a byte-order mark: ASCII characters with a zero byte between them."""
    head = line[:16]
    return len(head) >= 8 and (not any(head[1::2]) or not any(head[0::2]))


def _csv_delimiter(line: str) -> str | None:
    """The delimiter of a line that is no JSON but CSV (a header or a record), else None."""
    stripped = line.strip()
    if not stripped or stripped[0] in "{[":
        return None
    try:
        json.loads(stripped)
        return None
    except json.JSONDecodeError:
        pass
    delimiter = sniff_delimiter(stripped)
    return delimiter if delimiter in stripped else None


# Former identifiers are a merge's (services/merge.py): no door gives them to a record.
NEW_RECORD_FORMER_IDS = ("a new record has no former identifiers: a merge of a duplicate "
                         "into a record keeps the duplicate's external ids there")


def _no_former_ids() -> InvalidField:
    return InvalidField("former_ids", NEW_RECORD_FORMER_IDS, "leave former_ids out")


def opened_identity(lv: Labvault, conn: Connection, tenant_id: str, patient_id: str,
                    dek: DataKey) -> dict[str, Any]:
    """The stored identity category of a patient whose write (or merge) the gate decided:
    opened under its data key, no read decision of its own (nothing leaves the write)."""
    blobs = repo.sealed_patients(conn, tenant_id, (patient_id,), (Category.IDENTITY,))
    blob = blobs.get(patient_id, {}).get(Category.IDENTITY)
    if blob is None:
        return {}
    data: dict[str, Any] = json.loads(lv.gate.open_patient_value(
        dek, tenant_id, "patients", Category.IDENTITY.value, patient_id, blob))
    return data


def former_ids_kept(rec: PatientRecord, stored: Mapping[str, Any]) -> PatientRecord:
    """``rec``, a rewrite of the record whose identity is ``stored``, with the stored
    former identifiers (``PatientRecord.keeping_former_ids``). A write may leave them out
    or send them as a read gave them; another list is refused: only a merge changes them."""
    before = [str(x) for x in stored.get("former_ids") or ()]
    kept = rec.keeping_former_ids(before, stored.get("external_id"))
    if rec.former_ids and set(rec.former_ids) not in (
            set(kept.former_ids), set(before) - {rec.external_id}):
        raise InvalidField("former_ids", "the former identifiers of a record are kept by "
                           "merges only and cannot be changed by a write",
                           "send them as a read of the record gave them, or leave them out")
    return kept


def _times(meta: Mapping[str, Any]) -> dict[str, str | None]:
    return {k: meta[k].isoformat() if meta[k] else None for k in ("created_at", "updated_at")}


class PatientService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv
        self.write_hooks: list[WriteHook] = []
        self.erase_hooks: list[EraseHook] = []

    def _written(self, conn: Connection, tenant_id: str, prepared: Sequence[_Prepared]) -> None:
        items = [(p.patient_id, p.rec) for p in prepared if p.rec is not None]
        for hook in self.write_hooks:
            hook(conn, tenant_id, items, True)

    # -- writing ---------------------------------------------------------------------------
    def _key_versions(self, conn: Connection, tenant_id: str) -> tuple[int, int]:
        """Current (KEK, index key) versions: read once per transaction, not per patient."""
        kek_version = repo.current_key_version(conn, tenant_id, "kek")
        index_version = repo.current_key_version(conn, tenant_id, "index")
        assert kek_version is not None and index_version is not None
        return kek_version, index_version

    def _prepare(self, conn: Connection, access: Access, tenant_id: str, rec: PatientRecord,
                 line: int = 0, versions: tuple[int, int] | None = None,
                 indexer: bi.Indexer | None = None, patient_id: str | None = None,
                 digests: list[tuple[str, bytes]] | None = None) -> _Prepared:
        """``digests``: the record's blind-index digests, when the caller computed them
        already (the import, to check its NIRs) under the current index key."""
        lv = self.lv
        patient_id = patient_id or new_id("pt")
        kek_version, index_version = versions or self._key_versions(conn, tenant_id)
        dek, wrapped = lv.keyring.new_dek(tenant_id, patient_id, kek_version)
        blobs = lv.gate.seal_patient(conn, access, dek, patient_id, rec.categories())
        ts = lv.now()
        if digests is None:
            digests = indexing.digests(
                indexer or lv.keyring.blind_index_key(tenant_id, index_version),
                indexing.index_values(rec))
        ext = next((d for k, d in digests if k == bi.EXTERNAL_ID), None)
        return _Prepared(
            line, patient_id, ext,
            {"tenant_id": tenant_id, "patient_id": patient_id, "status": "active",
             "created_at": ts, "updated_at": ts, **{c.value: b for c, b in blobs.items()}},
            {"tenant_id": tenant_id, "patient_id": patient_id,
             "kek_version": wrapped.kek_version, "wrapped": wrapped.wrapped},
            [{"tenant_id": tenant_id, "kind": k, "digest": d, "patient_id": patient_id}
             for k, d in dict.fromkeys(digests)], rec)

    def _write_access(self, actor: Actor, tenant_id: str, ids: Sequence[str],
                      purpose: str) -> Access:
        return Access(actor, Action.WRITE, tenant_id, ALL, purpose=purpose, patient_ids=tuple(ids))

    def register(self, actor: Actor, tenant_id: str, data: object,
                 purpose: str = "care") -> str:
        """Validate and store one patient (same JSON shape as an import line)."""
        rec = data if isinstance(data, PatientRecord) else PatientRecord.parse(data)
        if rec.former_ids:
            raise _no_former_ids()
        lv = self.lv
        with lv.begin() as conn:
            lv.load_tenant_keys(conn, tenant_id)
            self._identifiers_free(conn, tenant_id, rec)
            # the id is drawn first so that the decision (its audit entry) names the patient
            # registered: "who saw my record" starts with who created it
            patient_id = new_id("pt")
            access = self._write_access(actor, tenant_id, (patient_id,), purpose)
            lv.gate.check(conn, access)
            p = self._prepare(conn, access, tenant_id, rec, patient_id=patient_id)
            with driver_sql.pipelined(conn):      # record, key, index, encodings: one round trip
                repo.insert_patients(conn, [p.row], [p.key], p.index)
                self._written(conn, tenant_id, [p])
            return p.patient_id

    def import_lines(self, actor: Actor, tenant_id: str, lines: Iterable[str | bytes],
                     progress: Callable[[int], None] | None = None) -> ImportReport:
        """NDJSON import: each line all-or-nothing, idempotent on ``external_id``.

        Lines are validated and sealed, then written in batches of ``IMPORT_BATCH``
        (one transaction and one gate decision per batch). A batch that fails to
        write is retried line by line, so one bad line never takes others with it.
        """
        self.lv.tenants.get(tenant_id)  # clear error for an unknown tenant
        report = ImportReport()
        batch: list[tuple[int, PatientRecord]] = []
        for n, raw in enumerate(lines, start=1):
            if progress:
                progress(1)
            rec = self._parse_line(n, _first_line(raw) if n == 1 else raw, report)
            if rec is not None:
                batch.append((n, rec))
            if len(batch) >= IMPORT_BATCH:
                self._import_batch(actor, tenant_id, batch, report)
                batch = []
        if batch:
            self._import_batch(actor, tenant_id, batch, report)
        return report

    def import_records(self, actor: Actor, tenant_id: str, records: Iterable[PatientRecord],
                       progress: Callable[[int], None] | None = None,
                       purpose: str = "migration") -> ImportReport:
        """Bulk import of records that are already typed and validated (``PatientRecord``
        from a door's own mapping, or a benchmark's generator): same sealing, indexes,
        batches, gate decisions and idempotence as ``import_lines``, without the NDJSON
        parsing. ``line`` in the report is the record's 1-based position."""
        self.lv.tenants.get(tenant_id)
        report = ImportReport()
        batch: list[tuple[int, PatientRecord]] = []
        for n, rec in enumerate(records, start=1):
            if progress:
                progress(1)
            batch.append((n, rec))
            if len(batch) >= IMPORT_BATCH:
                self._import_batch(actor, tenant_id, batch, report, purpose)
                batch = []
        if batch:
            self._import_batch(actor, tenant_id, batch, report, purpose)
        return report

    @staticmethod
    def _parse_line(n: int, raw: str | bytes, report: ImportReport) -> PatientRecord | None:
        def reject(field_: str, reason: str) -> None:
            report.rejected.append({"line": n, "field": field_, "reason": reason})

        if isinstance(raw, bytes):
            if len(raw) > MAX_LINE_BYTES:
                reject("(line)", f"longer than {MAX_LINE_BYTES} bytes")
                return None
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                reject("(line)", "not UTF-8; convert the file to UTF-8 (iconv -f latin1 -t utf8)")
                return None
        if not raw.strip():
            return None
        if len(raw) > MAX_LINE_BYTES:
            reject("(line)", f"longer than {MAX_LINE_BYTES} bytes")
            return None
        try:
            obj = loads_unique_keys(raw)
        except DuplicateKey as exc:
            reject(exc.key, "given twice in the line (which value is meant cannot be told); "
                   "keep one")
            return None
        except json.JSONDecodeError as exc:
            reject("(line)", f"not valid JSON: {exc.msg} at column {exc.colno}")
            return None
        try:
            return PatientRecord.parse(obj)
        except InvalidRecord as exc:
            for e in exc.errors:
                reject(e.field, e.rule)
            return None

    def _import_batch(self, actor: Actor, tenant_id: str, batch: list[tuple[int, PatientRecord]],
                      report: ImportReport, purpose: str = "migration") -> None:
        lv = self.lv
        rejected, skipped = len(report.rejected), report.skipped
        try:
            with lv.begin() as conn:
                prepared = self._prepare_batch(conn, actor, tenant_id, batch, report, purpose)
                repo.insert_patients(conn, [p.row for p in prepared], [p.key for p in prepared],
                                     [r for p in prepared for r in p.index])
                self._written(conn, tenant_id, prepared)
        except DbIntegrityError:
            # Rare: a concurrent import of the same external ids. Fall back to one line at a
            # time, each line's skip or rejection counted once (by the line's own attempt).
            del report.rejected[rejected:]
            report.skipped = skipped
            for item in batch:
                try:
                    with lv.begin() as conn:
                        prepared = self._prepare_batch(conn, actor, tenant_id, [item], report,
                                                       purpose)
                        repo.insert_patients(conn, [p.row for p in prepared],
                                             [p.key for p in prepared],
                                             [r for p in prepared for r in p.index])
                        self._written(conn, tenant_id, prepared)
                except DbIntegrityError:
                    report.rejected.append({"line": item[0], "field": "(line)",
                                            "reason": "conflicts with a record written meanwhile"})
                    continue
                report.imported += len(prepared)
                report.ids.extend(p.patient_id for p in prepared)
            return
        report.imported += len(prepared)
        report.ids.extend(p.patient_id for p in prepared)

    def _prepare_batch(self, conn: Connection, actor: Actor, tenant_id: str,
                       batch: list[tuple[int, PatientRecord]],
                       report: ImportReport, purpose: str = "migration") -> list[_Prepared]:
        lv = self.lv
        lv.load_tenant_keys(conn, tenant_id)
        versions = self._key_versions(conn, tenant_id)
        indexer = bi.Indexer(lv.keyring.blind_index_key(tenant_id, versions[1]))
        ext = {n: indexer.digest(bi.EXTERNAL_ID, r.external_id)
               for n, r in batch if r.external_id}
        existing = repo.find_by_digests(conn, tenant_id, bi.EXTERNAL_ID, list(set(ext.values())))
        seen: set[bytes] = set()
        todo: list[tuple[int, PatientRecord]] = []
        for n, rec in batch:
            d = ext.get(n)
            if d is not None and (d in existing or d in seen):
                report.skipped += 1
                continue
            if rec.former_ids:
                report.rejected.append({"line": n, "field": "former_ids",
                                        "reason": NEW_RECORD_FORMER_IDS})
                continue
            if d is not None:
                seen.add(d)
            todo.append((n, rec))
        access = self._write_access(actor, tenant_id, (), purpose)
        if not todo:
            return []
        # the decision comes before the NIR lookup: a refused import learns nothing of
        # which NIRs the laboratory holds
        lv.gate.check(conn, access)
        digests = {n: indexing.digests(indexer, indexing.index_values(rec)) for n, rec in todo}
        free = self._nirs_free(conn, tenant_id, todo, digests, indexer, report)
        return [self._prepare(conn, access, tenant_id, rec, n, versions, indexer,
                              digests=digests[n])
                for n, rec in free]

    @staticmethod
    def _nirs_free(conn: Connection, tenant_id: str, todo: list[tuple[int, PatientRecord]],
                   digests: Mapping[int, list[tuple[str, bytes]]], indexer: bi.Indexer,
                   report: ImportReport) -> list[tuple[int, PatientRecord]]:
        """The lines whose NIR and INS no other patient of the laboratory has, as
        registration requires (``_identifiers_free``): a line whose NIR (or INS) is
        already stored, or is on an earlier line of the file, is rejected whole, naming
        the field. One blind-index lookup for the whole batch (a line already imported,
        same ``external_id``, was skipped before: it is not a duplicate of itself)."""
        nirs = {n: list(dict.fromkeys(d for k, d in digests[n] if k == bi.NIR)) for n, _ in todo}
        stored = repo.find_by_digests(conn, tenant_id, bi.NIR,
                                      list({d for ds in nirs.values() for d in ds}))
        first_line: dict[bytes, int] = {}
        out: list[tuple[int, PatientRecord]] = []
        for n, rec in todo:
            clash = next((d for d in nirs[n] if d in stored or d in first_line), None)
            if clash is None:
                first_line.update(dict.fromkeys(nirs[n], n))
                out.append((n, rec))
                continue
            field_ = ("nir" if rec.nir and indexer.digest(bi.NIR, bi.normalise_nir(rec.nir))
                      == clash else "ins")
            if clash in stored:
                reason = (f"a patient of this laboratory already has this {field_.upper()} "
                          "(registered before, or imported from an earlier line of this "
                          "file): the line is not imported; if it is the same person, keep "
                          "the stored record (labvault patient find --nir), otherwise "
                          f"correct the {field_.upper()}")
            else:
                reason = (f"line {first_line[clash]} of this file has the same NIR (or INS): "
                          "one person on two lines? the line is not imported: keep one "
                          f"line, or correct the {field_.upper()}")
            report.rejected.append({"line": n, "field": field_, "reason": reason})
        return out

    def _identifiers_free(self, conn: Connection, tenant_id: str, rec: PatientRecord,
                          patient_id: str | None = None) -> None:
        """Never two patients of a laboratory with one NIR (or INS) or one external id
        (as HL7 updates, docs/hl7.md): a registration sent twice -- a double click at the
        desk, a form sent again -- would otherwise make a second record of the same
        person, whose results then split between the two. ``patient_id``: the patient
        being updated (its own identifiers are free for it)."""
        idx = repo.current_key_version(conn, tenant_id, "index")
        assert idx is not None
        key = self.lv.keyring.blind_index_key(tenant_id, idx)
        unique = [(kind, value, bi.digest(key, kind, value))
                  for kind, value in indexing.index_values(rec)
                  if kind in (bi.NIR, bi.EXTERNAL_ID)]
        # locked before they are looked up, until this write commits: the same new patient
        # sent twice at once is registered once (sorted: two writers never wait on each
        # other's locks in opposite orders)
        for digest in sorted({d for _k, _v, d in unique}):
            repo.lock_identifier(conn, digest)
        for kind, value, digest in unique:
            owners = repo.find_by_digest(conn, tenant_id, kind, digest)
            if any(o != patient_id for o in owners):
                if kind == bi.EXTERNAL_ID:
                    raise IdentifierTaken("external_id", "a patient with this external_id "
                                          "exists", "search for the existing patient instead")
                field_ = "nir" if rec.nir and bi.normalise_nir(rec.nir) == value else "ins"
                raise IdentifierTaken(field_, "a patient with this NIR is already registered "
                                      "in this laboratory", "search for the existing patient "
                                      "by its NIR and use that record (or correct the NIR)")

    def update(self, actor: Actor, patient_id: str, data: object) -> None:
        """Replace a patient's record (same shape as registration); the data key is kept."""
        rec = data if isinstance(data, PatientRecord) else PatientRecord.parse(data)
        lv = self.lv
        with lv.begin() as conn:
            tenant_id = self._tenant_of(conn, actor, patient_id, lock=True, action=Action.WRITE)
            access = Access(actor, Action.WRITE, tenant_id, ALL, patient_ids=(patient_id,))
            lv.gate.check(conn, access)
            self._rewrite(conn, access, patient_id, rec, rec.categories())

    def amend(self, actor: Actor, patient_id: str, changes: Mapping[str, Any],
              purpose: str = "care", seen: str | None = None) -> list[str]:
        """Change some fields of a patient's record, keeping the others as stored (the
        console's "Modifier"; ``update`` replaces the whole record). ``changes``: fields
        of the import shape (docs/formats.md; ``address``, ``coverage``, ``prescriber``
        whole), ``None`` removing a field. The changed record is checked whole
        (``PatientRecord.parse``: a required field emptied, a NIR that no longer agrees
        with a changed birth date are refused), all in one transaction.

        A change is merged into the stored record as the actor may read it: the gate
        decides the read of the categories changed with identity and contact (the
        record's indexes are made of those), and refuses the change if one of them is not
        opened (reception, which writes a prescriber it cannot read at registration,
        cannot change one here). Then the write of the categories changed, whose audit
        entry names the fields that changed (detail ``changed``), never their values;
        only those categories are sealed again. Returns the fields changed (none: nothing
        was written, no write decision asked).

        ``seen``: the record's ``updated_at`` as the caller read it (``show``); if the
        record changed since, nothing is written (``Conflict``): a form opened before
        someone else's change would otherwise write its stale values back over it."""
        if not isinstance(changes, Mapping):
            raise InvalidRecord([InvalidField("(record)", "must be a JSON object", "")])
        unknown = sorted(str(k) for k in set(changes) - IMPORT_FIELDS)
        if unknown:
            raise InvalidRecord([InvalidField(k, "is not a known field",
                                              "allowed: " + ", ".join(sorted(IMPORT_FIELDS)))
                                 for k in unknown])
        touched = frozenset(FIELD_CATEGORIES[k] for k in changes)
        needed = touched | {Category.IDENTITY, Category.CONTACT}
        lv = self.lv
        with lv.begin() as conn:
            tenant_id = self._tenant_of(conn, actor, patient_id, lock=True,
                                        action=Action.WRITE, categories=touched,
                                        purpose=purpose)
            if seen is not None:
                meta = repo.patient_meta(conn, tenant_id, patient_id)
                if meta is not None and _times(meta)["updated_at"] != seen:
                    raise RecordChanged(f"patient {patient_id}'s record")
            opened = lv.gate.read_patients(conn, Access(
                actor, Action.READ, tenant_id, needed, purpose=purpose,
                patient_ids=(patient_id,))).get(patient_id, {})
            hidden = needed - set(opened)
            if hidden:
                raise AccessDenied("changing these fields needs reading "
                                   + ", ".join(sorted(c.value for c in hidden)),
                                   "ask someone whose role may read them")
            before = PatientRecord.from_categories(opened)
            merged = {k: val for k, val in {**before, **changes}.items() if val is not None}
            rec = PatientRecord.parse(merged)
            sealed = rec.categories()
            after = PatientRecord.from_categories({c: sealed[c] for c in needed})
            changed = sorted(k for k in changes if before.get(k) != after.get(k))
            if not changed:
                return []
            write = Access(actor, Action.WRITE, tenant_id, touched, purpose=purpose,
                           patient_ids=(patient_id,))
            lv.gate.check(conn, write, detail={"changed": changed})
            self._rewrite(conn, write, patient_id, rec, {c: sealed[c] for c in touched})
            return changed

    def _rewrite(self, conn: Connection, access: Access, patient_id: str, rec: PatientRecord,
                 categories: Mapping[Category, Mapping[str, Any]]) -> None:
        """After the write's gate decision (``access``): the changed record's NIR / INS
        free in the laboratory, ``categories`` sealed again, the search indexes rebuilt
        from the whole record, the write hooks (breach encodings) told."""
        lv = self.lv
        tenant_id = access.tenant_id
        assert tenant_id is not None
        lv.load_tenant_keys(conn, tenant_id)
        dek = lv.gate.patient_key(conn, tenant_id, patient_id)
        # the former identifiers a merge gave the record go on with it, whatever the door
        rec = former_ids_kept(rec, opened_identity(lv, conn, tenant_id, patient_id, dek))
        if Category.IDENTITY in categories:
            categories = {**categories, Category.IDENTITY: rec.categories()[Category.IDENTITY]}
        self._identifiers_free(conn, tenant_id, rec, patient_id)
        repo.update_patient_blobs(conn, tenant_id, patient_id, lv.gate.seal_patient(
            conn, access, dek, patient_id, categories))
        idx = repo.current_key_version(conn, tenant_id, "index")
        assert idx is not None
        repo.replace_index_rows(conn, tenant_id, patient_id, indexing.digests(
            lv.keyring.blind_index_key(tenant_id, idx), indexing.index_values(rec)))
        for hook in self.write_hooks:
            hook(conn, tenant_id, [(patient_id, rec)], False)

    # -- reading ---------------------------------------------------------------------------
    def _tenant_of(self, conn: Connection, actor: Actor, patient_id: str,
                   lock: bool = False, action: Action | None = Action.READ,
                   categories: frozenset[Category] = ALL, purpose: str = "care") -> str:
        """The patient's laboratory, if the actor may act on it. ``lock``: the patient's
        row locked until the end of the transaction (``store.engine.for_update``): a
        write's first read.

        Staff never learn whether another lab's patient exists: same answer as "absent".
        Either is a refused ``action`` (with ``categories`` and ``purpose``) recorded in
        the actor's laboratory's chain (``Gate.refuse_absent``, rule ``absent-record``:
        the id asked for sealed, no patient named); ``None``: no access is decided
        (clear change markers), nothing recorded either. Only a miss costs the entry."""
        tenant_id = repo.patient_tenant(conn, patient_id, lock)
        if tenant_id is None or (actor.kind not in ("operator", "system")
                                 and actor.tenant_id != tenant_id):
            if action is not None:
                self.lv.gate.refuse_absent(conn, Access(
                    actor, action, actor.tenant_id, categories, purpose=purpose),
                    "patient", patient_id)
            raise NotFound("no such patient", "check the patient id")
        return tenant_id

    def find(self, actor: Actor, tenant_id: str, *, nir: str | None = None,
             email: str | None = None, phone: str | None = None,
             birth_name: str | None = None, first_name: str | None = None,
             birth_date: str | date | None = None, external_id: str | None = None,
             purpose: str = "care") -> list[str]:
        """Patient ids matching every criterion given (AND: the intersection of their
        blind-index matches), through the blind indexes. Birth name, first name and birth
        date are one criterion: the three together or none of them."""
        criteria: list[tuple[str, Any, Category]] = []
        if external_id:
            criteria.append((bi.EXTERNAL_ID, external_id.strip(), Category.IDENTITY))
        if nir:
            criteria.append((bi.NIR, indexing.search_value(bi.NIR, nir), Category.IDENTITY))
        if email:
            criteria.append((bi.EMAIL, indexing.search_value(bi.EMAIL, email), Category.CONTACT))
        if phone:
            criteria.append((bi.PHONE, indexing.search_value(bi.PHONE, phone), Category.CONTACT))
        if birth_name and first_name and birth_date:
            from labvault.domain import validation as v
            bd = v.birth_date(birth_date)
            criteria.append((bi.NAME_DOB, indexing.search_value(bi.NAME_DOB,
                                                                (birth_name, first_name, bd)),
                             Category.IDENTITY))
        elif birth_name or first_name or birth_date:
            # one of the three alone would be dropped silently: the index holds the trio
            raise UserError("birth name, first name and birth date go together",
                            "give --birth-name, --first-name and --birth-date, all three")
        if not criteria:
            raise UserError("no search criterion",
                            "give --nir, --email, --phone, or --birth-name with --first-name "
                            "and --birth-date")
        lv = self.lv
        with lv.begin() as conn:
            lv.load_tenant_keys(conn, tenant_id)
            idx = repo.current_key_version(conn, tenant_id, "index")
            assert idx is not None
            key = lv.keyring.blind_index_key(tenant_id, idx)
            ids: list[str] | None = None
            for kind, norm, _cat in criteria:
                found = repo.find_by_digest(conn, tenant_id, kind, bi.digest(key, kind, norm))
                if ids is None:
                    ids = found
                else:
                    keep = set(found)
                    ids = [i for i in ids if i in keep]
                if not ids:
                    break
            assert ids is not None
            lv.gate.check(conn, Access(actor, Action.SEARCH, tenant_id,
                                       frozenset(c for _k, _n, c in criteria),
                                       purpose=purpose, patient_ids=tuple(ids)))
            return ids

    def show(self, actor: Actor, patient_id: str,
             categories: Iterable[Category] | None = None, purpose: str = "care",
             reason: str | None = None, for_update: bool = False) -> dict[str, Any]:
        """The patient's data in the import shape, only the categories the actor may read.
        ``for_update``: the read is the first step of a write in the caller's open
        transaction (``lv.begin()``: a FHIR update keeping the other categories, an
        ``If-Match`` check): the patient's row is locked before it is read, so nothing of
        the record changes before that transaction ends."""
        lv = self.lv
        with lv.begin() as conn:
            cats = frozenset(categories) if categories is not None else ALL
            try:
                tenant_id = self._tenant_of(conn, actor, patient_id, lock=for_update,
                                            categories=cats, purpose=purpose)
            except NotFound:
                self._merged(conn, actor, patient_id, cats, purpose)
                raise
            opened = lv.gate.read_patients(conn, Access(
                actor, Action.READ, tenant_id, cats, purpose=purpose,
                patient_ids=(patient_id,), reason=reason))
            meta = repo.patient_meta(conn, tenant_id, patient_id)
        if patient_id not in opened or meta is None:
            raise NotFound("no such patient", "check the patient id")
        return {"id": patient_id, "tenant_id": tenant_id,
                "categories": sorted(c.value for c in opened[patient_id]),
                **_times(meta), **PatientRecord.from_categories(opened[patient_id])}

    def say_if_merged(self, actor: Actor, patient_id: str, purpose: str = "care") -> None:
        """After a miss of another service on ``patient_id`` (a page reading the patient's
        results, say): ``PatientMerged`` when it is a duplicate merged into a record the
        actor may read (``_merged``); otherwise returns and the caller's miss stands."""
        with self.lv.begin() as conn:
            self._merged(conn, actor, patient_id, frozenset({Category.IDENTITY}), purpose)

    def _merged(self, conn: Connection, actor: Actor, patient_id: str,
                cats: frozenset[Category], purpose: str) -> None:
        """After a miss: if ``patient_id`` is a duplicate merged into another record of
        the actor's laboratory, and the policy would let the actor read that record,
        raise ``PatientMerged`` naming it (the record kept after merges one after the
        other); anyone else gets the plain "no such patient". Decides nothing (no entry:
        the miss was recorded), opens nothing."""
        from labvault.errors import PatientMerged
        from labvault.store import repositories_merge as mrepo
        st = mrepo.patient_state(conn, patient_id)
        survivor = None
        for _hop in range(16):
            if st is None or st["status"] != "merged" or not st["merged_into"]:
                break
            if actor.kind not in ("operator", "system") and actor.tenant_id != st["tenant_id"]:
                return
            survivor = str(st["merged_into"])
            st = mrepo.patient_state(conn, survivor)
        if survivor is None or st is None or st["status"] != "active":
            return
        if self.lv.gate.categories_of(Access(actor, Action.READ, str(st["tenant_id"]), cats,
                                             purpose=purpose, patient_ids=(survivor,))):
            raise PatientMerged(patient_id, survivor)

    def merge(self, actor: Actor, survivor_id: str, duplicate_id: str, reason: str,
              force: bool = False) -> dict[str, Any]:
        """Merge a duplicate record into the record kept (``services/merge.py``)."""
        return self.lv.merges.merge(actor, survivor_id, duplicate_id, reason, force).as_json()

    def change_markers(self, actor: Actor, patient_id: str) -> dict[str, Any]:
        """When the record was created and last changed (``created_at``, ``updated_at``,
        as ``show`` gives them): clear columns, what a FHIR version is a digest of
        (interop/fhir/versions.py). Nothing personal is read, so no gate decision and no
        audit entry; another laboratory's patient is absent, as on a read. The FHIR door
        uses it for the versions of records a transaction Bundle has just written."""
        with self.lv.begin() as conn:
            tenant_id = self._tenant_of(conn, actor, patient_id, action=None)
            meta = repo.patient_meta(conn, tenant_id, patient_id)
        if meta is None:
            raise NotFound("no such patient", "check the patient id")
        return _times(meta)

    # -- erasing ---------------------------------------------------------------------------
    def erase(self, actor: Actor, patient_id: str, reason: str | None = None) -> dict[str, Any]:
        """Crypto-shred: destroy the data key and the index rows; log it outside the database."""
        lv = self.lv
        at = lv.now()
        with lv.begin() as conn:
            tenant_id = self._tenant_of(conn, actor, patient_id, action=Action.ERASE,
                                        purpose="erasure")
            lv.gate.check(conn, Access(actor, Action.ERASE, tenant_id, ALL,
                                       purpose="erasure", patient_ids=(patient_id,),
                                       reason=reason))
            # Log first: if the database commit then fails, the next open replays it.
            lv.shred_log.append(tenant_id, patient_id, at)
            repo.shred_patient(conn, tenant_id, patient_id, at)
            for erase_hook in self.erase_hooks:
                erase_hook(conn, tenant_id, patient_id)
        return {"id": patient_id, "tenant_id": tenant_id, "erased_at": at.isoformat()}

    def tenant_of(self, actor: Actor, patient_id: str, action: Action = Action.SEARCH) -> str:
        """The patient's laboratory, if the actor may know it exists (a search by id:
        another laboratory's or an absent id is a refused ``action``, as in ``_tenant_of``)."""
        with self.lv.begin() as conn:
            return self._tenant_of(conn, actor, patient_id, action=action,
                                   categories=frozenset({Category.IDENTITY}))

    def require(self, patient_id: str) -> None:
        with self.lv.begin() as conn:
            if repo.patient_tenant(conn, patient_id) is None:
                raise NotFound("no such patient", "check the patient id")
