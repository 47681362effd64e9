"""The gate: the one code path from a door to plaintext patient data (DESIGN §3).

Every core call that reads or writes personal data passes here, in this order:

    authenticate (the door hands an authenticated ``Actor``)
    -> policy     (tenant scope × role × category × action × purpose; default deny)
    -> budget     (read budgets, anomaly rules, honeytokens — ``guard``)
    -> audit      (one entry per decision, allow or deny — ``audit``)
    -> unseal     (only now are data keys opened)

Policy, budget and audit are Protocols so each area plugs its implementation in;
the defaults here are the strict ones (deny all but the CLI operator, no budget,
an in-memory audit list for tests). ``KeyRing.open``/``DataKey.open`` are called
from this module only (a test greps for it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sqlalchemy.engine import Connection

from labvault.crypto import ColumnSealer, DataKey, KeyRing, SealContext, WrappedDek
from labvault.crypto.envelope import unpack
from labvault.domain.actors import Actor
from labvault.domain.categories import Action, Category
from labvault.errors import AccessDenied, IntegrityError, KeyUnavailable, NotFound
from labvault.store import repositories as repo

# The rule of a refusal for an id the actor's laboratory does not hold (``refuse_absent``).
ABSENT_RECORD = "absent-record"


@dataclass(frozen=True, slots=True)
class Access:
    """One request to the gate."""

    actor: Actor
    action: Action
    tenant_id: str | None                 # None: platform-level (tenant admin, keys)
    categories: frozenset[Category]
    purpose: str = "care"                 # care | administration | export | audit | breach ...
    patient_ids: tuple[str, ...] = ()     # the random ids touched (never identity)
    reason: str | None = None             # written reason (break-glass, export) — sealed in audit
    resource: str = "patient"             # patient | order | result | report | export | ...


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    categories: frozenset[Category] = frozenset()   # what may actually be opened (minimal data)
    rule: str = "default-deny"                      # which policy row decided
    break_glass: bool = False
    detail: Mapping[str, Any] = field(default_factory=dict)


class Policy(Protocol):
    def decide(self, access: Access) -> Decision: ...


class BudgetHook(Protocol):
    """Counts reads and evaluates anomaly rules; raises ``BudgetExceeded`` to stop."""

    def charge(self, conn: Connection, access: Access, decision: Decision) -> None: ...


class AuditHook(Protocol):
    """Writes one audit entry per decision, in the caller's transaction."""

    def record(self, conn: Connection, access: Access, decision: Decision,
               outcome: str) -> None: ...

    def event(self, conn: Connection, actor: Actor, event: str, outcome: str,
              tenant_id: str | None, detail: Mapping[str, Any]) -> None:
        """A security event that is not a data access: login, logout, failed login, MFA,
        user/role change, key operation, alert... ``detail`` holds no personal data in
        clear (ids only); free text is sealed by the implementation."""
        ...


class AlertSink(Protocol):
    """Raises an alert (guard fills this with stored, deduplicated, dispatched alerts).
    ``subject``: what the alert is about (e.g. one result and its value): alerts about the
    same subject may be merged, alerts about different subjects never are."""

    def raise_alert(self, conn: Connection, tenant_id: str | None, kind: str, severity: str,
                    actor: Actor | None, detail: Mapping[str, Any],
                    subject: str | None = None) -> str | None: ...


class OperatorOnlyPolicy:
    """Foundation policy: the CLI operator (who holds the key file) may do anything;
    everyone else is denied until the access issue's table policy replaces this."""

    def decide(self, access: Access) -> Decision:
        if access.actor.kind in ("operator", "system"):
            return Decision(True, access.categories, rule="operator")
        return Decision(False, rule="default-deny")


class NoBudget:
    def charge(self, conn: Connection, access: Access, decision: Decision) -> None:
        return None


