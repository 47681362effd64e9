"""``labvault breach ...``: the breach register, dump triage and notices (docs/breach.md)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from labvault.cli._common import JsonOpt, emit, err_console, opened, out_console, user_errors
from labvault.domain.actors import Actor

app = typer.Typer(no_args_is_help=True, help="Breach register, dump triage, notices.")


def _deadline_line(case: dict[str, Any]) -> str:
    left = case["hours_left"]
    state = f"{left} h left" if left >= 0 else f"OVERDUE by {-left} h"
    return f"72 h deadline {case['deadline_at']} ({state})"


@app.command("open")
@user_errors
def open_case(title: str = typer.Option(..., "--title", help="Short title of the incident."),
              aware_at: str = typer.Option(..., "--aware-at",
                                           help="When you became aware (ISO 8601 with zone); "
                                                "starts the 72 h clock."),
              description: str = typer.Option(None, "--description", help="What is known."),
              as_json: bool = JsonOpt) -> None:
    """Open a breach case (GDPR Art. 33(5) register)."""
    with opened() as lv:
        cid = lv.breach.open_case(Actor.operator(), title, aware_at, description)
        case = lv.breach.show(Actor.operator(), cid)
    emit({"case": cid, "aware_at": case["aware_at"], "deadline_at": case["deadline_at"],
          "hours_left": case["hours_left"]}, as_json,
         lambda: out_console.print(f"case {cid} opened — {_deadline_line(case)}"))


@app.command("list")
@user_errors
def list_cases(as_json: bool = JsonOpt) -> None:
    """Breach cases with their 72 h deadline."""
    with opened() as lv:
        cases = lv.breach.list_cases(Actor.operator())

    def human() -> None:
        for c in cases:
            out_console.print(f"{c['case_id']}  [{c['status']}]  {c['title']}  — "
                              f"{_deadline_line(c)}", highlight=False)
        if not cases:
            out_console.print("no breach case")
    emit(cases, as_json, human)


def event_text(e: dict[str, Any]) -> str:
    """One timeline line's text: what a triage found, how severe, to whom a notification
    went (the triage line was empty)."""
    kind = e["kind"]
    if kind == "triage":
        labs = e.get("per_tenant") or {}
        persons = sum(v["patients"] for v in labs.values())
        return (f"{e['rows']} rows, {e['rows'] - e['unmatched_rows']} matched: {persons} "
                f"patients in {len(labs)} lab(s)")
    if kind == "severity":
        return f"{e['level']} ({e['score']}), {e.get('persons', 0)} persons"
    if kind == "evidence":
        return f"{e['name']} ({e['bytes']} bytes, SHA-256 {e['sha256'][:16]}…)"
    if kind == "notification":
        return f"{e['type']} to {', '.join(e.get('to', []))}"
    return str(e.get("text") or e.get("status") or "")


@app.command("show")
@user_errors
def show(case_id: str = typer.Argument(..., help="Case id (brc_...)."),
         matches: bool = typer.Option(False, "--matches", help="Include matched rows."),
         as_json: bool = JsonOpt) -> None:
    """A case: timeline, evidence, triage, severity, decisions, notifications, measures."""
    with opened() as lv:
        case = lv.breach.show(Actor.operator(), case_id, with_matches=matches)

    def human() -> None:
        out_console.print(f"{case['case_id']}  [{case['status']}]  {case['title']}",
                          highlight=False)
        out_console.print(_deadline_line(case))
        for e in case["timeline"]:
            out_console.print(f"  {e['at']}  {e['kind']:<12} {event_text(e)}",
                              highlight=False)
    emit(case, as_json, human)


@app.command("record")
@user_errors
def record(case_id: str = typer.Argument(..., help="Case id (brc_...)."),
           kind: str = typer.Option(..., "--kind", help="decision | measure | note"),
           text: str = typer.Option(..., "--text", help="The text (sealed)."),
           as_json: bool = JsonOpt) -> None:
    """Add a decision, a measure taken, or a note to the case timeline."""
    with opened() as lv:
        eid = lv.breach.record(Actor.operator(), case_id, kind, text)
    emit({"case": case_id, "event_id": eid}, as_json,
         lambda: out_console.print(f"{kind} recorded ({eid})"))


@app.command("close")
@user_errors
def close(case_id: str = typer.Argument(..., help="Case id (brc_...)."),
          as_json: bool = JsonOpt) -> None:
    """Close a case."""
    with opened() as lv:
        lv.breach.close(Actor.operator(), case_id)
    emit({"case": case_id, "status": "closed"}, as_json,
         lambda: out_console.print(f"case {case_id} closed"))


@contextmanager
def _progress(paths: list[Path]) -> Iterator[Any]:
    """A byte-count progress bar on a terminal; nothing when piped."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
    total = sum(p.stat().st_size for p in paths if p.is_file())
    with Progress("reading", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("read", total=total)
        yield lambda n: bar.advance(task, n)


@app.command("triage")
@user_errors
def triage(dumps: list[Path] = typer.Argument(..., help="Leaked file(s)."),
           case_id: str = typer.Option(..., "--case", help="Case id (brc_...)."),
           fmt: str = typer.Option("auto", "--format",
                                   help="auto | csv | json | ndjson | sql | xlsx"),
           recipients: str = typer.Option("unknown", "--recipients",
                                          help="Who got the data: none | known | unknown."),
           malicious: bool = typer.Option(True, "--malicious/--accidental",
                                          help="Malicious intent (ENISA +0.5) or not."),
           workers: int = typer.Option(1, "--workers", min=1, max=64,
                                       help="Processes for the exact tier."),
           as_json: bool = JsonOpt) -> None:
    """Match a leaked file to patients without unsealing the store; attribute; score."""
    from labvault.breach.severity import Circumstances
    with opened() as lv, _progress(list(dumps)) as progress:
        res = lv.breach.triage(Actor.operator(), case_id, list(dumps), fmt, progress,
                               Circumstances(recipients=recipients, malicious=malicious),
                               workers=workers)

    def human() -> None:
        exact = sum(1 for m in res["matches"] if m["method"] == "exact")
        out_console.print(f"{res['rows']} rows: {exact} exact + {len(res['matches']) - exact} "
                          f"fuzzy matches, {res['unmatched_rows']} unmatched")
        for c in res["columns"]:
            out_console.print(f"  column {c['index']} {c['header'] or '-'}: {c['detected']} "
                              f"({c['confidence']})", highlight=False)
        for t, v in res["per_tenant"].items():
            out_console.print(f"  {t}: {v['patients']} patients, {', '.join(v['categories'])}")
        for t, n in res.get("unencoded", {}).items():
            out_console.print(f"  warning: {t}: {n} patients have no matching encoding, so the "
                              "fuzzy tier could not find them: run `labvault breach backfill` "
                              "and triage again", highlight=False)
        s = res["severity"]
        out_console.print(f"severity {s['score']} ({s['level']}): {s['rationale']}",
                          highlight=False)
    emit(res, as_json, human)


@app.command("notify")
@user_errors
def notify(case_id: str = typer.Argument(..., help="Case id (brc_...), triaged."),
           out: Path = typer.Option(..., "--out", help="Directory for the notices."),
           kind: str = typer.Option(None, "--type", help="initial | complementary "
                                                        "(default: from the register)"),
           dpo_name: str = typer.Option(None, "--dpo-name",
                                        help="DPO's name (default LABVAULT_DPO_NAME)."),
           dpo_email: str = typer.Option(None, "--dpo-email",
                                         help="DPO's e-mail (default LABVAULT_DPO_EMAIL)."),
           dpo_phone: str = typer.Option(None, "--dpo-phone",
                                         help="DPO's phone (default LABVAULT_DPO_PHONE)."),
           delay_reasons: str = typer.Option(None, "--delay-reasons",
                                             help="Why later than 72 h (Art. 33(1))."),
           as_json: bool = JsonOpt) -> None:
    """Write the CNIL (Art. 33), ARS/CERT Santé and patient (Art. 34) notices."""
    from labvault.services.breach import dpo_from_env
    dpo = dpo_from_env()
    for k, v in (("name", dpo_name), ("email", dpo_email), ("phone", dpo_phone)):
        if v:
            dpo[k] = v
    with opened() as lv:
        res = lv.breach.notify(Actor.operator(), case_id, out, dpo, kind,
                               delay_reasons=delay_reasons)
    emit(res, as_json, lambda: out_console.print_json(data=res))


@app.command("backfill")
@user_errors
def backfill(tenant: str = typer.Option(None, "--tenant", help="One laboratory (default all)."),
             as_json: bool = JsonOpt) -> None:
    """Compute matching encodings for patients written before they existed."""
    with opened() as lv:
        res = lv.breach.backfill(Actor.system("breach-backfill"), tenant)
    emit(res, as_json, lambda: out_console.print_json(data=res))


def demo_breach(out: Path | None, as_json: bool) -> None:
    """``labvault demo breach``: re-enact the incident end to end, printing each step."""
    from labvault.cli._common import settings
    from labvault.services.breach_demo import run_demo
    from labvault.services.wiring import init_labvault
    s = settings()
    lv = init_labvault(s)
    steps: list[dict[str, Any]] = []

    def say(step: str, detail: str, data: dict[str, Any] | None = None) -> None:
        steps.append({"step": step, "detail": detail, **(data or {})})
        if not as_json:
            out_console.print(f"[bold]{step}[/] {detail}", highlight=False)

    try:
        run_demo(lv, out or (s.data_dir.parent / "breach-demo"), say)
    finally:
        lv.close()
    if as_json:
        emit(steps, True)
