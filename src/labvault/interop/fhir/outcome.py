"""OperationOutcome: how every FHIR error is answered (never a stack trace)."""

from __future__ import annotations

from typing import Any

from labvault.errors import InvalidRecord, UserError

# labvault error code -> FHIR issue type (http://hl7.org/fhir/issue-type)
_ISSUE_TYPE = {
    "invalid-field": "invalid", "invalid-record": "invalid", "not-found": "not-found",
    "conflict": "conflict", "forbidden": "forbidden", "unauthorized": "login",
    "read-budget-exceeded": "throttled", "key-unavailable": "transient",
    "invalid-transition": "business-rule", "filler-number-taken": "duplicate",
}


class FhirError(UserError):
    """An error answered as an OperationOutcome with ``http_status``."""

    def __init__(self, status: int, code: str, diagnostics: str,
                 expression: list[str] | None = None,
                 issues: list[dict[str, Any]] | None = None) -> None:
        super().__init__(diagnostics)
        self.http_status = status
        self.issue_code = code
        self.expression = expression
        self.issues = issues

    def outcome(self) -> dict[str, Any]:
        if self.issues:
            return {"resourceType": "OperationOutcome", "issue": self.issues}
        return operation_outcome(self.issue_code, self.message, self.expression)


def issue(code: str, diagnostics: str, expression: list[str] | None = None,
          severity: str = "error") -> dict[str, Any]:
    out: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        out["expression"] = expression
    return out


def operation_outcome(code: str, diagnostics: str, expression: list[str] | None = None,
                      severity: str = "error") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [issue(code, diagnostics, expression, severity)]}


def from_user_error(exc: UserError, where: str | None = None) -> tuple[int, dict[str, Any]]:
    """Status and OperationOutcome for a core ``UserError``; ``where`` prefixes expressions
    (``Bundle.entry[2].resource``)."""
    if isinstance(exc, FhirError):
        oo = exc.outcome()
        if where:
            for i in oo["issue"]:
                i["expression"] = [f"{where}.{e}" if e else where
                                   for e in i.get("expression") or [""]]
        return exc.http_status, oo
    code = _ISSUE_TYPE.get(exc.code, "processing")
    hint = f" ({exc.hint})" if exc.hint else ""
    if isinstance(exc, InvalidRecord):
        issues = [issue("invalid", f"{e.field}: {e.rule}" + (f" ({e.hint})" if e.hint else ""),
                        [where] if where else None) for e in exc.errors]
        return exc.http_status, {"resourceType": "OperationOutcome", "issue": issues}
    return exc.http_status, operation_outcome(code, exc.message + hint,
                                              [where] if where else None)
