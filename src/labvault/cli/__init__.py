"""``labvault`` command line (Typer). Every command goes through the core services.

Sub-command groups live in their own modules and are registered here.
"""

from __future__ import annotations

from pathlib import Path

import typer

from labvault.cli import _common
from labvault.cli.audit import app as audit_app
from labvault.cli.backup import app as backup_app
from labvault.cli.breach import app as breach_app
from labvault.cli.delivery import app as delivery_app
from labvault.cli.guard import register as register_guard
from labvault.cli.keys import app as keys_app
from labvault.cli.lab import register as register_lab
from labvault.cli.patients import app as patient_app
from labvault.cli.system import register as register_system
from labvault.cli.tenants import app as tenant_app
from labvault.cli.users import app as user_app
from labvault.cli.users import policy_app

app = typer.Typer(
    name="labvault",
    help="labvault: sealed patient records for clinical laboratories.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    data_dir: Path = typer.Option(None, "--data-dir", envvar="LABVAULT_DATA_DIR",
                                  help="Data directory (default ./var)."),
) -> None:
    _common.state.data_dir = data_dir


register_system(app)
app.add_typer(tenant_app, name="tenant", help="Laboratories (tenants).")
app.add_typer(patient_app, name="patient", help="Patients: import, find, show, erase.")
app.add_typer(keys_app, name="keys", help="Key rotation.")
app.add_typer(backup_app, name="backup",
              help="Backups (SQLite copy or pg_dump archive): create one, check one.")
app.add_typer(user_app, name="user", help="Named personal accounts.")
app.add_typer(policy_app, name="policy", help="The access policy table.")
register_guard(app)
app.add_typer(audit_app, name="audit", help="Audit trail: verify, checkpoint, prove, reports.")
register_lab(app)
app.add_typer(delivery_app, name="delivery",
              help="Results to prescribers' systems: destinations, sender, outbox (HL7 MLLP).")
app.add_typer(breach_app, name="breach", help="Breach register, dump triage, notices.")


def main() -> None:
    app()
