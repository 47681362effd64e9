"""Text files people hand labvault — an import from a legacy LIS, a leaked copy to
triage or attribute — as spreadsheets write them: the CSV delimiter is guessed, not
assumed (French Excel and LibreOffice write semicolons)."""

from __future__ import annotations

import csv

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
