"""AuditEvent at ``/fhir/R4/AuditEvent``: the laboratory's audit trail for its data
protection officer, read and searched (never written: labvault writes it itself).

Each entry is projected as ``audit.reports.to_audit_event`` does for the NDJSON export
(IHE BALP, ids only: no name, no NIR). A search names a patient (``patient``: "who
touched this record") or an account (``agent``: "what did this user do"), optionally
narrowed by ``date``; the whole chain is ``labvault audit fhir`` (an export, audited as
one). Access is the policy's ``audit`` resource (the DPO of the laboratory); every read
and search is itself an audited gate decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from labvault.domain.actors import Actor
from labvault.errors import NotFound
from labvault.interop.fhir import ids
from labvault.interop.fhir.lab import patient_param
from labvault.interop.fhir.outcome import FhirError
from labvault.interop.fhir.search import date_window, tokens_in
from labvault.interop.fhir.server import Query, SearchResult, not_found, tenant_of
from labvault.services.audit import audit_of

if TYPE_CHECKING:
    from labvault.services.app import Labvault

ACCOUNT_SYSTEM = "urn:labvault:account"     # AuditEvent.agent.who.identifier.system


class AuditEventHandler:
    rtype = "AuditEvent"
    search_params: Mapping[str, str] = {"patient": "reference", "agent": "token",
                                        "date": "date"}
    interactions = ("read", "search-type")
    versioning = "no-version"       # an entry never changes: no versionId, no ETag

    def __init__(self, lv: Labvault) -> None:
        self.lv = lv

    def version(self, actor: Actor, fhir_id: str) -> tuple[str, str | None]:
        raise FhirError(405, "not-supported", "an AuditEvent has no version (it never "
                        "changes) and is never written through this door", [self.rtype])

    def read(self, actor: Actor, fhir_id: str, for_update: bool = False) -> dict[str, Any]:
        """(``for_update`` is never asked: an audit entry is not updated here.)"""
        entry_id = ids.from_fhir(fhir_id, "ae")
        if entry_id is None:
            raise not_found(self.rtype, fhir_id)
        try:
            return audit_of(self.lv).fhir_event(actor, tenant_of(actor), entry_id)
        except NotFound:
            raise not_found(self.rtype, fhir_id) from None

    def _read_only(self) -> FhirError:
        return FhirError(405, "not-supported", "AuditEvent is read-only here: labvault writes "
                         "the audit trail itself", [self.rtype])

    def create(self, actor: Actor, resource: Mapping[str, Any]) -> str:
        raise self._read_only()

    def update(self, actor: Actor, fhir_id: str, resource: Mapping[str, Any]) -> None:
        raise self._read_only()

    @staticmethod
    def _agent(value: str) -> str:
        """One account id: the trail is read one account at a time (an audited question)."""
        found = tokens_in("agent", value, (ACCOUNT_SYSTEM,))
        if len(found) != 1 or not found[0].code:
            raise FhirError(400, "invalid", f"agent is one account id ({ACCOUNT_SYSTEM}|"
                            "acc_...)", ["agent"])
        return found[0].code

    def search(self, actor: Actor, q: Query) -> SearchResult:
        patient_id = patient_param(q, required=False)
        agent = q.one("agent")
        agent_id = None if agent is None else self._agent(agent)
        if patient_id is None and agent_id is None:
            raise FhirError(400, "not-supported", "an AuditEvent search names patient=Patient/"
                            "<id> or agent=<account id>; the whole trail is `labvault audit "
                            "fhir` (an audited export)", ["patient"])
        since, until = date_window("date", q.params.get("date") or [])
        events = audit_of(self.lv).fhir_search(actor, tenant_of(actor), patient_id, agent_id,
                                               since, until)
        return SearchResult(events[q.offset:q.offset + q.count], len(events))
