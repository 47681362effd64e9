"""``labvault alerts | canary | export | purge | guard`` (docs/guard.md)."""

from __future__ import annotations

import sys
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from labvault.cli._common import JsonOpt, emit, err_console, opened, out_console, user_errors
from labvault.domain.actors import Actor
from labvault.errors import InvalidField, UserError

alerts_app = typer.Typer(no_args_is_help=True, help="Security alerts: list, acknowledge.")
canary_app = typer.Typer(no_args_is_help=True, help="Honeytoken patients.")
export_app = typer.Typer(invoke_without_command=True,
                         help="Governed exports: allow-listed fields, encrypted to the "
                              "recipient (age), fingerprinted, expiring.")
guard_app = typer.Typer(no_args_is_help=True, help="Guard settings and suspended accounts.")


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(canary_app, name="canary")
    app.add_typer(export_app, name="export")
    app.add_typer(guard_app, name="guard")
    app.command("purge")(purge)


# -- alerts --------------------------------------------------------------------------------
class AlertStatus(StrEnum):
    open = "open"
    acked = "acked"


@alerts_app.command("list")
@user_errors
def alerts_list(tenant: str = typer.Option(None, "--tenant", help="Laboratory id (default all)."),
                status: AlertStatus = typer.Option(None, "--status",
                                                   help="Only open or only acknowledged "
                                                        "alerts."),
                limit: int = typer.Option(100, "--limit", min=1, max=1000,
                                          help="At most this many alerts."),
                as_json: bool = JsonOpt) -> None:
    """Alerts, newest first, with their (unsealed) details."""
    from labvault.services.alerts import PLATFORM
    with opened() as lv:
        if tenant is not None and tenant != PLATFORM:
            lv.tenants.get(tenant)      # a typo: "no laboratory", not an empty list
        rows = lv.guard.alerts.list(Actor.operator(), tenant,
                                    status.value if status else None, limit)

    def human() -> None:
        for a in rows:
            out_console.print(f"{a['last_seen_at'][:19]}  {a['severity']:<8} {a['kind']:<26} "
                              f"{a['status']:<6} x{a['count']:<3} {a['actor_id'] or '-'}  "
                              f"{a['id']}", highlight=False)
        if not rows:
            out_console.print("no alert")

    emit({"alerts": rows}, as_json, human)


@alerts_app.command("ack")
@user_errors
def alerts_ack(alert_id: str = typer.Argument(..., help="Alert id (alrt_...)."),
               as_json: bool = JsonOpt) -> None:
    """Acknowledge an alert (it stays listed, marked acked)."""
    with opened() as lv:
        res = lv.guard.alerts.ack(Actor.operator(), alert_id)
    emit(res, as_json, lambda: out_console.print(
        f"alert {alert_id} already acknowledged by {res['acked_by']} at {res['acked_at']}"
        if res["already_acked"] else f"alert {alert_id} acknowledged", highlight=False))


# -- honeytokens ---------------------------------------------------------------------------
@canary_app.command("plant")
@user_errors
def canary_plant(tenant: str = typer.Option(..., "--tenant", help="Laboratory id."),
                 count: int = typer.Option(1, "--count", min=1, max=1000,
                                           help="How many honeytoken patients (1-1000)."),
                 as_json: bool = JsonOpt) -> None:
    """Plant honeytoken patients: any read, search hit or export of one raises a critical alert."""
    with opened() as lv:
        ids = lv.guard.plant(Actor.operator(), tenant, count)
    # The ids are not printed: whoever reads this terminal should not learn which they are.
    emit({"planted": len(ids), "tenant_id": tenant}, as_json,
         lambda: out_console.print(f"{len(ids)} honeytoken patient(s) planted in {tenant}"))


