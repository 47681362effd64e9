"""What a patient account sees of its lab records (the access table's ``patient`` rows
grant reads of its own orders, specimens, results and reports): only once the order's
report is published (or amended after publication), whatever the door -- enforced in
``LabService``, not in the portal. Before, every read is the same "not found" as an absent
id (and is not audited as a read: nothing was opened; an absent id is, as a refusal that
names no patient); a listing leaves them out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from labvault.access.policy import TablePolicy
from labvault.domain import lab as L
from labvault.domain.actors import Actor
from labvault.errors import AccessDenied, NotFound
from labvault.services.app import Labvault
from labvault.services.gate import MemoryAudit
from tests.lab.conftest import patient_data

REQ = {"tests": ["718-7", "2823-3"], "priority": "routine"}
SPEC = {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00"}
STEPS = ("registered", "received", "preliminary", "technically-validated", "final",
         "published", "amended", "rejected", "cancelled")
_acc = iter(range(1, 1_000_000))


@pytest.fixture
def plv(lv: Labvault) -> Labvault:
    lv.gate.policy = TablePolicy()
    lv.gate.audit = MemoryAudit()
    return lv


def _patient(tenant_id: str, patient_id: str) -> Actor:
    return Actor(kind="patient", id=f"acc_{patient_id}", tenant_id=tenant_id,
                 roles=frozenset({"patient"}), patient_id=patient_id)


def _order_at(lv: Labvault, tenant_id: str, patient_id: str, step: str) -> dict[str, Any]:
    """An order of the patient taken to ``step``; its ids."""
    bio = Actor(kind="staff", id="acc_bio", tenant_id=tenant_id, roles=frozenset({"biologist"}))
    lab = lv.lab
    spec = None if step == "registered" else {**SPEC, "accession_number": f"V{next(_acc)}"}
    o = lab.create_order(bio, tenant_id, patient_id, REQ, spec)
    obs: list[str] = []
    if step not in ("registered", "received", "rejected"):
        obs = [v.observation_id for v in lab.enter_results(
            bio, o.order_id, [{"code": "718-7", "value": 13.1, "unit": "g/dL"},
                              {"code": "2823-3", "value": "4.2", "unit": "mmol/L"}])]
    if step == "rejected":
        lab.reject(bio, o.order_id, "hemolysed")
    elif step == "cancelled":
        lab.cancel(bio, o.order_id, "doublon")
    elif step != "preliminary" and obs:
        lab.validate_technical(bio, o.order_id)
        if step != "technically-validated":
            lab.validate_biological(bio, o.order_id)
        if step in ("published", "amended"):
            lab.publish(bio, o.order_id)
        if step == "amended":
            lab.amend(bio, obs[1], {"code": "2823-3", "value": "4.4", "unit": "mmol/L"}, "erreur de saisie")
    view = lab.get_order(bio, o.order_id)
    assert view.status.value == step
    return {"order": o.order_id, "report": o.report_id, "observations": obs,
            "specimens": [s.specimen_id for s in view.specimens]}


def _reads(lv: Labvault, ids: dict[str, Any]) -> dict[str, Callable[[Actor], object]]:
    """Every read of a single record (by its id) the lab service offers a door."""
    lab = lv.lab
    out: dict[str, Callable[[Actor], object]] = {
        "get_order": lambda a: lab.get_order(a, ids["order"]),
        "order_status": lambda a: lab.order_status(a, ids["order"]),
        "get_report": lambda a: lab.get_report(a, ids["report"]),
        "get_report_by_order": lambda a: lab.get_report_by_order(a, ids["order"]),
    }
    for oid in ids["observations"][:1]:
        out["get_observation"] = lambda a, oid=oid: lab.get_observation(a, oid)
        out["observation_history"] = lambda a, oid=oid: lab.observation_history(a, oid)
    for sid in ids["specimens"][:1]:
        out["get_specimen"] = lambda a, sid=sid: lab.get_specimen(a, sid)
    return out


ABSENT = {"get_order": "ord_0000000000000000000000000v",
          "order_status": "ord_0000000000000000000000000v",
          "get_report": "rep_0000000000000000000000000v",
          "get_report_by_order": "ord_0000000000000000000000000v",
          "get_observation": "obs_0000000000000000000000000v",
          "observation_history": "obs_0000000000000000000000000v",
          "get_specimen": "spc_0000000000000000000000000v"}


def _error(fn: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(NotFound) as exc:
        fn()
    return exc.value.message, exc.value.hint


@pytest.mark.parametrize("step", STEPS)
def test_property_a_patient_sees_an_order_exactly_when_published(
        plv: Labvault, tenant_id: str, operator: Actor, step: str) -> None:
    lv = plv
    pid = lv.patients.register(operator, tenant_id, patient_data(seed=3))
    me = _patient(tenant_id, pid)
    ids = _order_at(lv, tenant_id, pid, step)
    visible = step in ("published", "amended")
    audit = lv.gate.audit
    assert isinstance(audit, MemoryAudit)
    for name, read in _reads(lv, ids).items():
        if visible:
            read(me)
            continue
        before = len(audit.entries)
        hidden = _error(lambda read=read: read(me))  # type: ignore[misc]
        assert len(audit.entries) == before, (step, name)     # nothing opened, nothing read
        absent = _error(lambda name=name: getattr(lv.lab, name)(me, ABSENT[name]))  # type: ignore[misc]
        assert hidden == absent, (step, name)
        # an id the laboratory does not hold is a probe, not the patient's own record: its
        # refusal (docs/audit.md), which names no patient (so no "who saw my record" line)
        ((access, decision, outcome),) = audit.entries[before:]
        assert (decision.rule, outcome, access.patient_ids) == ("absent-record", "denied", ())
    listed = {
        "orders": [o.order_id for o in lv.lab.list_orders(me, tenant_id, patient_id=pid)],
        "reports": [r.report_id for r in lv.lab.list_reports(me, tenant_id, patient_id=pid)],
        "observations": [o.observation_id for o in lv.lab.list_observations(
            me, tenant_id, patient_id=pid)]}
    want = {"orders": [ids["order"]], "reports": [ids["report"]],
            "observations": sorted(ids["observations"])}
    listed["observations"].sort()
    assert listed == (want if visible else {k: [] for k in want}), step


def test_staff_and_other_patients_are_unchanged(plv: Labvault, tenant_id: str,
                                                operator: Actor) -> None:
    """Staff read unpublished records as before; another patient's record is refused by
    the gate (audited denial), published or not -- its answer says nothing of its step."""
    lv = plv
    pid, other = (lv.patients.register(operator, tenant_id, patient_data(seed=s))
                  for s in (4, 5))
    draft = _order_at(lv, tenant_id, other, "preliminary")
    done = _order_at(lv, tenant_id, other, "published")
    tech = Actor(kind="staff", id="acc_tech", tenant_id=tenant_id,
                 roles=frozenset({"technician"}))
    assert lv.lab.get_observation(tech, draft["observations"][0]).status == "preliminary"
    me = _patient(tenant_id, pid)
    for ids in (draft, done):
        with pytest.raises(AccessDenied):
            lv.lab.get_observation(me, ids["observations"][0])
        with pytest.raises(AccessDenied):
            lv.lab.get_report(me, ids["report"])


def test_a_listing_by_status_leaks_no_count(plv: Labvault, tenant_id: str,
                                            operator: Actor) -> None:
    """Filtered listings (FHIR ``status=``) of unpublished records are empty for the
    patient, and the limit counts only what it may see."""
    lv = plv
    pid = lv.patients.register(operator, tenant_id, patient_data(seed=6))
    me = _patient(tenant_id, pid)
    for _ in range(3):
        _order_at(lv, tenant_id, pid, "final")
    pub = _order_at(lv, tenant_id, pid, "published")
    assert lv.lab.list_reports(me, tenant_id, patient_id=pid, status="final", limit=1)[0] \
        .report_id == pub["report"]
    assert lv.lab.list_orders(me, tenant_id, patient_id=pid,
                              status=L.OrderStatus.FINAL.value) == []
    assert sorted(o.observation_id for o in lv.lab.list_observations(
        me, tenant_id, patient_id=pid, status="final", limit=2)) == sorted(pub["observations"])
