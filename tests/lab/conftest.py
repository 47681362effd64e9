"""Lab fixtures: staff actors with lab roles and a permissive test policy (the access
area's table policy replaces it in production), a registered patient."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler
from labvault.services.app import Labvault
from labvault.services.gate import Access, Decision
from labvault.synthetic import make_finess, make_nir


class LabTestPolicy:
    """Allows operator/system and staff of their own laboratory (tests only)."""

    def decide(self, access: Access) -> Decision:
        a = access.actor
        if a.kind in ("operator", "system"):
            return Decision(True, access.categories, rule="test-operator")
        if a.kind == "staff" and a.tenant_id == access.tenant_id:
            return Decision(True, access.categories, rule="test-staff")
        return Decision(False, rule="default-deny")


@pytest.fixture
def lab_lv(lv: Labvault) -> Labvault:
    lv.gate.policy = LabTestPolicy()
    return lv


def staff(tenant_id: str, *roles: str, name: str = "s") -> Actor:
    return Actor(kind="staff", id=f"acc_{name}", tenant_id=tenant_id, roles=frozenset(roles),
                 display=name)


@pytest.fixture
def biologist(tenant_id: str) -> Actor:
    return staff(tenant_id, "biologist", name="bio")


@pytest.fixture
def technician(tenant_id: str) -> Actor:
    return staff(tenant_id, "technician", name="tech")


def patient_data(sex: str = "F", birth: date = date(1980, 5, 17), ext: str | None = None,
                 seed: int = 1) -> dict[str, object]:
    rng = random.Random(seed)
    d: dict[str, object] = {
        "birth_name": "MARTIN", "first_names": ["Jeanne"], "birth_date": birth.isoformat(),
        "sex": sex, "nir": make_nir(sex, birth, "59350", rng.randint(1, 999))}
    if ext:
        d["external_id"] = ext
    return d


@pytest.fixture
def patient_id(lab_lv: Labvault, tenant_id: str, operator: Actor) -> str:
    return lab_lv.patients.register(operator, tenant_id, patient_data())


@pytest.fixture
def h(lab_lv: Labvault, tenant_id: str) -> Hl7Handler:
    """The HL7 handler of the lab's listener (as ``system:mllp``)."""
    return Hl7Handler(lab_lv, Actor.system("mllp"), tenant_id)


def ack_of(ack: bytes) -> tuple[str, list[list[str]]]:
    """An ACK's MSA-1 and its ERR segments (split into fields)."""
    segs = [s.split("|") for s in ack.decode().strip("\r").split("\r")]
    return next(s[1] for s in segs if s[0] == "MSA"), [s for s in segs if s[0] == "ERR"]


@contextmanager
def cli_laboratory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "Lab CLI",
                   seed: int = 5) -> Iterator[tuple[CliRunner, Labvault, str]]:
    """A ``labvault init`` data directory (SQLite) with one laboratory: the CLI runner, the
    installation opened in process (closed at the block's end, before the CLI runs again)
    and the laboratory's id."""
    from labvault.cli import app
    from labvault.config import Settings
    from labvault.services.wiring import open_labvault
    monkeypatch.setenv("LABVAULT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LABVAULT_KEY_FILE", str(tmp_path / "root.key"))
    monkeypatch.delenv("LABVAULT_DATABASE_URL", raising=False)
    r = CliRunner()
    assert r.invoke(app, ["init"]).exit_code == 0
    lv = open_labvault(Settings.from_env())
    try:
        yield r, lv, lv.tenants.add(Actor.operator(), name,
                                    make_finess(random.Random(seed))).tenant_id
    finally:
        lv.close()


def store_unchecked_catalogue(lv: Labvault, tenant_id: str, data: dict[str, Any]) -> None:
    """Make ``data`` the lab's active catalogue as stored, without today's checks (one
    loaded by an earlier version), and forget the cached one, as another process would."""
    import json

    from labvault.store import repositories_lab as lrepo
    cid = f"cat_{data['version']}"
    with lv.begin() as conn:
        sealed = lv.gate.seal_tenant_value(conn, tenant_id, "lab_catalogues",
                                           "catalogue_sealed", cid, json.dumps(data).encode())
        lrepo.insert_catalogue(conn, {"tenant_id": tenant_id, "catalogue_id": cid,
                                      "version": data["version"], "status": "active",
                                      "loaded_at": lv.now(), "catalogue_sealed": sealed})
    lv.lab._active.clear()
