"""Sealed values moved inside the database (what an attacker with write access to the
tables, or a buggy migration, could do) fail to open with a clear IntegrityError —
never as someone else's data. Both backends."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest
from sqlalchemy import select, update

from labvault.domain.actors import Actor
from labvault.errors import IntegrityError
from labvault.services.app import Labvault
from labvault.store.schema import patient_keys, patients
from labvault.synthetic import make_finess
from tests.foundation.conftest import Cli, synthetic, write_ndjson


def _two_patients(lv: Labvault, operator: Actor, tenant_id: str) -> tuple[str, str]:
    report = lv.patients.import_lines(operator, tenant_id,
                                      [json.dumps(r) for r in synthetic(2, seed=41)])
    a, b = report.ids
    return a, b


def _blob(lv: Labvault, table: object, column: str, patient_id: str) -> bytes:
    with lv.begin() as conn:
        return bytes(conn.execute(select(table.c[column]).where(  # type: ignore[attr-defined]
            table.c.patient_id == patient_id)).scalar_one())  # type: ignore[attr-defined]


def _set(lv: Labvault, table: object, column: str, patient_id: str, value: bytes) -> None:
    with lv.begin() as conn:
        conn.execute(update(table).where(  # type: ignore[arg-type]
            table.c.patient_id == patient_id).values({column: value}))  # type: ignore[attr-defined]


def test_blob_copied_to_another_row(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    a, b = _two_patients(lv, operator, tenant_id)
    _set(lv, patients, "identity", b, _blob(lv, patients, "identity", a))
    with pytest.raises(IntegrityError, match=rf"patients\.identity of record {b} failed auth"):
        lv.patients.show(operator, b)
    assert lv.patients.show(operator, a)["birth_name"]  # the source row is untouched


def test_blob_copied_to_another_column(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    a, _ = _two_patients(lv, operator, tenant_id)
    _set(lv, patients, "contact", a, _blob(lv, patients, "identity", a))
    with pytest.raises(IntegrityError, match=r"patients\.contact .*failed authentication"):
        lv.patients.show(operator, a)


def test_blob_copied_to_another_tenant(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    a, _ = _two_patients(lv, operator, tenant_id)
    other = lv.tenants.add(operator, "Autre laboratoire", make_finess(random.Random())).tenant_id
    (c,) = lv.patients.import_lines(operator, other,
                                    [json.dumps(synthetic(1, seed=43)[0])]).ids
    # Even with the data key copied along, the tenant is bound into both AADs.
    _set(lv, patients, "identity", c, _blob(lv, patients, "identity", a))
    with pytest.raises(IntegrityError, match="failed authentication"):
        lv.patients.show(operator, c)
    with lv.begin() as conn:
        kv = conn.execute(select(patient_keys.c.kek_version).where(
            patient_keys.c.patient_id == c)).scalar_one()
    _set(lv, patient_keys, "wrapped", c, _blob(lv, patient_keys, "wrapped", a))
    with lv.begin() as conn:
        conn.execute(update(patient_keys).where(patient_keys.c.patient_id == c)
                     .values(kek_version=kv))
    with pytest.raises(IntegrityError, match=f"data key of patient {c}"):
        lv.patients.show(operator, c)


def test_wrapped_data_key_copied(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    a, b = _two_patients(lv, operator, tenant_id)
    _set(lv, patient_keys, "wrapped", b, _blob(lv, patient_keys, "wrapped", a))
    with pytest.raises(IntegrityError, match=f"data key of patient {b} failed authentication"):
        lv.patients.show(operator, b)


@pytest.mark.parametrize("where", ["header", "nonce", "body", "tag"])
def test_tampered_bytes_in_db(lv: Labvault, operator: Actor, tenant_id: str, where: str) -> None:
    a, _ = _two_patients(lv, operator, tenant_id)
    blob = bytearray(_blob(lv, patients, "coverage", a))
    header = 3 + blob[2]
    pos = {"header": 3, "nonce": header + 1, "body": header + 14, "tag": len(blob) - 1}[where]
    blob[pos] ^= 0x40
    _set(lv, patients, "coverage", a, bytes(blob))
    with pytest.raises(IntegrityError):
        lv.patients.show(operator, a)


def test_truncated_and_foreign_values(lv: Labvault, operator: Actor, tenant_id: str) -> None:
    a, _ = _two_patients(lv, operator, tenant_id)
    for bad in (b"", b"L", b"L\x01\x05dek-1", b"plain text, not sealed", b"L\x02\x05dek-1" + bytes(40)):
        _set(lv, patients, "identity", a, bad)
        with pytest.raises(IntegrityError):
            lv.patients.show(operator, a)


def test_cli_reports_tampering_without_traceback(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    tenant = cli.init_with_tenant()
    recs = synthetic(2, seed=47)
    cli.ok("patient", "import", str(write_ndjson(cli.root / "p.ndjson", recs)), "--tenant", tenant)
    a = cli.ok("patient", "find", "--tenant", tenant, "--nir", recs[0]["nir"])["patients"][0]
    b = cli.ok("patient", "find", "--tenant", tenant, "--nir", recs[1]["nir"])["patients"][0]
    con = sqlite3.connect(cli.db_file)
    con.execute("UPDATE patients SET contact = (SELECT contact FROM patients WHERE patient_id = ?) "
                "WHERE patient_id = ?", (a, b))
    con.commit()
    con.close()
    r = cli.run("patient", "show", b, "--json")
    assert r.exit_code == 1 and r.stdout == ""
    assert "integrity error" in r.stderr and "failed authentication" in r.stderr
    assert "Traceback" not in r.stderr and recs[0]["email"] not in r.stderr
