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


def test_a_honeytoken_in_a_leak_alerts_its_lab_without_blaming_the_dpo(
        lv: Labvault, operator: Actor, store: Store, tmp_path: Path) -> None:
    """Left alone in session 9: the DPO's triage went through the gate naming the matched
    honeytoken, so the guard raised ``canary.search`` naming the DPO, as if they had
    opened a decoy. The leak's decoy now raises ``canary.leaked`` (no account, the case
    named) and the DPO's triage raises no honeytoken alert against them."""
    from labvault.services.alerts import AlertService
    t = store.tenants[1]
    lv.alerts = AlertService(lv)
    lv.guard.install()
    canary = lv.guard.plant(operator, t, 1)[0]
    shown = lv.patients.show(operator, canary)     # the test's own read: canary.read
    rec = {k: v for k, v in shown.items() if k not in ("id", "tenant_id", "categories",
                                                       "created_at")}
    path = tmp_path / "d.csv"
    sd.write_csv(path, sd.make_dump([(t, canary, rec), *store.patients[:5]], 3, seed=4).rows)
    case = lv.breach.open_case(operator, "t", lv.now().isoformat())

    def kinds() -> list[tuple[str, str | None]]:
        lv.alerts.flush()  # type: ignore[attr-defined]
        return sorted((a["kind"], a.get("actor_id")) for a in lv.alerts.list(operator, t)  # type: ignore[attr-defined]
                      if a["kind"].startswith("canary."))

    before = kinds()
    assert [k for k, _ in before] == ["canary.read"]
    lv.breach.triage(operator, case, [path])     # the DPO, at the command line
    new = [k for k in kinds() if k not in before]
    assert [k for k, _ in new] == ["canary.leaked"]
    leaked = next(a for a in lv.alerts.list(operator, t)  # type: ignore[attr-defined]
                  if a["kind"] == "canary.leaked")
    assert leaked["severity"] == "critical" and leaked["actor_id"] is None
    detail = leaked["detail"]["detail"]
    assert detail["found_by"] == operator.id and detail["case_id"] == case
    assert detail["patients"] == [canary] and detail["rows"]
