"""Named personal accounts only (DESIGN §1: no shared accounts).

An account names one person (first and last name) with a personal e-mail address.
Names that designate a function, a place or a placeholder (admin, accueil, labo,
secretariat, test, user1…) are refused, for the person's name and for the e-mail's
local part alike.
"""

from __future__ import annotations

import re
import unicodedata

from labvault.domain import validation as v
from labvault.errors import InvalidField

STAFF_ROLES = ("reception", "technician", "biologist", "lab_admin", "dpo", "platform_operator")
ROLES = (*STAFF_ROLES, "patient")
PLATFORM_TENANT = "platform"   # pseudo-tenant of platform accounts (own keys, no patients)

# Generic words: functions, services, places and placeholders (French and English).
GENERIC = frozenset({
    "admin", "administrateur", "administrator", "administration", "root", "superuser", "sysadmin",
    "system", "systeme", "operator", "operateur", "support", "helpdesk", "hotline", "service",
    "services", "accueil", "reception", "secretariat", "secretaire", "secretary", "labo",
    "laboratoire", "laboratory", "lab", "biologie", "biology", "biologiste", "technicien",
    "technician", "technique", "infirmier", "infirmiere", "nurse", "medecin", "doctor", "docteur",
    "dr", "direction", "directeur", "director", "manager", "gestion", "comptabilite", "compta",
    "facturation", "billing", "qualite", "quality", "informatique", "it", "dsi", "dpo", "rgpd",
    "contact", "info", "information", "noreply", "no-reply", "test", "tests", "testing", "demo",
    "essai", "guest", "invite", "visiteur", "visitor", "user", "utilisateur", "users", "anonyme",
    "anonymous", "inconnu", "unknown", "default", "defaut", "shared", "partage", "equipe", "team",
    "prelevement", "prelevements", "caisse", "stagiaire", "interne", "externe", "patient",
    "patients", "client", "clients", "public", "staff", "personnel", "pharmacie", "pharmacy",
    "urgence", "urgences",
})

_TRAILING_DIGITS = re.compile(r"\d+$")


def _fold(s: str) -> str:
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if not unicodedata.combining(c)).lower()


def is_generic(token: str) -> bool:
    """'admin', 'Accueil2', 'user1', 'labo-lille', 'poste_3' -> True."""
    t = _fold(token).strip()
    if not t:
        return True
    if t in GENERIC or _TRAILING_DIGITS.sub("", t) in GENERIC:
        return True
    parts = [p for p in re.split(r"[\s._\-+]+", t) if p]
    stripped = [_TRAILING_DIGITS.sub("", p) for p in parts]
    return bool(parts) and all(not p or p in GENERIC or len(p) < 2 for p in stripped)


def validate_person(name: str, email: str) -> tuple[str, str]:
    """A person's full name (two words at least, none generic) and a personal e-mail."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidField("name", "is required", "give the first and last name of the person")
    clean = " ".join(name.split())
    if len(clean) > 200:
        raise InvalidField("name", "is longer than 200 characters")
    words = [w for w in re.split(r"[\s\-']+", clean) if w]
    if len(words) < 2 or any(not any(c.isalpha() for c in w) for w in words):
        raise InvalidField("name", "must be a person's first and last name",
                           "accounts are personal: one named person per account")
    if any(is_generic(w) for w in words) or is_generic(clean):
        raise InvalidField("name", "designates a function or a shared account, not a person",
                           "create one account per person, named after that person")
    if not isinstance(email, str) or not email.strip():
        raise InvalidField("email", "is required", "give the person's own e-mail address")
    addr = v.email(email, "email")
    local = addr.split("@", 1)[0]
    first_part = re.split(r"[._\-+]+", local)[0]
    if is_generic(local) or is_generic(first_part):
        raise InvalidField("email", "is a shared or functional mailbox",
                           "use the person's own address (e.g. jeanne.martin@...)")
    return clean, addr


def validate_roles(kind: str, roles: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if not roles:
        raise InvalidField("role", "at least one role is required", "roles: " + ", ".join(ROLES))
    out = []
    for r in roles:
        if r not in ROLES:
            raise InvalidField("role", f"{r!r} is not a role", "roles: " + ", ".join(ROLES))
        out.append(r)
    if "patient" in out and (len(out) > 1 or kind != "patient"):
        raise InvalidField("role", "a patient account has the patient role only",
                           "create a separate staff account")
    if "platform_operator" in out and len(out) > 1:
        raise InvalidField("role", "platform_operator cannot be combined with laboratory roles",
                           "create a separate account")
    return tuple(dict.fromkeys(out))