# -- exports -------------------------------------------------------------------------------
def _date(text: str | None, name: str) -> date:
    if not text:
        raise InvalidField(name, "is required", f"give --{name} YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidField(name, "must be a date YYYY-MM-DD", "e.g. 2026-01-31") from None


@export_app.callback()
@user_errors
def export(ctx: typer.Context,
           tenant: str = typer.Option(None, "--tenant", help="Laboratory id."),
           purpose: str = typer.Option(None, "--purpose", help="Why (recorded in the manifest)."),
           fields: str = typer.Option(None, "--fields", help="Comma-separated fields."),
           from_: str = typer.Option(None, "--from", help="First registration date YYYY-MM-DD."),
           to: str = typer.Option(None, "--to", help="Last registration date YYYY-MM-DD."),
           recipient: str = typer.Option(None, "--recipient", help="Recipient's age public key."),
           expires: str = typer.Option("7d", "--expires", help="Lifetime: 12h, 7d, 2w (max 30d)."),
           as_json: bool = JsonOpt) -> None:
    """Request an export (runs when no sub-command is given)."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [n for n, v in (("tenant", tenant), ("purpose", purpose), ("fields", fields),
                              ("recipient", recipient)) if not v]
    if missing:
        raise UserError(f"missing --{', --'.join(missing)}",
                        "labvault export --tenant ID --purpose TEXT --fields F1,F2 --from DATE "
                        "--to DATE --recipient AGE_PUBLIC_KEY --expires 7d")
    with opened() as lv:
        res = lv.guard.exports.create(Actor.operator(), tenant, purpose, fields.split(","),
                                      _date(from_, "from"), _date(to, "to"), recipient, expires)
    out = {"export_id": res["export_id"], "file": res["file"], "status": res["status"]}

    def human() -> None:
        if res["status"] == "ready":
            out_console.print(f"export {res['export_id']}: {res['patients']} patients -> "
                              f"{res['file']}", highlight=False)
        else:
            out_console.print(f"export {res['export_id']} ({res['patients']} patients) waits for "
                              f"approval: `labvault export approve {res['export_id']}` by a "
                              "second authorised account", highlight=False)

    emit(out, as_json, human)


@export_app.command("approve")
@user_errors
def export_approve(export_id: str = typer.Argument(..., help="Export id (exp_...)."),
                   as_json: bool = JsonOpt) -> None:
    """Approve an export waiting for four eyes (must be another account than the requester)."""
    with opened() as lv:
        res = lv.guard.exports.approve(Actor.operator(), export_id)
    emit(res, as_json, lambda: out_console.print(f"export {export_id} ready: {res['file']}"))


@export_app.command("list")
@user_errors
def export_list(tenant: str = typer.Option(None, "--tenant",
                                           help="Only this laboratory's exports."),
                as_json: bool = JsonOpt) -> None:
    """Exports with their manifests."""
    with opened() as lv:
        rows = lv.guard.exports.list(Actor.operator(), tenant)
    emit({"exports": rows}, as_json, lambda: out_console.print_json(data={"exports": rows}))


@export_app.command("identify")
@user_errors
def export_identify(file: Path = typer.Argument(..., help="A leaked, decrypted copy (NDJSON or "
                                                          "CSV); - for stdin."),
                    as_json: bool = JsonOpt) -> None:
    """Name the export (and recipient) a leaked copy comes from."""
    data = sys.stdin.buffer.read() if str(file) == "-" else _read(file)
    with opened() as lv:
        res = lv.guard.exports.identify(Actor.operator(), data)

    def human() -> None:
        if res["export_id"]:
            out_console.print(f"export {res['export_id']} to {res['recipient']} "
                              f"(requested by {res['requested_by']}, {res['created_at'][:10]})",
                              highlight=False)
        else:
            out_console.print("no export matches this file")

    emit(res, as_json, human)


def _read(file: Path) -> bytes:
    if not file.is_file():
        raise UserError(f"{file} is not a file", "give the path of the leaked file")
    return file.read_bytes()


# -- purge -----------------------------------------------------------------------------------
@user_errors
def purge(dry_run: bool = typer.Option(False, "--dry-run", help="Count, delete nothing."),
          confirm: int = typer.Option(None, "--confirm-mass-erasure", min=0, metavar="N",
                                      help="Allow more erasures than one run may make "
                                           "(LABVAULT_PURGE_MAX_ERASE_*): N is the exact "
                                           "number of patients this run erases, as "
                                           "--dry-run reports it."),
          as_json: bool = JsonOpt) -> None:
    """Delete expired exports and crypto-shred patients past their retention period."""
    show = err_console.is_terminal and not as_json
    with opened() as lv, Progress("[progress.description]{task.description}", BarColumn(),
                                  MofNCompleteColumn(), TimeRemainingColumn(),
                                  console=err_console, disable=not show) as bar:
        task = bar.add_task("shredding" if not dry_run else "counting", total=None)

        def step(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        res: dict[str, Any] = lv.guard.purge(dry_run=dry_run, progress=step,
                                             confirm_mass_erasure=confirm)

    def human() -> None:
        out_console.print(f"{'would purge' if dry_run else 'purged'} "
                          f"{res['exports']['expired']} export(s), "
                          f"{res['patients']['expired']} patient(s) past retention")
        for tid, f in res["patients"]["mass_erasure"].items():
            out_console.print(f"  {tid}: {f['expired']} of {f['active']} active patients, "
                              f"over the limit of {f['limit']} per run", highlight=False)
        if dry_run and res["patients"]["mass_erasure"]:
            out_console.print("purge would refuse this; if every erasure is intended: "
                              "labvault purge --confirm-mass-erasure "
                              f"{res['patients']['expired']}")

    emit(res, as_json, human)


# -- settings, suspensions ---------------------------------------------------------------------
@guard_app.command("config")
@user_errors
def guard_config(tenant: str = typer.Option(..., "--tenant", help="Laboratory id."),
                 set_: list[str] = typer.Option(None, "--set", help="NAME=VALUE (repeatable): "
                                              "budget.<role>.10m|day, rule.<rule>.10m, "
                                              "hours.open|close|days|tz, "
                                              "retention.<type> (years), export.fields."),
                 unset: list[str] = typer.Option(None, "--unset", help="NAME (repeatable)."),
                 as_json: bool = JsonOpt) -> None:
    """Show or change a lab's guard settings (budgets, rules, opening hours, retention)."""
    with opened() as lv:
        for item in set_ or []:
            if "=" not in item:
                raise UserError(f"--set {item}: expected NAME=VALUE", "e.g. budget.reception.10m=80")
            name, value = item.split("=", 1)
            lv.guard.set_config(Actor.operator(), tenant, name.strip(), value.strip())
        for name in unset or []:
            lv.guard.set_config(Actor.operator(), tenant, name.strip(), None)
        cfg = lv.guard.get_config(Actor.operator(), tenant)
    emit(cfg, as_json, lambda: out_console.print_json(data=cfg))


@guard_app.command("suspensions")
@user_errors
def guard_suspensions(tenant: str = typer.Option(..., "--tenant", help="Laboratory id."),
                      as_json: bool = JsonOpt) -> None:
    """Accounts suspended by a budget breach."""
    with opened() as lv:
        rows = lv.guard.suspensions(Actor.operator(), tenant)
    emit({"suspensions": rows}, as_json, lambda: out_console.print_json(data={"suspensions": rows}))


@guard_app.command("release")
@user_errors
def guard_release(tenant: str = typer.Option(..., "--tenant", help="Laboratory id."),
                  account: str = typer.Option(..., "--account",
                                              help="The suspended account's id (acct_...)."),
                  as_json: bool = JsonOpt) -> None:
    """Release a suspended account after reviewing its alert."""
    with opened() as lv:
        n = lv.guard.release(Actor.operator(), tenant, account)
    emit({"released": n, "account_id": account}, as_json,
         lambda: out_console.print(f"account {account} released"))
