"""Index-key rotation (``labvault keys rotate --index``): a laboratory's blind-index key
replaced, every digest made under it recomputed from its sealed plaintext, the old
versions destroyed -- in one transaction, so a failure leaves the old key and every old
digest in place.

What is recomputed, and from what:

- ``blind_index`` (NIR / INS, e-mail, phone, name + birth date, external id): each
  active patient's identity and contact, opened under the patient's data key
  (``indexing.index_values``, as every write does);
- ``breach_encodings`` (keyed Bloom filters and blocking keys, secrets derived from the
  index key): from the same records, for the patients that had one;
- ``lab_orders`` placer / filler and ``lab_specimens`` accession digests: the order's
  request and the specimen, sealed under the patient's key;
- ``lab_hl7_messages.control_digest`` (sender + MSH-10, the resend check): the archived
  message, read again by the HL7 reader;
- ``practitioners.rpps_digest``: the directory entry (laboratory ``data`` key);
- ``delivery_routes.rpps_digest``: the destination's sealed RPPS numbers -- or, for a
  destination added before they were kept (migration 0015), the laboratory's known
  numbers (directory, orders' prescribers) matched under the old key, then kept;
- ``accounts.email_digest`` of the laboratory's staff and patients: the sealed profile;
- ``guard_export_decoys``: the decoys' identifiers in the export's sealed manifest.

Not recomputed, on purpose:

- digests whose plaintext is gone (an erased patient's orders, specimens, archived
  messages: the data key was destroyed): cleared -- NULL, or a random control digest for
  an archived message (its column is the unique resend key: a resend of it is then
  taken as a new message) -- so that no digest under the old key survives;
- decoys of exports made before the decoys' identifiers were kept: dropped (the export
  is still recognised by its row ids and formatting, ``fingerprint``);
- the advisory-lock keys of ``lock_identifier`` / ``lock_number``: never stored;
- the platform's index key (platform operators' e-mail digests; it also derives the
  console's CSRF and login-throttling secrets): not a laboratory's, not rotated here.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_
from sqlalchemy.engine import Connection

from labvault.access.accounts import PLATFORM_TENANT
from labvault.crypto import DataKey, SealContext, WrappedDek
from labvault.crypto import blind_index as bi
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.domain.patient import PatientRecord
from labvault.errors import NotFound, UserError
from labvault.services import indexing
from labvault.services.accounts import EMAIL_KIND
from labvault.services.delivery import RPPS_INDEX
from labvault.services.exports import DECOY_IDENTIFIERS, decoy_digests
from labvault.services.gate import Access
from labvault.services.lab import ACCESSION, FILLER, PLACER
from labvault.services.lab_messages import CONTROL
from labvault.store import repositories as repo
from labvault.store import repositories_breach as brepo
from labvault.store import repositories_rekey as rrepo
from labvault.store.schema import patients
from labvault.store.tables_access import accounts
from labvault.store.tables_delivery import delivery_destinations
from labvault.store.tables_fhir import practitioners
from labvault.store.tables_lab import lab_hl7_messages, lab_orders, lab_specimens

if TYPE_CHECKING:
    from labvault.services.app import Labvault

_IDENTITY_CONTACT = (Category.IDENTITY, Category.CONTACT)


def rotate_index(lv: Labvault, actor: Actor, tenant_id: str,
                 control_key_of: Callable[[bytes], str]) -> dict[str, Any]:
    """New index key version for ``tenant_id``; every digest recomputed (module doc);
    older versions destroyed. Returns the new version and what was recomputed.
    ``control_key_of``: an archived HL7 message's resend key (``control_key``) from its
    bytes -- the HL7 door's reader (``interop.hl7.archive``): the core reads no HL7."""
    if tenant_id == PLATFORM_TENANT:
        raise UserError("the platform's index key is not a laboratory's",
                        "give --tenant ID of a laboratory (`labvault tenant list`)")
    try:
        with lv.begin() as conn:
            if repo.get_tenant(conn, tenant_id) is None:
                raise NotFound(f"no laboratory {tenant_id}", "use `labvault tenant list`")
            lv.gate.check(conn, Access(actor, Action.WRITE, tenant_id, frozenset(),
                                       purpose="key-management", resource="keys"),
                          detail={"key": "index"})
            lv.load_tenant_keys(conn, tenant_id)
            old = repo.current_key_version(conn, tenant_id, "index")
            assert old is not None
            new = old + 1
            repo.insert_tenant_key(conn, lv.keyring.new_tenant_key(tenant_id, "index", new))
            work = _Rekey(lv, conn, tenant_id, old, new, control_key_of)
            work.patients()
            work.orders()
            work.specimens()
            work.messages()
            work.practitioners()
            work.routes()
            work.accounts()
            work.decoys()
            for v in range(1, new):
                repo.set_key_status(conn, tenant_id, "index", v, "destroyed")
    finally:
        # Done or undone, no cache of this process keeps a key of the tenant's index: the
        # old one is destroyed, or the new one was never committed (and a retry makes
        # another under the same version number).
        lv.keyring.forget(tenant_id, "index")
        lv.lab.forget_index_key(tenant_id)
        lv.breach.forget_encoders(tenant_id)
    return {"tenant_id": tenant_id, "index_version": new, **work.counts}


