"""``import_records``: the typed bulk path stores exactly what ``import_lines`` stores."""

from __future__ import annotations

import json

from labvault.domain.actors import Actor
from labvault.domain.patient import PatientRecord
from labvault.services.app import Labvault
from tests.foundation.conftest import synthetic


def test_import_records_same_as_lines(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    recs = synthetic(30, seed=97)
    report = lv.patients.import_records(operator, tenant_id,
                                        (PatientRecord.parse(r) for r in recs[:20]))
    assert (report.imported, report.skipped, report.rejected) == (20, 0, [])
    # idempotent on external_id across both paths
    again = lv.patients.import_lines(operator, tenant_id, [json.dumps(r) for r in recs])
    assert (again.imported, again.skipped) == (10, 20)
    for r in recs:
        (pid,) = lv.patients.find(operator, tenant_id, nir=r["nir"])
        shown = lv.patients.show(operator, pid)
        assert (shown["email"], shown["external_id"]) == (r["email"], r["external_id"])
    audit = lv.gate.audit.entries  # type: ignore[attr-defined]
    assert any(a.purpose == "migration" and a.action == "write" for a, _d, _o in audit)
