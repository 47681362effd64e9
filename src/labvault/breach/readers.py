"""Reading leaked files: CSV/TSV (any delimiter, UTF-8 / cp1252 / latin-1, with or without
a header), JSON arrays, NDJSON, SQL dumps (INSERT statements, MySQL and PostgreSQL
dialects) and Excel .xlsx.

Everything streams: rows are yielded one at a time from files read in bounded chunks
(a JSON array is scanned value by value with ``json.JSONDecoder.raw_decode``; a SQL
dump is tokenised, never evaluated). Limits stop hostile files with a typed
``DumpError`` that says what was wrong: a line or value longer than ``MAX_FIELD``,
an .xlsx whose declared uncompressed size or compression ratio is a zip bomb, an
.xlsm/.xlsb with macros, a file in no supported encoding. Nothing read from a dump is
ever executed or evaluated.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from labvault.errors import UserError
from labvault.textfiles import CSV_DELIMITERS, most_common_delimiter

FORMATS = ("auto", "csv", "json", "ndjson", "sql", "xlsx")
MAX_FIELD = 1 << 20            # 1 MiB: longest cell / line / SQL statement we accept
CHUNK = 1 << 16
XLSX_MAX_UNCOMPRESSED = 512 << 20
XLSX_MAX_RATIO = 100
XLSX_MAX_MEMBERS = 10_000
SNIFF_BYTES = 64 << 10


class DumpError(UserError):
    """A leaked file could not be read; the message says why, the hint what to do."""

    code = "unreadable-dump"
    http_status = 422


@dataclass
class Table:
    """A dump as rows of strings. ``header`` is None when the file has none."""

    path: str
    format: str
    encoding: str | None
    header: list[str] | None
    rows: Iterator[list[str]]
    notes: list[str] = field(default_factory=list)


Progress = Callable[[int], None]


# -- encoding ------------------------------------------------------------------------------
def detect_encoding(sample: bytes) -> str:
    """UTF-8 (with or without BOM) if it decodes, else cp1252 if it decodes, else latin-1.

    cp1252 is tried before latin-1 because French exports from Windows use its € and
    typographic quotes; bytes cp1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D)
    mean latin-1. A truncated multi-byte sequence at the end of the sample is ignored.
    """
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        sample.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def decode_text(data: bytes, name: str) -> str:
    """A whole leaked file as text, in the encoding ``detect_encoding`` finds in its head
    (a UTF-8 or UTF-16 byte-order mark is removed), decoded strictly: bytes that are not
    that encoding are an error that says so, never replacement characters (a name turned
    into "Lef\ufffdvre" matches nobody)."""
    enc = detect_encoding(data[:SNIFF_BYTES])
    try:
        return data.decode(enc)
    except UnicodeDecodeError as exc:
        raise DumpError(f"{name}: byte {exc.start} is not {enc} ({exc.reason})",
                        "the file mixes encodings or is truncated; convert it to UTF-8 "
                        "(iconv -f <its encoding> -t UTF-8)") from None


def _text(fh: IO[bytes], encoding: str) -> IO[str]:
    return io.TextIOWrapper(fh, encoding=encoding, errors="strict", newline="")


# -- format detection -------------------------------------------------------------------------
def detect_format(path: Path, head: bytes) -> str:
    suffix = path.suffix.lower()
    if head.startswith(b"PK\x03\x04"):
        if suffix in (".xlsm", ".xltm", ".xlsb"):
            raise DumpError(f"{path.name}: Excel file with macros ({suffix}) refused",
                            "save it as .xlsx (no macros) or CSV and triage that copy")
        return "xlsx"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise DumpError(f"{path.name}: legacy binary Excel/OLE file (.xls) is not supported",
                        "convert it to .xlsx or CSV (e.g. libreoffice --convert-to csv)")
    text = head.lstrip(codecs.BOM_UTF8).lstrip()
    if suffix in (".ndjson", ".jsonl"):
        return "ndjson"
    if suffix == ".sql" or re.match(rb"(?is)(--|/\*|set |insert |create |begin|lock |drop |"
                                    rb"use |start transaction)", text[:200]):
        return "sql"
    if text[:1] == b"[":
        return "json"
    if text[:1] == b"{":
        first = text.split(b"\n", 1)[0].strip()
        try:
            obj = json.loads(first)
        except ValueError:
            return "json"
        wrapper = isinstance(obj, dict) and any(
            isinstance(v, list) and v and isinstance(v[0], dict) for v in obj.values())
        return "json" if wrapper else "ndjson"
    return "csv"


def open_dump(path: Path, fmt: str = "auto", progress: Progress | None = None) -> Table:
    """Open a dump for streaming. ``progress`` is called with bytes read."""
    if fmt not in FORMATS:
        raise DumpError(f"unknown format {fmt!r}", "use one of: " + ", ".join(FORMATS))
    if not path.is_file():
        raise DumpError(f"{path}: no such file", "check the path")
    with path.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if not head.strip():
        raise DumpError(f"{path.name}: the file is empty", "check that the download is complete")
    if fmt == "auto":
        fmt = detect_format(path, head)
    if fmt == "xlsx":
        return _xlsx(path)
    enc = detect_encoding(head)
    if b"\x00" in head and enc != "utf-16":
        # Text has no NUL: this is a binary file, or UTF-16 without its byte-order mark,
        # which would be read as one row of garbage scored "unintelligible".
        raise DumpError(f"{path.name}: NUL bytes — not a text dump (a binary file, or "
                        "UTF-16 without a byte-order mark)",
                        "convert it to UTF-8 (e.g. iconv -f UTF-16LE -t UTF-8), or export "
                        "it as CSV from the program that wrote it")
    if fmt == "csv":
        return _csv(path, head, enc, progress)
    if fmt in ("ndjson", "json"):
        objs = _ndjson(path, enc, progress) if fmt == "ndjson" else _json_array(path, enc, progress)
        rows = _json_rows(objs)
        header = next(rows, None)
        return Table(str(path), fmt, enc, header or None, rows, [f"encoding {enc}"])
    return _sql(path, head, enc, progress)


class _Counting(io.RawIOBase):
    """Wraps a binary file, reporting bytes read."""

    def __init__(self, fh: IO[bytes], progress: Progress | None) -> None:
        self._fh = fh
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._fh.read(len(b))
        n = len(data)
        b[:n] = data
        if self._progress and n:
            self._progress(n)
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _binary(path: Path, progress: Progress | None) -> IO[bytes]:
    return io.BufferedReader(_Counting(path.open("rb"), progress), CHUNK)


def _decode_error(path: Path, enc: str, exc: UnicodeDecodeError) -> DumpError:
    return DumpError(f"{path.name}: bytes that are not {enc} after the first "
                     f"{SNIFF_BYTES // 1024} KiB ({exc.reason})",
                     "the file mixes encodings; convert it (iconv) or pass it in parts")


# -- CSV ---------------------------------------------------------------------------------------
def _csv(path: Path, head: bytes, enc: str, progress: Progress | None) -> Table:
    sample = head.decode(enc, errors="ignore")
    lines = sample.splitlines()
    if len(lines) > 1:                 # drop a possibly truncated last line
        sample = "\n".join(lines[:-1]) + "\n"
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS + ":")
    except csv.Error:
        dialect = type("Sniffed", (csv.excel,), {"delimiter": most_common_delimiter(sample)})
    header_rows = list(csv.reader(io.StringIO(sample), dialect))
    has_header = _looks_like_header(header_rows)
    notes = [f"delimiter {dialect.delimiter!r}", f"encoding {enc}",
             "header row" if has_header else "no header row"]

    def rows() -> Iterator[list[str]]:
        csv.field_size_limit(MAX_FIELD)
        with _text(_binary(path, progress), enc) as text:
            reader = csv.reader(text, dialect)
            try:
                for n, row in enumerate(reader):
                    if n == 0 and has_header:
                        continue
                    if row and any(c.strip() for c in row):
                        yield row
            except UnicodeDecodeError as exc:
                raise _decode_error(path, enc, exc) from None
            except csv.Error as exc:
                raise DumpError(f"{path.name}: CSV line {reader.line_num}: {exc}",
                                f"fields are limited to {MAX_FIELD} bytes; check the quoting"
                                ) from None

    header = [h.strip() for h in header_rows[0]] if has_header and header_rows else None
    return Table(str(path), "csv", enc, header, rows(), notes)


_HEADERISH = re.compile(r"^[A-Za-zÀ-ÿ_][\w .\-/()#'À-ÿ]{0,60}$")


def _shape(v: str) -> str:
    """'Dupont' -> 'a', '12/05/1980' -> '9/9/9', 'col1' -> 'a9'."""
    out = re.sub(r"[^\W\d_]+", "a", v.strip())
    return re.sub(r"\d+", "9", out)


def _looks_like_header(rows: list[list[str]]) -> bool:
    """A first row of word-like cells (no e-mail, no number) whose shapes differ from the
    cells below in most columns ('nom', 'col3', 'Date de naissance' over data)."""
    if not rows:
        return False
    first = [c.strip() for c in rows[0]]
    if not any(first) or not all(_HEADERISH.match(c) for c in first if c):
        return False
    if any("@" in c or c.replace(" ", "").isdigit() for c in first):
        return False
    below = [r for r in rows[1:50] if r]
    if not below:
        return True
    differ = total = 0
    for i, c in enumerate(first):
        col = [r[i].strip() for r in below if i < len(r) and r[i].strip()]
        if not c or not col:
            continue
        total += 1
        if _shape(c) not in {_shape(v) for v in col} or (c == c.lower() and all(v != v.lower() for v in col)):
            differ += 1
    return total > 0 and differ * 2 >= total


# -- JSON / NDJSON ---------------------------------------------------------------------------------
def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return {k.rstrip("."): v for k, v in out.items()}
    if isinstance(obj, list):
        if all(not isinstance(v, dict | list) for v in obj):
            return {prefix: " ".join("" if v is None else str(v) for v in obj)}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix: "" if obj is None else str(obj)}


def _json_rows(objects: Iterator[Any]) -> Iterator[list[str]]:
    """Objects -> rows; the first row is the list of keys (a header) seen in the first
    500 objects, later unknown keys are appended to it (rows pad to the header)."""
    buffered: list[dict[str, str]] = []
    keys: dict[str, None] = {}
    it = iter(objects)
    for obj in it:
        flat = _flatten(obj) if isinstance(obj, dict | list) else {"value": str(obj)}
        buffered.append(flat)
        keys.update(dict.fromkeys(flat))
        if len(buffered) >= 500:
            break
    header = list(keys)
    yield header
    for flat in buffered:
        yield [flat.get(k, "") for k in header]
    for obj in it:
        flat = _flatten(obj) if isinstance(obj, dict | list) else {"value": str(obj)}
        yield [flat.get(k, "") for k in header]


def _ndjson(path: Path, enc: str, progress: Progress | None) -> Iterator[Any]:
    with _binary(path, progress) as fh:
        for n, raw in enumerate(_bounded_lines(fh, path), start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                yield json.loads(line.decode(enc))
            except UnicodeDecodeError as exc:
                raise _decode_error(path, enc, exc) from None
            except ValueError as exc:
                raise DumpError(f"{path.name}: line {n} is not JSON ({exc})",
                                "an NDJSON file holds one JSON value per line") from None


def _bounded_lines(fh: IO[bytes], path: Path) -> Iterator[bytes]:
    while True:
        line = fh.readline(MAX_FIELD + 1)
        if not line:
            return
        if len(line) > MAX_FIELD and not line.endswith(b"\n"):
            raise DumpError(f"{path.name}: a line is longer than {MAX_FIELD} bytes",
                            "this is not a record-per-line file, or it is corrupt")
        yield line


def _json_array(path: Path, enc: str, progress: Progress | None) -> Iterator[Any]:
    """Stream the elements of a top-level JSON array (or of the first array value of a
    top-level object, e.g. {"patients": [...]}) without loading the file."""
    decoder = json.JSONDecoder()
    with _text(_binary(path, progress), enc) as fh:
        buf = ""
        pos = 0
        eof = False

        def fill() -> None:
            nonlocal buf, pos, eof
            try:
                chunk = fh.read(CHUNK)
            except UnicodeDecodeError as exc:
                raise _decode_error(path, enc, exc) from None
            if not chunk:
                eof = True
            buf = buf[pos:] + chunk
            pos = 0

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    pos += 1
                if pos < len(buf) or eof:
                    return
                fill()

        fill()
        skip_ws()
        if pos < len(buf) and buf[pos] == "{":
            m = None
            while m is None and not eof and len(buf) - pos < MAX_FIELD:
                m = re.search(r'"[^"\\]*"\s*:\s*\[', buf[pos:])
                if m is None:
                    fill()
            if m is None:
                raise DumpError(f"{path.name}: a JSON object with no array of records",
                                "give a JSON array of objects, or NDJSON")
            pos += m.end() - 1
        if pos >= len(buf) or buf[pos] != "[":
            raise DumpError(f"{path.name}: not a JSON array", "give a JSON array of objects")
        pos += 1
        while True:
            skip_ws()
            if pos < len(buf) and buf[pos] == "]":
                return
            if pos < len(buf) and buf[pos] == ",":
                pos += 1
                continue
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if eof:
                        raise DumpError(f"{path.name}: invalid JSON ({exc.msg})",
                                        "the file is truncated or not JSON") from None
                    if len(buf) - pos > MAX_FIELD:
                        raise DumpError(f"{path.name}: a JSON record is longer than "
                                        f"{MAX_FIELD} bytes", "split the file") from None
                    fill()
                    continue
                if end == len(buf) and not eof:   # a number may continue in the next chunk
                    fill()
                    continue
                break
            pos = end
            yield obj


# -- SQL -------------------------------------------------------------------------------------------
_INSERT = re.compile(r"(?is)^\s*insert\s+(?:ignore\s+)?into\s+")


class SqlTokenizer:
    """Splits a SQL dump into statements and INSERT values without evaluating anything.

    Understands single-quoted strings with '' and (MySQL) backslash escapes, double-quoted
    and backtick-quoted identifiers, ``--`` / ``#`` / ``/* */`` comments, PostgreSQL
    dollar-quoted strings and ``E'...'`` escape strings, and ``COPY ... FROM stdin``
    blocks (tab-separated, ``\\.`` terminated).
    """

    def __init__(self, path: Path, text: IO[str], backslash_escapes: bool = True) -> None:
        self.path = path
        self.text = text
        # MySQL: backslash escapes in every string; PostgreSQL (standard_conforming_strings
        # on): only in E'...' strings.
        self.backslash_escapes = backslash_escapes

    def statements(self) -> Iterator[str | tuple[str, list[str]]]:
        """Yields SQL statements (str) and COPY blocks as ('COPY', lines)."""
        buf: list[str] = []
        size = 0
        state = "code"      # code | squote | dquote | btick | block_comment | dollar
        escapes = False     # inside the current single-quoted string, backslash escapes?
        dollar_tag = ""
        for line in self._lines():
            size += len(line)
            if size > MAX_FIELD:
                raise DumpError(f"{self.path.name}: a SQL statement is longer than "
                                f"{MAX_FIELD} bytes",
                                "dump with one INSERT per row or smaller extended inserts "
                                "(mysqldump --net-buffer-length)")
            if state == "code" and line.lstrip().startswith("#"):
                continue                      # MySQL comment line
            i, n = 0, len(line)
            while i < n:
                c = line[i]
                if state == "code":
                    if c == "-" and line.startswith("--", i):
                        break                 # comment to end of line
                    if c == "/" and line.startswith("/*", i):
                        state = "block_comment"
                        i += 2
                        continue
                    if c == ";":
                        stmt = "".join(buf).strip()
                        buf, size = [], 0
                        if stmt:
                            if re.match(r"(?is)^copy\s.+from\s+stdin", stmt):
                                yield ("COPY", list(self._copy_block()))
                            else:
                                yield stmt
                        i += 1
                        continue
                    if c == "'":
                        state = "squote"
                        escapes = self.backslash_escapes or (i > 0 and line[i - 1] in "eE")
                    elif c == '"':
                        state = "dquote"
                    elif c == "`":
                        state = "btick"
                    elif c == "$":
                        m = re.match(r"\$[A-Za-z_]*\$", line[i:])
                        if m:
                            dollar_tag = m.group(0)
                            state = "dollar"
                            buf.append(dollar_tag)
                            i += len(dollar_tag)
                            continue
                    buf.append(c)
                    i += 1
                elif state == "block_comment":
                    if line.startswith("*/", i):
                        state = "code"
                        i += 2
                    else:
                        i += 1
                elif state == "squote":
                    buf.append(c)
                    if c == "\\" and escapes and i + 1 < n:
                        buf.append(line[i + 1])
                        i += 2
                        continue
                    if c == "'":
                        if i + 1 < n and line[i + 1] == "'":
                            buf.append("'")
                            i += 2
                            continue
                        state = "code"
                    i += 1
                elif state == "dollar":
                    if line.startswith(dollar_tag, i):
                        buf.append(dollar_tag)
                        i += len(dollar_tag)
                        state = "code"
                        continue
                    buf.append(c)
                    i += 1
                else:                         # dquote / btick identifiers
                    buf.append(c)
                    if c == ('"' if state == "dquote" else "`"):
                        state = "code"
                    i += 1
        stmt = "".join(buf).strip()
        if state in ("squote", "dquote", "btick", "dollar"):
            raise DumpError(f"{self.path.name}: the file ends inside a quoted string",
                            "the dump is truncated or its quoting is broken")
        if stmt:
            yield stmt

    def _lines(self) -> Iterator[str]:
        while True:
            try:
                line = self.text.readline(MAX_FIELD + 1)
            except UnicodeDecodeError as exc:
                raise DumpError(f"{self.path.name}: bytes that are not valid text ({exc.reason})",
                                "convert the dump to UTF-8") from None
            if not line:
                return
            if len(line) > MAX_FIELD:
                raise DumpError(f"{self.path.name}: a line is longer than {MAX_FIELD} bytes",
                                "dump with smaller extended inserts")
            yield line

    def _copy_block(self) -> Iterator[str]:
        for line in self._lines():
            if line.rstrip("\r\n") == "\\.":
                return
            yield line.rstrip("\r\n")


def parse_insert(stmt: str, backslash_escapes: bool = True
                 ) -> tuple[str, list[str] | None, list[list[str]]]:
    """INSERT INTO t [(cols)] VALUES (...), (...) -> (table, columns, rows of strings)."""
    m = _INSERT.match(stmt)
    if not m:
        raise ValueError("not an INSERT")
    i = m.end()
    table, i = _identifier(stmt, i)
    i = _ws(stmt, i)
    cols: list[str] | None = None
    if i < len(stmt) and stmt[i] == "(":
        cols = []
        i += 1
        while True:
            i = _ws(stmt, i)
            name, i = _identifier(stmt, i)
            cols.append(name)
            i = _ws(stmt, i)
            if i < len(stmt) and stmt[i] == ",":
                i += 1
                continue
            if i < len(stmt) and stmt[i] == ")":
                i += 1
                break
            raise ValueError("bad column list")
    i = _ws(stmt, i)
    if not re.match(r"(?i)values?\b", stmt[i:i + 7]):
        raise ValueError("INSERT ... SELECT is not data")
    i = stmt.index("(", i) if "(" in stmt[i:] else len(stmt)
    rows: list[list[str]] = []
    while i < len(stmt) and stmt[i] == "(":
        row, i = _tuple(stmt, i + 1, backslash_escapes)
        rows.append(row)
        i = _ws(stmt, i)
        if i < len(stmt) and stmt[i] == ",":
            i = _ws(stmt, i + 1)
            continue
        break
    return table, cols, rows


def _ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def _identifier(s: str, i: int) -> tuple[str, int]:
    parts: list[str] = []
    while True:
        i = _ws(s, i)
        if i < len(s) and s[i] in '"`[':
            close = {'"': '"', "`": "`", "[": "]"}[s[i]]
            j = i + 1
            out = []
            while j < len(s):
                if s[j] == close:
                    if j + 1 < len(s) and s[j + 1] == close:
                        out.append(close)
                        j += 2
                        continue
                    break
                out.append(s[j])
                j += 1
            parts.append("".join(out))
            i = j + 1
        else:
            m = re.match(r"[\w$]+", s[i:])
            if not m:
                raise ValueError("identifier expected")
            parts.append(m.group(0))
            i += m.end()
        if i < len(s) and s[i] == ".":
            i += 1
            continue
        return parts[-1], i


_MYSQL_ESC = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a",
              "\\": "\\", "'": "'", '"': '"', "%": "\\%", "_": "\\_"}


def _tuple(s: str, i: int, backslash_escapes: bool) -> tuple[list[str], int]:
    vals: list[str] = []
    while True:
        i = _ws(s, i)
        if i >= len(s):
            raise ValueError("unterminated VALUES tuple")
        c = s[i]
        esc = backslash_escapes
        if c in "eE" and i + 1 < len(s) and s[i + 1] == "'":
            i += 1
            c = "'"
            esc = True
        if c == "'":
            j = i + 1
            out: list[str] = []
            while True:
                if j >= len(s):
                    raise ValueError("unterminated string")
                ch = s[j]
                if ch == "\\" and esc and j + 1 < len(s):
                    out.append(_MYSQL_ESC.get(s[j + 1], s[j + 1]))
                    j += 2
                    continue
                if ch == "'":
                    if j + 1 < len(s) and s[j + 1] == "'":
                        out.append("'")
                        j += 2
                        continue
                    break
                out.append(ch)
                j += 1
            vals.append("".join(out))
            i = j + 1
        elif c == "$":
            m = re.match(r"\$[A-Za-z_]*\$", s[i:])
            if not m:
                raise ValueError("bad dollar quote")
            tag = m.group(0)
            end = s.find(tag, i + len(tag))
            if end < 0:
                raise ValueError("unterminated dollar quote")
            vals.append(s[i + len(tag):end])
            i = end + len(tag)
        else:
            m = re.match(r"[^,)]*", s[i:])
            assert m is not None
            tok = m.group(0).strip()
            i += m.end()
            if re.fullmatch(r"(?i)null", tok):
                vals.append("")
            elif re.fullmatch(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?", tok):
                vals.append(tok)
            elif re.fullmatch(r"(?i)(true|false)", tok):
                vals.append(tok.lower())
            elif re.fullmatch(r"(?i)(0x[0-9a-f]*|x'[0-9a-f]*')", tok):
                vals.append(tok)
            else:
                raise ValueError(f"unsupported value {tok[:40]!r}: only literals are data")
        i = _ws(s, i)
        if i < len(s) and s[i] == ",":
            i += 1
            continue
        if i < len(s) and s[i] == ")":
            return vals, i + 1
        raise ValueError("',' or ')' expected in VALUES")


def _sql(path: Path, head: bytes, enc: str, progress: Progress | None) -> Table:
    pg = bool(re.search(rb"(?i)(postgresql database dump|standard_conforming_strings\s*=\s*on|"
                        rb"pg_dump|search_path)", head))
    notes: list[str] = [f"encoding {enc}", "PostgreSQL dialect" if pg else "MySQL dialect"]
    state: dict[str, Any] = {"header": None, "table": None}

    def objects() -> Iterator[list[str]]:
        with _text(_binary(path, progress), enc) as text:
            create_cols: dict[str, list[str]] = {}
            tok = SqlTokenizer(path, text, backslash_escapes=not pg)
            for n, st in enumerate(tok.statements(), start=1):
                if isinstance(st, tuple):
                    if state["header"] is None:
                        state["header"] = []
                    for line in st[1]:
                        yield [("" if c == "\\N" else c) for c in line.split("\t")]
                    continue
                cm = re.match(r"(?is)^\s*create\s+table\s+(?:if\s+not\s+exists\s+)?([^\s(]+)\s*"
                              r"\((.*)\)", st)
                if cm:
                    name = cm.group(1).strip('`"[]').split(".")[-1]
                    cols = []
                    for part in _split_top(cm.group(2)):
                        w = part.strip().split()
                        if w and not re.match(r"(?i)(primary|key|unique|constraint|index|"
                                              r"foreign|check|fulltext)\b", w[0]):
                            cols.append(w[0].strip('`"[]'))
                    create_cols[name] = cols
                    continue
                if not _INSERT.match(st):
                    continue
                try:
                    table, cols_, rows = parse_insert(st, not pg)
                except ValueError as exc:
                    raise DumpError(f"{path.name}: statement {n}: {exc}",
                                    "only INSERT ... VALUES with literal values is read"
                                    ) from None
                if state["table"] is None:
                    state["table"] = table
                    state["header"] = cols_ or create_cols.get(table)
                elif table != state["table"] and f"rows of table {table} also read" not in notes:
                    notes.append(f"rows of table {table} also read")
                yield from rows

    gen = objects()
    first: list[list[str]] = []
    for r in gen:
        first.append(r)
        break

    def rows() -> Iterator[list[str]]:
        yield from first
        yield from gen

    header = state["header"] or None
    if state["table"]:
        notes.append(f"table {state['table']}")
    return Table(str(path), "sql", enc, list(header) if header else None, rows(), notes)


def _split_top(s: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


# -- Excel ----------------------------------------------------------------------------------------
def check_zip(path: Path) -> None:
    """Refuse zip bombs and macro-bearing workbooks before openpyxl opens anything."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DumpError(f"{path.name}: not a valid .xlsx (zip) file", "re-export the workbook"
                        ) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > XLSX_MAX_MEMBERS:
            raise DumpError(f"{path.name}: {len(infos)} members in the workbook archive",
                            "this looks like a zip bomb; refuse it")
        total = sum(i.file_size for i in infos)
        packed = sum(i.compress_size for i in infos) or 1
        if total > XLSX_MAX_UNCOMPRESSED:
            raise DumpError(f"{path.name}: declares {total >> 20} MiB uncompressed "
                            f"(limit {XLSX_MAX_UNCOMPRESSED >> 20} MiB)",
                            "this looks like a zip bomb; export the sheet as CSV instead")
        for i in infos:
            if i.file_size > 1 << 20 and i.file_size / max(i.compress_size, 1) > XLSX_MAX_RATIO:
                ratio = i.file_size // max(i.compress_size, 1)
                raise DumpError(f"{path.name}: member {i.filename} expands {ratio}×",
                                "this looks like a zip bomb; export the sheet as CSV instead")
        if total / packed > XLSX_MAX_RATIO and total > 1 << 20:
            raise DumpError(f"{path.name}: compression ratio {total // packed}×",
                            "this looks like a zip bomb; export the sheet as CSV instead")
        names = {i.filename.lower() for i in infos}
        if any(n.endswith("vbaproject.bin") for n in names):
            raise DumpError(f"{path.name}: the workbook carries macros (vbaProject.bin)",
                            "save it without macros as .xlsx or CSV")
        if "[content_types].xml" not in names:
            raise DumpError(f"{path.name}: not an Office Open XML workbook",
                            "re-export the workbook as .xlsx")


