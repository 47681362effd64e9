"""A merged duplicate's identifiers keep finding the record kept ("identifiants antérieurs").

The merge gives the survivor the duplicate's external id (and the duplicate's own former
ids) as former identifiers: sealed in its identity, blind-indexed as external ids. So an
analyser's result, an HL7 update, a FHIR search or conditional create still carrying the
old id finds the survivor; a new record cannot take it; every door that rewrites the
identity keeps them; an erasure removes them with the record. Both backends.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from labvault.api.app import create_app
from labvault.domain.actors import Actor
from labvault.domain.patient import MAX_FORMER_IDS, PatientRecord
from labvault.errors import IdentifierTaken, InvalidField, InvalidRecord, MergeRefused
from labvault.interop.fhir import ids
from labvault.interop.fhir.ids import to_fhir
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services.app import Labvault
from labvault.store.schema import blind_index, metadata, patients
from tests.access.conftest import (  # noqa: F401  (fixtures)
    PASSWORD,
    SECRET,
    World,
    alv,
    cheap_argon2,
    clock,
    world,
)
from tests.fhir.conftest import fhir_patient
from tests.lab.test_merge import DUP_EXT, REASON, Dup, _duplicate_of, _pid_segment

OP = Actor.operator()


@pytest.fixture
def dup(world: World) -> Dup:  # noqa: F811  (the imported fixture)
    """Laboratory A's patient 1 and a duplicate of it (tests/lab/test_merge.py)."""
    lv, a = world.lv, world.a
    person = a.patient_data[1]
    duplicate = lv.patients.register(OP, a.tenant_id, _duplicate_of(person))
    return Dup(world, a.patients[1], duplicate, person, world.actor(a.emails["lab_admin"]),
               world.actor(a.emails["biologist"]))


def _merged(d: Dup) -> dict[str, Any]:
    return d.w.lv.patients.merge(d.admin, d.survivor, d.duplicate, REASON)


def _former(lv: Labvault, patient_id: str) -> list[str]:
    return list(lv.patients.show(OP, patient_id).get("former_ids") or [])


def _found(d: Dup, external_id: str) -> list[str]:
    return d.w.lv.patients.find(d.bio, d.w.a.tenant_id, external_id=external_id)


def _index_rows(lv: Labvault, patient_id: str, kind: str | None = None) -> int:
    with lv.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(blind_index).where(
            blind_index.c.patient_id == patient_id,
            blind_index.c.kind == kind if kind else True)).scalar_one())


def _issues(lv: Labvault, tenant_id: str) -> int:
    with lv.begin() as conn:
        issues = metadata.tables["lab_import_issues"]
        return int(conn.execute(select(func.count()).select_from(issues).where(
            issues.c.tenant_id == tenant_id)).scalar_one())


def _oru(d: Dup, control: str, pid: str | None = None) -> bytes:
    return "\r".join([
        f"MSH|^~\\&|ANALYZER|LABO|LABVAULT|LABO|20260301083000||ORU^R01|{control}|P|2.5",
        pid or _pid_segment(d.person), f"OBR|1|P{control}||58410-2^NFS^LN|||20260301080000",
        "OBX|1|NM|718-7^Hb^LN||13.1|g/dL|||||F", ""]).encode()


def _adt(control: str, pid: str) -> bytes:
    return (f"MSH|^~\\&|HIS|H|LV|LABO|20260301101500||ADT^A08|{control}|P|2.5\r"
            f"{pid}\r").encode()


def _handler(d: Dup) -> Hl7Handler:
    return Hl7Handler(d.w.lv, Actor.system("mllp"), d.w.a.tenant_id)


# -- the merge keeps them --------------------------------------------------------------------
def test_merge_keeps_the_duplicate_s_external_id_on_the_survivor(dup: Dup) -> None:
    lv = dup.w.lv
    own = dup.person["external_id"]
    out = _merged(dup)
    assert out["former_ids_kept"] == 1
    shown = lv.patients.show(OP, dup.survivor)
    assert shown["former_ids"] == [DUP_EXT] and shown["external_id"] == own
    assert _found(dup, DUP_EXT) == [dup.survivor] and _found(dup, own) == [dup.survivor]
    # the audit event says how many, never which
    (event,) = [e for e in lv.gate.audit.events  # type: ignore[attr-defined]
                if e[1] == "patient.merge"]
    assert event[4]["former_ids_kept"] == 1 and DUP_EXT not in json.dumps(event[4])