class MemoryAudit:
    """Keeps decisions in memory (tests, and until the audit log is plugged in)."""

    def __init__(self) -> None:
        self.entries: list[tuple[Access, Decision, str]] = []
        self.events: list[tuple[Actor, str, str, str | None, Mapping[str, Any]]] = []

    def record(self, conn: Connection, access: Access, decision: Decision, outcome: str) -> None:
        self.entries.append((access, decision, outcome))

    def event(self, conn: Connection, actor: Actor, event: str, outcome: str,
              tenant_id: str | None, detail: Mapping[str, Any]) -> None:
        self.events.append((actor, event, outcome, tenant_id, detail))


class LogAlerts:
    """Alerts as log lines (until the guard's alert store is plugged in)."""

    def __init__(self) -> None:
        self.raised: list[tuple[str | None, str, str, Mapping[str, Any]]] = []

    def raise_alert(self, conn: Connection, tenant_id: str | None, kind: str, severity: str,
                    actor: Actor | None, detail: Mapping[str, Any],
                    subject: str | None = None) -> str | None:
        import logging
        logging.getLogger("labvault.alerts").warning("ALERT %s %s tenant=%s actor=%s",
                                                     severity, kind, tenant_id,
                                                     actor.id if actor else None)
        self.raised.append((tenant_id, kind, severity, detail))
        return None


def _json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


