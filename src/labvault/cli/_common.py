"""What every CLI command shares: opening the core, JSON output, typed errors -> exit 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from labvault.config import Settings
from labvault.errors import IntegrityError, UserError
from labvault.services.app import Labvault

P = ParamSpec("P")
R = TypeVar("R")

# Messages are never hard-wrapped: a path or an id cut by an inserted newline (Rich wraps
# at 80 columns when stderr is not a terminal) can no longer be copied or grepped from a log.
err_console = Console(stderr=True, soft_wrap=True)
out_console = Console()


class State:
    data_dir: Path | None = None


state = State()

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def settings() -> Settings:
    return Settings.from_env(state.data_dir)


@contextmanager
def opened() -> Iterator[Labvault]:
    from labvault.services.wiring import open_labvault
    lv = open_labvault(settings())
    try:
        yield lv
    finally:
        lv.close()


def output_file(path: Path) -> Path:
    """An ``--out FILE`` to write: checked before any work (a clear error, not a
    traceback once the work is done)."""
    if path.is_dir():
        raise UserError(f"{path} is a directory", "give a file path for --out")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: there is no directory {path.parent}",
                        "create the directory first, or choose another --out")
    return path


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """OS errors while writing ``path`` (permissions, a full disk) as a user error."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}",
                        "check the directory's permissions and free space") from None


def _default(o: object) -> object:
    if isinstance(o, datetime | date):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | frozenset | tuple):
        return sorted(o) if isinstance(o, set | frozenset) else list(o)
    raise TypeError(type(o).__name__)


def emit(data: Any, as_json: bool, human: Callable[[], None] | None = None) -> None:
    if as_json or human is None:
        sys.stdout.write(json.dumps(data, default=_default, ensure_ascii=False) + "\n")
    else:
        human()


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Typed user errors -> a clear message on stderr and exit code 2."""
    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            # The message and hint carry user input (paths, values): printed as text, not
            # markup, so a "[...]" in a file name is shown, not taken for a style.
            err_console.print(Text.assemble(("error:", "bold red"), " ", exc.message))
            if exc.hint:
                err_console.print(Text("  " + exc.hint))
            raise typer.Exit(2) from None
        except IntegrityError as exc:
            # Not the user's doing: stored bytes failed authentication. Say so, no traceback.
            err_console.print(Text.assemble(("integrity error:", "bold red"), " ", str(exc)))
            err_console.print("  the stored data was altered or moved; nothing was shown. "
                              "Restore from a backup and check the audit log.", highlight=False)
            raise typer.Exit(1) from None
    return wrapper
