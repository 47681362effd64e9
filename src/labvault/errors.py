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


class IdentifierTaken(InvalidField):
    """Another patient of the laboratory already has this identifier (NIR, INS, external
    id): the registration was sent twice, or names someone already registered."""


class TooManyFormerIds(InvalidField):
    """A record would keep more former identifiers (the external ids of duplicates merged
    into it) than ``domain.patient.MAX_FORMER_IDS``."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__("former_ids", f"{count} former identifiers: at most {limit} are kept",
                         "so many duplicates of one record is an identity problem: check "
                         "with identity vigilance which records are really this person")


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


class RppsTaken(Conflict):
    """The laboratory's directory already has an entry with this RPPS number."""


class RecordChanged(Conflict):
    """A record changed after the caller read it: nothing was written (a form opened
    before someone else's change would write its stale values back over it)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} changed since you read it: nothing was written",
                         "read it again and redo your change")


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


class RootKeyMissing(KeyUnavailable):
    """The root key is not where the settings say (``where``: a key file, a PKCS#11
    token). What to do depends on whether data sealed under a root key exists
    (``holds_data``; None: not known where raised), so the opener that knows raises it
    again as ``type(exc)(exc.where, holds_data)``."""

    def __init__(self, where: object, holds_data: bool | None = None) -> None:
        super().__init__(self.missing(where), self.what_to_do(holds_data))
        self.where = where

    def missing(self, where: object) -> str:
        raise NotImplementedError

    def what_to_do(self, holds_data: bool | None) -> str:
        raise NotImplementedError


class KeyFileMissing(RootKeyMissing):
    """The root key file is not where the settings say."""

    def missing(self, where: object) -> str:
        return f"key file {where} not found"

    def what_to_do(self, holds_data: bool | None) -> str:
        if holds_data:
            return ("restore the key file from your backup, or point LABVAULT_KEY_FILE at it; "
                    "this installation holds data and a new key cannot open it")
        if holds_data is None:
            return ("point LABVAULT_KEY_FILE at the existing one or restore it from your "
                    "backup; `labvault init` creates one only for an installation without "
                    "data. Without it no patient data can be read")
        return ("run `labvault init` to create it, or point LABVAULT_KEY_FILE at the "
                "existing one; without it no patient data can be read")


class TokenKeyMissing(RootKeyMissing):
    """The PKCS#11 token holds no labvault root key."""

    def missing(self, where: object) -> str:
        return f"no labvault root key in PKCS#11 token {str(where)!r}"

    def what_to_do(self, holds_data: bool | None) -> str:
        if holds_data:
            return ("use the token that created this installation (LABVAULT_PKCS11_TOKEN, "
                    "LABVAULT_PKCS11_MODULE), or restore its root key from the HSM's backup; "
                    "this installation holds data and a new root key cannot open it")
        if holds_data is None:
            return ("point LABVAULT_PKCS11_TOKEN at the token that created this installation; "
                    "`labvault init --key-provider pkcs11` creates a root key only for an "
                    "installation without data")
        return "run `labvault init --key-provider pkcs11` first"


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


class UnreadableFile(UserError):
    """A whole input file is not what the command reads (another encoding, another
    format); the message names what it is."""

    code = "unreadable-file"
    http_status = 422


class NotADemoInstallation(UserError):
    """Demo seeding on an installation that holds real laboratories (the demo adds
    accounts whose password and TOTP secret are published)."""

    code = "not-a-demo-installation"
    http_status = 409


class MassErasureRefused(UserError):
    """A purge would crypto-shred more of a lab's patients than one run may; nothing
    was done. ``held``: lab id -> {"expired", "active", "limit"}."""

    code = "mass-erasure-refused"
    http_status = 409

    def __init__(self, total: int, held: dict[str, dict[str, int]],
                 confirmed: int | None = None) -> None:
        labs = "; ".join(f"{t}: {f['expired']} of {f['active']} active patients "
                         f"(limit {f['limit']} per run)" for t, f in held.items())
        wrong = (f" (--confirm-mass-erasure {confirmed} does not match)"
                 if confirmed is not None else "")
        super().__init__(
            f"purge refused, nothing erased: it would crypto-shred {total} patient(s), "
            f"too many for one run in {labs}{wrong}",
            "check the labs' retention settings (`labvault guard config --tenant ID`) and "
            "`labvault purge --dry-run`; if every one of these erasures is intended, run "
            f"`labvault purge --confirm-mass-erasure {total}`")
        self.total = total
        self.held = held


class MergeRefused(UserError):
    """A merge that must not be done as asked; nothing was changed."""

    code = "merge-refused"
    http_status = 409


class PatientMerged(NotFound):
    """The id asked for is a duplicate merged into another record (a tombstone)."""

    code = "patient-merged"

    def __init__(self, patient_id: str, survivor_id: str) -> None:
        super().__init__(f"patient {patient_id} was merged into {survivor_id}",
                         f"read {survivor_id}: its record holds this one's data")
        self.survivor_id = survivor_id
