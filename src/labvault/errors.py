"""Typed errors.

Every error a user can cause is a :class:`UserError`: it says what was wrong and
what to do. Doors map them: REST/FHIR -> 4xx problem+json / OperationOutcome,
HL7 -> NACK, CLI -> exit code 2. Anything else is a bug and surfaces as 5xx /
exit 1 without leaking details.
"""

from __future__ import annotations


class LabvaultError(Exception):
    """Base of all labvault errors."""


class UserError(LabvaultError):
    """Something the caller can fix. ``hint`` says how."""

    http_status = 400
    code = "invalid-request"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class InvalidField(UserError):
    """One field broke one rule. ``field`` is a dotted path (``address.postal_code``)."""

    code = "invalid-field"
    http_status = 422

    def __init__(self, field: str, rule: str, hint: str = "") -> None:
        super().__init__(f"{field}: {rule}", hint)
        self.field = field
        self.rule = rule


class InvalidRecord(UserError):
    """A record broke one or more field rules; ``errors`` lists them all."""

    code = "invalid-record"
    http_status = 422

    def __init__(self, errors: list[InvalidField]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.rule}" for e in errors),
                         "correct the listed fields and submit the record again")


class NotFound(UserError):
    code = "not-found"
    http_status = 404


class Conflict(UserError):
    code = "conflict"
    http_status = 409


class AccessDenied(UserError):
    """The gate refused. The message never says whether the target exists."""

    code = "forbidden"
    http_status = 403


class AuthenticationFailed(UserError):
    code = "unauthorized"
    http_status = 401


class BudgetExceeded(AccessDenied):
    code = "read-budget-exceeded"
    http_status = 429


class KeyUnavailable(UserError):
    """Fail closed: no key provider, a wrong key, or a shredded key -> no plaintext."""

    code = "key-unavailable"
    http_status = 503


class AuditChainBehind(UserError):
    """Fail closed: an audit chain is shorter than the latest signed checkpoint of its
    history (the database was restored from a backup, or truncated). Appending would
    reuse the lost positions, so audited actions on that chain are refused until the
    operator acknowledges the restore (``labvault audit acknowledge-restore``)."""

    code = "audit-restore-unacknowledged"
    http_status = 503


class IntegrityError(LabvaultError):
    """Sealed bytes failed authentication (tampered, moved, or wrong key)."""


class ConfigurationError(UserError):
    code = "configuration"
