"""Index-key rotation (`labvault keys rotate --index`): a laboratory's blind-index key is
replaced, every digest made under it is recomputed from the sealed records, the old key
is destroyed -- and every kind of lookup still finds the same records; a failure midway
leaves the old key and every old digest in place (docs/security-model.md, "Blind
indexes")."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyotp
import pyrage
import pytest
from pyrage import x25519
from sqlalchemy import select, update

from labvault.breach import synthdump as sd
from labvault.domain.actors import Actor
from labvault.errors import KeyUnavailable, UserError
from labvault.guard.canaries import is_canary_nir
from labvault.interop.hl7.archive import archived_control_key
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services import rekey
from labvault.services.app import Labvault
from labvault.services.delivery import RPPS_INDEX
from labvault.services.lab import ACCESSION, FILLER, PLACER
from labvault.services.practitioners import PractitionerService
from labvault.store import repositories_delivery as drepo
from labvault.store import repositories_lab as lrepo
from labvault.store.schema import blind_index, tenant_keys
from labvault.store.tables_access import accounts
from labvault.store.tables_breach import breach_encodings
from labvault.store.tables_delivery import delivery_destinations, delivery_routes
from labvault.store.tables_fhir import practitioners
from labvault.store.tables_guard import guard_export_decoys
from labvault.store.tables_lab import lab_hl7_messages, lab_orders, lab_specimens
from labvault.synthetic import make_finess
from tests.foundation.conftest import Cli, synthetic, write_ndjson
from tests.lab import hl7_samples as S
from tests.lab.conftest import LabTestPolicy, patient_data

RPPS = "10003456786"
OTHER_RPPS = "10000000041"
PASSWORD = "Sirop-Violette-Trottinette-42"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
N = 12

# Every stored digest made under a laboratory's index key: (table, row key, digest column).
DIGEST_COLUMNS = [
    (blind_index, ("kind", "patient_id"), "digest"),
    (lab_orders, ("order_id",), "placer_digest"),
    (lab_orders, ("order_id",), "filler_digest"),
    (lab_specimens, ("specimen_id",), "accession_digest"),
    (lab_hl7_messages, ("message_id",), "control_digest"),
    (practitioners, ("practitioner_id",), "rpps_digest"),
    (delivery_routes, ("destination_id",), "rpps_digest"),
    (accounts, ("account_id",), "email_digest"),
    (guard_export_decoys, ("export_id", "kind"), "digest"),
    # sealed: a new seal each time, so the check below that it changed is weak; the
    # version column and tests/breach/test_sealed_encodings.py say the rest
    (breach_encodings, ("patient_id",), "sealed"),
]


@dataclass
class Lab:
    tenant_id: str
    recs: list[dict[str, Any]]
    ids: list[str]
    hl7_patient: str = ""
    placer_order: str = ""
    erased: str = ""
    practitioner: str = ""
    destinations: list[str] = field(default_factory=list)
    emails: dict[str, str] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    decoy: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def rlv(lv: Labvault) -> Labvault:
    lv.gate.policy = LabTestPolicy()
    return lv


def build_lab(lv: Labvault, tmp: Path) -> Lab:
    """A laboratory with one of each digest: patients, HL7 orders and archived messages,
    a desk order with a specimen, an erased patient's order, a directory entry, delivery
    routes (one destination from before the numbers were kept), staff and patient
    accounts, an export with decoys, breach encodings."""
    op = Actor.operator()
    t = lv.tenants.add(op, "Laboratoire de la rotation", make_finess(random.Random(7))).tenant_id
    recs = synthetic(N, seed=29)
    recs[0]["ins"] = recs[0]["nir"]
    report = lv.patients.import_lines(op, t, [json.dumps(r) for r in recs])
    assert report.imported == N, report.rejected
    lab = Lab(t, recs, report.ids)
    h = Hl7Handler(lv, Actor.system("mllp"), t)
    d = patient_data()
    d["nir"] = S.NIR_F
    lab.hl7_patient = lv.patients.register(op, t, d)
    out, _ = h.handle(S.oru_numeric("M1").encode())               # placer, filler, accession
    assert out.ack_code == "AA", out
    out, _ = h.handle(S.orm("O1").encode())                        # an order awaiting results
    (lab.placer_order,) = out.order_ids
    out, _ = h.handle(S.oru_numeric("U1", nir=recs[5]["nir"]).replace(
        "MARTIN^Jeanne", "INCONNU^Personne").encode())             # archived, patient unknown?
    req = {"tests": ["718-7"], "placer_number": "PL|77", "filler_number": "F-77",
           "prescriber": {"name": "Dr Paul Durand", "rpps": RPPS}}
    spec = {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00",
            "accession_number": "A1"}
    lv.lab.create_order(op, t, lab.ids[1], req, spec)
    lab.erased = lab.ids[2]
    lv.lab.create_order(op, t, lab.erased, {**req, "placer_number": "PL-ERASED",
                                            "filler_number": "F-ERASED"},
                        {**spec, "accession_number": "A-ERASED"})
    lv.patients.erase(op, lab.erased)
    lab.practitioner = PractitionerService(lv).add(op, {"name": "Dr Paul Durand", "rpps": RPPS}, t)
    for name, numbers in (("CHU", [RPPS, OTHER_RPPS]), ("Cabinet", [RPPS])):
        lab.destinations.append(str(lv.delivery.add_destination(
            op, t, name, "127.0.0.1", 2575, rpps=numbers, insecure_plaintext=True)["id"]))
    with lv.begin() as conn:     # the second one as added before its numbers were kept
        conn.execute(update(delivery_destinations).where(
            delivery_destinations.c.destination_id == lab.destinations[1]).values(
            prescribers_sealed=None))
    lab.emails = {"staff": "agathe.roux@example.org", "patient": "zoe.garnier@example.org"}
    lv.accounts.create(op, t, ["technician"], "Agathe Roux", lab.emails["staff"],
                       password=PASSWORD, totp_secret=SECRET)
    lv.accounts.create(op, t, ["patient"], "Zoé Garnier", lab.emails["patient"],
                       password=PASSWORD, patient_id=lab.ids[3])
    key = x25519.Identity.generate()
    lab.export = lv.guard.exports.create(op, t, "migration", ["nir", "email", "phone"],
                                         lv.now().date() - timedelta(days=1),
                                         lv.now().date() + timedelta(days=1),
                                         str(key.to_public()), "7d")
    rows = [json.loads(x) for x in pyrage.decrypt(Path(lab.export["file"]).read_bytes(),
                                                  [key]).decode().splitlines()]
    lab.decoy = next(r for r in rows if is_canary_nir(r["nir"]))
    return lab


def digests(lv: Labvault, tenant_id: str) -> dict[tuple[str, str], dict[tuple[Any, ...], bytes]]:
    """Every digest of the laboratory: (table, column) -> row key -> value."""
    out: dict[tuple[str, str], dict[tuple[Any, ...], bytes]] = {}
    with lv.begin() as conn:
        for table, key, column in DIGEST_COLUMNS:
            rows = conn.execute(select(*(table.c[k] for k in key), table.c[column]).where(
                table.c.tenant_id == tenant_id, table.c[column].is_not(None))).all()
            got = out.setdefault((table.name, column), {})
            for r in rows:
                got.setdefault(tuple(r[:-1]), b"")
                got[tuple(r[:-1])] += bytes(r[-1])      # several rows per key: concatenated
    return out


def single_values(rows: dict[tuple[Any, ...], bytes]) -> set[bytes]:
    """Each digest on its own: the 8-byte digests (and blocking keys) of concatenated
    values; an encoding whole."""
    out: set[bytes] = set()
    for v in rows.values():
        size = 8 if len(v) % 8 == 0 and len(v) != 256 else len(v)
        out.update(v[i:i + size] for i in range(0, len(v), size))
    return out


def opened_encodings(lv: Labvault, tenant_id: str) -> dict[str, tuple[int, bytes]]:
    """Each patient's breach encoding, opened: (index key version, encoding + blocks)."""
    with lv.begin() as conn:
        rows = conn.execute(select(breach_encodings.c.patient_id, breach_encodings.c.key_version,
                                   breach_encodings.c.sealed).where(
            breach_encodings.c.tenant_id == tenant_id)).all()
        opened = lv.gate.open_tenant_column_checked(
            conn, tenant_id, "breach_encodings", "sealed", [(r[0], r[2]) for r in rows])
    return {r[0]: (r[1], o) for r, o in zip(rows, opened, strict=True)}


