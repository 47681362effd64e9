"""Queued reads: an allowed read's entry body rendered from a template of its shape.

With group commit on (``LABVAULT_AUDIT_READ_GROUP_MS``), an allowed read or search is
queued as the gate's decision and its time, and becomes an entry when its batch is
written. Reads of one *shape* — the same actor, roles, session, categories, purpose, rule
and tenant — differ only in their patients, request id and sealed client address, so
their canonical body is cut once per shape from ``canonical`` itself, with three holes,
and each read fills the holes. The text is byte for byte what ``canonical`` gives for the
full body (tests compare them on generated decisions); anything the template cannot
express (a written reason, decision detail, a value of an unusual type) goes the general
way, through ``Draft``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from labvault.audit.chain import clean
from labvault.audit.entry import CLIENT_MARKERS, canonical, sorted_codes

if TYPE_CHECKING:
    from labvault.services.gate import Access, Decision

_HOLE_PATIENTS = "\x00patients\x00"
_HOLE_REQUEST = "\x00request\x00"
_HOLE_SEALED = "\x00sealed\x00"
MAX_TEMPLATES = 4096        # shapes kept; a new session or role makes a new one
# A queued read's client address: sealed once per address per written batch under the
# chain's ``data`` key, with the fixed record id CLIENT_RECORD in its associated data (the
# entry's MAC already binds it to its entry), instead of once per entry with the rest of
# the private part in ``sealed``.
CLIENT_SEALED = "client_sealed"
CLIENT_RECORD = "client"


class QueuedRead(NamedTuple):
    access: Access
    decision: Decision
    at_us: int


def decision_body(access: Access, decision: Decision) -> dict[str, Any]:
    """The clear body of a gate decision's entry, before detail, reason and client."""
    a = access.actor
    cats = decision.categories & access.categories if decision.allowed else access.categories
    body: dict[str, Any] = {
        "v": 1, "actor_kind": a.kind, "roles": sorted_codes(a.roles),
        "actor_tenant": a.tenant_id, "resource": access.resource,
        "patients": list(access.patient_ids), "categories": sorted_codes(cats),
        "purpose": access.purpose, "rule": decision.rule, "request_id": a.request_id,
        "session_id": a.session_id, "tenant": access.tenant_id,
    }
    if decision.break_glass:
        body["break_glass"] = True
    return body


def sealed_client(client: str | None) -> bool:
    """A network address is personal data: sealed into the body, never clear."""
    return client is not None and client not in CLIENT_MARKERS


@dataclass(frozen=True, slots=True)
class Template:
    actor_id: str           # the clear columns, cleaned once per shape
    action: str
    parts: tuple[str, ...]  # the canonical body text around its holes, in text order
    sealed: bool            # the client address goes in ``client_sealed``

    def text(self, patients_json: str, request_json: str, sealed_b64: str | None) -> str:
        a = self.parts
        if self.sealed:     # "client_sealed" sorts before "patients" and "request_id"
            return f'{a[0]}"{sealed_b64}"{a[1]}{patients_json}{a[2]}{request_json}{a[3]}'
        return f"{a[0]}{patients_json}{a[1]}{request_json}{a[2]}"


_MARKS = {hole: orjson.dumps(hole).decode() for hole in (_HOLE_SEALED, _HOLE_PATIENTS,
                                                          _HOLE_REQUEST)}


def make_template(access: Access, decision: Decision) -> Template | None:
    """The shape of ``access``'s entry body, or None if it needs the general way."""
    if decision.detail or access.reason or decision.break_glass:
        return None
    a = access.actor
    body = decision_body(access, decision)
    body["patients"], body["request_id"] = _HOLE_PATIENTS, _HOLE_REQUEST
    hidden = sealed_client(a.client)
    body["client"] = None if hidden else a.client
    if hidden:
        body[CLIENT_SEALED] = _HOLE_SEALED
    rest = canonical(body)
    parts: list[str] = []
    for hole, mark in _MARKS.items():          # the order ``Template.text`` fills them in
        if hole == _HOLE_SEALED and not hidden:
            if mark in rest:
                return None
            continue
        if rest.count(mark) != 1:
            return None     # a value that happens to spell a hole: the general way
        before, rest = rest.split(mark)
        parts.append(before)
    parts.append(rest)
    return Template(clean(a.id), clean(access.action.value), tuple(parts), hidden)


def shape(access: Access, decision: Decision) -> tuple[object, ...]:
    """Everything the template depends on (all but patients, request id and address)."""
    a = access.actor
    client = a.client
    # what makes a read go the general way is part of the shape too: a read with a written
    # reason must never be rendered from the template of the same read without one
    return (bool(access.reason), bool(decision.detail), decision.break_glass,
            a.id, a.kind, a.roles, a.tenant_id, a.session_id,
            client if client is None or client in CLIENT_MARKERS else True,
            access.action, access.tenant_id, access.resource, access.purpose,
            access.categories, decision.categories, decision.allowed, decision.rule)


def json_values(access: Access) -> tuple[str, str] | None:
    """The patients and request id as canonical JSON, or None if a value is of a type
    ``canonical`` would not hand to orjson (it would fall back to ``json``)."""
    pids, rid = access.patient_ids, access.actor.request_id
    if len(pids) == 1 and type(pids[0]) is str and pids[0].isascii() and pids[0].isidentifier():
        # one random id (the usual read): ASCII letters, digits and "_" need no escaping
        patients = f'["{pids[0]}"]'
    elif all(type(p) is str for p in pids):
        try:
            patients = orjson.dumps(pids).decode()
        except TypeError:   # a lone surrogate: the general way reports it
            return None
    else:
        return None
    if rid is None:
        return patients, "null"
    if type(rid) is not str:
        return None
    try:
        return patients, orjson.dumps(rid).decode()
    except TypeError:
        return None
