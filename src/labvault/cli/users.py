"""``labvault user …`` (named accounts) and ``labvault policy doc`` (the policy table as Markdown)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from labvault.cli._common import JsonOpt, emit, err_console, opened, out_console, user_errors
from labvault.domain.actors import Actor

app = typer.Typer(no_args_is_help=True, help="Named personal accounts (staff, patients).")
policy_app = typer.Typer(no_args_is_help=True, help="The access policy table.")
AccountArg = typer.Argument(..., help="Account id (acct_...).")


@app.command("add")
@user_errors
def add(tenant: str = typer.Option(None, "--tenant", help="Laboratory id (omit for a "
                                   "platform_operator)."),
        role: list[str] = typer.Option(..., "--role", help="Role (repeat for several): "
                                       "reception, technician, biologist, lab_admin, dpo, "
                                       "platform_operator, patient."),
        name: str = typer.Option(..., "--name", help="The person's first and last name."),
        email: str = typer.Option(..., "--email", help="The person's own e-mail address."),
        patient_id: str = typer.Option(None, "--patient-id", help="Patient accounts: the record."),
        password_stdin: bool = typer.Option(False, "--password-stdin",
                                            help="Read the initial password from stdin; "
                                            "otherwise print a one-time enrolment link."),
        as_json: bool = JsonOpt) -> None:
    """Create a named account. The TOTP secret (otpauth URI) or the enrolment link is shown once."""
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    with opened() as lv:
        out = lv.accounts.create(Actor.operator(), tenant, role, name, email, password=password,
                                 patient_id=patient_id)
    _emit_with_secrets(out, as_json, f"account {out['id']} created ({', '.join(out['roles'])})")


def _emit_with_secrets(out: dict[str, Any], as_json: bool, headline: str) -> None:
    """What is shown once (TOTP URI, recovery codes, one-time link); the link's bare token
    is left out: the link carries it."""
    out.pop("enrolment_token", None)

    def human() -> None:
        out_console.print(headline)
        if out.get("otpauth_uri"):
            out_console.print(f"authenticator (shown once): {out['otpauth_uri']}")
        if out.get("recovery_codes"):
            out_console.print("recovery codes (shown once): " + " ".join(out["recovery_codes"]))
        if out.get("enrolment_link"):
            out_console.print(f"one-time enrolment link (valid until "
                              f"{out['enrolment_expires_at']}): {out['enrolment_link']}")
    emit(out, as_json, human)


def _admin(action: str, account_id: str, as_json: bool) -> None:
    with opened() as lv:
        fn = {"disable": lv.accounts.disable, "enable": lv.accounts.enable,
              "unlock": lv.accounts.unlock, "reset-mfa": lv.accounts.reset_mfa,
              "show": lv.accounts.get}[action]
        out = fn(Actor.operator(), account_id)
    emit(out, as_json, lambda: out_console.print_json(data=out))


@app.command("disable")
@user_errors
def disable(account_id: str = AccountArg, as_json: bool = JsonOpt) -> None:
    """Disable an account; its sessions end at once."""
    _admin("disable", account_id, as_json)


@app.command("enable")
@user_errors
def enable(account_id: str = AccountArg, as_json: bool = JsonOpt) -> None:
    """Re-enable a disabled account."""
    _admin("enable", account_id, as_json)


@app.command("unlock")
@user_errors
def unlock(account_id: str = AccountArg, as_json: bool = JsonOpt) -> None:
    """Clear failed-login counters and lockout of an account."""
    _admin("unlock", account_id, as_json)


@app.command("reset-mfa")
@user_errors
def reset_mfa(account_id: str = AccountArg, as_json: bool = JsonOpt) -> None:
    """Forget the TOTP secret and recovery codes; the user enrols again at next login."""
    _admin("reset-mfa", account_id, as_json)


@app.command("reissue-enrolment")
@user_errors
def reissue_enrolment(account_id: str = AccountArg, as_json: bool = JsonOpt) -> None:
    """A new one-time enrolment link for an account that has not finished enrolment; any
    earlier link stops working. The link is shown once."""
    with opened() as lv:
        out = lv.accounts.reissue_enrolment(Actor.operator(), account_id)
    _emit_with_secrets(out, as_json, f"account {account_id}: new enrolment link, earlier "
                       "links revoked")


@app.command("reset-password")
@user_errors
def reset_password(account_id: str = AccountArg, as_json: bool = JsonOpt) -> None:
    """The current password stops working and sessions end; a one-time link (shown once)
    lets the holder choose a new one. Staff keep their TOTP (see reset-mfa)."""
    with opened() as lv:
        out = lv.accounts.reset_password(Actor.operator(), account_id)
    _emit_with_secrets(out, as_json, f"account {account_id}: password reset, sessions ended")


@app.command("show")
@user_errors
def show(account_id: str = AccountArg, as_json: bool = JsonOpt) -> None:
    """Show an account (name and e-mail are unsealed for the operator)."""
    _admin("show", account_id, as_json)


@app.command("roles")
@user_errors
def roles(account_id: str = AccountArg,
          role: list[str] = typer.Option(..., "--role", help="New role set (repeat)."),
          as_json: bool = JsonOpt) -> None:
    """Replace the roles of an account (applies to live sessions at once)."""
    with opened() as lv:
        out = lv.accounts.set_roles(Actor.operator(), account_id, role)
    emit(out, as_json, lambda: out_console.print_json(data=out))


@policy_app.command("doc")
def policy_doc(output: Path = typer.Option(None, "--output", "-o",
                                           help="Write here (default: stdout)."),
               check: bool = typer.Option(False, "--check",
                                          help="Exit 1 if --output differs from the table.")
               ) -> None:
    """Render docs/access-policy.md from the policy table."""
    from labvault.access.policy import render_markdown
    text = render_markdown()
    if output is None:
        sys.stdout.write(text)
        return
    if check:
        if not output.exists() or output.read_text() != text:
            err_console.print(f"{output} differs from the policy table; "
                              "run `labvault policy doc -o {output}`")
            raise typer.Exit(1)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
