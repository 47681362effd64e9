"""FHIR door fixtures: a biologist (the access policy table decides), and a RUNNING server
(uvicorn in a background thread on 127.0.0.1, random port) that a real FHIR client
library (fhirpy) talks to over loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import Request
from fhirpy import SyncFHIRClient

from labvault.api.app import create_app
from labvault.api.deps import current_actor
from labvault.domain.actors import Actor
from labvault.errors import AuthenticationFailed
from labvault.interop.fhir import ids
from labvault.services.app import Labvault

TOKEN = "test-token-staff"
ADMIN_TOKEN = "test-token-lab-admin"   # a lab administrator: no access to patient data
DPO_TOKEN = "test-token-dpo"           # the laboratory's data protection officer (audit)


@pytest.fixture
def staff(lv: Labvault, tenant_id: str) -> Actor:
    from labvault.access.policy import TablePolicy
    lv.gate.policy = TablePolicy()   # the access policy table: a biologist of this laboratory
    return Actor(kind="staff", id="acc_test", tenant_id=tenant_id,
                 roles=frozenset({"biologist"}), display="Test Biologist", client="127.0.0.1")


@dataclass
class Running:
    url: str          # http://127.0.0.1:<port>/fhir/R4
    lv: Labvault
    actor: Actor
    tokens: dict[str, Actor] = field(default_factory=dict)   # bearer token -> actor

    def client(self, token: str = TOKEN, headers: dict[str, str] | None = None
               ) -> SyncFHIRClient:
        """fhirpy over the running server; ``headers`` go with every request (If-Match)."""
        return SyncFHIRClient(self.url, authorization=f"Bearer {token}", extra_headers=headers)

    def patient_token(self, patient_id: str) -> str:
        """A bearer token of the patient account of ``patient_id`` (the portal's actor)."""
        token = f"test-token-patient-{patient_id}"
        self.tokens[token] = Actor(kind="patient", id=f"acc_{patient_id}",
                                   tenant_id=self.actor.tenant_id, roles=frozenset({"patient"}),
                                   display="Test Patient", client="127.0.0.1",
                                   patient_id=patient_id)
        return token


@contextmanager
def serving(lv: Labvault, staff: Actor) -> Iterator[Running]:
    """``lv`` behind uvicorn on a random loopback port, for the duration of the block (one
    worker of ``labvault serve``; tests of concurrent workers run two, on one database)."""
    app = create_app(lv)

    admin = Actor(kind="staff", id="acc_admin", tenant_id=staff.tenant_id,
                  roles=frozenset({"lab_admin"}), display="Test Admin", client="127.0.0.1")
    dpo = Actor(kind="staff", id="acc_dpo", tenant_id=staff.tenant_id,
                roles=frozenset({"dpo"}), display="Test DPO", client="127.0.0.1")

    tokens = {TOKEN: staff, ADMIN_TOKEN: admin, DPO_TOKEN: dpo}

    def actor_from_token(request: Request) -> Actor:
        auth = request.headers.get("authorization") or ""
        actor = tokens.get(auth.removeprefix("Bearer "))
        if actor is None or not auth.startswith("Bearer "):
            raise AuthenticationFailed("authentication required", "send a bearer token")
        return actor

    app.dependency_overrides[current_actor] = actor_from_token
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(f"http://127.0.0.1:{port}/fhir/R4", lv, staff, tokens)
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture
def server(lv: Labvault, staff: Actor) -> Iterator[Running]:
    with serving(lv, staff) as running:
        yield running


def fhir_patient(p: dict[str, Any]) -> dict[str, Any]:
    """A synthetic person (``labvault.synthetic.people``) written as a FHIR Patient by hand
    (independently of the server's mapping)."""
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": ids.NIR_SYSTEM, "value": p["nir"]},
                       {"system": ids.EXTERNAL_ID_SYSTEM, "value": p["external_id"]}],
        "name": [{"use": "official", "family": p["birth_name"], "given": p["first_names"]}],
        "gender": {"F": "female", "M": "male"}[p["sex"]],
        "birthDate": p["birth_date"],
        "address": [{"line": [p["address"]["line"]], "postalCode": p["address"]["postal_code"],
                     "city": p["address"]["city"], "country": "FR"}],
        "telecom": [{"system": "phone", "value": p["phone"]},
                    {"system": "email", "value": p["email"]}],
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                       "valueAddress": {"extension": [{
                           "url": ids.INSEE_CODE_URL,
                           "valueCoding": {"system": ids.INSEE_COMMUNE_SYSTEM,
                                           "code": p["birth_place_insee"]}}]}}],
    }
    if p.get("used_name"):
        res["name"].append({"use": "usual", "family": p["used_name"]})
    return res


def validate_r4b(resource: dict[str, Any]) -> None:
    """Every outgoing resource must be valid FHIR R4 (fhir.resources R4B models)."""
    from fhir.resources.R4B import get_fhir_model_class
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    if resource["resourceType"] == "Bundle":
        for e in resource.get("entry") or []:
            if "resource" in e:
                validate_r4b(e["resource"])
