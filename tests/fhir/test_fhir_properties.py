"""Properties of the FHIR door: the Patient mapping round-trips, every outgoing resource
is valid R4, and hostile input never escapes as anything but an OperationOutcome-shaped
error (no crash, nothing half-stored)."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labvault.domain.actors import Actor
from labvault.domain.patient import PatientRecord
from labvault.errors import UserError
from labvault.interop.fhir import mapping as m
from labvault.interop.fhir.outcome import from_user_error
from labvault.interop.fhir.samples import patient_resource, visit_bundle
from labvault.interop.fhir.server import FhirServer
from labvault.services.app import Labvault
from labvault.store import repositories as repo
from labvault.synthetic import people, strip_none
from tests.fhir.conftest import validate_r4b

PEOPLE = list(people(300, seed=31))


@given(st.sampled_from(PEOPLE))
@settings(max_examples=150, deadline=None)
def test_patient_mapping_round_trips(person: dict[str, Any]) -> None:
    rec = PatientRecord.parse(strip_none(person))
    shown = {"id": "pt_" + "0" * 26, **PatientRecord.from_categories(rec.categories())}
    res = m.patient_to_fhir(shown)
    validate_r4b(res)
    back = PatientRecord.parse(m.patient_from_fhir(res))
    for f in m.IDENTITY_CONTACT:
        assert getattr(back, f) == getattr(rec, f), f


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=8)
PATIENT_KEYS = ["identifier", "name", "gender", "birthDate", "address", "telecom", "extension",
                "resourceType", "id", "active", "deceasedBoolean"]


def mutate(base: dict[str, Any], edits: list[tuple[int, Any, bool]]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, value, drop in edits:
        key = PATIENT_KEYS[k % len(PATIENT_KEYS)]
        if drop:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def count(lv: Labvault, tenant_id: str) -> int:
    with lv.begin() as conn:
        return repo.count_patients(conn, tenant_id)


@given(edits=st.lists(st.tuples(st.integers(0, 50), JSON, st.booleans()), min_size=1,
                      max_size=4),
       where=st.integers(0, 8))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_hostile_transactions_fail_cleanly(lv: Labvault, staff: Actor, edits: list[Any],
                                           where: int) -> None:
    """Random damage to one entry of a visit Bundle: either the whole visit is stored or
    nothing is, and a failure is always a typed error with a 4xx status."""
    srv = FhirServer(lv)
    assert staff.tenant_id is not None
    bundle = visit_bundle(PEOPLE[where], 1000 + where)
    entry = bundle["entry"][where]
    entry["resource"] = mutate(entry["resource"], edits)
    before = count(lv, staff.tenant_id)
    try:
        resp = srv.transaction(staff, json.loads(json.dumps(bundle)), "http://t/fhir/R4")
    except UserError as exc:
        status, oo = from_user_error(exc)
        assert 400 <= status < 500
        validate_r4b(oo)
        assert count(lv, staff.tenant_id) == before
    else:
        validate_r4b(resp)
        assert count(lv, staff.tenant_id) == before + 1
        srv.lv.patients.erase(Actor.operator(), m.ids.from_fhir(   # keep the next run unique
            resp["entry"][0]["response"]["location"].split("/")[1], "pt") or "")


def test_samples_are_valid_r4() -> None:
    for i, p in enumerate(PEOPLE[:20]):
        validate_r4b(patient_resource(p))
        validate_r4b(visit_bundle(p, i))
