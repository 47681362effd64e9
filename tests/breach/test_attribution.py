"""Attribution: readers from the tamper-evident audit log; the guard's extension point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from labvault.breach import synthdump as sd
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.services.audit import install_audit
from tests.breach.conftest import Store


def test_readers_ranked_from_the_audit_log(lv: Labvault, operator: Actor, store: Store,
                                           tmp_path: Path) -> None:
    install_audit(lv)
    t = store.tenants[0]
    leaked = [p for p in store.patients if p[0] == t][:15]
    for _, pid, _ in leaked:
        lv.patients.show(operator, pid)
    path = tmp_path / "d.csv"
    sd.write_csv(path, sd.make_dump(leaked, 5, seed=2).rows)
    case = lv.breach.open_case(operator, "t", lv.now().isoformat())
    res = lv.breach.triage(operator, case, [path])
    readers = [a for a in res["attribution"] if a["kind"] == "reader"]
    assert readers and readers[0]["account"] == operator.id
    assert readers[0]["tenant_id"] == t and readers[0]["overlap"] >= 14
    assert not [a for a in res["attribution"] if a["kind"] == "export"]


class DecoySource:
    """Stands in for the guard: patient ``decoy`` was planted in export ``exp_1``."""

    name = "test-decoys"

    def __init__(self, decoy: str) -> None:
        self.decoy = decoy

    def attribute(self, conn: Connection, matched: Mapping[str, Sequence[str]],
                  rows: Mapping[str, Mapping[str, Sequence[int]]]) -> list[dict[str, Any]]:
        return [{"kind": "export", "export_id": "exp_1", "tenant_id": t,
                 "rows": list(rows[t][self.decoy])}
                for t, ids in matched.items() if self.decoy in ids]


def test_extension_point_attributes_only_marked_dumps(lv: Labvault, operator: Actor,
                                                      store: Store, tmp_path: Path) -> None:
    decoy = store.patients[3]
    lv.breach.attribution_sources.append(DecoySource(decoy[1]))
    marked = tmp_path / "marked.csv"
    sd.write_csv(marked, sd.make_dump(store.patients[:10], 2, seed=3).rows)
    clean = tmp_path / "clean.csv"
    sd.write_csv(clean, sd.make_dump(store.patients[5:15], 2, seed=3).rows)
    case = lv.breach.open_case(operator, "t", lv.now().isoformat())
    res = lv.breach.triage(operator, case, [marked])
    exports = [a for a in res["attribution"] if a["kind"] == "export"]
    assert [e["export_id"] for e in exports] == ["exp_1"] and exports[0]["rows"]
    res = lv.breach.triage(operator, case, [clean])
    assert not [a for a in res["attribution"] if a["kind"] == "export"]


def test_honeytoken_in_the_dump_names_its_laboratory(lv: Labvault, operator: Actor,
                                                     store: Store, tmp_path: Path) -> None:
    t = store.tenants[1]
    canary = lv.guard.plant(operator, t, 1)[0]
    shown = lv.patients.show(operator, canary)
    rec = {k: v for k, v in shown.items() if k not in ("id", "tenant_id", "categories",
                                                       "created_at")}
    path = tmp_path / "d.csv"
    sd.write_csv(path, sd.make_dump([(t, canary, rec), *store.patients[:5]], 3, seed=4).rows)
    case = lv.breach.open_case(operator, "t", lv.now().isoformat())
    res = lv.breach.triage(operator, case, [path])
    hits = [a for a in res["attribution"] if a["kind"] == "honeytoken"]
    assert [(h["tenant_id"], h["patient_id"]) for h in hits] == [(t, canary)]
    assert hits[0]["rows"]
