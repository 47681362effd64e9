"""Projections of the audit trail: "who saw my record", the DPO's per-user report,
FHIR AuditEvent (IHE BALP) export, and the GDPR Art. 30 record of processing.

Reading the audit trail is itself a gate decision (and so an audit entry).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from labvault.audit.entry import PLATFORM, AuditEntry, datetime_to_us
from labvault.config import SETTINGS
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.errors import NotFound
from labvault.store import repositories as repo
from labvault.store import repositories_audit as arepo
from labvault.store import repositories_merge as mrepo
from labvault.store.schema import patients

if TYPE_CHECKING:
    from labvault.audit.log import AuditLog
    from labvault.services.app import Labvault

PATIENT_ACTIONS = frozenset(a.value for a in Action)

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"

# action -> (type coding, subtype coding, FHIR action code, BALP profile when a patient is named)
_REST = {"system": EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
BALP_CODES: dict[str, tuple[dict[str, str], dict[str, str] | None, str, str | None]] = {
    "read": (_REST, {"system": RESTFUL, "code": "read"}, "R", "IHE.BasicAudit.PatientRead"),
    "search": (_REST, {"system": RESTFUL, "code": "search-type"}, "E",
               "IHE.BasicAudit.PatientQuery"),
    "create": (_REST, {"system": RESTFUL, "code": "create"}, "C",
               "IHE.BasicAudit.PatientCreate"),
    "update": (_REST, {"system": RESTFUL, "code": "update"}, "U",
               "IHE.BasicAudit.PatientUpdate"),
    "delete": (_REST, {"system": RESTFUL, "code": "delete"}, "D",
               "IHE.BasicAudit.PatientDelete"),
    "export": ({"system": DCM, "code": "110106", "display": "Export"}, None, "R", None),
    "login": ({"system": DCM, "code": "110114", "display": "User Authentication"},
              {"system": DCM, "code": "110122", "display": "Login"}, "E", None),
    "logout": ({"system": DCM, "code": "110114", "display": "User Authentication"},
               {"system": DCM, "code": "110123", "display": "Logout"}, "E", None),
    "security": ({"system": DCM, "code": "110113", "display": "Security Alert"}, None, "E", None),
}
OUTCOMES = {"allowed": "0", "success": "0", "denied": "4", "failure": "8", "error": "12"}
PURPOSE_OF_USE = {"care": "TREAT", "break-glass": "ETREAT", "emergency": "ETREAT",
                  "erasure": "PATRQT", "access-log": "PATRQT", "key-management": "HSYSADMIN",
                  "audit": "HSYSADMIN", "breach": "HSYSADMIN"}

PURPOSES: dict[str, str] = {
    "care": "medical biology: receiving prescriptions, analysing specimens, validating and "
            "delivering results to prescribers and patients (GDPR Art. 9(2)(h))",
    "administration": "laboratory administration: registration, coverage (AMO/AMC) and billing",
    "migration": "import of records from a previous laboratory system",
    "export": "transmission to recipients the laboratory instructs (allow-listed fields, "
              "encrypted, expiring)",
    "erasure": "exercise of data-subject rights (erasure, access)",
    "access-log": "showing patients who accessed their record",
    "audit": "security supervision: audit trail, alerts, the DPO's reports",
    "key-management": "key rotation and administration of the platform",
    "breach": "personal-data breach response (GDPR Art. 33-34)",
}
CATEGORY_FIELDS: dict[str, str] = {
    Category.IDENTITY.value: "birth name, used name, first names, birth date, sex, birth place, "
                             "NIR, INS",
    Category.CONTACT.value: "postal address, phone, e-mail",
    Category.COVERAGE.value: "mandatory (AMO) and complementary (AMC) insurers, member numbers",
    Category.CLINICAL.value: "orders, specimens, results, blood group, conclusions, diagnoses, "
                             "notes, prescriber (health data, GDPR Art. 9)",
    Category.ACCOUNT.value: "portal login, password hash (Argon2id), MFA secret (sealed)",
}


def event_kind(e: AuditEntry) -> str:
    """The BALP/DICOM kind of an entry: read, search, create, update, delete, export, ..."""
    a = e.action
    if e.event:
        if "logout" in a:
            return "logout"
        if "login" in a or "mfa" in a:
            return "login"
        return "export" if "export" in a else "security"
    if a == "read":
        return "read"
    if a == "search":
        return "search"
    if a == "erase":
        return "delete"
    if a == "export":
        return "export"
    if a == "write":
        return "update" if e.patient_ids else "create"
    return "update"  # validate


def fhir_id(value: str) -> str:
    return value.replace("_", "-")[:64]


def to_audit_event(e: AuditEntry, lab_names: dict[str, str]) -> dict[str, Any]:
    """One entry as a FHIR R4B AuditEvent following IHE BALP (ids only, no identity)."""
    kind = event_kind(e)
    type_, subtype, action, profile = BALP_CODES[kind]
    roles = [{"coding": [{"system": "urn:labvault:role", "code": r}]} for r in e.actor_roles]
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                       "v3-ParticipationType", "code": "IRCP",
                             "display": "information recipient"}]},
        "who": {"identifier": {"system": "urn:labvault:account", "value": e.actor_id},
                **({"display": lab_names.get(e.actor_tenant or "", "")} if e.actor_tenant
                   else {})},
        "requestor": True,
    }
    if roles:
        agent["role"] = roles
    if e.purpose:
        agent["purposeOfUse"] = [{"coding": [{"system": ACT_REASON,
                                              "code": PURPOSE_OF_USE.get(e.purpose, "HOPERAT")}],
                                  "text": e.purpose}]
    ev: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": fhir_id(e.entry_id),
        "type": type_,
        "action": action,
        "recorded": e.at.astimezone(UTC).isoformat(),
        "outcome": OUTCOMES.get(e.outcome, "8"),
        "agent": [agent],
        "source": {"site": e.tenant_id,
                   "observer": {"display": "labvault"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                       "security-source-type", "code": "4",
                             "display": "Application Server"}]},
    }
    if subtype:
        ev["subtype"] = [subtype]
    if e.outcome not in ("allowed", "success"):
        ev["outcomeDesc"] = f"{e.outcome} ({e.rule or e.action})"
    if e.purpose:
        ev["purposeOfEvent"] = agent["purposeOfUse"]
    entities: list[dict[str, Any]] = [
        {"what": {"reference": f"Patient/{fhir_id(p)}"},
         "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                  "code": "1", "display": "Person"},
         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1",
                  "display": "Patient"}}
        for p in e.patient_ids]
    if e.categories:
        entities.append({"what": {"display": e.resource},
                         "type": {"system": "http://terminology.hl7.org/CodeSystem/"
                                            "audit-entity-type", "code": "2",
                                  "display": "System Object"},
                         "securityLabel": [{"system": "urn:labvault:category", "code": c}
                                           for c in e.categories]})
    if entities:
        ev["entity"] = entities
    if profile and e.patient_ids:
        ev["meta"] = {"profile": [BALP + profile]}
    return ev


def _known_actor(conn: Connection, actor_id: str, tenant_id: str | None = None) -> bool:
    """An operator or system principal (``os:user@host``, ``system:job``: not accounts,
    an empty report about one is an answer), an account (even one that did nothing yet),
    or an actor the trail has seen. Anything else is a typo, not an innocent user.
    ``tenant_id``: an account of that laboratory (the entries were read from its chain)."""
    from labvault.store import repositories_access as accrepo
    if actor_id.startswith(("os:", "system:")):
        return True
    account = accrepo.get_account(conn, actor_id)
    if tenant_id is not None:
        return account is not None and account["tenant_id"] == tenant_id
    return account is not None or arepo.actor_has_entries(conn, actor_id)


def _entries_with_merged(conn: Connection, chain: str, patient_id: str,
                         since_us: int) -> list[dict[str, Any]]:
    """The chain's entries about ``patient_id`` and about the duplicates merged into it
    (services/merge.py): their entries stay as written, under their own ids, and are this
    record's history now ("who saw my record" includes who saw the duplicate)."""
    ids = [patient_id, *mrepo.merged_into(conn, chain, patient_id)]
    if len(ids) == 1:
        return arepo.entries_for_patient(conn, chain, patient_id, since_us)
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for pid in ids:
        for r in arepo.entries_for_patient(conn, chain, pid, since_us):
            seen.setdefault((r["tenant_id"], int(r["seq"])), r)
    return sorted(seen.values(), key=lambda r: (r["at_us"], r["tenant_id"], r["seq"]))