def test_a_chain_of_merges_keeps_every_identifier(dup: Dup) -> None:
    """A merged into B, then B into C: C finds A's and B's external ids."""
    lv, tenant = dup.w.lv, dup.w.a.tenant_id
    third = lv.patients.register(OP, tenant, {**_duplicate_of(dup.person),
                                              "external_id": "TROISIEME-1"})
    # the duplicate (B) absorbs a third record (A), then B is merged into the survivor (C)
    assert lv.patients.merge(dup.admin, dup.duplicate, third, REASON)["former_ids_kept"] == 1
    assert _former(lv, dup.duplicate) == ["TROISIEME-1"]
    assert _merged(dup)["former_ids_kept"] == 2
    assert sorted(_former(lv, dup.survivor)) == sorted([DUP_EXT, "TROISIEME-1"])
    for ext in (DUP_EXT, "TROISIEME-1", dup.person["external_id"]):
        assert _found(dup, ext) == [dup.survivor], ext


def test_a_record_s_former_ids_are_distinct_and_never_its_own_id(dup: Dup) -> None:
    rec = PatientRecord.parse({**dup.person, "external_id": "A-1",
                               "former_ids": ["B-2", "A-1", " B-2 ", "C-3"]})
    assert rec.former_ids == ("B-2", "C-3")
    assert rec.with_former_ids(["A-1", "D-4", "D-4"]).former_ids == ("D-4",)
    # an update whose external id is a former id: swapped with the one it replaces
    changed = PatientRecord.parse({**dup.person, "external_id": "B-2"})
    assert changed.keeping_former_ids(["B-2", "C-3"], "A-1").former_ids == ("C-3", "A-1")
    with pytest.raises(InvalidRecord, match="former_ids"):
        PatientRecord.parse({**dup.person, "former_ids": "B-2"})


def test_too_many_former_ids_refuse_the_merge_and_change_nothing(dup: Dup) -> None:
    lv, tenant = dup.w.lv, dup.w.a.tenant_id
    for i in range(MAX_FORMER_IDS):
        extra = lv.patients.register(OP, tenant, {**_duplicate_of(dup.person),
                                                  "external_id": f"EXTRA-{i}"})
        lv.patients.merge(dup.admin, dup.survivor, extra, REASON)
    assert len(_former(lv, dup.survivor)) == MAX_FORMER_IDS
    with pytest.raises(MergeRefused, match="more than 20 former identifiers"):
        _merged(dup)
    assert _found(dup, DUP_EXT) == [dup.duplicate]        # nothing moved
    with pytest.raises(InvalidRecord, match="at most 20"):
        PatientRecord.parse({**dup.person,
                             "former_ids": [f"X{i}" for i in range(MAX_FORMER_IDS + 1)]})


# -- HL7: results and updates carrying the old id --------------------------------------------
def test_a_result_with_the_old_pid3_lands_on_the_survivor(dup: Dup) -> None:
    lv, tenant = dup.w.lv, dup.w.a.tenant_id
    h = _handler(dup)
    first, _ack = h.handle(_oru(dup, "FID1"))     # before: the duplicate (now cached)
    assert first.ack_code == "AA" and first.patient_id == dup.duplicate
    _merged(dup)
    issues = _issues(lv, tenant)
    out, ack = h.handle(_oru(dup, "FID2"))
    assert out.ack_code == "AA", ack
    assert out.patient_id == dup.survivor and not out.issue_ids
    assert _issues(lv, tenant) == issues
    reports = lv.lab.list_orders(dup.bio, tenant, patient_id=dup.survivor)
    assert any(o.request.placer_number == "PFID2" for o in reports)


def test_the_old_pid3_still_goes_through_identity_vigilance(dup: Dup) -> None:
    """PID-3 names the survivor through its former id, but the birth date sent is another
    one: not stored on the survivor, as for its own id."""
    _merged(dup)
    p = dup.person
    pid = (f"PID|1||{DUP_EXT}^^^^PI||{p['birth_name']}^{p['first_names'][0]}||"
           f"19010101|{p['sex']}")
    out, ack = _handler(dup).handle(_oru(dup, "FID3", pid))
    assert out.ack_code != "AA" or out.issue_ids, ack
    assert not any(o.request.placer_number == "PFID3" for o in dup.w.lv.lab.list_orders(
        dup.bio, dup.w.a.tenant_id, patient_id=dup.survivor))


