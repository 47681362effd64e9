"""Schemathesis against the OpenAPI document with valid credentials: no request may
produce a 5xx. Shared by the in-suite run (tests/access/test_fuzz.py) and the long
run (bench/api_fuzz.py)."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hseed

from labvault.api.app import create_app
from labvault.errors import AuthenticationFailed
from labvault.services.app import Labvault
from tests.access.conftest import PASSWORD, World


def fuzz(world: World, total: int, seed: int = 0) -> Counter[int]:
    """Spread ``total`` generated requests over every operation; return status counts.
    Raises AssertionError on the first 5xx."""
    from labvault.services.audit import install_audit
    lv: Labvault = world.lv
    install_audit(lv)                    # the real, tamper-evident audit log behind the gate
    app = create_app(lv)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    roles = ["biologist", "reception", "technician", "lab_admin", "dpo", "patient"]
    tokens: dict[str, str] = {}

    def token(role: str) -> str:
        tok = tokens.get(role)
        if tok is not None:
            try:
                lv.accounts.resolve(tok)
                return tok
            except AuthenticationFailed:  # revoked by a generated logout / password change
                tokens.pop(role)
        code = None if role == "patient" else world.clock.code()
        tokens[role] = lv.accounts.login(world.a.emails[role], PASSWORD, code).token
        return tokens[role]

    ops = [r.ok() for r in schema.get_all_operations()]
    per_op = max(1, total // len(ops))
    statuses: Counter[int] = Counter()
    role_cycle = itertools.cycle(roles)
    failures: list[str] = []

    rnd = seed
    while sum(statuses.values()) < total:
        before = sum(statuses.values())
        for op in ops:
            def make(op: Any, rnd: int) -> Any:
                @hseed(rnd)
                @settings(max_examples=per_op, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(case=op.as_strategy())
                def run(case: Any) -> None:
                    role = next(role_cycle)
                    headers = {"Authorization": f"Bearer {token(role)}"}
                    resp = case.call(headers=headers)
                    statuses[resp.status_code] += 1
                    if resp.status_code >= 500:
                        failures.append(f"{op.method.upper()} {op.path} as {role}: "
                                        f"{resp.status_code} {resp.text[:200]}")
                        raise AssertionError(failures[-1])

                return run

            make(op, rnd)()
        rnd += 1
        if sum(statuses.values()) == before:
            break
    assert not failures, failures
    return statuses
