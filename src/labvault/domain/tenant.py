"""A tenant is a laboratory: a name and its FINESS number."""

from __future__ import annotations

from dataclasses import dataclass

from labvault.domain import validation as v


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    name: str
    finess: str   # FINESS: national number of health and social facilities

    @staticmethod
    def validate(name: str, finess: str) -> tuple[str, str]:
        n = v.text(name, "name", 200, required=True)
        assert n is not None
        return n, v.finess(finess)
