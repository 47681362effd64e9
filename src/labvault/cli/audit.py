"""``labvault audit``: verify, checkpoint, acknowledge-restore, prove, access, report, fhir,
prune, register."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Column, Table

from labvault.cli._common import (
    JsonOpt,
    emit,
    err_console,
    opened,
    out_console,
    output_file,
    user_errors,
    writing,
)
from labvault.domain.actors import Actor
from labvault.errors import UserError
from labvault.services.audit import audit_of

app = typer.Typer(no_args_is_help=True)


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{value!r} is not a date", "use YYYY-MM-DD or an ISO 8601 time") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _at(value: str) -> str:
    """An entry's time for a table cell, whole on one line: ``2026-11-29 08:12:31 UTC``."""
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command("verify")
@user_errors
def verify(tenant: str = typer.Option(None, "--tenant", help="Only this chain (tenant id or "
                                                              "_platform)."),
           as_json: bool = JsonOpt) -> None:
    """Verify every chain against its MACs and the signed checkpoints; exit 1 on tampering."""
    with opened() as lv:
        result = audit_of(lv).verify(tenant)

    def human() -> None:
        for c in result["chains"]:
            status = "[green]ok[/]" if c["ok"] else "[bold red]TAMPERED[/]"
            if c["ok"] and c["restores"]:
                status = (f"[yellow]ok, restored[/] ({c['entries_lost_at_restores']} entries "
                          "lost at acknowledged restores)")
            out_console.print(f"{c['tenant']}: {status} ({c['entries_checked']} entries, "
                              f"{c['checkpoints_checked']} checkpoints)", highlight=False)
            if c["problem"]:
                p = c["problem"]
                out_console.print(f"  at position {p['seq']} (entry {p['entry_id']}): "
                                  f"{p['kind']}: {p['message']}", highlight=False)
            for w in c["warnings"]:
                out_console.print(f"  [yellow]warning:[/] {w}", highlight=False)

    emit(result, as_json, human)
    if not result["ok"]:
        raise typer.Exit(1)


@app.command("checkpoint")
@user_errors
def checkpoint(tenant: str = typer.Option(None, "--tenant", help="Only this chain."),
               as_json: bool = JsonOpt) -> None:
    """Verify, then sign a checkpoint of each chain (written outside the database)."""
    with opened() as lv:
        result = audit_of(lv).checkpoint(tenant)
    emit(result, as_json, lambda: out_console.print_json(data=result))
    if not result["ok"]:
        raise typer.Exit(1)


@app.command("acknowledge-restore")
@user_errors
def acknowledge_restore(
        tenant: str = typer.Option(None, "--tenant", help="The chain to acknowledge (tenant "
                                                          "id or _platform)."),
        all_chains: bool = typer.Option(False, "--all", help="Every chain shorter than its "
                                                             "latest signed checkpoint."),
        reason: str = typer.Option(..., "--reason", help="Why the database was restored "
                                                         "(kept in clear in the signed "
                                                         "record: no personal data)."),
        unanchored: bool = typer.Option(False, "--unanchored",
                                        help="Acknowledge even when no signed checkpoint "
                                             "vouches for the restored entries (said "
                                             "forever by audit verify)."),
        as_json: bool = JsonOpt) -> None:
    """After restoring a backup: sign a restore record (the checkpoint key) stating what
    was lost, so that the chains go on and verify reports the loss as a warning."""
    if (tenant is None) == (not all_chains):
        raise UserError("give --tenant ID or --all", "one chain, or every chain behind "
                                                     "its checkpoints")
    with opened() as lv:
        result = audit_of(lv).acknowledge_restore(Actor.operator(), tenant, reason,
                                                  unanchored)

    def human() -> None:
        for c in result["chains"]:
            if c["status"] == "acknowledged":
                line = (f"{c['tenant']}: [yellow]restore acknowledged[/] (epoch {c['epoch']}): "
                        f"{c['warning']}; new entries continue at {c['restored_size']}")
                if not c["anchored"] and c["restored_size"] > 0:
                    line += (" [bold red]WARNING: UNANCHORED — nothing signed vouches for "
                             "the restored entries[/]")
            elif c["status"] == "not-behind":
                line = f"{c['tenant']}: {c['message']}"
            else:
                line = f"{c['tenant']}: [bold red]{c['status'].upper()}[/]: {c['message']}"
                if c.get("problem"):
                    p = c["problem"]
                    line += f"\n  at position {p['seq']}: {p['kind']}: {p['message']}"
            out_console.print(line, highlight=False, soft_wrap=True)

    emit(result, as_json, human)
    statuses = {c["status"] for c in result["chains"]}
    if "refused" in statuses:
        raise typer.Exit(1)
    if "unanchored" in statuses:
        err_console.print("[bold red]error:[/] a restored chain is not anchored by any signed "
                          "checkpoint; nothing was acknowledged for it", highlight=False)
        err_console.print("  check it, then add --unanchored to acknowledge it anyway",
                          highlight=False)
        raise typer.Exit(2)


