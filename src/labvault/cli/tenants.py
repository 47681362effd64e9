"""``labvault tenant``"""

from __future__ import annotations

import typer
from rich.table import Table

from labvault.cli._common import JsonOpt, emit, opened, out_console, user_errors
from labvault.domain.actors import Actor

app = typer.Typer(no_args_is_help=True)


@app.command("add")
@user_errors
def add(name: str = typer.Argument(..., help="Laboratory name."),
        finess: str = typer.Option(..., "--finess", help="FINESS number (9 characters)."),
        as_json: bool = JsonOpt) -> None:
    """Add a laboratory; creates its keys."""
    with opened() as lv:
        t = lv.tenants.add(Actor.operator(), name, finess)
    emit({"id": t.tenant_id, "name": t.name, "finess": t.finess}, as_json,
         lambda: out_console.print(f"laboratory [bold]{t.name}[/] created: {t.tenant_id}"))


@app.command("list")
@user_errors
def list_(as_json: bool = JsonOpt) -> None:
    """List laboratories with their patient counts."""
    with opened() as lv:
        rows = lv.tenants.list()

    def human() -> None:
        table = Table("id", "name", "FINESS", "patients")
        for r in rows:
            table.add_row(r["id"], r["name"], r["finess"], str(r["patients"]))
        out_console.print(table)

    emit(rows, as_json, human)
