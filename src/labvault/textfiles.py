"""Text files people hand labvault — an import from a legacy LIS, a leaked copy to
triage or attribute — as spreadsheets write them: the CSV delimiter is guessed, not
assumed (French Excel and LibreOffice write semicolons)."""

from __future__ import annotations

import csv
import json
from json.decoder import JSONObject  # type: ignore[attr-defined]  # untyped in typeshed
from json.scanner import py_make_scanner  # type: ignore[attr-defined]
from typing import Any

CSV_DELIMITERS = ",;\t|"      # comma, semicolon, tab, pipe


def most_common_delimiter(sample: str) -> str:
    """The delimiter ``sample`` holds most, a comma if none (a single column)."""
    counts = {d: sample.count(d) for d in CSV_DELIMITERS}
    delim = max(counts, key=lambda d: counts[d])
    return delim if counts[delim] else ","


def sniff_delimiter(header: str) -> str:
    """The delimiter of a CSV file from its header line: csv.Sniffer restricted to
    ``CSV_DELIMITERS``, else ``most_common_delimiter``."""
    try:
        return csv.Sniffer().sniff(header, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        return most_common_delimiter(header)


class DuplicateKey(ValueError):
    """A JSON object names the same key twice (``{"nir": "…", "nir": "…"}``): which value
    was meant cannot be told, so the object is refused rather than keep the last one.
    ``line`` and ``column`` locate the object's opening brace in the text given."""

    def __init__(self, key: str, line: int = 0, column: int = 0) -> None:
        super().__init__(f"the key {key!r} appears twice in one object")
        self.key = key
        self.line = line
        self.column = column


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` refusing a key given twice (json keeps the last silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def loads_unique_keys(text: str | bytes) -> Any:
    """``json.loads`` that refuses an object naming a key twice (``DuplicateKey``, located).

    The C parser does the work; only a refused text is parsed again by the pure-Python
    scanner, which can say where the offending object starts."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKey:
        pass
    if isinstance(text, bytes):
        text = text.decode(json.detect_encoding(text))
    return _locate_duplicate(text)


def _locate_duplicate(text: str) -> Any:
    decoder = json.JSONDecoder(object_pairs_hook=unique_keys)

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> Any:
        try:
            return JSONObject(s_and_end, *args)
        except DuplicateKey as exc:
            if not exc.line:        # the innermost object: the one naming the key twice
                brace = s_and_end[1] - 1
                exc.line = text.count("\n", 0, brace) + 1
                exc.column = brace - text.rfind("\n", 0, brace)
            raise

    decoder.parse_object = parse_object         # type: ignore[attr-defined]
    decoder.scan_once = py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(text)
