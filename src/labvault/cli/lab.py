"""``labvault mllp``, ``labvault ingest hl7``, ``labvault hl7-issues``, ``labvault catalogue``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from labvault.cli._common import JsonOpt, emit, err_console, opened, out_console, user_errors
from labvault.domain.actors import Actor
from labvault.errors import UserError
from labvault.textfiles import DuplicateKey, loads_unique_keys

ingest_app = typer.Typer(no_args_is_help=True)
issues_app = typer.Typer(no_args_is_help=True)
catalogue_app = typer.Typer(no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("mllp")(mllp)
    app.add_typer(ingest_app, name="ingest", help="Ingest files (HL7 v2).")
    app.add_typer(issues_app, name="hl7-issues",
                  help="Results that could not be mapped (unknown patient or code).")
    app.add_typer(catalogue_app, name="catalogue", help="Test catalogue (LOINC, ranges).")


@user_errors
def mllp(port: int = typer.Option(2575, "--port", help="TCP port (0: any free port)."),
         host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
         tenant: str = typer.Option(None, "--tenant",
                                    help="Laboratory id; default: MSH-6 = the lab's FINESS."),
         max_bytes: int = typer.Option(1 << 20, "--max-bytes", help="Largest message accepted."),
         idle_timeout: float = typer.Option(300.0, "--idle-timeout",
                                            help="Seconds of silence before a connection is "
                                                 "closed."),
         workers: int = typer.Option(4, "--workers", min=1, max=64,
                                     help="No longer used (kept for compatibility): "
                                          "messages are stored on the listener's loop, "
                                          "in batches "
                                          "(docs/hl7.md)."),
         tls_cert: Path = typer.Option(None, "--tls-cert",
                                       help="PEM certificate (chain) of the listener: MLLP "
                                            "inside TLS 1.2+."),
         tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
         tls_client_ca: Path = typer.Option(None, "--tls-client-ca",
                                            help="PEM CA: accept only senders with a "
                                                 "certificate it signed (mutual TLS)."),
         tls_crl: Path = typer.Option(None, "--tls-crl",
                                      help="PEM revocation list of --tls-client-ca: its "
                                           "revoked certificates are refused."),
         max_connections: int = typer.Option(64, "--max-connections", min=1,
                                             help="Connections open at once; more are "
                                                  "closed at once (logged)."),
         insecure_plaintext: bool = typer.Option(False, "--insecure-plaintext",
                                                 help="Listen in clear on a non-loopback "
                                                      "address (a VPN or TLS proxy protects "
                                                      "the link).")) -> None:
    """HL7 v2 over MLLP: ADT^A04/A08, ORM^O01, OML^O21, ORU^R01; ACK after commit."""
    import asyncio
    import signal

    from labvault.interop import tls
    from labvault.interop.hl7.handler import Hl7Handler
    from labvault.interop.hl7.mllp import MllpServer
    context = tls.listening_context(host, tls_cert, tls_key, tls_client_ca, insecure_plaintext,
                                    "patients' names, NIRs and results", tls_crl)
    if tls_cert is not None:
        for line in tls.expiry_lines(tls.certificate_info(tls_cert)):
            err_console.print(line, highlight=False)
    with opened() as lv:
        if tenant:
            lv.tenants.get(tenant)
        h = Hl7Handler(lv, Actor.system("mllp"), tenant)
        server = MllpServer(lambda raw: h.handle(raw)[1], host, port, max_bytes, idle_timeout,
                            workers, reject=h.reject, handle_many=h.handle_many,
                            ssl_context=context, max_connections=max_connections)

        async def run() -> None:
            # SIGTERM (systemd, docker stop) and Ctrl-C stop gracefully: no new connection,
            # the messages already read are stored and answered, then the listener ends.
            stopping = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stopping.set)
            await server.start()
            how = ("TLS, client certificates required" if tls_client_ca else "TLS") \
                if context is not None else "in clear"
            err_console.print(f"MLLP listening on {host}:{server.port}", highlight=False)
            err_console.print(f"  {how}", highlight=False)
            await stopping.wait()
            left = await server.shutdown()
            err_console.print(f"MLLP listener stopped: {server.messages} messages answered"
                              + (f", {left} left unanswered (their senders resend them)"
                                 if left else ""), highlight=False)
        try:
            asyncio.run(run())
        finally:
            server.close()


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise UserError(f"{path} is not a file or directory", "give an HL7 file or a folder of them")


@ingest_app.command("hl7")
@user_errors
def ingest_hl7(path: Path = typer.Argument(..., help="HL7 v2 file (one or more messages, "
                                                     "FHS/BHS batches too) or a directory."),
               tenant: str = typer.Option(None, "--tenant", help="Laboratory id; default MSH-6."),
               as_json: bool = JsonOpt) -> None:
    """Ingest HL7 v2 files: each message stored (or refused) on its own, as over MLLP."""
    from labvault.interop.hl7.handler import Hl7Handler
    from labvault.interop.hl7.ingest import split_file
    results: list[dict[str, object]] = []
    with opened() as lv:
        if tenant:
            lv.tenants.get(tenant)
        h = Hl7Handler(lv, Actor.operator(), tenant)
        for f in _files(path):
            for n, raw in enumerate(split_file(f.read_bytes()), start=1):
                outcome, _ack = h.handle(raw)
                results.append({"file": str(f), "message": n, "ack": outcome.ack_code,
                                "duplicate": outcome.duplicate,
                                "issues": outcome.issue_ids,
                                "errors": [f"{e.location}: {e.text}" if e.location else e.text
                                           for e in outcome.errors]})
    refused = sum(1 for r in results if r["ack"] != "AA")
    duplicates = sum(1 for r in results if r["ack"] == "AA" and r["duplicate"])
    summary = {"messages": len(results), "accepted": len(results) - refused - duplicates,
               "duplicates": duplicates, "errors": refused, "results": results}

    def human() -> None:
        out_console.print(f"{summary['messages']} messages: {summary['accepted']} accepted, "
                          f"{duplicates} already stored (resent), {refused} refused",
                          highlight=False)
        for r in results:
            if r["ack"] != "AA" or r["errors"]:
                out_console.print(f"  {r['file']} #{r['message']} {r['ack']}: "
                                  f"{'; '.join(r['errors'])}", highlight=False)  # type: ignore[arg-type]
    emit(summary, as_json, human)
    if refused:
        # a file drop run by cron must see a partial failure, not only a total one
        err_console.print(f"error: {refused} of {len(results)} messages refused (nothing of "
                          "them stored): correct and send them again", highlight=False)
        raise typer.Exit(2)


@issues_app.command("list")
@user_errors
def issues_list(tenant: str = typer.Option(..., "--tenant", help="Laboratory id."),
                all_: bool = typer.Option(False, "--all", help="Resolved/discarded too."),
                as_json: bool = JsonOpt) -> None:
    """Import issues (opened through the gate, audited)."""
    with opened() as lv:
        lv.tenants.get(tenant)          # a typo: "no laboratory", not an empty list
        items = lv.lab.messages.list_issues(Actor.operator(), tenant, None if all_ else "open")

    def human() -> None:
        for i in items:
            for line in issue_lines(i):
                out_console.print(line, highlight=False)
        if not items:
            out_console.print("no import issue")
    emit(items, as_json, human)


def issue_lines(issue: dict[str, object]) -> list[str]:
    """One import issue as the person working the queue reads it: what and why, whose
    results (the patient's id, or the name, birth date and sex the sender gave: what to
    look the patient up by) and which results (test, value, unit, the sender's flag)."""
    lines = [f"{issue['id']}  {issue['status']:9} {issue['kind']:16} {issue.get('reason', '')}"]
    sent = issue.get("patient")
    summary = sent.get("summary") if isinstance(sent, dict) else None
    if issue.get("patient_id"):
        lines.append(f"    patient: {issue['patient_id']}")
    elif isinstance(summary, dict) and any(summary.values()):
        born = str(summary.get("birth_date") or "")
        born = f"{born[:4]}-{born[4:6]}-{born[6:8]}" if len(born) == 8 else born or "?"
        lines.append(f"    patient as sent: {summary.get('name') or '?'}, born {born}, "
                     f"sex {summary.get('sex') or '?'} (labvault patient find ...)")
    results = issue.get("results")
    for r in results if isinstance(results, list) else ():
        if not isinstance(r, dict):
            continue
        coded: dict[str, object] = r["coded"] if isinstance(r.get("coded"), dict) else {}
        value = (r.get("numeric") or coded.get("display") or coded.get("code")
                 or r.get("text") or "")
        name = f" ({r['display']})" if r.get("display") else ""
        flag = f" [{r['flags']}]" if r.get("flags") else ""
        lines.append(f"    result {r.get('code')}{name}: {value} {r.get('unit') or ''}".rstrip()
                     + flag)
    handled = issue.get("resolution")
    if isinstance(handled, dict):
        lines.append("    " + handled_line(handled))
    return lines


def handled_line(resolution: dict[str, object]) -> str:
    """Who handled an issue, when, and how (a discard's reason; the results stored)."""
    who = resolution.get("by_name") or resolution.get("by") or "?"
    at = str(resolution.get("at") or "?")[:19].replace("T", " ")
    if resolution.get("discarded"):
        why = resolution.get("reason")
        return f"discarded by {who} at {at} UTC" + (f": {why}" if why else "")
    stored = resolution.get("observation_ids")
    return (f"resolved by {who} at {at} UTC"
            + (f": {len(stored)} results stored" if isinstance(stored, list) else ""))


@issues_app.command("resolve")
@user_errors
def issues_resolve(issue_id: str = typer.Argument(..., help="Issue id (iss_...)."),
                   patient: str = typer.Option(None, "--patient", help="Patient id (pt_...)."),
                   code: list[str] = typer.Option(
                       [], "--code", help="LOCAL=LOINC: what an unknown code means (once per "
                                          "code); LOINC alone when the issue has one unknown "
                                          "code."),
                   discard: bool = typer.Option(False, "--discard", help="Close without storing."),
                   reason: str = typer.Option(None, "--reason", help="Why (required to discard)."),
                   all_results: bool = typer.Option(False, "--all-results",
                                                    help="Discard an issue holding several "
                                                         "results (all of them)."),
                   as_json: bool = JsonOpt) -> None:
    """Store the kept results with the right patient and/or codes, or discard them."""
    bare, codes = _codes(code)
    with opened() as lv:
        if discard:
            data = lv.lab.messages.discard_issue(Actor.operator(), issue_id, reason,
                                                 all_results)
        else:
            data = lv.lab.messages.resolve_issue(Actor.operator(), issue_id, patient_id=patient,
                                                 code=bare, codes=codes)

    def human() -> None:
        if data["status"] == "discarded":
            out_console.print(f"issue {issue_id} discarded ({data['results_discarded']} "
                              "results not stored)", highlight=False)
            return
        left = data.get("left_as") or []
        out_console.print(f"issue {issue_id} resolved: {len(data['observation_ids'])} results "
                          "stored" + (f"; the rest kept as issue {', '.join(left)}" if left
                                      else ""), highlight=False)
    emit(data, as_json, human)


def _codes(given: list[str]) -> tuple[str | None, dict[str, str]]:
    """--code values: LOCAL=LOINC pairs, or one LOINC alone."""
    bare = [c for c in given if "=" not in c]
    if len(bare) > 1:
        raise UserError(f"--code {' '.join(bare)}: several codes without their local code",
                        "give --code LOCAL=LOINC for each unknown code")
    pairs = [c.split("=", 1) for c in given if "=" in c]
    if any(not a.strip() or not b.strip() for a, b in pairs):
        raise UserError("--code needs LOCAL=LOINC (both sides)", "e.g. --code GLUX=2345-7")
    return (bare[0] if bare else None), {a.strip(): b.strip() for a, b in pairs}


@catalogue_app.command("load")
@user_errors
def catalogue_load(file: Path = typer.Argument(..., help="Catalogue JSON (docs/lab.md)."),
                   tenant: str = typer.Option(..., "--tenant", help="Laboratory id."),
                   as_json: bool = JsonOpt) -> None:
    """Install a laboratory's own catalogue (replaces the shipped default for that lab)."""
    try:
        data = loads_unique_keys(file.read_text("utf-8-sig"))   # a BOM (Notepad) is fine
    except DuplicateKey as exc:
        raise UserError(f"{file}: line {exc.line}: the key {exc.key!r} appears twice in the "
                        "object opened there", "keep one value per key, then load the "
                        "catalogue again") from None
    except UnicodeDecodeError:
        raise UserError(f"{file} is not UTF-8 text", f"save it as UTF-8 (iconv -f latin1 "
                        f"-t utf8 {file} > {file}.utf8.json)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {file}: {exc}", "give a JSON catalogue file") from None
    with opened() as lv:
        lv.tenants.get(tenant)
        info = lv.lab.load_catalogue(Actor.operator(), tenant, data)
    emit(info, as_json, lambda: out_console.print(
        f"catalogue {info['version']} loaded ({info['tests']} tests)"))


@catalogue_app.command("show")
@user_errors
def catalogue_show(tenant: str = typer.Option(..., "--tenant", help="Laboratory id."),
                   code: str = typer.Option(None, "--code",
                                            help="Only this test (LOINC or local code)."),
                   as_json: bool = JsonOpt) -> None:
    """The catalogue in force for a laboratory: each test with its ranges and panic
    limits, as loaded."""
    with opened() as lv:
        lv.tenants.get(tenant)          # a typo: "no laboratory", not the default catalogue
        cat = lv.lab.catalogue(tenant)
    tests = list(cat.tests.values())
    if code is not None:
        one = cat.get(code)
        if one is None:
            raise UserError(f"{code} is not in catalogue {cat.version}",
                            "give a LOINC or local code of the catalogue")
        tests = [one]
    data = {"version": cat.version, "tests": [t.as_json() for t in tests]}

    def human() -> None:
        out_console.print(f"catalogue {cat.version}")
        for t in tests:
            panic = " ".join(p for p in (f"<{t.panic_low:g}" if t.panic_low is not None else "",
                                         f">{t.panic_high:g}" if t.panic_high is not None
                                         else "") if p)
            # the French label people read on reports, then LOINC's name when it differs
            name = t.name if t.label is None else f"{t.label} -- LOINC: {t.display}"
            out_console.print(f"  {t.code:9} {t.unit or '':9} {name}"
                              + (f"  (panic {panic})" if panic else ""), highlight=False)
            for r in t.ranges:
                out_console.print(f"      {r.band()}: {r.display(t.unit)}", highlight=False)
            if t.delta is not None and t.delta.identical:
                out_console.print(f"      delta check: any other result than the previous one "
                                  f"within {t.delta.days} days", highlight=False)
            elif t.delta is not None:
                limits = " or ".join(x for x in (
                    f"{t.delta.absolute:g} {t.unit or ''}".rstrip()
                    if t.delta.absolute is not None else "",
                    f"{t.delta.percent:g} %" if t.delta.percent is not None else "") if x)
                out_console.print(f"      delta check: a change beyond {limits} within "
                                  f"{t.delta.days} days", highlight=False)
    emit(data, as_json, human)
