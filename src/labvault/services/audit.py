"""The audit trail as the doors see it: ``audit_of(lv)`` gives the plugged-in log's
operations (verify, checkpoint, prove, prune, reports)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labvault.audit.log import AuditLog
from labvault.audit.ops import AuditOps
from labvault.audit.reports import AuditReports
from labvault.errors import ConfigurationError

if TYPE_CHECKING:
    from labvault.services.app import Labvault


class AuditService(AuditOps, AuditReports):
    """Verification and reports over the log plugged into ``lv``'s gate."""


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
