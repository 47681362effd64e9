"""Fixtures of the access tests: a core with the table policy, a controllable clock, two
laboratories with one named account per role, and an API client."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient

from labvault.access import mfa
from labvault.access.policy import TablePolicy
from labvault.access.sessions import SessionPolicy
from labvault.api.app import create_app
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.services.gate import LogAlerts, MemoryAudit
from labvault.synthetic import make_finess, people

PASSWORD = "Sirop-Violette-Trottinette-42"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
ROLES = ("reception", "technician", "biologist", "lab_admin", "dpo", "patient",
         "platform_operator")


class Clock:
    """The core's clock, moved by tests (TOTP steps, idle and absolute timeouts)."""

    def __init__(self) -> None:
        now = int(datetime.now(UTC).timestamp())
        # one second into a TOTP step, so "a few seconds later" stays within the step
        self.t = datetime.fromtimestamp(now - now % mfa.STEP_SECONDS + 1, UTC)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)

    def code(self, secret: str = SECRET) -> str:
        """A TOTP code for a fresh time step (each login uses the next step: no replay)."""
        self.advance(seconds=mfa.STEP_SECONDS)
        return pyotp.TOTP(secret).at(int(self.t.timestamp()))


@pytest.fixture(autouse=True)
def cheap_argon2(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id at test cost (t=1, 1 MiB) so the suite stays fast; tests marked
    ``real_argon2`` (parameters, rehash) keep the production parameters."""
    if request.node.get_closest_marker("real_argon2") is None:
        from labvault.access import passwords
        monkeypatch.setattr(passwords, "_hasher", passwords.hasher(time_cost=1, memory_kib=1024))
        monkeypatch.setattr(passwords, "_DUMMY", None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_argon2: use production Argon2id parameters")


@pytest.fixture
def clock(lv: Labvault) -> Clock:
    c = Clock()
    lv.now = c  # type: ignore[method-assign]
    return c


@pytest.fixture
def alv(lv: Labvault, clock: Clock) -> Labvault:
    """The core with the table policy, in-memory audit and alerts."""
    lv.gate.policy = TablePolicy()
    lv.gate.audit = MemoryAudit()
    lv.alerts = LogAlerts()
    lv.gate.alerts = lv.alerts
    return lv


def patient_json(i: int, seed: int = 11) -> dict[str, Any]:
    return {k: v for k, v in next(people(1, seed=seed, start=i)).items() if v is not None}


_NAMES = ("Camille Durand", "Hugo Lefebvre", "Léa Moreau", "Nathan Girard", "Chloé Lambert",
          "Louis Fontaine", "Emma Rousseau", "Jules Mercier")


@dataclass
class Lab:
    tenant_id: str
    patients: list[str]
    patient_data: list[dict[str, Any]]
    accounts: dict[str, str] = field(default_factory=dict)   # role -> account id
    emails: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    lv: Labvault
    clock: Clock
    a: Lab
    b: Lab
    platform_email: str = ""
    platform_id: str = ""

    def login(self, email: str, staff: bool = True, client: str = "10.0.0.1") -> str:
        code = self.clock.code() if staff else None
        return self.lv.accounts.login(email, PASSWORD, code, client).token

    def actor(self, email: str, staff: bool = True) -> Actor:
        return self.lv.accounts.resolve(self.login(email, staff))


def make_lab(lv: Labvault, tag: str, seed: int, n: int = 3) -> Lab:
    op = Actor.operator()
    tenant = lv.tenants.add(op, f"Laboratoire {tag}", make_finess(random.Random(seed))).tenant_id
    data = [patient_json(i, seed) for i in range(n)]
    ids = lv.patients.import_lines(op, tenant, [json.dumps(p) for p in data]).ids
    lab = Lab(tenant, ids, data)
    for k, role in enumerate(ROLES[:6]):
        name = _NAMES[k]
        first, last = name.split()
        email = f"{first.lower().replace('é', 'e')}.{last.lower()}.{tag}@example.org"
        out = lv.accounts.create(op, tenant, [role], name, email, password=PASSWORD,
                                 patient_id=ids[0] if role == "patient" else None,
                                 totp_secret=SECRET)
        lab.accounts[role] = out["id"]
        lab.emails[role] = email
    return lab


@pytest.fixture
def world(alv: Labvault, clock: Clock) -> World:
    alv.accounts.session_policy = SessionPolicy(idle=timedelta(hours=4))
    w = World(alv, clock, make_lab(alv, "a", 1), make_lab(alv, "b", 2))
    w.platform_email = "oscar.delmas.ops@example.org"
    w.platform_id = alv.accounts.create(Actor.operator(), None, ["platform_operator"],
                                        "Oscar Delmas", w.platform_email, password=PASSWORD,
                                        totp_secret=SECRET)["id"]
    return w


@pytest.fixture
def client(alv: Labvault) -> Iterator[TestClient]:
    with TestClient(create_app(alv), base_url="http://testserver",
                    cookies=None) as c:
        yield c