class Gate:
    alerts: AlertSink | None = None      # set by ``Labvault``; break-glass decisions raise an alert

    def __init__(self, keyring: KeyRing, policy: Policy, budget: BudgetHook,
                 audit: AuditHook, load_tenant_keys: Callable[[Connection, str], None]) -> None:
        self.keyring = keyring
        self.policy = policy
        self.budget = budget
        self.audit = audit
        self._load_tenant_keys = load_tenant_keys

    # -- decisions -----------------------------------------------------------------
    def check(self, conn: Connection, access: Access,
              detail: Mapping[str, Any] | None = None) -> Decision:
        """Policy -> budget -> audit. Raises ``AccessDenied`` (audited) on refusal.
        ``detail``: what the caller adds to the decision's audit entry, codes only (the
        fields a write changes: ``changed``), never a value."""
        decision = self.policy.decide(access)
        if detail:
            decision = replace(decision, detail={**decision.detail, **detail})
        if not decision.allowed:
            self._refused(conn, access, decision)
            raise AccessDenied("not allowed",
                               "ask your laboratory administrator if your work needs this access")
        try:
            self.budget.charge(conn, access, decision)
        except AccessDenied as exc:
            self.audit.record(conn, access, Decision(False, rule=exc.code,
                                                     detail={"message": exc.message}), "denied")
            raise
        self.audit.record(conn, access, decision, "allowed")
        if decision.break_glass and self.alerts is not None:
            self.alerts.raise_alert(conn, access.tenant_id, "break-glass", "high", access.actor,
                                    {"rule": decision.rule, "resource": access.resource,
                                     "patient_ids": list(access.patient_ids)})
        return decision

    def refuse_absent(self, conn: Connection, access: Access, kind: str, asked: str) -> None:
        """Record that ``access`` named a record of ``kind`` its laboratory does not hold
        (absent, or another laboratory's: one entry for both, as the caller gets one 404
        for both). A refusal like a policy one (outcome ``denied``, counted by the guard's
        rules on refusals), so it survives the rollback of the refused work; the id asked
        for is caller input: sealed in the entry, never clear. The caller raises its
        ``NotFound``."""
        self._refused(conn, access, Decision(False, rule=ABSENT_RECORD,
                                             detail={"kind": kind, "asked": asked}))

    def refuse(self, conn: Connection, access: Access, rule: str) -> None:
        """Record that a service refused ``access`` by a rule of its own (``rule``: e.g. a
        honeytoken record a merge must never touch) after the policy would have allowed
        it: audited ``denied`` like a policy refusal (it survives the work's rollback).
        The caller raises its own error."""
        self._refused(conn, access, Decision(False, rule=rule))

    def _refused(self, conn: Connection, access: Access, decision: Decision) -> None:
        """A refusal: counted by the guard's anomaly rules on refusals (when the budget
        hook has them), then audited ``denied`` (it survives the work's rollback)."""
        denied = getattr(self.budget, "denied", None)
        if denied is not None:
            denied(conn, access, decision)
        self.audit.record(conn, access, decision, "denied")

    # -- patient records ---------------------------------------------------------------
    def _dek(self, conn: Connection, tenant_id: str, patient_id: str) -> DataKey:
        wrapped = repo.patient_dek(conn, tenant_id, patient_id)
        if wrapped is None:
            raise NotFound("no such patient", "check the patient id; erased patients cannot be read")
        if not self.keyring.is_loaded(tenant_id, "kek", wrapped[0]):   # hot path: cached KEK
            self._load_tenant_keys(conn, tenant_id)
        return self.keyring.open_dek(tenant_id, patient_id, WrappedDek(*wrapped))

    def read_patients(self, conn: Connection, access: Access
                      ) -> dict[str, dict[Category, dict[str, Any]]]:
        """Check, then open the allowed categories of each patient in ``access.patient_ids``."""
        assert access.tenant_id is not None
        decision = self.check(conn, access)
        wanted = [c for c in access.categories if c in decision.categories]
        rows = repo.sealed_patients(conn, access.tenant_id, access.patient_ids, wanted)
        out: dict[str, dict[Category, dict[str, Any]]] = {}
        only: Mapping[str, Any] = decision.detail.get("fields", {})   # partial categories
        if len(rows) > 1:       # bulk reads (exports): every data key in one query
            wrapped = repo.patient_deks(conn, access.tenant_id, list(rows))
        for patient_id, blobs in rows.items():
            if len(rows) == 1:
                dek = self._dek(conn, access.tenant_id, patient_id)
            else:
                w = wrapped.get(patient_id)
                if w is None:
                    raise NotFound("no such patient",
                                   "check the patient id; erased patients cannot be read")
                if not self.keyring.is_loaded(access.tenant_id, "kek", w[0]):
                    self._load_tenant_keys(conn, access.tenant_id)
                dek = self.keyring.open_dek(access.tenant_id, patient_id, WrappedDek(*w))
            opened: dict[Category, dict[str, Any]] = {}
            for cat, blob in blobs.items():
                if blob is not None:
                    ctx = SealContext(access.tenant_id, "patients", cat.value, patient_id)
                    values = json.loads(dek.open(ctx, blob))
                    if cat.value in only:
                        values = {k: v for k, v in values.items() if k in only[cat.value]}
                    opened[cat] = values
            out[patient_id] = opened
        return out

    def seal_patient(self, conn: Connection, access: Access, dek: DataKey, patient_id: str,
                     data: Mapping[Category, Mapping[str, Any]]) -> dict[Category, bytes]:
        """Seal category blobs for a write that ``check`` already allowed."""
        assert access.tenant_id is not None
        return {cat: dek.seal(SealContext(access.tenant_id, "patients", cat.value, patient_id),
                              _json(values))
                for cat, values in data.items()}

    # -- tenant-level sealed values (audit reasons, alerts, evidence, messages) -----------
    def seal_tenant_value(self, conn: Connection, tenant_id: str, table: str, column: str,
                          record_id: str, plaintext: bytes, purpose: str = "data") -> bytes:
        self._load_tenant_keys(conn, tenant_id)
        version = repo.current_key_version(conn, tenant_id, purpose)
        if version is None:
            raise KeyUnavailable(f"tenant {tenant_id} has no {purpose} key",
                                 "run `labvault keys rotate` to create one")
        key = self.keyring.tenant_data_key(tenant_id, purpose, version)
        return key.seal(SealContext(tenant_id, table, column, record_id), plaintext)

    def open_tenant_value(self, conn: Connection, access: Access, table: str, column: str,
                          record_id: str, sealed: bytes, purpose: str = "data") -> bytes:
        """Check ``access`` then open a tenant-level sealed value."""
        assert access.tenant_id is not None
        self.check(conn, access)
        return self.open_tenant_value_checked(conn, access.tenant_id, table, column, record_id,
                                              sealed, purpose)

    def open_tenant_value_checked(self, conn: Connection, tenant_id: str, table: str, column: str,
                                  record_id: str, sealed: bytes, purpose: str = "data") -> bytes:
        """Open a tenant-level value after a ``check`` the caller already made
        (e.g. one check for a page of alerts)."""
        self._load_tenant_keys(conn, tenant_id)
        key = self._sealing_key(tenant_id, table, column, sealed, purpose)
        return key.open(SealContext(tenant_id, table, column, record_id), sealed)

    def _sealing_key(self, tenant_id: str, table: str, column: str, sealed: bytes,
                     purpose: str) -> DataKey:
        """The tenant key version a sealed value's envelope names (``data-3``...)."""
        key_id, _ = unpack(sealed)
        try:
            version = int(key_id.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            raise IntegrityError(f"{table}.{column}: a value sealed under an unknown "
                                 f"key {key_id!r}") from None
        return self.keyring.tenant_data_key(tenant_id, purpose, version)

    def tenant_column_sealer(self, conn: Connection, tenant_id: str, table: str, column: str,
                             purpose: str = "data") -> ColumnSealer:
        """``seal_tenant_value`` for many rows of one column (the breach encodings written
        with a batch of patients): the tenant's current key, the shared part of the
        associated data built once."""
        self._load_tenant_keys(conn, tenant_id)
        version = repo.current_key_version(conn, tenant_id, purpose)
        if version is None:
            raise KeyUnavailable(f"tenant {tenant_id} has no {purpose} key",
                                 "run `labvault keys rotate` to create one")
        return self.keyring.tenant_data_key(tenant_id, purpose, version).column(
            tenant_id, table, column)

    def open_tenant_column_checked(self, conn: Connection, tenant_id: str, table: str,
                                   column: str, items: Sequence[tuple[str, bytes]],
                                   purpose: str = "data") -> list[bytes]:
        """``open_tenant_value_checked`` of many (record id, sealed) of one column, in
        order, after a ``check`` the caller made; values sealed under older key versions
        (before a rotation) open with theirs."""
        self._load_tenant_keys(conn, tenant_id)
        groups: dict[bytes, list[int]] = {}
        for i, (_, sealed) in enumerate(items):
            groups.setdefault(sealed[:3 + sealed[2]] if len(sealed) > 2 else sealed,
                              []).append(i)
        out: list[bytes] = [b""] * len(items)
        for head, rows in groups.items():
            sealer = self._sealing_key(tenant_id, table, column, head, purpose).column(
                tenant_id, table, column)
            for i, opened in zip(rows, sealer.open_many([items[i] for i in rows]), strict=True):
                out[i] = opened
        return out

    def categories_of(self, access: Access) -> Iterable[Category]:
        """What the policy would let ``access`` open, without deciding (for UIs)."""
        d = self.policy.decide(access)
        return d.categories if d.allowed else ()

    # -- patient-keyed records outside the patients table (lab orders, results...) --------
    def patient_key(self, conn: Connection, tenant_id: str, patient_id: str) -> DataKey:
        """The patient's data key, to seal/open records a ``check`` already allowed."""
        return self._dek(conn, tenant_id, patient_id)

    def open_patient_value(self, dek: DataKey, tenant_id: str, table: str, column: str,
                           record_id: str, sealed: bytes) -> bytes:
        """Open one value sealed under a patient's key (after a ``check``)."""
        return dek.open(SealContext(tenant_id, table, column, record_id), sealed)
