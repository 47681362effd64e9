"""Create or refresh ./.venv with labvault and its pinned dependencies (stdlib only)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _stamp(extras: str) -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()


def ensure(extras: str = "dev") -> Path:
    stamp = VENV / ".labvault-stamp"
    want = _stamp(extras)
    have = stamp.read_text() if stamp.exists() else ""
    # A venv installed with the extras (scripts/test) holds everything scripts/run needs:
    # alternating the README's two commands must not reinstall each time.
    if (BIN / "python").exists() and (have == want or (not extras and have == _stamp("dev"))):
        return BIN / "python"
    if not (BIN / "python").exists():
        print("creating .venv …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print("installing labvault and its pinned dependencies into .venv …", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[{extras}]" if extras else str(ROOT)], check=True)
    stamp.write_text(want)
    return BIN / "python"
