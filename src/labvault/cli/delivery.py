"""``labvault delivery``: where reports go (HL7 ORU^R01 over MLLP), the sender, the outbox."""

from __future__ import annotations

from pathlib import Path

import typer

from labvault.cli._common import JsonOpt, emit, err_console, opened, out_console, user_errors
from labvault.domain.actors import Actor
from labvault.errors import UserError

app = typer.Typer(no_args_is_help=True)

TenantOpt = typer.Option(..., "--tenant", help="Laboratory id.")


@app.command("add")
@user_errors
def add(tenant: str = TenantOpt,
        name: str = typer.Option(..., "--name", help="What the destination is (e.g. the "
                                                     "hospital's name); stored sealed."),
        host: str = typer.Option(..., "--host", help="The receiver's MLLP host."),
        port: int = typer.Option(..., "--port", help="The receiver's MLLP port."),
        rpps: list[str] = typer.Option(None, "--rpps",
                                       help="RPPS number of a prescriber whose reports go "
                                            "there (repeat the option for several)."),
        all_orders: bool = typer.Option(False, "--all",
                                        help="Every report of the laboratory goes there."),
        tls_ca: Path = typer.Option(None, "--tls-ca",
                                    help="PEM CA that signed the receiver's certificate "
                                         "(MLLP inside TLS 1.2+)."),
        tls_cert: Path = typer.Option(None, "--tls-cert",
                                      help="PEM client certificate labvault presents, when "
                                           "the receiver asks for one."),
        tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
        insecure_plaintext: bool = typer.Option(False, "--insecure-plaintext",
                                                help="Send in clear, without TLS (a VPN "
                                                     "protects the link)."),
        as_json: bool = JsonOpt) -> None:
    """Register where a laboratory's reports go."""
    with opened() as lv:
        d = lv.delivery.add_destination(Actor.operator(), tenant, name, host, port,
                                        rpps or (), all_orders, tls_ca, tls_cert, tls_key,
                                        insecure_plaintext)
    if insecure_plaintext:
        err_console.print("[bold yellow]warning:[/] reports to this destination cross the "
                          "network in clear (names, NIRs, results): only over a VPN or "
                          "on this host", highlight=False)
    emit(d, as_json, lambda: out_console.print(
        f"destination {d['id']} added: {d['host']}:{d['port']} ({d['transport']}), "
        + ("every report" if d["routing"] == "all"
           else f"reports of {d['prescribers']} prescriber(s)"), highlight=False,
        markup=False))


@app.command("list")
@user_errors
def list_(tenant: str = TenantOpt,
          removed: bool = typer.Option(False, "--removed",
                                       help="Also list removed destinations."),
          as_json: bool = JsonOpt) -> None:
    """The laboratory's destinations."""
    with opened() as lv:
        rows = lv.delivery.list_destinations(Actor.operator(), tenant, removed)

    def human() -> None:
        if not rows:
            out_console.print("no destination: reports are not sent to any prescriber's "
                              "system", highlight=False)
        for r in rows:
            what = "every report" if r["routing"] == "all" \
                else f"{r['prescribers']} prescriber(s)"
            # the name and host are the operator's text: printed as is, never as markup
            out_console.print(f"{r['id']}  {r['status']:8} {r['host']}:{r['port']} "
                              f"{r['transport']:9} {what}  {r['name']}", highlight=False,
                              markup=False)
    emit(rows, as_json, human)


@app.command("remove")
@user_errors
def remove(tenant: str = TenantOpt,
           destination: str = typer.Argument(..., help="Destination id (delivery list)."),
           as_json: bool = JsonOpt) -> None:
    """Stop sending to a destination (its queued messages are failed and alerted)."""
    with opened() as lv:
        d = lv.delivery.remove_destination(Actor.operator(), tenant, destination)
    emit(d, as_json, lambda: out_console.print(f"destination {destination} removed",
                                               highlight=False))


