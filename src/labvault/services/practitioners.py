"""The practitioner directory: prescribers a laboratory knows (name, RPPS, telecom).

Used by the FHIR door (``Practitioner``) and to name an order's requester. The data
is sealed with the tenant data key; the RPPS number is searchable through a blind
index. Every read and write passes the gate (category ``clinical``: who prescribes
for whom is clinical information, DESIGN §4; gate resource ``order``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labvault.crypto import blind_index as bi
from labvault.domain import validation as v
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.errors import InvalidField, InvalidRecord, NotFound, RppsTaken
from labvault.services.gate import Access
from labvault.store import repositories as repo
from labvault.store import repositories_fhir as prepo
from labvault.store.ids import new_id

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from labvault.services.app import Labvault

RPPS_INDEX = "rpps"
# Gate resource: a prescriber is part of an order ("exams asked and prescriber of the
# order" in the access policy), so the directory is governed by the order rows.
RESOURCE = "order"
CLINICAL = frozenset({Category.CLINICAL})
FIELDS = frozenset({"name", "family", "given", "rpps", "phone", "email"})


@dataclass(frozen=True, slots=True)
class Practitioner:
    name: str                       # as printed on the prescription ("Dr Anne Martin")
    family: str | None = None
    given: tuple[str, ...] = ()
    rpps: str | None = None         # RPPS: national registry number of health professionals
    phone: str | None = None
    email: str | None = None

    @staticmethod
    def parse(data: object) -> Practitioner:
        if isinstance(data, Practitioner):
            return data
        if not isinstance(data, Mapping):
            raise InvalidRecord([InvalidField("(practitioner)", "must be an object", "")])
        errors: list[InvalidField] = []

        def grab(fn: Any, *args: Any) -> Any:
            try:
                return fn(*args)
            except InvalidField as exc:
                errors.append(exc)
                return None

        for k in sorted(set(data) - FIELDS):
            errors.append(InvalidField(k, "is not a known field",
                                       "allowed: " + ", ".join(sorted(FIELDS))))
        family = grab(v.text, data.get("family"), "family", 100)
        raw_given = data.get("given") or []
        given: list[str] = []
        if not isinstance(raw_given, list | tuple):
            errors.append(InvalidField("given", "must be a list of first names", ""))
        else:
            for i, g in enumerate(raw_given):
                t = grab(v.text, g, f"given[{i}]", 100)
                if t:
                    given.append(t)
        name = grab(v.text, data.get("name"), "name", 200)
        if not name:
            name = " ".join([*given, family or ""]).strip() or None
        if not name:
            errors.append(InvalidField("name", "is required", "give a name or family/given"))
        rpps = grab(v.rpps, data["rpps"], "rpps") if data.get("rpps") else None
        phone = grab(v.phone, data["phone"], "phone") if data.get("phone") else None
        email = grab(v.email, data["email"], "email") if data.get("email") else None
        if errors:
            raise InvalidRecord(errors)
        assert name is not None
        return Practitioner(name, family, tuple(given), rpps, phone, email)

    def as_json(self) -> dict[str, Any]:
        return {k: val for k, val in {
            "name": self.name, "family": self.family, "given": list(self.given) or None,
            "rpps": self.rpps, "phone": self.phone, "email": self.email}.items()
            if val is not None}


class PractitionerService:
    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def _tenant(self, actor: Actor, tenant_id: str | None) -> str:
        t = tenant_id or actor.tenant_id
        if t is None:
            raise InvalidField("tenant_id", "is required for this account",
                               "act as a laboratory account or name the laboratory")
        return t

    def _digest(self, conn: Connection, tenant_id: str, rpps: str | None) -> bytes | None:
        if not rpps:
            return None
        idx = repo.current_key_version(conn, tenant_id, "index")
        assert idx is not None
        return bi.digest(self.lv.keyring.blind_index_key(tenant_id, idx), RPPS_INDEX, rpps)

    def _ids_by_rpps(self, conn: Connection, tenant_id: str, rpps: Sequence[str]) -> list[str]:
        """Practitioners with any of these RPPS numbers, in id order (as a listing)."""
        found: set[str] = set()
        for number in rpps:
            d = self._digest(conn, tenant_id, v.rpps(number, "identifier"))
            assert d is not None
            found.update(prepo.practitioners_by_rpps(conn, tenant_id, d))
        return sorted(found)

    def _seal(self, conn: Connection, tenant_id: str, practitioner_id: str,
              p: Practitioner) -> bytes:
        data = json.dumps(p.as_json(), separators=(",", ":"), ensure_ascii=False).encode()
        return self.lv.gate.seal_tenant_value(conn, tenant_id, "practitioners", "data_sealed",
                                              practitioner_id, data)

    def add(self, actor: Actor, data: object, tenant_id: str | None = None) -> str:
        p = Practitioner.parse(data)
        lv = self.lv
        t = self._tenant(actor, tenant_id)
        with lv.begin() as conn:
            lv.load_tenant_keys(conn, t)
            pid = new_id("pr")
            lv.gate.check(conn, Access(actor, Action.WRITE, t, CLINICAL, resource=RESOURCE))
            digest = self._digest(conn, t, p.rpps)
            self._unique_rpps(conn, t, digest, None)
            prepo.insert_practitioner(conn, t, pid, digest, self._seal(conn, t, pid, p),
                                      lv.now())
            return pid

    @staticmethod
    def _unique_rpps(conn: Connection, tenant_id: str, digest: bytes | None,
                     practitioner_id: str | None) -> None:
        """One directory entry per RPPS number in a laboratory: a second one would split
        a prescriber's orders between two entries (the gate already allowed the write)."""
        if digest is None:
            return
        # locked until the write commits: the same new entry sent twice at once (a
        # conditional create sent again) is added once
        repo.lock_identifier(conn, digest)
        others = [i for i in prepo.practitioners_by_rpps(conn, tenant_id, digest)
                  if i != practitioner_id]
        if others:
            raise RppsTaken("this RPPS number is already in the laboratory's directory",
                            "find that entry by its RPPS and update it instead of adding "
                            "another one")

    def update(self, actor: Actor, practitioner_id: str, data: object,
               tenant_id: str | None = None) -> None:
        p = Practitioner.parse(data)
        lv = self.lv
        t = self._tenant(actor, tenant_id)
        with lv.begin() as conn:
            lv.load_tenant_keys(conn, t)
            lv.gate.check(conn, Access(actor, Action.WRITE, t, CLINICAL, resource=RESOURCE))
            digest = self._digest(conn, t, p.rpps)
            self._unique_rpps(conn, t, digest, practitioner_id)
            if not prepo.update_practitioner(conn, t, practitioner_id, digest,
                                             self._seal(conn, t, practitioner_id, p), lv.now()):
                raise NotFound("no such practitioner", "check the practitioner id")

    def _open(self, conn: Connection, tenant_id: str, rows: Sequence[Mapping[str, Any]]
              ) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            raw = self.lv.gate.open_tenant_value_checked(
                conn, tenant_id, "practitioners", "data_sealed", r["practitioner_id"],
                r["data_sealed"])
            out.append({"id": r["practitioner_id"], "updated_at": r["updated_at"],
                        **json.loads(raw)})
        return out

    def get(self, actor: Actor, practitioner_id: str, tenant_id: str | None = None,
            for_update: bool = False) -> dict[str, Any]:
        """``for_update``: the entry is locked before it is read, until the end of the
        caller's open transaction (a FHIR ``If-Match`` check, then the update)."""
        lv = self.lv
        t = self._tenant(actor, tenant_id)
        with lv.begin() as conn:
            row = prepo.get_practitioner(conn, t, practitioner_id, lock=for_update)
            lv.gate.check(conn, Access(actor, Action.READ, t, CLINICAL, resource=RESOURCE,
                                       patient_ids=()))
            if row is None:
                raise NotFound("no such practitioner", "check the practitioner id")
            return self._open(conn, t, [row])[0]

    def change_markers(self, actor: Actor, practitioner_id: str,
                       tenant_id: str | None = None) -> dict[str, Any]:
        """When the entry last changed (``updated_at``, as ``get`` gives it): a clear column,
        what its FHIR version is a digest of; no gate decision (nothing sealed is read)."""
        t = self._tenant(actor, tenant_id)
        with self.lv.begin() as conn:
            row = prepo.get_practitioner(conn, t, practitioner_id)
        if row is None:
            raise NotFound("no such practitioner", "check the practitioner id")
        return {"updated_at": row["updated_at"]}

    def find(self, actor: Actor, *, rpps: str | Sequence[str] | None = None, offset: int = 0,
             limit: int = 50, tenant_id: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """A page of practitioners (all, or those with this RPPS, or with any of these)
        and the total count."""
        lv = self.lv
        t = self._tenant(actor, tenant_id)
        with lv.begin() as conn:
            lv.load_tenant_keys(conn, t)
            lv.gate.check(conn, Access(actor, Action.READ, t, CLINICAL, resource=RESOURCE))
            if rpps is not None:
                ids = self._ids_by_rpps(conn, t, [rpps] if isinstance(rpps, str) else rpps)
                rows = prepo.practitioners_by_ids(conn, t, ids[offset:offset + limit])
                total = len(ids)
            else:
                rows = prepo.list_practitioners(conn, t, offset, limit)
                total = prepo.count_practitioners(conn, t)
            return self._open(conn, t, rows), total
