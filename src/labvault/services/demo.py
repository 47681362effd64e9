"""Seed an installation with synthetic laboratories and patients."""

from __future__ import annotations

import json
import random
from typing import Any

from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.synthetic import make_finess, people

LAB_NAMES = ("Laboratoire des Flandres", "Biologie Médicale de l'Artois",
             "Laboratoire du Hainaut", "LBM Côte d'Opale", "Laboratoire de Picardie",
             "Biolab Métropole")


def seed_demo(lv: Labvault, labs: int, patients: int, seed: int = 0) -> dict[str, Any]:
    actor = Actor.operator()
    rng = random.Random(seed)
    existing = {t["finess"]: t for t in lv.tenants.list()}
    out: list[dict[str, Any]] = []
    per_lab = [patients // labs + (1 if i < patients % labs else 0) for i in range(labs)]
    start = 0
    for i in range(labs):
        finess = make_finess(rng, "59" if i % 2 == 0 else "62")
        name = LAB_NAMES[i % len(LAB_NAMES)] + (f" {i // len(LAB_NAMES) + 1}" if i >= 6 else "")
        if finess in existing:
            tenant_id = existing[finess]["id"]
        else:
            tenant_id = lv.tenants.add(actor, name, finess).tenant_id
        lines = (json.dumps({k: v for k, v in p.items() if v is not None})
                 for p in people(per_lab[i], seed=seed, start=start))
        report = lv.patients.import_lines(actor, tenant_id, lines)
        start += per_lab[i]
        out.append({"id": tenant_id, "name": name, "finess": finess,
                    "imported": report.imported, "already_present": report.skipped})
    return {"laboratories": out}
