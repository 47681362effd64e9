"""Governed exports: allow-list, encryption to the recipient, four eyes, fingerprints, expiry."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyrage
import pytest
from pyrage import x25519

from labvault.domain import validation as v
from labvault.domain.actors import Actor
from labvault.errors import (
    AccessDenied,
    AuthenticationFailed,
    Conflict,
    InvalidField,
)
from labvault.guard.canaries import is_canary_nir
from labvault.services.app import Labvault
from labvault.store import repositories_guard as grepo
from tests.durability import Events, durable
from tests.guard.conftest import alerts_of, import_people, staff

TODAY = date.today()
ALL_FIELDS = ["birth_name", "first_names", "birth_date", "sex", "nir", "phone", "email",
              "address", "amo", "blood_group", "prescriber"]


def _export(lv: Labvault, tenant_id: str, recipient: Any, fields: list[str] | None = None,
            actor: Actor | None = None, expires: str = "7d") -> dict[str, Any]:
    return lv.guard.exports.create(actor or Actor.operator(), tenant_id, "migration to new LIS",
                                   fields or ALL_FIELDS, TODAY - timedelta(days=1),
                                   TODAY + timedelta(days=1), str(recipient), expires)


def _rows(path: str, identity: Any) -> list[dict[str, Any]]:
    plain = pyrage.decrypt(Path(path).read_bytes(), [identity])
    return [json.loads(line) for line in plain.decode().splitlines()]


def test_allow_list_and_categories(glv: Labvault, tenant_id: str) -> None:
    import_people(glv, tenant_id, 3)
    key = x25519.Identity.generate()
    with pytest.raises(InvalidField) as exc:
        _export(glv, tenant_id, key.to_public(), ["birth_name", "password_hash"])
    assert "password_hash" in str(exc.value) and "allowed:" in exc.value.hint
    with pytest.raises(InvalidField):
        _export(glv, tenant_id, "age1notakey", ["birth_name"])
    with pytest.raises(InvalidField):
        _export(glv, tenant_id, key.to_public(), ["birth_name"], expires="90d")
    clerk = Actor(kind="staff", id="acct_exp", tenant_id=tenant_id,
                  roles=frozenset({"identity_exporter"}))
    with pytest.raises(AuthenticationFailed):
        _export(glv, tenant_id, key.to_public(), ["birth_name"], actor=clerk)
    with pytest.raises(AccessDenied) as denied:
        glv.guard.exports.create(clerk, tenant_id, "x", ["birth_name", "phone"], TODAY, TODAY,
                                 str(key.to_public()), reauthenticated=True)
    assert "phone" in denied.value.message
    ok = glv.guard.exports.create(clerk, tenant_id, "x", ["birth_name"], TODAY, TODAY,
                                  str(key.to_public()), reauthenticated=True)
    assert ok["status"] == "ready"
    # A lab may narrow the allow-list further.
    glv.guard.set_config(Actor.operator(), tenant_id, "export.fields", "birth_name,birth_date")
    with pytest.raises(InvalidField):
        _export(glv, tenant_id, key.to_public(), ["birth_name", "nir"])


def test_file_is_encrypted_minimal_and_exact(glv: Labvault, tenant_id: str) -> None:
    ids = import_people(glv, tenant_id, 30)
    key = x25519.Identity.generate()
    res = _export(glv, tenant_id, key.to_public(), ["birth_name", "nir", "phone", "blood_group"])
    assert res["status"] == "ready" and Path(res["file"]).stat().st_mode & 0o077 == 0
    raw = Path(res["file"]).read_bytes()
    originals = {p: glv.patients.show(Actor.operator(), p) for p in ids}
    for rec in originals.values():
        for needle in (rec["nir"], rec["birth_name"], rec["phone"][3:], rec["nir"][:7]):
            assert needle.encode() not in raw
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(raw, [x25519.Identity.generate()])
    rows = _rows(res["file"], key)
    decoys = [r for r in rows if is_canary_nir(r["nir"])]
    real = [r for r in rows if not is_canary_nir(r["nir"])]
    assert len(real) == 30 and len(decoys) >= 2
    for r in rows:
        assert set(r) <= {"row_id", "birth_name", "nir", "phone", "blood_group"}
    by_nir = {o["nir"]: o for o in originals.values()}
    for r in real:
        o = by_nir[r["nir"].replace(" ", "")]
        assert r["blood_group"] == o["blood_group"]                 # clinical value untouched
        assert r["birth_name"].upper() == o["birth_name"].upper()
    listed = glv.guard.exports.manifest(Actor.operator(), res["export_id"])
    assert listed["rows"] == 30 and listed["decoys"] == len(decoys)
    assert listed["recipient"] == str(key.to_public()) and listed["file_sha256"]
    assert listed["fields"] == ["birth_name", "nir", "phone", "blood_group"]


def test_four_eyes_above_threshold(glv: Labvault, tenant_id: str) -> None:
    glv.settings.extra["LABVAULT_EXPORT_APPROVAL_MIN_PATIENTS"] = "5"
    try:
        import_people(glv, tenant_id, 6)
        key = x25519.Identity.generate()
        requester = Actor.operator()
        res = _export(glv, tenant_id, key.to_public(), ["birth_name"], actor=requester)
        assert res["status"] == "pending_approval" and res["file"] is None
        with pytest.raises(AccessDenied):
            glv.guard.exports.approve(requester, res["export_id"])
        second = Actor(kind="operator", id="os:dpo@labhost", tenant_id=None,
                       roles=frozenset({"operator"}))
        done = glv.guard.exports.approve(second, res["export_id"])
        assert done["status"] == "ready" and len(_rows(done["file"], key)) >= 6
        assert glv.guard.exports.manifest(requester, res["export_id"])["approvers"] == [second.id]
        with pytest.raises(Conflict):
            glv.guard.exports.approve(second, res["export_id"])
    finally:
        del glv.settings.extra["LABVAULT_EXPORT_APPROVAL_MIN_PATIENTS"]


def test_canaries_stay_out_of_exports(glv: Labvault, tenant_id: str) -> None:
    import_people(glv, tenant_id, 4)
    glv.guard.plant(Actor.operator(), tenant_id, 3)
    key = x25519.Identity.generate()
    res = _export(glv, tenant_id, key.to_public(), ["nir"])
    assert res["patients"] == 4
    assert len([r for r in _rows(res["file"], key) if not is_canary_nir(r["nir"])]) == 4
    assert not alerts_of(glv, tenant_id, "canary.export")


def test_expired_exports_are_purged(glv: Labvault, tenant_id: str) -> None:
    import_people(glv, tenant_id, 3)
    key = x25519.Identity.generate()
    res = _export(glv, tenant_id, key.to_public(), ["birth_name"], expires="1h")
    keep = _export(glv, tenant_id, key.to_public(), ["birth_name"], expires="7d")
    assert glv.guard.purge()["exports"]["purged"] == 0
    real_now = glv.now
    glv.now = lambda: real_now() + timedelta(hours=2)  # type: ignore[method-assign]
    dry = glv.guard.purge(dry_run=True)
    assert dry["exports"]["expired"] == 1 and Path(res["file"]).exists()
    done = glv.guard.purge()
    assert done["exports"]["ids"] == [res["export_id"]]
    assert not Path(res["file"]).exists() and Path(keep["file"]).exists()
    with glv.begin() as conn:
        (deletion,) = [d for d in grepo.list_deletions(conn, tenant_id) if d["kind"] == "export"]
        assert deletion["object_id"] == res["export_id"] and deletion["rule"] == "expiry"
        assert grepo.get_export(conn, res["export_id"])["status"] == "purged"  # type: ignore[index]
    assert glv.guard.purge()["exports"]["purged"] == 0


# -- attribution of leaked copies ------------------------------------------------------------
IDENTIFYING = ("nir", "phone", "email", "birth_name")


def _leak(rows: list[dict[str, Any]], rng: random.Random, as_csv: bool) -> bytes:
    sample = rng.sample(rows, max(1, len(rows) // 10))            # 10% of the rows
    rng.shuffle(sample)                                            # re-ordered
    columns = list(sample[0])
    drop = {"row_id"} if rng.random() < 0.8 else set()
    others = [c for c in columns if c not in IDENTIFYING and c != "row_id"]
    drop |= set(rng.sample(others, rng.randint(0, len(others))))  # columns dropped
    keep_ident = rng.sample(IDENTIFYING, rng.randint(2, 4))
    drop |= {c for c in IDENTIFYING if c not in keep_ident}
    leaked = [{k: v for k, v in r.items() if k not in drop} for r in sample]
    if not as_csv:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in leaked).encode()
    out = io.StringIO()
    keys = [k for k in columns if k not in drop]
    w = csv.DictWriter(out, fieldnames=keys)
    w.writeheader()
    for r in leaked:
        w.writerow({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in r.items()})
    return out.getvalue().encode()


def test_identify_names_the_right_export_and_never_a_wrong_one(glv: Labvault,
                                                              tenant_id: str) -> None:
    import_people(glv, tenant_id, 300)
    fields = ["birth_name", "first_names", "birth_date", "nir", "phone", "email", "blood_group",
              "prescriber"]
    exports = []
    for _ in range(3):                                   # same patients, three recipients
        key = x25519.Identity.generate()
        res = _export(glv, tenant_id, key.to_public(), fields)
        exports.append((res["export_id"], str(key.to_public()), _rows(res["file"], key)))
    rng = random.Random(2026)
    trials, right, wrong = 100, 0, 0
    for t in range(trials):
        eid, recipient, rows = exports[t % 3]
        found = glv.guard.exports.identify(Actor.operator(), _leak(rows, rng, as_csv=t % 4 == 3))
        if found["export_id"] == eid:
            right += 1
            assert found["recipient"] == recipient
        elif found["export_id"] is not None:
            wrong += 1
    assert wrong == 0, f"false attribution rate {wrong}/{trials}"
    assert right == trials, f"attributed {right}/{trials}"
    # Rows written the canonical way (not from any export) are attributed to nobody
    # (decoy rows left out: they do name their export, wherever they turn up).
    canonical = []
    for r in [r for r in exports[0][2] if not is_canary_nir(r["nir"])][:40]:
        c = dict(sorted(r.items()))
        c.pop("row_id")
        c["nir"] = c["nir"].replace(" ", "")
        c["phone"] = v.phone(c["phone"])
        c["email"] = c["email"].lower()
        c["birth_name"] = c["birth_name"].upper()
        canonical.append(c)
    data = "".join(json.dumps(c) + "\n" for c in canonical).encode()
    assert glv.guard.exports.identify(Actor.operator(), data)["export_id"] is None


def test_identify_from_row_ids_or_decoys_alone(glv: Labvault, tenant_id: str) -> None:
    import_people(glv, tenant_id, 50)
    key = x25519.Identity.generate()
    res = _export(glv, tenant_id, key.to_public(), ["nir", "blood_group"])
    rows = _rows(res["file"], key)
    only_ids = "".join(json.dumps({"row_id": r["row_id"]}) + "\n" for r in rows[:2]).encode()
    assert glv.guard.exports.identify(Actor.operator(), only_ids)["export_id"] == res["export_id"]
    decoy = next(r for r in rows if is_canary_nir(r["nir"]))
    one = json.dumps({"nir": decoy["nir"].replace(" ", "")}).encode() + b"\n"
    found = glv.guard.exports.identify(Actor.operator(), one)
    assert found["export_id"] == res["export_id"] and found["evidence"]["decoys"] == 1


def test_identify_counts_decoy_rows_not_their_identifiers(glv: Labvault,
                                                           tenant_id: str) -> None:
    """QA (DPO, breach): one decoy row with its NIR, e-mail and phone was reported as
    "decoys": 3 in the evidence (and in breach triage's attribution)."""
    import_people(glv, tenant_id, 50)
    key = x25519.Identity.generate()
    res = _export(glv, tenant_id, key.to_public(), ["nir", "email", "phone"])
    decoys = [r for r in _rows(res["file"], key) if is_canary_nir(r["nir"])]
    one = (json.dumps({k: decoys[0][k] for k in ("nir", "email", "phone")}) + "\n").encode()
    assert glv.guard.exports.identify(Actor.operator(), one)["evidence"]["decoys"] == 1
    both = "".join(json.dumps(d) + "\n" for d in decoys[:2]).encode()
    assert glv.guard.exports.identify(Actor.operator(), both)["evidence"]["decoys"] == 2


def test_staff_cannot_identify_other_labs(glv: Labvault, tenant_id: str) -> None:
    import_people(glv, tenant_id, 3)
    key = x25519.Identity.generate()
    _export(glv, tenant_id, key.to_public(), ["nir"])
    with pytest.raises(AccessDenied):
        glv.guard.exports.identify(staff(tenant_id, role="reception"), b'{"nir": "x"}\n')
    other = Actor(kind="staff", id="acct_dpo_b", tenant_id="lab_other", roles=frozenset({"dpo"}))
    found = glv.guard.exports.identify(other, b'{"nir": "x"}\n')      # sees no other lab's
    assert found["export_id"] is None and found["candidates"] == []
    assert glv.guard.exports.list(other) == []


def test_the_export_file_is_on_disk_by_name_before_its_manifest(
        glv: Labvault, tenant_id: str, events: Events) -> None:
    import_people(glv, tenant_id, 3)
    res = _export(glv, tenant_id, x25519.Identity.generate().to_public(), ["birth_name"])
    assert durable(events, Path(res["file"]))


def _as_csv(rows: list[dict[str, Any]], delimiter: str) -> str:
    cols = ["birth_name", "nir", "email", "phone", "birth_date"]     # no row_id
    out = io.StringIO()
    w = csv.writer(out, delimiter=delimiter)
    w.writerow(cols)
    for r in rows:
        w.writerow([r.get(c) for c in cols])
    return out.getvalue()


def test_identify_reads_csv_as_french_excel_writes_it(glv: Labvault, tenant_id: str) -> None:
    """QA report item 3: a semicolon-separated leak (French Excel's default) was read as
    one column and attributed to nobody; a byte-order mark stayed glued to the header."""
    import_people(glv, tenant_id, 20)
    key = x25519.Identity.generate()
    res = _export(glv, tenant_id, key.to_public(),
                  ["birth_name", "first_names", "birth_date", "nir", "phone", "email"])
    rows = _rows(res["file"], key)
    leaks = {
        "comma": _as_csv(rows, ",").encode(),
        "semicolon": _as_csv(rows, ";").encode(),
        "semicolon, BOM": _as_csv(rows, ";").encode("utf-8-sig"),
        "semicolon, cp1252": _as_csv(rows, ";").encode("cp1252", errors="replace"),
        "tab, UTF-16": _as_csv(rows, "\t").encode("utf-16"),
        "pipe": _as_csv(rows, "|").encode(),
    }
    for name, data in leaks.items():
        found = glv.guard.exports.identify(Actor.operator(), data)
        assert found["export_id"] == res["export_id"], name
        assert found["rows"] == len(rows), name


def test_parse_leak_decodes_strictly() -> None:
    from labvault.breach.readers import DumpError
    from labvault.services.exports import parse_leak
    rows, _ = parse_leak("\ufeffnom;nir\nLefèvre;1\n".encode("utf-8"))
    assert rows == [{"nom": "Lefèvre", "nir": "1"}]
    rows, _ = parse_leak("nom;nir\nLefèvre;1\n".encode("cp1252"))
    assert rows == [{"nom": "Lefèvre", "nir": "1"}]                # not "Lef\ufffdvre"
    mixed = b"nom;nir\n" + b"Martin;1\n" * 10_000 + "Lefèvre;2\n".encode("cp1252")
    with pytest.raises(DumpError, match="is not utf-8"):            # UTF-8 head, cp1252 tail
        parse_leak(mixed)


def test_identify_a_retyped_leak_with_renamed_columns(glv: Labvault, tenant_id: str) -> None:
    """QA (DPO, breach): a leak re-typed by its seller (columns NIR, NOM, PRENOM,
    DATE_NAISS, TEL, MAIL; ';'; cp1252) was attributed to no export — not even by the
    decoy row it carried — so breach triage named no source."""
    import_people(glv, tenant_id, 40)
    key = x25519.Identity.generate()
    res = _export(glv, tenant_id, key.to_public(),
                  ["birth_name", "first_names", "birth_date", "nir", "phone", "email"])
    rows = _rows(res["file"], key)
    out = io.StringIO()
    w = csv.writer(out, delimiter=";")
    w.writerow(["NIR", "NOM", "PRENOM", "DATE_NAISS", "TEL", "MAIL"])
    for r in rows[::3]:
        w.writerow([r["nir"], r["birth_name"], r["first_names"][0], r["birth_date"],
                    r["phone"], r["email"]])
    found = glv.guard.exports.identify(Actor.operator(), out.getvalue().encode("cp1252"))
    assert found["export_id"] == res["export_id"]
    assert found["evidence"]["p_value"] < 1e-12
    decoy = next(r for r in rows if is_canary_nir(r["nir"]))
    one = f"Numéro sécu;Nom\n{decoy['nir']};{decoy['birth_name']}\n".encode()
    assert glv.guard.exports.identify(Actor.operator(), one)["export_id"] == res["export_id"]
