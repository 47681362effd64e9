"""Queued reads: the body rendered from its shape's template is byte for byte the body the
general way (``Draft`` + ``canonical``) writes, whatever the values."""

from __future__ import annotations

import base64
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.audit.entry import canonical
from labvault.audit.log import AuditLog
from labvault.audit.reads import (
    CLIENT_SEALED,
    decision_body,
    json_values,
    make_template,
    shape,
)
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.services.gate import Access, Decision

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_id = st.one_of(_text, st.from_regex(r"[a-z]{2,4}_[0-9a-z]{26}", fullmatch=True))
_cats = st.frozensets(st.sampled_from(list(Category)))


@st.composite
def decisions(draw: st.DrawFn) -> tuple[Access, Decision]:
    actor = Actor(kind=draw(st.sampled_from(["staff", "operator", "patient", "system"])),
                  id=draw(_id), tenant_id=draw(st.none() | _id),
                  roles=draw(st.frozensets(st.sampled_from(["biologist", "technician",
                                                            "reception", "x\x1fy"]))),
                  client=draw(st.none() | st.sampled_from(["cli", "local", "10.0.0.7",
                                                           "2001:db8::1", "é\"\\"])),
                  session_id=draw(st.none() | _id), request_id=draw(st.none() | _text))
    access = Access(actor, draw(st.sampled_from([Action.READ, Action.SEARCH])),
                    draw(st.none() | _id), draw(_cats), purpose=draw(_text),
                    patient_ids=tuple(draw(st.lists(_id, max_size=4))),
                    resource=draw(_text))
    return access, Decision(True, draw(_cats), rule=draw(_text))


@settings(max_examples=400, deadline=None)
@given(d=decisions())
def test_template_text_is_the_canonical_body(d: tuple[Access, Decision]) -> None:
    access, decision = d
    t = make_template(access, decision)
    assert t is not None
    draft = AuditLog._make_draft(access.actor, access.tenant_id, access.action.value, "allowed",
                                 decision_body(access, decision), access.patient_ids, {}, 1)
    sealed = base64.b64encode(os.urandom(40)).decode() if draft.private else None
    # the address alone is private here; a queued read carries it in client_sealed
    want = canonical({**draft.body, CLIENT_SEALED: sealed} if sealed else draft.body)
    values = json_values(access)
    assert values is not None
    assert t.text(*values, sealed) == want
    assert t.sealed == bool(draft.private)
    assert (t.actor_id, t.action) == (draft.actor_id, draft.action)


def test_what_the_template_leaves_to_the_general_way() -> None:
    actor = Actor(kind="staff", id="acct_a", tenant_id="lab_a", client="10.0.0.7")
    read = Access(actor, Action.READ, "lab_a", frozenset({Category.CLINICAL}),
                  patient_ids=("pt_1",))
    ok = Decision(True, frozenset({Category.CLINICAL}), rule="r")
    assert make_template(read, ok) is not None
    for decision in (Decision(True, ok.categories, rule="r", detail={"note": "x"}),
                     Decision(True, ok.categories, rule="r", break_glass=True)):
        assert make_template(read, decision) is None
    reasoned = Access(actor, Action.READ, "lab_a", ok.categories, reason="urgence")
    assert make_template(reasoned, ok) is None
    plain = Access(actor, Action.READ, "lab_a", ok.categories)
    assert shape(reasoned, ok) != shape(plain, ok)      # never served a reasonless template
    assert shape(plain, Decision(True, ok.categories, rule="r", detail={"n": 1})) != shape(
        plain, ok)
    odd = Access(actor, Action.READ, "lab_a", ok.categories, patient_ids=("pt\udcff",))
    assert json_values(odd) is None         # a lone surrogate: the general way reports it
    # the shape ignores what the holes carry, and nothing else
    other = Access(actor, Action.READ, "lab_a", ok.categories, patient_ids=("pt_2",))
    assert shape(read, ok) == shape(other, ok)
    moved = Actor(kind="staff", id="acct_a", tenant_id="lab_a", client="10.9.9.9")
    assert shape(Access(moved, Action.READ, "lab_a", ok.categories), ok) == shape(read, ok)
    for changed in (Access(actor, Action.SEARCH, "lab_a", ok.categories),
                    Access(actor, Action.READ, "lab_b", ok.categories),
                    Access(actor, Action.READ, "lab_a", ok.categories, purpose="audit")):
        assert shape(changed, ok) != shape(read, ok)


def test_values_with_braces_or_hole_spellings() -> None:
    """Braces in values survive the format string; a value spelling a hole goes the
    general way instead of being filled."""
    actor = Actor(kind="staff", id="acct_{p}", tenant_id="lab_a", client="10.0.0.7",
                  session_id="{s}{{r}}", request_id="{r}")
    read = Access(actor, Action.READ, "lab_a", frozenset({Category.CLINICAL}),
                  patient_ids=("pt_1",), purpose="care {x}")
    ok = Decision(True, read.categories, rule="r}")
    t = make_template(read, ok)
    assert t is not None
    values = json_values(read)
    assert values is not None
    draft = AuditLog._make_draft(actor, "lab_a", "read", "allowed", decision_body(read, ok),
                                 read.patient_ids, {}, 1)
    assert t.text(*values, "QUJD") == canonical({**draft.body, CLIENT_SEALED: "QUJD"})
    spelt = Access(actor, Action.READ, "lab_a", read.categories, purpose="\x00patients\x00")
    assert make_template(spelt, ok) is None
