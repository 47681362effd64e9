"""Shared by the HTTP benchmarks: lift the guard's read budgets of the bench's labs.

Clients that open hundreds of records a second are what the read budgets exist to stop:
within seconds their accounts would be suspended and every later request refused (401/429),
and the bench would time refusals. A lab running a batch job would raise them the same way.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

ROLES = ("biologist", "technician", "reception")


def raise_read_budgets(labvault: Path, env: Mapping[str, str], tenant_ids: Iterable[str]) -> None:
    big = str(10**9)
    settings = [f"budget.{r}.{w}={big}" for r in ROLES for w in ("10m", "day")]
    settings.append(f"rule.enumeration.10m={big}")
    for tenant in tenant_ids:
        subprocess.run([str(labvault), "guard", "config", "--tenant", tenant,
                        *[x for kv in settings for x in ("--set", kv)]],
                       env=dict(env), check=True, capture_output=True)