class _Rekey:
    """One laboratory's digests, recomputed inside the rotation's transaction."""

    def __init__(self, lv: Labvault, conn: Connection, tenant_id: str, old: int,
                 new: int, control_key_of: Callable[[bytes], str]) -> None:
        self.lv, self.conn, self.tenant_id, self.version = lv, conn, tenant_id, new
        self.control_key_of = control_key_of
        self.old = bi.Indexer(lv.keyring.blind_index_key(tenant_id, old))
        self.key = lv.keyring.blind_index_key(tenant_id, new)
        self.new = bi.Indexer(self.key)
        self.rpps: set[str] = set()     # RPPS numbers met: routes of older destinations
        self.counts: dict[str, int] = dict.fromkeys((
            "patients", "patient_digests", "breach_encodings", "order_digests",
            "specimen_digests", "hl7_messages", "practitioners", "delivery_routes",
            "accounts", "export_decoys", "cleared", "exports_without_decoys"), 0)

    # -- keys and sealed values ----------------------------------------------------------------
    def _deks(self, patient_ids: Iterable[str]) -> dict[str, DataKey]:
        """The data keys of those patients that still have one (erased: absent)."""
        t = self.tenant_id
        return {pid: self.lv.keyring.open_dek(t, pid, WrappedDek(*w))
                for pid, w in repo.patient_deks(self.conn, t, sorted(set(patient_ids))).items()}

    def _open(self, dek: DataKey, table: str, column: str, record_id: str,
              sealed: bytes) -> Any:
        return json.loads(dek.open(SealContext(self.tenant_id, table, column, record_id),
                                   sealed))

    def _open_tenant(self, table: str, column: str, record_id: str, sealed: bytes) -> bytes:
        return self.lv.gate.open_tenant_value_checked(self.conn, self.tenant_id, table, column,
                                                      record_id, sealed)

    # -- patients: search indexes and breach encodings ----------------------------------------
    def patients(self) -> None:
        lv, conn, t = self.lv, self.conn, self.tenant_id
        _enc, v = lv.breach.encoder(conn, t)
        assert v == self.version
        rrepo.drop_inactive_indexes(conn, t)
        for page in rrepo.pages(conn, patients, t, "patient_id",
                                [c.value for c in _IDENTITY_CONTACT],
                                where=patients.c.status == "active"):
            deks = self._deks(r[0] for r in page)
            encoded = rrepo.encoded_among(conn, t, [r[0] for r in page])
            owners: list[str] = []
            values: list[tuple[str, str]] = []
            encode: list[tuple[str, PatientRecord]] = []
            for pid, *blobs in page:
                dek = deks.get(str(pid))
                if dek is None or blobs[0] is None:
                    continue        # no key or no identity: nothing to index
                identity, contact = (None if blob is None else
                                     self._open(dek, "patients", cat.value, pid, blob)
                                     for cat, blob in zip(_IDENTITY_CONTACT, blobs,
                                                          strict=True))
                assert identity is not None
                rec = PatientRecord.from_sealed(identity, contact)
                mine = indexing.index_values(rec)
                owners.extend([pid] * len(mine))
                values.extend(mine)
                if pid in encoded:
                    encode.append((str(pid), rec))
            rows = list(dict.fromkeys(
                (pid, kind, d) for pid, (kind, _), d in zip(
                    owners, values, self.new.digest_many(values), strict=True)))
            rrepo.replace_patient_indexes(conn, t, [r[0] for r in page], [
                {"tenant_id": t, "kind": kind, "digest": d, "patient_id": pid}
                for pid, kind, d in rows])
            encodings = lv.breach.encoding_rows(conn, t, encode)     # sealed, new version
            brepo.replace_encodings(conn, t, encodings)
            self.counts["patients"] += len(deks)
            self.counts["patient_digests"] += len(rows)
            self.counts["breach_encodings"] += len(encodings)
        rrepo.drop_encodings_not_of(conn, t, self.version)

    # -- lab workflow ------------------------------------------------------------------------
    def _digest_or_clear(self, kind: str, number: object) -> bytes | None:
        if isinstance(number, str) and number:
            return self.new.digest(kind, number)
        self.counts["cleared"] += 1     # a digest with no number behind it: nothing to find
        return None

    def orders(self) -> None:
        conn, t = self.conn, self.tenant_id
        o = lab_orders.c
        for page in rrepo.pages(conn, lab_orders, t, "order_id",
                                ("patient_id", "placer_digest", "filler_digest",
                                 "request_sealed"),
                                where=or_(o.placer_digest.is_not(None),
                                          o.filler_digest.is_not(None))):
            deks = self._deks(r[1] for r in page)
            out: list[dict[str, Any]] = []
            for oid, pid, placer, filler, sealed in page:
                dek = deks.get(pid)
                if dek is None:     # the patient was erased: the numbers went with the key
                    self.counts["cleared"] += (placer is not None) + (filler is not None)
                    out.append({"order_id": oid, "placer_digest": None, "filler_digest": None})
                    continue
                req = self._open(dek, "lab_orders", "request_sealed", oid, sealed)
                rpps = (req.get("prescriber") or {}).get("rpps")
                if rpps:
                    self.rpps.add(rpps)
                values = {"order_id": oid,
                          "placer_digest": None if placer is None else self._digest_or_clear(
                              PLACER, req.get("placer_number")),
                          "filler_digest": None if filler is None else self._digest_or_clear(
                              FILLER, req.get("filler_number"))}
                out.append(values)
                self.counts["order_digests"] += ((values["placer_digest"] is not None)
                                                 + (values["filler_digest"] is not None))
            rrepo.set_columns(conn, lab_orders, t, "order_id", out)

    def specimens(self) -> None:
        conn, t = self.conn, self.tenant_id
        for page in rrepo.pages(conn, lab_specimens, t, "specimen_id",
                                ("patient_id", "specimen_sealed"),
                                where=lab_specimens.c.accession_digest.is_not(None)):
            deks = self._deks(r[1] for r in page)
            out: list[dict[str, Any]] = []
            for sid, pid, sealed in page:
                dek = deks.get(pid)
                if dek is None:
                    self.counts["cleared"] += 1
                    out.append({"specimen_id": sid, "accession_digest": None})
                    continue
                spec = self._open(dek, "lab_specimens", "specimen_sealed", sid, sealed)
                d = self._digest_or_clear(ACCESSION, spec.get("accession_number"))
                out.append({"specimen_id": sid, "accession_digest": d})
                self.counts["specimen_digests"] += d is not None
            rrepo.set_columns(conn, lab_specimens, t, "specimen_id", out)

    def messages(self) -> None:
        conn, t = self.conn, self.tenant_id
        for page in rrepo.pages(conn, lab_hl7_messages, t, "message_id",
                                ("patient_id", "raw_sealed")):
            deks = self._deks(r[1] for r in page if r[1] is not None)
            out: list[dict[str, Any]] = []
            for mid, pid, sealed in page:
                raw: bytes | None = None
                if pid is None:
                    raw = self._open_tenant("lab_hl7_messages", "raw_sealed", mid, sealed)
                elif pid in deks:
                    raw = deks[pid].open(
                        SealContext(t, "lab_hl7_messages", "raw_sealed", mid), sealed)
                try:
                    if raw is None:
                        raise ValueError("its patient was erased")
                    digest = self.new.digest(CONTROL, self.control_key_of(raw))
                    self.counts["hl7_messages"] += 1
                except ValueError:
                    # unique per laboratory, never NULL: a random value nobody can match
                    digest = secrets.token_bytes(bi.DIGEST_BYTES)
                    self.counts["cleared"] += 1
                out.append({"message_id": mid, "control_digest": digest})
            rrepo.set_columns(conn, lab_hl7_messages, t, "message_id", out)

    # -- directory, delivery, accounts, exports ------------------------------------------------
    def practitioners(self) -> None:
        conn, t = self.conn, self.tenant_id
        for page in rrepo.pages(conn, practitioners, t, "practitioner_id", ("data_sealed",),
                                where=practitioners.c.rpps_digest.is_not(None)):
            out: list[dict[str, Any]] = []
            for prid, sealed in page:
                data = json.loads(self._open_tenant("practitioners", "data_sealed", prid,
                                                    sealed))
                rpps = data.get("rpps")
                if rpps:
                    self.rpps.add(rpps)
                d = self._digest_or_clear(RPPS_INDEX, rpps)
                out.append({"practitioner_id": prid, "rpps_digest": d})
                self.counts["practitioners"] += d is not None
            rrepo.set_columns(conn, practitioners, t, "practitioner_id", out)

    def routes(self) -> None:
        conn, t = self.conn, self.tenant_id
        rows: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        for did, sealed, digests in rrepo.routed_destinations(conn, t):
            if sealed is not None:
                numbers: list[str] = json.loads(self._open_tenant(
                    "delivery_destinations", "prescribers_sealed", did, sealed))
            else:
                numbers = self._recover_numbers(did, digests)
                kept.append({"destination_id": did,
                             "prescribers_sealed": self.lv.gate.seal_tenant_value(
                                 conn, t, "delivery_destinations", "prescribers_sealed", did,
                                 json.dumps(numbers).encode())})
            for d in dict.fromkeys(self.new.digest(RPPS_INDEX, n) for n in numbers):
                rows.append({"tenant_id": t, "rpps_digest": d, "destination_id": did})
        rrepo.replace_routes(conn, t, rows)
        rrepo.set_columns(conn, delivery_destinations, t, "destination_id", kept)
        self.counts["delivery_routes"] = len(rows)

    def _recover_numbers(self, destination_id: str, digests: Sequence[bytes]) -> list[str]:
        """The RPPS numbers of an older destination's routes, among the numbers the
        laboratory knows, matched under the old key; refused if one is not found (the
        route would be lost)."""
        known = {self.old.digest(RPPS_INDEX, n): n for n in sorted(self.rpps)}
        missing = [d for d in digests if d not in known]
        if missing:
            raise UserError(
                f"delivery destination {destination_id} routes {len(missing)} prescriber(s) "
                "whose RPPS number labvault does not hold (the destination was added before "
                "its numbers were kept): rotating would lose these routes",
                "remove the destination and add it again with its --rpps numbers "
                "(`labvault delivery remove`, `labvault delivery add`), then rotate")
        return sorted(known[d] for d in set(digests))

    def accounts(self) -> None:
        conn, t = self.conn, self.tenant_id
        for page in rrepo.pages(conn, accounts, t, "account_id", ("profile_sealed",)):
            out = []
            for aid, sealed in page:
                profile = json.loads(self._open_tenant("accounts", "profile_sealed", aid, sealed))
                out.append({"account_id": aid, "index_version": self.version,
                            "email_digest": self.new.digest(
                                EMAIL_KIND, bi.normalise_email(profile["email"]))})
            rrepo.set_columns(conn, accounts, t, "account_id", out)
            self.counts["accounts"] += len(out)

    def decoys(self) -> None:
        conn, t = self.conn, self.tenant_id
        rows: list[dict[str, Any]] = []
        for row in rrepo.decoy_exports(conn, t):
            manifest = json.loads(self._open_tenant("guard_exports", "manifest_sealed",
                                                    row["export_id"], row["manifest_sealed"]))
            identifiers = manifest.get(DECOY_IDENTIFIERS)
            if identifiers is None:
                self.counts["exports_without_decoys"] += 1
                continue
            rows.extend(decoy_digests(self.key, t, row["export_id"], identifiers))
        rrepo.replace_decoys(conn, t, rows)
        self.counts["export_decoys"] = len(rows)
