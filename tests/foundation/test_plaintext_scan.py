"""T1 (stolen files): after importing 600 synthetic patients through the CLI, no byte
of the database (SQLite file + WAL + shm, or ``pg_dump`` of the schema with every
bytea decoded), of the shred log or of any other file in the data directory holds
any imported personal value, in any of its normalised forms or encodings.

Needles shorter than ``MIN_NEEDLE`` bytes are left out on purpose: sealed blobs are
random bytes, and a random 5 MB file contains a given 4-byte string with probability
~1e-3 (5e6 / 2**32) — a short surname would make the test flaky without saying
anything about sealing. At 6 bytes the chance is ~2e-8 per needle (below 1e-4 for
the whole set). Short surnames are still covered inside longer needles (the
"first last" and JSON-quoted forms).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from labvault.crypto import blind_index as bi
from labvault.domain import validation as v
from labvault.domain.actors import Actor
from tests.conftest import IN_CI, PG_URL
from tests.foundation.conftest import Cli, synthetic, write_ndjson

N_PATIENTS = 600
MIN_NEEDLE = 6
WINDOW = MIN_NEEDLE


def _forms_of_name(name: str) -> set[str]:
    return {name, name.upper(), name.lower(), bi.fold_name(name), f'"{name}"'}


def needles_for(p: dict[str, Any]) -> set[str]:
    """Every personal value of an import record, as imported and as normalised."""
    out: set[str] = set()
    names = [p["birth_name"], *p["first_names"]] + ([p["used_name"]] if p.get("used_name") else [])
    for n in names:
        out |= _forms_of_name(n)
    full = f"{p['first_names'][0]} {p['birth_name']}"
    out |= _forms_of_name(full)
    out.add(bi.normalise_name_dob(p["birth_name"], p["first_names"][0], p["birth_date"]))
    out.add(p["birth_date"])
    nir = p["nir"]
    out |= {nir, bi.normalise_nir(nir), f"{nir[0]} {nir[1:3]} {nir[3:5]} {nir[5:7]} {nir[7:10]} "
            f"{nir[10:13]} {nir[13:]}", nir[:13]}
    e164 = v.phone(p["phone"])
    national = "0" + e164[3:]
    out |= {p["phone"], e164, national, " ".join(national[i:i + 2] for i in range(0, 10, 2)),
            e164[1:]}
    out |= {p["email"], bi.normalise_email(p["email"]), p["email"].upper(),
            p["email"].split("@")[0]}
    a = p["address"]
    out |= {a["line"], a["line"].upper(), f"{a['line']}, {a['postal_code']} {a['city']}"}
    cov = p["coverage"]
    out |= {cov["amo"], cov["member_id"]} | ({cov["amc"]} if cov.get("amc") else set())
    out |= {p["prescriber"]["name"], p["prescriber"]["rpps"]}
    out.add(p["external_id"])
    return out


# Random ids are 26 characters of this alphabet (store/ids.py); thousands of them sit
# in clear in the tables, so a 6-letter lower-case name spelled only with these letters
# ("menard") would turn up inside some id by chance (~3e-4 per needle per run).
ID_ALPHABET = frozenset(b"0123456789abcdefghjkmnpqrstvwxyz")


def encoded(needles: Iterable[str]) -> set[bytes]:
    out: set[bytes] = set()
    for s in needles:
        for enc in ("utf-8", "latin-1", "utf-16-le", "utf-16-be"):
            try:
                b = s.encode(enc)
            except UnicodeEncodeError:
                continue
            if len(b) < MIN_NEEDLE or (len(b) < 8 and not b.isdigit() and set(b) <= ID_ALPHABET):
                continue
            out.add(b)
    return out


class Scanner:
    """Multi-needle search: index every 6-byte window of the needles' starts, slide
    once over the haystack, confirm candidates with a full comparison."""

    def __init__(self, needles: set[bytes]) -> None:
        self.by_prefix: dict[bytes, list[bytes]] = {}
        for n in needles:
            self.by_prefix.setdefault(n[:WINDOW], []).append(n)

    def hits(self, data: bytes) -> set[bytes]:
        found: set[bytes] = set()
        prefixes = self.by_prefix
        for i in range(len(data) - WINDOW + 1):
            cands = prefixes.get(data[i:i + WINDOW])
            if cands:
                found.update(n for n in cands if data.startswith(n, i))
        return found


def _records() -> list[dict[str, Any]]:
    recs = synthetic(N_PATIENTS, seed=29)
    # Make sure the accented / Corsican / apostrophe cases are there whatever the seed gives.
    recs[0] = {**recs[0], "birth_name": "Lefèvre-Dâlbécourt", "first_names": ["Hélène", "Zoé"]}
    recs[1] = {**recs[1], "birth_name": "D'Orléans-Bœuf", "used_name": "Mézières"}
    return recs


def _import(cli: Cli) -> tuple[str, list[dict[str, Any]], set[bytes]]:
    tenant = cli.init_with_tenant("Laboratoire du scan")
    recs = _records()
    f = write_ndjson(cli.root / "patients.ndjson", recs)
    report = cli.ok("patient", "import", str(f), "--tenant", tenant)
    assert report["imported"] == N_PATIENTS, report["rejections"][:5]
    f.unlink()  # the migration file is the customer's, not part of the installation
    # Exercise reads, a rotation and an erasure too: none of them may leave plaintext behind.
    pid = cli.ok("patient", "find", "--tenant", tenant, "--nir", recs[5]["nir"])["patients"][0]
    assert cli.ok("patient", "show", pid)["nir"] == recs[5]["nir"]
    cli.ok("keys", "rotate")
    cli.ok("patient", "erase", pid)
    needles: set[str] = set()
    for r in recs:
        needles |= needles_for(r)
    return tenant, recs, encoded(needles)


def _scan_files(paths: Iterable[Path], scanner: Scanner) -> dict[str, set[bytes]]:
    leaks: dict[str, set[bytes]] = {}
    for p in paths:
        hits = scanner.hits(p.read_bytes())
        if hits:
            leaks[str(p)] = hits
    return leaks


def _data_dir_files(cli: Cli) -> list[Path]:
    files = [p for p in cli.data_dir.rglob("*") if p.is_file()]
    assert cli.key_file not in files  # the key file lives beside, never inside, the data dir
    return files


def test_scanner_finds_what_it_looks_for() -> None:
    """The scanner itself: a planted needle is found at any offset, in any encoding."""
    needles = encoded({"Hélène Lefèvre", "184127645108946"})
    s = Scanner(needles)
    blob = bytes(range(256)) * 40
    for n in needles:
        for off in (0, 1, 777, len(blob)):
            assert n in s.hits(blob[:off] + n + blob[off:])
    assert s.hits(blob) == set()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_no_plaintext_in_sqlite_files(cli: Cli) -> None:
    _tenant, _recs, needles = _import(cli)
    scanner = Scanner(needles)
    files = _data_dir_files(cli)
    names = {p.name for p in files}
    assert {"labvault.db", "shred.log"} <= names
    # Scan while the WAL still holds recent pages, then again after a checkpoint.
    leaks = _scan_files(files, scanner)
    assert not leaks, {k: sorted(v)[:10] for k, v in leaks.items()}
    # A live process: the WAL and shm files hold the latest pages until checkpointed.
    more = synthetic(100, seed=31)
    lv = cli.open()
    try:
        tenant = lv.tenants.list()[0]["id"]
        assert lv.patients.import_lines(Actor.operator(), tenant,
                                        [json.dumps(r) for r in more]).imported == 100
        wal = cli.data_dir / "labvault.db-wal"
        assert wal.exists() and wal.stat().st_size > 0
        assert (cli.data_dir / "labvault.db-shm").exists()
        extra: set[str] = set()
        for r in more:
            extra |= needles_for(r)
        scanner = Scanner(needles | encoded(extra))
        leaks = _scan_files([p for p in cli.data_dir.rglob("*") if p.is_file()], scanner)
        assert not leaks, {k: sorted(v)[:10] for k, v in leaks.items()}
    finally:
        lv.close()


def _pg_dump(schema: str) -> bytes:
    exe = shutil.which("pg_dump")
    if exe is None:
        msg = "pg_dump not installed (apt-get install postgresql-client; .ci/run does it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    from sqlalchemy.engine import make_url
    u = make_url(PG_URL)
    cmd = [exe, "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U",
           u.username or "postgres", "-d", u.database or "test", "-n", schema, "--no-owner"]
    return subprocess.run(cmd, check=True, capture_output=True).stdout


@pytest.mark.parametrize("backend", ["postgres"])
def test_no_plaintext_in_pg_dump(cli: Cli) -> None:
    _tenant, _recs, needles = _import(cli)
    assert cli.schema
    dump = _pg_dump(cli.schema)
    assert b"COPY" in dump and b"patients" in dump
    scanner = Scanner(needles)
    # bytea columns are dumped as hex: scan the dump with them cut out (long digit needles
    # would otherwise turn up inside random hex by chance), then every one decoded.
    hex_re = rb"\\\\x([0-9a-f]+)"
    text_part = re.sub(hex_re, b"<bytea>", dump)
    assert not scanner.hits(text_part), sorted(scanner.hits(text_part))[:10]
    blobs = [bytes.fromhex(m.decode()) for m in re.findall(hex_re, dump)]
    assert len(blobs) > N_PATIENTS * 4
    raw = b"\x00".join(blobs)
    assert not scanner.hits(raw), sorted(scanner.hits(raw))[:10]
    leaks = _scan_files(_data_dir_files(cli), scanner)
    assert not leaks, {k: sorted(v)[:10] for k, v in leaks.items()}
