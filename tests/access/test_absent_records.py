"""Every access naming an id the caller's laboratory does not hold leaves a refusal.

A read or a write of another laboratory's record answers exactly what an absent id answers
(``test_api_matrix.test_other_lab_records_answer_exactly_like_absent_ids``); here, each
such access is also recorded: one ``denied`` entry, rule ``absent-record``, in the
caller's laboratory's chain, none in the other laboratory's (docs/audit.md, "Refusals
survive their rollback"). Routes come from the application's own route table: a new route
naming a record fails ``test_every_route_naming_a_record_records_its_misses`` until it
records its misses or is listed in ``NOT_RECORDED`` with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from labvault.api.security import WEB_PREFIXES
from labvault.audit.entry import PLATFORM
from labvault.domain.actors import Actor
from labvault.errors import NotFound
from labvault.services.gate import ABSENT_RECORD
from labvault.store.tables_audit import audit_entries as E
from tests.access.conftest import PASSWORD, World
from tests.access.test_api_matrix import (
    MATRIX,
    RANDOM,
    Ctx,
    _absent,
    _call,
    _id_params,
    _id_routes,
    app_routes,
)

STAFF = ("reception", "technician", "biologist", "lab_admin", "dpo", "patient")

# Routes (or FHIR types of the FHIR read/update routes) naming a record whose misses are
# not recorded, and why. Anything else naming a record must record them.
NOT_RECORDED: dict[tuple[str, str, str | None], str] = {
    **{("GET" if op is None else "POST" if op != "roles" else "PUT",
        "/api/v1/users/{account_id}" + ("" if op is None else f"/{op}"), None):
       "an account is no patient record: user management (lab_admin) answers its own 404"
       for op in (None, "roles", "disable", "enable", "unlock", "reset-mfa", "reset-password",
                  "reissue-enrolment")},
    ("POST", "/api/v1/alerts/{alert_id}/ack", None):
        "an alert is the laboratory's notice, not a record: the alert store's own 404",
    ("POST", "/console/alertes/{alert_id}/prise-en-compte", None):
        "an alert is the laboratory's notice, not a record: the alert store's own 404",
    ("GET", "/fhir/R4/{rtype}/{fhir_id}", "Practitioner"):
        "the prescribers' directory holds no patient data",
    ("PUT", "/fhir/R4/{rtype}/{fhir_id}", "Practitioner"):
        "the prescribers' directory holds no patient data",
    ("GET", "/fhir/R4/{rtype}/{fhir_id}", "AuditEvent"):
        "the audit log's own entries (the DPO's), not a record of the laboratory's work",
}


@dataclass(frozen=True)
class Entry:
    seq: int
    actor_id: str
    action: str
    outcome: str
    body: dict[str, Any]


def _chain(world: World, chain: str, since: int = 0) -> list[Entry]:
    with world.lv.begin() as conn:
        rows = conn.execute(select(E.c.seq, E.c.actor_id, E.c.action, E.c.outcome, E.c.body)
                            .where(E.c.tenant_id == chain, E.c.seq >= since)
                            .order_by(E.c.seq)).all()
    return [Entry(r.seq, r.actor_id, r.action, r.outcome, json.loads(r.body)) for r in rows]


def _next_seq(world: World, chain: str) -> int:
    with world.lv.begin() as conn:
        n = conn.execute(select(func.max(E.c.seq)).where(E.c.tenant_id == chain)).scalar()
    return -1 if n is None else int(n) + 1


def _refusals(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.body.get("rule") == ABSENT_RECORD]


def _allowed_role(key: tuple[str, str]) -> str:
    """The first laboratory role the route lets act on its own laboratory's record."""
    own = MATRIX[key].own
    for role in STAFF:
        want = own[role]
        if min(want if isinstance(want, tuple) else (want,)) < 400:
            return role
    raise AssertionError(f"{key}: no role of a laboratory may use it")


def _fhir_type(url: str) -> str | None:
    return url.split("/")[3] if url.startswith("/fhir/R4/") else None


