"""Panic values with the guard's alert store (``services/alerts.py``): every critical
result is an alert of its own, naming its patient, order and observation, sent at once;
only the same observation with the same value is merged (a resent message, a re-entry).
Security alerts keep their flood control (same kind and account: one alert)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from labvault.domain.actors import Actor
from labvault.errors import UserError
from labvault.guard.alerts import Dispatcher
from labvault.services.alerts import AlertService
from labvault.services.app import Labvault
from tests.guard.conftest import MemorySink
from tests.lab.conftest import patient_data

REQ = {"tests": ["2823-3"], "priority": "stat"}
SPEC = {"type": "BLD", "collected_at": "2026-03-01T08:30:00+01:00"}
_accession = iter(range(1, 1_000_000))


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def store(lab_lv: Labvault, sink: MemorySink) -> AlertService:
    """The guard's alert store, dedup window as shipped (600 s): what production runs."""
    lab_lv.alerts = lab_lv.gate.alerts = AlertService(lab_lv, Dispatcher([sink]))
    return lab_lv.alerts


def _order(lv: Labvault, op: Actor, tenant_id: str, patient_id: str) -> str:
    return lv.lab.create_order(op, tenant_id, patient_id, REQ,
                               {**SPEC, "accession_number": f"P{next(_accession)}"}).order_id


def _panics(store: AlertService, tenant_id: str) -> list[dict[str, Any]]:
    return [a for a in store.list(Actor.operator(), tenant_id) if a["kind"] == "panic-value"]


def _named(alert: dict[str, Any]) -> dict[str, str]:
    d = alert["detail"]["detail"]
    return {k: d[k] for k in ("patient_id", "order_id", "observation_id")}


def test_each_patients_panic_value_is_its_own_alert_sent_at_once(
        lab_lv: Labvault, store: AlertService, sink: MemorySink, operator: Actor,
        tenant_id: str) -> None:
    """QA finding 1: an analyser (one actor) sends panic values for three patients within
    the dedup window: three alerts, each naming its own patient, order and result."""
    lv = lab_lv
    analyser = Actor.system("mllp")
    expected = []
    for i, value in enumerate(("7.4", "1.9", "7.9")):
        pid = lv.patients.register(operator, tenant_id, patient_data(seed=20 + i))
        oid = _order(lv, operator, tenant_id, pid)
        (view,) = lv.lab.enter_results(analyser, oid, [{"code": "2823-3", "value": value,
                                                           "unit": "mmol/L"}])
        expected.append({"patient_id": pid, "order_id": oid,
                         "observation_id": view.observation_id})
    alerts = _panics(store, tenant_id)
    assert sorted((_named(a) for a in alerts), key=str) == sorted(expected, key=str)
    assert {a["count"] for a in alerts} == {1}
    store.flush()
    sent = [n for n in sink.notices if n.kind == "panic-value"]
    assert sorted(n.alert_id for n in sent) == sorted(a["id"] for a in alerts)
    assert {n.severity for n in sent} == {"critical"}


def test_same_observation_same_value_is_merged_a_new_value_is_not(
        lab_lv: Labvault, store: AlertService, sink: MemorySink, operator: Actor,
        tenant_id: str, patient_id: str, technician: Actor) -> None:
    lv = lab_lv
    oid = _order(lv, operator, tenant_id, patient_id)
    (first,) = lv.lab.enter_results(technician, oid, [{"code": "2823-3", "value": "7.4", "unit": "mmol/L"}])
    (again,) = lv.lab.enter_results(Actor.system("mllp"), oid,
                                    [{"code": "2823-3", "value": "7.4", "unit": "mmol/L"}])   # resent
    assert again.observation_id == first.observation_id
    (only,) = _panics(store, tenant_id)
    assert only["count"] == 2 and _named(only)["observation_id"] == first.observation_id
    lv.lab.enter_results(technician, oid, [{"code": "2823-3", "value": "1.6", "unit": "mmol/L"}])  # new value
    assert sorted(a["count"] for a in _panics(store, tenant_id)) == [1, 2]
    store.flush()
    assert len([n for n in sink.notices if n.kind == "panic-value"]) == 2


