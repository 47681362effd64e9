"""Validation at the door: every incoming resource is checked against its
``fhir.resources.R4B`` model before any mapping (about 50 µs per resource here)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import ValidationError

from labvault.interop.fhir.outcome import FhirError, issue

SUPPORTED = ("Patient", "Practitioner", "Coverage", "ServiceRequest", "Specimen", "Observation",
             "DiagnosticReport")
MAX_ISSUES = 20


@cache
def model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class
    return get_fhir_model_class(resource_type)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validate(resource: object, expected: str | None = None, where: str | None = None) -> str:
    """Check ``resource`` against its R4B model; returns its resourceType.

    Raises ``FhirError`` (400 for a wrong shape or type, 422 with one issue per
    violation, each with its FHIRPath-like expression)."""
    if not isinstance(resource, Mapping):
        raise FhirError(400, "structure", "the body must be a JSON object (a FHIR resource)",
                        [where] if where else None)
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or rtype not in SUPPORTED:
        raise FhirError(400 if where is None else 422, "not-supported",
                        f"resourceType {rtype!r} is not supported here; supported: "
                        + ", ".join(SUPPORTED), [where or "resourceType"])
    if expected is not None and rtype != expected:
        raise FhirError(400, "invalid", f"expected a {expected}, got a {rtype}",
                        [where or "resourceType"])
    try:
        model(rtype).model_validate(resource)
    except ValidationError as exc:
        prefix = where or rtype
        issues = [issue("structure" if e["type"] == "extra_forbidden" else "value",
                        f"{_path(e['loc']) or rtype}: {e['msg']}",
                        [f"{prefix}.{_path(e['loc'])}" if e["loc"] else prefix])
                  for e in exc.errors(include_url=False)[:MAX_ISSUES]]
        raise FhirError(422, "invalid", "the resource is not valid FHIR R4", issues=issues) from None
    return rtype


def modifier_extension(resource: Mapping[str, Any]) -> str | None:
    """The path (``.contained[0].modifierExtension``) of the first ``modifierExtension`` in
    ``resource``, or None."""
    stack: list[tuple[str, Any]] = [("", resource)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, Mapping):
            if node.get("modifierExtension"):
                return f"{path}.modifierExtension"
            stack.extend((f"{path}.{k}", v) for k, v in node.items()
                         if isinstance(v, Mapping | list))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(node)
                         if isinstance(v, Mapping | list))
    return None
