"""Baselines for bench/breach.py, on the same store and dump, in PLAINTEXT (the
comparison labvault's design does not need): clkhash + anonlink (CLK encodings, Dice
similarity, greedy solving) and Splink (Fellegi-Sunter on DuckDB).

Runs in its own virtualenv (these tools are not labvault dependencies):

    python3 -m venv /tmp/bl && /tmp/bl/bin/pip install clkhash anonlink splink
    /tmp/bl/bin/python bench/breach_baselines.py WORKDIR

Prints one JSON line per tool: wall time (encoding/training included) and quality
against the same ground truth as labvault's triage. Blocking for anonlink uses the
same coarse keys as labvault (birth date; year + Soundex of each name; postcode +
Soundex of the first name), so the comparison is on matching, not on blocking.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
import unicodedata
from datetime import date
from pathlib import Path
from typing import Any


def fold(s: str) -> str:
    s = unicodedata.normalize("NFKD", s or "")
    return re.sub(r"[^A-Z]", "", "".join(c for c in s if not unicodedata.combining(c)).upper())


def pdate(v: str) -> str:
    v = (v or "").strip()
    for rx, order in ((r"^(\d{4})-(\d{2})-(\d{2})$", "ymd"), (r"^(\d{2})[/.-](\d{2})[/.-](\d{4})$",
                                                              "dmy"), (r"^(\d{4})(\d{2})(\d{2})$",
                                                                       "ymd")):
        m = re.match(rx, v)
        if m:
            a, b, c = (int(x) for x in m.groups())
            y, mo, d = (a, b, c) if order == "ymd" else (c, b, a)
            try:
                return date(y, mo, d).isoformat()
            except ValueError:
                return ""
    return ""


_SDX = str.maketrans("AEIOUYHWBFPVCGJKQSXZDTLMNR", "000000..111122222222334556")


def soundex(n: str) -> str:
    if not n:
        return ""
    codes = n.translate(_SDX)
    out, last = [n[0]], codes[0]
    for c in codes[1:]:
        if c == ".":
            continue
        if c != "0" and c != last:
            out.append(c)
        last = c
    return ("".join(out) + "000")[:4]


def load(work: Path) -> tuple[list[dict[str, str]], list[dict[str, str]], list[Any]]:
    store = []
    for line in (work / "store-plain.ndjson").open():
        p = json.loads(line)
        store.append({"id": p["id"], "last": fold(p["birth_name"]),
                      "first": fold(p["first_names"][0]), "dob": p["birth_date"],
                      "pc": (p.get("address") or {}).get("postal_code", ""),
                      "email": (p.get("email") or "").lower(),
                      "phone": re.sub(r"\D", "", p.get("phone") or "")[-9:]})
    dump = []
    with (work / "dump.csv").open(encoding="utf-8") as fh:
        for i, r in enumerate(csv.DictReader(fh, delimiter=";")):
            dump.append({"id": str(i + 1), "last": fold(r["nom"]), "first": fold(r["prenom"]),
                         "dob": pdate(r["date_naissance"]), "pc": r["code_postal"],
                         "email": r["email"].lower(),
                         "phone": re.sub(r"\D", "", r["telephone"])[-9:]})
    truth = [json.loads(line) for line in (work / "truth.ndjson").open()]
    return store, dump, truth


def quality(pred: dict[int, str], truth: list[Any]) -> dict[str, float]:
    correct = sum(1 for r, p in pred.items() if truth[r - 1][0] == p)
    pos = sum(1 for t in truth if t[0])
    return {"precision": round(correct / max(1, len(pred)), 4),
            "recall": round(correct / max(1, pos), 4)}


def blocks(r: dict[str, str]) -> list[str]:
    out = []
    if r["dob"]:
        out += ["d" + r["dob"], "y" + r["dob"][:4] + soundex(r["last"]),
                "f" + r["dob"][:4] + soundex(r["first"])]
    if r["pc"] and r["first"]:
        out.append("p" + r["pc"] + soundex(r["first"]))
    return out


def run_anonlink(store: list[dict[str, str]], dump: list[dict[str, str]],
                 truth: list[Any]) -> dict[str, Any]:
    import anonlink
    from clkhash import clk
    from clkhash.schema import from_json_dict

    feats = []
    for name, bits in (("last", 20), ("first", 20), ("dob", 20), ("pc", 10), ("email", 10),
                       ("phone", 10)):
        feats.append({"identifier": name, "format": {"type": "string", "encoding": "utf-8"},
                      "hashing": {"comparison": {"type": "ngram", "n": 2},
                                  "strategy": {"bitsPerToken": bits},
                                  "hash": {"type": "doubleHash"}}})
    schema = from_json_dict({"version": 3, "clkConfig": {
        "l": 1024, "kdf": {"type": "HKDF", "hash": "SHA256", "info": "", "keySize": 64,
                           "salt": "SCbL2zHNnmsckfzchsNkZY9XoHk96P/G5nUBrM7ybymlEFsMV6PAeDZCNp3r"
                                   "fNUPCtLDMOGQHG4pCQpfhiHCyA=="}},
        "features": feats})
    cols = ["last", "first", "dob", "pc", "email", "phone"]
    t0 = time.perf_counter()
    a = clk.generate_clks([[r[c] for c in cols] for r in store], schema, "secret",
                          validate=False)
    b = clk.generate_clks([[r[c] for c in cols] for r in dump], schema, "secret",
                          validate=False)
    t_enc = time.perf_counter() - t0
    blk = [[blocks(r) for r in store], [blocks(r) for r in dump]]

    def blocking_f(ds: int, i: int, _h: Any) -> list[str]:
        return blk[ds][i]

    cands = anonlink.candidate_generation.find_candidate_pairs(
        [a, b], anonlink.similarities.dice_coefficient_accelerated, 0.85,
        blocking_f=blocking_f)
    groups = anonlink.solving.greedy_solve(cands)
    pred: dict[int, str] = {}
    for g in groups:
        recs = dict(g)
        if 0 in recs and 1 in recs:
            pred[recs[1] + 1] = store[recs[0]]["id"]
    wall = time.perf_counter() - t0
    return {"tool": "clkhash+anonlink (plaintext)", "wall_s": round(wall, 1),
            "encode_s": round(t_enc, 1), **quality(pred, truth)}


def run_splink(store: list[dict[str, str]], dump: list[dict[str, str]],
               truth: list[Any]) -> dict[str, Any]:
    import pandas as pd
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    t0 = time.perf_counter()
    left = pd.DataFrame(store).rename(columns={"id": "unique_id"})
    right = pd.DataFrame(dump).rename(columns={"id": "unique_id"})
    for df in (left, right):
        df["sl"] = df["last"].map(soundex)
        df["sf"] = df["first"].map(soundex)
        df["year"] = df["dob"].str[:4]
        df.replace("", None, inplace=True)
    settings = SettingsCreator(
        link_type="link_only",
        comparisons=[cl.JaroWinklerAtThresholds("last"), cl.JaroWinklerAtThresholds("first"),
                     cl.DateOfBirthComparison("dob", input_is_string=True),
                     cl.ExactMatch("pc"), cl.ExactMatch("email"), cl.ExactMatch("phone")],
        blocking_rules_to_generate_predictions=[block_on("dob"), block_on("year", "sl"),
                                                block_on("year", "sf"), block_on("pc", "sf")])
    db = DuckDBAPI()
    linker = Linker([db.register(left, dataset_display_name="store"),
                     db.register(right, dataset_display_name="dump")], settings)
    linker.training.estimate_u_using_random_sampling(max_pairs=2e6)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("dob"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("year", "sl"))
    df = linker.inference.predict(threshold_match_probability=0.9).as_pandas_dataframe()
    pred: dict[int, str] = {}
    best: dict[int, float] = {}
    for _, r in df.iterrows():
        lid, rid = (r["unique_id_l"], r["unique_id_r"]) if r["source_dataset_l"] == \
            "store" else (r["unique_id_r"], r["unique_id_l"])
        n = int(rid)
        if r["match_probability"] > best.get(n, 0):
            best[n] = r["match_probability"]
            pred[n] = lid
    wall = time.perf_counter() - t0
    return {"tool": "splink (plaintext)", "wall_s": round(wall, 1), **quality(pred, truth)}


def main() -> None:
    work = Path(sys.argv[1])
    store, dump, truth = load(work)
    for fn in (run_anonlink, run_splink):
        try:
            print(json.dumps(fn(store, dump, truth)), flush=True)
        except Exception as exc:  # report, continue with the next tool
            print(json.dumps({"tool": fn.__name__, "error": f"{type(exc).__name__}: {exc}"[:500]}),
                  flush=True)


if __name__ == "__main__":
    main()