def test_panic_value_through_an_amendment_is_its_own_alert(
        lab_lv: Labvault, store: AlertService, operator: Actor, tenant_id: str,
        technician: Actor, biologist: Actor) -> None:
    """``amend`` raises through the same path: a second patient's amended panic value
    within the window is not merged into the first patient's alert."""
    lv = lab_lv
    views = []
    for i in range(2):
        pid = lv.patients.register(operator, tenant_id, patient_data(seed=40 + i))
        oid = _order(lv, operator, tenant_id, pid)
        (view,) = lv.lab.enter_results(technician, oid,
                                       [{"code": "2823-3", "value": "4.2", "unit": "mmol/L"}])
        lv.lab.validate_technical(technician, oid)
        lv.lab.validate_biological(biologist, oid)
        lv.lab.publish(biologist, oid)
        views.append(lv.lab.amend(biologist, view.observation_id,
                                  {"code": "2823-3", "value": "7.6", "unit": "mmol/L"}, "erreur de saisie"))
    alerts = _panics(store, tenant_id)
    assert sorted(_named(a)["observation_id"] for a in alerts) == sorted(
        v.observation_id for v in views)


def test_security_alerts_keep_their_flood_control(lab_lv: Labvault, store: AlertService,
                                                  tenant_id: str) -> None:
    thief = Actor(kind="staff", id="acc_thief", tenant_id=tenant_id,
                  roles=frozenset({"reception"}))
    with lab_lv.begin() as conn:
        ids = {store.raise_alert(conn, tenant_id, "access.off_hours", "medium", thief,
                                 {"patient_id": f"pt_{i}"}) for i in range(3)}
    (alert,) = [a for a in store.list(Actor.operator(), tenant_id)
                if a["kind"] == "access.off_hours"]
    assert len(ids) == 1 and alert["count"] == 3


@hsettings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["7.4", "7.9", "1.6"])),
                min_size=1, max_size=6))
def test_property_one_alert_per_distinct_observation_value(
        lab_lv: Labvault, store: AlertService, operator: Actor, tenant_id: str,
        technician: Actor, entries: list[tuple[int, str]]) -> None:
    """Whatever the sequence of panic entries (same or different orders, same or new
    values), the open panic alerts are exactly the distinct (observation, value) pairs
    entered, and together they count every entry."""
    lv = lab_lv
    with lv.begin() as conn:        # each example starts with no open panic alert
        for a in _panics(store, tenant_id):
            if a["status"] == "open":
                from labvault.store import repositories_guard as grepo
                grepo.ack_alert(conn, tenant_id, a["id"], "acc_test", lv.now())
    person = patient_data(seed=60)      # one patient for every example (one NIR, one record)
    pid = (lv.patients.find(operator, tenant_id, nir=str(person["nir"]))
           or [lv.patients.register(operator, tenant_id, person)])[0]
    orders = [_order(lv, operator, tenant_id, pid) for _ in range(4)]
    seen: dict[tuple[str, str], int] = {}
    for k, value in entries:
        (view,) = lv.lab.enter_results(technician, orders[k], [{"code": "2823-3",
                                                                 "value": value,
                                                                 "unit": "mmol/L"}])
        key = (view.observation_id, value)
        seen[key] = seen.get(key, 0) + 1
    open_alerts = [a for a in _panics(store, tenant_id) if a["status"] == "open"]
    # a re-entry replaces an order's value: an alert per value entered while it was open
    assert len(open_alerts) == len(seen)
    assert sum(a["count"] for a in open_alerts) == len(entries)


def _oru(control: str, nir: str, order_no: str, potassium: str, unit: str = "mmol/L") -> bytes:
    """The analyser's ORU of ``hl7_samples`` with its own order numbers and potassium."""
    from tests.lab import hl7_samples as S
    msg = S.oru_numeric(control, nir).replace("PL1001", f"PL{order_no}").replace(
        "FI2001", f"FI{order_no}")
    return msg.replace("2823-3^Potassium^LN||5.6|mmol/L|3.5-5.1|H",
                       f"2823-3^Potassium^LN||{potassium}|{unit}|3.5-5.1|H").encode()


