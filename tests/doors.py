"""Shared by the tests of the listening doors (``labvault mllp``, ``labvault serve``):
a refusal before anything starts, and stopping a server process."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner


def assert_refused(command: str, args: list[str], says: str, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``labvault <command> --port 0 <args>`` exits 2 saying ``says``, before it opened or
    created anything in the data directory."""
    from labvault.cli import app
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABVAULT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LABVAULT_KEY_FILE", str(tmp_path / "root.key"))
    res = CliRunner().invoke(app, [command, "--port", "0", *args])
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split())
    assert not (tmp_path / "var").exists()


def stop(proc: subprocess.Popen[str], sig: signal.Signals = signal.SIGTERM) -> None:
    """Ask a server process to stop; kill it if it has not within 30 s."""
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
