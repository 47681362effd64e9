"""Every alert kind the product raises is named in French on the console's alert pages."""

from __future__ import annotations


def test_every_alert_kind_has_a_french_name() -> None:
    from labvault.guard.rules import RULES
    from labvault.services.delivery import ALERT_KIND
    from labvault.services.portal import ERASURE_KIND
    from labvault.web.render import KIND_FR
    raised = {*RULES, "panic-value", "import-issue", ERASURE_KIND, ALERT_KIND}
    assert raised - set(KIND_FR) == set()
    assert all(KIND_FR[k] and KIND_FR[k] != k for k in raised)
