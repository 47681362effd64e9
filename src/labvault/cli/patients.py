"""``labvault patient``"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from labvault.cli._common import JsonOpt, emit, err_console, opened, out_console, user_errors
from labvault.domain.actors import Actor
from labvault.errors import UserError

app = typer.Typer(no_args_is_help=True)


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        yield from fh


@app.command("import")
@user_errors
def import_(file: Path = typer.Argument(..., help="NDJSON file, one patient per line "
                                                  "(docs/formats.md); - for stdin."),
            tenant: str = typer.Option(..., "--tenant", help="Laboratory id."),
            as_json: bool = JsonOpt) -> None:
    """Import patients (legacy-LIS migration): each line all-or-nothing, idempotent on external_id."""
    import sys
    if str(file) != "-" and not file.is_file():
        raise UserError(f"{file} is not a file", "give the path of an NDJSON file")
    with opened() as lv:
        if str(file) == "-":
            report = lv.patients.import_lines(Actor.operator(), tenant, sys.stdin.buffer)
        else:
            total = sum(1 for _ in _lines(file))
            show = err_console.is_terminal and not as_json
            with Progress("[progress.description]{task.description}", BarColumn(),
                          MofNCompleteColumn(), TimeRemainingColumn(), console=err_console,
                          disable=not show) as bar:
                task = bar.add_task("importing", total=total)
                report = lv.patients.import_lines(Actor.operator(), tenant, _lines(file),
                                                  progress=lambda n: bar.advance(task, n))

    def human() -> None:
        out_console.print(f"imported [bold]{report.imported}[/], already present "
                          f"{report.skipped}, rejected [bold]{len(report.rejected)}[/]")
        for r in report.rejected[:50]:
            out_console.print(f"  line {r['line']}: {r['field']}: {r['reason']}", highlight=False)
        if len(report.rejected) > 50:
            out_console.print(f"  ... {len(report.rejected) - 50} more (use --json)")

    emit(report.as_json(), as_json, human)
    if report.rejected and not report.imported and not report.skipped:
        raise typer.Exit(2)


@app.command("find")
@user_errors
def find(tenant: str = typer.Option(..., "--tenant", help="Laboratory id."),
         nir: str = typer.Option(None, "--nir", help="NIR (social security number)."),
         email: str = typer.Option(None, "--email", help="E-mail address."),
         phone: str = typer.Option(None, "--phone",
                                   help="Phone number, any French or international format."),
         birth_name: str = typer.Option(None, "--birth-name",
                                        help="Birth name (with --first-name and --birth-date)."),
         first_name: str = typer.Option(None, "--first-name", help="First first name."),
         birth_date: str = typer.Option(None, "--birth-date", help="Birth date, YYYY-MM-DD."),
         as_json: bool = JsonOpt) -> None:
    """Find patients through the blind indexes; several criteria combine with AND (no
    record is opened; audited as a search by the operator, purpose administration)."""
    with opened() as lv:
        ids = lv.patients.find(Actor.operator(), tenant, nir=nir, email=email, phone=phone,
                               birth_name=birth_name, first_name=first_name,
                               birth_date=birth_date, purpose="administration")
    emit({"patients": ids}, as_json, lambda: out_console.print("\n".join(ids) or "no match"))


@app.command("show")
@user_errors
def show(patient_id: str = typer.Argument(..., help="Patient id (pt_...)."),
         as_json: bool = JsonOpt) -> None:
    """Open one patient's record (audited as a read by the operator)."""
    with opened() as lv:
        data = lv.patients.show(Actor.operator(), patient_id, purpose="administration")
    emit(data, as_json, lambda: out_console.print_json(data=data))


@app.command("erase")
@user_errors
def erase(patient_id: str = typer.Argument(..., help="Patient id (pt_...)."),
          as_json: bool = JsonOpt) -> None:
    """Crypto-shred a patient: data key destroyed, unreadable everywhere, backups included."""
    with opened() as lv:
        data = lv.patients.erase(Actor.operator(), patient_id)
    emit(data, as_json, lambda: out_console.print(f"patient {patient_id} erased"))


@app.command("merge")
@user_errors
def merge(survivor: str = typer.Argument(..., help="Id of the record kept (pt_...): its "
                                                   "identity stays as it is."),
          duplicate: str = typer.Argument(..., help="Id of the duplicate record (pt_...): "
                                                    "everything it holds moves to SURVIVOR."),
          reason: str = typer.Option(..., "--reason",
                                     help="Why the two records are the same person (kept, "
                                          "sealed, in the audit trail)."),
          force: bool = typer.Option(False, "--force",
                                     help="Merge even though the birth date, sex, NIR or INS "
                                          "differ (a typing error checked by hand)."),
          as_json: bool = JsonOpt) -> None:
    """Merge a duplicate patient record into the record kept (identity vigilance): orders,
    results, reports, messages and deliveries move to SURVIVOR, sealed again under its key;
    DUPLICATE stays as an empty tombstone pointing at SURVIVOR. One transaction; refused
    (exit 2, nothing changed) for two different people, an erased or merged record, a
    honeytoken."""
    with opened() as lv:
        data = lv.patients.merge(Actor.operator(), survivor, duplicate, reason, force=force)

    def human() -> None:
        moved = ", ".join(f"{n} {t}" for t, n in data["moved"].items() if n) or "nothing"
        out_console.print(f"patient {duplicate} merged into {survivor}: moved {moved}",
                          highlight=False)
        if data["differing"]:
            out_console.print("differing (the survivor's kept): "
                              + ", ".join(data["differing"]), highlight=False)

    emit(data, as_json, human)