def _probe(world: World, c: Ctx, client: TestClient, key: tuple[str, str], role: str,
           url: str, body: dict[str, Any] | None) -> list[str]:
    """Call ``url`` as laboratory A's ``role``: the route's refusal of another laboratory's
    record, one refusal in A's chain, nothing in B's. Returns what went wrong."""
    a, b = world.a.tenant_id, world.b.tenant_id
    real = RANDOM.search(url)
    assert real is not None, url
    asked = real.group(3)
    token = world.lv.accounts.login(c.email(role), PASSWORD, c.code(role)).token
    if body is not None and "totp" in body:
        body = {**body, "totp": c.code(role)}
    start_a, start_b = _next_seq(world, a), _next_seq(world, b)
    resp = _call(client, key[0], url, body, token, key[1].startswith(WEB_PREFIXES))
    other = MATRIX[key].other
    assert other is not None, key
    want = other[role]
    errors = []
    if resp.status_code not in (want if isinstance(want, tuple) else (want,)):
        errors.append(f"{resp.status_code} (want {want}) {resp.text[:120]}")
    new = _refusals(_chain(world, a, start_a))
    if len(new) != 1:
        errors.append(f"{len(new)} absent-record entries in lab A's chain (want 1)")
    elif (new[0].actor_id, new[0].outcome, new[0].body["patients"], new[0].body["tenant"]) != (
            world.a.accounts[role], "denied", [], a):
        errors.append(f"entry {new[0]}")
    elif asked in json.dumps(new[0].body):
        errors.append("the id asked for is in clear in the entry")
    if _chain(world, b, start_b):
        errors.append("entries written in lab B's chain")
    return errors


def test_every_route_naming_a_record_records_its_misses(world: World,
                                                        client: TestClient) -> None:
    from labvault.services.audit import install_audit
    install_audit(world.lv)
    c = Ctx(world)
    cases = _id_routes(c, client)
    naming = {(m, p) for m, p in app_routes(client) if _id_params(p)}
    assert naming == set(cases), sorted(naming ^ set(cases))
    listed = {(m, p) for m, p, _t in NOT_RECORDED}
    assert listed <= naming, f"NOT_RECORDED names routes that do not exist: {listed - naming}"
    failures, probed = [], 0
    for key, requests in sorted(cases.items()):
        role = _allowed_role(key)
        for url, body in requests:
            if (*key, _fhir_type(url)) in NOT_RECORDED:
                continue
            real = RANDOM.search(url)
            assert real is not None, url
            nowhere = url.replace(real.group(0), _absent(real.group(0)))
            nowhere_body = (json.loads(json.dumps(body).replace(real.group(3), "0" * 25 + "v"))
                            if body is not None else None)
            # another laboratory's record, then an id nobody has: the same refusal
            for target, sent in ((url, body), (nowhere, nowhere_body)):
                probed += 1
                failures += [f"{key[0]} {target} as {role}: {e}"
                             for e in _probe(world, c, client, key, role, target, sent)]
    assert probed >= 2 * 30, probed     # the route table was walked, not an empty list
    assert not failures, "\n".join(failures)


def _report_items(world: World, role: str) -> list[dict[str, Any]]:
    from labvault.services.audit import audit_of
    report = audit_of(world.lv).user_report(Actor.operator(), world.a.accounts[role])
    return [e for e in report["items"] if e["rule"] == ABSENT_RECORD]


