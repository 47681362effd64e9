"""The audit trail as the doors see it: ``audit_of(lv)`` gives the plugged-in log's
operations (verify, checkpoint, prove, prune, reports)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labvault.audit.log import AuditLog
from labvault.audit.ops import AuditOps
from labvault.audit.reports import AuditReports
from labvault.domain.actors import Actor
from labvault.errors import ConfigurationError
from labvault.store import repositories_audit as arepo

if TYPE_CHECKING:
    from labvault.services.app import Labvault


class AuditService(AuditOps, AuditReports):
    """Verification and reports over the log plugged into ``lv``'s gate."""

    # -- one laboratory's chain, for its DPO (the console) ---------------------------------
    def chain_status(self, actor: Actor, tenant_id: str) -> dict[str, Any]:
        """What is cheap to say about the laboratory's chain: its size (the head) and its
        latest signed checkpoint (signature checked; the files, not the entries). An
        audited ``audit`` read of that laboratory."""
        with self.lv.begin() as conn:
            self._check(conn, actor, tenant_id, "audit")
            head = arepo.head(conn, tenant_id)
        cp = self.audit.latest_checkpoint(tenant_id)
        return {"tenant": tenant_id, "entries": int(head["next_seq"]) if head else 0,
                "latest_checkpoint": None if cp is None else {
                    "tree_size": cp.tree_size, "time": cp.time, "kind": cp.kind,
                    "epoch": cp.epoch}}

    def verify_own(self, actor: Actor, tenant_id: str, max_entries: int
                   ) -> dict[str, Any] | None:
        """``verify`` of the laboratory's chain alone (as ``labvault audit verify --tenant``
        reports it), after an audited ``audit`` read of that laboratory -- or None, nothing
        walked, when the chain holds more than ``max_entries`` entries (the walk costs one
        MAC and one hash per entry: the CLI's to run)."""
        with self.lv.begin() as conn:
            self._check(conn, actor, tenant_id, "audit")
            head = arepo.head(conn, tenant_id)
            if head is not None and int(head["next_seq"]) > max_entries:
                return None
            report = self.verify_chain(conn, tenant_id)
        return report.as_json()


def install_audit(lv: Labvault) -> AuditLog:
    """Plug a tamper-evident ``AuditLog`` into ``lv``'s gate (wiring and tests)."""
    return AuditLog(lv.settings).attach(lv)


def audit_of(lv: Labvault) -> AuditService:
    audit = lv.gate.audit
    if not isinstance(audit, AuditLog):
        raise ConfigurationError("the audit log is not plugged in",
                                 "open labvault through services.wiring.open_labvault")
    audit.flush()       # reports and verification see every read, queued ones included
    return AuditService(audit)
