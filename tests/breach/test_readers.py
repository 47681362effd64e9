"""Dump readers: formats, encodings, and hostile files (typed errors, never execution)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.breach.readers import DumpError, detect_encoding, open_dump, parse_insert


def rows_of(path: Path, fmt: str = "auto") -> tuple[list[str] | None, list[list[str]]]:
    t = open_dump(path, fmt)
    return t.header, list(t.rows)


def test_csv_encodings_and_delimiters(tmp_path: Path) -> None:
    text = "nom;prénom;ville\nLefèvre;Zoé;Saint-Étienne\nŒuvray;Noël;Arras\n"
    for enc in ("utf-8", "cp1252", "latin-1", "utf-8-sig"):
        p = tmp_path / f"{enc}.csv"
        p.write_bytes(text.replace("Œ", "Oe" if enc == "latin-1" else "Œ").encode(enc))
        header, rows = rows_of(p)
        assert header == ["nom", "prénom", "ville"], enc
        assert rows[0] == ["Lefèvre", "Zoé", "Saint-Étienne"], enc
    assert detect_encoding("€uro".encode("cp1252")) == "cp1252"
    assert detect_encoding(b"caf\xe9 \x81") == "latin-1"


def test_sql_dialects_and_odd_quoting(tmp_path: Path) -> None:
    p = tmp_path / "m.sql"
    p.write_text(
        "-- MySQL dump\n/*!40101 SET NAMES utf8 */;\n# comment ; with semicolon\n"
        "INSERT INTO `patients` (`nom`, `note`) VALUES ('O\\'Brien', 'a;b -- not a comment'),"
        "('D''Arc', 'line\\nbreak'), ('x', NULL);\n")
    header, rows = rows_of(p)
    assert header == ["nom", "note"]
    assert rows == [["O'Brien", "a;b -- not a comment"], ["D'Arc", "line\nbreak"], ["x", ""]]
    p = tmp_path / "p.sql"
    p.write_text("--\n-- PostgreSQL database dump\n--\nSET standard_conforming_strings = on;\n"
                 "INSERT INTO public.patients (nom, chemin, e) VALUES ('C:\\dir', $$it's$$, "
                 "E'tab\\there');\n"
                 "COPY public.t (a, b) FROM stdin;\nx\t\\N\n\\.\n")
    header, rows = rows_of(p)
    assert rows[0] == ["C:\\dir", "it's", "tab\there"]
    assert rows[1] == ["x", ""]


def test_sql_is_never_executed(tmp_path: Path) -> None:
    p = tmp_path / "evil.sql"
    p.write_text("INSERT INTO t VALUES ('x'); DROP TABLE patients; "
                 "INSERT INTO t VALUES ((SELECT pg_sleep(10)));\n")
    with pytest.raises(DumpError, match="only literals"):
        rows_of(p)
    with pytest.raises(ValueError):
        parse_insert("INSERT INTO t SELECT * FROM u")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
                min_size=1, max_size=5))
def test_sql_string_roundtrip(values: list[str]) -> None:
    """Any string quoted MySQL-style or standard-style parses back to itself."""
    def my(v: str) -> str:
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def std(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"
    for quote, esc in ((my, True), (std, False)):
        stmt = "INSERT INTO t VALUES (" + ", ".join(quote(v) for v in values) + ")"  # noqa: S608
        _, _, rows = parse_insert(stmt, esc)
        assert rows == [values]


def test_json_and_ndjson(tmp_path: Path) -> None:
    objs = [{"nom": "A", "adresse": {"cp": "59000"}}, {"nom": "B", "x": [1, 2]}]
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"patients": objs}))
    header, rows = rows_of(p)
    assert header == ["nom", "adresse.cp", "x"] and rows[1] == ["B", "", "1 2"]
    p = tmp_path / "a.ndjson"
    p.write_text("\n".join(json.dumps(o) for o in objs) + "\n")
    assert rows_of(p)[1][0] == ["A", "59000", ""]


@pytest.mark.parametrize("content,fmt,message", [
    (b"", "auto", "empty"),
    (b"[{\"a\": 1}, {\"a\": ", "json", "invalid JSON"),
    (b"{\"a\": 1}\nnot json\n", "ndjson", "not JSON"),
    (b"a,b\n\"" + b"x" * (2 << 20) + b"\"\n", "csv", "CSV line"),
    (b"{\"a\": \"" + b"x" * (2 << 20) + b"\"}\n", "ndjson", "longer than"),
    (b"INSERT INTO t VALUES ('unterminated);\n", "sql", "quoted string"),
    (b"\xd0\xcf\x11\xe0" + b"\0" * 100, "auto", "legacy binary"),
    # QA (DPO): binary garbage was read as a one-row CSV and scored "unintelligible"
    (b"\x00\x01\x02garbage\xff\xfe", "auto", "NUL bytes"),
    ("nom;prenom\nMartin;Jeanne\n".encode("utf-16-le"), "auto", "UTF-16 without"),
])
def test_hostile_files_give_typed_errors(tmp_path: Path, content: bytes, fmt: str,
                                         message: str) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(content)
    with pytest.raises(DumpError, match=message):
        rows_of(p, fmt)


def test_mixed_encoding_after_sample(tmp_path: Path) -> None:
    p = tmp_path / "mixed.csv"
    p.write_bytes(b"nom,ville\n" + b"Dupont,Lille\n" * 20000 + b"Lef\xe8vre,Arras\n")
    with pytest.raises(DumpError, match="not utf-8"):
        rows_of(p)


def _xlsx(tmp_path: Path, name: str, members: dict[str, bytes]) -> Path:
    p = tmp_path / name
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in members.items():
            z.writestr(k, v)
    return p


def test_zip_bomb_and_macros_refused(tmp_path: Path) -> None:
    bomb = _xlsx(tmp_path, "bomb.xlsx", {"[Content_Types].xml": b"<x/>",
                                         "xl/worksheets/sheet1.xml": b"\0" * (200 << 20)})
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(DumpError, match="zip bomb"):
        rows_of(bomb)
    macro = _xlsx(tmp_path, "m.xlsx", {"[Content_Types].xml": b"<x/>",
                                       "xl/vbaProject.bin": b"\0" * 10})
    with pytest.raises(DumpError, match="macros"):
        rows_of(macro)
    with pytest.raises(DumpError, match="macros"):
        rows_of(_xlsx(tmp_path, "m.xlsm", {"[Content_Types].xml": b"<x/>"}))
    fake = tmp_path / "fake.xlsx"
    fake.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DumpError, match="not a valid"):
        rows_of(fake)


def test_formula_cells_are_read_as_text(tmp_path: Path) -> None:
    import openpyxl
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["nom", "x"])
    ws.append(["Dupont", "=cmd|' /C calc'!A0"])
    p = tmp_path / "f.xlsx"
    wb.save(p)
    _header, rows = rows_of(p)
    assert rows == [["Dupont", "=cmd|' /C calc'!A0"]]

