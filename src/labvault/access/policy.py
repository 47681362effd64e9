"""The access policy, as data: one table of rows role × resource × actions ×
categories × purposes × scope. Default deny: a request no row allows is refused.

How a request (``services.gate.Access``) is decided:

1. The CLI ``operator`` (holds the key file on the server) and ``system`` jobs are allowed.
2. Rows match on: one of the actor's roles (a ``patient`` row only for a patient
   account, laboratory rows only for staff), the resource, the action, the purpose
   (``*`` = any purpose except ``break-glass``), and the scope:
   ``own-tenant`` — the request's laboratory is the actor's (staff never reach another lab);
   ``platform`` — the actor is a platform account (no laboratory);
   ``self`` — a patient account, the request touches exactly its own record.
3. Categories: reading opens the intersection of what was asked and what the matching
   rows grant (minimal data; nothing granted = denied); every other action needs all
   asked categories granted (a receptionist may *write* a prescriber she cannot read).
4. Break-glass: if no ordinary row allows, a row marked break-glass may, when the request
   carries purpose ``break-glass`` and a written reason; the decision is flagged
   ``break_glass=True`` and the gate raises an alert.

``docs/access-policy.md`` is generated from ``RULES`` (``labvault policy doc``); a
test fails when the two differ.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from labvault.domain.categories import PATIENT_CATEGORIES, Action, Category
from labvault.services.gate import Access, Decision

OWN = "own-tenant"
PLATFORM = "platform"
SELF = "self"
ANY_PURPOSE = "*"
BREAK_GLASS = "break-glass"
MIN_REASON = 10      # characters of written reason required for break-glass

RESOURCES = ("tenant", "keys", "user", "patient", "order", "specimen", "observation", "report",
             "hl7-message", "import-issue", "alert", "clinical-alert", "audit", "export",
             "breach", "canary", "catalogue", "delivery", "patient-merge")


@dataclass(frozen=True, slots=True)
class Rule:
    role: str
    resource: str
    actions: frozenset[Action]
    categories: frozenset[Category]
    purposes: frozenset[str]
    scope: str
    break_glass: bool = False
    note: str = ""
    # category -> the only fields of it this row opens (absent: the whole category)
    fields: tuple[tuple[Category, frozenset[str]], ...] = ()

    @property
    def name(self) -> str:
        acts = "+".join(a.value for a in Action if a in self.actions)
        return f"{self.role}/{self.resource}/{acts}" + ("/break-glass" if self.break_glass else "")


_CAT = {"I": Category.IDENTITY, "C": Category.CONTACT, "V": Category.COVERAGE,
        "K": Category.CLINICAL, "A": Category.ACCOUNT}
_ACT = {"r": Action.READ, "s": Action.SEARCH, "w": Action.WRITE, "v": Action.VALIDATE,
        "x": Action.EXPORT, "e": Action.ERASE}


def R(role: str, resource: str, actions: str, cats: str = "", purposes: str = ANY_PURPOSE,
      scope: str = OWN, break_glass: bool = False, note: str = "",
      fields: dict[str, frozenset[str]] | None = None) -> Rule:
    """One row. actions: r=read s=search w=write v=validate x=export e=erase;
    categories: I=identity C=contact V=coverage K=clinical A=account;
    fields: {category letter: the only fields opened} for a partial category."""
    assert resource in RESOURCES, resource
    return Rule(role, resource, frozenset(_ACT[a] for a in actions),
                frozenset(_CAT[c] for c in cats), frozenset(purposes.split(",")), scope,
                break_glass, note,
                tuple(sorted(((_CAT[c], f) for c, f in (fields or {}).items()),
                             key=lambda x: x[0].value)))


ALL4 = "ICVK"
# Minimal identity: enough to identify the person on a tube or a result (identity
# vigilance), not the NIR, INS, birth place or legacy id.
MINIMAL_IDENTITY = frozenset({"birth_name", "used_name", "first_names", "birth_date", "sex"})
MIN_I = {"I": MINIMAL_IDENTITY}
CLINICAL_RESOURCES = ("order", "specimen", "observation", "report")

RULES: tuple[Rule, ...] = (
    # reception desk: registers patients and orders; reads identity, contact, coverage
    R("reception", "patient", "rs", "ICV", "care,administration"),
    R("reception", "patient", "w", ALL4, "care,administration",
      note="writes the whole registration form (prescriber included) without reading clinical"),
    R("reception", "order", "rw", "IVK", note="exams asked and prescriber of the order"),
    R("reception", "specimen", "rw", "IK",
      note="specimen collection at the desk; rejects a non-conforming specimen before analysis"),
    R("reception", "import-issue", "rw", "ICV"),
    # technician: clinical work of its laboratory, identity kept minimal
    R("technician", "patient", "rs", "IK", "care", fields=MIN_I),
    R("technician", "order", "r", "IK", fields=MIN_I),
    R("technician", "specimen", "rw", "IK", fields=MIN_I,
      note="rejects a non-conforming specimen (haemolysed, clotted...) seen at the bench"),
    R("technician", "observation", "rwv", "IK", fields=MIN_I,
      note="validate = technical validation; write also cancels the results of a rejected "
           "specimen"),
    R("technician", "report", "r", "IK", fields=MIN_I),
    R("technician", "hl7-message", "r", "IK", fields=MIN_I),
    R("technician", "hl7-message", "w", ALL4, note="instrument / middleware messages in"),
    R("technician", "import-issue", "rw", "IK", fields=MIN_I),
    # biologist: every category of its laboratory, biological validation
    R("biologist", "patient", "rsw", ALL4, "care,administration"),
    R("biologist", "patient", "e", ALL4, "erasure"),
    R("biologist", "order", "rw", ALL4),
    R("biologist", "specimen", "rw", ALL4),
    R("biologist", "observation", "rwv", ALL4, note="validate = biological validation"),
    R("biologist", "report", "rwv", ALL4),
    R("biologist", "hl7-message", "rw", ALL4),
    R("biologist", "import-issue", "rw", ALL4),
    R("biologist", "clinical-alert", "rw",
      note="panic values of its laboratory: read and acknowledge (security alerts are the "
           "DPO's)"),
    R("biologist", "catalogue", "w", purposes="administration",
      note="reference ranges are a biologist's responsibility"),
    R("biologist", "export", "rwx", ALL4, note="requests an export; the DPO approves it"),
    R("biologist", "delivery", "rw", purposes="care",
      note="the outbox to the prescribers' systems: reads where messages stand, sends a "
           "failed one again (destinations stay the CLI operator's)"),
    *(R("biologist", res, "r", ALL4, BREAK_GLASS, break_glass=True)
      for res in ("patient", *CLINICAL_RESOURCES)),
    # laboratory administrator: the lab's users and alerts, no patient data
    R("lab_admin", "user", "rw", "A"),
    R("lab_admin", "alert", "rw"),
    R("lab_admin", "tenant", "r"),
    R("lab_admin", "catalogue", "w", purposes="administration",
      note="loads the laboratory's own reference ranges"),
    R("lab_admin", "delivery", "rw", purposes="administration",
      note="the outbox: reads where messages stand, sends a failed one again (no message "
           "content; destinations stay the CLI operator's)"),
    R("lab_admin", "patient-merge", "w", ALL4, purposes="administration",
      note="identity vigilance referent: merges a duplicate record into the record kept "
           "(everything moves, sealed again; nothing is shown)"),
    R("lab_admin", "patient-merge", "r", purposes="administration",
      note="the merge requests waiting for it (ADT^A40 import issues): ids, sender, MSH-10 "
           "-- no patient category"),
    # data protection officer: audit, alerts, exports approval, breach register, honeytokens
    R("dpo", "audit", "rx"),
    R("dpo", "alert", "rw"),
    R("dpo", "export", "rv", ALL4, note="validate = approve an export request"),
    R("dpo", "breach", "rw"),
    R("dpo", "breach", "r", "IC", purposes="breach",
      note="Art. 34 letters: names and contact of the lab's affected patients"),
    R("dpo", "canary", "rw"),
    R("dpo", "user", "r", "A"),
    R("dpo", "tenant", "r"),
    *(R("dpo", res, "r", ALL4, BREAK_GLASS, break_glass=True)
      for res in ("patient", *CLINICAL_RESOURCES)),
    # platform operator: laboratories and keys, never patient data
    R("platform_operator", "tenant", "rw", scope=PLATFORM),
    R("platform_operator", "keys", "rw", scope=PLATFORM),
    # patient portal: its own record only
    R("patient", "patient", "r", ALL4, scope=SELF),
    *(R("patient", res, "r", "IK", scope=SELF) for res in CLINICAL_RESOURCES),
    R("patient", "audit", "r", scope=SELF, note='"who saw my record"'),
)

_READ_LIKE = frozenset({Action.READ})


class TablePolicy:
    """``services.gate.Policy`` over ``RULES`` (or another table, for tests)."""

    def __init__(self, rules: Iterable[Rule] = RULES) -> None:
        self.rules = tuple(rules)
        self._by_key: dict[tuple[str, str, Action], list[Rule]] = {}
        for r in self.rules:
            for a in r.actions:
                self._by_key.setdefault((r.role, r.resource, a), []).append(r)

    @staticmethod
    def _scope_ok(rule: Rule, access: Access) -> bool:
        actor = access.actor
        if rule.scope == OWN:
            return (actor.kind == "staff" and actor.tenant_id is not None
                    and access.tenant_id == actor.tenant_id)
        if rule.scope == PLATFORM:
            return actor.kind == "staff" and actor.tenant_id is None
        if rule.scope == SELF:
            return (actor.kind == "patient" and actor.patient_id is not None
                    and actor.tenant_id is not None and access.tenant_id == actor.tenant_id
                    and access.patient_ids == (actor.patient_id,))
        return False

    @staticmethod
    def _purpose_ok(rule: Rule, purpose: str) -> bool:
        if rule.break_glass:
            return purpose == BREAK_GLASS
        return purpose in rule.purposes or (ANY_PURPOSE in rule.purposes and purpose != BREAK_GLASS)

    def _matching(self, access: Access, break_glass: bool) -> list[Rule]:
        actor = access.actor
        out = []
        for role in sorted(actor.roles):
            if (role == "patient") != (actor.kind == "patient"):
                continue
            for rule in self._by_key.get((role, access.resource, access.action), ()):
                if rule.break_glass != break_glass:
                    continue
                if self._purpose_ok(rule, access.purpose) and self._scope_ok(rule, access):
                    out.append(rule)
        return out

    def _grant(self, access: Access, rules: list[Rule]) -> frozenset[Category] | None:
        if not rules:
            return None
        granted = frozenset().union(*(r.categories for r in rules))
        asked = access.categories
        if access.action in _READ_LIKE:
            if not asked:
                return frozenset()
            opened = asked & granted
            return opened or None
        return asked if asked <= granted else None

    @staticmethod
    def _fields(rules: list[Rule], cats: frozenset[Category]) -> dict[str, Any]:
        """Field restrictions of the opened categories: a category is restricted only if
        every matching row granting it restricts it (union of their fields)."""
        out: dict[str, Any] = {}
        for cat in cats:
            allowed: set[str] = set()
            for r in rules:
                if cat not in r.categories:
                    continue
                restricted = dict(r.fields).get(cat)
                if restricted is None:
                    break
                allowed |= restricted
            else:
                out[cat.value] = sorted(allowed)
        return {"fields": out} if out else {}

    def decide(self, access: Access) -> Decision:
        kind = access.actor.kind
        if kind in ("operator", "system"):
            return Decision(True, access.categories, rule=kind)
        if kind not in ("staff", "patient"):
            return Decision(False)
        rules = self._matching(access, break_glass=False)
        cats = self._grant(access, rules)
        if cats is not None:
            return Decision(True, cats, rule=rules[0].name, detail=self._fields(rules, cats))
        if access.purpose == BREAK_GLASS:
            reason = (access.reason or "").strip()
            bg = self._matching(access, break_glass=True)
            cats = self._grant(access, bg)
            if cats is not None and len(reason) >= MIN_REASON:
                return Decision(True, cats, rule=bg[0].name, break_glass=True)
            if cats is not None:
                return Decision(False, rule="break-glass-needs-reason")
        return Decision(False)


# -- documentation ----------------------------------------------------------------------------
def render_markdown(rules: Iterable[Rule] = RULES) -> str:
    lines = [
        "# Access policy",
        "",
        "<!-- generated from src/labvault/access/policy.py by `labvault policy doc`; "
        "do not edit by hand (a test compares) -->",
        "",
        "Default deny: a request is allowed only by a row below (or when the actor is the "
        "CLI `operator` or a `system` job, which run on the host holding the keys).",
        "",
        "- **scope** `own-tenant`: the actor's laboratory only (staff never reach another lab); "
        "`platform`: platform accounts (no laboratory); `self`: a patient account, its own "
        "record only.",
        "- **categories**: what may be opened; reading returns only the granted categories "
        "(minimal data), other actions need every category they touch granted.",
        "- **categories** with a field list open only those fields (e.g. minimal identity "
        "for technicians: names, birth date, sex — no NIR, INS, birth place).",
        "- **purposes**: `*` is any purpose except `break-glass`.",
        f"- **break-glass** rows allow only with purpose `break-glass` and a written reason of "
        f"at least {MIN_REASON} characters; the decision is flagged, audited and raises an alert.",
        "",
        "Roles: " + ", ".join(f"`{r}`" for r in dict.fromkeys(r.role for r in rules)) + ".",
        "",
        "| role | resource | actions | categories | purposes | scope | break-glass | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {c: i for i, c in enumerate((*PATIENT_CATEGORIES, Category.ACCOUNT))}
    for r in rules:
        acts = ", ".join(a.value for a in Action if a in r.actions)
        restricted = dict(r.fields)
        cats = ", ".join(c.value + (f" ({', '.join(sorted(restricted[c]))} only)"
                                    if c in restricted else "")
                         for c in sorted(r.categories, key=order.__getitem__)) or "—"
        purposes = ", ".join(sorted(r.purposes))
        lines.append(f"| {r.role} | {r.resource} | {acts} | {cats} | {purposes} | {r.scope} | "
                     f"{'yes' if r.break_glass else ''} | {r.note} |")
    lines.append("")
    return "\n".join(lines)
