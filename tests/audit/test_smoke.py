from __future__ import annotations

from labvault.audit.log import AuditLog
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.services.audit import AuditService
from labvault.synthetic import people


def test_smoke(lv: Labvault, audit_log: AuditLog, audit: AuditService, operator: Actor) -> None:
    import random

    from labvault.synthetic import make_finess
    tid = lv.tenants.add(operator, "Lab", make_finess(random.Random(1))).tenant_id
    p = {k: v for k, v in next(people(1, seed=3)).items() if v is not None}
    pid = lv.patients.register(operator, tid, p)
    lv.patients.show(operator, pid)
    res = audit.verify()
    print(res)
    assert res["ok"]
    print(audit.checkpoint())
    print(audit.access_log(operator, pid))
    assert audit.verify()["ok"]
