"""Docs cover what exists: every setting in ``config.SETTINGS`` is documented in
docs/configuration.md, and every CLI command and option in docs/cli.md.

docs/cli.md has one heading per command, e.g. ``### `labvault patient import` ``; every
option (``--tenant``) and argument (``FILE``) of that command must appear in its section.
Adding a command or an option without documenting it fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from labvault.cli import app
from labvault.config import SETTINGS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _commands() -> Iterator[tuple[str, Any]]:
    def walk(cmd: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        yield " ".join(path), cmd
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub, [*path, name])
    yield from walk(typer.main.get_command(app), ["labvault"])


def _sections(md: str) -> dict[str, str]:
    """Heading text -> the text under it (up to the next heading of any level)."""
    out: dict[str, str] = {}
    heading, buf = "", []
    for line in md.splitlines():
        if line.startswith("#"):
            out[heading] = "\n".join(buf)
            heading, buf = line.lstrip("#").strip(), []
        else:
            buf.append(line)
    out[heading] = "\n".join(buf)
    return out


COMMANDS = list(_commands())


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_cli_command_documented(path: str, cmd: Any) -> None:
    md = (DOCS / "cli.md").read_text()
    assert f"`{path}" in md, f"docs/cli.md does not mention `{path}`"
    if getattr(cmd, "commands", None) and path != "labvault":
        return  # a group: its sub-commands have the sections
    sections = {h: body for h, body in _sections(md).items()
                if re.fullmatch(rf"`{re.escape(path)}`", h.strip())}
    assert sections, f"docs/cli.md has no heading ### `{path}`"
    body = next(iter(sections.values()))
    for p in cmd.params:
        if type(p).__name__.endswith("Argument"):
            assert p.name.upper() in body, f"{path}: argument {p.name.upper()} not documented"
        else:
            for opt in [*p.opts, *p.secondary_opts]:
                assert re.search(rf"{re.escape(opt)}\b", body), f"{path}: option {opt} not documented"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_setting_documented(name: str) -> None:
    md = (DOCS / "configuration.md").read_text()
    assert f"`{name}`" in md, f"docs/configuration.md does not document {name}"
    default = SETTINGS[name][0]
    row = next((line for line in md.splitlines() if f"`{name}`" in line and "|" in line), "")
    assert row, f"docs/configuration.md has no table row for {name}"
    if default:
        assert default in row, f"{name}: default {default!r} not in its row"


def test_formats_document_every_import_field() -> None:
    from labvault.domain.patient import (
        ADDRESS_FIELDS,
        COVERAGE_FIELDS,
        IMPORT_FIELDS,
        PRESCRIBER_FIELDS,
    )
    md = (DOCS / "formats.md").read_text()
    for f in IMPORT_FIELDS:
        assert f"`{f}`" in md, f
    for parent, fields in (("address", ADDRESS_FIELDS), ("coverage", COVERAGE_FIELDS),
                           ("prescriber", PRESCRIBER_FIELDS)):
        for f in fields:
            assert f"`{parent}.{f}`" in md, f"{parent}.{f}"


def test_formats_examples_import_cleanly() -> None:
    """Every ```json example line marked ``valid`` in docs/formats.md parses."""
    import json

    from labvault.domain.patient import PatientRecord
    md = (DOCS / "formats.md").read_text()
    blocks = re.findall(r"```(?:json|ndjson) valid\n(.*?)```", md, flags=re.S)
    assert blocks
    for block in blocks:
        for line in block.strip().splitlines():
            PatientRecord.parse(json.loads(line))


def test_formats_rejection_example_matches_the_code() -> None:
    """The documented rejected lines give the documented report."""
    import json

    from labvault.services.patients import ImportReport, PatientService
    md = (DOCS / "formats.md").read_text()
    block = re.findall(r"```ndjson\n(.*?)```", md, flags=re.S)[0]
    report = ImportReport()
    for n, line in enumerate(block.strip().splitlines(), start=1):
        assert PatientService._parse_line(n, line, report) is None
    documented = json.loads(re.findall(r"prints:\n\n```json\n(.*?)```", md, flags=re.S)[0]
                            .replace("(...)", "X"))
    assert [(r["line"], r["field"]) for r in report.rejected] == [
        (r["line"], r["field"]) for r in documented["rejections"]]


def test_every_option_and_argument_has_help() -> None:
    """`--help` explains every option and argument (QA report item 15: a dozen showed an
    empty description)."""
    missing = [f"{path}: {p.name}" for path, cmd in COMMANDS for p in cmd.params
               if not (getattr(p, "help", None) or "").strip()]
    assert not missing, "no help text: " + ", ".join(missing)


NIR_SHAPE = re.compile(r"\b[12] ?\d{2} ?\d{2} ?(?:\d{2}|2A|2B) ?\d{3} ?\d{3} ?\d{2}\b")


def test_every_nir_in_the_docs_is_valid() -> None:
    """Example NIRs have a right control key (docs/cli.md had a wrong one), checked with
    python-stdnum; only the documented rejections of docs/formats.md are left out."""
    from stdnum.fr import nir
    found = []
    for path in sorted([*DOCS.glob("*.md"), DOCS.parent / "README.md"]):
        md = path.read_text()
        if path.name == "formats.md":   # the ```ndjson block of rejected lines
            md = re.sub(r"```ndjson\n.*?```", "", md, flags=re.S)
        found += [(path.name, n) for n in NIR_SHAPE.findall(md)]
    assert ("cli.md", "284127645108993") in found
    bad = [(name, n) for name, n in found if not nir.is_valid(n)]
    assert not bad, f"NIRs with a wrong control key: {bad}"
