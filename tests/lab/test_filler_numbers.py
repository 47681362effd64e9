"""A filler number (the laboratory's order number: a tube's label, OBR-3 of an analyser's
results) names one order of a laboratory. The doors that create an order with the
caller's number (the desk, FHIR) are refused a number another order has; receiving a tube
can make its number the order's filler number, under the same rule. The HL7 inbound path,
where a known filler number means that order, is left as it was."""

from __future__ import annotations

import contextlib
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labvault.crypto import KeyRing
from labvault.crypto.providers.file import FileKeyProvider
from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.services.lab import FillerNumberTaken
from labvault.store import repositories_lab as lrepo
from labvault.store.engine import make_engine
from labvault.synthetic import make_finess
from tests.conftest import PG_URL, make_settings, private_schema, schema_engine
from tests.lab.conftest import LabTestPolicy, patient_data

REQ = {"tests": ["718-7"], "prescriber": {"name": "Dr Paul Durand", "rpps": "10003456786"}}
SPEC = {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00"}


def _orders(lv: Labvault, actor: Actor, tenant_id: str, patient_id: str) -> list[Any]:
    return lv.lab.list_orders(actor, tenant_id, patient_id=patient_id, specimens=True)


def test_a_filler_number_taken_in_the_laboratory_is_refused(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str) -> None:
    lv = lab_lv
    first = lv.lab.create_order(operator, tenant_id, patient_id,
                                {**REQ, "filler_number": "ETQ-1"})
    # the same number typed again, with or without its tube: refused, nothing stored
    with pytest.raises(FillerNumberTaken) as exc:
        lv.lab.create_order(operator, tenant_id, patient_id, {**REQ, "filler_number": "ETQ-1"})
    assert exc.value.http_status == 409 and exc.value.field == "filler_number"
    assert exc.value.number == "ETQ-1" and "next label" in exc.value.hint
    assert "ETQ-1" not in exc.value.message          # an API's answer does not echo it
    with pytest.raises(FillerNumberTaken) as exc:
        lv.lab.create_order(operator, tenant_id, patient_id,
                            {**REQ, "filler_number": "ETQ-1"},
                            {**SPEC, "accession_number": "ETQ-1"})
    assert exc.value.field == "accession_number"     # the desk's tube number
    assert [o.order_id for o in _orders(lv, operator, tenant_id, patient_id)] == [
        first.order_id]
    # another number, and another laboratory's same number, are fine
    lv.lab.create_order(operator, tenant_id, patient_id, {**REQ, "filler_number": "ETQ-2"})
    other = lv.tenants.add(operator, "Labo Deux", make_finess(random.Random(2))).tenant_id
    pid = lv.patients.register(operator, other, patient_data(seed=2))
    assert lv.lab.create_order(operator, other, pid,
                               {**REQ, "filler_number": "ETQ-1"}).request.filler_number == "ETQ-1"


@pytest.fixture
def committing_lv(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
                  root_key_file: Path, sqlite_template: Path) -> Iterator[Labvault]:
    """A core whose transactions commit, each thread on its own connection (the ``lv``
    fixture's PostgreSQL core shares one rolled-back connection): a schema of its own."""
    if backend == "sqlite":
        db = tmp_path / "var" / "labvault.db"
        db.parent.mkdir(parents=True)
        shutil.copy(sqlite_template, db)
        url = f"sqlite:///{db}"
        core = Labvault(make_settings(tmp_path / "var", url, root_key_file),
                        make_engine(url), KeyRing(FileKeyProvider(root_key_file)))
        yield core
        core.close()
        return
    with private_schema("lvf") as schema:
        core = Labvault(make_settings(tmp_path / "var", PG_URL, root_key_file),
                        schema_engine(schema), KeyRing(FileKeyProvider(root_key_file)))
        yield core
        core.close()


def test_two_orders_created_at_once_with_one_number_cannot_both_pass(
        committing_lv: Labvault, operator: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both check before either writes (the barrier holds the first check until the
    second arrives, or 1 s if the second waits on the number's lock): one order only."""
    lv = committing_lv
    lv.gate.policy = LabTestPolicy()
    tenant_id = lv.tenants.add(operator, "Labo", make_finess(random.Random(3))).tenant_id
    patient_id = lv.patients.register(operator, tenant_id, patient_data())
    barrier = threading.Barrier(2)
    real = lrepo.order_with_filler

    def checked_together(*args: Any) -> str | None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=1)
        return real(*args)

    monkeypatch.setattr(lrepo, "order_with_filler", checked_together)
    outcomes: list[str] = []

    def create() -> None:
        try:
            lv.lab.create_order(operator, tenant_id, patient_id,
                                {**REQ, "filler_number": "ETQ-RACE"})
            outcomes.append("created")
        except FillerNumberTaken:
            outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["created", "refused"]
    assert len(_orders(lv, operator, tenant_id, patient_id)) == 1


def test_a_received_tube_becomes_the_filler_number_of_an_order_without_one(
        lab_lv: Labvault, operator: Actor, tenant_id: str, patient_id: str) -> None:
    lv = lab_lv
    taken = lv.lab.create_order(operator, tenant_id, patient_id,
                                {**REQ, "filler_number": "ETQ-7"})
    waiting = lv.lab.create_order(operator, tenant_id, patient_id, REQ)
    # a tube whose number is another order's: refused, the order still waits for its tube
    with pytest.raises(FillerNumberTaken) as exc:
        lv.lab.receive_specimen(operator, waiting.order_id,
                                {**SPEC, "accession_number": "ETQ-7"}, tube_is_filler=True)
    assert exc.value.field == "accession_number"
    got = lv.lab.get_order(operator, waiting.order_id)
    assert got.status == L.OrderStatus.REGISTERED and got.specimens == []
    assert got.request.filler_number is None
    lv.lab.receive_specimen(operator, waiting.order_id, {**SPEC, "accession_number": "ETQ-8"},
                            tube_is_filler=True)
    got = lv.lab.get_order(operator, waiting.order_id)
    assert got.status == L.OrderStatus.RECEIVED and got.request.filler_number == "ETQ-8"
    # an order with its number keeps it (a second tube is only a tube)
    lv.lab.receive_specimen(operator, taken.order_id, {**SPEC, "accession_number": "ETQ-8"},
                            tube_is_filler=True)
    assert lv.lab.get_order(operator, taken.order_id).request.filler_number == "ETQ-7"
    # without the flag (the HL7 path's and the stable API's default): the tube only
    plain = lv.lab.create_order(operator, tenant_id, patient_id, REQ)
    lv.lab.receive_specimen(operator, plain.order_id, {**SPEC, "accession_number": "ETQ-8"})
    assert lv.lab.get_order(operator, plain.order_id).request.filler_number is None
