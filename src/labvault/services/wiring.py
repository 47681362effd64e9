"""Which implementation of each gate hook a running labvault uses.

Each area plugs its implementation in here (policy: access, budget: guard,
audit: audit). Tests build ``Labvault`` with in-memory hooks instead.
"""

from __future__ import annotations

from labvault.access.policy import TablePolicy
from labvault.config import Settings
from labvault.services.app import Labvault
from labvault.services.audit import install_audit


def open_labvault(settings: Settings) -> Labvault:
    lv = Labvault.open(settings, policy=TablePolicy())
    install_audit(lv)
    lv.guard.install()  # budgets, rules, honeytokens, alerts (after the audit log)
    return lv


def init_labvault(settings: Settings) -> Labvault:
    Labvault.init(settings).close()
    return open_labvault(settings)
