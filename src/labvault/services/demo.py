"""Seed an installation with synthetic laboratories and patients."""

from __future__ import annotations

import json
import random
from typing import Any

from labvault.domain.actors import Actor
from labvault.errors import Conflict, NotADemoInstallation
from labvault.services.app import Labvault
from labvault.services.demo_lab import Analyser, seed_lab_day
from labvault.synthetic import make_finess, people

LAB_NAMES = ("Laboratoire des Flandres", "Biologie Médicale de l'Artois",
             "Laboratoire du Hainaut", "LBM Côte d'Opale", "Laboratoire de Picardie",
             "Biolab Métropole")


MAX_LABS = 100        # `labvault demo --labs` at most


def seed_demo(lv: Labvault, labs: int, patients: int, seed: int = 0,
              analyser: Analyser | None = None) -> dict[str, Any]:
    """Synthetic laboratories, patients and one account per role (published credentials);
    refused on an installation that holds any other laboratory. With ``analyser`` (how
    the door stores an HL7 message), each new laboratory also gets a morning's orders,
    results and import issues (``demo_lab.seed_lab_day``)."""
    refuse_real_laboratories(lv, seed)
    actor = Actor.operator()
    rng = random.Random(seed)
    existing = {t["finess"]: t for t in lv.tenants.list()}
    out: list[dict[str, Any]] = []
    per_lab = [patients // labs + (1 if i < patients % labs else 0) for i in range(labs)]
    start = 0
    for i in range(labs):
        finess = _lab_finess(rng, i)
        name = LAB_NAMES[i % len(LAB_NAMES)] + (f" {i // len(LAB_NAMES) + 1}" if i >= 6 else "")
        if finess in existing:
            tenant_id = existing[finess]["id"]
        else:
            tenant_id = lv.tenants.add(actor, name, finess).tenant_id
        records = list(people(per_lab[i], seed=seed, start=start))
        lines = (json.dumps({k: v for k, v in p.items() if v is not None}) for p in records)
        report = lv.patients.import_lines(actor, tenant_id, lines)
        start += per_lab[i]
        accounts = seed_accounts(lv, tenant_id, i, report.ids[:1], rng)
        lab: dict[str, Any] = {"id": tenant_id, "name": name, "finess": finess,
                               "imported": report.imported, "already_present": report.skipped,
                               "accounts": accounts}
        if analyser is not None and report.imported == len(records):
            lab["lab_day"] = seed_lab_day(lv, tenant_id, accounts, report.ids, records,
                                          analyser)
        out.append(lab)
    platform = seed_accounts(lv, None, 0, [], rng)
    return {"laboratories": out, "platform_accounts": platform,
            "demo_password": DEMO_PASSWORD, "demo_totp_secret": DEMO_TOTP_SECRET,
            "login": "POST /api/v1/auth/login {email, password, totp}; totp = current code of "
                     "demo_totp_secret (staff); patients log in without TOTP"}


def _lab_finess(rng: random.Random, index: int) -> str:
    return make_finess(rng, "59" if index % 2 == 0 else "62")


def demo_finesses(seed: int = 0, labs: int = MAX_LABS) -> set[str]:
    """The FINESS numbers ``seed_demo`` gives its laboratories. It draws, from one
    generator, each lab's FINESS then one name per demo role (``seed_accounts``): the
    same draws here, so a demo laboratory is known by its FINESS alone."""
    rng = random.Random(seed)
    out: set[str] = set()
    for i in range(labs):
        out.add(_lab_finess(rng, i))
        for _ in DEMO_ROLES:
            rng.randrange(2**32)        # the name seed_accounts draws for this role
    return out


def refuse_real_laboratories(lv: Labvault, seed: int = 0) -> None:
    """Demo data only beside demo data: the demo's accounts, a platform operator among
    them, log in with a password and TOTP secret printed in the README."""
    demo = demo_finesses(seed)
    real = [t for t in lv.tenants.list() if t["finess"] not in demo]
    if real:
        named = ", ".join(f"{t['name']} (FINESS {t['finess']})" for t in real[:3])
        raise NotADemoInstallation(
            f"this installation holds laboratories that are not demo data: {named}"
            + (f" and {len(real) - 3} more" if len(real) > 3 else ""),
            "the demo adds accounts whose password and TOTP secret are published, a platform "
            "operator among them; run it in a data directory of its own "
            "(labvault --data-dir /tmp/labvault-demo demo)")


# Documented demo credentials (docs/access.md): synthetic accounts of a demo dataset only.
DEMO_PASSWORD = "Sirop-Violette-Trottinette-42"  # noqa: S105 - documented demo password
DEMO_TOTP_SECRET = "LABVAULTDEMOONLYNEVERUSEINPRODXX"  # noqa: S105 - documented demo secret
DEMO_ROLES = ("reception", "technician", "biologist", "lab_admin", "dpo")


def _demo_name(rng: random.Random) -> tuple[str, str]:
    from faker import Faker
    fake = Faker("fr_FR")
    fake.seed_instance(rng.randrange(2**32))
    return fake.first_name(), fake.last_name()


def _ascii(s: str) -> str:
    import unicodedata
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if c.isalnum() and c.isascii()).lower()


def seed_accounts(lv: Labvault, tenant_id: str | None, lab_index: int, patient_ids: list[str],
                  rng: random.Random) -> list[dict[str, Any]]:
    """One named account per role in a demo laboratory (platform: one operator), plus a portal
    account for the lab's first patient. Existing demo accounts are left as they are."""
    actor = Actor.operator()
    roles = ("platform_operator",) if tenant_id is None else DEMO_ROLES
    made: list[dict[str, Any]] = []
    for role in roles:
        first, last = _demo_name(rng)
        tag = "platform" if tenant_id is None else f"lab{lab_index + 1}"
        email = f"{_ascii(first)}.{_ascii(last)}.{role.replace('_', '')}.{tag}@demo.example.org"
        try:
            acc = lv.accounts.create(actor, tenant_id, [role], f"{first} {last}", email,
                                     password=DEMO_PASSWORD, totp_secret=DEMO_TOTP_SECRET)
            made.append({"role": role, "email": email, "id": acc["id"]})
        except Conflict:
            made.append({"role": role, "email": email, "id": None, "existing": True})
    for pid in patient_ids:
        rec = lv.patients.show(actor, pid, purpose="administration")
        first, last = rec["first_names"][0], rec.get("used_name") or rec["birth_name"]
        email = f"{_ascii(first)}.{_ascii(last)}.{pid[-6:]}@demo.example.org"
        name = f"{first} {last}"
        try:
            acc = lv.accounts.create(actor, tenant_id, ["patient"], name, email,
                                     password=DEMO_PASSWORD, patient_id=pid)
            made.append({"role": "patient", "email": email, "id": acc["id"], "patient_id": pid})
        except Conflict:
            pass
    return made
