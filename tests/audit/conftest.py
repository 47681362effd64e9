"""Audit fixtures: the shared ``lv`` core (both backends) with the real audit log plugged in."""

from __future__ import annotations

import pytest

from labvault.audit.log import AuditLog
from labvault.services.app import Labvault
from labvault.services.audit import AuditService, audit_of, install_audit


@pytest.fixture
def audit_log(lv: Labvault) -> AuditLog:
    return install_audit(lv)


@pytest.fixture
def audit(lv: Labvault, audit_log: AuditLog) -> AuditService:
    return audit_of(lv)
