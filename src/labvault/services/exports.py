"""Governed exports: the only way patient data leaves labvault in bulk (DESIGN §6).

``create`` checks the requested fields against the allow-list and the requester's
export rights, counts the patients, and either writes the file at once (``ready``) or
waits for a second account's approval (``pending_approval``, at or above
``LABVAULT_EXPORT_APPROVAL_MIN_PATIENTS``). The file is NDJSON — one patient per line,
only the requested fields plus an opaque ``row_id`` — encrypted to the recipient's age
key as it is produced: the clear text exists only in memory, one batch at a time.
Every file is fingerprinted for its recipient (``guard.fingerprint``) and expires.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import random
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyrage
from sqlalchemy.engine import Connection

from labvault import durable
from labvault.breach.readers import decode_text
from labvault.crypto import blind_index as bi
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.domain.patient import PatientRecord
from labvault.errors import (
    AccessDenied,
    AuthenticationFailed,
    Conflict,
    InvalidField,
    NotFound,
    UserError,
)
from labvault.guard import fingerprint as fp
from labvault.guard.canaries import canary_person
from labvault.services import indexing
from labvault.services.gate import Access
from labvault.store import repositories as repo
from labvault.store import repositories_guard as grepo
from labvault.store.ids import new_id
from labvault.textfiles import sniff_delimiter

if TYPE_CHECKING:
    from labvault.services.app import Labvault

# Field -> the category it is sealed in (the policy grants export per category).
EXPORTABLE: dict[str, Category] = {
    "external_id": Category.IDENTITY, "birth_name": Category.IDENTITY,
    "used_name": Category.IDENTITY, "first_names": Category.IDENTITY,
    "birth_date": Category.IDENTITY, "sex": Category.IDENTITY,
    "birth_place_insee": Category.IDENTITY, "nir": Category.IDENTITY, "ins": Category.IDENTITY,
    "address": Category.CONTACT, "phone": Category.CONTACT, "email": Category.CONTACT,
    "amo": Category.COVERAGE, "amc": Category.COVERAGE, "member_id": Category.COVERAGE,
    "blood_group": Category.CLINICAL, "prescriber": Category.CLINICAL,
}
BATCH = 1000
# A decoy row's identifiers kept as blind-index digests (kind -> field of the row).
DECOY_KINDS = {bi.NIR: "nir", bi.EMAIL: "email", bi.PHONE: "phone"}
DECOY_IDENTIFIERS = "decoy_identifiers"    # the sealed manifest's key for them
MAX_EXPIRY = timedelta(days=30)
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # one encoder, reused
_DURATION = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")


def parse_expiry(text: str) -> timedelta:
    m = _DURATION.match(text or "")
    if not m:
        raise InvalidField("expires", "must be a duration like 12h, 7d or 2w", "e.g. --expires 7d")
    n, unit = int(m.group(1)), m.group(2)
    d = timedelta(hours=n) if unit == "h" else timedelta(days=n * (7 if unit == "w" else 1))
    if not timedelta(hours=1) <= d <= MAX_EXPIRY:
        raise InvalidField("expires", "must be between 1h and 30d",
                           "exports are temporary; request a new one if needed later")
    return d


def parse_recipient(text: str) -> Any:
    try:
        return pyrage.x25519.Recipient.from_str(text.strip())
    except Exception:
        raise InvalidField("recipient", "is not an age public key (age1...)",
                           "ask the recipient for the output of `age-keygen -y`") from None


class _Stream(io.RawIOBase):
    """A readable stream over chunks produced on demand (nothing touches the disk)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not len(self._buf):
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = memoryview(nxt)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _HashingWriter(io.RawIOBase):
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.out.write(data)
        self.size += len(data)
        return len(data)


def _flatten(opened: dict[Category, dict[str, Any]]) -> dict[str, Any]:
    vals = PatientRecord.from_categories(opened)
    cov = vals.pop("coverage", None)
    if isinstance(cov, dict):
        vals.update(cov)
    return vals


# (the service has a method named ``list``: this alias keeps the builtin in annotations)
_ExportRows = list[dict[str, Any]]