def find_all(lv: Labvault, lab: Lab) -> list[list[str]]:
    op = Actor.operator()
    out = []
    for r in lab.recs:
        out.append(lv.patients.find(op, lab.tenant_id, nir=r["nir"]))
        out.append(lv.patients.find(op, lab.tenant_id, email=r["email"]))
        out.append(lv.patients.find(op, lab.tenant_id, phone=r["phone"]))
        out.append(lv.patients.find(op, lab.tenant_id, birth_name=r["birth_name"],
                                    first_name=r["first_names"][0],
                                    birth_date=r["birth_date"]))
        out.append(lv.patients.find(op, lab.tenant_id, external_id=r["external_id"]))
    return out


def test_every_lookup_finds_the_same_records_and_no_old_digest_survives(
        rlv: Labvault, tmp_path: Path) -> None:
    lv, op = rlv, Actor.operator()
    lab = build_lab(lv, tmp_path)
    t = lab.tenant_id
    found = find_all(lv, lab)
    assert all(found[i] == [lab.ids[i // 5]] for i in range(len(found)) if i // 5 != 2)
    before = digests(lv, t)
    assert all(before[k] for k in before), [k for k in before if not before[k]]
    encodings = opened_encodings(lv, t)

    out = lv.keys.rotate_index(op, t, archived_control_key)

    assert out["index_version"] == 2 and out["tenant_id"] == t
    assert out["patients"] == N            # the HL7 patient too, the erased one not
    assert out["accounts"] == 2 and out["practitioners"] == 1 and out["delivery_routes"] == 3
    assert out["breach_encodings"] == N and out["export_decoys"] >= 2
    assert out["cleared"] == 3             # the erased patient's placer, filler, accession
    # Patients: every kind of search, the INS with the NIR (kind nir).
    assert find_all(lv, lab) == found
    assert lv.patients.find(op, t, nir=S.NIR_F) == [lab.hl7_patient]
    # No digest equals its old value, every row's digest changed, nothing added or lost
    # (the erased patient's order and specimen digests are cleared).
    after = digests(lv, t)
    for column, rows in before.items():
        for key, value in after[column].items():
            assert rows.get(key) != value, (column, key)
        old_values, new_values = single_values(rows), single_values(after[column])
        assert old_values and new_values and not old_values & new_values, column
    assert set(after[("lab_orders", "placer_digest")]) == set(
        before[("lab_orders", "placer_digest")]) - {k for k in before[
            ("lab_orders", "placer_digest")] if _order_patient(lv, k[0]) == lab.erased}
    assert len(after[("blind_index", "digest")]) == len(before[("blind_index", "digest")])
    # Breach encodings (sealed): opened, every filter and blocking key made again under
    # the new version's secrets, none kept from the old one.
    again = opened_encodings(lv, t)
    assert set(again) == set(encodings) and {v for v, _ in again.values()} == {2}
    for pid, (_v, value) in again.items():
        old_value = encodings[pid][1]
        assert value[:256] != old_value[:256]
        assert not ({value[i:i + 8] for i in range(256, len(value), 8)}
                    & {old_value[i:i + 8] for i in range(256, len(old_value), 8)})
    assert len(after[("lab_hl7_messages", "control_digest")]) == len(
        before[("lab_hl7_messages", "control_digest")])

    # HL7: the resend of an archived message is still recognised; an ORU naming the
    # ORM's placer number fills that order; numbers find their orders and specimens.
    h = Hl7Handler(lv, Actor.system("mllp"), t)
    again, _ = h.handle(S.oru_numeric("M1").encode())
    assert again.duplicate
    filled, _ = h.handle(S.oru_numeric("R9").replace("PL1001", "PL3003").replace(
        "FI2001", "FI3003").encode())
    assert filled.order_ids == [lab.placer_order]
    with lv.begin() as conn:
        assert lrepo.order_by_digest(conn, t, lv.lab.digest(conn, t, PLACER, "PL|77"),
                                     None) is not None
        assert lrepo.order_with_filler(conn, t, lv.lab.digest(conn, t, FILLER, "F-77"))
        assert conn.execute(select(lab_specimens.c.specimen_id).where(
            lab_specimens.c.accession_digest == lv.lab.digest(conn, t, ACCESSION, "A1"))).all()
        routed = drepo.matching_destinations(conn, t, lv.lab.digest(conn, t, RPPS_INDEX, RPPS))
        assert sorted(r["destination_id"] for r in routed) == sorted(lab.destinations)
        legacy = conn.execute(select(delivery_destinations.c.prescribers_sealed).where(
            delivery_destinations.c.destination_id == lab.destinations[1])).scalar()
        assert legacy is not None          # its recovered numbers are kept now
    # FHIR directory by RPPS; logins by e-mail (staff with TOTP, patient).
    assert [p["id"] for p in PractitionerService(lv).find(op, rpps=RPPS, tenant_id=t)[0]] == [
        lab.practitioner]
    assert lv.accounts.login(lab.emails["patient"], PASSWORD).token
    assert lv.accounts.login(lab.emails["staff"], PASSWORD, pyotp.TOTP(SECRET).now()).token
    # Export decoys still name the export.
    one = json.dumps({"nir": lab.decoy["nir"].replace(" ", "")}).encode() + b"\n"
    named = lv.guard.exports.identify(op, one)
    assert named["export_id"] == lab.export["export_id"] and named["evidence"]["decoys"] == 1
    assert "decoy_identifiers" not in lv.guard.exports.manifest(op, lab.export["export_id"])
    # Breach triage matches a synthetic dump of the laboratory's patients.
    alive = [(t, pid, r) for pid, r in zip(lab.ids, lab.recs, strict=True) if pid != lab.erased]
    dump = sd.make_dump(alive, 5, seed=3)
    path = tmp_path / "dump.csv"
    sd.write_csv(path, dump.rows)
    case = lv.breach.open_case(op, "t", lv.now().isoformat())
    res = lv.breach.triage(op, case, [path])
    assert {m["patient_id"] for m in res["matches"]} == {pid for _, pid, _ in alive}


def _order_patient(lv: Labvault, order_id: str) -> str:
    with lv.begin() as conn:
        return str(conn.execute(select(lab_orders.c.patient_id).where(
            lab_orders.c.order_id == order_id)).scalar())


def test_old_key_destroyed_and_the_rotation_audited(rlv: Labvault, tenant_id: str) -> None:
    lv, op = rlv, Actor.operator()
    lv.patients.import_lines(op, tenant_id, [json.dumps(r) for r in synthetic(3)])
    lv.keys.rotate_index(op, tenant_id, archived_control_key)
    out = lv.keys.rotate_index(op, tenant_id, archived_control_key)
    assert out["index_version"] == 3 and out["patients"] == 3
    with lv.begin() as conn:
        keys = {r[0]: (r[1], r[2]) for r in conn.execute(select(
            tenant_keys.c.version, tenant_keys.c.status, tenant_keys.c.wrapped).where(
            tenant_keys.c.tenant_id == tenant_id, tenant_keys.c.purpose == "index"))}
        assert keys[1] == ("destroyed", None) and keys[2] == ("destroyed", None)
        assert keys[3][0] == "active" and keys[3][1] is not None
        lv.load_tenant_keys(conn, tenant_id)
    with pytest.raises(KeyUnavailable):           # gone from the process too
        lv.keyring.blind_index_key(tenant_id, 2)
    audit = lv.gate.audit
    entries = [e for e in getattr(audit, "entries", []) if e[0].resource == "keys"]
    assert [(e[0].purpose, e[1].detail.get("key"), e[2]) for e in entries] == [
        ("key-management", "index", "allowed")] * 2


def test_a_failure_midway_changes_nothing(rlv: Labvault, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lv, op = rlv, Actor.operator()
    lab = build_lab(lv, tmp_path)
    t = lab.tenant_id
    before = digests(lv, t)
    found = find_all(lv, lab)

    def broken(self: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(rekey._Rekey, "accounts", broken)   # after most digests were redone
    with pytest.raises(RuntimeError):
        lv.keys.rotate_index(op, t, archived_control_key)
    assert digests(lv, t) == before
    with lv.begin() as conn:
        rows = conn.execute(select(tenant_keys.c.version, tenant_keys.c.status).where(
            tenant_keys.c.tenant_id == t, tenant_keys.c.purpose == "index")).all()
    assert [tuple(r) for r in rows] == [(1, "active")]
    assert find_all(lv, lab) == found
    monkeypatch.undo()
    out = lv.keys.rotate_index(op, t, archived_control_key)             # a retry makes version 2 afresh
    assert out["index_version"] == 2
    assert find_all(lv, lab) == found
    dump = sd.make_dump([(t, lab.ids[0], lab.recs[0])], 0, seed=2)
    path = tmp_path / "d.csv"
    sd.write_csv(path, dump.rows)
    res = lv.breach.triage(op, lv.breach.open_case(op, "t", lv.now().isoformat()), [path])
    assert [m["patient_id"] for m in res["matches"]] == [lab.ids[0]]


def test_a_destination_whose_numbers_are_unknown_stops_the_rotation(
        rlv: Labvault, tenant_id: str) -> None:
    lv, op = rlv, Actor.operator()
    did = lv.delivery.add_destination(op, tenant_id, "CHU", "127.0.0.1", 2575,
                                      rpps=[OTHER_RPPS], insecure_plaintext=True)["id"]
    with lv.begin() as conn:
        conn.execute(update(delivery_destinations).where(
            delivery_destinations.c.destination_id == did).values(prescribers_sealed=None))
    with pytest.raises(UserError) as exc:
        lv.keys.rotate_index(op, tenant_id, archived_control_key)
    assert did in exc.value.message and "delivery add" in exc.value.hint
    with lv.begin() as conn:
        assert conn.execute(select(tenant_keys.c.version).where(
            tenant_keys.c.tenant_id == tenant_id, tenant_keys.c.purpose == "index")).all() == [
            (1,)]


def test_another_process_follows_the_rotation(cli: Cli) -> None:
    """A running server (another ``Labvault`` on the same database) holding the tenant's
    keys finds records at once after the rotation, and its HL7 and order numbers'
    digests follow from its next transaction on (the version each transaction's key
    check reads), never the destroyed key's."""
    tenant = cli.init_with_tenant()
    recs = synthetic(4, seed=31)
    cli.ok("patient", "import", str(write_ndjson(cli.root / "p.ndjson", recs)),
           "--tenant", tenant)
    server, rotator = cli.open(), cli.open()
    try:
        op = Actor.operator()
        pid = server.patients.find(op, tenant, nir=recs[0]["nir"])
        with server.begin() as conn:
            old = server.lab.digest(conn, tenant, PLACER, "PL1")
        rotator.keys.rotate_index(op, tenant, archived_control_key)
        with server.begin() as conn:
            assert server.lab.digest(conn, tenant, PLACER, "PL1") != old
            new = rotator.lab.digest(conn, tenant, PLACER, "PL1")
        assert server.patients.find(op, tenant, nir=recs[0]["nir"]) == pid
        with server.begin() as conn:
            assert server.lab.digest(conn, tenant, PLACER, "PL1") == new
    finally:
        server.close()
        rotator.close()


def test_cli(cli: Cli) -> None:
    tenant = cli.init_with_tenant()
    cli.ok("patient", "import", str(write_ndjson(cli.root / "p.ndjson", synthetic(3))),
           "--tenant", tenant)
    out = cli.ok("keys", "rotate", "--index", "--tenant", tenant)
    (one,) = out["rotated"]
    assert (one["tenant_id"], one["index_version"], one["patients"]) == (tenant, 2, 3)
    out = cli.ok("keys", "rotate", "--index")                     # every laboratory
    assert [r["index_version"] for r in out["rotated"]] == [3]
    r = cli.user_error("keys", "rotate", "--index", "--tenant", "lab_doesnotexist")
    assert "no laboratory lab_doesnotexist" in r.stderr
    r = cli.user_error("keys", "rotate", "--index", "--root")
    assert "exclusive" in r.stderr
    r = cli.user_error("keys", "rotate", "--index", "--tenant", "platform")
    assert "platform" in r.stderr
    lv = cli.open()
    try:
        assert lv.patients.find(Actor.operator(), tenant, nir=synthetic(3)[1]["nir"])
    finally:
        lv.close()


def test_a_sealed_record_reindexes_as_parsed() -> None:
    """The rotation rebuilds records from their sealed identity and contact without
    validating them again: same index values and breach identities as ``parse``."""
    from labvault.domain.categories import Category
    from labvault.domain.patient import PatientRecord
    from labvault.services import indexing
    from labvault.services.breach import BreachService
    recs = synthetic(400, seed=41)
    recs[0]["ins"] = recs[0]["nir"]
    for r in recs:
        parsed = PatientRecord.parse(r)
        if r is recs[1]:              # a survivor of merges: its former ids are indexed too
            parsed = parsed.with_former_ids(["DUP-1", "DUP-2"])
        cats = json.loads(json.dumps({c.value: v for c, v in parsed.categories().items()}))
        rebuilt = PatientRecord.from_sealed(cats[Category.IDENTITY.value],
                                            cats.get(Category.CONTACT.value))
        assert indexing.index_values(rebuilt) == indexing.index_values(parsed)
        assert BreachService.identities(rebuilt) == BreachService.identities(parsed)


@pytest.mark.parametrize("raw", [
    S.oru_numeric().encode(), S.oru_v23_local_codes().encode(), S.orm().encode(),
    S.oml().encode(), S.adt().replace("|FRA|", "|FRA|8859/1", 1).encode("iso8859-1"),
    b"\xef\xbb\xbf" + S.orm("B1").replace("\r", "\n").encode(),
    S.orm("B2").replace("\r", "\r\n").encode(),
    S.oru_numeric().replace("ANALYZER", "ANA\\T\\LYZER^x").encode(),
], ids=["oru", "oru-v23", "orm", "oml", "adt-latin1", "bom-newlines", "crlf", "escapes"])
def test_an_archived_message_gives_the_key_it_was_stored_under(raw: bytes) -> None:
    """The rotation reads the resend key from the archived message's MSH line alone:
    what the listener read from the whole message."""
    from labvault.interop.hl7.handler import prepare
    from labvault.services.lab_messages import control_key
    inbound = prepare(raw).inbound
    assert inbound is not None
    assert archived_control_key(raw) == control_key(inbound.sending, inbound.control_id)