def test_hl7_panic_values_of_two_patients_are_two_alerts(
        lab_lv: Labvault, store: AlertService, sink: MemorySink, operator: Actor,
        tenant_id: str) -> None:
    """The QA repro through the production path: ORU messages from the analyser (one
    account, ``system:mllp``) for two patients within the window -- two alerts, each naming
    its patient; the same message resent (same control id: the stored answer) or sent again
    under a new control id (same result, same value) is no new alert."""
    import datetime

    from labvault.interop.hl7.handler import Hl7Handler
    from labvault.synthetic import make_nir
    lv = lab_lv
    h = Hl7Handler(lv, Actor.system("mllp"), tenant_id)
    pids = []
    for i, nir in enumerate(make_nir("F", datetime.date(1980, 5, 17), "59350", n)
                            for n in (101, 102)):
        d = patient_data(seed=80 + i)
        d["nir"] = nir
        pids.append((lv.patients.register(operator, tenant_id, d), nir))
    outs = [h.handle(_oru(f"K{i}", nir, f"90{i}", k))[0]
            for i, ((_pid, nir), k) in enumerate(zip(pids, ("7.4", "1.9"), strict=True))]
    assert [(o.ack_code, o.patient_id) for o in outs] == [("AA", p) for p, _ in pids], outs
    h.handle(_oru("K0", pids[0][1], "900", "7.4"))            # resent: same control id
    h.handle(_oru("K0-again", pids[0][1], "900", "7.4"))      # re-sent under a new id
    alerts = _panics(store, tenant_id)
    assert sorted(_named(a)["patient_id"] for a in alerts) == sorted(p for p, _ in pids)
    assert sorted(_named(a)["order_id"] for a in alerts) == sorted(o.order_ids[0] for o in outs)
    assert sorted(a["count"] for a in alerts) == [1, 2]
    store.flush()
    assert len([n for n in sink.notices if n.kind == "panic-value"]) == 2


def test_a_panic_value_waiting_in_the_import_queue_is_alerted_at_once(
        lab_lv: Labvault, store: AlertService, sink: MemorySink, tenant_id: str) -> None:
    """A result that cannot be matched (unknown patient) waits in the import-issues queue;
    a critical value among them is a biologist's to act on now: one panic-value alert per
    issue, naming the issue (no patient is known); a normal value raises none."""
    import datetime

    from labvault.interop.hl7.handler import Hl7Handler
    from labvault.synthetic import make_nir
    h = Hl7Handler(lab_lv, Actor.system("mllp"), tenant_id)
    unknown = make_nir("F", datetime.date(1980, 5, 17), "59350", 301)
    normal, _ = h.handle(_oru("Q1", unknown, "930", "4.2"))
    assert normal.ack_code == "AA" and normal.issue_ids and not _panics(store, tenant_id)
    out, _ = h.handle(_oru("Q2", unknown, "931", "7.9"))
    assert out.ack_code == "AA" and out.patient_id is None and len(out.issue_ids) == 1
    (alert,) = _panics(store, tenant_id)
    detail = alert["detail"]["detail"]
    assert alert["severity"] == "critical"
    assert detail["issue_id"] == out.issue_ids[0]
    assert "patient_id" not in detail and "2823-3" not in str(alert)   # ids only, in clear
    store.flush()
    assert [n.kind for n in sink.notices].count("panic-value") == 1


@pytest.mark.parametrize(("unit", "alerted"), [("mmol/l", True), ("Mmol/L", False)])
def test_a_queued_panic_value_in_a_lower_case_litre_is_alerted(
        lab_lv: Labvault, store: AlertService, tenant_id: str, unit: str,
        alerted: bool) -> None:
    """The queue judges units as the results do: mmol/l is the catalogue's mmol/L (UCUM's
    litre is l or L); Mmol/L (mega) is another unit, about which nothing is sure."""
    import datetime

    from labvault.interop.hl7.handler import Hl7Handler
    from labvault.synthetic import make_nir
    h = Hl7Handler(lab_lv, Actor.system("mllp"), tenant_id)
    unknown = make_nir("F", datetime.date(1980, 5, 17), "59350", 302)
    out, _ = h.handle(_oru("Q3", unknown, "932", "7.9", unit))
    assert out.ack_code == "AA" and out.patient_id is None and len(out.issue_ids) == 1
    assert len(_panics(store, tenant_id)) == (1 if alerted else 0)