def _xlsx(path: Path) -> Table:
    check_zip(path)
    import openpyxl  # a pinned dependency; imported here: only .xlsx needs it

    try:
        # data_only=False: a formula is read as its text, never evaluated
        wb = openpyxl.load_workbook(path, read_only=True, data_only=False, keep_links=False)
    except Exception as exc:  # openpyxl raises many types for malformed files
        raise DumpError(f"{path.name}: unreadable workbook ({type(exc).__name__})",
                        "re-export the sheet as .xlsx or CSV") from None
    ws = wb.worksheets[0] if wb.worksheets else None
    if ws is None:
        raise DumpError(f"{path.name}: the workbook has no sheet", "check the file")

    def cell(v: object) -> str:
        if v is None:
            return ""
        if hasattr(v, "isoformat") and not isinstance(v, str):
            s = str(v.isoformat())
            return s[:10] if s.endswith("T00:00:00") else s
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        s = str(v)
        if len(s) > MAX_FIELD:
            raise DumpError(f"{path.name}: a cell is longer than {MAX_FIELD} bytes", "check the file")
        return s

    it = ws.iter_rows(values_only=True)
    first_rows: list[list[str]] = []
    for r in it:
        first_rows.append([cell(v) for v in r])
        if len(first_rows) >= 20:
            break
    has_header = _looks_like_header(first_rows)

    def rows() -> Iterator[list[str]]:
        try:
            for k, r in enumerate(first_rows):
                if k == 0 and has_header:
                    continue
                if any(c.strip() for c in r):
                    yield r
            for raw in it:
                r = [cell(v) for v in raw]
                if any(c.strip() for c in r):
                    yield r
        finally:
            wb.close()

    header = first_rows[0] if has_header and first_rows else None
    return Table(str(path), "xlsx", None, header, rows(),
                 [f"sheet {ws.title}", "header row" if has_header else "no header row"])


def iter_tables(paths: Iterable[Path], fmt: str = "auto",
                progress: Progress | None = None) -> Iterator[Table]:
    for p in paths:
        yield open_dump(p, fmt, progress)
