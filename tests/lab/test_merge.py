"""Merging a duplicate patient record (identity vigilance, services/merge.py).

A duplicate of laboratory A's patient 1 (the same person registered again without the
NIR, with another external id) gets orders at every step, specimens, an import issue, an
archived HL7 message, an outbox row and a portal account; the lab administrator merges it
into patient 1. Every moved row opens under the survivor's key to the same plaintext,
nothing keeps the duplicate's id but its tombstone and the audit trail, and the
survivor's reports, FHIR Observation search and previous results (delta check) now show
the moved results. Every refusal changes nothing; a failure half-way moves nothing.
Both backends (the ``lv`` fixture runs SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from labvault.api.app import create_app
from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, MergeRefused, NotFound, PatientMerged, UserError
from labvault.interop.fhir.ids import to_fhir
from labvault.services import merge as M
from labvault.services.app import Labvault
from labvault.store.schema import metadata
from tests.access.conftest import (  # noqa: F401  (fixtures)
    PASSWORD,
    SECRET,
    World,
    alv,
    cheap_argon2,
    clock,
    world,
)
from tests.web.helpers import NORMAL, REQ, SPEC, failed_delivery, import_issue, order

REASON = "même patiente : enregistrée à l'accueil sans NIR, puis par le prescripteur"
DUP_EXT = "DUPLICAT-4242"
DUP_PHONE = "+33698765401"
PORTAL_EMAIL = "jeanne.doublon@example.org"


@dataclass
class Dup:
    w: World
    survivor: str
    duplicate: str
    person: dict[str, Any]
    admin: Actor
    bio: Actor


def _duplicate_of(person: dict[str, Any]) -> dict[str, Any]:
    """The same person as registered again: no NIR, INS nor the lab's external id; another
    external id and phone number."""
    d = {k: v for k, v in person.items() if k not in ("nir", "ins", "external_id")}
    return {**d, "external_id": DUP_EXT, "phone": DUP_PHONE}


def _pid_segment(person: dict[str, Any]) -> str:
    return (f"PID|1||{DUP_EXT}^^^^PI||{person['birth_name']}^{person['first_names'][0]}||"
            f"{person['birth_date'].replace('-', '')}|{person['sex']}")


@pytest.fixture
def dup(world: World) -> Dup:  # noqa: F811  (the imported fixture)
    lv, a = world.lv, world.a
    person = a.patient_data[1]
    duplicate = lv.patients.register(Actor.operator(), a.tenant_id, _duplicate_of(person))
    return Dup(world, a.patients[1], duplicate, person, world.actor(a.emails["lab_admin"]),
               world.actor(a.emails["biologist"]))


def _full_duplicate(d: Dup) -> dict[str, Any]:
    """The duplicate's work at every step; what was made."""
    w, a, lv, bio = d.w, d.w.a, d.w.lv, d.bio
    made: dict[str, Any] = {
        "preliminary": order(w, a, d.duplicate, step="preliminary"),
        "validated": order(w, a, d.duplicate, step="final"),
        "published": order(w, a, d.duplicate, step="published", conclusion="Bilan normal."),
    }
    amended = order(w, a, d.duplicate, step="published")
    lv.lab.amend(bio, amended.observations[0].observation_id,
                 {"code": "718-7", "value": 12.2, "unit": "g/dL"}, "erreur de saisie")
    made["amended"] = amended
    cancelled = lv.lab.create_order(bio, a.tenant_id, d.duplicate, REQ,
                                    {**SPEC, "accession_number": "MERGE-CANCEL-1"})
    made["cancelled"] = lv.lab.cancel(bio, cancelled.order_id, "demande en double")
    made["issue"] = import_issue(w, a, pid=_pid_segment(d.person),
                                 obx=("OBX|1|NM|99999-9^Inconnu^LN||6.9|mmol/L|||||F",))
    made["delivery"] = failed_delivery(w, a, d.duplicate)
    made["portal"] = lv.accounts.create(Actor.operator(), a.tenant_id, ["patient"],
                                        "Jeanne Doublon", PORTAL_EMAIL, password=PASSWORD,
                                        patient_id=d.duplicate, totp_secret=SECRET)["id"]
    return made


