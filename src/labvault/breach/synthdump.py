"""Synthetic leaked files with known ground truth (tests, benchmark, ``labvault demo breach``).

FEBRL-style corruption (Christen 2005) of synthetic patients: typing errors in names
(insertion, deletion, substitution, transposition), first and last names swapped,
missing fields, phones and dates rewritten in other formats, identifiers mistyped —
plus rows of people who are nobody's patient. Never a real person: patients come
from ``labvault.synthetic.people``; strangers are born "abroad" under an INSEE code
no patient has, so their NIRs cannot collide with a patient's.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from labvault.synthetic import make_nir, people

HEADERS_FR = ("nom", "prenom", "date_naissance", "sexe", "nir", "adresse", "code_postal",
              "ville", "telephone", "email", "groupe_sanguin", "mutuelle", "medecin",
              "notes", "mot_de_passe")
HEADERS_EN = ("last_name", "first_name", "birth_date", "sex", "ssn", "address", "zip", "city",
              "phone", "email", "blood_group", "insurer", "doctor", "notes", "password")
HEADERS_MEANINGLESS = tuple(f"col{i}" for i in range(1, 16))
NOTES = ("Patient VIH+ sous traitement antirétroviral", "Suivi cancer du sein, chimiothérapie",
         "Grossesse 12 SA, bilan prénatal", "Diabète de type 1, insuline",
         "Mucoviscidose - suivi génétique", "Hépatite C traitée", "", "", "", "")
STRANGER_INSEE = "99213"      # an INSEE "born abroad" code the patient generator never uses
ALPHABET = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class Truth:
    """Ground truth of one dump row."""

    tenant_id: str | None
    patient_id: str | None
    exact: bool                    # an exact identifier survived the corruption
    corruptions: list[str] = field(default_factory=list)


@dataclass
class Corruption:
    """Probabilities of the default profile (the issue's 'default corruption')."""

    hard: float = 0.5              # identifiers (NIR, e-mail, phone) destroyed: fuzzy only
    name_typo: float = 0.3
    swap: float = 0.1
    dob_reformat: float = 0.6
    dob_typo: float = 0.05
    dob_missing: float = 0.03
    phone_reformat: float = 0.6
    postcode_missing: float = 0.1
    upper: float = 0.3


def typo(s: str, rng: random.Random) -> str:
    if len(s) < 2:
        return s + rng.choice(ALPHABET)
    i = rng.randrange(len(s))
    op = rng.randrange(4)
    if op == 0:
        return s[:i] + rng.choice(ALPHABET) + s[i:]
    if op == 1:
        return s[:i] + s[i + 1:]
    if op == 2:
        return s[:i] + rng.choice(ALPHABET) + s[i + 1:]
    j = min(i + 1, len(s) - 1)
    lst = list(s)
    lst[i], lst[j] = lst[j], lst[i]
    return "".join(lst)


def _phone_formats(e164: str, rng: random.Random) -> str:
    d = "0" + e164[3:]
    return rng.choice([d, " ".join(d[i:i + 2] for i in range(0, 10, 2)),
                       ".".join(d[i:i + 2] for i in range(0, 10, 2)), e164,
                       "+33 " + e164[3:4] + " " + " ".join(e164[4 + i:6 + i] for i in range(0, 8, 2)),
                       "0033" + e164[3:]])


def _date_formats(d: date, rng: random.Random) -> str:
    return rng.choice([d.strftime("%d/%m/%Y"), d.strftime("%Y%m%d"), d.strftime("%d-%m-%Y"),
                       d.strftime("%d.%m.%Y"), d.isoformat()])


def to_e164(phone: str) -> str:
    digits = "".join(c for c in phone if c.isdigit())
    return "+33" + digits[-9:]


def row_of(p: Mapping[str, Any], rng: random.Random, notes: bool = True) -> dict[str, str]:
    addr = p.get("address") or {}
    return {
        "nom": p["birth_name"], "prenom": p["first_names"][0], "date_naissance": p["birth_date"],
        "sexe": p["sex"], "nir": p.get("nir") or "", "adresse": addr.get("line", ""),
        "code_postal": addr.get("postal_code", ""), "ville": addr.get("city", ""),
        "telephone": p.get("phone") or "", "email": p.get("email") or "",
        "groupe_sanguin": p.get("blood_group") or "",
        "mutuelle": (p.get("coverage") or {}).get("amo", ""),
        "medecin": (p.get("prescriber") or {}).get("name", ""),
        "notes": rng.choice(NOTES) if notes else "",
        "mot_de_passe": rng.choice(["", "", "soleil59", "Azerty123!", "motdepasse",
                                    "$2b$12$" + "".join(rng.choice(ALPHABET) for _ in range(53))]),
    }


def corrupt(row: dict[str, str], rng: random.Random, c: Corruption) -> tuple[dict[str, str],
                                                                               list[str]]:
    r = dict(row)
    done: list[str] = []
    bd = date.fromisoformat(r["date_naissance"])
    if rng.random() < c.hard:
        for f in ("nir", "email", "telephone"):
            if rng.random() < 0.5:
                r[f] = ""
            elif f == "nir":
                s = r[f]
                i = rng.randrange(len(s))
                if s[i].isdigit():
                    r[f] = s[:i] + str((int(s[i]) + 1 + rng.randrange(8)) % 10) + s[i + 1:]
            elif f == "email":
                local, _, dom = r[f].partition("@")
                r[f] = typo(local, rng) + "@" + dom
            else:
                # one digit mistyped: the mobile prefix 06 -> 07 (a number no synthetic
                # patient has, so the typo cannot land on another patient's phone)
                digits = "0" + "".join(ch for ch in r[f] if ch.isdigit())[-9:]
                r[f] = "07" + digits[2:]
        done.append("identifiers")
        # a hard row also loses its exact name + birth date pair
        choice = rng.random()
        if choice < 0.5:
            r["nom"] = typo(r["nom"], rng)
            done.append("typo_last")
        elif choice < 0.8:
            r["prenom"] = typo(r["prenom"], rng)
            done.append("typo_first")
        else:
            bd = _dob_typo(bd, rng)
            done.append("dob_typo")
    if rng.random() < c.name_typo:
        key = rng.choice(["nom", "prenom"])
        r[key] = typo(r[key], rng)
        done.append("typo_" + ("last" if key == "nom" else "first"))
    if rng.random() < c.swap:
        r["nom"], r["prenom"] = r["prenom"], r["nom"]
        done.append("swap")
    if rng.random() < c.upper:
        r["nom"] = r["nom"].upper()
    if rng.random() < c.dob_typo and "dob_typo" not in done:
        bd = _dob_typo(bd, rng)
        done.append("dob_typo")
    r["date_naissance"] = _date_formats(bd, rng) if rng.random() < c.dob_reformat else bd.isoformat()
    if rng.random() < c.dob_missing and "dob_typo" not in done:
        r["date_naissance"] = ""
        done.append("dob_missing")
    if r["telephone"] and rng.random() < c.phone_reformat and "identifiers" not in done:
        r["telephone"] = _phone_formats(to_e164(r["telephone"]), rng)
    if rng.random() < c.postcode_missing:
        r["code_postal"] = ""
        done.append("postcode_missing")
    return r, done


def _dob_typo(bd: date, rng: random.Random) -> date:
    for _ in range(10):
        try:
            if rng.random() < 0.5:
                return bd.replace(day=rng.randint(1, 28))
            return bd.replace(month=rng.randint(1, 12))
        except ValueError:
            continue
    return bd


def strangers(n: int, seed: int = 99) -> Iterator[dict[str, Any]]:
    for p in people(n, seed=seed, start=50_000_000, prefix="EXT"):
        bd = date.fromisoformat(p["birth_date"])
        p["birth_place_insee"] = STRANGER_INSEE
        p["nir"] = make_nir(p["sex"], bd, STRANGER_INSEE, int(p["external_id"][-3:]) % 999 + 1)
        yield p


@dataclass
class Dump:
    rows: list[dict[str, str]]
    truth: list[Truth]


def make_dump(patients: Sequence[tuple[str, str, Mapping[str, Any]]], n_strangers: int,
              seed: int = 1, corruption: Corruption | None = None) -> Dump:
    """``patients``: (tenant id, patient id, import-format record). Rows are shuffled."""
    from labvault.breach.columns import normalise_email, normalise_nir, normalise_phone, parse_date
    from labvault.crypto.blind_index import fold_name

    rng = random.Random(seed)
    c = corruption or Corruption()
    items: list[tuple[dict[str, str], Truth]] = []
    for tenant_id, pid, p in patients:
        orig = row_of(p, rng)
        r, done = corrupt(orig, rng, c)
        bd = parse_date(r["date_naissance"]) if r["date_naissance"] else None
        names = {(fold_name(r["nom"]), fold_name(r["prenom"])),
                 (fold_name(r["prenom"]), fold_name(r["nom"]))}
        exact = (bool(r["nir"]) and normalise_nir(r["nir"]) == orig["nir"]) \
            or (bool(r["email"]) and normalise_email(r["email"]) == orig["email"].lower()) \
            or (bool(r["telephone"]) and normalise_phone(r["telephone"]) == to_e164(orig["telephone"])) \
            or (bd is not None and bd.isoformat() == orig["date_naissance"]
                and (fold_name(orig["nom"]), fold_name(orig["prenom"])) in names)
        items.append((r, Truth(tenant_id, pid, exact, done)))
    for p in strangers(n_strangers, seed=seed + 1000):
        items.append((corrupt(row_of(p, rng), rng, Corruption(hard=0.0))[0],
                      Truth(None, None, False, ["stranger"])))
    rng.shuffle(items)
    return Dump([r for r, _ in items], [t for _, t in items])


# -- writers ---------------------------------------------------------------------------------
def write_csv(path: Path, rows: Iterable[Mapping[str, str]], *, delimiter: str = ",",
              encoding: str = "utf-8", headers: Sequence[str] | None = HEADERS_FR) -> None:
    with path.open("w", newline="", encoding=encoding, errors="replace") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        if headers:
            w.writerow(headers)
        for r in rows:
            w.writerow([r[h] for h in HEADERS_FR])


def write_json(path: Path, rows: Iterable[Mapping[str, str]], ndjson: bool = False) -> None:
    with path.open("w", encoding="utf-8") as fh:
        if ndjson:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            fh.write("[\n")
            for i, r in enumerate(rows):
                fh.write(("," if i else "") + json.dumps(r, ensure_ascii=False) + "\n")
            fh.write("]\n")


def _sql_str(v: str, dialect: str) -> str:
    if dialect == "mysql":
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    return "'" + v.replace("'", "''") + "'"


def write_sql(path: Path, rows: Iterable[Mapping[str, str]], dialect: str = "mysql",
              per_insert: int = 50) -> None:
    q = "`" if dialect == "mysql" else '"'
    cols = ", ".join(f"{q}{h}{q}" for h in HEADERS_FR)
    buf = io.StringIO()
    if dialect == "mysql":
        buf.write("-- MySQL dump 10.13\n/*!40101 SET NAMES utf8mb4 */;\n")
        buf.write(f"CREATE TABLE {q}patients{q} (\n  {q}id{q} int NOT NULL,\n" + "".join(
            f"  {q}{h}{q} varchar(255),\n" for h in HEADERS_FR) + f"  PRIMARY KEY ({q}id{q})\n);\n")
    else:
        buf.write("--\n-- PostgreSQL database dump\n--\nSET standard_conforming_strings = on;\n")
    batch: list[str] = []

    def flush() -> None:
        if batch:
            buf.write(f"INSERT INTO {q}patients{q} ({cols}) VALUES\n" + ",\n".join(batch) + ";\n")
            batch.clear()

    for r in rows:
        batch.append("(" + ", ".join(_sql_str(r[h], dialect) if r[h] else "NULL"
                                     for h in HEADERS_FR) + ")")
        if len(batch) >= per_insert:
            flush()
    flush()
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_xlsx(path: Path, rows: Iterable[Mapping[str, str]],
               headers: Sequence[str] | None = HEADERS_FR) -> None:
    import openpyxl
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("export")
    if headers:
        ws.append(list(headers))
    for r in rows:
        ws.append([r[h] for h in HEADERS_FR])
    wb.save(str(path))
