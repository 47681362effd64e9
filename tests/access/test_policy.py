"""The policy table: default deny, tenant scope, patient self scope, platform without patient
data, break-glass, and the generated documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.access.policy import BREAK_GLASS, RESOURCES, RULES, TablePolicy, render_markdown
from labvault.domain.actors import Actor
from labvault.domain.categories import PATIENT_CATEGORIES, Action, Category
from labvault.errors import AccessDenied
from labvault.services.gate import Access
from tests.access.conftest import World

POLICY = TablePolicy()
ROOT = Path(__file__).resolve().parents[2]
STAFF = ("reception", "technician", "biologist", "lab_admin", "dpo", "platform_operator")
PATIENT_DATA = frozenset({"patient", "order", "specimen", "observation", "report",
                          "hl7-message", "import-issue"})


def test_doc_matches_table() -> None:
    doc = ROOT / "docs" / "access-policy.md"
    assert doc.read_text() == render_markdown(), \
        "docs/access-policy.md is stale: run `labvault policy doc -o docs/access-policy.md`"


def test_every_resource_has_rows_and_rows_name_known_resources() -> None:
    assert {r.resource for r in RULES} == set(RESOURCES)


accesses = st.builds(
    lambda kind, roles, actor_tenant, tenant, resource, action, cats, purpose, reason, pids,
    own_pid: (Actor(kind=kind, id="acct_x", tenant_id=actor_tenant, roles=frozenset(roles),
                    patient_id=own_pid if kind == "patient" else None),
              Access(Actor(kind=kind, id="acct_x", tenant_id=actor_tenant,
                           roles=frozenset(roles),
                           patient_id=own_pid if kind == "patient" else None),
                     action, tenant, frozenset(cats), purpose, tuple(pids), reason, resource)),
    st.sampled_from(["staff", "patient"]),
    st.lists(st.sampled_from([*STAFF, "patient", "ghost"]), max_size=3),
    st.sampled_from([None, "lab_a", "lab_b"]),
    st.sampled_from([None, "lab_a", "lab_b"]),
    st.sampled_from([*RESOURCES, "unknown"]),
    st.sampled_from(list(Action)),
    st.sets(st.sampled_from(list(Category))),
    st.sampled_from(["care", "administration", "erasure", BREAK_GLASS, "export", "x"]),
    st.sampled_from([None, "", "short", "patient unconscious, emergency transfusion"]),
    st.lists(st.sampled_from(["pt_own", "pt_other"]), max_size=2),
    st.sampled_from(["pt_own", "pt_other"]),
)


@settings(max_examples=1500, deadline=None)
@given(accesses)
def test_policy_invariants(pair: tuple[Actor, Access]) -> None:
    actor, access = pair
    d = POLICY.decide(access)
    if not d.allowed:
        return
    # staff never reach another laboratory; platform accounts never reach patient data
    if actor.kind == "staff" and actor.tenant_id is not None:
        assert access.tenant_id == actor.tenant_id
    if actor.kind == "staff" and actor.tenant_id is None:
        assert access.resource in ("tenant", "keys") and "platform_operator" in actor.roles
        assert not d.categories
    # a patient account reaches exactly its own record
    if actor.kind == "patient":
        assert access.patient_ids == (actor.patient_id,) and access.tenant_id == actor.tenant_id
        assert access.action is Action.READ
    # minimal data: never more than asked
    assert d.categories <= access.categories
    # break-glass only with a written reason and always flagged
    if access.purpose == BREAK_GLASS and d.break_glass:
        assert len((access.reason or "").strip()) >= 10
        assert actor.roles & {"biologist", "dpo"}
    # no role opens patient categories it has no row for
    if actor.kind == "staff" and d.categories & set(PATIENT_CATEGORIES) \
            and access.resource == "patient-merge":
        # identity vigilance: a merge moves every category and shows none of them
        assert access.action is Action.WRITE and access.purpose == "administration"
        assert "lab_admin" in actor.roles
    elif actor.kind == "staff" and d.categories & set(PATIENT_CATEGORIES):
        assert access.resource in PATIENT_DATA | {"export"}
        assert actor.roles & {"reception", "technician", "biologist", "dpo"}
    if "ghost" in actor.roles and not (actor.roles - {"ghost"}):
        pytest.fail("a role without rows was allowed")


def _staff(role: str, tenant: str = "lab_a") -> Actor:
    return Actor(kind="staff", id="acct_x", tenant_id=tenant, roles=frozenset({role}))


ALL = frozenset(PATIENT_CATEGORIES)
EXPECTED_READ = {
    "reception": {Category.IDENTITY, Category.CONTACT, Category.COVERAGE},
    "technician": {Category.IDENTITY, Category.CLINICAL},
    "biologist": set(ALL),
    "lab_admin": None, "dpo": None, "platform_operator": None,
}


@pytest.mark.parametrize("role", STAFF)
def test_each_role_reads_exactly_its_categories(role: str) -> None:
    tenant = None if role == "platform_operator" else "lab_a"
    d = POLICY.decide(Access(_staff(role, tenant or "lab_a") if tenant else
                             Actor(kind="staff", id="p", tenant_id=None,
                                   roles=frozenset({role})),
                             Action.READ, "lab_a", ALL, patient_ids=("pt_1",)))
    want = EXPECTED_READ[role]
    assert (d.categories if d.allowed else None) == want


def test_dpo_break_glass_needs_purpose_and_reason() -> None:
    dpo = _staff("dpo")
    base = Access(dpo, Action.READ, "lab_a", ALL, patient_ids=("pt_1",))
    assert not POLICY.decide(base).allowed
    assert not POLICY.decide(Access(dpo, Action.READ, "lab_a", ALL, BREAK_GLASS,
                                    ("pt_1",), None)).allowed
    d = POLICY.decide(Access(dpo, Action.READ, "lab_a", ALL, BREAK_GLASS, ("pt_1",),
                             "court order 2026-114, records of patient"))
    assert d.allowed and d.break_glass and d.categories == ALL
    assert not POLICY.decide(Access(dpo, Action.WRITE, "lab_a", ALL, BREAK_GLASS, ("pt_1",),
                                    "court order 2026-114, records of patient")).allowed
    assert not POLICY.decide(Access(_staff("dpo", "lab_b"), Action.READ, "lab_a", ALL,
                                    BREAK_GLASS, ("pt_1",), "a long enough reason")).allowed


def test_operator_and_system_allowed_default_deny_otherwise() -> None:
    for actor in (Actor.operator(), Actor.system("purge")):
        assert POLICY.decide(Access(actor, Action.ERASE, "lab_a", ALL)).allowed
    assert not POLICY.decide(Access(_staff("biologist"), Action.READ, "lab_a", ALL,
                                    resource="unknown")).allowed


def test_break_glass_through_gate_alerts_and_audits(world: World) -> None:
    lv = world.lv
    dpo = world.actor(world.a.emails["dpo"])
    pid = world.a.patients[1]
    with pytest.raises(AccessDenied):
        lv.patients.show(dpo, pid)
    shown = lv.patients.show(dpo, pid, purpose=BREAK_GLASS,
                             reason="patient complaint 2026-17: verify the record")
    assert shown["birth_name"]
    raised = lv.alerts.raised  # type: ignore[attr-defined]
    assert [r[1] for r in raised] == ["break-glass"] and raised[0][0] == world.a.tenant_id
    entries = lv.gate.audit.entries  # type: ignore[attr-defined]
    assert entries[-1][1].break_glass and entries[-1][2] == "allowed"
    assert any(e[2] == "denied" and e[0].actor.id == dpo.id for e in entries)


def test_minimal_identity_for_technicians_full_when_another_role_grants_it() -> None:
    from labvault.access.policy import MINIMAL_IDENTITY
    tech = POLICY.decide(Access(_staff("technician"), Action.READ, "lab_a", ALL,
                                patient_ids=("pt_1",)))
    assert set(tech.detail["fields"]["identity"]) == MINIMAL_IDENTITY
    assert "clinical" not in tech.detail["fields"]
    both = Actor(kind="staff", id="x", tenant_id="lab_a",
                 roles=frozenset({"technician", "reception"}))
    d = POLICY.decide(Access(both, Action.READ, "lab_a", ALL, patient_ids=("pt_1",)))
    assert d.categories == ALL and "fields" not in d.detail
    assert "fields" not in POLICY.decide(Access(_staff("biologist"), Action.READ, "lab_a", ALL,
                                                patient_ids=("pt_1",))).detail