class ExportService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    @property
    def directory(self) -> Path:
        d = self.lv.settings.data_dir / "exports"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    def approval_threshold(self) -> int:
        return self.lv.settings.whole_number("LABVAULT_EXPORT_APPROVAL_MIN_PATIENTS", 0)

    # -- request ---------------------------------------------------------------------------------
    def _fields(self, conn: Connection, tenant_id: str, fields: Sequence[str]) -> list[str]:
        out: list[str] = []
        allowed = sorted(EXPORTABLE)
        lab = self.lv.guard.config(conn, tenant_id).get("export.fields")
        if lab:
            allowed = [f.strip() for f in lab.split(",") if f.strip()]
        for f in fields:
            f = f.strip()
            if not f:
                continue
            if f not in EXPORTABLE or f not in allowed:
                raise InvalidField(f"fields.{f}", "is not an exportable field",
                                   "allowed: " + ", ".join(allowed))
            if f not in out:
                out.append(f)
        if not out:
            raise InvalidField("fields", "no field requested", "e.g. --fields birth_name,nir")
        return out

    def create(self, actor: Actor, tenant_id: str, purpose: str, fields: Sequence[str],
               start: date, end: date, recipient: str, expires: str = "7d",
               reauthenticated: bool = False) -> dict[str, Any]:
        lv = self.lv
        lv.tenants.get(tenant_id)
        if not purpose or not purpose.strip() or len(purpose) > 500:
            raise InvalidField("purpose", "must say why (1-500 characters)",
                               'e.g. --purpose "migration to the new LIS, contract 2026-12"')
        if end < start:
            raise InvalidField("to", "is before --from", "give --from DATE --to DATE in order")
        parse_recipient(recipient)
        ttl = parse_expiry(expires)
        self._reauth(actor, reauthenticated)
        with lv.begin() as conn:
            wanted = self._fields(conn, tenant_id, fields)
            cats = frozenset(EXPORTABLE[f] for f in wanted)
            # Which categories may this account export? (asked one by one, not audited, only
            # to name the refused fields; the decision below is the audited one)
            may = {c for c in cats if c in set(lv.gate.categories_of(Access(
                actor, Action.EXPORT, tenant_id, frozenset({c}), purpose="export",
                resource="export")))}
            refused = sorted(f for f in wanted if EXPORTABLE[f] not in may)
            access = Access(actor, Action.EXPORT, tenant_id, cats, purpose="export",
                            reason=purpose, resource="export")
            try:
                decision = lv.gate.check(conn, access)
            except AccessDenied:
                refused = refused or sorted(wanted)
                decision = None
            if decision is not None and not refused:
                refused = sorted(f for f in wanted if EXPORTABLE[f] not in decision.categories)
            if refused:
                raise AccessDenied(f"you may not export {', '.join(refused)}",
                                   "remove these fields or ask an account allowed to export them")
            ids = self._selection(conn, tenant_id, start, end)
            export_id = new_id("exp")
            now = lv.now()
            status = "pending_approval" if len(ids) >= self.approval_threshold() else "ready"
            manifest = {"export_id": export_id, "tenant_id": tenant_id, "purpose": purpose,
                        "fields": wanted, "from": start.isoformat(), "to": end.isoformat(),
                        "recipient": recipient.strip(), "requested_by": actor.id,
                        "requested_by_display": actor.display, "approvers": [],
                        "expires_at": (now + ttl).isoformat(), "rows": None, "decoys": None,
                        "file_sha256": None, "plaintext_sha256": None, "file": None}
            grepo.insert_export(conn, {
                "tenant_id": tenant_id, "export_id": export_id, "status": status,
                "requested_by": actor.id, "patient_count": len(ids), "created_at": now,
                "expires_at": now + ttl, "manifest_sealed": self._seal(conn, tenant_id,
                                                                       export_id, manifest)})
            lv.gate.audit.event(conn, actor, "export.requested", "ok", tenant_id,
                                {"export_id": export_id, "patients": len(ids),
                                 "fields": wanted, "status": status})
        file = None
        if status == "ready":   # written by labvault itself, under the decision just audited
            file = str(self._generate(Actor.system("export"), tenant_id, export_id))
        return {"export_id": export_id, "file": file, "status": status, "patients": len(ids)}

    def _reauth(self, actor: Actor, reauthenticated: bool) -> None:
        # The CLI operator holds the key file on the server; API users must have just
        # re-entered their password and MFA code (the door passes reauthenticated=True).
        if actor.kind == "staff" and not reauthenticated:
            raise AuthenticationFailed("exports need a fresh re-authentication",
                                       "confirm your password and MFA code, then retry")
        if actor.kind == "patient":
            raise AccessDenied("not allowed", "patients download their own data from the portal")

    def _selection(self, conn: Connection, tenant_id: str, start: date, end: date) -> list[str]:
        s = datetime(start.year, start.month, start.day, tzinfo=UTC)
        e = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
        ids = grepo.patient_ids_created_between(conn, tenant_id, s, e)
        # Honeytokens stay out of real users' exports: each file gets its own decoys.
        return self.lv.guard.without_canaries(conn, tenant_id, ids)

    def _seal(self, conn: Connection, tenant_id: str, export_id: str,
              manifest: dict[str, Any]) -> bytes:
        return self.lv.gate.seal_tenant_value(conn, tenant_id, "guard_exports",
                                              "manifest_sealed", export_id,
                                              json.dumps(manifest, sort_keys=True).encode())

    def _manifest(self, conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
        m: dict[str, Any] = json.loads(self.lv.gate.open_tenant_value_checked(
            conn, row["tenant_id"], "guard_exports", "manifest_sealed", row["export_id"],
            row["manifest_sealed"]))
        return m

    # -- four eyes -------------------------------------------------------------------------------
    def approve(self, actor: Actor, export_id: str, reauthenticated: bool = False
                ) -> dict[str, Any]:
        lv = self.lv
        self._reauth(actor, reauthenticated)
        with lv.begin() as conn:
            row = grepo.get_export(conn, export_id)
            if row is None or (actor.kind == "staff" and actor.tenant_id != row["tenant_id"]):
                raise NotFound(f"no export {export_id}", "list exports with `labvault export list`")
            if row["status"] != "pending_approval":
                raise Conflict(f"export {export_id} is {row['status']}, not pending approval",
                               "only exports waiting for approval can be approved")
            if row["requested_by"] == actor.id:
                raise AccessDenied("the requester cannot approve their own export",
                                   "four-eyes rule: a second authorised account must approve")
            if row["expires_at"] <= lv.now():
                raise Conflict(f"export {export_id} has expired", "request a new export")
            tenant_id = row["tenant_id"]
            manifest = self._manifest(conn, row)
            cats = frozenset(EXPORTABLE[f] for f in manifest["fields"])
            decision = lv.gate.check(conn, Access(actor, Action.VALIDATE, tenant_id, cats,
                                                  purpose="export", reason="approval",
                                                  resource="export"))
            if not cats <= decision.categories:
                raise AccessDenied("you may not approve an export of these fields",
                                   "an account allowed to export them must approve")
            manifest["approvers"] = [*manifest["approvers"], actor.id]
            grepo.update_export(conn, tenant_id, export_id, approved_by=actor.id,
                                approved_at=lv.now(),
                                manifest_sealed=self._seal(conn, tenant_id, export_id, manifest))
            lv.gate.audit.event(conn, actor, "export.approved", "ok", tenant_id,
                                {"export_id": export_id})
        path = self._generate(Actor.system("export"), tenant_id, export_id)
        return {"export_id": export_id, "file": str(path), "status": "ready"}

    # -- the file ---------------------------------------------------------------------------------
    def _generate(self, actor: Actor, tenant_id: str, export_id: str) -> Path:
        lv = self.lv
        with lv.begin() as conn:
            row = grepo.get_export(conn, export_id)
            assert row is not None
            manifest = self._manifest(conn, row)
            key = fp.export_key(lv.guard.secret(conn, tenant_id, "export"), export_id)
            ids = self._selection(conn, tenant_id, date.fromisoformat(manifest["from"]),
                                  date.fromisoformat(manifest["to"]))
            idx_version = repo.current_key_version(conn, tenant_id, "index")
            assert idx_version is not None
            lv.load_tenant_keys(conn, tenant_id)
            idx_key = lv.keyring.blind_index_key(tenant_id, idx_version)
        fields: list[str] = manifest["fields"]
        cats = frozenset(EXPORTABLE[f] for f in fields)
        n_decoys = 0 if not ids else max(2, math.ceil(len(ids) / 200))
        decoys = [self._decoy() for _ in range(n_decoys)]
        rng = random.Random(secrets.randbits(64))  # noqa: S311 - positions, not secrets
        decoy_at = sorted(rng.sample(range(len(ids) + n_decoys), n_decoys)) if n_decoys else []
        plain = hashlib.sha256()
        counts = {"rows": 0}

        def lines() -> Iterator[bytes]:
            pending_decoys = list(zip(decoy_at, decoys, strict=True))
            pos = 0
            for i in range(0, len(ids), BATCH):
                batch = ids[i:i + BATCH]
                with lv.begin() as conn:
                    opened = lv.gate.read_patients(conn, Access(
                        actor, Action.EXPORT, tenant_id, cats, purpose="export",
                        patient_ids=tuple(batch), reason=f"export {export_id}",
                        resource="export"))
                out: list[bytes] = []
                for pid in batch:
                    if pid not in opened:
                        continue
                    while pending_decoys and pending_decoys[0][0] <= pos:
                        out.append(self._line(key, pending_decoys.pop(0)[1], fields))
                        pos += 1
                    vals = _flatten(opened[pid])
                    row = fp.render(fp.choices(key, pid), fp.new_row_id(key), vals, fields)
                    out.append(_ENCODE(row).encode() + b"\n")
                    counts["rows"] += 1
                    pos += 1
                for _, d in pending_decoys if i + BATCH >= len(ids) else ():
                    out.append(self._line(key, d, fields))
                chunk = b"".join(out)
                plain.update(chunk)
                yield chunk

        path = self.directory / f"{export_id}.age"
        recipient = parse_recipient(manifest["recipient"])
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer = _HashingWriter(fh)
                pyrage.encrypt_io(_Stream(lines()), writer, [recipient])
                fh.flush()
                os.fsync(fh.fileno())
            durable.sync_directory(path.parent)    # before the manifest that names it
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        # The decoys' identifiers stay in the sealed manifest (synthetic people, never shown):
        # an index-key rotation recomputes their digests from them (``services/rekey.py``).
        identifiers = [{k: vals[k] for k in DECOY_KINDS.values() if vals.get(k)}
                       for _pid, vals in decoys]
        manifest.update({"rows": counts["rows"], "decoys": n_decoys, "file": str(path),
                         "file_sha256": writer.sha.hexdigest(),
                         "plaintext_sha256": plain.hexdigest(), "bytes": writer.size,
                         DECOY_IDENTIFIERS: identifiers})
        with lv.begin() as conn:
            grepo.insert_decoys(conn, decoy_digests(idx_key, tenant_id, export_id, identifiers))
            grepo.update_export(conn, tenant_id, export_id, status="ready",
                                row_count=counts["rows"], file_sha256=writer.sha.hexdigest(),
                                manifest_sealed=self._seal(conn, tenant_id, export_id, manifest))
            lv.gate.audit.event(conn, actor, "export.disclosure", "ok", tenant_id, {
                "export_id": export_id, "rows": counts["rows"], "fields": fields,
                "file_sha256": writer.sha.hexdigest(), "approvers": manifest["approvers"],
                "expires_at": manifest["expires_at"]})
        return path

    @staticmethod
    def _decoy() -> tuple[str, dict[str, Any]]:
        rec = PatientRecord.parse(canary_person())
        return new_id("pt"), _flatten(rec.categories())

    @staticmethod
    def _line(key: bytes, decoy: tuple[str, dict[str, Any]], fields: list[str]) -> bytes:
        pid, vals = decoy
        row = fp.render(fp.choices(key, pid), fp.new_row_id(key), vals, fields)
        return _ENCODE(row).encode() + b"\n"

    # -- listing, purge -------------------------------------------------------------------------------
    def list(self, actor: Actor, tenant_id: str | None = None) -> list[dict[str, Any]]:
        lv = self.lv
        if tenant_id is None and actor.kind not in ("operator", "system"):
            tenant_id = actor.tenant_id or "-"
        elif tenant_id is not None:
            lv.guard.require_lab(actor, tenant_id)
        with lv.begin() as conn:
            rows = grepo.list_exports(conn, tenant_id)
            out = []
            for r in rows:
                lv.guard._admin_check(conn, actor, r["tenant_id"], Action.READ, "export")
                m = self._manifest(conn, r)
                out.append({"export_id": r["export_id"], "tenant_id": r["tenant_id"],
                            "status": r["status"], "patients": r["patient_count"],
                            "rows": r["row_count"], "fields": m["fields"],
                            "purpose": m["purpose"], "recipient": m["recipient"],
                            "requested_by": r["requested_by"], "approvers": m["approvers"],
                            "created_at": r["created_at"].isoformat(),
                            "expires_at": r["expires_at"].isoformat(),
                            "file": m["file"] if r["status"] == "ready" else None,
                            "file_sha256": r["file_sha256"]})
            return out

    def manifest(self, actor: Actor, export_id: str) -> dict[str, Any]:
        with self.lv.begin() as conn:
            row = grepo.get_export(conn, export_id)
            if row is None:
                raise NotFound(f"no export {export_id}", "list exports with `labvault export list`")
            self.lv.guard._admin_check(conn, actor, row["tenant_id"], Action.READ, "export")
            shown = {k: x for k, x in self._manifest(conn, row).items()
                     if k != DECOY_IDENTIFIERS}    # what a decoy is stays unsaid
            return {**shown, "status": row["status"]}

    def purge_expired(self, dry_run: bool = False) -> dict[str, Any]:
        lv = self.lv
        system = Actor.system("purge")
        with lv.begin() as conn:
            due = grepo.expired_exports(conn, lv.now())
        purged = []
        for r in due:
            purged.append(r["export_id"])
            if dry_run:
                continue
            path = self.directory / f"{r['export_id']}.age"
            existed = path.exists()
            path.unlink(missing_ok=True)
            with lv.begin() as conn:
                now = lv.now()
                grepo.update_export(conn, r["tenant_id"], r["export_id"], status="purged",
                                    purged_at=now)
                grepo.insert_deletion(conn, {
                    "tenant_id": r["tenant_id"], "deletion_id": new_id("del"),
                    "kind": "export", "object_id": r["export_id"], "rule": "expiry",
                    "actor_id": system.id, "deleted_at": now})
                lv.gate.audit.event(conn, system, "export.purged", "ok", r["tenant_id"],
                                    {"export_id": r["export_id"], "file_existed": existed})
        return {"expired": len(due), "purged": 0 if dry_run else len(due), "ids": purged}

    # -- attribution of a leaked copy -----------------------------------------------------------------
    def any_export(self, actor: Actor) -> bool:
        """Whether ``identify`` has any export to compare a leak with, for this actor
        (breach triage skips re-reading a large file when there is none)."""
        with self.lv.begin() as conn:
            return bool(self._visible_exports(conn, actor))

    @staticmethod
    def _visible_exports(conn: Connection, actor: Actor) -> _ExportRows:
        # Staff (a lab's DPO) investigate their own lab's exports; the operator, every lab's.
        return grepo.list_exports(conn, None if actor.kind in ("operator", "system")
                                  else actor.tenant_id or "-")

    def identify(self, actor: Actor, data: bytes) -> dict[str, Any]:
        """Name the export (and its recipient) a leaked, decrypted copy comes from."""
        rows, ordered = parse_leak(data)
        if not rows:
            raise UserError("no rows found", "give the decrypted NDJSON (or CSV) file")
        rows = export_fields(rows)
        lv = self.lv
        with lv.begin() as conn:
            exports = self._visible_exports(conn, actor)
            by_tenant: dict[str, list[dict[str, Any]]] = {}
            for e in exports:
                by_tenant.setdefault(e["tenant_id"], []).append(e)
            evidence: dict[str, dict[str, Any]] = {}
            for tenant_id, exps in by_tenant.items():
                lv.guard._admin_check(conn, actor, tenant_id, Action.READ, "export")
                secret = lv.guard.secret(conn, tenant_id, "export")
                keys = {e["export_id"]: fp.export_key(secret, e["export_id"]) for e in exps}
                for eid in keys:
                    evidence[eid] = {"tenant_id": tenant_id, "row_ids": 0, "decoys": 0,
                                     "format_agree": 0, "format_trials": 0, "p_value": 1.0}
                for r in rows:
                    rid = r.get("row_id")
                    if isinstance(rid, str):
                        for eid, k in keys.items():
                            if fp.row_id_matches(k, rid):
                                evidence[eid]["row_ids"] += 1
                lv.load_tenant_keys(conn, tenant_id)
                ver = repo.current_key_version(conn, tenant_id, "index")
                assert ver is not None
                idx_key = lv.keyring.blind_index_key(tenant_id, ver)
                digests = [_row_digests(idx_key, r) for r in rows]
                # decoy *rows* per export: one row's NIR, e-mail and phone are one decoy
                decoy_rows: dict[str, set[int]] = {}
                for kind in (bi.NIR, bi.EMAIL, bi.PHONE):
                    ds = [d[kind] for d in digests if kind in d]
                    hits = grepo.find_decoys(conn, tenant_id, kind, ds)
                    for i, d in enumerate(digests):
                        for eid in hits.get(d.get(kind, b""), ()):
                            if eid in evidence:
                                decoy_rows.setdefault(eid, set()).add(i)
                for eid, found in decoy_rows.items():
                    evidence[eid]["decoys"] = len(found)
                patients = _map_rows(conn, tenant_id, digests)
                lv.gate.check(conn, Access(actor, Action.READ, tenant_id, frozenset(),
                                           purpose="breach",
                                           patient_ids=tuple(sorted(set(patients.values()))),
                                           resource="breach"))
                sigs = {"|".join(k for k in r if isinstance(k, str)) for r in rows}
                for eid, k in keys.items():
                    tally = fp.ChannelTally()
                    for i, pid in patients.items():
                        fp.tally_row(tally, fp.choices(k, pid), rows[i], ordered)
                    m, n, p = fp.score(tally, sigs if ordered else ())
                    evidence[eid].update(format_agree=m, format_trials=n, p_value=p)
            named = [(eid, ev) for eid, ev in evidence.items()
                     if ev["row_ids"] or ev["decoys"] or ev["p_value"] < fp.ATTRIBUTION_P]
            named.sort(key=lambda x: (-x[1]["row_ids"], -x[1]["decoys"], x[1]["p_value"]))
            result: dict[str, Any] = {"rows": len(rows), "export_id": None, "recipient": None,
                                      "candidates": [{"export_id": e, **ev} for e, ev in named]}
            if named:
                eid, ev = named[0]
                row = next(e for e in exports if e["export_id"] == eid)
                man = self._manifest(conn, row)
                result.update(export_id=eid, tenant_id=ev["tenant_id"],
                              recipient=man["recipient"], requested_by=man["requested_by"],
                              approvers=man["approvers"], purpose=man["purpose"],
                              created_at=row["created_at"].isoformat(), evidence=ev)
            lv.gate.audit.event(conn, actor, "export.identify", "ok", result.get("tenant_id"),
                                {"rows": len(rows), "export_id": result["export_id"]})
            return result


def parse_leak(data: bytes) -> tuple[list[dict[str, Any]], bool]:
    """Rows of a leaked copy: NDJSON (key order kept) or CSV with a header row. Read as
    breach triage reads it: the same encoding detection, decoded strictly, and the
    delimiter sniffed from the header line (French Excel writes semicolons)."""
    text = decode_text(data, "the leaked file")
    stripped = text.lstrip()
    rows: list[dict[str, Any]] = []
    if stripped.startswith("{"):
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                rows.append(obj)
        return rows, True
    # csv.reader + the header, not DictReader: the same dicts (surplus and empty cells
    # left out, a repeated header name keeps its last cell) at half the cost.
    delimiter = sniff_delimiter(stripped.split("\n", 1)[0])
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return rows, False
    header = [h.strip() for h in header]
    for rec in reader:
        if rec:
            rows.append({k: v for k, v in dict(zip(header, rec, strict=False)).items() if v})
    return rows, False


# breach column meaning -> the export field it is (identify reads these fields)
_FIELD_OF_MEANING = {"nir": "nir", "email": "email", "phone": "phone",
                     "last_name": "birth_name", "first_name": "first_names",
                     "birth_date": "birth_date"}


def export_fields(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A leak's columns under the export's field names. A leaker who re-types the file
    renames them (``NIR``, ``NOM``, ``TEL``, ``MAIL``…): a name that is an export field in
    any case is taken as such, the others by their content, as breach triage detects
    them — else nothing, not even a decoy row, was recognised."""
    from labvault.breach import columns as colmod
    keys = list(dict.fromkeys(k for r in rows for k in r))
    known = {f.lower(): f for f in (*EXPORTABLE, "row_id")}
    names = {k: known.get(k.strip().lower(), k) for k in keys}
    taken = set(names.values())
    sample = [[_text(r.get(k)) for k in keys] for r in rows[:colmod.SAMPLE_ROWS]]
    for k, col in zip(keys, colmod.detect(keys, sample), strict=False):
        field = _FIELD_OF_MEANING.get(col.detected)
        if names[k] not in known.values() and field and field not in taken:
            names[k] = field
            taken.add(field)
    if all(k == n for k, n in names.items()):
        return rows
    return [{names[k]: v for k, v in r.items()} for r in rows]


def _text(value: Any) -> str:
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return "" if value is None else str(value)


def decoy_digests(idx_key: bytes, tenant_id: str, export_id: str,
                  identifiers: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """The decoy rows of an export: a blind-index digest of each decoy's NIR, e-mail
    and phone (a leaked file quoting one names the export)."""
    return [{"tenant_id": tenant_id, "kind": kind, "digest": bi.digest(
                idx_key, kind, indexing.search_value(kind, ident[name])), "export_id": export_id}
            for ident in identifiers for kind, name in DECOY_KINDS.items() if ident.get(name)]


def _row_digests(idx_key: bytes, row: dict[str, Any]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for kind, fieldname in ((bi.NIR, "nir"), (bi.EMAIL, "email"), (bi.PHONE, "phone")):
        v = row.get(fieldname)
        if isinstance(v, str) and v.strip():
            try:
                out[kind] = bi.digest(idx_key, kind, indexing.search_value(kind, v))
            except UserError:
                continue
    firsts = row.get("first_names")
    first = firsts[0] if isinstance(firsts, list) and firsts else firsts
    if isinstance(row.get("birth_name"), str) and isinstance(first, str) \
            and isinstance(row.get("birth_date"), str):
        with contextlib.suppress(UserError, ValueError):
            out[bi.NAME_DOB] = bi.digest(idx_key, bi.NAME_DOB, bi.normalise_name_dob(
                row["birth_name"], first.split(",")[0].strip(" []'\""), row["birth_date"]))
    return out


def _map_rows(conn: Connection, tenant_id: str, digests: list[dict[str, bytes]]
              ) -> dict[int, str]:
    """Row index -> patient id, through the blind indexes (first unambiguous kind wins)."""
    found: dict[int, str] = {}
    for kind in (bi.NIR, bi.EMAIL, bi.PHONE, bi.NAME_DOB):
        todo = [(i, d[kind]) for i, d in enumerate(digests) if kind in d and i not in found]
        if not todo:
            continue
        hits = repo.find_by_digests(conn, tenant_id, kind, [d for _, d in todo])
        for i, d in todo:
            pids = hits.get(d, [])
            if len(pids) == 1:
                found[i] = pids[0]
    return found
