"""Breach fixtures: two laboratories of synthetic patients, and a scoring helper."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from labvault.breach.synthdump import Truth
from labvault.domain.actors import Actor
from labvault.services.app import Labvault
from labvault.synthetic import make_finess, people

PER_LAB = 150


@dataclass
class Store:
    tenants: list[str]
    patients: list[tuple[str, str, dict[str, Any]]]


@pytest.fixture
def store(lv: Labvault, operator: Actor) -> Store:
    rng = random.Random(3)
    tenants: list[str] = []
    pats: list[tuple[str, str, dict[str, Any]]] = []
    for k in range(2):
        t = lv.tenants.add(operator, f"Laboratoire {k}", make_finess(rng)).tenant_id
        recs = [{kk: v for kk, v in p.items() if v is not None}
                for p in people(PER_LAB, seed=5, start=k * PER_LAB)]
        rep = lv.patients.import_lines(operator, t, [json.dumps(r) for r in recs])
        assert rep.imported == PER_LAB
        tenants.append(t)
        pats += [(t, pid, r) for pid, r in zip(rep.ids, recs, strict=True)]
    return Store(tenants, pats)


@dataclass
class Score:
    exact_rows: int = 0
    exact_found: int = 0
    fuzzy_rows: int = 0
    fuzzy_found: int = 0
    predicted: int = 0
    correct: int = 0

    @property
    def exact_recall(self) -> float:
        return self.exact_found / max(1, self.exact_rows)

    @property
    def fuzzy_recall(self) -> float:
        return self.fuzzy_found / max(1, self.fuzzy_rows)

    @property
    def precision(self) -> float:
        return self.correct / max(1, self.predicted)


def score(matches: Sequence[Mapping[str, Any]], truth: Sequence[Truth]) -> Score:
    s = Score()
    by_row: dict[int, list[Mapping[str, Any]]] = {}
    for m in matches:
        by_row.setdefault(m["row"], []).append(m)
    for i, t in enumerate(truth, start=1):
        ms = by_row.get(i, [])
        s.predicted += len(ms)
        s.correct += sum(1 for m in ms if m["patient_id"] == t.patient_id)
        if t.patient_id is None:
            continue
        if t.exact:
            s.exact_rows += 1
            s.exact_found += any(m["method"] == "exact" and m["patient_id"] == t.patient_id
                                 for m in ms)
        else:
            s.fuzzy_rows += 1
            s.fuzzy_found += any(m["patient_id"] == t.patient_id for m in ms)
    return s