def test_an_hl7_update_keeps_the_former_ids(dup: Dup) -> None:
    lv = dup.w.lv
    p = dup.person
    _merged(dup)
    assert _index_rows(lv, dup.survivor, "external_id") == 2
    out, ack = _handler(dup).handle(_adt("FA1", f"PID|1||{p['nir']}^^^^NH||"
                                                f"{p['birth_name']}^{p['first_names'][0]}||"
                                                f"{p['birth_date'].replace('-', '')}|"
                                                f"{p['sex']}|||||0611223344"))
    assert out.ack_code == "AA" and out.patient_id == dup.survivor, ack
    shown = lv.patients.show(OP, dup.survivor)
    assert shown["phone"] == "+33611223344" and shown["former_ids"] == [DUP_EXT]
    assert _found(dup, DUP_EXT) == [dup.survivor]
    assert _index_rows(lv, dup.survivor, "external_id") == 2


def test_an_hl7_update_naming_the_old_id_swaps_it_with_the_record_s(dup: Dup) -> None:
    """An ADT^A08 whose PID-3 is the merged duplicate's id (a hospital that still knows
    the patient by it) makes it the record's external id; the one it replaces becomes a
    former id: every id that found the record still finds it."""
    lv = dup.w.lv
    p, own = dup.person, dup.person["external_id"]
    _merged(dup)
    out, ack = _handler(dup).handle(_adt("FA2", f"PID|1||{DUP_EXT}^^^^PI||"
                                                f"{p['birth_name']}^{p['first_names'][0]}||"
                                                f"{p['birth_date'].replace('-', '')}|"
                                                f"{p['sex']}"))
    assert out.ack_code == "AA" and out.patient_id == dup.survivor, ack
    shown = lv.patients.show(OP, dup.survivor)
    assert shown["external_id"] == DUP_EXT and shown["former_ids"] == [own]
    assert _found(dup, DUP_EXT) == [dup.survivor] and _found(dup, own) == [dup.survivor]


# -- registration: a former id is taken --------------------------------------------------------
def test_a_new_record_cannot_take_a_former_id(dup: Dup) -> None:
    lv, tenant = dup.w.lv, dup.w.a.tenant_id
    _merged(dup)
    stranger = {**dup.w.a.patient_data[2], "external_id": DUP_EXT}
    stranger.pop("nir", None)
    stranger.pop("ins", None)
    with pytest.raises(IdentifierTaken) as taken:
        lv.patients.register(OP, tenant, stranger)
    assert taken.value.field == "external_id"
    # an import line with it is the record already imported
    report = lv.patients.import_lines(OP, tenant, [json.dumps(stranger)])
    assert (report.imported, report.skipped) == (0, 1)
    # and no door gives a new record former ids
    with pytest.raises(InvalidField, match="no former identifiers"):
        lv.patients.register(OP, tenant, {**dup.w.a.patient_data[2], "external_id": "NEW-9",
                                          "nir": None, "ins": None,
                                          "former_ids": ["ANY-1"]})
    rejected = lv.patients.import_lines(OP, tenant, [json.dumps(
        {**stranger, "external_id": "NEW-10", "former_ids": ["ANY-2"]})])
    assert rejected.imported == 0 and rejected.rejected[0]["field"] == "former_ids"


# -- REST and FHIR doors ------------------------------------------------------------------------
def _client(d: Dup) -> tuple[TestClient, dict[str, str]]:
    token = d.w.login(d.w.a.emails["biologist"])
    return (TestClient(create_app(d.w.lv), base_url="http://testserver"),
            {"Authorization": f"Bearer {token}"})


def test_rest_read_and_update_keep_them(dup: Dup) -> None:
    lv = dup.w.lv
    _merged(dup)
    rows = _index_rows(lv, dup.survivor)
    client, auth = _client(dup)
    with client:
        r = client.get(f"/api/v1/patients/{dup.survivor}", headers=auth)
        assert r.status_code == 200 and r.json()["former_ids"] == [DUP_EXT], r.text
        body = {k: v for k, v in r.json().items()
                if k not in ("id", "tenant_id", "categories", "created_at", "updated_at")}
        # the body as read (former ids included), then without them: kept both times
        for sent in (body, {k: v for k, v in body.items() if k != "former_ids"}):
            r = client.put(f"/api/v1/patients/{dup.survivor}", headers=auth,
                           json={**sent, "phone": "0611223344"})
            assert r.status_code == 204, r.text
            assert _former(lv, dup.survivor) == [DUP_EXT]
            assert _found(dup, DUP_EXT) == [dup.survivor]
            assert _index_rows(lv, dup.survivor) == rows
        # another list: refused, nothing changed
        r = client.put(f"/api/v1/patients/{dup.survivor}", headers=auth,
                       json={**body, "former_ids": ["AUTRE-1"]})
        assert r.status_code == 422 and "merges only" in r.text, r.text
        assert _former(lv, dup.survivor) == [DUP_EXT]
    # the console's "Modifier" (amend) keeps them too
    lv.patients.amend(OP, dup.survivor, {"email": "jeanne.fusion@example.org"})
    assert _former(lv, dup.survivor) == [DUP_EXT] and _found(dup, DUP_EXT) == [dup.survivor]