def test_fhir_reads_of_another_laboratory_s_records_are_recorded(
        world: World, client: TestClient) -> None:
    """A FHIR read by id goes through the same services: the 404 OperationOutcome of an
    absent id, one refusal (a read, kind of the record asked for, the id sealed)."""
    from labvault.interop.fhir.ids import to_fhir
    from labvault.services.audit import install_audit
    from tests.web.helpers import order
    install_audit(world.lv)
    c = Ctx(world)
    rep = order(world, world.b, world.b.patients[0])
    obs = rep.observations[0].observation_id
    token = world.lv.accounts.login(c.email("biologist"), PASSWORD, c.code("biologist")).token
    for rtype, record_id, kind in (("Patient", world.b.patients[0], "patient"),
                                   ("Observation", obs, "observation"),
                                   ("DiagnosticReport", rep.report_id, "report"),
                                   ("ServiceRequest", rep.order_id, "order")):
        before = len(_report_items(world, "biologist"))
        r = _call(client, "GET", f"/fhir/R4/{rtype}/{to_fhir(record_id)}", None, token)
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
        new = _report_items(world, "biologist")[before:]
        assert len(new) == 1, (rtype, new)
        (entry,) = new
        assert (entry["tenant_id"], entry["action"], entry["outcome"]) == (
            world.a.tenant_id, "read", "denied")
        assert entry["detail"]["kind"] == kind and entry["patient_ids"] == []
        assert entry["sealed"]["asked"] == record_id
        assert record_id not in json.dumps(entry["detail"])
    # a search by id (``_id``) naming it: an empty Bundle, and the search's refusal
    before = len(_report_items(world, "biologist"))
    found = _call(client, "GET", f"/fhir/R4/Patient?_id={to_fhir(world.b.patients[0])}", None,
                  token)
    assert found.status_code == 200 and not found.json().get("entry")
    (entry,) = _report_items(world, "biologist")[before:]
    assert (entry["action"], entry["detail"]["kind"]) == ("search", "patient")
    # a read of a record the laboratory holds adds no such entry
    before = len(_report_items(world, "biologist"))
    own = _call(client, "GET", f"/fhir/R4/Patient/{to_fhir(world.a.patients[0])}", None, token)
    assert own.status_code == 200
    assert len(_report_items(world, "biologist")) == before


def test_erasing_another_laboratory_s_patient_is_recorded_and_erases_nothing(
        world: World, client: TestClient) -> None:
    from labvault.services.audit import install_audit
    install_audit(world.lv)
    c = Ctx(world)
    token = world.lv.accounts.login(c.email("biologist"), PASSWORD, c.code("biologist")).token
    victim = world.b.patients[2]
    start_b = _next_seq(world, world.b.tenant_id)
    r = _call(client, "DELETE", f"/api/v1/patients/{victim}", None, token)
    assert r.status_code == 404 and r.json()["title"] == "no such patient"
    (entry,) = _report_items(world, "biologist")
    assert (entry["tenant_id"], entry["action"], entry["purpose"]) == (
        world.a.tenant_id, "erase", "erasure")
    assert entry["detail"] == {"kind": "patient"} and entry["patient_ids"] == []
    assert entry["sealed"]["asked"] == victim
    assert _chain(world, world.b.tenant_id, start_b) == []
    # lab B's patient is whole: its own biologist reads it
    shown = world.lv.patients.show(world.actor(world.b.emails["biologist"]), victim)
    assert shown["birth_name"] == world.b.patient_data[2]["birth_name"]


@pytest.mark.parametrize("who", ["operator", "system"])
def test_platform_actors_misses_go_to_the_platform_chain(world: World, who: str) -> None:
    """The CLI operator and labvault's jobs hold no laboratory: an id nobody has is their
    refusal in the chain of tenant-less entries (``_platform``), and nothing else changes
    -- any laboratory's existing patient is theirs to reach, as before."""
    from labvault.services.audit import install_audit
    install_audit(world.lv)
    actor = Actor.operator() if who == "operator" else Actor.system("retention")
    nowhere = "pt_" + "0" * 25 + "v"
    start = _next_seq(world, PLATFORM)
    starts = {t: _next_seq(world, t) for t in (world.a.tenant_id, world.b.tenant_id)}
    with pytest.raises(NotFound):
        if who == "operator":
            world.lv.patients.show(actor, nowhere, purpose="administration")
        else:
            world.lv.patients.erase(actor, nowhere, reason="retention")
    (entry,) = _refusals(_chain(world, PLATFORM, start))
    assert (entry.actor_id, entry.outcome, entry.body["tenant"]) == (actor.id, "denied", None)
    assert entry.body["detail"] == {"kind": "patient"} and nowhere not in json.dumps(entry.body)
    assert all(_chain(world, t, s) == [] for t, s in starts.items())
    # an existing patient of either laboratory: read as before, no refusal
    world.lv.patients.show(Actor.operator(), world.b.patients[0], purpose="administration")
    assert len(_refusals(_chain(world, PLATFORM, start))) == 1