def _sealed_values(lv: Labvault, tenant: str, patient: str) -> dict[tuple[str, str, str], bytes]:
    """Every value of ``patient`` sealed under its key, opened: (table, row id, column) ->
    plaintext."""
    out = {}
    with lv.begin() as conn:
        dek = lv.gate.patient_key(conn, tenant, patient)
        for spec in M.MOVED:
            t = metadata.tables[spec.table]
            rows = conn.execute(select(t).where(t.c.tenant_id == tenant,
                                                t.c.patient_id == patient)).mappings().all()
            for r in rows:
                for col in spec.sealed:
                    if r[col] is not None:
                        out[(spec.table, r[spec.key], col)] = lv.gate.open_patient_value(
                            dek, tenant, spec.table, col, r[spec.key], bytes(r[col]))
    return out


def _rows_naming(lv: Labvault, patient: str) -> dict[str, int]:
    """Per table with a ``patient_id`` column: the rows naming ``patient``."""
    out = {}
    with lv.begin() as conn:
        for t in metadata.tables.values():
            if "patient_id" in t.c:
                n = conn.execute(select(func.count()).select_from(t).where(
                    t.c.patient_id == patient)).scalar_one()
                if n:
                    out[t.name] = int(n)
    return out


def _snapshot(lv: Labvault) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the audit trail's and the guard's bookkeeping (a
    refusal is audited, counted): what a refused merge must leave as it was."""
    skip = {"audit_entries", "audit_refs", "audit_heads", "guard_marks", "guard_alerts",
            "sessions", "login_throttle", "guard_clients"}
    out = {}
    with lv.begin() as conn:
        for name, t in sorted(metadata.tables.items()):
            if name not in skip:
                out[name] = sorted(tuple(map(repr, r)) for r in conn.execute(select(t)))
    return out


def _unlisted(meta: Any) -> tuple[set[str], set[str]]:
    """(tables of ``meta`` with a patient_id column that merge.py does not list, tables it
    lists that have none)."""
    listed = {s.table for s in M.MOVED} | set(M.DROPPED) | set(M.KEPT)
    have = {t.name for t in meta.tables.values() if "patient_id" in t.c}
    return have - listed, listed - have


def test_every_patient_table_is_listed() -> None:
    """A new table with a ``patient_id`` column fails here until services/merge.py says
    what a merge does with it (moved, dropped or kept)."""
    missing, stale = _unlisted(metadata)
    assert missing == set(), f"tables with patient_id not listed in merge.py: {missing}"
    assert stale == set(), f"listed tables without patient_id: {stale}"
    # the check can fail: a new patient table is caught
    from sqlalchemy import Column, MetaData, String, Table
    m = MetaData()
    for t in metadata.tables.values():
        t.to_metadata(m)
    Table("lab_new_things", m, Column("tenant_id", String(40)), Column("patient_id", String(40)))
    assert _unlisted(m)[0] == {"lab_new_things"}
    # every column sealed under the patient's key is re-sealed, and only those
    for s in M.MOVED:
        t = metadata.tables[s.table]
        assert s.key in t.c and all(c in t.c for c in s.sealed), s


def test_merge_moves_everything_under_the_survivor_s_key(dup: Dup) -> None:
    lv, a = dup.w.lv, dup.w.a
    made = _full_duplicate(dup)
    before = _sealed_values(lv, a.tenant_id, dup.duplicate)
    survivor_before = _sealed_values(lv, a.tenant_id, dup.survivor)
    tables = {t for t, _r, _c in before}
    assert {"lab_orders", "lab_specimens", "lab_observations", "lab_observation_history",
            "lab_reports", "lab_hl7_messages", "lab_import_issues",
            "delivery_outbox"} <= tables, tables
    assert lv.patients.find(dup.bio, a.tenant_id, external_id=DUP_EXT) == [dup.duplicate]

    out = lv.patients.merge(dup.admin, dup.survivor, dup.duplicate, REASON)

    assert out["survivor_id"] == dup.survivor and out["duplicate_id"] == dup.duplicate
    assert out["moved"]["lab_orders"] == 6 and out["moved"]["accounts"] == 1
    assert out["differing"] == ["external_id"] and out["forced"] is False
    # every moved value opens under the survivor's key, the same plaintext, same row
    after = _sealed_values(lv, a.tenant_id, dup.survivor)
    assert after == {**survivor_before, **before}
    # nothing names the duplicate any more but its tombstone and the audit trail
    assert set(_rows_naming(lv, dup.duplicate)) <= {"patients", "audit_entries", "audit_refs"}
    assert _rows_naming(lv, dup.duplicate).get("patients") == 1
    # the tombstone: emptied, merged into the survivor, no data key, no index, no shred line
    from labvault.store.schema import blind_index, patient_keys, patients, shred_log
    with lv.begin() as conn:
        row = conn.execute(select(patients).where(
            patients.c.patient_id == dup.duplicate)).mappings().one()
        assert (row["status"], row["merged_into"]) == ("merged", dup.survivor)
        assert all(row[c] is None for c in ("identity", "contact", "coverage", "clinical"))
        for t in (patient_keys, blind_index, shred_log):
            assert conn.execute(select(func.count()).select_from(t).where(
                t.c.patient_id == dup.duplicate)).scalar_one() == 0
    assert list(lv.shred_log.entries()) == []
    # a search by the duplicate's external id finds the survivor: it is a former id there
    assert out["former_ids_kept"] == 1
    assert lv.patients.find(dup.bio, a.tenant_id, external_id=DUP_EXT) == [dup.survivor]
    assert lv.patients.find(dup.bio, a.tenant_id, nir=dup.person["nir"]) == [dup.survivor]
    # the survivor's reports, its previous results
    reports = {r.order_id for r in lv.lab.list_reports(dup.bio, a.tenant_id,
                                                       patient_id=dup.survivor)}
    for step in ("validated", "published", "amended"):
        assert made[step].order_id in reports, step
    fresh = lv.lab.create_order(dup.bio, a.tenant_id, dup.survivor, REQ,
                                {**SPEC, "accession_number": "MERGE-AFTER-1"})
    lv.lab.enter_results(dup.bio, fresh.order_id, NORMAL)
    lv.lab.validate_technical(dup.bio, fresh.order_id)
    review = lv.lab.get_report_by_order(dup.bio, fresh.order_id, previous=True)
    assert review.previous, "the moved results are the survivor's previous results now"
    moved_ids = {o.observation_id for k in ("published", "amended", "validated")
                 for o in made[k].observations}
    assert {d.previous.observation_id for d in review.previous.values()} <= moved_ids
    # the portal account now opens the survivor's record
    portal = dup.w.lv.accounts.resolve(lv.accounts.login(PORTAL_EMAIL, PASSWORD, None).token)
    assert portal.patient_id == dup.survivor
    # the duplicate's import issue is the survivor's
    (iid,) = made["issue"].issue_ids
    assert lv.lab.messages.get_issue(dup.bio, iid)["patient_id"] == dup.survivor


def test_merge_is_audited_once_with_the_reason_sealed(dup: Dup) -> None:
    lv = dup.w.lv
    lv.patients.merge(dup.admin, dup.survivor, dup.duplicate, REASON)
    audit = lv.gate.audit
    (event,) = [e for e in audit.events if e[1] == "patient.merge"]  # type: ignore[attr-defined]
    actor, _name, outcome, tenant, detail = event
    assert (actor.id, outcome, tenant) == (dup.admin.id, "success", dup.w.a.tenant_id)
    assert (detail["survivor_id"], detail["duplicate_id"]) == (dup.survivor, dup.duplicate)
    assert detail["reason"] == REASON
    from labvault.audit.entry import split_detail
    clear, private = split_detail(detail)
    assert "reason" in private and REASON not in json.dumps(clear)
    assert clear["survivor_id"] == dup.survivor and "moved" in clear
    # the gate decided for both records, as writes of the merge resource
    merges = [acc for acc, dec, out in audit.entries  # type: ignore[attr-defined]
              if acc.resource == M.RESOURCE and out == "allowed"]
    assert [m.patient_ids for m in merges] == [(dup.survivor,), (dup.duplicate,)]


def test_reads_of_the_duplicate_say_where_it_went(dup: Dup) -> None:
    lv = dup.w.lv
    lv.patients.merge(dup.admin, dup.survivor, dup.duplicate, REASON)
    with pytest.raises(PatientMerged) as merged:
        lv.patients.show(dup.bio, dup.duplicate)
    assert merged.value.survivor_id == dup.survivor
    # a role that may not read the survivor gets the plain "no such patient"
    with pytest.raises(NotFound) as plain:
        lv.patients.show(dup.admin, dup.duplicate)
    assert not isinstance(plain.value, PatientMerged)
    # another laboratory: the plain 404 as well
    other = dup.w.actor(dup.w.b.emails["biologist"])
    with pytest.raises(NotFound) as b:
        lv.patients.show(other, dup.duplicate)
    assert not isinstance(b.value, PatientMerged)


def test_rest_and_fhir_doors(dup: Dup) -> None:
    w, lv = dup.w, dup.w.lv
    made = order(w, w.a, dup.duplicate, step="published")
    admin = w.login(w.a.emails["lab_admin"])
    bio = w.login(w.a.emails["biologist"])
    with TestClient(create_app(lv), base_url="http://testserver") as client:
        def call(method: str, url: str, token: str, body: Any = None) -> Any:
            return client.request(method, url, json=body,
                                  headers={"Authorization": f"Bearer {token}"})
        r = call("POST", f"/api/v1/patients/{dup.survivor}/merge", bio,
                 {"duplicate_id": dup.duplicate, "reason": REASON})
        assert r.status_code == 403, r.text
        r = call("POST", f"/api/v1/patients/{dup.survivor}/merge", admin,
                 {"duplicate_id": dup.duplicate, "reason": REASON})
        assert r.status_code == 200, r.text
        assert r.json()["moved"]["lab_reports"] == 1
        r = call("POST", f"/api/v1/patients/{dup.survivor}/merge", admin,
                 {"duplicate_id": dup.duplicate, "reason": REASON})
        assert r.status_code == 409 and "already merged" in r.text
        r = call("GET", f"/api/v1/patients/{dup.duplicate}", bio)
        assert r.status_code == 404 and dup.survivor in r.text
        r = call("GET", f"/console/patients/{dup.duplicate}", bio)
        assert r.status_code == 404 and f"fusionné dans le dossier {dup.survivor}" in r.text
        r = call("GET", f"/console/patients/{dup.duplicate}", w.login(w.b.emails["biologist"]))
        assert r.status_code == 404 and dup.survivor not in r.text
        r = call("GET", f"/fhir/R4/Patient/{to_fhir(dup.duplicate)}", bio)
        assert r.status_code == 410, r.text
        assert f"Patient/{to_fhir(dup.survivor)}" in r.json()["issue"][0]["diagnostics"]
        r = call("GET", f"/fhir/R4/Observation?patient=Patient/{to_fhir(dup.survivor)}", bio)
        assert r.status_code == 200, r.text
        found = {e["resource"]["id"] for e in r.json().get("entry", [])}
        assert {to_fhir(o.observation_id) for o in made.observations} <= found


# -- refusals: each changes nothing --------------------------------------------------------
def _refused(d: Dup, exc: type[Exception], survivor: str, duplicate: str,
             actor: Actor | None = None, **kw: Any) -> Exception:
    lv = d.w.lv
    before = _snapshot(lv)
    with pytest.raises(exc) as err:
        lv.merges.merge(actor or d.admin, survivor, duplicate, kw.pop("reason", REASON), **kw)
    assert _snapshot(lv) == before
    return err.value


def test_refusals_change_nothing(dup: Dup) -> None:
    w, lv, a = dup.w, dup.w.lv, dup.w.a
    order(w, a, dup.duplicate, step="published")
    e = _refused(dup, MergeRefused, dup.survivor, dup.survivor)
    assert "same record" in str(e)
    _refused(dup, UserError, dup.survivor, dup.duplicate, reason="  ")
    # another laboratory's record, an absent one: the same 404
    other = _refused(dup, NotFound, dup.survivor, w.b.patients[1])
    absent = _refused(dup, NotFound, dup.survivor, "pt_" + "0" * 25 + "v")
    assert str(other) == str(absent)
    # a role without the merge row
    _refused(dup, AccessDenied, dup.survivor, dup.duplicate, actor=dup.bio)
    # two different people (birth date, sex): refused unless forced
    stranger = lv.patients.register(Actor.operator(), a.tenant_id, {
        **_duplicate_of(dup.person), "external_id": "AUTRE-1",
        "birth_date": "1931-01-02"})
    e = _refused(dup, MergeRefused, dup.survivor, stranger)
    assert "birth_date" in str(e) and "--force" in str(e)
    other_sex = lv.patients.register(Actor.operator(), a.tenant_id, {
        **_duplicate_of(dup.person), "external_id": "AUTRE-2",
        "sex": "M" if dup.person["sex"] == "F" else "F"})
    assert "sex" in str(_refused(dup, MergeRefused, dup.survivor, other_sex))
    # erased
    erased = lv.patients.register(Actor.operator(), a.tenant_id, {
        **_duplicate_of(dup.person), "external_id": "AUTRE-3"})
    lv.patients.erase(Actor.operator(), erased)
    assert "erased" in str(_refused(dup, MergeRefused, dup.survivor, erased))
    # a honeytoken
    (canary,) = lv.guard.plant(Actor.operator(), a.tenant_id, 1)
    assert "honeytoken" in str(_refused(dup, MergeRefused, dup.survivor, canary, force=True))
    assert "honeytoken" in str(_refused(dup, MergeRefused, canary, dup.survivor, force=True))
    refusals = [acc.patient_ids for acc, dec, out in lv.gate.audit.entries  # type: ignore[attr-defined]
                if out == "denied" and dec.rule == "honeytoken"]
    assert refusals == [(canary,), (canary,)]           # audited as refused, each time
    # the CLI operator across laboratories: one laboratory's records only
    e = _refused(dup, MergeRefused, dup.survivor, w.b.patients[1], actor=Actor.operator())
    assert "different laboratories" in str(e)
    # forced, with the reason: done, and said so
    out = lv.merges.merge(dup.admin, dup.survivor, stranger, REASON, force=True)
    assert out.forced and "birth_date" in out.differing
    # already merged: refused, naming where it went
    e = _refused(dup, MergeRefused, dup.survivor, stranger, force=True)
    assert f"already merged into {dup.survivor}" in str(e)
    e = _refused(dup, MergeRefused, stranger, dup.duplicate, force=True)
    assert "already merged" in str(e)


def test_a_failure_half_way_moves_nothing(dup: Dup, monkeypatch: pytest.MonkeyPatch) -> None:
    lv = dup.w.lv
    _full_duplicate(dup)
    before = _snapshot(lv)
    real = M.mrepo.move_row
    calls = iter(range(10_000))

    def flaky(*args: Any, **kw: Any) -> None:
        if next(calls) == 7:                  # after some orders, specimens... were moved
            raise RuntimeError("disk full")
        real(*args, **kw)

    monkeypatch.setattr(M.mrepo, "move_row", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        lv.merges.merge(dup.admin, dup.survivor, dup.duplicate, REASON)
    assert _snapshot(lv) == before
    monkeypatch.setattr(M.mrepo, "move_row", real)
    lv.merges.merge(dup.admin, dup.survivor, dup.duplicate, REASON)     # and then it works


def test_cli_merge(dup: Dup, monkeypatch: pytest.MonkeyPatch) -> None:
    """``labvault patient merge`` as the operator: exit 2 with the reason on a refusal, the
    counts in --json on success."""
    from contextlib import contextmanager

    from labvault.cli import app

    @contextmanager
    def opened() -> Iterator[Labvault]:
        yield dup.w.lv

    monkeypatch.setattr("labvault.cli.patients.opened", opened)
    runner = CliRunner()
    r = runner.invoke(app, ["patient", "merge", dup.survivor, dup.survivor, "--reason", REASON])
    assert r.exit_code == 2 and "same record" in r.output
    r = runner.invoke(app, ["patient", "merge", dup.survivor, dup.duplicate, "--reason", REASON,
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["duplicate_id"] == dup.duplicate


def test_no_plaintext_of_the_duplicate_in_the_database_files(dup: Dup, backend: str) -> None:
    """After the merge, no byte of the SQLite files (database, WAL) holds the duplicate's
    identity, its own identifiers or the merge's reason in clear (re-sealing writes no
    plaintext anywhere, the audit event seals the reason)."""
    if backend != "sqlite":
        pytest.skip("a file scan: the SQLite files (tests/foundation/test_plaintext_scan.py "
                    "scans a pg_dump for imports)")
    from labvault.domain import validation as v
    from labvault.services.audit import install_audit
    from tests.foundation.test_plaintext_scan import Scanner, encoded
    install_audit(dup.w.lv)                   # the real audit log, written to the database
    _full_duplicate(dup)
    dup.w.lv.patients.merge(dup.admin, dup.survivor, dup.duplicate, REASON)
    p = dup.person
    first = p["first_names"][0]
    e164 = v.phone(DUP_PHONE)
    words = {p["birth_name"], p["birth_name"].upper(), first, f"{first} {p['birth_name']}",
             DUP_EXT, DUP_PHONE, e164, "0" + e164[3:], REASON, REASON[:30], PORTAL_EMAIL}
    scanner = Scanner(encoded(words))
    assert scanner.hits(b"..." + REASON.encode() + DUP_EXT.encode())    # it can find them
    files = [f for f in dup.w.lv.settings.data_dir.rglob("*") if f.is_file()]
    assert any(f.name == "labvault.db" for f in files)
    leaks = {str(f): scanner.hits(f.read_bytes()) for f in files}
    assert not {k: h for k, h in leaks.items() if h}


def test_who_saw_the_survivor_includes_who_saw_the_duplicate(dup: Dup) -> None:
    """"Who saw my record" (the portal's and the DPO's, audit/reports.py) of the survivor
    lists the entries about the duplicate written before the merge: they stay as written,
    under the duplicate's id, and are the survivor's history now."""
    from labvault.services.audit import audit_of, install_audit
    lv = dup.w.lv
    install_audit(lv)
    lv.patients.show(dup.bio, dup.duplicate)            # a read of the duplicate
    dpo = dup.w.actor(dup.w.a.emails["dpo"])
    reports = audit_of(lv)
    before = {e["entry_id"] for e in reports.access_log(dpo, dup.duplicate)}
    assert before
    survivor_before = {e["entry_id"] for e in reports.access_log(dpo, dup.survivor)}
    assert not before & survivor_before
    lv.patients.merge(dup.admin, dup.survivor, dup.duplicate, REASON)
    after = {e["entry_id"] for e in reports.access_log(dpo, dup.survivor)}
    assert before <= after and survivor_before <= after
    from labvault.audit.reports import fhir_id
    events = reports.fhir_search(dpo, dup.w.a.tenant_id, patient_id=dup.survivor)
    assert {fhir_id(i) for i in before} <= {e["id"] for e in events}


def test_a_message_whose_patient_is_merged_while_it_is_processed_stores_nothing(
        dup: Dup, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An analyser's message matched the duplicate from the listener's cache (its key
    fetched), then the duplicate was merged before the message's gate decision. The
    message must not store results under the duplicate's key, deleted by the merge
    (unreadable for ever): its patient's key is fetched again after the decision, and the
    message is refused (AE 206, send again) with nothing stored.

    Here the merge runs inside the message's transaction (the test fixtures bind one
    connection, so both roll back together); in a running laboratory it is another
    transaction that commits first, and the decision's audit append (one chain head per
    laboratory, locked until commit) is what orders the second fetch after it."""
    if backend != "postgres":
        pytest.skip("SQLite: the message's write transaction is open before its patient is "
                    "matched (one writer), so no merge can commit in between")
    from labvault.interop.hl7.handler import Hl7Handler
    from labvault.services.lab_messages import MessageService
    lv, a = dup.w.lv, dup.w.a
    h = Hl7Handler(lv, Actor.system("mllp"), a.tenant_id)

    def oru(n: int) -> bytes:
        return "\r".join([
            f"MSH|^~\\&|ANALYZER|LABO|LABVAULT|LABO|20260301083000||ORU^R01|MRG{n}|P|2.5",
            _pid_segment(dup.person), f"OBR|1|PMRG{n}||58410-2^NFS^LN|||20260301080000",
            "OBX|1|NM|718-7^Hb^LN||13.1|g/dL|||||F", ""]).encode()
    first, _ack = h.handle(oru(1))                  # the listener now caches the match
    assert first.ack_code == "AA" and first.patient_id == dup.duplicate
    before = _rows_naming(lv, dup.duplicate)
    decide = MessageService._decide
    merged: list[str] = []

    def merge_first(self: MessageService, ctx: Any, patient_id: str | None) -> Any:
        if patient_id == dup.duplicate and not merged:
            merged.append(lv.merges.merge(dup.admin, dup.survivor, dup.duplicate,
                                          REASON).duplicate_id)
        return decide(self, ctx, patient_id)
    monkeypatch.setattr(MessageService, "_decide", merge_first)
    outcome, _ack = h.handle(oru(2))
    assert merged == [dup.duplicate]
    assert outcome.ack_code == "AE" and [e.code for e in outcome.errors] == ["206"], (
        outcome.errors)
    assert "send the message again" in outcome.errors[0].text
    assert _rows_naming(lv, dup.duplicate) == before     # nothing of the message stored