class AuditReports:
    audit: AuditLog

    @property
    def lv(self) -> Labvault:
        return self.audit.lv

    # -- helpers ---------------------------------------------------------------------------
    def _lab_names(self, conn: Connection) -> dict[str, str]:
        return {t["tenant_id"]: t["name"] for t in repo.list_tenants(conn)}

    def _check(self, conn: Connection, actor: Actor, tenant_id: str | None, purpose: str,
               action: Action = Action.READ, patient_ids: tuple[str, ...] = ()) -> None:
        from labvault.services.gate import Access
        self.lv.gate.check(conn, Access(actor, action, tenant_id, frozenset(), purpose=purpose,
                                        patient_ids=patient_ids, resource="audit"))

    @staticmethod
    def who(e: AuditEntry, lab_names: dict[str, str]) -> str:
        """Staff named by role and laboratory only (never by name)."""
        if e.actor_kind == "patient":
            return "you (patient portal)"
        if e.actor_kind == "operator":
            return "platform operator"
        if e.actor_kind == "system":
            return "labvault (automatic processing)"
        roles = ", ".join(e.actor_roles) or "staff"
        lab = lab_names.get(e.actor_tenant or "")
        return f"{roles} — {lab}" if lab else roles

    # -- who saw my record ------------------------------------------------------------------
    def access_log(self, actor: Actor, patient_id: str, include_denied: bool = False,
                   since: datetime | None = None,
                   until: datetime | None = None) -> list[dict[str, Any]]:
        """Who touched the record, oldest first (``until``: exclusive): roles and
        laboratories, as the patient's answer gives them (the patient's portal, the
        operator's ``labvault audit access``). Staff -- the DPO on the console, who
        investigates and reads the same trail as AuditEvents -- get each actor's account
        id too. Staff asking about a record their laboratory does not hold get the answer
        of an absent id, the miss recorded."""
        if actor.kind == "patient":
            patient_id = actor.patient_id or ""
        with self.lv.begin() as conn:
            tenant = conn.execute(select(patients.c.tenant_id).where(
                patients.c.patient_id == patient_id)).scalar()
            if actor.kind == "staff" and tenant != actor.tenant_id:
                from labvault.services.gate import Access
                self.lv.gate.refuse_absent(conn, Access(
                    actor, Action.READ, actor.tenant_id, frozenset(), purpose="audit",
                    resource="audit"), "patient", patient_id)
                tenant = None
            if tenant is None:
                raise NotFound("no such patient", "check the patient id")
            self._check(conn, actor, tenant,
                        "access-log" if actor.kind == "patient" else "audit",
                        patient_ids=(patient_id,))
            rows = _entries_with_merged(conn, tenant, patient_id,
                                        datetime_to_us(since) if since else 0)
            labs = self._lab_names(conn)
        out: list[dict[str, Any]] = []
        for row in rows:
            e = AuditEntry.from_row(row)
            if e.resource == "audit" and e.actor_kind == "patient":
                continue     # the patient's own look at this list
            if not include_denied and e.outcome not in ("allowed", "success"):
                continue
            if until is not None and e.at >= until:
                continue
            out.append({"at": e.at.isoformat(), "who": self.who(e, labs),
                        **({"actor_id": e.actor_id} if actor.kind == "staff" else {}),
                        "role": list(e.actor_roles), "lab": labs.get(e.actor_tenant or ""),
                        "actor_kind": e.actor_kind, "action": e.action,
                        "resource": e.resource or None,     # patient, order, report...
                        "categories": list(e.categories), "purpose": e.purpose,
                        "outcome": e.outcome, "break_glass": bool(e.detail.get("break_glass"))
                        or e.rule == "break-glass", "entry_id": e.entry_id})
        return out

    # -- the DPO's report on one user -----------------------------------------------------
    def user_report(self, actor: Actor, user_id: str, since: datetime | None = None,
                    until: datetime | None = None,
                    tenant_id: str | None = None) -> dict[str, Any]:
        """Every entry by ``user_id``, refusals included. ``tenant_id``: that laboratory's
        chain only (its DPO on the console; the gate decides for that laboratory), where an
        account of another laboratory with no entry in it is no known actor."""
        with self.lv.begin() as conn:
            self._check(conn, actor, tenant_id, "audit")
            rows = arepo.entries_for_actor(conn, user_id, datetime_to_us(since) if since else 0,
                                           datetime_to_us(until) if until else None)
            if tenant_id is not None:
                rows = [r for r in rows if r["tenant_id"] == tenant_id]
            if not rows and not _known_actor(conn, user_id, tenant_id):
                raise NotFound(f"no account {user_id}, and no audit entry by it",
                               "check the id (`labvault user show`); the CLI operator is "
                               "os:<user>@<host>, labvault's own jobs system:<job>")
            labs = self._lab_names(conn)
            entries: list[dict[str, Any]] = []
            for row in rows:
                e = AuditEntry.from_row(row)
                item = e.as_json()
                item["lab"] = labs.get(e.actor_tenant or "")
                if e.sealed is not None:
                    item["sealed"] = self.audit.open_private(conn, e.tenant_id, e.entry_id,
                                                             e.sealed)
                if e.client_sealed is not None:
                    item.setdefault("sealed", {})["client"] = self.audit.open_client(
                        conn, e.tenant_id, e.client_sealed)
                entries.append(item)
        by_action: dict[str, int] = {}
        patients_seen: set[str] = set()
        for it in entries:
            key = f"{it['action']}:{it['outcome']}"
            by_action[key] = by_action.get(key, 0) + 1
            if it["outcome"] == "allowed":
                patients_seen.update(it["patient_ids"])
        return {"user": user_id, "since": since.isoformat() if since else None,
                "until": until.isoformat() if until else None, "entries": len(entries),
                "by_action": by_action, "distinct_patients": len(patients_seen),
                "denied": sum(1 for it in entries if it["outcome"] == "denied"),
                "items": entries}

    # -- FHIR AuditEvent read and search (the DPO at /fhir/R4/AuditEvent) -------------------
    def fhir_search(self, actor: Actor, tenant_id: str, patient_id: str | None = None,
                    agent_id: str | None = None, since: datetime | None = None,
                    until: datetime | None = None) -> list[dict[str, Any]]:
        """This laboratory's entries about one patient and/or by one account, in time
        order, as AuditEvents (ids only). One gate decision (``audit`` read, naming the
        patient when there is one): the search itself is audited."""
        if patient_id is None and agent_id is None:
            raise ValueError("an AuditEvent search names a patient or an agent")
        since_us = datetime_to_us(since) if since else 0
        until_us = datetime_to_us(until) if until else None
        with self.lv.begin() as conn:
            self._check(conn, actor, tenant_id, "audit",
                        patient_ids=(patient_id,) if patient_id else ())
            if patient_id is not None:
                rows = _entries_with_merged(conn, tenant_id, patient_id, since_us)
            else:
                assert agent_id is not None
                rows = arepo.entries_for_actor(conn, agent_id, since_us, until_us)
            labs = self._lab_names(conn)
        return [to_audit_event(AuditEntry.from_row(r), labs) for r in rows
                if r["tenant_id"] == tenant_id
                and (agent_id is None or r["actor_id"] == agent_id)
                and (until_us is None or int(r["at_us"]) < until_us)]

    def fhir_event(self, actor: Actor, tenant_id: str, entry_id: str) -> dict[str, Any]:
        """One entry of this laboratory's chain as an AuditEvent; ``NotFound`` for an
        unknown id or another laboratory's entry (the same answer)."""
        with self.lv.begin() as conn:
            row = arepo.entry_by_id(conn, entry_id)
            if row is None or row["tenant_id"] != tenant_id:
                raise NotFound("no such audit entry", "check the AuditEvent id")
            e = AuditEntry.from_row(row)
            self._check(conn, actor, tenant_id, "audit", patient_ids=e.patient_ids)
            labs = self._lab_names(conn)
        return to_audit_event(e, labs)

    # -- FHIR AuditEvent export -----------------------------------------------------------------
    def audit_events(self, actor: Actor, tenant: str | None = None,
                     since: datetime | None = None) -> Iterator[dict[str, Any]]:
        with self.lv.begin() as conn:
            if tenant is not None:
                from labvault.audit.ops import require_chain
                require_chain(conn, set(arepo.chains(conn)), tenant)
            self._check(conn, actor, tenant if tenant != PLATFORM else None, "audit",
                        Action.EXPORT)
            labs = self._lab_names(conn)
        after: tuple[str, int] | None = None
        while True:
            with self.lv.begin() as conn:
                page = arepo.entries_page(conn, tenant, after, 2000,
                                          datetime_to_us(since) if since else 0)
            if not page:
                return
            for row in page:
                yield to_audit_event(AuditEntry.from_row(row), labs)
            after = (page[-1]["tenant_id"], int(page[-1]["seq"]))

    def export_fhir(self, actor: Actor, out: Path | IO[str], tenant: str | None = None,
                    since: datetime | None = None) -> int:
        """Write AuditEvent resources as NDJSON; returns how many."""
        n = 0
        events = self.audit_events(actor, tenant, since)
        first = next(events, None)      # the checks (laboratory, gate) before a file exists

        def write(fh: IO[str]) -> None:
            nonlocal n
            for ev in itertools.chain([first] if first is not None else [], events):
                fh.write(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) + "\n")
                n += 1

        if isinstance(out, Path):
            with out.open("w", encoding="utf-8") as fh:
                write(fh)
        else:
            write(out)
        return n

    # -- GDPR Art. 30 record of processing ---------------------------------------------------
    def register(self) -> dict[str, Any]:
        s = self.lv.settings
        with self.lv.begin() as conn:
            labs = [{"id": t["tenant_id"], "name": t["name"], "finess": t["finess"]}
                    for t in repo.list_tenants(conn)]
        env = {k: s.extra.get(k) or d for k, (d, _) in SETTINGS.items()}
        retention = [{"setting": k, "value": env[k], "rule": desc}
                     for k, (_, desc) in SETTINGS.items()
                     if any(w in k for w in ("RETENTION", "TTL", "EXPIR", "PURGE"))]
        recipients = [
            {"recipient": "prescribing doctors", "data": ["identity", "clinical"],
             "means": "result delivery (HL7 v2 / FHIR / portal)"},
            {"recipient": "the patient", "data": ["identity", "contact", "coverage", "clinical"],
             "means": "patient portal, data download"},
            {"recipient": "export recipients instructed by the laboratory",
             "data": "allow-listed fields only",
             "means": "age-encrypted, watermarked, expiring exports (audited)"},
        ]
        recipients += [{"recipient": f"configured: {k}", "data": "see setting",
                        "means": env[k]} for k in SETTINGS
                       if k.startswith("LABVAULT_EXPORT_") and env[k]]
        security = [
            "every personal field sealed with AES-256-GCM; keys never stored in the database "
            f"(root key held by the {s.key_provider} key provider)",
            "per-tenant key-encryption keys, per-patient data keys; erasure by crypto-shredding",
            "searches through truncated HMAC-SHA256 blind indexes only",
            "single access gate: tenant, role, category and purpose policy, default deny; "
            "read budgets and anomaly rules",
            "tamper-evident audit trail: per-tenant forward-secure MAC chain, Ed25519-signed "
            "RFC 6962 Merkle checkpoints kept outside the database"
            + (", forwarded to syslog" if env["LABVAULT_AUDIT_SYSLOG"] else ""),
            "named personal accounts, Argon2id password hashes, MFA for staff",
            f"database: {'SQLite (embedded)' if s.is_sqlite else 'PostgreSQL'}",
        ]
        return {
            "title": "Record of processing activities (GDPR Art. 30)",
            "generated_at": datetime.now(UTC).isoformat(),
            "controllers": labs,
            "processor": "labvault operator (hosting and maintenance on the laboratories' "
                         "instructions)",
            "purposes": [{"purpose": k, "description": v} for k, v in PURPOSES.items()],
            "data_subjects": ["patients", "laboratory staff (accounts, audit trail)",
                              "prescribers (name, RPPS number)"],
            "categories": [{"category": c.value, "fields": CATEGORY_FIELDS[c.value],
                            "special_category": c == Category.CLINICAL} for c in Category],
            "recipients": recipients,
            "transfers_outside_eu": "none",
            "retention": retention,
            "security_measures": security,
        }

    @staticmethod
    def register_markdown(reg: dict[str, Any]) -> str:
        lines = [f"# {reg['title']}", "", f"Generated {reg['generated_at']} from the system's "
                 "configuration.", "", "## Controllers", ""]
        lines += [f"- {c['name']} (FINESS {c['finess']}, `{c['id']}`)" for c in reg["controllers"]]
        lines += ["", f"Processor: {reg['processor']}", "", "## Purposes", ""]
        lines += [f"- **{p['purpose']}**: {p['description']}" for p in reg["purposes"]]
        lines += ["", "## Data subjects", ""] + [f"- {d}" for d in reg["data_subjects"]]
        lines += ["", "## Categories of personal data", "", "| category | fields | special |",
                  "|---|---|---|"]
        lines += [f"| {c['category']} | {c['fields']} | {'yes' if c['special_category'] else 'no'} |"
                  for c in reg["categories"]]
        lines += ["", "## Recipients", ""]
        lines += [f"- {r['recipient']}: {r['data'] if isinstance(r['data'], str) else ', '.join(r['data'])}"
                  f" — {r['means']}" for r in reg["recipients"]]
        lines += ["", f"Transfers outside the EU: {reg['transfers_outside_eu']}", "",
                  "## Retention", ""]
        lines += [f"- `{r['setting']}` = {r['value'] or '(unset)'}: {r['rule']}"
                  for r in reg["retention"]]
        lines += ["", "## Security measures (GDPR Art. 32)", ""]
        lines += [f"- {m}" for m in reg["security_measures"]]
        return "\n".join(lines) + "\n"