@app.command("prove")
@user_errors
def prove(entry: str = typer.Argument(..., help="Audit entry id (ae_...)."),
          as_json: bool = JsonOpt) -> None:
    """Inclusion proof (RFC 6962 audit path) of one entry against the latest checkpoint."""
    with opened() as lv:
        result = audit_of(lv).prove(entry)
    emit(result, as_json, lambda: out_console.print_json(data=result))
    if not result["verified"]:
        raise typer.Exit(1)


@app.command("access")
@user_errors
def access(patient: str = typer.Option(..., "--patient", help="Patient id (pt_...)."),
           include_denied: bool = typer.Option(False, "--include-denied",
                                               help="Also list refused attempts."),
           since: str = typer.Option(None, "--since", help="From this date (YYYY-MM-DD)."),
           as_json: bool = JsonOpt) -> None:
    """Who saw this patient's record: when, role, laboratory, what (action on which
    resource: patient, order, report...), categories, purpose."""
    with opened() as lv:
        rows = audit_of(lv).access_log(Actor.operator(), patient, include_denied, _when(since))

    def human() -> None:
        # Cells wrap rather than end in "…": a narrow or piped output keeps every word.
        t = Table(Column("when (UTC)", no_wrap=True),
                  *(Column(h, overflow="fold", min_width=len(h))
                    for h in ("who", "action", "resource", "categories", "purpose",
                              "outcome")))
        for r in rows:
            t.add_row(_at(r["at"]).removesuffix(" UTC"), r["who"], r["action"],
                      r["resource"] or "", ", ".join(r["categories"]), r["purpose"] or "",
                      r["outcome"])
        # Piped to a file or a mail, a row stays one line (rich's default would be 80).
        (out_console if out_console.is_terminal else Console(width=160)).print(t)

    emit(rows, as_json, human)


@app.command("report")
@user_errors
def report(user: str = typer.Option(..., "--user", help="Account id (or os:user@host)."),
           since: str = typer.Option(None, "--since", help="From (YYYY-MM-DD or ISO time)."),
           until: str = typer.Option(None, "--until", help="Until (exclusive)."),
           as_json: bool = JsonOpt) -> None:
    """The DPO's report on one user: every decision and event, refusals included."""
    with opened() as lv:
        result = audit_of(lv).user_report(Actor.operator(), user, _when(since), _when(until))
    def human() -> None:
        out_console.print(f"{result['user']}: {result['entries']} entries, "
                          f"{result['denied']} refused, {result['distinct_patients']} "
                          "distinct patients", highlight=False)
        for key, n in sorted(result["by_action"].items()):
            out_console.print(f"  {key:<32} {n}", highlight=False)
        # Every entry, not only the counts — what the DPO reads the report for; one line
        # each, whole, whatever the width.
        for it in result["items"]:
            ids = it["patient_ids"]
            parts = [_at(it["at"]), f"{it['action']} {it['outcome']}", it["resource"] or "",
                     it["lab"] or it["tenant_id"],
                     (ids[0] + (f" (+{len(ids) - 1})" if len(ids) > 1 else "")) if ids else "",
                     f"purpose {it['purpose']}" if it["purpose"] else "",
                     f"from {client}" if (client := (it.get("sealed") or {}).get("client"))
                     else ""]
            out_console.print("  ".join(x for x in parts if x), highlight=False,
                              overflow="fold")

    emit(result, as_json, human)


@app.command("fhir")
@user_errors
def fhir(out: Path = typer.Option(..., "--out", help="NDJSON file to write ('-' = stdout)."),
         tenant: str = typer.Option(None, "--tenant", help="Only this chain."),
         since: str = typer.Option(None, "--since", help="From (YYYY-MM-DD)."),
         as_json: bool = JsonOpt) -> None:
    """Export the trail as FHIR R4 AuditEvent resources (IHE BALP) in NDJSON."""
    with opened() as lv:
        svc = audit_of(lv)
        if str(out) == "-":
            n = svc.export_fhir(Actor.operator(), sys.stdout, tenant, _when(since))
            err_console.print(f"{n} AuditEvent resources written")
            return
        with writing(out):
            n = svc.export_fhir(Actor.operator(), output_file(out), tenant, _when(since))
    emit({"file": str(out), "resources": n}, as_json,
         lambda: out_console.print(f"{n} AuditEvent resources written to {out}"))


@app.command("prune")
@user_errors
def prune(as_json: bool = JsonOpt) -> None:
    """Delete entries older than LABVAULT_AUDIT_RETENTION_DAYS, anchored by a signed checkpoint."""
    with opened() as lv:
        result = audit_of(lv).prune()
    emit(result, as_json, lambda: out_console.print_json(data=result))


@app.command("register")
@user_errors
def register(fmt: str = typer.Option("md", "--format", help="md or json."),
             out: Path = typer.Option(None, "--out", help="Write to this file.")) -> None:
    """The record of processing activities (GDPR Art. 30), from the configuration."""
    if fmt not in ("md", "json"):
        raise UserError(f"unknown format {fmt!r}", "use --format md or --format json")
    import json
    with opened() as lv:
        svc = audit_of(lv)
        reg = svc.register()
    text = svc.register_markdown(reg) if fmt == "md" else json.dumps(reg, ensure_ascii=False,
                                                                       indent=1) + "\n"
    if out is not None:
        with writing(out):
            output_file(out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
