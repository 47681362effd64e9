"""``labvault backup create | check``"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from labvault.cli._common import JsonOpt, emit, err_console, opened, out_console, user_errors
from labvault.domain.actors import Actor

app = typer.Typer(no_args_is_help=True)


def _show(result: dict[str, Any], head: str, tail: list[str]) -> None:
    for line in (head, f"  {result['bytes']:,} bytes, sha256 {result['sha256']}",
                 f"  {result['tenants']} laboratories, {result['patients']} patients; SQLite "
                 f"integrity ok; {result['tenant_keys_checked']} tenant keys open with the "
                 "current root key", *tail):
        out_console.print(line, highlight=False, soft_wrap=True)


@app.command("create")
@user_errors
def create(dest: Path = typer.Argument(..., help="Directory for the backup (made 0700 if "
                                                 "absent); not the root key file's."),
           as_json: bool = JsonOpt) -> None:
    """Back the database up while labvault runs: checked, synced, without the root key."""
    with opened() as lv:
        result = lv.backups.create(Actor.operator(), dest)

    def show() -> None:
        _show(result, f"backup {result['file']}",
              [f"  shred log: {result['shred_log'] or 'none yet'}"])
        err_console.print(f"  root key {result['root_key']}", highlight=False, soft_wrap=True)
    emit(result, as_json, show)


@app.command("check")
@user_errors
def check(file: Path = typer.Argument(..., help="A backup (labvault-<time>.db or .dump)."),
          as_json: bool = JsonOpt) -> None:
    """Check a backup: sound, opens with the current root key, what a restore would erase."""
    with opened() as lv:
        result = lv.backups.check(Actor.operator(), file)
    emit(result, as_json, lambda: _show(
        result, f"backup {result['file']}",
        [f"  restored, {result['erased_again_on_restore']} of its patients would be erased "
         "again (the shred log)",
         f"  and {result['audit_entries_lost_on_restore']} audit entries written since would "
         "be lost (audit verify reports them missing)",
         *([f"  {result['audit_entries_to_acknowledge']} of them are covered by signed "
            f"checkpoints: {len(result['audit_chains_to_acknowledge'])} chains would refuse "
            "audited actions until `labvault audit acknowledge-restore --all --reason ...`"]
           if result["audit_chains_to_acknowledge"] else [])]))