def test_fhir_search_conditional_create_and_update(dup: Dup) -> None:
    lv, p = dup.w.lv, dup.person
    _merged(dup)
    client, auth = _client(dup)
    fhir = {**auth, "Content-Type": "application/fhir+json"}
    old = {"use": "old", "system": ids.EXTERNAL_ID_SYSTEM, "value": DUP_EXT}
    with client:
        r = client.get(f"/fhir/R4/Patient?identifier={ids.EXTERNAL_ID_SYSTEM}|{DUP_EXT}",
                       headers=auth)
        assert r.status_code == 200, r.text
        (entry,) = r.json()["entry"]
        assert entry["resource"]["id"] == to_fhir(dup.survivor)
        assert old in entry["resource"]["identifier"]
        # a prescriber's system registering the patient under the old id: the survivor
        sent = fhir_patient({**p, "external_id": DUP_EXT})
        r = client.post("/fhir/R4/Patient", headers={
            **fhir, "If-None-Exist": f"identifier={ids.EXTERNAL_ID_SYSTEM}|{DUP_EXT}"},
            content=json.dumps(sent))
        assert r.status_code == 200, r.text
        assert r.json()["id"] == to_fhir(dup.survivor)
        # PUT of the Patient as read (with its old identifier), then without it: kept
        res = client.get(f"/fhir/R4/Patient/{to_fhir(dup.survivor)}", headers=auth).json()
        without = {**res, "identifier": [i for i in res["identifier"] if i != old]}
        for body in (res, without):
            r = client.put(f"/fhir/R4/Patient/{to_fhir(dup.survivor)}", headers=fhir,
                           content=json.dumps({**body, "birthDate": p["birth_date"]}))
            assert r.status_code == 200, r.text
            assert _former(lv, dup.survivor) == [DUP_EXT]
            assert _found(dup, DUP_EXT) == [dup.survivor]
        # a create (no condition) carrying old identifiers: refused, nothing stored
        r = client.post("/fhir/R4/Patient", headers=fhir, content=json.dumps(
            {**fhir_patient(dup.w.a.patient_data[2]),
             "identifier": [{**old, "value": "ANCIEN-7"}]}))
        assert r.status_code == 422 and "former" in r.text, r.text


def test_console_and_portal_show_them(dup: Dup) -> None:
    w, lv = dup.w, dup.w.lv
    _merged(dup)
    client, auth = _client(dup)
    with client:
        r = client.get(f"/console/patients/{dup.survivor}", headers=auth)
        assert r.status_code == 200, r.text
        assert "Identifiants antérieurs (fusion)" in r.text and DUP_EXT in r.text
    # the patient's data download (portal): it is the patient's data
    lv.accounts.create(OP, w.a.tenant_id, ["patient"], "Jeanne Fusion",
                       "jeanne.fusion@example.org", password=PASSWORD,
                       patient_id=dup.survivor, totp_secret=SECRET)
    me = lv.accounts.resolve(lv.accounts.login("jeanne.fusion@example.org", PASSWORD,
                                               None).token)
    from labvault.services.audit import install_audit
    from labvault.services.portal import PortalService
    install_audit(lv)                   # the download lists who accessed the record
    assert PortalService(lv).my_data(me)["record"]["former_ids"] == [DUP_EXT]


# -- stored: sealed, and erased with the record ----------------------------------------------
def test_former_ids_are_sealed_and_erased_with_the_record(dup: Dup) -> None:
    lv = dup.w.lv
    _merged(dup)
    with lv.begin() as conn:
        row = conn.execute(select(patients).where(
            patients.c.patient_id == dup.survivor)).mappings().one()
        digests = [bytes(d) for (d,) in conn.execute(select(blind_index.c.digest).where(
            blind_index.c.patient_id == dup.survivor))]
    stored = b"".join(bytes(row[c]) for c in ("identity", "contact") if row[c] is not None)
    assert DUP_EXT.encode() not in stored and all(DUP_EXT.encode() not in d for d in digests)
    assert _found(dup, DUP_EXT) == [dup.survivor]
    lv.patients.erase(OP, dup.survivor, "demande du patient")
    assert _found(dup, DUP_EXT) == [] and _index_rows(lv, dup.survivor) == 0
