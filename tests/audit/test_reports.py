"""Who saw my record (CLI/service and API), the DPO report, FHIR AuditEvent (BALP), Art. 30."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from labvault.api.app import create_app
from labvault.api.deps import current_actor
from labvault.audit.log import AuditLog
from labvault.audit.reports import event_kind
from labvault.domain.actors import Actor
from labvault.domain.categories import Category
from labvault.errors import AccessDenied
from labvault.services.app import Labvault
from labvault.services.audit import AuditService
from tests.audit.helpers import LabPolicy, new_lab, person, staff


@pytest.fixture
def scene(lv: Labvault, audit_log: AuditLog, operator: Actor) -> dict[str, str]:
    lv.gate.policy = LabPolicy()
    tid = new_lab(lv, "Laboratoire des Flandres")
    pid = lv.patients.register(operator, tid, person(0))
    other = lv.patients.register(operator, tid, person(1))
    lv.patients.show(staff(tid), pid, purpose="care", reason="contrôle du dossier")
    lv.patients.show(staff(tid, "reception", "acct_rec"), pid,
                     categories=[Category.CONTACT], purpose="administration")
    with pytest.raises(AccessDenied):
        lv.patients.show(staff(tid, "intern", "acct_intern"), pid)
    lv.patients.show(staff(tid), other)
    return {"tenant": tid, "patient": pid, "other": other}


def test_who_saw_my_record(lv: Labvault, audit: AuditService, operator: Actor,
                           scene: dict[str, str]) -> None:
    rows = audit.access_log(operator, scene["patient"])
    staff_rows = [r for r in rows if r["actor_kind"] == "staff"]
    assert [(r["who"], r["categories"], r["purpose"]) for r in staff_rows] == [
        ("biologist — Laboratoire des Flandres",
         ["clinical", "contact", "coverage", "identity"], "care"),
        ("reception — Laboratoire des Flandres", ["contact"], "administration"),
    ]
    assert {r["resource"] for r in staff_rows} == {"patient"}       # what was opened
    text = json.dumps(rows)
    assert "acct_bio" not in text and "10.0.0.7" not in text   # role and lab only
    denied = audit.access_log(operator, scene["patient"], include_denied=True)
    assert [r["who"] for r in denied if r["outcome"] == "denied"] == [
        "intern — Laboratoire des Flandres"]


def test_the_record_starts_with_who_registered_it(lv: Labvault, audit: AuditService,
                                                 operator: Actor, scene: dict[str, str]) -> None:
    """The registration decision names the new patient (its id is drawn before the
    decision): the patient's access log, and the DPO's search, begin with it."""
    first = audit.access_log(operator, scene["patient"])[0]
    assert (first["action"], first["actor_kind"], first["outcome"]) == \
        ("write", "operator", "allowed")
    other = audit.access_log(operator, scene["other"])
    assert [r["entry_id"] for r in other if r["action"] == "write"] != [first["entry_id"]]


def test_me_access_log_api(lv: Labvault, audit: AuditService, scene: dict[str, str]) -> None:
    app = create_app(lv)
    me = Actor(kind="patient", id="acct_pat", tenant_id=scene["tenant"],
               roles=frozenset({"patient"}), patient_id=scene["patient"], client="198.51.100.9")
    app.dependency_overrides[current_actor] = lambda: me
    client = TestClient(app)
    r = client.get("/api/v1/me/access-log")
    assert r.status_code == 200
    body = r.json()
    assert body["patient_id"] == scene["patient"]
    whos = [i["who"] for i in body["items"]]
    assert "biologist — Laboratoire des Flandres" in whos
    assert all("acct_" not in json.dumps(i) for i in body["items"])
    # the patient's look is audited but not listed back to them
    again = client.get("/api/v1/me/access-log").json()
    assert len(again["items"]) == len(body["items"])
    since = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert client.get("/api/v1/me/access-log", params={"since": since}).json()["items"] == []
    # another patient's record is not reachable: the id comes from the session only
    rows = audit.user_report(Actor.operator(), "acct_pat")["items"]
    assert {tuple(i["patient_ids"]) for i in rows} == {(scene["patient"],)}


def test_dpo_user_report(lv: Labvault, audit: AuditService, operator: Actor,
                         scene: dict[str, str]) -> None:
    rep = audit.user_report(operator, "acct_bio")
    assert rep["entries"] == 2 and rep["distinct_patients"] == 2 and rep["denied"] == 0
    first = rep["items"][0]
    assert first["sealed"] == {"client": "10.0.0.7", "reason": "contrôle du dossier"}
    assert first["lab"] == "Laboratoire des Flandres"
    future = datetime.now(UTC) + timedelta(hours=1)
    assert audit.user_report(operator, "acct_bio", since=future)["entries"] == 0
    assert audit.user_report(operator, "acct_intern")["denied"] == 1


def test_fhir_audit_events_validate(lv: Labvault, audit: AuditService, operator: Actor,
                                    scene: dict[str, str]) -> None:
    from fhir.resources.R4B.auditevent import AuditEvent
    with lv.begin() as conn:
        lv.gate.audit.event(conn, staff(scene["tenant"]), "login", "success",
                            scene["tenant"], {"account_id": "acct_bio"})
        lv.gate.audit.event(conn, staff(scene["tenant"]), "login.failed", "failure",
                            scene["tenant"], {"account_id": "acct_bio"})
    lv.patients.erase(operator, scene["other"])
    buf = io.StringIO()
    n = audit.export_fhir(operator, buf)
    lines = buf.getvalue().splitlines()
    assert n == len(lines) >= 9
    seen: dict[tuple[str, str, str], int] = {}
    for line in lines:
        ev = AuditEvent.model_validate(json.loads(line))   # R4B validation
        code = ev.subtype[0].code if ev.subtype else ev.type.code
        key = (str(ev.type.code), str(code), str(ev.action))
        seen[key] = seen.get(key, 0) + 1
        assert ev.outcome in ("0", "4", "8", "12")
        assert "acct_" not in json.dumps([e.model_dump(mode="json") for e in ev.entity or []])
    assert ("rest", "read", "R") in seen and ("rest", "create", "C") in seen
    assert ("rest", "delete", "D") in seen and ("110114", "110122", "E") in seen
    outcomes = [json.loads(x)["outcome"] for x in lines]
    assert "4" in outcomes and "8" in outcomes   # the refusal and the failed login
    reads = [json.loads(x) for x in lines if '"code":"read"' in x]
    assert any(r.get("meta", {}).get("profile", [""])[0].endswith("PatientRead") for r in reads)


def test_event_kinds() -> None:
    from labvault.audit.entry import AuditEntry
    base = dict(tenant_id="t", seq=0, entry_id="ae", at=datetime.now(UTC), actor_id="a",
                actor_kind="staff", actor_roles=(), actor_tenant=None, outcome="allowed",
                resource="patient", patient_ids=(), categories=(), purpose=None, rule=None,
                request_id=None, client=None, event=False, detail={}, sealed=None,
                subject_tenant=None)
    cases = {("write", ()): "create", ("write", ("p",)): "update", ("search", ()): "search",
             ("erase", ("p",)): "delete", ("export", ()): "export", ("read", ("p",)): "read"}
    for (action, pids), kind in cases.items():
        assert event_kind(AuditEntry(**{**base, "action": action, "patient_ids": pids})) == kind


def test_register_of_processing(lv: Labvault, audit: AuditService, scene: dict[str, str]) -> None:
    reg = audit.register()
    assert [c["name"] for c in reg["controllers"]] == ["Laboratoire des Flandres"]
    assert {c["category"] for c in reg["categories"]} >= {"identity", "clinical"}
    assert any(r["setting"] == "LABVAULT_AUDIT_RETENTION_DAYS" for r in reg["retention"])
    assert any(p["purpose"] == "care" for p in reg["purposes"])
    md = audit.register_markdown(reg)
    assert md.startswith("# Record of processing activities") and "## Retention" in md
    assert "| clinical |" in md


def test_patient_entries_across_buckets(lv: Labvault, audit_log: AuditLog) -> None:
    """The patient index is bucketed by position (1,024 entries a bucket): entries naming
    a patient are all found, in time order, whichever buckets they fall in, first patient
    or further one (audit_refs), and nothing else."""
    import random

    from labvault.audit import chain as ch
    from labvault.store import repositories_audit as arepo
    tid = new_lab(lv, "Laboratoire des Buckets")
    with lv.begin() as conn:     # the entry is written as its transaction commits
        lv.gate.audit.event(conn, Actor.operator(), "bench.start", "success", tid, {})
    with lv.begin() as conn:
        head = arepo.head(conn, tid)
        assert head is not None
        state = ch.State(head["next_seq"], head["last_hash"], audit_log._heads[tid].key,
                         ch.unpack_frontier(head["frontier"]))
    rng = random.Random(7)
    wanted, entries = set(), []
    for i in range(3 * 1024 + 17):
        pid = "pt_target" if rng.random() < 0.01 or i in (1023, 1024, 2048) else f"pt_{i % 97}"
        entries.append((f"ae_{i:026d}", 1_700_000_000_000_000 + i, "acct_x", pid, "read",
                        "allowed", "{}"))
        if pid == "pt_target":
            wanted.add(state.next_seq + i)
    rows, _, _ = ch.append_many(state, tid, entries)
    with lv.begin() as conn:
        arepo.insert_entries(conn, rows)
        arepo.insert_refs(conn, [(tid, "pt_target", rows[5].seq)])   # a further patient
        wanted.add(rows[5].seq)
        got = arepo.entries_for_patient(conn, tid, "pt_target")
        since = arepo.entries_for_patient(conn, tid, "pt_target", since_us=rows[2000].at_us)
        assert arepo.entries_for_patient(conn, tid, "pt_nobody") == []
    assert [r["seq"] for r in got] == sorted(wanted)
    assert {r["seq"] >> 10 for r in got} >= {0, 1, 2}
    assert [r["seq"] for r in since] == sorted(s for s in wanted if s >= rows[2000].seq)


def test_patient_query_probes_each_bucket(lv: Labvault) -> None:
    """On either backend the query walks the buckets and probes the index per bucket (a
    plan scanning the tenant's whole index range would grow with the trail)."""
    from sqlalchemy import text

    from labvault.store import repositories_audit as arepo
    with lv.begin() as conn:
        sql = arepo.patient_seqs_sql(conn.dialect.name)
        params = {"lo": 0, "hi": 40, "chain": "lab_x", "patient": "pt_x"}
        if conn.dialect.name == "postgresql":
            plan = " ".join(r[0] for r in conn.execute(text("EXPLAIN " + sql), params))
            assert "ix_audit_entries_patient_bucket" in plan and "b.x" in plan, plan
        else:
            plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql),
                                                             params))
            assert "patient_bucket (tenant_id=? AND <expr>=? AND patient_id=?)" in plan, plan