def _queued_panic(lv: Labvault, tenant_id: str, control: str, serial: int
                  ) -> tuple[str, str, str]:
    """A critical potassium (7.9) for a patient the laboratory does not know yet, waiting
    in the import-issues queue with its panic-value alert: (issue, alert, NIR)."""
    import datetime

    from labvault.interop.hl7.handler import Hl7Handler
    from labvault.synthetic import make_nir
    nir = make_nir("F", datetime.date(1980, 5, 17), "59350", serial)
    out, _ = Hl7Handler(lv, Actor.system("mllp"), tenant_id).handle(
        _oru(control, nir, str(serial), "7.9"))
    (iid,) = out.issue_ids
    (alert,) = [a for a in lv.alerts.list(Actor.operator(), tenant_id)  # type: ignore[attr-defined]
                if a["kind"] == "panic-value" and a["detail"]["detail"].get("issue_id") == iid]
    assert alert["status"] == "open"
    return iid, alert["id"], nir


def _alert(store: AlertService, tenant_id: str, alert_id: str) -> dict[str, Any]:
    (a,) = [a for a in store.list(Actor.operator(), tenant_id) if a["id"] == alert_id]
    return a


def test_a_queued_panic_values_alert_closes_when_its_issue_is_resolved(
        lab_lv: Labvault, store: AlertService, operator: Actor, tenant_id: str,
        technician: Actor) -> None:
    """QA: the issue resolved (its results attached to the patient), its panic-value alert
    stayed open. It is now taken in hand by whoever resolved the issue, with a note saying
    so; the value, now the patient's result, is alerted by the results' own path, naming
    the patient, order and result."""
    iid, alert_id, nir = _queued_panic(lab_lv, tenant_id, "QR1", 311)
    pid = lab_lv.patients.register(operator, tenant_id, {**patient_data(), "nir": nir})
    done = lab_lv.lab.messages.resolve_issue(technician, iid, patient_id=pid)
    closed = _alert(store, tenant_id, alert_id)
    assert closed["status"] == "acked" and closed["acked_by"] == technician.id
    assert closed["detail"]["closed"] == {"by": "import-issue", "issue_id": iid,
                                          "resolution": "resolved", "patient_id": pid}
    assert closed["detail"]["detail"]["issue_id"] == iid            # the detail is kept
    (now,) = [a for a in _panics(store, tenant_id) if a["status"] == "open"]
    named = _named(now)          # the potassium among the message's five results
    assert named["patient_id"] == pid and named["observation_id"] in done["observation_ids"]
    (k,) = [o for o in lab_lv.lab.list_observations(operator, tenant_id)
            if o.observation_id == named["observation_id"]]
    assert k.observation.code == "2823-3" and k.observation.numeric == 7.9
    # the acknowledgement is audited, with its note
    from labvault.services.gate import MemoryAudit
    audit = lab_lv.gate.audit
    assert isinstance(audit, MemoryAudit)
    (acked,) = [e for e in audit.events if e[1] == "alert.acked"]
    assert acked[0] == technician and acked[4]["alert_id"] == alert_id
    assert acked[4]["closed"]["resolution"] == "resolved"


def test_a_queued_panic_values_alert_closes_when_its_issue_is_discarded(
        lab_lv: Labvault, store: AlertService, tenant_id: str, biologist: Actor) -> None:
    iid, alert_id, _nir = _queued_panic(lab_lv, tenant_id, "QD1", 312)
    lab_lv.lab.messages.discard_issue(biologist, iid, "tube d'un autre laboratoire, rappelé",
                                      all_results=True)
    closed = _alert(store, tenant_id, alert_id)
    assert closed["status"] == "acked" and closed["acked_by"] == biologist.id
    assert closed["detail"]["closed"] == {"by": "import-issue", "issue_id": iid,
                                          "resolution": "discarded"}
    assert [a["id"] for a in _panics(store, tenant_id)] == [alert_id]   # nothing new


def test_a_refused_resolution_leaves_the_alert_open(
        lab_lv: Labvault, store: AlertService, tenant_id: str, technician: Actor) -> None:
    """Nothing done, nothing closed: the issue and its alert stay open together."""
    iid, alert_id, _nir = _queued_panic(lab_lv, tenant_id, "QN1", 313)
    with pytest.raises(UserError):
        lab_lv.lab.messages.discard_issue(technician, iid, "  ")
    with pytest.raises(UserError):
        lab_lv.lab.messages.resolve_issue(technician, iid)          # no patient given
    assert _alert(store, tenant_id, alert_id)["status"] == "open"
