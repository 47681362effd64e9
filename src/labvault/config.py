"""Settings, read from the environment (documented in docs/configuration.md; a test
checks that every setting here is documented there).

The embedded default needs nothing: data in ``./var`` (SQLite), root key in ``./var.key``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from labvault.errors import ConfigurationError

# name -> (default, one-line description). The single source for docs and --help.
SETTINGS: dict[str, tuple[str, str]] = {
    "LABVAULT_DATA_DIR": ("./var", "data directory: SQLite file, shred log, checkpoints, exports"),
    "LABVAULT_DATABASE_URL": ("", "SQLAlchemy URL; empty = SQLite file in the data directory; "
                                  "postgresql://... for PostgreSQL"),
    "LABVAULT_KEY_PROVIDER": ("file", "root key provider: file or pkcs11"),
    "LABVAULT_KEY_FILE": ("", "root key file for the file provider; empty = <data dir>.key "
                              "beside (never inside) the data directory"),
    "LABVAULT_PKCS11_MODULE": ("", "path of the PKCS#11 module (e.g. libsofthsm2.so)"),
    "LABVAULT_PKCS11_TOKEN": ("labvault", "label of the PKCS#11 token holding the root key"),
    "LABVAULT_PKCS11_PIN": ("", "user PIN of the PKCS#11 token"),
    "LABVAULT_SQLITE_CHECKPOINT_PAGES": ("1000", "SQLite only: the write-ahead log is copied "
                                         "into the database file once it holds this many "
                                         "4 KiB pages (SQLite's default 1000); a busy HL7 "
                                         "listener writes less with 8000 (docs/benchmarks.md)"),
    "LABVAULT_SQLITE_SYNCHRONOUS": ("full", "SQLite only: full = each commit is synced to "
                                    "disk before it returns (an ACK or a 201 survives a power "
                                    "loss); normal = synced at checkpoints only (a crash of "
                                    "the machine may undo the last commits)"),
    "LABVAULT_SESSION_IDLE_MINUTES": ("15", "API sessions end after this many idle minutes"),
    "LABVAULT_SESSION_HOURS": ("8", "absolute lifetime of an API session, in hours"),
    "LABVAULT_PUBLIC_URL": ("http://127.0.0.1:8000", "public base URL (enrolment links)"),
    "LABVAULT_MAX_REQUEST_BYTES": ("1048576", "largest request body the API accepts"),
    # guard (docs/guard.md)
    "LABVAULT_ALERT_DEDUP_SECONDS": ("600", "security alerts of the same kind, account and lab "
                                            "(clinical alerts: of the same result and value) "
                                            "within this many seconds are merged into one (count "
                                            "bumped)"),
    "LABVAULT_ALERT_MIN_SEVERITY": ("medium", "lowest severity sent to the webhook and e-mail "
                                              "sinks (info|low|medium|high|critical)"),
    "LABVAULT_ALERT_WEBHOOK_URL": ("", "alert webhook: HTTP POST of a JSON notice; empty = off"),
    "LABVAULT_ALERT_WEBHOOK_SECRET": ("", "HMAC-SHA256 key signing webhook bodies "
                                          "(header X-Labvault-Signature)"),
    "LABVAULT_ALERT_SMTP_HOST": ("", "SMTP server for alert e-mails; empty = off"),
    "LABVAULT_ALERT_SMTP_PORT": ("25", "SMTP port for alert e-mails"),
    "LABVAULT_ALERT_EMAIL_FROM": ("labvault@localhost", "sender of alert e-mails"),
    "LABVAULT_ALERT_EMAIL_TO": ("", "comma-separated recipients of alert e-mails"),
    "LABVAULT_REDIS_URL": ("", "Redis URL for read-budget state shared by several workers; "
                               "empty = state in the database"),
    "LABVAULT_EXPORT_APPROVAL_MIN_PATIENTS": ("1000", "exports of at least this many patients "
                                                      "need a second account's approval"),
    "LABVAULT_PURGE_INTERVAL_SECONDS": ("3600", "how often `labvault serve` purges expired "
                                                "exports and retention-expired patients; 0 = off"),
    "LABVAULT_PURGE_MAX_ERASE_PATIENTS": ("25", "a purge erases at most this many patients of "
                                                "a lab, or LABVAULT_PURGE_MAX_ERASE_PERCENT % of "
                                                "them if more, without "
                                                "--confirm-mass-erasure"),
    "LABVAULT_PURGE_MAX_ERASE_PERCENT": ("2", "share (percent of a lab's active patients) one "
                                              "purge may erase without --confirm-mass-erasure"),
    "LABVAULT_AUDIT_RETENTION_DAYS": ("365", "days audit entries are kept before "
                                             "`labvault audit prune` removes them; 0 = forever"),
    "LABVAULT_AUDIT_CHECKPOINT_EVERY": ("1000", "write a signed audit checkpoint every N "
                                                "entries of a chain; 0 = only on demand"),
    "LABVAULT_AUDIT_READ_GROUP_MS": ("0", "group commit of allowed read/search audit entries: "
                                     "0 = written in the reading transaction; N > 0 = queued "
                                     "and written in batches at most N ms later (a hard crash "
                                     "loses at most N ms of read entries)"),
    "LABVAULT_AUDIT_SYSLOG": ("", "also send each audit checkpoint as an RFC 5424 syslog "
                                  "message: udp://host:514 or tcp://host:601; empty = off"),
    "LABVAULT_AUDIT_SIGNING_KEY": ("", "Ed25519 audit checkpoint signing key file; empty = "
                                       "<root key file>.audit-signing beside the root key"),
    "LABVAULT_DPO_NAME": ("", "data protection officer's name, printed on breach notices "
                          "and shown on the patient portal"),
    "LABVAULT_DPO_EMAIL": ("", "data protection officer's e-mail, printed on breach notices "
                          "and shown on the patient portal"),
    "LABVAULT_DPO_PHONE": ("", "data protection officer's phone, printed on breach notices "
                          "and shown on the patient portal"),
}


KEY_PROVIDERS = ("file", "pkcs11")


def _env(name: str, env: dict[str, str]) -> str:
    return env.get(name, SETTINGS[name][0])


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    key_provider: str = "file"
    key_file: Path | None = None
    pkcs11_module: str = ""
    pkcs11_token: str = "labvault"  # noqa: S105 - a token label, not a secret
    pkcs11_pin: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def from_env(data_dir: str | Path | None = None,
                 env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ) if env is None else env
        dd = Path(data_dir or _env("LABVAULT_DATA_DIR", e)).expanduser().absolute()
        url = _env("LABVAULT_DATABASE_URL", e) or f"sqlite:///{dd / 'labvault.db'}"
        provider = _env("LABVAULT_KEY_PROVIDER", e)
        if provider not in KEY_PROVIDERS:
            raise ConfigurationError(f"LABVAULT_KEY_PROVIDER={provider!r} is not a key provider",
                                     "use file or pkcs11")
        kf = _env("LABVAULT_KEY_FILE", e)
        return Settings(
            data_dir=dd, database_url=url, key_provider=provider,
            key_file=Path(kf).expanduser().absolute() if kf else dd.with_name(dd.name + ".key"),
            pkcs11_module=_env("LABVAULT_PKCS11_MODULE", e),
            pkcs11_token=_env("LABVAULT_PKCS11_TOKEN", e),
            pkcs11_pin=_env("LABVAULT_PKCS11_PIN", e),
            extra={k: v for k, v in e.items() if k.startswith("LABVAULT_")},
        )

    def with_provider(self, provider: str) -> Settings:
        if provider not in KEY_PROVIDERS:
            raise ConfigurationError(f"{provider!r} is not a key provider", "use file or pkcs11")
        return replace(self, key_provider=provider)

    def get(self, name: str) -> str:
        """A setting of ``SETTINGS`` not held in a field: the environment's value or the default."""
        return self.extra.get(name, SETTINGS[name][0])

    def whole_number(self, name: str, minimum: int = 1) -> int:
        """An integer setting of ``SETTINGS`` of at least ``minimum`` (empty: the default);
        anything else stops the start with a message, not a traceback."""
        raw = self.get(name) or SETTINGS[name][0]
        try:
            value = int(raw)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise ConfigurationError(f"{name}={raw!r} is not a whole number of at least "
                                     f"{minimum}", f"set {name} to e.g. {SETTINGS[name][0]}")
        return value

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        """A setting of ``SETTINGS`` that must be one of ``allowed`` (case-insensitive;
        empty: the default); anything else stops the start with a message."""
        raw = self.get(name) or SETTINGS[name][0]
        value = raw.strip().lower()
        if value not in allowed:
            raise ConfigurationError(f"{name}={raw!r} is not one of {', '.join(allowed)}",
                                     f"set {name} to {SETTINGS[name][0]} (the default)")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
