"""``labvault keys``"""

from __future__ import annotations

import typer

from labvault.cli._common import JsonOpt, emit, opened, out_console, user_errors
from labvault.domain.actors import Actor
from labvault.errors import UserError

app = typer.Typer(no_args_is_help=True)


@app.command("rotate")
@user_errors
def rotate(tenant: str = typer.Option(None, "--tenant", help="Only this laboratory."),
           root: bool = typer.Option(False, "--root",
                                     help="Rotate the root key and re-wrap every tenant key."),
           index: bool = typer.Option(False, "--index",
                                      help="Rotate the blind-index key and recompute every "
                                           "search digest from the sealed records."),
           as_json: bool = JsonOpt) -> None:
    """New key-encryption key version(s); patient data keys are re-wrapped, data untouched.
    With --index: a new blind-index key, every digest recomputed, the old key destroyed."""
    if root and tenant:
        raise UserError("--root and --tenant are exclusive",
                        "--root rotates the root key (every laboratory's keys are re-wrapped); "
                        "--tenant ID a laboratory's key-encryption key")
    if root and index:
        raise UserError("--root and --index are exclusive",
                        "--root rotates the root key; --index a laboratory's blind-index key "
                        "(run them one after the other)")
    actor = Actor.operator()
    with opened() as lv:
        if root:
            result: object = lv.keys.rotate_root(actor)
        elif index:
            from labvault.interop.hl7.archive import archived_control_key
            result = ([lv.keys.rotate_index(actor, tenant, archived_control_key)] if tenant
                      else lv.keys.rotate_index_all(actor, archived_control_key))
        elif tenant:
            result = [lv.keys.rotate_tenant(actor, tenant)]
        else:
            result = lv.keys.rotate_all(actor)
    emit({"rotated": result}, as_json, lambda: out_console.print(result))