@app.command("send")
@user_errors
def send(once: bool = typer.Option(False, "--once",
                                   help="One pass over the due messages, then exit."),
         tenant: str = typer.Option(None, "--tenant",
                                    help="Only this laboratory's messages (default: all)."),
         interval: float = typer.Option(10.0, "--interval", min=0.1,
                                        help="Seconds between passes (without --once)."),
         max_attempts: int = typer.Option(8, "--max-attempts", min=1,
                                          help="Attempts before a message is failed and "
                                               "alerted."),
         backoff: float = typer.Option(30.0, "--backoff", min=0.0,
                                       help="Seconds before the 2nd attempt, doubled after "
                                            "each failure (at most an hour)."),
         timeout: float = typer.Option(30.0, "--timeout", min=0.1,
                                       help="Seconds to connect, and to wait for the ACK."),
         as_json: bool = JsonOpt) -> None:
    """Send the queued ORU^R01 messages over MLLP and record their ACKs."""
    from labvault.interop.hl7.outbound import Sender, send_due
    with opened() as lv:
        if tenant:
            lv.tenants.get(tenant)
        if once:
            rep = send_due(lv, tenant, max_attempts, backoff, timeout)
            emit(rep.as_json(), as_json, lambda: out_console.print(
                f"delivered {rep.delivered}, refused {rep.refused}, to retry "
                f"{rep.retrying}, failed {rep.failed}", highlight=False))
            return
        if tenant:
            raise UserError("--tenant goes with --once",
                            "the continuous sender sends every laboratory's messages")
        sender = Sender(lv, interval, max_attempts, backoff, timeout)
        err_console.print(f"sending queued reports every {interval:g} s (Ctrl-C to stop)",
                          highlight=False)
        try:
            sender.run()
        except KeyboardInterrupt:
            err_console.print("sender stopped", highlight=False)


@app.command("status")
@user_errors
def status(tenant: str = TenantOpt,
           pending: bool = typer.Option(False, "--pending", help="Only messages waiting."),
           failed: bool = typer.Option(False, "--failed",
                                       help="Only messages that will not be delivered."),
           report: str = typer.Option(None, "--report", help="Only this report's messages."),
           as_json: bool = JsonOpt) -> None:
    """The outbox: ids, state, attempts, errors (never the message itself)."""
    statuses = [s for s, on in (("pending", pending), ("failed", failed)) if on]
    with opened() as lv:
        rows = lv.delivery.status(Actor.operator(), tenant, statuses, report)

    def human() -> None:
        if not rows:
            out_console.print("nothing", highlight=False)
        for r in rows:
            out_console.print(f"{r['id']}  {r['status']:9} {r['kind']:9} report {r['report_id']}"
                              f" -> {r['destination_id']}  attempts {r['attempts']}"
                              + (f"  {r['error']}" if r["error"] else ""), highlight=False,
                              markup=False)
    emit(rows, as_json, human)


@app.command("resend")
@user_errors
def resend(outbox_id: str = typer.Argument(..., help="The failed message's id (`out_...`, "
                                                     "from delivery status --failed)."),
           reason: str = typer.Option(..., "--reason",
                                      help="Why it is sent again (e.g. the patient now "
                                           "exists in the doctor's software); audited, "
                                           "sealed."),
           tenant: str = typer.Option(None, "--tenant",
                                      help="Laboratory id (default: the one holding the "
                                           "message)."),
           as_json: bool = JsonOpt) -> None:
    """Send a failed message again: back to pending, sent at the next pass of the sender."""
    with opened() as lv:
        d = lv.delivery.resend(Actor.operator(), tenant, outbox_id, reason)
    emit(d, as_json, lambda: out_console.print(
        f"message {d['id']} pending again: sent at the next pass of `labvault delivery send`"
        + (f"; alert {d['alert_acked']} acknowledged" if d["alert_acked"] else ""),
        highlight=False, markup=False))
